//! Checker 5: linearizability of buys, restocks and stock reads, one book at a time.
//!
//! The model of a book is its stock, an integer:
//! - a buy that succeeded needs stock > 0 and takes one copy;
//! - a buy answered `409 out of stock` needs stock = 0 and changes nothing;
//! - a restock of q adds q (and when the answer shows the stock after, it must match);
//! - a read returning s needs stock = s.
//!
//! The search is Wing & Gong's, in the just-in-time form of Lowe ("Testing for
//! linearizability", 2017): walk the invocations and completions in real-time order and
//! keep every *configuration* the history so far can be in: the model's state plus which
//! of the operations still in flight have already taken effect. At an invocation the
//! operation joins the in-flight set; after every event, any in-flight operation may take
//! effect (its linearization point) if the model allows it with the result it returned;
//! at a completion, only configurations in which the operation has taken effect survive.
//! No configuration left = no linearization exists, and that completion is the
//! counter-example. Operations whose outcome is unknown (`info`) never complete: they may
//! take effect at any point after their invocation, or never; because they carry no
//! result, those of a book are interchangeable, so a configuration only counts how many
//! are still pending (a configuration with more pending ones subsumes one with fewer).
//! The number of configurations is capped; hitting the cap makes the verdict
//! "inconclusive" for that book, never a pass.
use super::history::{Op, OpKind, Outcome};
use std::collections::{BTreeMap, HashMap};

/// The verdict for one book.
#[derive(Debug, Clone)]
pub enum BookVerdict {
    Linearizable {
        ops: usize,
        max_configs: usize,
    },
    /// No linearization: the first completion that cannot be explained.
    Violation {
        ops: usize,
        message: String,
    },
    /// The search hit the cap.
    Inconclusive {
        ops: usize,
        at_ns: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Stock > 0, minus one.
    Take,
    /// Stock == 0.
    SoldOut,
    /// Stock == value.
    Read(i64),
    /// Plus q; the stock after must be `after` when known.
    Add(i64, Option<i64>),
}

#[derive(Debug, Clone, Copy)]
struct Call<'a> {
    op: &'a Op,
    effect: Effect,
    /// `info`: never completes.
    unknown: bool,
}

fn call_of(op: &Op) -> Option<Call<'_>> {
    let (effect, unknown) = match (op.kind, op.outcome) {
        (OpKind::Buy, Outcome::Ok) => (Effect::Take, false),
        (OpKind::Buy, Outcome::Fail) if op.error.as_deref() == Some("out of stock") => {
            (Effect::SoldOut, false)
        }
        (OpKind::Buy, Outcome::Info) => (Effect::Take, true),
        (OpKind::Read, Outcome::Ok) => (Effect::Read(op.value?), false),
        (OpKind::Restock, Outcome::Ok) => (Effect::Add(op.quantity?, op.value), false),
        (OpKind::Restock, Outcome::Info) => (Effect::Add(op.quantity?, None), true),
        _ => return None,
    };
    Some(Call {
        op,
        effect,
        unknown,
    })
}

fn apply(stock: i64, e: Effect) -> Option<i64> {
    match e {
        Effect::Take => (stock > 0).then_some(stock - 1),
        Effect::SoldOut => (stock == 0).then_some(stock),
        Effect::Read(v) => (stock == v).then_some(stock),
        Effect::Add(q, after) => match after {
            Some(a) if a != stock + q => None,
            _ => Some(stock + q),
        },
    }
}

/// A configuration: stock, which in-flight slots took effect, and the pending unknown
/// restocks (sorted quantities). Pending unknown buys are the map's value (kept at max).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    stock: i64,
    done: u128,
    restocks: Vec<i64>,
}

type Configs = HashMap<Key, u32>;

fn insert(configs: &mut Configs, k: Key, pending_buys: u32) -> bool {
    match configs.get_mut(&k) {
        Some(n) if *n >= pending_buys => false,
        Some(n) => {
            *n = pending_buys;
            true
        }
        None => {
            configs.insert(k, pending_buys);
            true
        }
    }
}

/// Lets every in-flight operation take effect in every order; false if the cap is hit.
fn closure(configs: &mut Configs, slots: &[Option<Call<'_>>], cap: usize) -> bool {
    let mut work: Vec<(Key, u32)> = configs.iter().map(|(k, n)| (k.clone(), *n)).collect();
    while let Some((k, n)) = work.pop() {
        if configs.len() > cap {
            return false;
        }
        // Skip entries superseded by a larger pending count.
        if configs.get(&k).is_some_and(|m| *m > n) {
            continue;
        }
        for (i, slot) in slots.iter().enumerate() {
            let Some(call) = slot else { continue };
            if k.done & (1u128 << i) != 0 {
                continue;
            }
            if let Some(s) = apply(k.stock, call.effect) {
                let next = Key {
                    stock: s,
                    done: k.done | (1u128 << i),
                    restocks: k.restocks.clone(),
                };
                if insert(configs, next.clone(), n) {
                    work.push((next, n));
                }
            }
        }
        if n > 0 && k.stock > 0 {
            let next = Key {
                stock: k.stock - 1,
                done: k.done,
                restocks: k.restocks.clone(),
            };
            if insert(configs, next.clone(), n - 1) {
                work.push((next, n - 1));
            }
        }
        let mut seen = Vec::new();
        for (j, q) in k.restocks.iter().enumerate() {
            if seen.contains(q) {
                continue;
            }
            seen.push(*q);
            let mut rest = k.restocks.clone();
            rest.remove(j);
            let next = Key {
                stock: k.stock + q,
                done: k.done,
                restocks: rest,
            };
            if insert(configs, next.clone(), n) {
                work.push((next, n));
            }
        }
    }
    true
}

fn describe(op: &Op, t0: u64) -> String {
    let what = match (op.kind, op.outcome) {
        (OpKind::Buy, Outcome::Ok) => "buy -> ok".to_string(),
        (OpKind::Buy, Outcome::Fail) => "buy -> out of stock".to_string(),
        (OpKind::Buy, Outcome::Info) => "buy -> unknown".to_string(),
        (OpKind::Read, _) => format!("read -> stock {}", op.value.unwrap_or(-1)),
        (OpKind::Restock, o) => format!(
            "restock +{} -> {}",
            op.quantity.unwrap_or(0),
            match (o, op.value) {
                (Outcome::Ok, Some(v)) => format!("stock {v}"),
                (Outcome::Ok, None) => "ok".into(),
                _ => "unknown".into(),
            }
        ),
        (k, _) => k.name().to_string(),
    };
    let end = if op.outcome == Outcome::Info {
        "?".to_string()
    } else {
        format!("{:.3}", (op.complete_ns.saturating_sub(t0)) as f64 / 1e9)
    };
    format!(
        "#{} p{} {what} [{:.3} s, {end} s]",
        op.id,
        op.process,
        (op.invoke_ns.saturating_sub(t0)) as f64 / 1e9
    )
}

/// Checks the operations of one book (`initial` copies at the start).
pub fn check_book(ops: &[&Op], initial: i64, cap: usize) -> BookVerdict {
    let calls: Vec<Call<'_>> = ops.iter().filter_map(|o| call_of(o)).collect();
    let n = calls.len();
    // Events: (time, 0 = invoke / 1 = complete, index). Invocations first on ties: the
    // lenient choice (it never orders two operations that might have overlapped).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, c) in calls.iter().enumerate() {
        events.push((c.op.invoke_ns, 0, i));
        if !c.unknown {
            events.push((c.op.complete_ns, 1, i));
        }
    }
    events.sort();
    let mut configs: Configs = HashMap::new();
    configs.insert(
        Key {
            stock: initial,
            done: 0,
            restocks: Vec::new(),
        },
        0,
    );
    let mut slots: Vec<Option<Call<'_>>> = Vec::new();
    let mut slot_of: HashMap<usize, usize> = HashMap::new();
    let mut max_configs = 1;
    for (t, what, i) in events {
        let call = calls[i];
        if what == 0 {
            if call.unknown {
                let mut next = Configs::new();
                for (k, pending) in configs.drain() {
                    match call.effect {
                        Effect::Add(q, _) => {
                            let mut k = k;
                            k.restocks.push(q);
                            k.restocks.sort_unstable();
                            insert(&mut next, k, pending);
                        }
                        _ => {
                            insert(&mut next, k, pending + 1);
                        }
                    }
                }
                configs = next;
            } else {
                let free = match slots.iter().position(Option::is_none) {
                    Some(f) => f,
                    None => {
                        slots.push(None);
                        slots.len() - 1
                    }
                };
                if free >= 128 {
                    return BookVerdict::Inconclusive { ops: n, at_ns: t };
                }
                slots[free] = Some(call);
                slot_of.insert(i, free);
            }
        } else {
            let slot = slot_of.remove(&i).expect("invoked before completed");
            let bit = 1u128 << slot;
            let before: Vec<i64> = {
                let mut s: Vec<i64> = configs.keys().map(|k| k.stock).collect();
                s.sort_unstable();
                s.dedup();
                s
            };
            let mut next = Configs::new();
            for (mut k, pending) in configs.drain() {
                if k.done & bit != 0 {
                    k.done &= !bit;
                    insert(&mut next, k, pending);
                }
            }
            slots[slot] = None;
            if next.is_empty() {
                let t0 = 0;
                let in_flight: Vec<String> = slots
                    .iter()
                    .flatten()
                    .take(12)
                    .map(|c| describe(c.op, t0))
                    .collect();
                let message = format!(
                    "{} cannot be linearized: the stock could only have been {:?} while it ran; \
                     also in flight: [{}]",
                    describe(call.op, t0),
                    before,
                    in_flight.join("; ")
                );
                return BookVerdict::Violation { ops: n, message };
            }
            configs = next;
        }
        if !closure(&mut configs, &slots, cap) {
            return BookVerdict::Inconclusive { ops: n, at_ns: t };
        }
        max_configs = max_configs.max(configs.len());
    }
    BookVerdict::Linearizable {
        ops: n,
        max_configs,
    }
}

/// Checks every book; `initial` maps each book to its starting stock.
pub fn check(ops: &[Op], initial: &BTreeMap<u32, i64>, cap: usize) -> BTreeMap<u32, BookVerdict> {
    let mut out = BTreeMap::new();
    for (&book, &stock) in initial {
        let mine: Vec<&Op> = ops.iter().filter(|o| o.book == book).collect();
        out.insert(book, check_book(&mine, stock, cap));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: usize, kind: OpKind, outcome: Outcome, value: Option<i64>, t: (u64, u64)) -> Op {
        Op {
            id,
            process: id,
            kind,
            book: 1,
            quantity: if kind == OpKind::Restock {
                Some(2)
            } else {
                None
            },
            value,
            order_id: None,
            key: None,
            error: (outcome == Outcome::Fail).then(|| "out of stock".to_string()),
            outcome,
            invoke_ns: t.0,
            complete_ns: t.1,
            attempts: 1,
        }
    }

    fn verdict(ops: &[Op], initial: i64) -> BookVerdict {
        let refs: Vec<&Op> = ops.iter().collect();
        check_book(&refs, initial, 100_000)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = vec![
            op(0, OpKind::Read, Outcome::Ok, Some(1), (0, 1)),
            op(1, OpKind::Buy, Outcome::Ok, None, (2, 3)),
            op(2, OpKind::Read, Outcome::Ok, Some(0), (4, 5)),
            op(3, OpKind::Buy, Outcome::Fail, None, (6, 7)),
            op(4, OpKind::Restock, Outcome::Ok, Some(2), (8, 9)),
            op(5, OpKind::Read, Outcome::Ok, Some(2), (10, 11)),
        ];
        assert!(matches!(verdict(&ops, 1), BookVerdict::Linearizable { .. }));
    }

    #[test]
    fn stale_read_after_an_acknowledged_buy_is_caught() {
        let ops = vec![
            op(0, OpKind::Buy, Outcome::Ok, None, (0, 10)),
            op(1, OpKind::Read, Outcome::Ok, Some(3), (11, 12)),
        ];
        let v = verdict(&ops, 3);
        assert!(matches!(v, BookVerdict::Violation { .. }), "{v:?}");
    }

    #[test]
    fn concurrent_read_may_see_either_state() {
        let ops = vec![
            op(0, OpKind::Buy, Outcome::Ok, None, (0, 10)),
            op(1, OpKind::Read, Outcome::Ok, Some(3), (5, 12)),
            op(2, OpKind::Read, Outcome::Ok, Some(2), (6, 8)),
        ];
        assert!(matches!(verdict(&ops, 3), BookVerdict::Linearizable { .. }));
        // But not back in time: after seeing 2, a later read cannot see 3.
        let ops = vec![
            op(0, OpKind::Buy, Outcome::Ok, None, (0, 10)),
            op(1, OpKind::Read, Outcome::Ok, Some(2), (1, 2)),
            op(2, OpKind::Read, Outcome::Ok, Some(3), (3, 4)),
        ];
        assert!(matches!(verdict(&ops, 3), BookVerdict::Violation { .. }));
    }

    #[test]
    fn oversell_and_wrong_sold_out_are_caught() {
        let ops = vec![
            op(0, OpKind::Buy, Outcome::Ok, None, (0, 1)),
            op(1, OpKind::Buy, Outcome::Ok, None, (2, 3)),
        ];
        assert!(matches!(verdict(&ops, 1), BookVerdict::Violation { .. }));
        let ops = vec![op(0, OpKind::Buy, Outcome::Fail, None, (0, 1))];
        assert!(matches!(verdict(&ops, 1), BookVerdict::Violation { .. }));
    }

    #[test]
    fn unknown_buys_may_or_may_not_happen() {
        let ops = vec![
            op(0, OpKind::Buy, Outcome::Info, None, (0, 1)),
            op(1, OpKind::Read, Outcome::Ok, Some(3), (2, 3)),
            op(2, OpKind::Read, Outcome::Ok, Some(2), (4, 5)),
        ];
        assert!(matches!(verdict(&ops, 3), BookVerdict::Linearizable { .. }));
        // An unknown buy can explain one missing copy, not two.
        let ops = vec![
            op(0, OpKind::Buy, Outcome::Info, None, (0, 1)),
            op(1, OpKind::Read, Outcome::Ok, Some(1), (2, 3)),
        ];
        assert!(matches!(verdict(&ops, 3), BookVerdict::Violation { .. }));
    }

    #[test]
    fn restock_answer_must_match() {
        // +2 on 3 copies answers 5, not 6.
        let ops = vec![op(0, OpKind::Restock, Outcome::Ok, Some(5), (0, 1))];
        assert!(matches!(verdict(&ops, 3), BookVerdict::Linearizable { .. }));
        let ops = vec![op(0, OpKind::Restock, Outcome::Ok, Some(6), (0, 1))];
        assert!(matches!(verdict(&ops, 3), BookVerdict::Violation { .. }));
        let ops = vec![
            op(0, OpKind::Restock, Outcome::Info, None, (0, 1)),
            op(1, OpKind::Read, Outcome::Ok, Some(5), (2, 3)),
        ];
        assert!(matches!(verdict(&ops, 3), BookVerdict::Linearizable { .. }));
    }
}
