//! What a run found: the report of a run and of each round, latency summaries from
//! HdrHistograms, and error and operation counts.
use crate::tiers::TierResult;
use crate::workload::{Op, Workload};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::Stop;

/// Highest latency the histograms hold (larger values are clamped), in microseconds.
pub const MAX_LATENCY_US: u64 = 120_000_000;

/// Errors by kind. A buy's 409 (sold out) is an answer, not an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Could not connect (refused, reset while connecting, connect timeout).
    pub connect: u64,
    /// No answer within the timeout.
    pub timeout: u64,
    /// A 5xx status.
    pub server_5xx: u64,
    /// A 4xx status the workload does not expect (all but a buy's 409).
    pub unexpected_4xx: u64,
    /// Anything else: a broken connection, an empty 200, a 1xx/3xx status.
    pub other: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.server_5xx + self.unexpected_4xx + self.other
    }

    pub(super) fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.server_5xx += o.server_5xx;
        self.unexpected_4xx += o.unexpected_4xx;
        self.other += o.other;
    }

    pub(super) fn count(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Server5xx => self.server_5xx += 1,
            ErrorKind::Unexpected4xx => self.unexpected_4xx += 1,
            ErrorKind::Other => self.other += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorKind {
    Connect,
    Timeout,
    Server5xx,
    Unexpected4xx,
    Other,
}

/// Latency figures of one round, in milliseconds, from its histogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub min_ms: f64,
    pub mean_ms: f64,
    pub stdev_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// `(quantile, ms)` pairs from 0 to 1, for latency plots.
    pub quantiles: Vec<(f64, f64)>,
}

/// Quantiles kept in [`LatencySummary::quantiles`].
pub const PLOT_QUANTILES: [f64; 18] = [
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995,
    0.9999, 1.0,
];

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |q: f64| ms(h.value_at_quantile(q));
        LatencySummary {
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            stdev_ms: h.stdev() / 1000.0,
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: ms(h.max()),
            quantiles: PLOT_QUANTILES.iter().map(|&p| (p, q(p))).collect(),
        }
    }
}

/// What a race round found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaceResult {
    pub item: u32,
    /// Stock looked up just before the round (after any top-up).
    pub stock_before: u32,
    /// Buys answered 200.
    pub successes: u64,
    /// Buys answered 409.
    pub sold_out: u64,
    /// Stock looked up just after the round (`None` if the lookup failed).
    pub stock_after: Option<u32>,
    /// `min(stock_before, buys answered)`: what `successes` must be.
    pub expected_successes: u64,
    /// `successes == expected_successes`, no buy with an unknown outcome, and the stock
    /// after is the stock before less the successes.
    pub consistent: bool,
}

/// The result of one round (one client count).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    pub clients: usize,
    /// Requests answered (200, and a buy's 409); the histogram holds exactly these.
    pub count: u64,
    /// Answered requests by operation (`lookup`, `search`, `buy`).
    pub ops: OpCounts,
    pub errors: ErrorCounts,
    /// Buys answered 200.
    pub bought: u64,
    /// Buys answered 409 (sold out).
    pub sold_out: u64,
    /// Times buy/mixed restocked every item.
    pub restocks: u64,
    /// Wall time of the round, first request to last answer.
    pub elapsed_s: f64,
    /// Answered requests per second of `elapsed_s`.
    pub throughput_rps: f64,
    pub latency: LatencySummary,
    /// Per-tier latency: [`END_TO_END`](crate::tiers::END_TO_END) (the client's own measurement, the same figures
    /// as `latency`) first, then the tiers of the answers' `Server-Timing` headers.
    #[serde(default)]
    pub tiers: Vec<TierResult>,
    pub race: Option<RaceResult>,
    /// What the servers spent during the round (with [`RunConfig::servers`](crate::runner::RunConfig::servers)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::procstat::Cost>,
    /// The round's histogram (microseconds); not serialised.
    #[serde(skip)]
    pub histogram: Option<Histogram<u64>>,
}

/// Answered requests by operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    pub lookup: u64,
    pub search: u64,
    pub buy: u64,
}

impl OpCounts {
    pub(super) fn count(&mut self, op: Op) {
        match op {
            Op::Lookup => self.lookup += 1,
            Op::Search => self.search += 1,
            Op::Buy => self.buy += 1,
        }
    }
    pub(super) fn add(&mut self, o: &OpCounts) {
        self.lookup += o.lookup;
        self.search += o.search;
        self.buy += o.buy;
    }
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Closed,
    Open,
}

/// The result of a whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub target: String,
    pub workload: Workload,
    pub mode: Mode,
    /// Open loop: the requested rate (requests per second, all clients together).
    pub rate: Option<f64>,
    pub stop: Stop,
    pub seed: u64,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub items: Vec<u32>,
    pub topics: Vec<String>,
    /// Lookups and searches were sent with `Cache-Control: no-cache`.
    #[serde(default)]
    pub cache_bypassed: bool,
    pub rounds: Vec<RoundResult>,
}

impl RunReport {
    /// Whether every race round was consistent (true when the workload is no race).
    pub fn race_consistent(&self) -> bool {
        self.rounds
            .iter()
            .all(|r| !matches!(&r.race, Some(x) if !x.consistent))
    }

    /// Errors of all rounds.
    pub fn total_errors(&self) -> u64 {
        self.rounds.iter().map(|r| r.errors.total()).sum()
    }

    /// Every tier name of any round, in order of first appearance.
    pub fn tier_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for r in &self.rounds {
            for t in &r.tiers {
                if !names.contains(&t.tier) {
                    names.push(t.tier.clone());
                }
            }
        }
        names
    }
}

pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}
