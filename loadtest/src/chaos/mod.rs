//! `loadtest chaos`: a Jepsen-style run against a local cluster of real processes.
//!
//! It starts its own cluster (every replica on its own loopback address), runs buyers,
//! readers, a cache reader and a restocker on a few small-stock books for a bounded
//! time while a seeded nemesis kills, freezes, partitions and restarts servers, heals
//! everything, reads the final state of every replica, and checks the history:
//!
//! (1) no oversell; (2) conservation on every replica; (3) acknowledged orders durable
//! and none invented; (4) convergence; (5) linearizability per book; (6) cache freshness.
//!
//! Output under `<out>/<run>/`: `history.jsonl`, `summary.txt`, `summary.json`,
//! `timeline.svg`, `cluster/` (server logs and data directories).
//!
//! Modules: [`clients`] (the buyers, readers and restocker), [`schedule`] (the seeded
//! schedule: fault kinds, lanes, plans), [`nemesis`] (carrying the faults out), [`net`]
//! (partitions with iptables), [`wrapper`] (each server in its own group, for the
//! partitions), [`history`] (the recorded operations and faults), [`check`] (the six
//! checkers), [`linear`] (the per-book linearizability check), [`gaps`] (the longest
//! unanswered stretches per fault kind), [`report`] (summary and timeline).
pub mod check;
pub mod clients;
pub mod gaps;
pub mod history;
pub mod linear;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod schedule;
pub mod wrapper;

use anyhow::{anyhow, bail, Context};
use bookstore_common::config::{ClusterConfig, Kind};
use bookstore_common::types::{Book, Order};
use check::{FinalState, Verdict};
use history::{FaultRecord, History, Op};
use infra::local::{LocalCluster, LocalOptions};
use nemesis::Nemesis;
use schedule::{FaultKind, Lane};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use report::ChaosReport;

/// Where runs go by default.
pub const DEFAULT_OUT_DIR: &str = "output/chaos";

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Length of the load (the nemesis stops dealing faults at the same time).
    pub duration: Duration,
    pub seed: u64,
    pub buyers: usize,
    pub readers: usize,
    /// Starting stock of books 1, 2, ...
    pub stocks: Vec<u32>,
    /// Restocks go to the books whose starting stock is at most this.
    pub small_stock: u32,
    pub restock_every: Duration,
    pub restock_max: u32,
    /// Fault kinds to inject (partitions are dropped when iptables cannot be used).
    pub faults: Vec<FaultKind>,
    /// Scales every fault's hold time.
    pub hold_scale: f64,
    /// Catalog and order replicas each (when the cluster file is made here).
    pub replicas: usize,
    /// Coordinators and frontends (when the cluster file is made here).
    pub coordinators: usize,
    pub frontends: usize,
    /// Use this cluster file instead of making one.
    pub cluster_file: Option<PathBuf>,
    /// The infra binary (default: `infra` next to this program).
    pub infra: Option<PathBuf>,
    /// The server wrapper (default: this program, when it is `loadtest`).
    pub wrapper: Option<PathBuf>,
    /// Extra environment for every server (mutation switches).
    pub env: Vec<(String, String)>,
    pub out_dir: PathBuf,
    pub run_id: Option<String>,
    /// Most configurations the linearizability search may hold per book.
    pub linearizability_cap: usize,
    /// Checkers (by number) reported but not failing the run, e.g. `[5]` for the
    /// known gap of reads across a failover. Printed as "FAIL (informational)".
    pub informational: Vec<u8>,
    /// Give up on an unknown buy or restock after this long.
    pub op_deadline: Duration,
    /// iptables chain of this run.
    pub chain: String,
    pub gid_base: u32,
    pub progress: bool,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            duration: Duration::from_secs(60),
            seed: 1,
            buyers: 8,
            readers: 4,
            stocks: vec![5, 5, 5, 100_000],
            small_stock: 100,
            restock_every: Duration::from_millis(500),
            restock_max: 3,
            faults: FaultKind::ALL.to_vec(),
            hold_scale: 1.0,
            replicas: 2,
            coordinators: 3,
            frontends: 2,
            cluster_file: None,
            infra: None,
            wrapper: None,
            env: Vec::new(),
            out_dir: PathBuf::from(DEFAULT_OUT_DIR),
            run_id: None,
            linearizability_cap: 200_000,
            informational: Vec::new(),
            op_deadline: Duration::from_secs(6),
            chain: "BOOKSTORE-CHAOS".into(),
            gid_base: 47100,
            progress: true,
        }
    }
}

fn say(config: &ChaosConfig, text: &str) {
    if config.progress {
        eprintln!("chaos: {text}");
    }
}

/// A cluster file with every server on its own loopback address and a free port:
/// `127.77.N.(1 + offset)`, where the offset is the server's group offset
/// ([`wrapper::gid_offset`]): frontend i `.1+i`, cache `.6`, catalog i `.11+i`,
/// coordinator i `.31+i`, order i `.41+i`.
pub fn loopback_cluster(
    coordinators: usize,
    frontends: usize,
    replicas: usize,
) -> std::io::Result<ClusterConfig> {
    if coordinators > 10 || frontends > 5 || replicas > 20 {
        return Err(std::io::Error::other(
            "at most 10 coordinators, 5 frontends and 20 replicas of each service",
        ));
    }
    let net = (std::process::id() % 250) + 1;
    let counts = [coordinators, frontends, replicas, replicas];
    infra::local::free_port_cluster_on(counts, |kind, id| {
        format!("127.77.{net}.{}", 1 + wrapper::gid_offset(kind.name(), id))
    })
}

fn default_infra() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("infra"), dir.parent()?.join("infra")]
        .into_iter()
        .find(|c| c.is_file())
}

fn default_wrapper() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let name = exe.file_name()?.to_string_lossy().to_string();
    (name == "loadtest").then_some(exe)
}

async fn read_final(lc: &LocalCluster, limit: Duration) -> FinalState {
    let client = bookstore_common::client::Client::with_timeout(
        &lc.options.cluster_token,
        Duration::from_secs(2),
    );
    let start = Instant::now();
    loop {
        let mut fin = FinalState::default();
        for (id, books) in listed::<Book>(lc, &client, Kind::Catalog, "/books").await {
            let stock = |b: Book| (b.item_number.get(), i64::from(b.stock));
            fin.catalogs
                .insert(id, books.map(|a| a.into_iter().map(stock).collect()));
        }
        for (id, orders) in listed::<Order>(lc, &client, Kind::Order, "/orders").await {
            let order = |o: Order| (o.order_id, o.item_number.get());
            fin.orders
                .insert(id, orders.map(|a| a.into_iter().map(order).collect()));
        }
        fin.waited_s = start.elapsed().as_secs_f64();
        let all_answer =
            fin.catalogs.values().all(Option::is_some) && fin.orders.values().all(Option::is_some);
        let c: Vec<_> = fin.catalogs.values().collect();
        let o: Vec<_> = fin.orders.values().collect();
        let agree = c.windows(2).all(|w| w[0] == w[1]) && o.windows(2).all(|w| w[0] == w[1]);
        if (all_answer && agree) || start.elapsed() > limit {
            return fin;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `result` list that each `kind` server answers to `GET route`, by id; `None` for a
/// server that does not answer with one.
async fn listed<T: serde::de::DeserializeOwned>(
    lc: &LocalCluster,
    client: &bookstore_common::client::Client,
    kind: Kind,
    route: &str,
) -> BTreeMap<u32, Option<Vec<T>>> {
    #[derive(serde::Deserialize)]
    struct Listed<T> {
        result: Vec<T>,
    }
    let mut lists = BTreeMap::new();
    for (id, e) in lc.cluster.servers(kind).iter().enumerate() {
        let answer = client
            .get_json::<Listed<T>>(&format!("{}{route}", e.url()))
            .await;
        lists.insert(id as u32, answer.ok().map(|l| l.result));
    }
    lists
}

fn write_books(path: &Path, stocks: &[u32]) -> std::io::Result<()> {
    let mut csv = String::from("item_number,title,topic,stock,cost\n");
    for (i, s) in stocks.iter().enumerate() {
        csv.push_str(&format!("{},Chaos book {},t,{s},10\n", i + 1, i + 1));
    }
    std::fs::write(path, csv)
}

/// Runs the whole thing; `Err` only when the run could not be carried out (a failed
/// checker is a report with `passed() == false`).
pub async fn run(config: &ChaosConfig) -> anyhow::Result<ChaosReport> {
    let run_id = config.run_id.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("{secs}-seed{}", config.seed)
    });
    let dir = config.out_dir.join(&run_id);
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let infra = infra_binary(config)?;
    let wrapper = config.wrapper.clone().or_else(default_wrapper);

    // The cluster and books files.
    let cluster = match &config.cluster_file {
        Some(f) => ClusterConfig::load(f)?,
        None => loopback_cluster(config.coordinators, config.frontends, config.replicas)
            .context("free ports")?,
    };
    let cluster_file = dir.join("cluster.csv");
    std::fs::write(&cluster_file, cluster.to_text())?;
    let books_file = dir.join("books.csv");
    write_books(&books_file, &config.stocks)?;

    let Usable {
        kinds,
        net,
        skipped,
    } = usable_faults(config, &cluster, wrapper.is_some());
    for s in &skipped {
        say(config, s);
    }

    let cluster_token = format!("chaos-{}", infra::local::random_token());
    let admin_token = format!("chaos-admin-{}", infra::local::random_token());
    let mut env = config.env.clone();
    env.push((wrapper::INFRA_ENV.into(), infra.display().to_string()));
    if net.is_some() {
        env.push((wrapper::GID_BASE_ENV.into(), config.gid_base.to_string()));
    }
    say(config, &format!("starting the cluster ({})", dir.display()));
    let lc = LocalCluster::start(
        LocalOptions {
            cluster_file: cluster_file.clone(),
            books: books_file,
            output_dir: dir.join("cluster"),
            cluster_token: cluster_token.clone().into(),
            admin_token: admin_token.clone().into(),
            program: Some(wrapper.clone().unwrap_or_else(|| infra.clone())),
            env,
            ..LocalOptions::default()
        },
        &|m| say(config, m),
    )
    .await?;

    let history = Arc::new(History::create(Some(&dir.join("history.jsonl")))?);
    let initial: BTreeMap<u32, i64> = config
        .stocks
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u32 + 1, *s as i64))
        .collect();
    let workload = workload(config, &lc, &initial, cluster_token, admin_token);
    for s in &skipped {
        history.note("skipped", s);
    }
    let nemesis = Nemesis::new(lc, net, history.clone(), config.gid_base);
    let (nemesis, mut heal_problems) =
        load_and_faults(config, workload, nemesis, &kinds, &history).await?;
    let mut lc = nemesis.lc.into_inner();
    let ready = lc.wait_ready(Duration::from_secs(30)).await;
    let fin = read_final(&lc, Duration::from_secs(30)).await;
    lc.stop().await;
    if let Some(n) = nemesis.net {
        n.teardown();
    }
    let (ops, faults) = history.finish();
    if let Err(e) = ready {
        heal_problems.push(format!("after the heal: {e}"));
    }
    say(config, "checking the history");
    let verdicts = check_all(config, &ops, &initial, &fin);
    let report = report::ChaosReport::new(
        run_id,
        dir.clone(),
        config,
        kinds,
        skipped,
        heal_problems,
        &ops,
        faults,
        verdicts,
        fin,
    );
    report.write(&ops)?;
    Ok(report)
}

/// The infra binary the run starts (`--infra`, or the one next to this program).
fn infra_binary(config: &ChaosConfig) -> anyhow::Result<PathBuf> {
    let infra = config
        .infra
        .clone()
        .or_else(default_infra)
        .context("cannot find the infra binary next to this program: build it with `cargo build -p infra` or pass --infra")?;
    if !infra.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build -p infra`",
            infra.display()
        );
    }
    Ok(infra)
}

/// The fault kinds this machine can run, the partition set-up if any of them needs it,
/// and why the others were dropped.
struct Usable {
    kinds: Vec<FaultKind>,
    net: Option<net::Net>,
    skipped: Vec<String>,
}

fn usable_faults(config: &ChaosConfig, cluster: &ClusterConfig, wrapper: bool) -> Usable {
    let mut kinds = config.faults.clone();
    if !kinds.iter().any(|k| k.needs_net()) {
        return Usable {
            kinds,
            net: None,
            skipped: Vec::new(),
        };
    }
    let hosts: Vec<String> = cluster
        .all()
        .iter()
        .map(|(_, _, e)| e.host.clone())
        .collect();
    let distinct = hosts.iter().collect::<std::collections::HashSet<_>>().len() == hosts.len();
    let why = if !distinct {
        Err(anyhow!(
            "the cluster file does not give every server its own loopback address"
        ))
    } else if !wrapper {
        Err(anyhow!(
            "no server wrapper (run the loadtest binary) to give each server its group"
        ))
    } else {
        net::available().and_then(|_| net::Net::setup(&config.chain))
    };
    match why {
        Ok(n) => Usable {
            kinds,
            net: Some(n),
            skipped: Vec::new(),
        },
        Err(reason) => {
            let names: Vec<&str> = kinds
                .iter()
                .filter(|k| k.needs_net())
                .map(|k| k.name())
                .collect();
            let skipped = vec![format!("{} skipped: {reason:#}", names.join(", "))];
            kinds.retain(|k| !k.needs_net());
            Usable {
                kinds,
                net: None,
                skipped,
            }
        }
    }
}

/// What the clients do, against this cluster.
fn workload(
    config: &ChaosConfig,
    lc: &LocalCluster,
    initial: &BTreeMap<u32, i64>,
    cluster_token: String,
    admin_token: String,
) -> clients::Workload {
    clients::Workload {
        frontends: lc.cluster.urls(Kind::Frontend),
        cache: lc.cluster.server(Kind::Cache, 0).map(|e| e.url()),
        cluster_token: cluster_token.into(),
        admin_token: admin_token.into(),
        books: initial.keys().copied().collect(),
        buyers: config.buyers,
        readers: config.readers,
        restock_every: config.restock_every,
        restock_max: config.restock_max,
        restock_books: initial
            .iter()
            .filter(|(_, s)| **s <= config.small_stock as i64)
            .map(|(b, _)| *b)
            .collect(),
        op_deadline: config.op_deadline,
        seed: config.seed,
        run_tag: format!("chaos{}", config.seed),
    }
}

/// Runs the clients and the fault lanes for the run's duration, then heals every fault
/// and waits for the clients to finish. Gives the nemesis back, with what the heal could
/// not do.
async fn load_and_faults(
    config: &ChaosConfig,
    workload: clients::Workload,
    nemesis: Nemesis,
    kinds: &[FaultKind],
    history: &Arc<History>,
) -> anyhow::Result<(Nemesis, Vec<String>)> {
    let nemesis = Arc::new(nemesis);
    let stop = Arc::new(AtomicBool::new(false));
    say(
        config,
        &format!(
            "running {:?} of load, faults: {}",
            config.duration,
            kinds
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let tasks = clients::spawn(workload, history.clone(), stop.clone());
    let until = Instant::now() + config.duration;
    let lanes: Vec<_> = Lane::all(config.seed, kinds, config.hold_scale)
        .into_iter()
        .enumerate()
        .map(|(i, lane)| {
            tokio::spawn(
                nemesis
                    .clone()
                    .run_lane(lane, config.seed.wrapping_add(i as u64), until),
            )
        })
        .collect();
    let progress = {
        let p = config.progress;
        tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if p {
                    eprintln!("chaos: {:.0} s", t0.elapsed().as_secs_f64());
                }
            }
        })
    };
    tokio::time::sleep_until(until.into()).await;
    stop.store(true, Ordering::Relaxed);
    for l in lanes {
        let _ = l.await;
    }
    say(config, "load over; healing");
    let heal_problems = nemesis.heal().await;
    history.note("heal", &format!("{heal_problems:?}"));
    for t in tasks {
        let _ = tokio::time::timeout(config.op_deadline + Duration::from_secs(5), t).await;
    }
    progress.abort();
    let nemesis = Arc::try_unwrap(nemesis).map_err(|_| anyhow!("the nemesis is still in use"))?;
    Ok((nemesis, heal_problems))
}

/// Runs the six checkers.
pub fn check_all(
    config: &ChaosConfig,
    ops: &[Op],
    initial: &BTreeMap<u32, i64>,
    fin: &FinalState,
) -> Vec<Verdict> {
    let mut all = vec![
        check::no_oversell(ops, initial),
        check::conservation(ops, initial, fin),
        check::orders_durable(ops, fin),
        check::convergence(fin),
        check::linearizability(ops, initial, config.linearizability_cap),
        check::cache_fresh(ops, initial),
    ];
    for v in &mut all {
        v.informational = config.informational.contains(&v.id);
    }
    all
}

/// Faults per kind.
pub fn count_faults(faults: &[FaultRecord]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in faults {
        *m.entry(f.kind.clone()).or_insert(0) += 1;
    }
    m
}
