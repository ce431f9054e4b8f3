//! The checkers (5, linearizability, is in [`super::linear`]).
//!
//! Notation, per book: `initial` copies at the start; buys acknowledged `A` (ok), with
//! unknown outcome `U` (info); restocks acknowledged `Rk` copies, unknown `Ru` copies;
//! `O` orders recorded by an order replica; `S` the stock a catalog replica ends with.
use super::history::{Op, OpKind, Outcome};
use super::linear::{self, BookVerdict};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The state every replica ends in, read after the heal.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinalState {
    /// Catalog replica id -> stock per book (None: it never answered).
    pub catalogs: BTreeMap<u32, Option<BTreeMap<u32, i64>>>,
    /// Order replica id -> (order id, book) in order (None: it never answered).
    pub orders: BTreeMap<u32, Option<Vec<(String, u32)>>>,
    /// Seconds waited for the replicas to agree.
    pub waited_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Inconclusive,
}

/// One checker's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub id: u8,
    pub name: &'static str,
    pub status: Status,
    /// What was checked (counts).
    pub detail: String,
    /// The first counter-example (on failure or inconclusive).
    pub counterexample: Option<String>,
    /// Reported but does not fail the run.
    pub informational: bool,
}

impl Verdict {
    pub fn fails_run(&self) -> bool {
        self.status == Status::Fail && !self.informational
    }
}

#[derive(Debug, Default, Clone)]
struct Tally {
    acked: i64,
    unknown: i64,
    restocked: i64,
    restock_unknown: i64,
}

fn tallies(ops: &[Op]) -> HashMap<u32, Tally> {
    let mut t: HashMap<u32, Tally> = HashMap::new();
    for op in ops {
        let e = t.entry(op.book).or_default();
        match (op.kind, op.outcome) {
            (OpKind::Buy, Outcome::Ok) => e.acked += 1,
            (OpKind::Buy, Outcome::Info) => e.unknown += 1,
            (OpKind::Restock, Outcome::Ok) => e.restocked += op.quantity.unwrap_or(0),
            (OpKind::Restock, Outcome::Info) => e.restock_unknown += op.quantity.unwrap_or(0),
            _ => {}
        }
    }
    t
}

fn verdict(id: u8, name: &'static str, detail: String, first: Option<String>) -> Verdict {
    Verdict {
        id,
        name,
        status: if first.is_some() {
            Status::Fail
        } else {
            Status::Pass
        },
        detail,
        counterexample: first,
        informational: false,
    }
}

/// Checker 1: No oversell: per book, acknowledged buys <= initial + every restock that may have
/// happened (acknowledged or unknown).
pub fn no_oversell(ops: &[Op], initial: &BTreeMap<u32, i64>) -> Verdict {
    let t = tallies(ops);
    let mut first = None;
    let mut total = 0;
    for (book, stock0) in initial {
        let x = t.get(book).cloned().unwrap_or_default();
        total += x.acked;
        let most = stock0 + x.restocked + x.restock_unknown;
        if x.acked > most && first.is_none() {
            first = Some(format!(
                "book {book}: {} buys acknowledged but only {most} copies ever existed \
                 ({stock0} initial + {} restocked + {} restocks of unknown outcome)",
                x.acked, x.restocked, x.restock_unknown
            ));
        }
    }
    verdict(
        1,
        "no oversell",
        format!("{total} acknowledged buys over {} books", initial.len()),
        first,
    )
}

/// Checker 2: Conservation on every catalog replica after the heal: `S = initial + restocks - sold`
/// with `O <= sold <= A + U` (sold = the copies that left the catalog; the order is
/// recorded after the catalog's decrement, so an unknown buy may have sold a copy whose
/// order was never recorded) and `Rk <= restocks <= Rk + Ru`. With no unknown outcomes
/// this is the exact `S = initial + Rk - O`.
pub fn conservation(ops: &[Op], initial: &BTreeMap<u32, i64>, fin: &FinalState) -> Verdict {
    let t = tallies(ops);
    let mut first = None;
    let mut checked = 0;
    let per_book_orders: Option<HashMap<u32, i64>> =
        fin.orders.values().flatten().next().map(|orders| {
            let mut m = HashMap::new();
            for (_, b) in orders {
                *m.entry(*b).or_insert(0) += 1;
            }
            m
        });
    for (rid, books) in &fin.catalogs {
        let Some(books) = books else {
            first.get_or_insert(format!("catalog {rid} never answered after the heal"));
            continue;
        };
        for (book, stock0) in initial {
            let x = t.get(book).cloned().unwrap_or_default();
            let Some(&s) = books.get(book) else {
                first.get_or_insert(format!("catalog {rid} has no book {book}"));
                continue;
            };
            checked += 1;
            let o = per_book_orders
                .as_ref()
                .and_then(|m| m.get(book).copied())
                .unwrap_or(0);
            // sold = initial + restocks - S, restocks in [Rk, Rk + Ru].
            let sold_lo = stock0 + x.restocked - s;
            let sold_hi = sold_lo + x.restock_unknown;
            let (want_lo, want_hi) = (o.max(x.acked), x.acked + x.unknown);
            if s < 0 || sold_hi < want_lo || sold_lo > want_hi {
                first.get_or_insert(format!(
                    "catalog {rid}, book {book}: stock {s} means {sold_lo}..={sold_hi} copies \
                     sold ({stock0} initial + {} restocked{} - {s}), but {} orders are \
                     recorded, {} buys acknowledged and {} unknown (want sold in {want_lo}..={want_hi})",
                    x.restocked,
                    if x.restock_unknown > 0 {
                        format!(" + up to {} unknown", x.restock_unknown)
                    } else {
                        String::new()
                    },
                    o,
                    x.acked,
                    x.unknown
                ));
            }
        }
    }
    if per_book_orders.is_none() {
        first.get_or_insert("no order replica answered after the heal".into());
    }
    verdict(
        2,
        "conservation (stock = initial + restocks - orders)",
        format!("{checked} (replica, book) pairs"),
        first,
    )
}

/// Checker 3: Every acknowledged order is on every order replica (same book), no order id
/// appears twice, and nothing was recorded that was never requested: per book the
/// orders not acknowledged to a client are at most the buys of unknown outcome.
pub fn orders_durable(ops: &[Op], fin: &FinalState) -> Verdict {
    let t = tallies(ops);
    let acked: Vec<&Op> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Buy && o.outcome == Outcome::Ok)
        .collect();
    let mut first = None;
    for (rid, orders) in &fin.orders {
        let Some(orders) = orders else {
            first.get_or_insert(format!("order {rid} never answered after the heal"));
            continue;
        };
        let mut ids: HashMap<&str, u32> = HashMap::new();
        for (id, book) in orders {
            if ids.insert(id.as_str(), *book).is_some() {
                first.get_or_insert(format!("order {rid}: order {id} recorded twice"));
            }
        }
        for op in &acked {
            let id = op.order_id.as_deref().unwrap_or("");
            match ids.get(id) {
                None => {
                    first.get_or_insert(format!(
                        "order {rid}: acknowledged order {id} (buy #{} of book {} by p{}, \
                         acknowledged at {:.3} s) is missing",
                        op.id,
                        op.book,
                        op.process,
                        op.complete_ns as f64 / 1e9
                    ));
                }
                Some(b) if *b != op.book => {
                    first.get_or_insert(format!(
                        "order {rid}: order {id} is for book {b}, but it was a buy of book {}",
                        op.book
                    ));
                }
                _ => {}
            }
        }
        let acked_ids: HashSet<&str> = acked.iter().filter_map(|o| o.order_id.as_deref()).collect();
        let mut extra: HashMap<u32, i64> = HashMap::new();
        for (id, book) in orders {
            if !acked_ids.contains(id.as_str()) {
                *extra.entry(*book).or_insert(0) += 1;
            }
        }
        for (book, n) in extra {
            let unknown = t.get(&book).map_or(0, |x| x.unknown);
            if n > unknown {
                first.get_or_insert(format!(
                    "order {rid}: {n} orders of book {book} were never acknowledged, but only \
                     {unknown} buys of it had an unknown outcome (orders nobody asked for)"
                ));
            }
        }
    }
    verdict(
        3,
        "acknowledged orders durable, none invented",
        format!(
            "{} acknowledged orders x {} order replicas",
            acked.len(),
            fin.orders.len()
        ),
        first,
    )
}

/// Checker 4: The replicas converge after the heal: every catalog replica has the same stock,
/// every order replica the same orders.
pub fn convergence(fin: &FinalState) -> Verdict {
    let mut first = None;
    let cats: Vec<_> = fin.catalogs.iter().collect();
    if let Some((r0, b0)) = cats.first() {
        for (r, b) in &cats[1..] {
            if b != b0 {
                first.get_or_insert(format!("catalog {r0} has {b0:?} but catalog {r} has {b:?}"));
            }
        }
    }
    let ords: Vec<_> = fin.orders.iter().collect();
    if let Some((r0, o0)) = ords.first() {
        for (r, o) in &ords[1..] {
            if o != o0 {
                let n = |o: &Option<Vec<(String, u32)>>| o.as_ref().map(Vec::len);
                first.get_or_insert(format!(
                    "order {r0} has {:?} orders but order {r} has {:?} (or they differ)",
                    n(o0),
                    n(o)
                ));
            }
        }
    }
    verdict(
        4,
        "replicas converge",
        format!(
            "{} catalog and {} order replicas, agreed after {:.1} s",
            fin.catalogs.len(),
            fin.orders.len(),
            fin.waited_s
        ),
        first,
    )
}

/// 5. Linearizability of buys, restocks and reads, per book.
pub fn linearizability(ops: &[Op], initial: &BTreeMap<u32, i64>, cap: usize) -> Verdict {
    let per_book = linear::check(ops, initial, cap);
    let mut first = None;
    let mut inconclusive = None;
    let mut parts = Vec::new();
    for (book, v) in &per_book {
        match v {
            BookVerdict::Linearizable { ops, max_configs } => parts.push(format!(
                "book {book}: {ops} ops ok (max {max_configs} configs)"
            )),
            BookVerdict::Violation { ops, message } => {
                parts.push(format!("book {book}: {ops} ops NOT linearizable"));
                first.get_or_insert(format!("book {book}: {message}"));
            }
            BookVerdict::Inconclusive { ops, at_ns } => {
                parts.push(format!("book {book}: {ops} ops, search capped"));
                inconclusive.get_or_insert(format!(
                    "book {book}: more than {cap} configurations at {:.3} s",
                    *at_ns as f64 / 1e9
                ));
            }
        }
    }
    let mut v = verdict(
        5,
        "linearizable buys and stock reads",
        parts.join("; "),
        first,
    );
    if v.status == Status::Pass && inconclusive.is_some() {
        v.status = Status::Inconclusive;
        v.counterexample = inconclusive;
    }
    v
}

/// Checker 6: The cache never served a stock older than a write acknowledged before the read
/// began. For a cache hit of book b returning s, read over [t0, t1]:
/// `s <= initial + restocks invoked before t1 - buys acknowledged before t0` (else it
/// misses an acknowledged buy) and
/// `s >= initial + restocks acknowledged before t0 - buys invoked before t1` (else it
/// misses an acknowledged restock).
pub fn cache_fresh(ops: &[Op], initial: &BTreeMap<u32, i64>) -> Verdict {
    let mut first = None;
    let mut hits = 0;
    let mut misses = 0;
    for (book, stock0) in initial {
        let mine: Vec<&Op> = ops.iter().filter(|o| o.book == *book).collect();
        // Sorted times of the events the bounds need.
        let mut acked_buy_done: Vec<u64> = Vec::new();
        let mut buy_invoked: Vec<u64> = Vec::new();
        let mut restock_done: Vec<(u64, i64)> = Vec::new();
        let mut restock_invoked: Vec<(u64, i64)> = Vec::new();
        for o in &mine {
            match (o.kind, o.outcome) {
                (OpKind::Buy, Outcome::Ok) => {
                    acked_buy_done.push(o.complete_ns);
                    buy_invoked.push(o.invoke_ns);
                }
                (OpKind::Buy, Outcome::Info) => buy_invoked.push(o.invoke_ns),
                (OpKind::Restock, Outcome::Ok) => {
                    let q = o.quantity.unwrap_or(0);
                    restock_done.push((o.complete_ns, q));
                    restock_invoked.push((o.invoke_ns, q));
                }
                (OpKind::Restock, Outcome::Info) => {
                    restock_invoked.push((o.invoke_ns, o.quantity.unwrap_or(0)))
                }
                _ => {}
            }
        }
        acked_buy_done.sort_unstable();
        buy_invoked.sort_unstable();
        let before = |v: &[u64], t: u64| v.partition_point(|x| *x < t) as i64;
        let sum_before = |v: &[(u64, i64)], t: u64| -> i64 {
            v.iter().filter(|(x, _)| *x < t).map(|(_, q)| q).sum()
        };
        for o in mine.iter().filter(|o| o.kind == OpKind::CacheRead) {
            let Some(s) = o.value.filter(|_| o.outcome == Outcome::Ok) else {
                misses += 1;
                continue;
            };
            hits += 1;
            let hi = stock0 + sum_before(&restock_invoked, o.complete_ns)
                - before(&acked_buy_done, o.invoke_ns);
            let lo = stock0 + sum_before(&restock_done, o.invoke_ns)
                - before(&buy_invoked, o.complete_ns);
            if (s > hi || s < lo) && first.is_none() {
                first = Some(format!(
                    "cache read #{} of book {book} at [{:.3} s, {:.3} s] returned stock {s}, \
                     but the writes acknowledged before it began allow only {lo}..={hi}{}",
                    o.id,
                    o.invoke_ns as f64 / 1e9,
                    o.complete_ns as f64 / 1e9,
                    if s > hi {
                        " (it misses an acknowledged buy)"
                    } else {
                        " (it misses an acknowledged restock)"
                    }
                ));
            }
        }
    }
    verdict(
        6,
        "cache never staler than an acknowledged write",
        format!("{hits} cache hits checked ({misses} misses)"),
        first,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buy(id: usize, book: u32, outcome: Outcome, order: Option<&str>, t: (u64, u64)) -> Op {
        Op {
            id,
            process: 0,
            kind: OpKind::Buy,
            book,
            quantity: None,
            value: None,
            order_id: order.map(str::to_string),
            key: None,
            error: None,
            outcome,
            invoke_ns: t.0,
            complete_ns: t.1,
            attempts: 1,
        }
    }

    fn fin(stock: i64, orders: &[(&str, u32)]) -> FinalState {
        let books: BTreeMap<u32, i64> = [(1, stock)].into_iter().collect();
        let o: Vec<(String, u32)> = orders.iter().map(|(i, b)| (i.to_string(), *b)).collect();
        FinalState {
            catalogs: [(0, Some(books.clone())), (1, Some(books))]
                .into_iter()
                .collect(),
            orders: [(0, Some(o.clone())), (1, Some(o))].into_iter().collect(),
            waited_s: 0.0,
        }
    }

    #[test]
    fn a_clean_history_passes_and_a_lost_order_fails() {
        let initial: BTreeMap<u32, i64> = [(1, 3)].into_iter().collect();
        let ops = vec![
            buy(0, 1, Outcome::Ok, Some("a"), (0, 1)),
            buy(1, 1, Outcome::Info, None, (2, 3)),
        ];
        let f = fin(1, &[("a", 1), ("x", 1)]);
        assert_eq!(no_oversell(&ops, &initial).status, Status::Pass);
        assert_eq!(conservation(&ops, &initial, &f).status, Status::Pass);
        assert_eq!(orders_durable(&ops, &f).status, Status::Pass);
        assert_eq!(convergence(&f).status, Status::Pass);
        // The acknowledged order lost, the stock not decremented.
        let f = fin(3, &[]);
        assert_eq!(orders_durable(&ops, &f).status, Status::Fail);
        assert_eq!(conservation(&ops, &initial, &f).status, Status::Fail);
        // Two orders nobody asked for.
        let f = fin(0, &[("a", 1), ("x", 1), ("y", 1)]);
        assert_eq!(orders_durable(&ops, &f).status, Status::Fail);
    }
}
