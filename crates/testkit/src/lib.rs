//! Test support: a whole bookstore cluster inside the test process, every server on
//! its own port-0 listener on 127.0.0.1, stopped when the [`TestCluster`] is dropped.
use bookstore_common::auth::Tokens;
use bookstore_common::client::Client;
use bookstore_common::config::{parse_books, ClusterConfig, Endpoint, Kind};
use bookstore_common::idempotency::Retention;
use bookstore_common::types::Book;
use bookstore_replication::control::ReplicaConfig;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The seed's seven books (`data/books.csv`).
pub fn seed_books() -> Vec<Book> {
    parse_books(
        include_str!("../../../data/books.csv").as_bytes(),
        "data/books.csv",
    )
    .expect("data/books.csv parses")
}

/// The stock of `item` that a lookup through the frontend `f` shows, asked with `headers`
/// (`Cache-Control: no-cache`, say).
pub async fn stock_of(http: &reqwest::Client, f: &str, item: u32, headers: &[(&str, &str)]) -> u64 {
    let mut get = http.get(format!("{f}/lookup?item_number={item}"));
    for (name, value) in headers {
        get = get.header(*name, *value);
    }
    let v: serde_json::Value = get.send().await.unwrap().json().await.unwrap();
    v["result"]["stock"].as_u64().unwrap()
}

/// Options of a test cluster.
#[derive(Debug, Clone)]
pub struct Options {
    pub books: Vec<Book>,
    /// Coordinators (a Raft group; 1 by default, which always leads).
    pub coordinators: usize,
    pub catalogs: usize,
    pub orders: usize,
    pub with_cache: bool,
    pub output_dir: Option<PathBuf>,
    pub lease: Duration,
    /// Replication tick.
    pub tick: Duration,
    /// Frontends listed in the cluster file after frontend 0 whose sockets accept
    /// connections but never answer (a paused frontend).
    pub silent_frontends: usize,
    /// Idempotency keys kept by the catalog replicas.
    pub catalog_retention: Retention,
    /// Idempotency keys kept by the order replicas.
    pub order_retention: Retention,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            books: seed_books(),
            coordinators: 1,
            catalogs: 2,
            orders: 2,
            with_cache: true,
            output_dir: None,
            lease: Duration::from_millis(1000),
            tick: Duration::from_millis(20),
            silent_frontends: 0,
            catalog_retention: Retention::default(),
            order_retention: Retention::default(),
        }
    }
}

pub const CLUSTER_TOKEN: &str = "test-cluster-token";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running in-process cluster.
pub struct TestCluster {
    pub cluster: ClusterConfig,
    /// Holds every replica's data directory (`<kind><id>/`).
    pub data: tempfile::TempDir,
    stops: Vec<(Kind, u32, oneshot::Sender<()>)>,
    /// Each server's task, ending with what its `run` returned.
    tasks: Vec<(Kind, u32, JoinHandle<std::io::Result<()>>)>,
    /// The silent frontends' sockets (bound, never accepted from).
    _silent: Vec<TcpListener>,
}

fn listener() -> (TcpListener, Endpoint) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().expect("local addr").port();
    (l, Endpoint::new("127.0.0.1", port))
}

/// What one server of a test cluster is started with.
struct Server {
    kind: Kind,
    id: u32,
    cluster: ClusterConfig,
    tokens: Tokens,
    /// The replica's data directory (`<kind><id>/` of the cluster's temp dir).
    data_dir: PathBuf,
}

/// Starts one server on `l`, stopped when `stop` completes; its task, except for a
/// coordinator's (which panics when its `run` fails).
fn spawn_server(
    server: Server,
    l: TcpListener,
    opts: &Options,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<JoinHandle<std::io::Result<()>>> {
    let Server {
        kind,
        id,
        cluster,
        tokens,
        data_dir,
    } = server;
    let out = opts.output_dir.clone();
    match kind {
        Kind::Coordinator => {
            let c = bookstore_coordinator::CoordinatorConfig {
                id: u64::from(id),
                url: cluster.server(kind, id).expect("listed").url(),
                initial: cluster
                    .urls(Kind::Coordinator)
                    .into_iter()
                    .enumerate()
                    .map(|(i, u)| (i as u64, u))
                    .collect(),
                join: false,
                kinds: Kind::REPLICATED
                    .iter()
                    .map(|k| (k.name().to_string(), cluster.urls(*k)))
                    .collect(),
                member_hosts: vec!["127.0.0.1".into()],
                member_cidrs: Vec::new(),
                data_dir,
                tokens,
                tick: opts.tick,
                heartbeat: Duration::from_millis(50),
                lease_wait: true,
                workers: 2,
            };
            tokio::spawn(async move {
                if let Err(e) = bookstore_coordinator::run(l, c, stop).await {
                    panic!("coordinator {id}: {e}");
                }
            });
            None
        }
        Kind::Frontend => {
            let c = bookstore_frontend::FrontendConfig {
                id,
                cluster,
                tokens,
                output_dir: out,
                tick: opts.tick,
                workers: 2,
                near_entries: 1000,
            };
            Some(tokio::spawn(bookstore_frontend::run(l, c, stop)))
        }
        Kind::Cache => {
            let c = bookstore_cache::CacheConfig {
                cluster,
                tokens,
                output_dir: out,
                renew_every: opts.lease / 5,
                max_entries: 1000,
                workers: 2,
            };
            Some(tokio::spawn(bookstore_cache::run(l, c, stop)))
        }
        Kind::Catalog | Kind::Order => {
            let replica = ReplicaConfig {
                id,
                cluster,
                tokens,
                output_dir: out,
                data_dir,
                url: None,
                tick: opts.tick,
                workers: 2,
                retention: if kind == Kind::Catalog {
                    opts.catalog_retention
                } else {
                    opts.order_retention
                },
                safety: Default::default(),
            };
            Some(if kind == Kind::Catalog {
                let c = bookstore_catalog::CatalogConfig {
                    replica,
                    books: opts.books.clone(),
                    lease: opts.lease,
                };
                tokio::spawn(bookstore_catalog::run(l, c, stop))
            } else {
                tokio::spawn(bookstore_order::run(l, replica, stop))
            })
        }
    }
}

impl TestCluster {
    /// Starts the seed cluster (frontend, cache, 2 catalogs, 2 orders) with the seed books.
    pub async fn start() -> TestCluster {
        TestCluster::with(Options::default()).await
    }

    pub async fn with(opts: Options) -> TestCluster {
        let mut parts = Vec::new();
        let mut listeners = Vec::new();
        let mut add = |kind: Kind, n: usize| {
            for _ in 0..n {
                let (l, e) = listener();
                parts.push((kind, e));
                listeners.push((kind, l));
            }
        };
        add(Kind::Coordinator, opts.coordinators);
        add(Kind::Frontend, 1 + opts.silent_frontends);
        add(Kind::Cache, usize::from(opts.with_cache));
        add(Kind::Catalog, opts.catalogs);
        add(Kind::Order, opts.orders);
        let cluster = ClusterConfig::from_parts(&parts);
        let tokens = Tokens::new(CLUSTER_TOKEN, Some(ADMIN_TOKEN));
        let data = tempfile::tempdir().expect("temp dir");
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        let mut silent = Vec::new();
        let mut ids = std::collections::HashMap::<Kind, u32>::new();
        for (kind, l) in listeners {
            let id = *ids.entry(kind).and_modify(|i| *i += 1).or_insert(0);
            if kind == Kind::Frontend && id > 0 {
                silent.push(l);
                continue;
            }
            let (tx, rx) = oneshot::channel::<()>();
            stops.push((kind, id, tx));
            let stop = async move {
                let _ = rx.await;
            };
            let data_dir = data.path().join(format!("{kind}{id}"));
            let server = Server {
                kind,
                id,
                cluster: cluster.clone(),
                tokens: tokens.clone(),
                data_dir,
            };
            if let Some(task) = spawn_server(server, l, &opts, stop) {
                tasks.push((kind, id, task));
            }
        }
        let tc = TestCluster {
            cluster,
            data,
            stops,
            tasks,
            _silent: silent,
        };
        tc.wait_healthy().await;
        tc.wait_ready().await;
        tc
    }

    async fn wait_healthy(&self) {
        let http = reqwest::Client::new();
        for (kind, id, e) in self.cluster.all() {
            if kind == Kind::Frontend && id > 0 {
                continue; // silent
            }
            let url = format!("{}/health", e.url());
            let mut ok = false;
            for _ in 0..200 {
                if let Ok(r) = http.get(&url).send().await {
                    if r.status().is_success() {
                        ok = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(ok, "{kind} {id} never became healthy");
        }
    }

    /// Waits until every catalog and order replica is in the view, caught up, and (for
    /// backups) synced, and the frontend knows the primaries (`/ready`).
    pub async fn wait_ready(&self) {
        self.wait_replicas_ready().await;
        let url = format!("{}/ready", self.frontend());
        for _ in 0..500 {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the frontend never became ready");
    }

    async fn wait_replicas_ready(&self) {
        let c = self.internal();
        for kind in [Kind::Catalog, Kind::Order] {
            let n = self.cluster.servers(kind).len();
            let url = self.view_url(kind);
            let mut ok = false;
            for _ in 0..500 {
                if let Ok(v) = c.get_json::<serde_json::Value>(&url).await {
                    let backups = v["view"]["backups"].as_array().map_or(0, Vec::len);
                    let synced = v["synced"].as_array().map_or(0, Vec::len);
                    if !v["view"].is_null() && backups + 1 == n && synced == backups {
                        ok = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(ok, "the {kind} replicas never all joined the view");
        }
        for kind in [Kind::Catalog, Kind::Order] {
            for (id, e) in self.cluster.servers(kind).iter().enumerate() {
                let url = format!("{}/replication/status", e.url());
                let mut ok = false;
                for _ in 0..500 {
                    if let Ok(v) = c.get_json::<serde_json::Value>(&url).await {
                        if v["serving_reads"] == true {
                            ok = true;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(ok, "{kind} {id} never caught up");
            }
        }
    }

    /// Base URL of the frontend.
    pub fn frontend(&self) -> String {
        self.url(Kind::Frontend, 0)
    }

    /// Base URL of coordinator 0 (the leader when there is one coordinator).
    pub fn coordinator(&self) -> String {
        self.url(Kind::Coordinator, 0)
    }

    /// `GET /vs/{kind}/view` of coordinator 0.
    pub fn view_url(&self, kind: Kind) -> String {
        self.coordinator() + &bookstore_common::coordinators::view_path(kind)
    }

    /// Base URL of server `id` of `kind`.
    pub fn url(&self, kind: Kind, id: u32) -> String {
        self.cluster.server(kind, id).expect("server exists").url()
    }

    /// Stops server `id` of `kind` (its port stops answering).
    pub async fn stop(&mut self, kind: Kind, id: u32) {
        if let Some(pos) = self
            .stops
            .iter()
            .position(|(k, i, _)| *k == kind && *i == id)
        {
            let (_, _, s) = self.stops.remove(pos);
            let _ = s.send(());
        }
        let url = format!("{}/health", self.url(kind, id));
        for _ in 0..500 {
            if reqwest::get(&url).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{kind} {id} did not stop");
    }

    /// What server `id` of `kind`'s `run` returned, once it ended by itself (panics if
    /// it is still running after `within`).
    pub async fn exit_of(&mut self, kind: Kind, id: u32, within: Duration) -> std::io::Result<()> {
        let pos = self
            .tasks
            .iter()
            .position(|(k, i, _)| *k == kind && *i == id)
            .expect("server exists");
        let (_, _, task) = self.tasks.remove(pos);
        match tokio::time::timeout(within, task).await {
            Ok(joined) => joined.expect("server task panicked"),
            Err(_) => panic!("{kind} {id} is still running after {within:?}"),
        }
    }

    /// A client for internal routes (carries the cluster token).
    pub fn internal(&self) -> Client {
        Client::new(CLUSTER_TOKEN)
    }

    /// Waits until the cache holds a lease (so hits are served).
    pub async fn wait_cache_leased(&self) {
        let c = self.internal();
        for _ in 0..200 {
            if let Ok(v) = c
                .get_json::<serde_json::Value>(&format!("{}/stats", self.url(Kind::Cache, 0)))
                .await
            {
                if v["leased"] == true {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the cache never got a lease");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for (_, _, s) in self.stops.drain(..) {
            let _ = s.send(());
        }
    }
}
