//! One round: `clients` concurrent tasks sharing one connection pool, the open-loop
//! schedule, restocking when every item is sold out, the progress line, and the
//! round's result (latency, tiers, race check, server cost).
use crate::tiers::{TierHistograms, TierResult, END_TO_END};
use crate::workload::{Mix, Workload};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::calls::{lookup_stock, restock, send, Outcome};
use super::results::{new_histogram, ErrorCounts, LatencySummary, OpCounts, RaceResult};
use super::{Error, RoundResult, RunConfig, Stop};

/// State the client tasks of one round share.
struct Shared {
    http: reqwest::Client,
    mix: Mix,
    target: String,
    race_url: String,
    next_ticket: AtomicU64,
    limit: Option<u64>,
    start: Instant,
    deadline: Option<Instant>,
    /// Open loop: seconds between two due times.
    interval: Option<f64>,
    answered: AtomicU64,
    failed: AtomicU64,
    sold_out_items: Vec<AtomicBool>,
    restocking: AtomicBool,
    restocks: AtomicU64,
    admin_token: Option<bookstore_common::auth::Secret>,
    restock_quantity: u32,
    bypass_cache: bool,
}

/// What one client task saw (and, merged, the whole round).
struct ClientStats {
    hist: Histogram<u64>,
    tiers: TierHistograms,
    ops: OpCounts,
    errors: ErrorCounts,
    bought: u64,
    sold_out: u64,
}

impl ClientStats {
    fn new() -> ClientStats {
        ClientStats {
            hist: new_histogram(),
            tiers: TierHistograms::default(),
            ops: OpCounts::default(),
            errors: ErrorCounts::default(),
            bought: 0,
            sold_out: 0,
        }
    }

    fn merge(&mut self, s: &ClientStats) {
        self.hist.add(&s.hist).expect("same histogram bounds");
        self.tiers.merge(&s.tiers);
        self.ops.add(&s.ops);
        self.errors.add(&s.errors);
        self.bought += s.bought;
        self.sold_out += s.sold_out;
    }
}

impl Shared {
    fn new(
        config: &RunConfig,
        http: &reqwest::Client,
        mix: &Mix,
        target: String,
        start: Instant,
    ) -> Shared {
        Shared {
            http: http.clone(),
            mix: mix.clone(),
            race_url: format!("{target}/buy?item_number={}", mix.race_item),
            target,
            next_ticket: AtomicU64::new(0),
            limit: match config.stop {
                Stop::Requests(n) => Some(n),
                Stop::Duration(_) => None,
            },
            start,
            deadline: match config.stop {
                Stop::Duration(d) => Some(start + d),
                Stop::Requests(_) => None,
            },
            interval: config.rate.map(|r| 1.0 / r),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            sold_out_items: mix.items.iter().map(|_| AtomicBool::new(false)).collect(),
            restocking: AtomicBool::new(false),
            restocks: AtomicU64::new(0),
            admin_token: config.admin_token.clone(),
            restock_quantity: config.restock_quantity,
            bypass_cache: config.bypass_cache,
        }
    }

    /// Marks an item sold out; with an admin token, restocks every item once all are.
    async fn sold_out(&self, index: usize) {
        self.sold_out_items[index].store(true, Ordering::Relaxed);
        let Some(token) = &self.admin_token else {
            return;
        };
        if !self
            .sold_out_items
            .iter()
            .all(|f| f.load(Ordering::Relaxed))
        {
            return;
        }
        if self
            .restocking
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        for (i, item) in self.mix.items.iter().enumerate() {
            if restock(
                &self.http,
                &self.target,
                token,
                *item,
                self.restock_quantity,
            )
            .await
            .is_ok()
            {
                self.sold_out_items[i].store(false, Ordering::Relaxed);
            }
        }
        self.restocks.fetch_add(1, Ordering::Relaxed);
        self.restocking.store(false, Ordering::Release);
    }

    /// The due time of the next request, or `None` when the round is over.
    async fn next_due(&self) -> Option<Instant> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        if self.limit.is_some_and(|n| ticket >= n) {
            return None;
        }
        match self.interval {
            Some(interval) => {
                let due = self.start + Duration::from_secs_f64(interval * ticket as f64);
                if self.deadline.is_some_and(|d| due >= d) {
                    return None;
                }
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => {
                let now = Instant::now();
                if self.deadline.is_some_and(|d| now >= d) {
                    return None;
                }
                Some(now)
            }
        }
    }
}

async fn client_task(shared: Arc<Shared>, seed: u64) -> ClientStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = ClientStats::new();
    while let Some(due) = shared.next_due().await {
        let req = shared.mix.next(&mut rng, &shared.race_url);
        let (outcome, timing) = send(&shared.http, &req, shared.bypass_cache).await;
        let latency_us = due.elapsed().as_micros() as u64;
        let answered = match outcome {
            Outcome::Ok => true,
            Outcome::Bought => {
                stats.bought += 1;
                true
            }
            Outcome::SoldOut => {
                stats.sold_out += 1;
                if let Some(i) = req.item_index {
                    shared.sold_out(i).await;
                }
                true
            }
            Outcome::Failed(kind) => {
                stats.errors.count(kind);
                false
            }
        };
        if answered {
            stats.hist.saturating_record(latency_us.max(1));
            if let Some(h) = &timing {
                stats.tiers.record_header(h);
            }
            stats.ops.count(req.op);
            shared.answered.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    stats
}

fn progress_line(label: &str, shared: &Shared) -> String {
    let done = shared.answered.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let t = shared.start.elapsed().as_secs_f64();
    let rate = if t > 0.0 { done as f64 / t } else { 0.0 };
    format!("{label}: {done} answered, {failed} errors, {rate:.0} req/s, {t:.1}s")
}

/// Prints the progress of a round on stderr until aborted.
fn spawn_progress(label: String, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let line = progress_line(&label, &shared);
            let mut err = std::io::stderr().lock();
            if tty {
                let _ = write!(err, "\r\x1b[2K{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
        }
    })
}

/// Runs one round with `clients` concurrent clients.
pub async fn run_round(
    config: &RunConfig,
    http: &reqwest::Client,
    mix: &Mix,
    clients: usize,
    round: usize,
) -> Result<RoundResult, Error> {
    let target = config.target.trim_end_matches('/').to_string();
    let stock_before = if config.workload == Workload::Race {
        race_stock_before(config, http, &target, mix).await?
    } else {
        0
    };
    let sample =
        (!config.servers.is_empty()).then(|| crate::procstat::Sample::take(&config.servers));
    let start = Instant::now();
    let shared = Arc::new(Shared::new(config, http, mix, target.clone(), start));
    let label = format!("{} clients={clients}", config.workload);
    let progress = config
        .progress
        .then(|| spawn_progress(label.clone(), shared.clone()));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            tokio::spawn(client_task(
                shared.clone(),
                client_seed(config.seed, round, c),
            ))
        })
        .collect();
    let mut stats = ClientStats::new();
    for t in tasks {
        let s = t
            .await
            .map_err(|e| Error(format!("a client task failed: {e}")))?;
        stats.merge(&s);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let server = sample.map(|before| {
        let after = crate::procstat::Sample::take(&config.servers);
        crate::procstat::Cost::between(&before, &after)
    });
    if let Some(p) = progress {
        end_progress(p, &label, &shared).await;
    }
    let race = if config.workload == Workload::Race {
        Some(race_result(http, &target, mix.race_item, stock_before, &stats).await)
    } else {
        None
    };
    Ok(round_result(
        clients,
        stats,
        shared.restocks.load(Ordering::Relaxed),
        elapsed,
        race,
        server,
    ))
}

/// The seed of client `c` of round `round`: distinct per client and round.
fn client_seed(seed: u64, round: usize, c: usize) -> u64 {
    seed.wrapping_add((round as u64) << 32)
        .wrapping_add(c as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Race: the stock of the race item before the round, topped up to `race_stock` first
/// (with an admin token).
async fn race_stock_before(
    config: &RunConfig,
    http: &reqwest::Client,
    target: &str,
    mix: &Mix,
) -> Result<u32, Error> {
    let mut stock_before = lookup_stock(http, target, mix.race_item).await?;
    if let (Some(want), Some(token)) = (config.race_stock, &config.admin_token) {
        if stock_before < want {
            restock(http, target, token, mix.race_item, want - stock_before).await?;
            stock_before = lookup_stock(http, target, mix.race_item).await?;
        }
    }
    Ok(stock_before)
}

/// Stops the progress line and prints its last state.
async fn end_progress(p: tokio::task::JoinHandle<()>, label: &str, shared: &Shared) {
    p.abort();
    let _ = p.await;
    let mut err = std::io::stderr().lock();
    let cr = if err.is_terminal() { "\r\x1b[2K" } else { "" };
    let _ = writeln!(err, "{cr}{} (done)", progress_line(label, shared));
}

/// Race: whether the round sold exactly what the stock allowed.
async fn race_result(
    http: &reqwest::Client,
    target: &str,
    item: u32,
    stock_before: u32,
    stats: &ClientStats,
) -> RaceResult {
    let stock_after = lookup_stock(http, target, item).await.ok();
    let before = u64::from(stock_before);
    let expected_successes = before.min(stats.bought + stats.sold_out);
    let consistent = stats.errors.total() == 0
        && stats.bought == expected_successes
        && stock_after.map(u64::from) == Some(before - expected_successes);
    RaceResult {
        item,
        stock_before,
        successes: stats.bought,
        sold_out: stats.sold_out,
        stock_after,
        expected_successes,
        consistent,
    }
}

/// The round's result from its merged client statistics.
fn round_result(
    clients: usize,
    stats: ClientStats,
    restocks: u64,
    elapsed: f64,
    race: Option<RaceResult>,
    server: Option<crate::procstat::Cost>,
) -> RoundResult {
    let count = stats.hist.len();
    let latency = LatencySummary::from_histogram(&stats.hist);
    let mut tiers = vec![TierResult {
        tier: END_TO_END.to_string(),
        entry: String::new(),
        count,
        latency: latency.clone(),
    }];
    tiers.extend(stats.tiers.results());
    RoundResult {
        clients,
        count,
        ops: stats.ops,
        errors: stats.errors,
        bought: stats.bought,
        sold_out: stats.sold_out,
        restocks,
        elapsed_s: elapsed,
        throughput_rps: if elapsed > 0.0 {
            count as f64 / elapsed
        } else {
            0.0
        },
        latency,
        tiers,
        race,
        server,
        histogram: Some(stats.hist),
    }
}
