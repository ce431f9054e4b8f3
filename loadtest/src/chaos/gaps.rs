//! The longest unavailability per fault kind: the longest stretch of time in which no
//! client got an answer, among the stretches that overlap a fault of that kind.
//!
//! For buys an answer is a definite one (acknowledged or sold out), for reads a stock.
//! Every client counts together: a frontend down while the other answers is no gap. The
//! lanes run at once, so a gap that overlaps faults of several kinds counts for each of
//! them: the figure bounds what a kind costs from above.
use super::history::{FaultRecord, Op, OpKind, Outcome};
use serde::Serialize;
use std::collections::BTreeMap;

/// The longest stretches, in seconds, overlapping a fault of one kind.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Gap {
    pub buys_s: f64,
    pub reads_s: f64,
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

/// Per fault kind, the longest stretch without an answered buy and without a read.
pub fn longest_gaps(ops: &[Op], faults: &[FaultRecord]) -> BTreeMap<String, Gap> {
    let buys = answers(ops, |o| o.kind == OpKind::Buy && o.outcome != Outcome::Info);
    let reads = answers(ops, |o| o.kind == OpKind::Read && o.outcome == Outcome::Ok);
    let mut out: BTreeMap<String, Gap> = BTreeMap::new();
    for f in faults {
        let g = out.entry(f.kind.clone()).or_default();
        let s = |ns: u64| ns as f64 / 1e9;
        g.buys_s = g.buys_s.max(s(longest_over(&buys, f.start_ns, f.end_ns)));
        g.reads_s = g.reads_s.max(s(longest_over(&reads, f.start_ns, f.end_ns)));
    }
    out
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
            ],
        );
        // Unknown buys and failed reads are no answers.
        assert_eq!(
            g["kill"],
            Gap {
                buys_s: 2.0,
                reads_s: 1.5
            }
        );
    }
}
