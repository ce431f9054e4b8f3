//! Runs a workload against a target: one round per client count, each round a set of
//! concurrent client tasks sharing one HTTP connection pool, each task with its own
//! histogram (merged at the end, so the hot loop takes no lock).
//!
//! Closed loop (default): a client sends its next request when the previous answer is
//! in. Open loop (`rate`): request `i` of a round is due at `start + i / rate`; a free
//! client sends it then (or at once when late) and its latency is counted from the due
//! time, so a slow server cannot hide its queueing (no coordinated omission).
use crate::tiers::{TierHistograms, TierResult, END_TO_END};
use crate::workload::{Mix, Op, Request, Workload, DEFAULT_ITEMS, SEED_TOPICS};
use bookstore_common::types::{LookupResponse, SearchResponse};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Highest latency the histograms hold (larger values are clamped), in microseconds.
pub const MAX_LATENCY_US: u64 = 120_000_000;

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

    fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.server_5xx += o.server_5xx;
        self.unexpected_4xx += o.unexpected_4xx;
        self.other += o.other;
    }

    fn count(&mut self, kind: ErrorKind) {
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
enum ErrorKind {
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
    /// Per-tier latency: [`END_TO_END`] (the client's own measurement, the same figures
    /// as `latency`) first, then the tiers of the answers' `Server-Timing` headers.
    #[serde(default)]
    pub tiers: Vec<TierResult>,
    pub race: Option<RaceResult>,
    /// What the servers spent during the round (with [`RunConfig::servers`]).
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
    fn count(&mut self, op: Op) {
        match op {
            Op::Lookup => self.lookup += 1,
            Op::Search => self.search += 1,
            Op::Buy => self.buy += 1,
        }
    }
    fn add(&mut self, o: &OpCounts) {
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

/// The HTTP client of a run: one pool for all client tasks, large enough that every task
/// keeps its own connection; no Nagle delay.
pub fn http_client(timeout: Duration, max_clients: usize) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(max_clients.max(1) * 2)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .build()
        .map_err(|e| Error(format!("cannot build the HTTP client: {e}")))
}

/// Item numbers found by searching `topics` (sorted, no duplicates; empty if none).
pub async fn discover_items(http: &reqwest::Client, target: &str, topics: &[String]) -> Vec<u32> {
    let base = target.trim_end_matches('/');
    let mut items = Vec::new();
    for t in topics {
        let url = format!(
            "{base}/search?topic={}",
            bookstore_common::client::encode(t)
        );
        let Ok(resp) = http.get(&url).send().await else {
            continue;
        };
        if !resp.status().is_success() {
            continue;
        }
        if let Ok(s) = resp.json::<SearchResponse>().await {
            items.extend(s.result.iter().map(|h| h.item_number));
        }
    }
    items.sort_unstable();
    items.dedup();
    items
}

/// The stock of `item` through the public lookup.
pub async fn lookup_stock(http: &reqwest::Client, target: &str, item: u32) -> Result<u32, Error> {
    let url = format!("{}/lookup?item_number={item}", target.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| Error(format!("lookup of item {item} failed: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(Error(format!("lookup of item {item}: status {status}")));
    }
    let body: LookupResponse = resp
        .json()
        .await
        .map_err(|e| Error(format!("lookup of item {item}: bad answer: {e}")))?;
    Ok(body.result.stock)
}

/// Adds `quantity` copies of `item` through the admin route.
pub async fn restock(
    http: &reqwest::Client,
    target: &str,
    token: &str,
    item: u32,
    quantity: u32,
) -> Result<(), Error> {
    let url = format!(
        "{}/admin/restock?item_number={item}&quantity={quantity}",
        target.trim_end_matches('/')
    );
    let resp = http
        .post(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| Error(format!("restock of item {item} failed: {e}")))?;
    let status = resp.status();
    let _ = resp.bytes().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(Error(format!("restock of item {item}: status {status}")))
    }
}

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

struct ClientStats {
    hist: Histogram<u64>,
    tiers: TierHistograms,
    ops: OpCounts,
    errors: ErrorCounts,
    bought: u64,
    sold_out: u64,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

enum Outcome {
    Ok,
    Bought,
    SoldOut,
    Failed(ErrorKind),
}

fn classify(e: &reqwest::Error) -> ErrorKind {
    if e.is_connect() {
        ErrorKind::Connect
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Other
    }
}

/// Sends one request; returns its outcome and the answer's `Server-Timing` header.
async fn send(
    http: &reqwest::Client,
    req: &Request,
    bypass_cache: bool,
) -> (Outcome, Option<String>) {
    let builder = match req.op {
        Op::Buy => http.post(&req.url),
        Op::Lookup | Op::Search if bypass_cache => {
            http.get(&req.url).header("cache-control", "no-cache")
        }
        Op::Lookup | Op::Search => http.get(&req.url),
    };
    let resp = match builder.send().await {
        Ok(r) => r,
        Err(e) => return (Outcome::Failed(classify(&e)), None),
    };
    let timing = resp
        .headers()
        .get(bookstore_common::timing::SERVER_TIMING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (outcome(req.op, resp).await, timing)
}

async fn outcome(op: Op, resp: reqwest::Response) -> Outcome {
    let status = resp.status().as_u16();
    // Reading the whole body hands the connection back to the pool.
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(classify(&e)),
    };
    match (op, status) {
        (_, 200) if body.is_empty() => Outcome::Failed(ErrorKind::Other),
        (Op::Buy, 200) => Outcome::Bought,
        (_, 200) => Outcome::Ok,
        (Op::Buy, 409) => Outcome::SoldOut,
        (_, 500..=599) => Outcome::Failed(ErrorKind::Server5xx),
        (_, 400..=499) => Outcome::Failed(ErrorKind::Unexpected4xx),
        _ => Outcome::Failed(ErrorKind::Other),
    }
}

impl Shared {
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
    let mut stats = ClientStats {
        hist: new_histogram(),
        tiers: TierHistograms::default(),
        ops: OpCounts::default(),
        errors: ErrorCounts::default(),
        bought: 0,
        sold_out: 0,
    };
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
    let mut stock_before = 0;
    if config.workload == Workload::Race {
        stock_before = lookup_stock(http, &target, mix.race_item).await?;
        if let (Some(want), Some(token)) = (config.race_stock, &config.admin_token) {
            if stock_before < want {
                restock(http, &target, token, mix.race_item, want - stock_before).await?;
                stock_before = lookup_stock(http, &target, mix.race_item).await?;
            }
        }
    }
    let sample =
        (!config.servers.is_empty()).then(|| crate::procstat::Sample::take(&config.servers));
    let start = Instant::now();
    let shared = Arc::new(Shared {
        http: http.clone(),
        mix: mix.clone(),
        race_url: format!("{target}/buy?item_number={}", mix.race_item),
        target: target.clone(),
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
    });
    let label = format!("{} clients={clients}", config.workload);
    let progress = config
        .progress
        .then(|| spawn_progress(label.clone(), shared.clone()));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let seed = config
                .seed
                .wrapping_add((round as u64) << 32)
                .wrapping_add(c as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            tokio::spawn(client_task(shared.clone(), seed))
        })
        .collect();
    let mut hist = new_histogram();
    let mut tier_hists = TierHistograms::default();
    let mut ops = OpCounts::default();
    let mut errors = ErrorCounts::default();
    let (mut bought, mut sold_out) = (0, 0);
    for t in tasks {
        let s = t
            .await
            .map_err(|e| Error(format!("a client task failed: {e}")))?;
        hist.add(&s.hist).expect("same histogram bounds");
        tier_hists.merge(&s.tiers);
        ops.add(&s.ops);
        errors.add(&s.errors);
        bought += s.bought;
        sold_out += s.sold_out;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let server = sample.map(|before| {
        let after = crate::procstat::Sample::take(&config.servers);
        crate::procstat::Cost::between(&before, &after)
    });
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        let mut err = std::io::stderr().lock();
        let cr = if err.is_terminal() { "\r\x1b[2K" } else { "" };
        let _ = writeln!(err, "{cr}{} (done)", progress_line(&label, &shared));
    }
    let count = hist.len();
    let latency = LatencySummary::from_histogram(&hist);
    let mut tiers = vec![TierResult {
        tier: END_TO_END.to_string(),
        entry: String::new(),
        count,
        latency: latency.clone(),
    }];
    tiers.extend(tier_hists.results());
    let race = if config.workload == Workload::Race {
        let stock_after = lookup_stock(http, &target, mix.race_item).await.ok();
        let before = u64::from(stock_before);
        let expected_successes = before.min(bought + sold_out);
        let consistent = errors.total() == 0
            && bought == expected_successes
            && stock_after.map(u64::from) == Some(before - expected_successes);
        Some(RaceResult {
            item: mix.race_item,
            stock_before,
            successes: bought,
            sold_out,
            stock_after,
            expected_successes,
            consistent,
        })
    } else {
        None
    };
    Ok(RoundResult {
        clients,
        count,
        ops,
        errors,
        bought,
        sold_out,
        restocks: shared.restocks.load(Ordering::Relaxed),
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
        histogram: Some(hist),
    })
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
