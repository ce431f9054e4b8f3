//! A cluster of real processes on this machine. Every server is this same binary run
//! as `infra serve KIND --id N ...`, so one build serves all; each child asks the kernel
//! to SIGTERM it if the supervisor dies, so nothing is left orphaned.
use crate::membership::{self, Standing};
use bookstore_common::config::{ClusterConfig, Endpoint, Kind};
use bookstore_common::coordinators::Coordinators;
use bookstore_replication::node::Status;
use bookstore_replication::wire::{CoordinatorRole, CoordinatorStatus, KindReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// What to start (`Default`: empty paths and tokens, for `..` after the fields set).
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    pub cluster_file: PathBuf,
    pub books: PathBuf,
    pub output_dir: PathBuf,
    pub cluster_token: bookstore_common::auth::Secret,
    pub admin_token: bookstore_common::auth::Secret,
    /// The program run as `PROGRAM serve KIND ...` (default: this program).
    pub program: Option<PathBuf>,
    /// Extra environment for every server (tests use it for mutation switches).
    pub env: Vec<(String, String)>,
    /// Start the servers in the reverse of the cluster file's order (replicas first,
    /// coordinators last): tests use it to show any order works.
    pub reverse_start: bool,
    /// Put HAProxy (listening here) in front of the frontends.
    pub haproxy: Option<Endpoint>,
}

impl LocalOptions {
    /// Options with the defaults for everything but the files and tokens.
    pub fn new(
        cluster_file: PathBuf,
        books: PathBuf,
        output_dir: PathBuf,
        cluster_token: String,
        admin_token: String,
    ) -> LocalOptions {
        LocalOptions {
            cluster_file,
            books,
            output_dir,
            cluster_token: cluster_token.into(),
            admin_token: admin_token.into(),
            program: None,
            env: Vec::new(),
            reverse_start: false,
            haproxy: None,
        }
    }
}

/// One supervised server process.
#[derive(Debug)]
pub struct Server {
    pub kind: Kind,
    pub id: u32,
    pub endpoint: Endpoint,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Server {
    pub fn name(&self) -> String {
        format!("{} {}", self.kind, self.id)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    pub cluster: ClusterConfig,
    pub servers: Vec<Server>,
    pub options: LocalOptions,
    /// HAProxy in front of the frontends (`LocalOptions::haproxy`).
    pub haproxy: Option<crate::haproxy::Haproxy>,
    /// The client of this tool's own calls to the servers (cluster token, 1 s timeout).
    client: bookstore_common::client::Client,
    /// The coordinator group, for views and admin calls.
    coordinators: std::sync::Arc<Coordinators>,
}

/// A cluster file for `n_catalog` catalogs and `n_order` orders, one coordinator, one
/// frontend and a cache, on free loopback ports.
pub fn free_port_cluster(n_catalog: usize, n_order: usize) -> std::io::Result<ClusterConfig> {
    free_port_cluster_with(1, 1, n_catalog, n_order)
}

/// A cluster file with `n_coordinators` coordinators and `n_frontends` frontends besides.
pub fn free_port_cluster_with(
    n_coordinators: usize,
    n_frontends: usize,
    n_catalog: usize,
    n_order: usize,
) -> std::io::Result<ClusterConfig> {
    let mut parts = Vec::new();
    let mut hold = Vec::new();
    for (kind, n) in [
        (Kind::Coordinator, n_coordinators),
        (Kind::Frontend, n_frontends),
        (Kind::Cache, 1),
        (Kind::Catalog, n_catalog),
        (Kind::Order, n_order),
    ] {
        for _ in 0..n {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            parts.push((kind, Endpoint::new("127.0.0.1", l.local_addr()?.port())));
            hold.push(l);
        }
    }
    Ok(ClusterConfig::from_parts(&parts))
}

/// A random token (hex, 32 characters).
pub fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A command for a supervised child: stdin closed, stdout and stderr appended to `log`,
/// killed when dropped, and (Linux) sent SIGTERM by the kernel if the supervisor dies.
pub(crate) fn supervised(program: &Path, log: &Path) -> Result<Command, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    Ok(cmd)
}

/// SIGTERM to a child we own, without waiting.
fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on a child we own.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}

/// Waits for a child until `deadline`, then SIGKILLs it.
async fn reap(mut child: Child, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// SIGTERM, then SIGKILL if the child has not exited after 3 s.
pub(crate) async fn terminate(child: Child) {
    sigterm(&child);
    reap(child, Instant::now() + Duration::from_secs(3)).await;
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Files up to this size are parsed whole before the cluster starts.
const BOOKS_FULL_CHECK_BYTES: u64 = 1 << 20;

/// Checks the books file before starting anything. A small file is parsed whole; a big
/// one only by its header and first book: the catalogs check every line when they load
/// it (and a start failure shows the end of their log), and a full parse here would add
/// seconds to the start of a million-book catalog. When the first lines look wrong the
/// whole file is parsed, for an exact error.
pub fn check_books(path: &Path) -> Result<(), String> {
    use std::io::BufRead;
    let file =
        std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if file.metadata().map_or(0, |m| m.len()) <= BOOKS_FULL_CHECK_BYTES {
        return bookstore_common::config::load_books(path)
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let mut reader = std::io::BufReader::new(file);
    let mut head = String::new();
    for _ in 0..2 {
        match reader.read_line(&mut head) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        }
    }
    let name = path.display().to_string();
    if bookstore_common::config::parse_books(head.as_bytes(), &name).is_ok() {
        return Ok(());
    }
    bookstore_common::config::load_books(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Coordinators added and retired at run time (`local add|remove coordinator`), kept in
/// `<output-dir>/coordinators.json` so that a restarted `local up` starts the group as it
/// was left.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CoordinatorLayout {
    /// Added coordinators: `host:port` by id.
    #[serde(default)]
    pub added: BTreeMap<u32, String>,
    /// Ids removed from the group (never started again).
    #[serde(default)]
    pub retired: Vec<u32>,
}

impl CoordinatorLayout {
    fn path(output_dir: &Path) -> PathBuf {
        output_dir.join("coordinators.json")
    }

    pub fn load(output_dir: &Path) -> Result<CoordinatorLayout, String> {
        let path = Self::path(output_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CoordinatorLayout::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn save(&self, output_dir: &Path) -> Result<(), String> {
        let path = Self::path(output_dir);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(self).expect("layout encodes"),
        )
        .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// What to start: the cluster file's servers, with the coordinators added and without
/// those retired at run time.
fn planned_servers(
    cluster: &ClusterConfig,
    output_dir: &Path,
) -> Result<Vec<(Kind, u32, Endpoint)>, String> {
    let layout = CoordinatorLayout::load(output_dir)?;
    let mut out = Vec::new();
    for (kind, id, e) in cluster.all() {
        if kind == Kind::Coordinator && layout.retired.contains(&id) {
            continue;
        }
        out.push((kind, id, e));
        if kind == Kind::Coordinator && id + 1 == cluster.servers(kind).len() as u32 {
            for (added, addr) in &layout.added {
                if layout.retired.contains(added) {
                    continue;
                }
                let (host, port) = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse().ok()?)))
                    .ok_or_else(|| format!("coordinators.json: bad address {addr:?}"))?;
                out.push((kind, *added, Endpoint::new(host, port)));
            }
        }
    }
    Ok(out)
}

impl LocalCluster {
    /// Checks the files and ports, starts every server, and waits until all are healthy.
    /// The coordinators start first; when the output directory holds the state of an
    /// earlier run, the catalog and order replicas started are those of the coordinators'
    /// member tables (replicas added with `local add` included, those retired with
    /// `local remove` left out). `progress` is told what happens.
    pub async fn start(
        options: LocalOptions,
        progress: &dyn Fn(&str),
    ) -> Result<LocalCluster, String> {
        let cluster = ClusterConfig::load(&options.cluster_file).map_err(|e| e.to_string())?;
        check_books(&options.books)?;
        std::fs::create_dir_all(&options.output_dir)
            .map_err(|e| format!("{}: {e}", options.output_dir.display()))?;
        let resumed = options.output_dir.join("data").is_dir();
        let planned = planned_servers(&cluster, &options.output_dir)?;
        for (kind, id, e) in &planned {
            drop(bookstore_common::server::bind(
                &e.addr(),
                &format!("{kind} {id}"),
            )?);
        }
        let exe = match &options.program {
            Some(p) => p.clone(),
            None => {
                std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?
            }
        };
        if let Some(h) = &options.haproxy {
            drop(bookstore_common::server::bind(&h.addr(), "haproxy")?);
        }
        let client = bookstore_common::client::Client::with_timeout(
            &options.cluster_token,
            Duration::from_millis(1000),
        );
        let coordinator_urls = planned
            .iter()
            .filter(|(k, _, _)| *k == Kind::Coordinator)
            .map(|(_, _, e)| e.url())
            .collect();
        let mut lc = LocalCluster {
            cluster: cluster.clone(),
            servers: Vec::new(),
            coordinators: std::sync::Arc::new(Coordinators::new(client.clone(), coordinator_urls)),
            options,
            haproxy: None,
            client,
        };
        let (coordinators, mut rest): (Vec<_>, Vec<_>) = planned
            .into_iter()
            .partition(|(k, _, _)| *k == Kind::Coordinator);
        if lc.options.reverse_start {
            rest.reverse();
            lc.spawn_all(&exe, rest, progress)?;
            let mut coordinators = coordinators;
            coordinators.reverse();
            lc.spawn_all(&exe, coordinators, progress)?;
        } else {
            lc.spawn_all(&exe, coordinators, progress)?;
            if let Err(e) = lc.wait_healthy(Duration::from_secs(20)).await {
                lc.stop().await;
                return Err(e);
            }
            progress("every coordinator answers; waiting for a leader");
            if let Err(e) = lc.wait_leader(Duration::from_secs(20)).await {
                lc.stop().await;
                return Err(e);
            }
            if resumed {
                match lc.members_from_coordinators(&rest, progress).await {
                    Ok(r) => rest = r,
                    Err(e) => {
                        lc.stop().await;
                        return Err(e);
                    }
                }
            }
            lc.spawn_all(&exe, rest, progress)?;
        }
        if let Err(e) = lc.wait_healthy(Duration::from_secs(20)).await {
            lc.stop().await;
            return Err(e);
        }
        progress("every server answers; waiting for the replicas to agree on primaries");
        if let Err(e) = lc.wait_ready(Duration::from_secs(20)).await {
            lc.stop().await;
            return Err(e);
        }
        if let Some(listen) = lc.options.haproxy.clone() {
            let frontends: Vec<Endpoint> = lc.cluster.servers(Kind::Frontend).to_vec();
            match crate::haproxy::Haproxy::start(&listen, &frontends, &lc.options.output_dir).await
            {
                Ok(h) => {
                    progress(&format!(
                        "started HAProxy on {listen} in front of {} frontends (pid {})",
                        frontends.len(),
                        h.pid().unwrap_or(0)
                    ));
                    lc.haproxy = Some(h);
                }
                Err(e) => {
                    lc.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(lc)
    }

    fn spawn_all(
        &mut self,
        exe: &Path,
        servers: Vec<(Kind, u32, Endpoint)>,
        progress: &dyn Fn(&str),
    ) -> Result<(), String> {
        for (kind, id, endpoint) in servers {
            let log = self
                .options
                .output_dir
                .join(format!("{kind}{id}.stderr.log"));
            let mut server = Server {
                kind,
                id,
                endpoint,
                log,
                child: None,
            };
            self.spawn(exe, &mut server)?;
            progress(&format!(
                "started {} on {} (pid {})",
                server.name(),
                server.endpoint,
                server.pid().unwrap_or(0)
            ));
            self.servers.push(server);
        }
        Ok(())
    }

    /// The catalog and order replicas of the coordinators' member tables (an earlier run
    /// may have added or retired some), in place of the cluster file's.
    async fn members_from_coordinators(
        &self,
        planned: &[(Kind, u32, Endpoint)],
        progress: &dyn Fn(&str),
    ) -> Result<Vec<(Kind, u32, Endpoint)>, String> {
        let mut out: Vec<(Kind, u32, Endpoint)> = planned
            .iter()
            .filter(|(k, _, _)| !matches!(k, Kind::Catalog | Kind::Order))
            .cloned()
            .collect();
        for kind in [Kind::Catalog, Kind::Order] {
            let file: Vec<(Kind, u32, Endpoint)> = planned
                .iter()
                .filter(|(k, _, _)| *k == kind)
                .cloned()
                .collect();
            let doc = self.view_doc(kind).await?;
            let members: Vec<(Kind, u32, Endpoint)> = doc
                .members
                .iter()
                .filter_map(|(id, url)| Endpoint::from_url(url).map(|e| (kind, *id, e)))
                .collect();
            if members.is_empty() || members == file {
                out.extend(file);
                continue;
            }
            progress(&format!(
                "{kind} replicas from the coordinators' member table (scaled at run time): {}",
                members
                    .iter()
                    .map(|(_, id, e)| format!("{id}@{e}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            for (k, id, e) in &members {
                if !file.iter().any(|(_, i, _)| i == id) {
                    drop(bookstore_common::server::bind(
                        &e.addr(),
                        &format!("{k} {id}"),
                    )?);
                }
            }
            out.extend(members);
        }
        Ok(out)
    }

    /// Waits until the coordinators have a leader that answers with authority.
    pub async fn wait_leader(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.view_doc(Kind::Catalog).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "the coordinators did not elect a leader within {limit:?}: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn program(&self) -> Result<PathBuf, String> {
        match &self.options.program {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe().map_err(|e| format!("cannot find this program: {e}")),
        }
    }

    fn client(&self) -> &bookstore_common::client::Client {
        &self.client
    }

    /// The coordinator leader's report of `kind`: the view, its synced backups and the
    /// members.
    pub async fn view_doc(&self, kind: Kind) -> Result<KindReport, String> {
        self.coordinators
            .view(kind.name(), Duration::from_millis(500))
            .await
            .map_err(|e| format!("coordinators: {e}"))
    }

    /// The coordinator group, as this tool reaches it.
    pub fn coordinators(&self) -> &Coordinators {
        &self.coordinators
    }

    /// What coordinator `s` says of itself (`GET /coordinator/status`).
    pub async fn coordinator_status(&self, id: u32) -> Option<CoordinatorStatus> {
        let s = self
            .servers
            .iter()
            .find(|s| s.kind == Kind::Coordinator && s.id == id)?;
        let url = format!("{}/coordinator/status", s.endpoint.url());
        self.client().get_json(&url).await.ok()
    }

    /// The id of the coordinator leader, asked of the running coordinators.
    pub async fn coordinator_leader(&self) -> Option<u32> {
        for s in self.servers.iter().filter(|s| s.kind == Kind::Coordinator) {
            if let Some(st) = self.coordinator_status(s.id).await {
                if st.role == CoordinatorRole::Leader {
                    return Some(st.id as u32);
                }
            }
        }
        None
    }

    /// What replica `s` says of itself (`GET /replication/status`).
    async fn replica_status(&self, s: &Server) -> Option<Status> {
        let url = format!("{}/replication/status", s.endpoint.url());
        self.client().get_json(&url).await.ok()
    }

    /// Waits until replica `id` of `kind` is a synced backup or the primary of the view,
    /// and serves reads.
    pub async fn wait_synced(&self, kind: Kind, id: u32, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let server = self
            .servers
            .iter()
            .find(|s| s.kind == kind && s.id == id)
            .ok_or_else(|| format!("no {kind} {id} in this cluster"))?;
        loop {
            // The view service counts it as primary or synced backup, and the replica
            // itself acts in that same view (same epoch and role) and serves reads.
            let standing = match self.view_doc(kind).await {
                Ok(doc) => membership::standing(&doc, id),
                Err(_) => Standing::NoView,
            };
            if let Standing::Member { epoch, role } = standing {
                let acting = self
                    .replica_status(server)
                    .await
                    .is_some_and(|s| membership::acts_as(&s, epoch, role));
                if acting {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{kind} {id} did not become a synced member within {limit:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Scale out: registers a new `kind` replica (catalog or order) with the view service
    /// on a free loopback port, starts it, and waits until it has caught up and is a
    /// synced backup. Returns its id. Nothing else is restarted.
    pub async fn add(&mut self, kind: Kind, progress: &dyn Fn(&str)) -> Result<u32, String> {
        if kind == Kind::Coordinator {
            return self.add_coordinator(progress).await;
        }
        if !matches!(kind, Kind::Catalog | Kind::Order) {
            return Err(format!(
                "only coordinators and catalog and order replicas can be added, not {kind}"
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let endpoint = Endpoint::new("127.0.0.1", port);
        let path = format!(
            "/admin/cluster/register?kind={kind}&url={}",
            bookstore_common::client::encode(&endpoint.url())
        );
        let answer: serde_json::Value = self
            .admin_post(&path)
            .await
            .map_err(|e| format!("register {kind} at {endpoint}: {e}"))?;
        let id = answer["id"]
            .as_u64()
            .ok_or_else(|| format!("register answered without an id: {answer}"))?
            as u32;
        progress(&format!("registered {kind} {id} at {endpoint}"));
        let mut server = Server {
            kind,
            id,
            endpoint,
            log: self
                .options
                .output_dir
                .join(format!("{kind}{id}.stderr.log")),
            child: None,
        };
        let exe = self.program()?;
        self.spawn(&exe, &mut server)?;
        progress(&format!(
            "started {} on {} (pid {}); waiting until it has caught up",
            server.name(),
            server.endpoint,
            server.pid().unwrap_or(0)
        ));
        self.servers.push(server);
        self.wait_synced(kind, id, Duration::from_secs(30)).await?;
        progress(&format!("{kind} {id} is a synced replica and serves"));
        Ok(id)
    }

    /// Scale in: retires replica `id` of `kind` from the view service (refused if no other
    /// replica holds every committed write), waits until the view no longer includes it
    /// (a primary is replaced by a synced backup first), then stops its process. Its data
    /// directory is kept.
    pub async fn remove(
        &mut self,
        kind: Kind,
        id: u32,
        progress: &dyn Fn(&str),
    ) -> Result<(), String> {
        self.find(kind, id)?;
        if kind == Kind::Coordinator {
            return self.remove_coordinator(id, progress).await;
        }
        let path = format!("/admin/cluster/unregister?kind={kind}&id={id}");
        // A view change in progress answers 503: retry until it settles.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.admin_post::<serde_json::Value>(&path).await {
                Ok(_) => break,
                Err(e) if e.contains("retry shortly") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("retire {kind} {id}: {e}")),
            }
        }
        progress(&format!(
            "{kind} {id} retired; waiting until the view no longer includes it"
        ));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(doc) = self.view_doc(kind).await {
                if membership::standing(&doc, id) == Standing::Out {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!("the {kind} view still includes {id} after 15 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop_one(kind, id).await?;
        let pos = self
            .servers
            .iter()
            .position(|s| s.kind == kind && s.id == id)
            .expect("found above");
        self.servers.remove(pos);
        progress(&format!("{kind} {id} stopped"));
        Ok(())
    }

    /// Restarts every catalog and order replica, then every coordinator, one at a time:
    /// per kind the backups first, then the primary (the view service promotes a synced
    /// backup while it is away); the coordinator followers first, then the leader. Each
    /// one is stopped with SIGTERM, started again from its disk, and must be a synced
    /// member again (a coordinator: caught up with the leader) before the next one goes,
    /// so one failure can always be survived.
    pub async fn rolling_restart(&mut self, progress: &dyn Fn(&str)) -> Result<(), String> {
        for kind in [Kind::Catalog, Kind::Order] {
            let primary = self.primary(kind).await?;
            let mut ids: Vec<u32> = self
                .servers
                .iter()
                .filter(|s| s.kind == kind && s.id != primary)
                .map(|s| s.id)
                .collect();
            ids.sort_unstable();
            ids.push(primary);
            for id in ids {
                // Never take a replica away while another one is not synced.
                self.wait_ready(Duration::from_secs(30)).await?;
                let role = if id == primary { "primary" } else { "backup" };
                progress(&format!("restarting {kind} {id} ({role})"));
                self.stop_one(kind, id).await?;
                self.restart(kind, id).await?;
                self.wait_synced(kind, id, Duration::from_secs(30)).await?;
                progress(&format!("{kind} {id} is back and synced"));
            }
        }
        self.wait_ready(Duration::from_secs(30)).await?;
        let leader = self
            .coordinator_leader()
            .await
            .ok_or("no coordinator leads; not restarting the coordinators")?;
        let mut ids: Vec<u32> = self
            .servers
            .iter()
            .filter(|s| s.kind == Kind::Coordinator && s.id != leader)
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        ids.push(leader);
        for id in ids {
            let role = if id == leader { "leader" } else { "follower" };
            progress(&format!("restarting coordinator {id} ({role})"));
            let applied = self.leader_applied().await;
            self.stop_one(Kind::Coordinator, id).await?;
            self.restart(Kind::Coordinator, id).await?;
            self.wait_coordinator_caught_up(id, applied, Duration::from_secs(30))
                .await?;
            progress(&format!("coordinator {id} is back and caught up"));
        }
        self.wait_leader(Duration::from_secs(30)).await?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// The leader's applied Raft index, if a leader answers.
    async fn leader_applied(&self) -> u64 {
        let leader = self.coordinator_leader().await;
        match leader {
            Some(l) => self
                .coordinator_status(l)
                .await
                .and_then(|s| s.applied_index)
                .unwrap_or(0),
            None => 0,
        }
    }

    /// Waits until coordinator `id` knows a leader, is a voter again, and has applied at
    /// least `applied`.
    pub async fn wait_coordinator_caught_up(
        &self,
        id: u32,
        applied: u64,
        limit: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.coordinator_status(id).await {
                let voter = matches!(s.role, CoordinatorRole::Leader | CoordinatorRole::Follower);
                if voter && s.leader.is_some() && s.applied_index.unwrap_or(0) >= applied {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "coordinator {id} did not catch up with the leader within {limit:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Adds a coordinator: reserves its id with the leader, starts it empty with `--join`
    /// on a free loopback port, and has the leader add it (as a learner until it has
    /// caught up, then as a voter).
    async fn add_coordinator(&mut self, progress: &dyn Fn(&str)) -> Result<u32, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let endpoint = Endpoint::new("127.0.0.1", port);
        let answer: serde_json::Value = self
            .admin_post("/admin/coordinators/reserve")
            .await
            .map_err(|e| format!("reserve a coordinator id: {e}"))?;
        let id = answer["id"]
            .as_u64()
            .ok_or_else(|| format!("reserve answered without an id: {answer}"))?
            as u32;
        let mut layout = CoordinatorLayout::load(&self.options.output_dir)?;
        layout.added.insert(id, endpoint.addr());
        layout.save(&self.options.output_dir)?;
        let mut server = Server {
            kind: Kind::Coordinator,
            id,
            endpoint: endpoint.clone(),
            log: self
                .options
                .output_dir
                .join(format!("coordinator{id}.stderr.log")),
            child: None,
        };
        let exe = self.program()?;
        self.spawn(&exe, &mut server)?;
        progress(&format!(
            "started coordinator {id} on {endpoint} (pid {}); adding it to the group",
            server.pid().unwrap_or(0)
        ));
        self.servers.push(server);
        let path = format!(
            "/admin/coordinators/add?id={id}&url={}",
            bookstore_common::client::encode(&endpoint.url())
        );
        let answer: serde_json::Value = self
            .admin_post(&path)
            .await
            .map_err(|e| format!("add coordinator {id}: {e}"))?;
        self.coordinators.learn([endpoint.url().as_str()]);
        progress(&format!(
            "coordinator {id} is a voting member; voters {}",
            answer["voters"]
        ));
        let applied = self.leader_applied().await;
        self.wait_coordinator_caught_up(id, applied, Duration::from_secs(30))
            .await?;
        Ok(id)
    }

    /// Removes coordinator `id` from the group (the leader too: it steps down once the
    /// change is committed), then stops it. Its data directory is kept; it is never
    /// started again.
    async fn remove_coordinator(&mut self, id: u32, progress: &dyn Fn(&str)) -> Result<(), String> {
        let answer: serde_json::Value = self
            .admin_post(&format!("/admin/coordinators/remove?id={id}"))
            .await
            .map_err(|e| format!("remove coordinator {id}: {e}"))?;
        progress(&format!(
            "coordinator {id} left the group; voters {}",
            answer["voters"]
        ));
        let mut layout = CoordinatorLayout::load(&self.options.output_dir)?;
        if !layout.retired.contains(&id) {
            layout.retired.push(id);
        }
        layout.save(&self.options.output_dir)?;
        self.stop_one(Kind::Coordinator, id).await?;
        let pos = self
            .servers
            .iter()
            .position(|s| s.kind == Kind::Coordinator && s.id == id)
            .expect("found above");
        self.servers.remove(pos);
        self.wait_leader(Duration::from_secs(10)).await?;
        progress(&format!("coordinator {id} stopped"));
        Ok(())
    }

    /// SIGTERM to one server; SIGKILL if it has not exited after 3 s.
    pub async fn stop_one(&mut self, kind: Kind, id: u32) -> Result<(), String> {
        let s = self.find(kind, id)?;
        if let Some(child) = s.child.take() {
            terminate(child).await;
        }
        Ok(())
    }

    /// `POST path` with the admin token to the coordinator leader ([`crate::admin`]).
    async fn admin_post<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        crate::admin::post(&self.coordinators, &self.options.admin_token, path)
            .await
            .map_err(|e| e.to_string())
    }

    fn spawn(&self, exe: &Path, server: &mut Server) -> Result<(), String> {
        let mut cmd = supervised(exe, &server.log)?;
        cmd.arg("serve")
            .arg(server.kind.name())
            .arg("--id")
            .arg(server.id.to_string())
            .arg("--cluster")
            .arg(&self.options.cluster_file)
            .arg("--output-dir")
            .arg(&self.options.output_dir)
            .arg("--listen")
            .arg(server.endpoint.addr())
            .env(
                "BOOKSTORE_CLUSTER_TOKEN",
                self.options.cluster_token.expose(),
            )
            .envs(self.options.env.iter().map(|(k, v)| (k, v)));
        match server.kind {
            Kind::Catalog => {
                cmd.arg("--books").arg(&self.options.books);
            }
            Kind::Frontend => {
                cmd.env("BOOKSTORE_ADMIN_TOKEN", self.options.admin_token.expose());
            }
            Kind::Coordinator => {
                cmd.env("BOOKSTORE_ADMIN_TOKEN", self.options.admin_token.expose());
                // Coordinators beyond the cluster file's were added at run time: they
                // join the running group rather than form one.
                if server.id as usize >= self.cluster.servers(Kind::Coordinator).len() {
                    cmd.arg("--join");
                }
            }
            _ => {}
        }
        // Every server of a local cluster shares the machine's cores, and a replica's
        // work is a chain of hand-offs (HTTP worker, runtime, disk thread): one HTTP
        // worker and one runtime thread per replica buy 11-21 % more durable buys than two
        // of each (docs/performance.md, round 3). The frontend keeps two: it serves the
        // cache hits. An explicit setting in the environment wins.
        if matches!(server.kind, Kind::Catalog | Kind::Order) {
            for (var, value) in [("BOOKSTORE_WORKERS", "1"), ("TOKIO_WORKER_THREADS", "1")] {
                if std::env::var_os(var).is_none() {
                    cmd.env(var, value);
                }
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", server.name()))?;
        server.child = Some(child);
        Ok(())
    }

    /// Polls `/health` of every server until all answer 200.
    pub async fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + limit;
        for server in &mut self.servers {
            let url = format!("{}/health", server.endpoint.url());
            loop {
                if let Some(child) = server.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "{} exited during start ({status}); the end of {}:\n{}",
                            server.name(),
                            server.log.display(),
                            tail(&server.log, 15)
                        ));
                    }
                }
                if let Ok(r) = http.get(&url).send().await {
                    if r.status().is_success() {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} did not become healthy within {limit:?}; see {}",
                        server.name(),
                        server.log.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Waits until every catalog and order replica is in the view, caught up, and (for
    /// backups) synced, so that any single failure can be survived.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        for kind in [Kind::Catalog, Kind::Order] {
            let n = self.servers.iter().filter(|s| s.kind == kind).count();
            loop {
                if let Ok(KindReport {
                    view: Some(v),
                    synced,
                    ..
                }) = self.view_doc(kind).await
                {
                    if v.backups.len() + 1 == n && synced.len() == v.backups.len() {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "the {kind} replicas did not all join the view within {limit:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for s in self
            .servers
            .iter()
            .filter(|s| matches!(s.kind, Kind::Catalog | Kind::Order))
        {
            loop {
                if self
                    .replica_status(s)
                    .await
                    .is_some_and(|st| st.serving_reads)
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} did not join a view within {limit:?}; see {}",
                        s.name(),
                        s.log.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn find(&mut self, kind: Kind, id: u32) -> Result<&mut Server, String> {
        self.servers
            .iter_mut()
            .find(|s| s.kind == kind && s.id == id)
            .ok_or_else(|| format!("no {kind} {id} in this cluster"))
    }

    /// The pid of a running server.
    pub fn pid_of(&mut self, kind: Kind, id: u32) -> Option<u32> {
        self.find(kind, id).ok().and_then(|s| s.pid())
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`, `libc::SIGSTOP`) to a server.
    pub fn signal(&mut self, kind: Kind, id: u32, signal: i32) -> Result<(), String> {
        let s = self.find(kind, id)?;
        let pid = s
            .pid()
            .ok_or_else(|| format!("{} is not running", s.name()))?;
        // SAFETY: kill(2) on a child process we own.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            return Err(format!(
                "cannot signal {}: {}",
                s.name(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// SIGKILLs a server and waits until it is gone.
    pub async fn kill9(&mut self, kind: Kind, id: u32) -> Result<(), String> {
        self.signal(kind, id, libc::SIGKILL)?;
        let s = self.find(kind, id)?;
        if let Some(mut child) = s.child.take() {
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// Starts a stopped server again (it recovers from its data directory) and waits
    /// until it answers `/health`.
    pub async fn restart(&mut self, kind: Kind, id: u32) -> Result<(), String> {
        let exe = self.program()?;
        let pos = self
            .servers
            .iter()
            .position(|s| s.kind == kind && s.id == id)
            .ok_or_else(|| format!("no {kind} {id} in this cluster"))?;
        let mut server = self.servers.remove(pos);
        if server.child.is_some() {
            self.servers.insert(pos, server);
            return Err(format!("{kind} {id} is still running"));
        }
        let spawned = self.spawn(&exe, &mut server);
        self.servers.insert(pos, server);
        spawned?;
        let url = format!("{}/health", self.servers[pos].endpoint.url());
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("{kind} {id} did not come back within 10 s"))
    }

    /// The primary of `kind` in the current view.
    pub async fn primary(&self, kind: Kind) -> Result<u32, String> {
        self.view_doc(kind)
            .await?
            .view
            .map(|v| v.primary)
            .ok_or_else(|| format!("no {kind} view yet"))
    }

    /// Where clients go: HAProxy if there is one, else frontend 0.
    pub fn public_url(&self) -> String {
        match &self.haproxy {
            Some(h) => h.listen.url(),
            None => self.frontend_url(),
        }
    }

    pub fn frontend_url(&self) -> String {
        self.cluster
            .server(Kind::Frontend, 0)
            .map(|e| e.url())
            .unwrap_or_default()
    }

    /// Returns the first server found to have exited, with its status.
    pub fn exited(&mut self) -> Option<(String, String)> {
        for s in &mut self.servers {
            if let Some(child) = s.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    s.child = None;
                    return Some((s.name(), format!("{status}; see {}", s.log.display())));
                }
            }
        }
        None
    }

    /// SIGTERM to every server, then SIGKILL to those still alive after 3 s.
    pub async fn stop(&mut self) {
        if let Some(mut h) = self.haproxy.take() {
            h.stop().await;
        }
        for child in self.servers.iter().filter_map(|s| s.child.as_ref()) {
            sigterm(child);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for s in &mut self.servers {
            if let Some(child) = s.child.take() {
                reap(child, deadline).await;
            }
        }
    }
}
