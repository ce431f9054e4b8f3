//! Per-tier latency: every answer's `Server-Timing` header (`frontend;dur=0.9,
//! cache;dur=0.3, order.catalog;dur=2.1, ...`, see `bookstore_common::timing`) is split
//! into tiers, each with its own HdrHistogram, so a report can break end-to-end latency
//! down the way the seed's tables do (client to frontend, frontend to catalog, order to
//! catalog, ...).
//!
//! Tier names: the client's own measurement is [`END_TO_END`]; the first header entry
//! (the frontend's time from request to answer) is `frontend (in server)`; an entry
//! `a.b.c` is the call from `b` to `c` (`catalog->replication`), and a one-part entry
//! `c` is the frontend's call to `c` (`frontend->cache`).
use crate::runner::LatencySummary;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The client's own end-to-end measurement.
pub const END_TO_END: &str = "client->frontend";

/// The latency of one tier in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierResult {
    /// `client->frontend`, `frontend (in server)`, `frontend->cache`, `order->catalog`, ...
    pub tier: String,
    /// The `Server-Timing` entry it comes from (`order.catalog`), empty for end-to-end.
    pub entry: String,
    /// Answers that reported this tier (a cache hit has no catalog call).
    pub count: u64,
    pub latency: LatencySummary,
}

/// The tier name of header entry `index` (`name`), in a header whose first entry is `own`.
pub fn tier_name(own: &str, index: usize, name: &str) -> String {
    if index == 0 {
        return format!("{own} (in server)");
    }
    let mut parts = name.rsplit('.');
    let callee = parts.next().unwrap_or(name);
    let caller = parts.next().unwrap_or(own);
    format!("{caller}->{callee}")
}

struct Tier {
    own: String,
    entry: String,
    is_own: bool,
    hist: Histogram<u64>,
}

/// One client's per-tier histograms (microseconds). Few tiers: a linear search over
/// them costs less than hashing, and nothing is allocated once every tier was seen.
#[derive(Default)]
pub struct TierHistograms {
    tiers: Vec<Tier>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, crate::runner::MAX_LATENCY_US, 3).expect("valid bounds")
}

impl TierHistograms {
    /// Records every entry of one answer's `Server-Timing` header.
    pub fn record_header(&mut self, header: &str) {
        let entries = bookstore_common::timing::parse(header);
        let Some(&(own, _)) = entries.first() else {
            return;
        };
        for (i, (name, ms)) in entries.into_iter().enumerate() {
            let us = ((ms * 1000.0).round() as u64).max(1);
            self.record(own, i == 0, name, us);
        }
    }

    fn record(&mut self, own: &str, is_own: bool, entry: &str, us: u64) {
        let found = self
            .tiers
            .iter_mut()
            .find(|t| t.is_own == is_own && t.entry == entry && t.own == own);
        let tier = match found {
            Some(t) => t,
            None => {
                self.tiers.push(Tier {
                    own: own.to_string(),
                    entry: entry.to_string(),
                    is_own,
                    hist: new_histogram(),
                });
                self.tiers.last_mut().expect("just pushed")
            }
        };
        tier.hist.saturating_record(us);
    }

    /// Adds another client's histograms (tiers in order of first appearance).
    pub fn merge(&mut self, other: &TierHistograms) {
        for t in &other.tiers {
            match self
                .tiers
                .iter_mut()
                .find(|m| m.is_own == t.is_own && m.entry == t.entry && m.own == t.own)
            {
                Some(m) => m.hist.add(&t.hist).expect("same histogram bounds"),
                None => self.tiers.push(Tier {
                    own: t.own.clone(),
                    entry: t.entry.clone(),
                    is_own: t.is_own,
                    hist: t.hist.clone(),
                }),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The tiers' summaries: the server's own time first, then the calls in order of
    /// first appearance.
    pub fn results(&self) -> Vec<TierResult> {
        let mut out: Vec<&Tier> = self.tiers.iter().filter(|t| t.is_own).collect();
        out.extend(self.tiers.iter().filter(|t| !t.is_own));
        out.into_iter()
            .map(|t| TierResult {
                tier: tier_name(&t.own, if t.is_own { 0 } else { 1 }, &t.entry),
                entry: t.entry.clone(),
                count: t.hist.len(),
                latency: LatencySummary::from_histogram(&t.hist),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_call_path() {
        assert_eq!(tier_name("frontend", 0, "frontend"), "frontend (in server)");
        assert_eq!(tier_name("frontend", 1, "cache"), "frontend->cache");
        assert_eq!(tier_name("frontend", 2, "order.catalog"), "order->catalog");
        assert_eq!(
            tier_name("frontend", 3, "order.catalog.replication"),
            "catalog->replication"
        );
    }

    #[test]
    fn headers_are_split_into_tiers_and_merged() {
        let mut a = TierHistograms::default();
        a.record_header("frontend;dur=2.000, cache;dur=0.500");
        a.record_header("frontend;dur=4.000, cache;dur=0.300, catalog;dur=1.000");
        a.record_header("not a header");
        let mut b = TierHistograms::default();
        b.record_header("frontend;dur=1.0, order;dur=0.9, order.catalog;dur=0.4");
        a.merge(&b);
        let r = a.results();
        let names: Vec<&str> = r.iter().map(|t| t.tier.as_str()).collect();
        assert_eq!(
            names,
            [
                "frontend (in server)",
                "frontend->cache",
                "frontend->catalog",
                "frontend->order",
                "order->catalog"
            ]
        );
        let counts: Vec<u64> = r.iter().map(|t| t.count).collect();
        assert_eq!(counts, [3, 2, 1, 1, 1]);
        assert!(
            (r[0].latency.max_ms - 4.0).abs() < 0.01,
            "{:?}",
            r[0].latency
        );
        assert_eq!(r[2].latency.p50_ms, 1.0);
        assert_eq!(r[4].entry, "order.catalog");
    }
}
