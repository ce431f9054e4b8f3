//! Runs a workload against a target: one round per client count, each round a set of
//! concurrent client tasks sharing one HTTP connection pool, each task with its own
//! histogram (merged at the end, so the hot loop takes no lock).
//!
//! Closed loop (default): a client sends its next request when the previous answer is
//! in. Open loop (`rate`): request `i` of a round is due at `start + i / rate`; a free
//! client sends it then (or at once when late) and its latency is counted from the due
//! time, so a slow server cannot hide its queueing (no coordinated omission).
//!
//! - this file: [`RunConfig`] (what to run), [`run`] (every round) and run ids;
//! - `results`: what a run found ([`RunReport`], [`RoundResult`], latency summaries,
//!   error and operation counts);
//! - `calls`: the HTTP client and the single requests (send and classify, lookup,
//!   restock, item discovery);
//! - `round`: one round: the client tasks, the open-loop schedule, restocking, progress.
mod calls;
mod results;
mod round;

pub use calls::{discover_items, http_client, lookup_stock, restock};
pub use results::{
    ErrorCounts, LatencySummary, Mode, OpCounts, RaceResult, RoundResult, RunReport,
    MAX_LATENCY_US, PLOT_QUANTILES,
};
pub use round::run_round;

use crate::workload::{Mix, Workload, DEFAULT_ITEMS, SEED_TOPICS};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A run that could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// When a round ends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// This many requests in total per round (all clients together).
    Requests(u64),
    /// Rounds last this long (requests in flight at the end are still counted).
    #[serde(with = "secs")]
    Duration(Duration),
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// Everything a run needs. [`RunConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Base URL of the frontend (or of a baseline server), e.g. `http://127.0.0.1:8000`.
    pub target: String,
    pub workload: Workload,
    /// One round per entry, in this order.
    pub clients: Vec<usize>,
    pub stop: Stop,
    /// Open loop: requests per second in total; `None` is closed loop.
    pub rate: Option<f64>,
    pub seed: u64,
    /// Lets buy/mixed restock when every item is sold out, and race top its item up.
    pub admin_token: Option<bookstore_common::auth::Secret>,
    /// Items to look up and buy; `None`: found through search, else 1..=7.
    pub items: Option<Vec<u32>>,
    pub topics: Vec<String>,
    /// Per-request timeout (an answer later than this counts as a timeout error).
    pub timeout: Duration,
    /// The item a race buys; `None`: the first item.
    pub race_item: Option<u32>,
    /// Race with an admin token: top the item up to this stock before each round.
    pub race_stock: Option<u32>,
    /// Copies added per item when buy/mixed restock.
    pub restock_quantity: u32,
    /// A progress line on stderr while rounds run.
    pub progress: bool,
    /// Names the output folder; `None`: a UTC time stamp and the workload.
    pub run_id: Option<String>,
    /// Send lookups and searches with `Cache-Control: no-cache` (the frontend then skips
    /// its cache both ways).
    pub bypass_cache: bool,
    /// Servers whose CPU time and context switches each round measures (empty: none;
    /// see [`crate::procstat`]).
    pub servers: Vec<crate::procstat::Server>,
}

impl RunConfig {
    pub fn new(target: impl Into<String>, workload: Workload) -> RunConfig {
        RunConfig {
            target: target.into(),
            workload,
            clients: vec![1],
            stop: Stop::Requests(1000),
            rate: None,
            seed: 42,
            admin_token: None,
            items: None,
            topics: SEED_TOPICS.iter().map(|t| t.to_string()).collect(),
            timeout: Duration::from_secs(10),
            race_item: None,
            race_stock: None,
            restock_quantity: 100,
            progress: false,
            run_id: None,
            bypass_cache: false,
            servers: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error(m.to_string()));
        if !(self.target.starts_with("http://") || self.target.starts_with("https://")) {
            return bad("the target is a base URL like http://127.0.0.1:8000");
        }
        if self.clients.is_empty() || self.clients.contains(&0) {
            return bad("give one or more client counts, each > 0");
        }
        match self.stop {
            Stop::Requests(0) => return bad("--requests must be > 0"),
            Stop::Duration(d) if d.is_zero() => return bad("--duration must be > 0"),
            _ => {}
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return bad("--rate must be > 0 requests per second");
            }
        }
        if self.topics.is_empty() {
            return bad("give at least one topic");
        }
        if matches!(&self.items, Some(i) if i.is_empty()) {
            return bad("give at least one item");
        }
        if self.race_stock.is_some() && self.admin_token.is_none() {
            return bad("--race-stock needs --admin-token (it restocks the race item)");
        }
        Ok(())
    }
}

/// Runs every round of `config` (one per client count) and returns the report.
pub async fn run(config: &RunConfig) -> Result<RunReport, Error> {
    config.validate()?;
    let started_ms = bookstore_common::clock::now_ms();
    let target = config.target.trim_end_matches('/').to_string();
    let max_clients = config.clients.iter().copied().max().unwrap_or(1);
    let http = http_client(config.timeout, max_clients)?;
    let items = match &config.items {
        Some(items) => items.clone(),
        None if config.workload.needs_items() => {
            let found = discover_items(&http, &target, &config.topics).await;
            if found.is_empty() {
                DEFAULT_ITEMS.collect()
            } else {
                found
            }
        }
        None => DEFAULT_ITEMS.collect(),
    };
    let race_item = config.race_item.unwrap_or(items[0]);
    let mix = Mix::new(
        config.workload,
        &target,
        items.clone(),
        config.topics.clone(),
        race_item,
    );
    let mut rounds = Vec::with_capacity(config.clients.len());
    for (i, &clients) in config.clients.iter().enumerate() {
        rounds.push(run_round(config, &http, &mix, clients, i).await?);
    }
    Ok(RunReport {
        run_id: config
            .run_id
            .clone()
            .unwrap_or_else(|| default_run_id(started_ms, config.workload)),
        target,
        workload: config.workload,
        mode: if config.rate.is_some() {
            Mode::Open
        } else {
            Mode::Closed
        },
        rate: config.rate,
        stop: config.stop,
        seed: config.seed,
        started_ms,
        items,
        topics: config.topics.clone(),
        cache_bypassed: config.bypass_cache,
        rounds,
    })
}

/// `YYYYMMDD-HHMMSS-mmm-<workload>` in UTC, e.g. `20250101-120000-000-mixed-0.1`.
pub fn default_run_id(unix_ms: u64, workload: Workload) -> String {
    format!(
        "{}-{:03}-{}",
        bookstore_common::clock::utc_stamp(unix_ms / 1000),
        unix_ms % 1000,
        workload.to_string().replace(':', "-")
    )
}

#[cfg(test)]
mod tests {
    use super::results::new_histogram;
    use super::*;

    #[test]
    fn run_ids_are_utc_stamps() {
        assert_eq!(
            default_run_id(0, Workload::Lookup),
            "19700101-000000-000-lookup"
        );
        assert_eq!(
            default_run_id(1_704_110_400_123, Workload::Mixed { buy_fraction: 0.1 }),
            "20240101-120000-123-mixed-0.1"
        );
    }

    #[test]
    fn summary_orders_percentiles() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        let s = LatencySummary::from_histogram(&h);
        assert!(s.min_ms <= s.p50_ms && s.p50_ms <= s.p90_ms && s.p90_ms <= s.p99_ms);
        assert!(s.p99_ms <= s.p999_ms && s.p999_ms <= s.max_ms);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{}", s.p50_ms);
        assert_eq!(s.quantiles.len(), PLOT_QUANTILES.len());
        assert_eq!(
            LatencySummary::from_histogram(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn configs_are_checked() {
        let ok = RunConfig::new("http://127.0.0.1:1", Workload::Lookup);
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.target = "127.0.0.1:1".into();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.clients = vec![];
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.rate = Some(0.0);
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.race_stock = Some(5);
        assert!(c.validate().is_err());
    }
}
