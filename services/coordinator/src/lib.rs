//! Coordinator service: the replicated control plane of the bookstore.
//!
//! A group of coordinators (3 by default, 1 for small runs) runs Raft (`openraft`) and
//! decides, for each replicated service (catalog, order), who is primary in which epoch,
//! who may take part, and hence which primary may answer reads. Any single coordinator
//! may fail: the others elect a new leader, which takes over the view services from the
//! committed state. Replicas and routers talk to whichever coordinator leads and follow
//! `421` answers to it (`bookstore_common::coordinators`).
//!
//! - [`state`]: the replicated state and the proposals that change it (pure);
//! - [`raft`]: openraft's type configuration, durable log, state machine and transport;
//! - [`authority`]: the leader's view services: decisions committed before anyone sees
//!   them, leases waited out after a leader change, answers confirmed by a quorum;
//! - [`confirm`]: batched leadership confirmation (ReadIndex);
//! - [`routes`](mod@routes): the HTTP API;
//! - [`cli`]: flags, and the entry point shared by the binary and `infra serve`.
//!
//! [`run`] serves on a bound listener until its shutdown future resolves, then stops Raft
//! and waits for every task it started.
pub mod authority;
pub mod cli;
pub mod confirm;
pub mod raft;
pub mod routes;
pub mod state;

use actix_web::middleware::from_fn;
use actix_web::web;
use authority::{Authority, AuthoritySettings};
use bookstore_common::auth::{
    require_admin_token, require_cluster_token, require_operator_token, Tokens,
};
use bookstore_common::client::Client;
use bookstore_common::metrics::{self, catch_up, Metrics};
use bookstore_common::{openapi, server};
use bookstore_replication_core::wire::{CoordinatorRole, CoordinatorStatus};
use openraft::{BasicNode, ServerState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use raft::network::{LeaderContact, Network};
use raft::{log_store::LogStore, state_machine::StateMachineStore, Raft};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

/// Everything a coordinator needs to run.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// This coordinator's id (its Raft node id).
    pub id: u64,
    /// Its own base URL, as the others reach it.
    pub url: String,
    /// The group a new cluster starts with: base URL by id (the cluster file's
    /// `coordinator` lines). Ignored once the data directory holds a log.
    pub initial: BTreeMap<u64, String>,
    /// Start empty and wait to be added (`POST /admin/coordinators/add`) instead of
    /// forming the initial group.
    pub join: bool,
    /// Each replicated kind and its initial replicas' URLs.
    pub kinds: Vec<(String, Vec<String>)>,
    /// Where a replica may be registered (`POST /admin/cluster/register`): these hosts
    /// (the cluster file's) and these networks. Anything else is refused, so the admin
    /// token cannot make an outside address a member.
    pub member_hosts: Vec<String>,
    pub member_cidrs: Vec<ipnet::IpNet>,
    /// Raft log, vote and snapshots.
    pub data_dir: PathBuf,
    pub tokens: Tokens,
    /// View-service tick (the replicas' read lease is counted in the same ticks).
    pub tick: Duration,
    /// Raft heartbeat interval; an election starts after 3-6 heartbeats of silence (plus
    /// openraft's leader lease, which is as long as the longest election timeout).
    pub heartbeat: Duration,
    /// MUTATION SWITCH (tests only): `false` lets a new leader declare replicas dead
    /// without waiting out the read leases earlier leaders granted.
    pub lease_wait: bool,
    pub workers: usize,
}

/// A running coordinator: its Raft and its authority over views.
pub struct Coordinator {
    id: u64,
    member_hosts: Vec<String>,
    member_cidrs: Vec<ipnet::IpNet>,
    authority: Authority,
    contact: Arc<LeaderContact>,
    log: LogStore,
}

impl Coordinator {
    /// May a replica be registered at `host`? One of the cluster file's hosts, or an
    /// address in a configured network.
    pub fn inside_cluster(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if self.member_hosts.iter().any(|h| h == bare) {
            return true;
        }
        bare.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| self.member_cidrs.iter().any(|n| n.contains(&ip)))
    }

    /// What this coordinator reports about itself.
    pub fn status(&self) -> CoordinatorStatus {
        let m = self.authority.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let role = match m.state {
            ServerState::Leader => CoordinatorRole::Leader,
            ServerState::Candidate => CoordinatorRole::Candidate,
            ServerState::Shutdown => CoordinatorRole::Shutdown,
            ServerState::Learner => CoordinatorRole::Learner,
            ServerState::Follower if !membership.voter_ids().any(|v| v == self.id) => {
                CoordinatorRole::Learner
            }
            ServerState::Follower => CoordinatorRole::Follower,
        };
        let contact = match role {
            CoordinatorRole::Leader => m.millis_since_quorum_ack,
            _ => self.contact.age().map(|d| d.as_millis() as u64),
        };
        CoordinatorStatus {
            id: self.id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            leader_url: m.current_leader.and_then(|l| self.authority.url_of(l)),
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index.or(self.log.bounds().0),
            leader_contact_age_ms: contact,
            voters: membership.voter_ids().collect(),
            members: membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            leading_for_ms: self.authority.leading_for().map(|d| d.as_millis() as u64),
        }
    }

    fn register_metrics(self: &Arc<Self>, metrics: &Metrics) {
        let term: Gauge<i64> = metrics.add("coordinator_term", "Raft term of this coordinator");
        let leader: Gauge<i64> = metrics.add(
            "coordinator_is_leader",
            "1 if this coordinator leads the group",
        );
        let applied: Gauge<i64> = metrics.add(
            "coordinator_applied_index",
            "Last Raft log index applied to this coordinator's state machine",
        );
        let contact: Gauge<f64, AtomicU64> = metrics.add(
            "coordinator_leader_contact_age_seconds",
            "Time since the last contact with the leader (leader: since a quorum acknowledged it)",
        );
        let epoch: Family<KindLabel, Gauge> =
            metrics.add("vs_epoch", "Epoch of the current view (leader only)");
        let changes: Family<KindLabel, Counter> =
            metrics.add("vs_view_changes", "View changes this leader decided");
        let failovers: Family<KindLabel, Counter> = metrics.add(
            "vs_failovers",
            "View changes that replaced a primary that left the view",
        );
        let age: Family<ReplicaLabels, Gauge<f64, AtomicU64>> = metrics.add(
            "vs_heartbeat_age_seconds",
            "Time since the replica last pinged the leader",
        );
        let replica_applied: Family<ReplicaLabels, Gauge> = metrics.add(
            "vs_applied_index",
            "Applied index the replica reported in its last ping",
        );
        let lag: Family<ReplicaLabels, Gauge> = metrics.add(
            "vs_lag_entries",
            "Primary's applied index minus the replica's (last pings)",
        );
        let me = Arc::downgrade(self);
        metrics.on_scrape(move || {
            let Some(me) = me.upgrade() else { return };
            let s = me.status();
            term.set(s.term as i64);
            leader.set(i64::from(s.role == CoordinatorRole::Leader));
            applied.set(s.applied_index.map_or(-1, |i| i as i64));
            contact.set(s.leader_contact_age_ms.map_or(-1.0, |a| a as f64 / 1000.0));
            for (kind, r) in me.authority.cached_reports() {
                let k = KindLabel { kind: kind.clone() };
                epoch
                    .get_or_create(&k)
                    .set(r.view.as_ref().map_or(0, |v| v.epoch as i64));
                catch_up(&changes.get_or_create(&k), r.view_changes);
                catch_up(&failovers.get_or_create(&k), r.failovers);
                let primary_applied = r
                    .view
                    .as_ref()
                    .and_then(|v| r.replicas.iter().find(|s| s.id == v.primary))
                    .map(|p| p.applied);
                for seen in &r.replicas {
                    let l = ReplicaLabels {
                        kind: kind.clone(),
                        replica: seen.id,
                    };
                    age.get_or_create(&l)
                        .set(seen.heartbeat_age_ms as f64 / 1000.0);
                    replica_applied.get_or_create(&l).set(seen.applied as i64);
                    if let Some(p) = primary_applied {
                        lag.get_or_create(&l)
                            .set(p.saturating_sub(seen.applied) as i64);
                    }
                }
            }
        });
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    kind: String,
    replica: u32,
}

/// The internal document (`GET /internal/openapi.json`, cluster token).
pub fn internal_openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes::InternalApi::openapi();
    doc.merge(raft::network::RaftApi::openapi());
    openapi::internal(doc, "bookstore coordinator internal API")
}

/// The admin document (`GET /openapi.json`): the membership routes (admin token).
pub fn admin_openapi() -> utoipa::openapi::OpenApi {
    openapi::finish(
        routes::AdminApi::openapi(),
        "bookstore coordinator admin API",
        openapi::PUBLIC_DOC_PATH,
        |path| {
            if path.starts_with("/admin/") {
                openapi::Access::Admin
            } else {
                openapi::Access::Public
            }
        },
    )
}

/// Every route of a coordinator (its app data is registered by [`run`]).
pub fn routes(cfg: &mut web::ServiceConfig) {
    let (internal, admin) = (internal_openapi(), admin_openapi());
    cfg.app_data(openapi::allowed_methods(&[&internal, &admin]));
    openapi::serve_doc(cfg, openapi::PUBLIC_DOC_PATH, &admin);
    cfg.route("/health", web::get().to(routes::health))
        .route("/ready", web::get().to(routes::ready))
        .service(
            web::scope("/vs")
                .wrap(from_fn(require_cluster_token))
                .route("/{kind}/ping", web::post().to(routes::ping))
                .route("/{kind}/view", web::get().to(routes::view)),
        )
        .service(
            web::scope("/raft")
                .wrap(from_fn(require_cluster_token))
                .configure(raft::network::routes),
        )
        .service(
            server::get("/coordinator/status", routes::status)
                .wrap(from_fn(require_operator_token)),
        )
        .service(
            web::scope("/admin")
                .wrap(from_fn(require_admin_token))
                .service(server::post("/cluster/register", routes::register))
                .service(server::post("/cluster/unregister", routes::unregister))
                .service(server::post("/coordinators/reserve", routes::reserve))
                .service(server::post("/coordinators/add", routes::add))
                .service(server::post("/coordinators/remove", routes::remove)),
        )
        .configure(metrics::routes)
        .service(
            web::scope("/internal")
                .wrap(from_fn(require_cluster_token))
                .configure(move |c| {
                    let path = openapi::INTERNAL_DOC_PATH.trim_start_matches("/internal");
                    openapi::serve_doc(c, path, &internal)
                }),
        )
        .default_service(web::to(server::not_found));
}

/// Why a coordinator could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Open(#[from] raft::OpenError),
    #[error("Raft settings: {0}")]
    Settings(Box<openraft::ConfigError>),
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn raft_config(c: &CoordinatorConfig) -> Result<openraft::Config, RunError> {
    let hb = c.heartbeat.as_millis().max(1) as u64;
    openraft::Config {
        cluster_name: "bookstore-coordinators".into(),
        heartbeat_interval: hb,
        election_timeout_min: hb * 3,
        election_timeout_max: hb * 6,
        // A snapshot every 1000 decisions; the log keeps 100 entries behind it for
        // followers that lag a little.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        ..openraft::Config::default()
    }
    .validate()
    .map_err(|e| RunError::Settings(Box::new(e)))
}

/// Serves a coordinator on `listener` until `shutdown` resolves; then stops Raft and
/// waits for every task it started.
pub async fn run(
    listener: TcpListener,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let log = LogStore::open(&config.data_dir)?;
    let sm = StateMachineStore::open(&config.data_dir)?;
    let client = Client::with_timeout(config.tokens.cluster(), Duration::from_secs(5));
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config(&config)?),
        Network::new(client),
        log.clone(),
        sm.clone(),
    )
    .await
    .map_err(|e| RunError::Raft(e.to_string()))?;
    if !config.join
        && config.initial.contains_key(&config.id)
        && !raft
            .is_initialized()
            .await
            .map_err(|e| RunError::Raft(e.to_string()))?
    {
        let members: BTreeMap<u64, BasicNode> = config
            .initial
            .iter()
            .map(|(id, url)| (*id, BasicNode { addr: url.clone() }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(id = config.id, group = ?config.initial, "formed the initial coordinator group")
            }
            Err(e) => tracing::info!(error = %e, "not initializing (already part of a group)"),
        }
    }
    let (confirmer, confirm_task) = Confirmer::start(raft.clone(), config.heartbeat * 4);
    let authority = Authority::new(
        AuthoritySettings {
            id: config.id,
            bootstrap: config.kinds.clone(),
            lease_wait: config.lease_wait,
            propose_timeout: config.heartbeat * 10,
        },
        raft.clone(),
        sm,
        confirmer,
    );
    if !config.lease_wait {
        tracing::warn!("UNSAFE: lease wait switched off (mutation switch for tests)");
    }
    let coordinator = Arc::new(Coordinator {
        id: config.id,
        member_hosts: config.member_hosts.clone(),
        member_cidrs: config.member_cidrs.clone(),
        authority,
        contact: Arc::new(LeaderContact::default()),
        log,
    });
    let metrics = web::Data::new(Metrics::new());
    coordinator.register_metrics(&metrics);
    let stop = CancellationToken::new();
    let ticker = {
        let c = coordinator.clone();
        let stop = stop.clone();
        let tick = config.tick;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => c.authority.tick().await,
                    _ = stop.cancelled() => break,
                }
            }
        })
    };
    let data = web::Data::from(coordinator.clone());
    let raft_data = web::Data::new(raft.clone());
    let contact = web::Data::from(coordinator.contact.clone());
    let tokens = web::Data::new(config.tokens.clone());
    tracing::info!(id = config.id, addr = %listener.local_addr()?, "coordinator serving");
    let served = server::serve(
        listener,
        config.workers,
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(data.clone())
                .app_data(raft_data.clone())
                .app_data(contact.clone())
                .app_data(metrics.clone())
                .app_data(tokens.clone());
            routes(cfg);
        },
        shutdown,
    )
    .await;
    stop.cancel();
    let _ = ticker.await;
    let _ = raft.shutdown().await;
    drop(coordinator);
    confirm_task.abort();
    let _ = confirm_task.await;
    Ok(served?)
}

use confirm::Confirmer;
