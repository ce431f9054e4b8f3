//! Hosts one [`ViewService`] per replicated kind (catalog, order) inside a process (the
//! frontend), persists each one's state to `vs-{kind}.json` in a data directory before
//! answering, ticks them, and answers pings over HTTP (`POST /vs/{kind}/ping`).
//!
//! It also keeps each kind's **member table** (replica id -> base URL, in
//! `members-{kind}.json`): it starts as the cluster file's replicas, grows with
//! [`VsHost::register`] (`POST /cluster/register`, scale out) and shrinks with
//! [`VsHost::unregister`] (`POST /cluster/unregister`, scale in). Ids are never reused.
//! Pings from a replica that is not a member are refused (410) and never reach the view
//! service, so a retired replica is dropped from the view like a dead one. Every ping
//! answer and `GET /vs/{kind}/view` carry the table, so replicas and routers learn about
//! new peers without a restart.
//!
//! It also keeps what observability needs ([`KindReport`]): when each replica last
//! pinged and the applied index it reported, and how many view changes and failovers
//! (view changes that replaced a primary that left the view) it made.
//! `GET /vs/{kind}/view` answers it, and [`VsHost::register_metrics`] exports it to
//! `/metrics`.
use crate::protocol::{Epoch, View};
use crate::viewservice::{Ping, ViewService, VsCommand, VsConfig, VsEvent, VsState};
use actix_web::{web, HttpResponse};
use bookstore_common::error::ErrorBody;
use bookstore_common::metrics::{catch_up, Metrics};
use bookstore_common::ApiError;
pub use bookstore_replication_core::wire::{KindReport, Members, PingAnswer, ReplicaSeen};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Slot {
    vs: ViewService,
    path: PathBuf,
    /// Epoch of the view last persisted, for `failovers`.
    changes: u64,
    members: Members,
    members_path: PathBuf,
    /// Last ping of each replica: when, and the epoch and applied index it reported.
    seen: BTreeMap<u32, (Instant, Epoch, u64)>,
    view_changes: u64,
    failovers: u64,
}

pub use bookstore_replication_core::lease::DEAD_TICKS;

/// The view services of a cluster.
pub struct VsHost {
    slots: BTreeMap<String, Mutex<Slot>>,
}

fn persist<T: Serialize>(path: &Path, state: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl VsHost {
    /// Opens (or creates) the state of each `(kind, replica URLs)` under `dir`. The URLs
    /// (by id) are the initial member table; a persisted table takes precedence. A
    /// replica is dead after [`DEAD_TICKS`] silent ticks: fixed, because the primaries'
    /// read leases are derived from it.
    pub fn open(dir: &Path, kinds: &[(&str, Vec<String>)]) -> Result<VsHost, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut slots = BTreeMap::new();
        for (kind, urls) in kinds {
            let config = VsConfig {
                replicas: urls.len() as u32,
                dead_ticks: DEAD_TICKS,
                startup_ticks: DEAD_TICKS,
            };
            let members_path = dir.join(format!("members-{kind}.json"));
            let members = match std::fs::read(&members_path) {
                Ok(bytes) => serde_json::from_slice::<Members>(&bytes)
                    .map_err(|e| format!("{}: {e}", members_path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let m = Members::initial(urls);
                    persist(&members_path, &m)
                        .map_err(|e| format!("{}: {e}", members_path.display()))?;
                    m
                }
                Err(e) => return Err(format!("{}: {e}", members_path.display())),
            };
            let path = dir.join(format!("vs-{kind}.json"));
            let vs = match std::fs::read(&path) {
                Ok(bytes) => {
                    let state: VsState = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    ViewService::recover(config, state)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => ViewService::new(config),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            slots.insert(
                kind.to_string(),
                Mutex::new(Slot {
                    vs,
                    path,
                    changes: 0,
                    members,
                    members_path,
                    seen: BTreeMap::new(),
                    view_changes: 0,
                    failovers: 0,
                }),
            );
        }
        Ok(VsHost { slots })
    }

    fn run(slot: &mut Slot, event: VsEvent) -> Result<Option<(Option<View>, Epoch)>, String> {
        let pinger = match &event {
            VsEvent::Ping(p) => Some(p.from),
            VsEvent::Tick => None,
        };
        if let VsEvent::Ping(p) = &event {
            slot.seen
                .insert(p.from, (Instant::now(), p.epoch, p.applied));
        }
        let before = slot.vs.view().map(|v| (v.epoch, v.primary));
        let mut answer = None;
        for cmd in slot.vs.handle(event) {
            match cmd {
                VsCommand::Persist(state) => {
                    persist(&slot.path, &state)
                        .map_err(|e| format!("{}: {e}", slot.path.display()))?;
                    slot.changes += 1;
                    if let Some(v) = &state.view {
                        if Some(v.epoch) != before.map(|b| b.0) {
                            slot.view_changes += 1;
                            // A failover replaces a primary that left the view (a handover
                            // to a lower-id synced backup keeps the old one as a backup).
                            if before.is_some_and(|(_, p)| p != v.primary && !v.contains(p)) {
                                slot.failovers += 1;
                            }
                        }
                    }
                    tracing::info!(view = ?state.view, synced = ?state.synced, "view service state changed");
                }
                VsCommand::Reply {
                    to,
                    view,
                    lead_from,
                } if Some(to) == pinger => answer = Some((view, lead_from)),
                VsCommand::Reply { .. } => {}
            }
        }
        Ok(answer)
    }

    /// A host with no view service (processes that do not host one).
    pub fn empty() -> VsHost {
        VsHost {
            slots: BTreeMap::new(),
        }
    }

    fn slot(&self, kind: &str) -> Result<&Mutex<Slot>, ApiError> {
        self.slots
            .get(kind)
            .ok_or_else(|| ApiError::NotFound(format!("no view service for {kind:?}")))
    }

    /// Handles one ping; returns the view, `lead_from` and the member table. A ping from a
    /// replica that is not a member gets [`ApiError::Gone`].
    pub fn ping(&self, kind: &str, ping: Ping) -> Result<PingAnswer, ApiError> {
        let mut slot = self.slot(kind)?.lock();
        if !slot.members.urls.contains_key(&ping.from) {
            return Err(ApiError::Gone(format!(
                "{kind} {} is not a member of the cluster (never registered, or retired)",
                ping.from
            )));
        }
        let members = slot.members.urls.clone();
        match Self::run(&mut slot, VsEvent::Ping(ping)) {
            Ok(Some((view, lead_from))) => Ok(PingAnswer {
                view,
                lead_from,
                members,
            }),
            Ok(None) => Ok(PingAnswer {
                view: slot.vs.view().cloned(),
                lead_from: Epoch::MAX,
                members,
            }),
            Err(e) => Err(ApiError::Unavailable(format!(
                "view service cannot persist: {e}"
            ))),
        }
    }

    /// Whether the primary of `kind`'s current view has acknowledged it.
    pub fn acked(&self, kind: &str) -> bool {
        self.slots.get(kind).is_some_and(|s| s.lock().vs.acked())
    }

    /// The member table of `kind`.
    pub fn members(&self, kind: &str) -> Option<BTreeMap<u32, String>> {
        Some(self.slots.get(kind)?.lock().members.urls.clone())
    }

    /// Adds a replica at `url` to `kind`; returns its new id. Registering a URL that is
    /// already a member returns that member's id (so a retried call is harmless).
    pub fn register(&self, kind: &str, url: &str) -> Result<u32, ApiError> {
        let mut slot = self.slot(kind)?.lock();
        if let Some((id, _)) = slot.members.urls.iter().find(|(_, u)| *u == url) {
            return Ok(*id);
        }
        let mut next = slot.members.clone();
        let id = next.next_id;
        next.urls.insert(id, url.to_string());
        next.next_id += 1;
        persist(&slot.members_path, &next)
            .map_err(|e| ApiError::Unavailable(format!("cannot persist the member table: {e}")))?;
        slot.members = next;
        tracing::info!(kind, id, url, "replica registered");
        Ok(id)
    }

    /// Retires replica `id` of `kind`. Refused (409) when no member would be left that
    /// holds every committed write (the primary or a synced backup), which would lose
    /// acknowledged writes or leave the kind unavailable for good.
    pub fn unregister(&self, kind: &str, id: u32) -> Result<(), ApiError> {
        let mut slot = self.slot(kind)?.lock();
        if !slot.members.urls.contains_key(&id) {
            return Err(ApiError::NotFound(format!("{kind} {id} is not a member")));
        }
        if slot.vs.view().is_some() && !slot.vs.acked() {
            // Retiring the primary of a view it has not acknowledged could leave the view
            // service waiting for that acknowledgement forever.
            return Err(ApiError::Unavailable(format!(
                "the {kind} view is changing (not yet acknowledged by its primary); retry shortly"
            )));
        }
        let mut holders: Vec<u32> = slot.vs.synced().iter().copied().collect();
        if let Some(v) = slot.vs.view() {
            holders.push(v.primary);
        }
        let others_hold = holders
            .iter()
            .any(|h| *h != id && slot.members.urls.contains_key(h));
        if !others_hold {
            return Err(ApiError::Conflict(format!(
                "{kind} {id} cannot be retired: no other member holds every committed write \
                 (add a replica and wait until it is synced first)"
            )));
        }
        let mut next = slot.members.clone();
        next.urls.remove(&id);
        persist(&slot.members_path, &next)
            .map_err(|e| ApiError::Unavailable(format!("cannot persist the member table: {e}")))?;
        slot.members = next;
        tracing::info!(kind, id, "replica retired");
        Ok(())
    }

    /// The current view of `kind`.
    pub fn view(&self, kind: &str) -> Option<View> {
        self.slots
            .get(kind)
            .and_then(|s| s.lock().vs.view().cloned())
    }

    /// The current view of `kind` and its synced backups (those a failover may promote).
    pub fn view_and_synced(&self, kind: &str) -> Option<(Option<View>, Vec<u32>)> {
        let slot = self.slots.get(kind)?.lock();
        Some((
            slot.vs.view().cloned(),
            slot.vs.synced().iter().copied().collect(),
        ))
    }

    /// The kinds this host serves.
    pub fn kinds(&self) -> Vec<String> {
        self.slots.keys().cloned().collect()
    }

    /// The view, synced set, counters and last pings of `kind`.
    pub fn report(&self, kind: &str) -> Option<KindReport> {
        let slot = self.slots.get(kind)?.lock();
        Some(KindReport {
            view: slot.vs.view().cloned(),
            acked: slot.vs.acked(),
            synced: slot.vs.synced().iter().copied().collect(),
            members: slot.members.urls.clone(),
            view_changes: slot.view_changes,
            failovers: slot.failovers,
            replicas: slot
                .seen
                .iter()
                .map(|(id, (at, epoch, applied))| ReplicaSeen {
                    id: *id,
                    heartbeat_age_ms: at.elapsed().as_millis() as u64,
                    epoch: *epoch,
                    applied: *applied,
                })
                .collect(),
        })
    }

    /// Exports the views to `metrics`: `bookstore_vs_epoch{kind}`,
    /// `bookstore_vs_view_changes_total{kind}`, `bookstore_vs_failovers_total{kind}`,
    /// and per replica `bookstore_vs_heartbeat_age_seconds{kind,replica}`,
    /// `bookstore_vs_applied_index{kind,replica}` and `bookstore_vs_lag_entries{kind,replica}`
    /// (the primary's applied index minus the replica's, as of their last pings).
    pub fn register_metrics(self: &Arc<Self>, metrics: &Metrics) {
        let epoch = Family::<KindLabel, Gauge>::default();
        let changes = Family::<KindLabel, Counter>::default();
        let failovers = Family::<KindLabel, Counter>::default();
        let age = Family::<ReplicaLabels, Gauge<f64, AtomicU64>>::default();
        let applied = Family::<ReplicaLabels, Gauge>::default();
        let lag = Family::<ReplicaLabels, Gauge>::default();
        metrics.register("vs_epoch", "Epoch of the current view", epoch.clone());
        metrics.register(
            "vs_view_changes",
            "View changes decided by the view service",
            changes.clone(),
        );
        metrics.register(
            "vs_failovers",
            "View changes that replaced a primary that left the view",
            failovers.clone(),
        );
        metrics.register(
            "vs_heartbeat_age_seconds",
            "Time since the replica last pinged the view service",
            age.clone(),
        );
        metrics.register(
            "vs_applied_index",
            "Applied index the replica reported in its last ping",
            applied.clone(),
        );
        metrics.register(
            "vs_lag_entries",
            "Primary's applied index minus the replica's (last pings)",
            lag.clone(),
        );
        let host = Arc::downgrade(self);
        metrics.on_scrape(move || {
            let Some(host) = host.upgrade() else { return };
            for kind in host.kinds() {
                let Some(r) = host.report(&kind) else {
                    continue;
                };
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
                for s in &r.replicas {
                    let l = ReplicaLabels {
                        kind: kind.clone(),
                        replica: s.id,
                    };
                    age.get_or_create(&l)
                        .set(s.heartbeat_age_ms as f64 / 1000.0);
                    applied.get_or_create(&l).set(s.applied as i64);
                    if let Some(p) = primary_applied {
                        lag.get_or_create(&l)
                            .set(p.saturating_sub(s.applied) as i64);
                    }
                }
            }
        });
    }

    /// One tick for every view service.
    pub fn tick(&self) {
        for slot in self.slots.values() {
            if let Err(e) = Self::run(&mut slot.lock(), VsEvent::Tick) {
                tracing::error!(error = %e, "view service cannot persist");
            }
        }
    }

    /// Ticks every `tick` until the host is dropped.
    pub fn spawn_ticker(self: &Arc<Self>, tick: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                match weak.upgrade() {
                    Some(h) => h.tick(),
                    None => break,
                }
            }
        });
    }
}

/// `POST /vs/{kind}/ping`: bincode [`Ping`] in, bincode `(Option<View>, Epoch)` out.
#[utoipa::path(post, path = "/vs/{kind}/ping",
    params(("kind" = VsKind, Path, description = "The replicated service")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "A bincode-encoded ping"),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>,
            description = "bincode (Option<View>, lead_from epoch)"),
        (status = 400, description = "Undecodable ping", body = ErrorBody),
        (status = 404, description = "No view service for this kind here", body = ErrorBody),
    ))]
pub async fn ping_route(
    host: web::Data<Arc<VsHost>>,
    kind: web::Path<String>,
    body: bytes::Bytes,
) -> Result<HttpResponse, ApiError> {
    let ping: Ping = crate::protocol::decode(&body)
        .map_err(|e| ApiError::BadRequest(format!("undecodable ping: {e}")))?;
    let answer = host.ping(&kind, ping)?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(bincode::serialize(&answer).expect("answer encodes")))
}

/// `GET /vs/{kind}/view`: `{"view": {"epoch", "primary", "backups"}, "acked", "synced":
/// [..], "members": {"0": "http://..."}, "view_changes", "failovers", "replicas": [..]}`
/// (a [`KindReport`]).
#[utoipa::path(get, path = "/vs/{kind}/view",
    params(("kind" = VsKind, Path, description = "The replicated service")),
    responses(
        (status = 200, body = KindReport),
        (status = 404, description = "No view service for this kind here", body = ErrorBody),
    ))]
pub async fn view_route(
    host: web::Data<Arc<VsHost>>,
    kind: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let report = host
        .report(&kind)
        .ok_or_else(|| ApiError::NotFound(format!("no view service for {kind:?}")))?;
    Ok(HttpResponse::Ok().json(report))
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

/// Query of `POST /admin/cluster/register`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RegisterQuery {
    /// catalog or order.
    #[param(value_type = VsKind)]
    pub kind: String,
    /// The new replica's base URL, `http://host:port`.
    pub url: String,
}

/// Query of `POST /admin/cluster/unregister`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UnregisterQuery {
    /// catalog or order.
    #[param(value_type = VsKind)]
    pub kind: String,
    /// The replica's id.
    pub id: u32,
}

/// Answer of `POST /admin/cluster/register` and `/unregister`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberChange {
    pub kind: String,
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

fn check_kind(host: &VsHost, kind: &str) -> Result<(), ApiError> {
    if host.slots.contains_key(kind) {
        return Ok(());
    }
    if host.slots.is_empty() {
        return Err(ApiError::NotFound(
            "this frontend does not host the view service (frontend 0 does)".into(),
        ));
    }
    Err(ApiError::BadRequest(format!(
        "kind must be one of {:?}, not {kind:?}",
        host.slots.keys().collect::<Vec<_>>()
    )))
}

/// Scale out: adds a replica to `kind`'s member table; answers its new id. Start the
/// replica with `--id <id> --listen host:port` afterwards (`infra local add` does both).
#[utoipa::path(post, path = "/admin/cluster/register", params(RegisterQuery),
    responses(
        (status = 200, body = MemberChange),
        (status = 400, description = "Bad kind or URL", body = ErrorBody),
        (status = 404, description = "This frontend does not host the view service", body = ErrorBody),
    ))]
pub async fn register_route(
    host: web::Data<Arc<VsHost>>,
    q: web::Query<RegisterQuery>,
) -> Result<HttpResponse, ApiError> {
    check_kind(&host, &q.kind)?;
    let url = q.url.trim_end_matches('/');
    let parsed = url::Url::parse(url)
        .map_err(|e| ApiError::BadRequest(format!("url {url:?} is not a URL: {e}")))?;
    if parsed.scheme() != "http" || parsed.host_str().is_none() || parsed.port().is_none() {
        return Err(ApiError::BadRequest(format!(
            "url must look like http://host:port, not {url:?}"
        )));
    }
    let id = host.register(&q.kind, url)?;
    Ok(HttpResponse::Ok().json(MemberChange {
        kind: q.kind.clone(),
        id,
        url: Some(url.to_string()),
        result: None,
    }))
}

/// Scale in: retires a replica; the view service then drops it like a dead one.
#[utoipa::path(post, path = "/admin/cluster/unregister", params(UnregisterQuery),
    responses(
        (status = 200, body = MemberChange),
        (status = 400, description = "Bad kind", body = ErrorBody),
        (status = 404, description = "No such member, or no view service here", body = ErrorBody),
        (status = 409, description = "No other member holds every committed write", body = ErrorBody),
        (status = 503, description = "A view change is in progress; retry shortly", body = ErrorBody),
    ))]
pub async fn unregister_route(
    host: web::Data<Arc<VsHost>>,
    q: web::Query<UnregisterQuery>,
) -> Result<HttpResponse, ApiError> {
    check_kind(&host, &q.kind)?;
    host.unregister(&q.kind, q.id)?;
    Ok(HttpResponse::Ok().json(MemberChange {
        kind: q.kind.clone(),
        id: q.id,
        url: None,
        result: Some("retired".into()),
    }))
}

/// The kinds of replicated service with a view service (documentation of `{kind}`).
#[derive(Debug, Clone, Copy, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
enum VsKind {
    Catalog,
    Order,
}

/// The view-service routes, for the OpenAPI document of the process hosting them.
#[derive(utoipa::OpenApi)]
#[openapi(paths(ping_route, view_route), components(schemas(VsKind)))]
pub struct VsApi;

/// The membership routes (admin token), for the frontend's public document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(register_route, unregister_route), components(schemas(VsKind)))]
pub struct MembershipApi;
