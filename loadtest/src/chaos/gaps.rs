//! Unavailability per fault kind. For each fault, the longest stretch of time in which
//! no client got an answer, among the stretches that overlap the fault; per kind, the
//! median and the largest of those over its faults.
//!
//! For buys an answer is a definite one (acknowledged or sold out), for reads a stock.
//! Every client counts together: a frontend down while the other answers is no gap. The
//! lanes run at once, so a stretch that overlaps faults of several kinds counts for each
//! of them: the figures bound what a kind costs from above (the largest is usually one
//! stretch shared by every kind; the median tells the kinds apart better).
use super::history::{FaultRecord, Op, OpKind, Outcome};
use serde::Serialize;
use std::collections::BTreeMap;

/// Over the faults of one kind, in seconds: the median and the largest of each fault's
/// longest stretch without an answer.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Gap {
    pub buys_median_s: f64,
    pub buys_max_s: f64,
    pub reads_median_s: f64,
    pub reads_max_s: f64,
}

/// Sorted times (ns) of the answers that count.
fn answers(ops: &[Op], counts: impl Fn(&Op) -> bool) -> Vec<u64> {
    let mut t: Vec<u64> = ops
        .iter()
        .filter(|o| counts(o))
        .map(|o| o.complete_ns)
        .collect();
    t.sort_unstable();
    t
}

/// The longest stretch between consecutive answers in `times` that overlaps
/// `[start, end]` (the stretch before the first answer and after the last count too).
fn longest_over(times: &[u64], start: u64, end: u64) -> u64 {
    // The stretch holding `start` begins at the last answer at or before it.
    let first = times.partition_point(|t| *t <= start);
    let mut from = if first == 0 { 0 } else { times[first - 1] };
    let mut longest = 0;
    for &t in &times[first..] {
        longest = longest.max(t - from);
        if t >= end {
            return longest;
        }
        from = t;
    }
    // No answer after the fault: the stretch runs on to its end at least.
    longest.max(end.saturating_sub(from))
}

/// The median and the largest of `v` (sorted here), in seconds.
fn median_max(mut v: Vec<u64>) -> (f64, f64) {
    v.sort_unstable();
    let s = |ns: u64| ns as f64 / 1e9;
    match v.len() {
        0 => (0.0, 0.0),
        n if n % 2 == 1 => (s(v[n / 2]), s(v[n - 1])),
        n => ((s(v[n / 2 - 1]) + s(v[n / 2])) / 2.0, s(v[n - 1])),
    }
}

/// Per fault kind, the median and largest stretch without an answered buy, and without
/// an answered read, over its faults.
pub fn longest_gaps(ops: &[Op], faults: &[FaultRecord]) -> BTreeMap<String, Gap> {
    let buys = answers(ops, |o| o.kind == OpKind::Buy && o.outcome != Outcome::Info);
    let reads = answers(ops, |o| o.kind == OpKind::Read && o.outcome == Outcome::Ok);
    let mut per_kind: BTreeMap<&str, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    for f in faults {
        let (b, r) = per_kind.entry(f.kind.as_str()).or_default();
        b.push(longest_over(&buys, f.start_ns, f.end_ns));
        r.push(longest_over(&reads, f.start_ns, f.end_ns));
    }
    per_kind
        .into_iter()
        .map(|(kind, (b, r))| {
            let (buys_median_s, buys_max_s) = median_max(b);
            let (reads_median_s, reads_max_s) = median_max(r);
            let gap = Gap {
                buys_median_s,
                buys_max_s,
                reads_median_s,
                reads_max_s,
            };
            (kind.to_string(), gap)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stretch_holding_the_fault_and_those_inside_it_count() {
        let t = [10, 20, 30, 70, 80, 200];
        // Fault inside one stretch.
        assert_eq!(longest_over(&t, 35, 40), 40);
        // Fault over several: the longest of them.
        assert_eq!(longest_over(&t, 15, 75), 40);
        // A stretch ending after the fault still counts whole.
        assert_eq!(longest_over(&t, 85, 90), 120);
        // Nothing answered after the fault began: up to its end.
        assert_eq!(longest_over(&t, 210, 300), 100);
        // Before the first answer.
        assert_eq!(longest_over(&t, 0, 5), 10);
        assert_eq!(longest_over(&[], 5, 9), 9);
    }

    #[test]
    fn per_kind_the_longest_over_its_faults() {
        let op = |kind, outcome, complete_ns| Op {
            id: 0,
            process: 0,
            kind,
            book: 1,
            quantity: None,
            value: Some(1),
            order_id: None,
            key: None,
            error: None,
            outcome,
            invoke_ns: 0,
            complete_ns,
            attempts: 1,
        };
        let ops = vec![
            op(OpKind::Buy, Outcome::Ok, 1_000_000_000),
            op(OpKind::Buy, Outcome::Info, 1_500_000_000),
            op(OpKind::Buy, Outcome::Fail, 3_000_000_000),
            op(OpKind::Read, Outcome::Ok, 1_000_000_000),
            op(OpKind::Read, Outcome::Fail, 2_000_000_000),
            op(OpKind::Read, Outcome::Ok, 2_500_000_000),
        ];
        let fault = |kind: &str, start_ns, end_ns| FaultRecord {
            kind: kind.into(),
            target: String::new(),
            start_ns,
            end_ns,
            note: String::new(),
        };
        let g = longest_gaps(
            &ops,
            &[
                fault("kill", 1_200_000_000, 1_300_000_000),
                fault("kill", 100_000_000, 200_000_000),
                fault("pause", 100_000_000, 200_000_000),
            ],
        );
        // Unknown buys and failed reads are no answers: buys 2.0 and 1.0 s, reads 1.5
        // and 1.0 s.
        assert_eq!(
            g["kill"],
            Gap {
                buys_median_s: 1.5,
                buys_max_s: 2.0,
                reads_median_s: 1.25,
                reads_max_s: 1.5,
            }
        );
        assert_eq!(g["pause"].buys_max_s, 1.0);
        assert_eq!(g["pause"].reads_median_s, 1.0);
    }
}
