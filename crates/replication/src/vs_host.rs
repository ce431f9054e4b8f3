//! Hosts one [`ViewService`] per replicated kind (catalog, order) inside a process (the
//! frontend), persists each one's state to `vs-{kind}.json` in a data directory before
//! answering, ticks them, and answers pings over HTTP (`POST /vs/{kind}/ping`).
use crate::protocol::{Epoch, View};
use crate::viewservice::{Ping, ViewService, VsCommand, VsConfig, VsEvent, VsState};
use actix_web::{web, HttpResponse};
use bookstore_common::error::ErrorBody;
use bookstore_common::ApiError;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Slot {
    vs: ViewService,
    path: PathBuf,
    /// Epoch of the view last persisted, for `failovers`.
    changes: u64,
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
        let mut answer = None;
        for cmd in slot.vs.handle(event) {
            match cmd {
                VsCommand::Persist(state) => {
                    persist(&slot.path, &state)
                        .map_err(|e| format!("{}: {e}", slot.path.display()))?;
                    slot.changes += 1;
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

/// `GET /vs/{kind}/view` answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ViewAnswer {
    /// The current view (none before the first one is decided).
    pub view: Option<View>,
    /// Backups that hold every committed entry.
    pub synced: Vec<u32>,
}

/// `GET /vs/{kind}/view`: `{"view": {"epoch", "primary", "backups"}, "synced": [..]}`.
#[utoipa::path(get, path = "/vs/{kind}/view",
    params(("kind" = VsKind, Path, description = "The replicated service")),
    responses(
        (status = 200, body = ViewAnswer),
        (status = 404, description = "No view service for this kind here", body = ErrorBody),
    ))]
pub async fn view_route(
    host: web::Data<Arc<VsHost>>,
    kind: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (view, synced) = host
        .view_and_synced(&kind)
        .ok_or_else(|| ApiError::NotFound(format!("no view service for {kind:?}")))?;
    Ok(HttpResponse::Ok().json(ViewAnswer { view, synced }))
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
