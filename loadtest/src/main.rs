//! `loadtest`: the command line of the bookstore's load generator.
use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use loadtest::workload::{parse_clients, parse_duration, parse_items, parse_wait, SEED_TOPICS};
use loadtest::{report, RunConfig, Stop, Workload};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for the bookstore's public API",
    long_about = "Load generator for the bookstore's public API: closed- or open-loop rounds \
                  for a list of client counts, latency percentiles from HdrHistograms, a table \
                  on stdout and results.csv / results.json under --out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a workload against a frontend (or a baseline server), one round per client count.
    Run(Box<RunArgs>),
    /// Serves fixed lookup/search answers on one hop, to compare a run with what the machine can do.
    Baseline(BaselineArgs),
    /// Starts a local cluster, runs buyers/readers/restocks under a seeded nemesis (kills,
    /// pauses, partitions, restarts) and checks the history; exit 1 if a checker fails.
    Chaos(Box<ChaosArgs>),
    /// Measures what the servers of a running `infra local up` spend while another load
    /// client (e.g. wrk) runs: CPU time and context switches per request and per copy
    /// sold, per process and per thread.
    ServerCpu(ServerCpuArgs),
    /// Writes a books CSV (the format of data/books.csv) with COUNT books: the seed's 7,
    /// then generated ones in topics topic-0000, topic-0001, ... of --hits-per-topic each.
    GenBooks(GenBooksArgs),
}

#[derive(Args)]
struct ServerCpuArgs {
    /// How long to measure, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Wait this long before the measurement starts (let the load client ramp up).
    #[arg(long, default_value = "0s", value_parser = parse_wait)]
    delay: Duration,
    /// The `--output-dir` of the running `local up` (its local-up.json has the
    /// supervisor's pid, the public URL and the admin token).
    #[arg(long, default_value = "output", env = "BOOKSTORE_OUTPUT_DIR")]
    local_up_dir: PathBuf,
    /// Items whose stock falls count as copies sold (read with public lookups that skip
    /// the caches, before and after).
    #[arg(long, default_value = "1-7", value_parser = parse_items_arg)]
    items: ItemList,
}

#[derive(Args)]
struct GenBooksArgs {
    /// Number of books (item numbers 1..=COUNT).
    #[arg(long)]
    count: u32,
    /// The CSV file to write (its folder must exist).
    #[arg(long)]
    out: PathBuf,
    /// Books per generated topic (searching topic-0000 returns this many).
    #[arg(long, default_value_t = 1000)]
    hits_per_topic: u32,
    /// Seed of the generated titles, stocks and costs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct ChaosArgs {
    /// Length of the load, e.g. 60s, 10m (the run stops by itself).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and of the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent buyers.
    #[arg(long, default_value_t = 8)]
    buyers: usize,
    /// Concurrent readers (lookups and some searches through the frontend); one more
    /// client reads the cache directly.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Starting stock of books 1, 2, ... (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "5,5,5,100000")]
    stocks: Vec<u32>,
    /// Mean pause between restocks (of the books with stock <= 100).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    restock_every: Duration,
    /// Fault kinds, comma-separated: kill, pause, partition-primary, isolate,
    /// freeze-backup-kill-primary, kill-cache, restart-frontend, kill-coordinator,
    /// pause-coordinator, isolate-coordinator, or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    faults: Vec<String>,
    /// Scales every fault's duration (1.0: kills 0.15-0.5 s, pauses 0.4-0.8 s, partitions
    /// 0.4-0.9 s, coordinator pauses and isolations 0.5-1 s).
    #[arg(long, default_value_t = 1.0)]
    hold_scale: f64,
    /// Catalog and order replicas each.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Coordinators (the control plane's Raft group).
    #[arg(long, default_value_t = 3)]
    coordinators: usize,
    /// Frontends (the clients are spread over them).
    #[arg(long, default_value_t = 2)]
    frontends: usize,
    /// Use this cluster file (partitions need every server on its own 127.x address).
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// The infra binary (default: next to this program).
    #[arg(long)]
    infra: Option<PathBuf>,
    /// Extra environment for every server, e.g. BOOKSTORE_UNSAFE_NO_SYNC_ACK=1 (repeatable).
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// Output folder: files go to DIR/<run-id>/.
    #[arg(long, default_value = loadtest::chaos::DEFAULT_OUT_DIR)]
    out: PathBuf,
    /// Name of the run's folder (default: time stamp and seed).
    #[arg(long)]
    run_id: Option<String>,
    /// Most configurations the linearizability search holds per book.
    #[arg(long, default_value_t = 200_000)]
    linearizability_cap: usize,
    /// Checkers reported without failing the run (comma-separated numbers), e.g. 5 for
    /// the known gap of stale reads across a failover. Printed as "FAIL (informational)".
    #[arg(long, value_delimiter = ',')]
    informational: Vec<u8>,
    /// iptables chain to use (flushed and deleted at start and end).
    #[arg(long, default_value = "BOOKSTORE-CHAOS")]
    chain: String,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("stop").required(true).args(["requests", "duration"]))]
struct RunArgs {
    /// Base URL of the frontend, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    target: String,
    /// lookup, search, buy, mixed[:R] (R = fraction of buys, default 0.1; the rest are
    /// lookups and searches, even odds) or race (every client buys the same item).
    #[arg(long, default_value = "lookup", value_parser = parse_workload)]
    workload: Workload,
    /// Client counts, one round each, e.g. 1,3,5,9.
    #[arg(long, default_value = "1", value_parser = parse_clients_arg)]
    clients: ClientList,
    /// Requests per round (all clients together).
    #[arg(long)]
    requests: Option<u64>,
    /// Length of each round, e.g. 10s, 500ms, 2m.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Open loop: send R requests per second in total at fixed intervals (the clients are
    /// then the most requests in flight); latency counts from each request's due time.
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the clients' random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Admin token: buy/mixed restock when every item is sold out; race can top up its item.
    #[arg(long, env = "BOOKSTORE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<bookstore_common::auth::Secret>,
    /// Items to look up and buy, e.g. 1-7 or 1,3,5 (default: those found by searching
    /// the topics, else 1-7).
    #[arg(long, value_parser = parse_items_arg)]
    items: Option<ItemList>,
    /// Topics to search, comma-separated (default: the seed's three).
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Item every client buys in a race (default: the first item).
    #[arg(long)]
    race_item: Option<u32>,
    /// Race: restock the item up to this stock before each round (needs --admin-token).
    #[arg(long)]
    race_stock: Option<u32>,
    /// Copies added to each item when buy/mixed restock.
    #[arg(long, default_value_t = 100)]
    restock_quantity: u32,
    /// Per-request timeout (e.g. 10s); a later answer counts as a timeout error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Runs the (lookup, search or mixed) workload twice, with the cache and with
    /// lookups and searches sent as `Cache-Control: no-cache` (the frontend then bypasses
    /// the cache), and prints both and their ratio. Results go to DIR/<run-id>/cache-on/,
    /// cache-off/ and comparison.csv.
    #[arg(long)]
    compare_cache: bool,
    /// Also measure what the servers of the running `infra local up` spend (CPU time and
    /// context switches, per process and thread, from /proc) in each round, per request
    /// and per copy sold.
    #[arg(long)]
    server_cpu: bool,
    /// The `--output-dir` of that `local up` (where its local-up.json is).
    #[arg(long, default_value = "output", env = "BOOKSTORE_OUTPUT_DIR")]
    local_up_dir: PathBuf,
    /// Output folder: results go to DIR/<run-id>/results.csv, results.json and latency.svg.
    #[arg(long, default_value = report::DEFAULT_OUT_DIR)]
    out: PathBuf,
    /// Name of the run's folder (default: UTC time stamp and workload).
    #[arg(long)]
    run_id: Option<String>,
    /// No progress line on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct BaselineArgs {
    /// Address to listen on (loopback), e.g. 127.0.0.1:8100.
    #[arg(long, default_value = "127.0.0.1:8100")]
    listen: String,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

#[derive(Clone)]
struct ClientList(Vec<usize>);
#[derive(Clone)]
struct ItemList(Vec<u32>);

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("want NAME=VALUE, got {s:?}"))
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    s.parse()
}
fn parse_clients_arg(s: &str) -> Result<ClientList, String> {
    parse_clients(s).map(ClientList)
}
fn parse_items_arg(s: &str) -> Result<ItemList, String> {
    parse_items(s).map(ItemList)
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let mut config = RunConfig::new(args.target, args.workload);
    config.clients = args.clients.0;
    config.stop = match (args.requests, args.duration) {
        (Some(n), _) => Stop::Requests(n),
        (None, Some(d)) => Stop::Duration(d),
        (None, None) => unreachable!("clap requires --requests or --duration"),
    };
    config.rate = args.rate;
    config.seed = args.seed;
    config.admin_token = args.admin_token.filter(|t| !t.is_empty());
    config.items = args.items.map(|i| i.0);
    config.topics = if args.topics.is_empty() {
        SEED_TOPICS.iter().map(|t| t.to_string()).collect()
    } else {
        args.topics
    };
    config.race_item = args.race_item;
    config.race_stock = args.race_stock;
    config.restock_quantity = args.restock_quantity;
    config.timeout = args.timeout;
    config.progress = !args.quiet;
    config.run_id = args.run_id;
    if args.server_cpu {
        config.servers = loadtest::procstat::local_up_servers(&args.local_up_dir)?;
    }
    if args.compare_cache {
        return compare_cache(config, &args.out).await;
    }
    let report = loadtest::run(&config).await?;
    print!("{}", report::table(&report));
    for r in &report.rounds {
        if let Some(cost) = &r.server {
            println!("\n{} clients:", r.clients);
            print!("{}", cost.table(r.count, "request"));
        }
    }
    let folder = write(&report, &args.out)?;
    eprintln!("results: {}", folder.display());
    if !report.race_consistent() {
        eprintln!("race: the successes do not match the stock (see the table)");
        return Ok(false);
    }
    Ok(true)
}

/// The stock of `items`, read through the public lookup with the caches skipped.
async fn stocks(http: &reqwest::Client, url: &str, items: &[u32]) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for item in items {
        let lookup = http
            .get(format!("{url}/lookup?item_number={item}"))
            .header("cache-control", "no-cache");
        let v: serde_json::Value = answer(lookup, &format!("lookup of {item}"))
            .await?
            .json()
            .await
            .map_err(|e| anyhow!("lookup of {item}: {e}"))?;
        out.push(v["result"]["stock"].as_u64().unwrap_or(0));
    }
    Ok(out)
}

/// Requests the frontend at `url` has answered, every route but `/metrics` (admin token).
async fn answered(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<u64> {
    let metrics = http.get(format!("{url}/metrics")).bearer_auth(token);
    let text = answer(metrics, &format!("{url}/metrics"))
        .await?
        .text()
        .await
        .map_err(|e| anyhow!("{url}/metrics: {e}"))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("bookstore_http_requests_total{") && !l.contains("/metrics"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Sends `request`; a failure, or an answer that is not a success, is an error that
/// starts with `what`.
async fn answer(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
    let answer = request.send().await.and_then(|r| r.error_for_status());
    answer.map_err(|e| anyhow!("{what}: {e}"))
}

async fn server_cpu(args: ServerCpuArgs) -> anyhow::Result<bool> {
    let dir = &args.local_up_dir;
    let servers = loadtest::procstat::local_up_servers(dir)?;
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("local-up.json"))?)?;
    let url = state["frontend"].as_str().unwrap_or_default().to_string();
    let token = state["admin_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    tokio::time::sleep(args.delay).await;
    let (stock0, requests0) = (
        stocks(&http, &url, &args.items.0).await?,
        answered(&http, &url, &token).await?,
    );
    let before = loadtest::procstat::Sample::take(&servers);
    tokio::time::sleep(args.duration).await;
    let after = loadtest::procstat::Sample::take(&servers);
    let (stock1, requests1) = (
        stocks(&http, &url, &args.items.0).await?,
        answered(&http, &url, &token).await?,
    );
    let cost = loadtest::procstat::Cost::between(&before, &after);
    let sold: u64 = stock0
        .iter()
        .zip(&stock1)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    // Our own lookups between the two counts are not the load's.
    let requests = requests1
        .saturating_sub(requests0)
        .saturating_sub(args.items.0.len() as u64);
    println!(
        "{} s: {requests} requests answered by the frontend at {url}, {sold} copies sold",
        args.duration.as_secs_f64()
    );
    print!("{}", cost.table(requests, "request"));
    if sold > 0 {
        println!(
            "per copy sold: {:.3} ms of server CPU, {:.1} context switches",
            cost.cpu_ms / sold as f64,
            cost.switches as f64 / sold as f64
        );
    }
    Ok(true)
}

fn write(report: &loadtest::RunReport, out: &std::path::Path) -> anyhow::Result<PathBuf> {
    report::write_files(report, out)
        .with_context(|| format!("cannot write the results under {}", out.display()))
}

/// `run --compare-cache`: the workload with the cache, then bypassing it.
async fn compare_cache(mut config: RunConfig, out: &std::path::Path) -> anyhow::Result<bool> {
    if !matches!(
        config.workload,
        Workload::Lookup | Workload::Search | Workload::Mixed { .. }
    ) {
        bail!("--compare-cache compares reads: use --workload lookup, search or mixed");
    }
    let id = config.run_id.clone().unwrap_or_else(|| {
        loadtest::runner::default_run_id(bookstore_common::clock::now_ms(), config.workload)
    });
    let mut reports = Vec::new();
    for (bypass, name) in [(false, "cache-on"), (true, "cache-off")] {
        config.bypass_cache = bypass;
        config.run_id = Some(format!("{id}/{name}"));
        let report = loadtest::run(&config).await?;
        print!("{}", report::table(&report));
        println!();
        write(&report, out)?;
        reports.push(report);
    }
    let rows = report::compare_cache(&reports[0], &reports[1]);
    print!(
        "{}",
        report::comparison_table(&config.workload.to_string(), &rows)
    );
    let folder = out.join(&id);
    report::write_comparison(&rows, &folder)
        .with_context(|| format!("cannot write {}", folder.display()))?;
    eprintln!("results: {}", folder.display());
    Ok(true)
}

fn gen_books(args: GenBooksArgs) -> anyhow::Result<bool> {
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let total = args.count;
    let quiet = args.quiet;
    let mut progress = |n: u64| {
        if !quiet {
            eprintln!("gen-books: {n}/{total} books written");
        }
    };
    let s = loadtest::books::write_books(
        std::io::BufWriter::with_capacity(1 << 20, file),
        args.count,
        args.hits_per_topic,
        args.seed,
        &mut progress,
    )?;
    println!(
        "wrote {} books to {}: items 1-7 are the seed's; {} generated topics topic-0000.. \
         (topic-0000 has {} books)",
        s.books,
        args.out.display(),
        s.topics,
        s.first_topic_hits
    );
    Ok(true)
}

async fn baseline(args: BaselineArgs) -> anyhow::Result<bool> {
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    eprintln!("baseline serving on http://{addr} (GET /lookup, /search, /health); Ctrl-C or SIGTERM stops");
    let stop = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    loadtest::baseline::serve(listener, args.workers, stop).await?;
    Ok(true)
}

async fn chaos(args: ChaosArgs) -> anyhow::Result<bool> {
    use loadtest::chaos::schedule::FaultKind;
    let mut faults = Vec::new();
    for f in &args.faults {
        if f == "all" {
            faults.extend(FaultKind::ALL);
        } else {
            faults.push(FaultKind::parse(f).with_context(|| format!("unknown fault kind {f:?}"))?);
        }
    }
    faults.sort();
    faults.dedup();
    let config = loadtest::chaos::ChaosConfig {
        duration: args.duration,
        seed: args.seed,
        buyers: args.buyers,
        readers: args.readers,
        stocks: args.stocks,
        restock_every: args.restock_every,
        faults,
        hold_scale: args.hold_scale,
        replicas: args.replicas,
        coordinators: args.coordinators,
        frontends: args.frontends,
        cluster_file: args.cluster,
        infra: args.infra,
        env: args.server_env,
        out_dir: args.out,
        run_id: args.run_id,
        linearizability_cap: args.linearizability_cap,
        informational: args.informational,
        chain: args.chain,
        progress: !args.quiet,
        ..Default::default()
    };
    let report = loadtest::chaos::run(&config).await?;
    print!("{}", report.table());
    Ok(report.passed())
}

fn main() -> ExitCode {
    // `loadtest serve ...` is the chaos cluster's server wrapper: it becomes the server.
    if let Some(code) = loadtest::chaos::wrapper::maybe_exec() {
        return code;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Baseline(args) => baseline(args).await,
            Command::Chaos(args) => chaos(*args).await,
            Command::GenBooks(args) => gen_books(args),
            Command::ServerCpu(args) => server_cpu(args).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
