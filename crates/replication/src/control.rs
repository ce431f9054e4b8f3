//! The routes every replicated service shares: `/health` (with role and epoch; `503`
//! with status `failed` once a disk failure stopped the replica), the seed's `/shutdown`
//! (a crash) and `/recover` (a restart from disk, the same code path as a process
//! restart), `/replication/status` and `/replication/msg`; [`PublicApi`] and
//! [`InternalApi`] document them (OpenAPI), and [`service_openapi`] adds them to a
//! service's own document; the replica's gauges on `/metrics` ([`register_metrics`]);
//! and the skeleton of a replicated service: what every replica starts with
//! ([`ReplicaConfig`]) and how it serves, stops, and ends when its disk fails
//! ([`serve`]); and the answer to a batch of writes ([`answer_batch`]).
//!
//! [`serve`]: fn@serve
use crate::node::{self, Node, NodeOptions, ReplicaRole, Safety, StateMachine, SubmitError};
use actix_web::{web, HttpResponse};
use bookstore_common::auth::Tokens;
use bookstore_common::config::{ClusterConfig, Kind};
use bookstore_common::error::ErrorBody;
use bookstore_common::idempotency::Retention;
use bookstore_common::metrics::Metrics;
use bookstore_common::oplog::OpLog;
use bookstore_common::params::Query;
use bookstore_common::server::{self, Limits};
use bookstore_common::timing::{Timing, SERVER_TIMING};
use bookstore_common::types::{BatchAnswer, BatchItem, Done, Health, Readiness};
use bookstore_common::ApiError;
use node::Status;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What every replica of a replicated service (catalog, order) starts with.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: u32,
    pub cluster: ClusterConfig,
    pub tokens: Tokens,
    /// Where `<kind><id>_log` goes; `None` disables it.
    pub output_dir: Option<PathBuf>,
    /// The replica's durable state (WAL, snapshots).
    pub data_dir: PathBuf,
    /// The base URL this replica serves at, sent with its pings (`None`: its listener's
    /// address, as [`serve`](fn@serve)'s caller finds it).
    pub url: Option<String>,
    /// Protocol tick (heartbeats every 2 ticks, failure after 10).
    pub tick: Duration,
    pub workers: usize,
    /// How long and how many idempotency keys are kept (the same on every replica).
    pub retention: Retention,
    /// The protocol's safety mechanisms (all on, but in mutation tests).
    pub safety: Safety,
}

impl ReplicaConfig {
    /// A replica of `kind` as its server's flags describe it, in `cluster`.
    pub fn from_args(
        kind: Kind,
        cluster: ClusterConfig,
        common: &bookstore_common::cli::ServiceArgs,
        replica: &bookstore_common::cli::ReplicaArgs,
    ) -> ReplicaConfig {
        ReplicaConfig {
            id: common.id,
            cluster,
            tokens: Tokens::new(&common.cluster_token, None),
            output_dir: Some(common.output_dir.clone()),
            data_dir: replica.data_dir(kind, common),
            url: None,
            tick: replica.tick(),
            workers: common.workers,
            retention: replica.retention(),
            safety: Safety {
                sync_ack: !replica.unsafe_no_sync_ack,
                fencing: !replica.unsafe_no_fencing,
            },
        }
    }

    /// The operation log `<kind><id>_log` under the output directory.
    pub fn oplog(&self, kind: Kind) -> std::io::Result<OpLog> {
        match &self.output_dir {
            Some(dir) => OpLog::open(&dir.join(format!("{kind}{}_log", self.id))),
            None => Ok(OpLog::disabled()),
        }
    }

    /// The options of this replica's node, a replica of `kind`.
    pub fn node_options(&self, kind: Kind) -> NodeOptions {
        let mut opts = NodeOptions::new(
            self.id,
            self.cluster.urls(kind),
            &kind.to_string(),
            self.cluster.urls(Kind::Coordinator),
            self.data_dir.clone(),
            self.tokens.cluster(),
        )
        .with_safety(self.safety);
        opts.tick = self.tick;
        if let Some(url) = &self.url {
            opts.url = url.clone();
        }
        opts
    }
}

/// Serves a replicated service on `listener`: the replica's routes data ([`Control`]),
/// `/metrics` with the replica's gauges, the tokens, and what `configure` adds (the
/// service's own data and routes). Until `shutdown`, or until the replica's disk fails;
/// then it stops the replica, waiting for every task it started, and answers an error if
/// the disk failed (the process exits non-zero, so that its supervisor restarts it from
/// its disk).
pub async fn serve<S: StateMachine, F>(
    listener: TcpListener,
    config: &ReplicaConfig,
    control: web::Data<Control<S>>,
    metrics: web::Data<Metrics>,
    configure: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    register_metrics(&control, &metrics);
    let tokens = web::Data::new(config.tokens.clone());
    let c = control.clone();
    let all = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(c.clone())
            .app_data(metrics.clone())
            .app_data(tokens.clone());
        configure(cfg);
    };
    let stop = control.until_failed(shutdown);
    let served = server::serve_with(listener, config.workers, Limits::replica(), all, stop).await;
    control.node.crash().await;
    control.exit(served)
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::NotPrimary { hint } => ApiError::NotPrimary { primary: hint },
            SubmitError::Retry => ApiError::Unavailable(
                "outcome unknown (primary changed); retry with the same Idempotency-Key".into(),
            ),
            SubmitError::Down => ApiError::Unavailable("replica is down".into()),
        }
    }
}

/// A replica of a service, as its routes see it.
pub struct Control<S: StateMachine> {
    pub service: &'static str,
    pub id: u32,
    pub node: Node<S>,
    pub log: OpLog,
    down: AtomicBool,
}

impl<S: StateMachine> Control<S> {
    pub fn new(service: &'static str, id: u32, node: Node<S>, log: OpLog) -> Control<S> {
        Control {
            service,
            id,
            node,
            log,
            down: AtomicBool::new(false),
        }
    }

    /// 503 while the replica is shut down.
    pub fn check_up(&self) -> Result<(), ApiError> {
        if self.down.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable(format!(
                "{} {} is shut down (POST /recover brings it back)",
                self.service, self.id
            )));
        }
        Ok(())
    }

    /// 421 naming the primary unless this replica is the primary.
    pub fn check_primary(&self) -> Result<(), ApiError> {
        let s = self.node.status();
        if s.role != ReplicaRole::Primary {
            return Err(ApiError::NotPrimary { primary: s.primary });
        }
        Ok(())
    }

    /// Resolves when `shutdown` does or the replica stops on its own (its disk failed),
    /// whichever is first: the server stops serving then.
    pub fn until_failed(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> impl std::future::Future<Output = ()> {
        let failed = self.node.failed();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = failed => {}
            }
        }
    }

    /// What a service's `run` returns once its server stopped: `served`, or an error
    /// naming the disk failure, so that the process exits non-zero and its supervisor
    /// (systemd's `Restart=on-failure`) starts it again, from its disk.
    pub fn exit(&self, served: std::io::Result<()>) -> std::io::Result<()> {
        match self.node.failure() {
            Some(e) => Err(std::io::Error::other(format!(
                "{} {}: disk failure ({e}); exiting so that the replica restarts from its disk",
                self.service, self.id
            ))),
            None => served,
        }
    }

    /// Reads the state machine if this replica is caught up, else 503.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> Result<R, ApiError> {
        self.node.read(f).ok_or_else(|| {
            ApiError::Unavailable(format!(
                "{} {} is not serving reads: it is catching up, or, as primary, has had no \
                 answer from the view service for a read lease",
                self.service, self.id
            ))
        })
    }
}

/// Liveness, role and epoch (503 while shut down, or after a disk failure).
#[utoipa::path(get, path = "/health", responses(
    (status = 200, body = Health),
    (status = 503, description = "Shut down by `POST /shutdown` (`down`), or stopped by a disk failure (`failed`)", body = Health),
))]
async fn health<S: StateMachine>(ctx: web::Data<Control<S>>) -> HttpResponse {
    let failed = ctx.node.failure().is_some();
    let down = ctx.down.load(Ordering::Acquire) || failed;
    let status = ctx.node.status();
    let body = Health {
        status: if failed {
            "failed"
        } else if down {
            "down"
        } else {
            "ok"
        }
        .into(),
        service: ctx.service.into(),
        id: ctx.id,
        role: Some(if down {
            "down".into()
        } else {
            status.role.to_string()
        }),
        epoch: Some(status.epoch),
    };
    if down {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

/// The replica's view of the protocol.
#[utoipa::path(get, path = "/replication/status", responses((status = 200, body = Status)))]
async fn status<S: StateMachine>(ctx: web::Data<Control<S>>) -> HttpResponse {
    HttpResponse::Ok().json(ctx.node.status())
}

/// The seed's crash switch: the replica stops serving until `POST /recover`.
#[utoipa::path(post, path = "/shutdown", responses((status = 200, body = Done)))]
async fn shutdown<S: StateMachine>(ctx: web::Data<Control<S>>) -> HttpResponse {
    ctx.down.store(true, Ordering::Release);
    ctx.node.crash().await;
    ctx.log.record("shutdown".into());
    tracing::warn!(
        service = ctx.service,
        id = ctx.id,
        "shut down by request (as a crash)"
    );
    HttpResponse::Ok().json(Done {
        result: "shut down".into(),
    })
}

/// Restarts the replica from its disk.
#[utoipa::path(post, path = "/recover", responses((status = 200, body = Done)))]
async fn recover<S: StateMachine>(ctx: web::Data<Control<S>>) -> Result<HttpResponse, ApiError> {
    ctx.node
        .restart()
        .await
        .map_err(|e| ApiError::Unavailable(format!("restart failed: {e}")))?;
    ctx.down.store(false, Ordering::Release);
    ctx.log.record("recover".into());
    tracing::info!(
        service = ctx.service,
        id = ctx.id,
        "recovering from disk by request"
    );
    Ok(HttpResponse::Ok().json(Done {
        result: "recovering".into(),
    }))
}

/// Runs a batch of requests (`work`: one result and its timing per request) as one task
/// on the replica's runtime ([`Node::run_near`]) and answers it: one [`BatchItem`] per
/// request, each with its own `Server-Timing`, and the batch's own (`t`) in the header;
/// `own` names the service in both.
pub async fn answer_batch<S, T, W>(
    node: &Node<S>,
    own: &'static str,
    t: Timing,
    work: W,
) -> Result<HttpResponse, ApiError>
where
    S: StateMachine,
    T: serde::Serialize + Send + 'static,
    W: std::future::Future<Output = Vec<(Result<T, ApiError>, Timing)>> + Send + 'static,
{
    let answers = node
        .run_near(work)
        .await
        .ok_or_else(|| ApiError::Unavailable(format!("the {own} batch's task failed")))?;
    let results: Vec<BatchItem<T>> = answers
        .into_iter()
        .map(|(r, timing)| BatchItem::new(r, Some(timing.header(own))))
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((SERVER_TIMING, t.header(own)))
        .json(BatchAnswer { results }))
}

/// Messages from a peer replica (bincode `Vec<Msg>`).
#[utoipa::path(post, path = "/replication/msg",
    params(crate::transfer::MsgQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "bincode-encoded messages"),
    responses(
        (status = 200, description = "Delivered"),
        (status = 400, description = "Undecodable messages or bad `from`", body = ErrorBody),
    ))]
async fn receive<S: StateMachine>(
    ctx: web::Data<Control<S>>,
    Query(q): Query<crate::transfer::MsgQuery>,
    body: bytes::Bytes,
) -> Result<HttpResponse, ApiError> {
    node::receive(&ctx.node, &q, &body)?;
    Ok(HttpResponse::Ok().finish())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// Exports the replica's state to `metrics`, read at each scrape:
/// `bookstore_replication_epoch`, `bookstore_replication_role{role}` (1 for the current
/// role of primary, backup, idle, down; 0 for the others), `..._commit_index`,
/// `..._applied_index`, `..._lag_entries` (commit minus applied, as this replica knows
/// the commit index), `..._serving_reads` and `bookstore_replication_view_changes_total`
/// (views this replica moved to: failovers and membership changes it observed), and the
/// operation log's dropped lines.
pub fn register_metrics<S: StateMachine>(control: &web::Data<Control<S>>, metrics: &Metrics) {
    control.log.register_metrics(metrics);
    let epoch: Gauge<i64> =
        metrics.add("replication_epoch", "Epoch of the view the replica acts in");
    let role: Family<RoleLabel, Gauge> =
        metrics.add("replication_role", "1 for the replica's current role");
    let commit: Gauge<i64> = metrics.add(
        "replication_commit_index",
        "Highest log index known committed",
    );
    let applied: Gauge<i64> = metrics.add("replication_applied_index", "Highest log index applied");
    let lag: Gauge<i64> = metrics.add(
        "replication_lag_entries",
        "Committed entries not applied here yet",
    );
    let serving: Gauge<i64> = metrics.add(
        "replication_serving_reads",
        "1 when the replica is caught up and serves reads",
    );
    let changes: Counter<u64> = metrics.add(
        "replication_view_changes",
        "Views (epochs) the replica moved to",
    );
    let control = control.clone();
    metrics.on_scrape(move || {
        let s = control.node.status();
        let down = control.down.load(Ordering::Acquire) || !s.up;
        let current = if down { "down" } else { s.role.as_str() };
        for r in ["primary", "backup", "idle", "down"] {
            role.get_or_create(&RoleLabel { role: r })
                .set(i64::from(r == current));
        }
        epoch.set(s.epoch as i64);
        commit.set(s.commit as i64);
        applied.set(s.applied as i64);
        lag.set(s.commit.saturating_sub(s.applied) as i64);
        serving.set(i64::from(s.serving_reads && !down));
        bookstore_common::metrics::catch_up(&changes, s.view_changes);
    });
}

/// Readiness: 200 once the replica is in a view and caught up (it can serve), else 503
/// naming what it waits for. Lets a replica start before the view service or its peers,
/// and load balancers and `infra` wait for it.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, body = Readiness),
    (status = 503, description = "Not in a view yet, catching up, or shut down", body = Readiness),
))]
async fn ready<S: StateMachine>(ctx: web::Data<Control<S>>) -> HttpResponse {
    let status = ctx.node.status();
    let waiting = if let Some(e) = ctx.node.failure() {
        Some(format!("the replica's disk failed ({e}); it stopped"))
    } else if ctx.down.load(Ordering::Acquire) || !status.up {
        Some("the replica is shut down".to_string())
    } else if status.epoch == 0 {
        Some("no view yet: waiting for the view service (frontend 0)".to_string())
    } else if !status.serving_reads {
        Some(format!(
            "catching up in epoch {} (applied {}, commit {})",
            status.epoch, status.applied, status.commit
        ))
    } else {
        None
    };
    Readiness::answer(waiting)
}

/// The public routes, for a replicated service's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(health, ready))]
pub struct PublicApi;

/// The internal routes, for a replicated service's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(status, shutdown, recover, receive))]
pub struct InternalApi;

/// The OpenAPI document of a replicated service, titled `title`: its own routes `doc`
/// with [`PublicApi`]'s and [`InternalApi`]'s (`GET /internal/openapi.json`).
pub fn service_openapi(mut doc: utoipa::openapi::OpenApi, title: &str) -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    doc.merge(PublicApi::openapi());
    doc.merge(InternalApi::openapi());
    bookstore_common::openapi::internal(doc, title)
}

/// `GET /health` (liveness) and `GET /ready` (readiness), both public.
pub fn public_routes<S: StateMachine>(cfg: &mut web::ServiceConfig) {
    // Resources (not `cfg.route`): another method gets 405, not the token scope's 401.
    cfg.service(web::resource("/health").get(health::<S>))
        .service(web::resource("/ready").get(ready::<S>));
}

/// The internal routes; register inside the scope that checks the cluster token.
pub fn internal_routes<S: StateMachine>(cfg: &mut web::ServiceConfig) {
    cfg.route("/shutdown", web::post().to(shutdown::<S>))
        .route("/recover", web::post().to(recover::<S>))
        .route("/replication/msg", web::post().to(receive::<S>))
        .route("/replication/status", web::get().to(status::<S>));
}
