//! Hosts one [`ViewService`] per replicated kind (catalog, order) inside a process (the
//! frontend), persists each one's state to `vs-{kind}.json` in a data directory before
//! answering, ticks them, and answers pings over HTTP (`POST /vs/{kind}/ping`).
//!
//! It also keeps what observability needs ([`KindReport`]): when each replica last
//! pinged and the applied index it reported, and how many view changes and failovers
//! (view changes that replaced a primary that left the view) it made.
//! `GET /vs/{kind}/view` answers it, and [`VsHost::register_metrics`] exports it to
//! `/metrics`.
use crate::protocol::{Epoch, View};
use crate::viewservice::{Ping, ViewService, VsCommand, VsConfig, VsEvent, VsState};
use actix_web::{web, HttpResponse};
use bookstore_common::metrics::Metrics;
use bookstore_common::ApiError;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the view service last heard from one replica.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaSeen {
    pub id: u32,
    /// Milliseconds since its last ping.
    pub heartbeat_age_ms: u64,
    /// The epoch it acted in and its applied index, as of that ping.
    pub epoch: Epoch,
    pub applied: u64,
}

/// The view service's account of one kind (`GET /vs/{kind}/view`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KindReport {
    pub view: Option<View>,
    pub synced: Vec<u32>,
    /// View changes (new epochs) decided since this process started.
    #[serde(default)]
    pub view_changes: u64,
    /// View changes that replaced a primary that left the view.
    #[serde(default)]
    pub failovers: u64,
    /// Every replica that pinged since this process started, by id.
    #[serde(default)]
    pub replicas: Vec<ReplicaSeen>,
}

struct Slot {
    vs: ViewService,
    path: PathBuf,
    /// Epoch of the view last persisted, for `failovers`.
    changes: u64,
    /// Last ping of each replica: when, and the epoch and applied index it reported.
    seen: BTreeMap<u32, (Instant, Epoch, u64)>,
    view_changes: u64,
    failovers: u64,
}

/// The view services of a cluster.
pub struct VsHost {
    slots: BTreeMap<String, Mutex<Slot>>,
}

fn persist(path: &Path, state: &VsState) -> std::io::Result<()> {
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
    /// Opens (or creates) the state of each `(kind, replicas)` under `dir`.
    pub fn open(dir: &Path, kinds: &[(&str, u32)], dead_ticks: u64) -> Result<VsHost, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut slots = BTreeMap::new();
        for (kind, replicas) in kinds {
            let config = VsConfig {
                replicas: *replicas,
                dead_ticks,
                startup_ticks: dead_ticks,
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

    /// Handles one ping; returns the view and `lead_from` for the pinger.
    pub fn ping(&self, kind: &str, ping: Ping) -> Result<(Option<View>, Epoch), ApiError> {
        let slot = self
            .slots
            .get(kind)
            .ok_or_else(|| ApiError::NotFound(format!("no view service for {kind:?}")))?;
        let mut slot = slot.lock();
        match Self::run(&mut slot, VsEvent::Ping(ping)) {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Ok((slot.vs.view().cloned(), Epoch::MAX)),
            Err(e) => Err(ApiError::Unavailable(format!(
                "view service cannot persist: {e}"
            ))),
        }
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
            synced: slot.vs.synced().iter().copied().collect(),
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
pub async fn ping_route(
    host: web::Data<Arc<VsHost>>,
    kind: web::Path<String>,
    body: bytes::Bytes,
) -> Result<HttpResponse, ApiError> {
    let ping: Ping = bincode::deserialize(&body)
        .map_err(|e| ApiError::BadRequest(format!("undecodable ping: {e}")))?;
    let answer = host.ping(&kind, ping)?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(bincode::serialize(&answer).expect("answer encodes")))
}

/// `GET /vs/{kind}/view`: `{"view": {"epoch", "primary", "backups"}, "synced": [..],
/// "view_changes", "failovers", "replicas": [..]}` (a [`KindReport`]).
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

/// Raises a counter to `value` (counters only go up; values owned elsewhere are copied
/// in at scrape time).
pub fn catch_up(counter: &Counter, value: u64) {
    let now = counter.get();
    if value > now {
        counter.inc_by(value - now);
    }
}
