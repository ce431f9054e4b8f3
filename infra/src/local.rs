//! A cluster of real processes on this machine. Every server is this same binary run
//! as `infra serve KIND --id N ...`, so one build serves all; each child asks the kernel
//! to SIGTERM it if the supervisor dies, so nothing is left orphaned.
//!
//! - this file: [`LocalOptions`], [`Server`], [`LocalCluster`] with its start, its
//!   processes (spawn, signal, restart, stop) and its admin calls;
//! - `plan`: what to start: cluster files on free ports, the books check, the
//!   coordinators added or retired at run time ([`CoordinatorLayout`]);
//! - `process`: supervised child processes (log files, SIGTERM on the supervisor's
//!   death, SIGTERM then SIGKILL);
//! - `status`: asking the servers and the coordinators, and waiting until the cluster is
//!   healthy, led, ready, or a replica synced;
//! - `scale`: `add`, `remove` (replicas and coordinators) and the rolling restart.
mod plan;
mod process;
mod scale;
mod status;

use anyhow::{anyhow, bail, Context};

use plan::planned_servers;
pub use plan::{
    books_csv, check_books, free_port_cluster, free_port_cluster_on, free_port_cluster_with,
    options_in, random_token, CoordinatorLayout,
};
use process::{reap, sigterm, tail};
pub(crate) use process::{supervised, terminate};

use bookstore_common::config::{ClusterConfig, Endpoint, Kind};
use bookstore_common::coordinators::Coordinators;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Child;

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

impl LocalCluster {
    /// Checks the files and ports, starts every server, and waits until all are healthy.
    /// The coordinators start first; when the output directory holds the state of an
    /// earlier run, the catalog and order replicas started are those of the coordinators'
    /// member tables (replicas added with `local add` included, those retired with
    /// `local remove` left out). `progress` is told what happens.
    pub async fn start(
        options: LocalOptions,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<LocalCluster> {
        let cluster = ClusterConfig::load(&options.cluster_file)?;
        check_books(&options.books)?;
        std::fs::create_dir_all(&options.output_dir)
            .with_context(|| options.output_dir.display().to_string())?;
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
            None => std::env::current_exe().context("cannot find this program")?,
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
        let (coordinators, rest): (Vec<_>, Vec<_>) = planned
            .into_iter()
            .partition(|(k, _, _)| *k == Kind::Coordinator);
        // Whatever fails, nothing of this cluster is left running.
        match lc
            .bring_up(&exe, coordinators, rest, resumed, progress)
            .await
        {
            Ok(()) => Ok(lc),
            Err(e) => {
                lc.stop().await;
                Err(e)
            }
        }
    }

    /// [`LocalCluster::start`]'s steps after the checks: the coordinators and a leader
    /// first (unless `reverse_start`), then the rest, then HAProxy.
    async fn bring_up(
        &mut self,
        exe: &Path,
        mut coordinators: Vec<(Kind, u32, Endpoint)>,
        mut rest: Vec<(Kind, u32, Endpoint)>,
        resumed: bool,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<()> {
        let limit = Duration::from_secs(20);
        if self.options.reverse_start {
            rest.reverse();
            self.spawn_all(exe, rest, progress)?;
            coordinators.reverse();
            self.spawn_all(exe, coordinators, progress)?;
        } else {
            self.spawn_all(exe, coordinators, progress)?;
            self.wait_healthy(limit).await?;
            progress("every coordinator answers; waiting for a leader");
            self.wait_leader(limit).await?;
            if resumed {
                rest = self.members_from_coordinators(&rest, progress).await?;
            }
            self.spawn_all(exe, rest, progress)?;
        }
        self.wait_healthy(limit).await?;
        progress("every server answers; waiting for the replicas to agree on primaries");
        self.wait_ready(limit).await?;
        if let Some(listen) = self.options.haproxy.clone() {
            let frontends: Vec<Endpoint> = self.cluster.servers(Kind::Frontend).to_vec();
            let h = crate::haproxy::Haproxy::start(&listen, &frontends, &self.options.output_dir)
                .await?;
            progress(&format!(
                "started HAProxy on {listen} in front of {} frontends (pid {})",
                frontends.len(),
                h.pid().unwrap_or(0)
            ));
            self.haproxy = Some(h);
        }
        Ok(())
    }

    fn spawn_all(
        &mut self,
        exe: &Path,
        servers: Vec<(Kind, u32, Endpoint)>,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<()> {
        for (kind, id, endpoint) in servers {
            self.launch(exe, kind, id, endpoint, progress, "")?;
        }
        Ok(())
    }

    /// Starts server `kind` `id` on `endpoint` (its stderr to `<kind><id>.stderr.log` in
    /// the output directory), counts it among the cluster's servers and tells `progress`,
    /// ending the line with `then` (what happens next).
    fn launch(
        &mut self,
        exe: &Path,
        kind: Kind,
        id: u32,
        endpoint: Endpoint,
        progress: &dyn Fn(&str),
        then: &str,
    ) -> anyhow::Result<()> {
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
            "started {} on {} (pid {}){then}",
            server.name(),
            server.endpoint,
            server.pid().unwrap_or(0)
        ));
        self.servers.push(server);
        Ok(())
    }

    /// The catalog and order replicas of the coordinators' member tables (an earlier run
    /// may have added or retired some), in place of the cluster file's.
    async fn members_from_coordinators(
        &self,
        planned: &[(Kind, u32, Endpoint)],
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Vec<(Kind, u32, Endpoint)>> {
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

    fn program(&self) -> anyhow::Result<PathBuf> {
        match &self.options.program {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe().context("cannot find this program"),
        }
    }

    fn client(&self) -> &bookstore_common::client::Client {
        &self.client
    }

    /// SIGTERM to one server; SIGKILL if it has not exited after 3 s.
    pub async fn stop_one(&mut self, kind: Kind, id: u32) -> anyhow::Result<()> {
        let s = self.find(kind, id)?;
        if let Some(child) = s.child.take() {
            terminate(child).await;
        }
        Ok(())
    }

    /// `POST path` with the admin token to the coordinator leader ([`crate::admin`]).
    async fn admin_post<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(crate::admin::post(&self.coordinators, &self.options.admin_token, path).await?)
    }

    fn spawn(&self, exe: &Path, server: &mut Server) -> anyhow::Result<()> {
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
            .with_context(|| format!("cannot start {}", server.name()))?;
        server.child = Some(child);
        Ok(())
    }

    fn find(&mut self, kind: Kind, id: u32) -> anyhow::Result<&mut Server> {
        self.servers
            .iter_mut()
            .find(|s| s.kind == kind && s.id == id)
            .with_context(|| format!("no {kind} {id} in this cluster"))
    }

    /// The pid of a running server.
    pub fn pid_of(&mut self, kind: Kind, id: u32) -> Option<u32> {
        self.find(kind, id).ok().and_then(|s| s.pid())
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`, `libc::SIGSTOP`) to a server.
    pub fn signal(&mut self, kind: Kind, id: u32, signal: i32) -> anyhow::Result<()> {
        let s = self.find(kind, id)?;
        let pid = s
            .pid()
            .with_context(|| format!("{} is not running", s.name()))?;
        // SAFETY: kill(2) on a child process we own.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!(
                "cannot signal {}: {}",
                s.name(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// SIGKILLs a server and waits until it is gone.
    pub async fn kill9(&mut self, kind: Kind, id: u32) -> anyhow::Result<()> {
        self.signal(kind, id, libc::SIGKILL)?;
        let s = self.find(kind, id)?;
        if let Some(mut child) = s.child.take() {
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// Starts a stopped server again (it recovers from its data directory) and waits
    /// until it answers `/health`.
    pub async fn restart(&mut self, kind: Kind, id: u32) -> anyhow::Result<()> {
        let exe = self.program()?;
        let pos = self
            .servers
            .iter()
            .position(|s| s.kind == kind && s.id == id)
            .with_context(|| format!("no {kind} {id} in this cluster"))?;
        let mut server = self.servers.remove(pos);
        if server.child.is_some() {
            self.servers.insert(pos, server);
            bail!("{kind} {id} is still running");
        }
        let spawned = self.spawn(&exe, &mut server);
        self.servers.insert(pos, server);
        spawned?;
        let url = format!("{}/health", self.servers[pos].endpoint.url());
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Not `status::poll`: its async closure would make this future, which the chaos
        // nemesis spawns, not `Send` (a limit of today's compiler).
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
        Err(anyhow!("{kind} {id} did not come back within 10 s"))
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
