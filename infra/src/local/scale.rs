//! Changing a running local cluster: adding and removing catalog and order replicas
//! and coordinators, and restarting every server one at a time.
use super::status::poll;
use super::{CoordinatorLayout, LocalCluster};
use crate::membership::{self, Standing};
use anyhow::{bail, Context};
use bookstore_common::config::{Endpoint, Kind};
use bookstore_common::types::{CoordinatorChange, MemberChange};
use std::time::{Duration, Instant};

impl LocalCluster {
    /// Scale out: registers a new `kind` replica (catalog or order) with the view service
    /// on a free loopback port, starts it, and waits until it has caught up and is a
    /// synced backup. Returns its id. Nothing else is restarted.
    pub async fn add(&mut self, kind: Kind, progress: &dyn Fn(&str)) -> anyhow::Result<u32> {
        if kind == Kind::Coordinator {
            return self.add_coordinator(progress).await;
        }
        if !matches!(kind, Kind::Catalog | Kind::Order) {
            bail!("only coordinators and catalog and order replicas can be added, not {kind}");
        }
        let endpoint = free_loopback_endpoint()?;
        let path = with_url(&format!("/admin/cluster/register?kind={kind}"), &endpoint);
        let registered: MemberChange = self
            .admin_post(&path)
            .await
            .with_context(|| format!("register {kind} at {endpoint}"))?;
        let id = registered.id;
        progress(&format!("registered {kind} {id} at {endpoint}"));
        let exe = self.program()?;
        let then = "; waiting until it has caught up";
        self.launch(&exe, kind, id, endpoint, progress, then)?;
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
    ) -> anyhow::Result<()> {
        self.find(kind, id)?;
        if kind == Kind::Coordinator {
            return self.remove_coordinator(id, progress).await;
        }
        let path = format!("/admin/cluster/unregister?kind={kind}&id={id}");
        // A view change in progress answers 503: retry until it settles.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.admin_post::<MemberChange>(&path).await {
                Ok(_) => break,
                Err(e) if e.to_string().contains("retry shortly") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.context(format!("retire {kind} {id}"))),
            }
        }
        progress(&format!(
            "{kind} {id} retired; waiting until the view no longer includes it"
        ));
        let out = poll(Instant::now() + Duration::from_secs(15), async || {
            let doc = self.view_doc(kind).await.ok()?;
            (membership::standing(&doc, id) == Standing::Out).then_some(())
        });
        out.await
            .with_context(|| format!("the {kind} view still includes {id} after 15 s"))?;
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

    /// The ids of the `kind` servers in order, with `last` moved to the end (the primary
    /// or the leader goes after the others).
    fn ids_ending_with(&self, kind: Kind, last: u32) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .servers
            .iter()
            .filter(|s| s.kind == kind && s.id != last)
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        ids.push(last);
        ids
    }

    /// Restarts every catalog and order replica, then every coordinator, one at a time:
    /// per kind the backups first, then the primary (the view service promotes a synced
    /// backup while it is away); the coordinator followers first, then the leader. Each
    /// one is stopped with SIGTERM, started again from its disk, and must be a synced
    /// member again (a coordinator: caught up with the leader) before the next one goes,
    /// so one failure can always be survived.
    pub async fn rolling_restart(&mut self, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
        for kind in [Kind::Catalog, Kind::Order] {
            let primary = self.primary(kind).await?;
            for id in self.ids_ending_with(kind, primary) {
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
            .context("no coordinator leads; not restarting the coordinators")?;
        for id in self.ids_ending_with(Kind::Coordinator, leader) {
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

    /// Adds a coordinator: reserves its id with the leader, starts it empty with `--join`
    /// on a free loopback port, and has the leader add it (as a learner until it has
    /// caught up, then as a voter).
    async fn add_coordinator(&mut self, progress: &dyn Fn(&str)) -> anyhow::Result<u32> {
        let endpoint = free_loopback_endpoint()?;
        let reserved: CoordinatorChange = self
            .admin_post("/admin/coordinators/reserve")
            .await
            .context("reserve a coordinator id")?;
        let id = u32::try_from(reserved.id).context("reserve answered an id beyond u32")?;
        let mut layout = CoordinatorLayout::load(&self.options.output_dir)?;
        layout.added.insert(id, endpoint.addr());
        layout.save(&self.options.output_dir)?;
        let exe = self.program()?;
        let then = "; adding it to the group";
        let kind = Kind::Coordinator;
        self.launch(&exe, kind, id, endpoint.clone(), progress, then)?;
        let path = with_url(&format!("/admin/coordinators/add?id={id}"), &endpoint);
        let added: CoordinatorChange = self
            .admin_post(&path)
            .await
            .with_context(|| format!("add coordinator {id}"))?;
        self.coordinators.learn([endpoint.url().as_str()]);
        progress(&format!(
            "coordinator {id} is a voting member; voters {:?}",
            added.voters
        ));
        let applied = self.leader_applied().await;
        self.wait_coordinator_caught_up(id, applied, Duration::from_secs(30))
            .await?;
        Ok(id)
    }

    /// Removes coordinator `id` from the group (the leader too: it steps down once the
    /// change is committed), then stops it. Its data directory is kept; it is never
    /// started again.
    async fn remove_coordinator(&mut self, id: u32, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
        let removed: CoordinatorChange = self
            .admin_post(&format!("/admin/coordinators/remove?id={id}"))
            .await
            .with_context(|| format!("remove coordinator {id}"))?;
        progress(&format!(
            "coordinator {id} left the group; voters {:?}",
            removed.voters
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
}

/// `path` (which has a query already) with `&url=` the base URL of `endpoint`.
fn with_url(path: &str, endpoint: &Endpoint) -> String {
    let url = bookstore_common::client::encode(&endpoint.url());
    format!("{path}&url={url}")
}

/// A free port on 127.0.0.1, for a server added at run time.
fn free_loopback_endpoint() -> anyhow::Result<Endpoint> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free port")?
        .port();
    Ok(Endpoint::new("127.0.0.1", port))
}
