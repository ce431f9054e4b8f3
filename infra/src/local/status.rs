//! Asking a local cluster how it is (health, the coordinators' reports and status, each
//! replica's status) and waiting until it is healthy, led, ready, or a replica synced.
use super::{tail, LocalCluster, Server};
use crate::membership::{self, Standing};
use anyhow::{anyhow, bail, Context};
use bookstore_common::config::Kind;
use bookstore_common::coordinators::Coordinators;
use bookstore_replication::node::Status;
use bookstore_replication::wire::{CoordinatorRole, CoordinatorStatus, KindReport};
use std::time::{Duration, Instant};

impl LocalCluster {
    /// Waits until the coordinators have a leader that answers with authority.
    pub async fn wait_leader(&self, limit: Duration) -> anyhow::Result<()> {
        let mut last = None;
        let led = poll(Instant::now() + limit, async || {
            let answer = self.view_doc(Kind::Catalog).await;
            answer.map_err(|e| last = Some(e)).ok()
        });
        if led.await.is_none() {
            let last = last.map_or(String::new(), |e| format!("{e:#}"));
            bail!("the coordinators did not elect a leader within {limit:?}: {last}");
        }
        Ok(())
    }

    /// The coordinator leader's report of `kind`: the view, its synced backups and the
    /// members.
    pub async fn view_doc(&self, kind: Kind) -> anyhow::Result<KindReport> {
        self.coordinators
            .view(kind.name(), Duration::from_millis(500))
            .await
            .context("coordinators")
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
    pub(super) async fn replica_status(&self, s: &Server) -> Option<Status> {
        let url = format!("{}/replication/status", s.endpoint.url());
        self.client().get_json(&url).await.ok()
    }

    /// Waits until replica `id` of `kind` is a synced backup or the primary of the view,
    /// and serves reads.
    pub async fn wait_synced(&self, kind: Kind, id: u32, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let server = self
            .servers
            .iter()
            .find(|s| s.kind == kind && s.id == id)
            .with_context(|| format!("no {kind} {id} in this cluster"))?;
        // The view service counts it as primary or synced backup, and the replica itself
        // acts in that same view (same epoch and role) and serves reads.
        let synced = poll(deadline, async || {
            let doc = self.view_doc(kind).await.ok()?;
            let Standing::Member { epoch, role } = membership::standing(&doc, id) else {
                return None;
            };
            let status = self.replica_status(server).await?;
            membership::acts_as(&status, epoch, role).then_some(())
        });
        synced
            .await
            .with_context(|| format!("{kind} {id} did not become a synced member within {limit:?}"))
    }

    /// The leader's applied Raft index, if a leader answers.
    pub(super) async fn leader_applied(&self) -> u64 {
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
    ) -> anyhow::Result<()> {
        let caught_up = poll(Instant::now() + limit, async || {
            let s = self.coordinator_status(id).await?;
            let voter = matches!(s.role, CoordinatorRole::Leader | CoordinatorRole::Follower);
            (voter && s.leader.is_some() && s.applied_index.unwrap_or(0) >= applied).then_some(())
        });
        caught_up.await.with_context(|| {
            format!("coordinator {id} did not catch up with the leader within {limit:?}")
        })
    }

    /// Polls `/health` of every server until all answer 200.
    pub async fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()?;
        let deadline = Instant::now() + limit;
        for server in &mut self.servers {
            let url = format!("{}/health", server.endpoint.url());
            // Answers `Some(Err)` at once when the server has exited.
            let answered = poll(deadline, async || {
                if let Some(Ok(Some(status))) = server.child.as_mut().map(|c| c.try_wait()) {
                    return Some(Err(anyhow!(
                        "{} exited during start ({status}); the end of {}:\n{}",
                        server.name(),
                        server.log.display(),
                        tail(&server.log, 15)
                    )));
                }
                let r = http.get(&url).send().await;
                r.is_ok_and(|r| r.status().is_success()).then_some(Ok(()))
            });
            answered.await.with_context(|| {
                let (name, log) = (server.name(), server.log.display());
                format!("{name} did not become healthy within {limit:?}; see {log}")
            })??;
        }
        Ok(())
    }

    /// Waits until every catalog and order replica is in the view, caught up, and (for
    /// backups) synced, so that any single failure can be survived.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for kind in [Kind::Catalog, Kind::Order] {
            let n = self.servers.iter().filter(|s| s.kind == kind).count();
            let joined = poll(deadline, async || {
                let KindReport { view, synced, .. } = self.view_doc(kind).await.ok()?;
                let backups = view?.backups.len();
                (backups + 1 == n && synced.len() == backups).then_some(())
            });
            joined.await.with_context(|| {
                format!("the {kind} replicas did not all join the view within {limit:?}")
            })?;
        }
        for s in self
            .servers
            .iter()
            .filter(|s| matches!(s.kind, Kind::Catalog | Kind::Order))
        {
            let serving = poll(deadline, async || {
                let status = self.replica_status(s).await?;
                status.serving_reads.then_some(())
            });
            serving.await.with_context(|| {
                let (name, log) = (s.name(), s.log.display());
                format!("{name} did not join a view within {limit:?}; see {log}")
            })?;
        }
        Ok(())
    }

    /// The primary of `kind` in the current view.
    pub async fn primary(&self, kind: Kind) -> anyhow::Result<u32> {
        self.view_doc(kind)
            .await?
            .view
            .map(|v| v.primary)
            .with_context(|| format!("no {kind} view yet"))
    }
}

/// How often the waits ask again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Asks `check` every [`POLL_EVERY`] until it answers `Some` (returned), or until
/// `deadline` has passed (`None`). It is asked at least once.
pub(super) async fn poll<T>(
    deadline: Instant,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(t) = check().await {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
