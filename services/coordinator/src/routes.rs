//! The coordinator's HTTP routes:
//!
//! - `POST /vs/{kind}/ping`, `GET /vs/{kind}/view` (cluster token): the view services,
//!   answered by the leader with authority, `421 {"leader": url}` elsewhere;
//! - `POST /admin/cluster/register|unregister` (admin token): the replicas' member tables;
//! - `POST /admin/coordinators/reserve|add|remove` (admin token): the group's own
//!   membership, through openraft's joint consensus;
//! - `GET /coordinator/status` (cluster or admin token): role, term, leader, indexes;
//! - `/raft/*` (cluster token): the Raft transport ([`crate::raft::network`]);
//! - `GET /health`, `GET /ready` (public), `GET /metrics` (cluster or admin token).
use crate::authority::{Authority, AuthorityError};
use crate::Coordinator;
use actix_web::{web, HttpResponse};
use bookstore_common::error::ErrorBody;
use bookstore_common::openapi::answers::{
    BadKind, NoSuchMember, NoSuchService, NotLeader, SoleHolder,
};
use bookstore_common::params::Query;
use bookstore_common::types::{
    CoordinatorAddQuery, CoordinatorChange, CoordinatorRemoveQuery, Health, MemberChange,
    Readiness, RegisterQuery, UnregisterQuery,
};
use bookstore_common::ApiError;
use bookstore_replication_core::wire::{CoordinatorStatus, KindReport, PingRequest};
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use std::collections::BTreeSet;
use std::time::Instant;

/// The replicated services (documentation of `{kind}`).
#[derive(Debug, Clone, Copy, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
enum VsKind {
    Catalog,
    Order,
}

/// Liveness, with this coordinator's role and term.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub async fn health(c: web::Data<Coordinator>) -> HttpResponse {
    let s = c.status();
    let role = serde_json::to_value(s.role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string));
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        service: "coordinator".into(),
        id: s.id as u32,
        role,
        epoch: Some(s.term),
    })
}

/// Ready once this coordinator knows a leader (itself or another).
#[utoipa::path(get, path = "/ready",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(c: web::Data<Coordinator>) -> HttpResponse {
    let leader = c.authority.raft().metrics().borrow().current_leader;
    Readiness::answer(match leader {
        Some(_) => None,
        None => Some("a coordinator leader (election in progress)".into()),
    })
}

/// A replica's ping: bincode `Ping` in, bincode `PingAnswer` out.
#[utoipa::path(post, path = "/vs/{kind}/ping",
    params(("kind" = VsKind, Path, description = "The replicated service")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "A bincode-encoded PingRequest: the ping and the replica's base URL"),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>,
            description = "bincode PingAnswer: view, lead_from, members, coordinators"),
        (status = 400, description = "Undecodable ping", body = ErrorBody),
        (status = 410, description = "The pinging replica is not a member", body = ErrorBody),
        NoSuchService, NotLeader,
    ))]
pub async fn ping(
    c: web::Data<Coordinator>,
    kind: web::Path<String>,
    body: bytes::Bytes,
) -> Result<HttpResponse, ApiError> {
    let received = Instant::now();
    let request: PingRequest = bookstore_replication_core::protocol::decode(&body)
        .map_err(|e| ApiError::BadRequest(format!("undecodable ping: {e}")))?;
    let answer = c.authority.ping(&kind, request, received).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(bincode::serialize(&answer).expect("answers encode")))
}

/// Query of `GET /vs/{kind}/view`: a long poll for routers.
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ViewQuery {
    /// The version the caller knows: the answer waits until the kind changes (or
    /// `wait_ms` passes).
    pub version: Option<u64>,
    /// How long to wait for a change, in milliseconds (at most 5000).
    #[param(maximum = 5000)]
    pub wait_ms: Option<u64>,
}

/// The leader's account of one replicated service: view, synced backups, members, the
/// last ping of each replica, which coordinator decided the view.
#[utoipa::path(get, path = "/vs/{kind}/view",
    params(("kind" = VsKind, Path, description = "The replicated service"), ViewQuery),
    responses(
        (status = 200, body = KindReport),
        (status = 400, description = "Malformed version or wait_ms", body = ErrorBody),
        NoSuchService, NotLeader,
    ))]
pub async fn view(
    c: web::Data<Coordinator>,
    kind: web::Path<String>,
    q: Query<ViewQuery>,
) -> Result<HttpResponse, ApiError> {
    // (JSON Schema's integers here are int64: larger values are not this API's.)
    if let Some(v) = q.version.filter(|v| *v > i64::MAX as u64) {
        return Err(ApiError::BadRequest(format!(
            "version must be at most {}, not {v}",
            i64::MAX
        )));
    }
    if let Some(wait) = q.wait_ms.filter(|w| *w > 5000) {
        return Err(ApiError::BadRequest(format!(
            "wait_ms must be at most 5000, not {wait}"
        )));
    }
    let report = match (q.version, q.wait_ms) {
        (Some(known), Some(wait)) if wait > 0 => {
            let wait = std::time::Duration::from_millis(wait);
            c.authority.report_after(&kind, known, wait).await?
        }
        _ => c.authority.report(&kind).await?,
    };
    Ok(HttpResponse::Ok().json(report))
}

/// This coordinator's role, term, leader, indexes and last contact with the leader.
#[utoipa::path(get, path = "/coordinator/status", responses((status = 200, body = CoordinatorStatus)))]
pub async fn status(c: web::Data<Coordinator>) -> HttpResponse {
    HttpResponse::Ok().json(c.status())
}

fn check_kind(a: &Authority, kind: &str) -> Result<(), ApiError> {
    let kinds = a.kinds();
    if kinds.iter().any(|k| k == kind) || kinds.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "kind must be one of {kinds:?}, not {kind:?}"
    )))
}

/// A base URL `http://host:port` with nothing after the port, or a 400 naming it.
pub fn base_url(url: &str) -> Result<String, ApiError> {
    let url = url.trim_end_matches('/');
    let parsed = url::Url::parse(url)
        .map_err(|e| ApiError::BadRequest(format!("url {url:?} is not a URL: {e}")))?;
    if parsed.scheme() != "http"
        || parsed.host_str().is_none()
        || parsed.port().is_none()
        || parsed.path() != "/"
        || parsed.query().is_some()
    {
        return Err(ApiError::BadRequest(format!(
            "url must look like http://host:port, not {url:?}"
        )));
    }
    Ok(url.to_string())
}

/// Scale out: adds a replica to `kind`'s member table; answers its new id. Start the
/// replica with `--id <id> --listen host:port` afterwards (`infra local add` does both).
#[utoipa::path(post, path = "/admin/cluster/register", params(RegisterQuery),
    responses(
        (status = 200, body = MemberChange),
        (status = 400, description = "Bad kind or URL, or a URL outside the cluster", body = ErrorBody),
        NotLeader,
    ))]
pub async fn register(
    c: web::Data<Coordinator>,
    q: Query<RegisterQuery>,
) -> Result<HttpResponse, ApiError> {
    check_kind(&c.authority, &q.kind)?;
    let url = base_url(&q.url)?;
    let host = url::Url::parse(&url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    if !c.inside_cluster(&host) {
        return Err(ApiError::BadRequest(format!(
            "url {url:?} is not inside the cluster: a replica may be registered only on one \
             of the cluster file's hosts or in a network given with --member-cidr"
        )));
    }
    let id = c.authority.register(&q.kind, &url).await?;
    Ok(HttpResponse::Ok().json(MemberChange {
        kind: q.kind.clone(),
        id,
        url: Some(url),
        result: None,
    }))
}

/// Scale in: retires a replica; the view service then drops it like a dead one.
#[utoipa::path(post, path = "/admin/cluster/unregister", params(UnregisterQuery),
    responses(
        (status = 200, body = MemberChange),
        (status = 503, description = "A view change is in progress; retry shortly", body = ErrorBody),
        BadKind, NoSuchMember, SoleHolder, NotLeader,
    ))]
pub async fn unregister(
    c: web::Data<Coordinator>,
    q: Query<UnregisterQuery>,
) -> Result<HttpResponse, ApiError> {
    check_kind(&c.authority, &q.kind)?;
    c.authority.unregister(&q.kind, q.id).await?;
    Ok(HttpResponse::Ok().json(MemberChange {
        kind: q.kind.clone(),
        id: q.id,
        url: None,
        result: Some("retired".into()),
    }))
}

fn membership_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AuthorityError::NotLeader {
            leader: f.leader_node.map(|n| n.addr),
        }
        .into(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(m)) => {
            ApiError::Conflict(m.to_string())
        }
        other => ApiError::Unavailable(format!("membership change failed: {other}")),
    }
}

fn voters(a: &Authority) -> Vec<u64> {
    a.raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

fn must_lead(a: &Authority) -> Result<(), ApiError> {
    let m = a.raft().metrics();
    let m = m.borrow();
    if m.state == openraft::ServerState::Leader {
        return Ok(());
    }
    Err(AuthorityError::NotLeader {
        leader: m.current_leader.and_then(|l| a.url_of(l)),
    }
    .into())
}

/// Reserves the id of a new coordinator (start it with `--id <id> --join`, then add it).
#[utoipa::path(post, path = "/admin/coordinators/reserve",
    responses(
        (status = 200, body = CoordinatorChange),
        NotLeader,
    ))]
pub async fn reserve(c: web::Data<Coordinator>) -> Result<HttpResponse, ApiError> {
    let id = c.authority.reserve_coordinator().await?;
    Ok(HttpResponse::Ok().json(CoordinatorChange {
        id,
        voters: voters(&c.authority),
    }))
}

/// Adds a running coordinator (started with `--join`) to the group: as a learner until it
/// has caught up, then as a voter (joint consensus).
#[utoipa::path(post, path = "/admin/coordinators/add", params(CoordinatorAddQuery),
    responses(
        (status = 200, body = CoordinatorChange),
        (status = 400, description = "Bad URL", body = ErrorBody),
        (status = 409, description = "The membership cannot change now", body = ErrorBody),
        NotLeader,
    ))]
pub async fn add(
    c: web::Data<Coordinator>,
    q: Query<CoordinatorAddQuery>,
) -> Result<HttpResponse, ApiError> {
    let a = &c.authority;
    must_lead(a)?;
    let url = base_url(&q.url)?;
    if a.state_machine()
        .read(|d| q.id >= d.control.next_coordinator)
    {
        return Err(ApiError::BadRequest(format!(
            "coordinator id {} was not reserved (POST /admin/coordinators/reserve first)",
            q.id
        )));
    }
    a.raft()
        .add_learner(q.id, BasicNode { addr: url }, true)
        .await
        .map_err(membership_error)?;
    let mut ids: BTreeSet<u64> = voters(a).into_iter().collect();
    ids.insert(q.id);
    a.raft()
        .change_membership(ids, false)
        .await
        .map_err(membership_error)?;
    tracing::info!(id = q.id, url = %q.url, "coordinator added");
    Ok(HttpResponse::Ok().json(CoordinatorChange {
        id: q.id,
        voters: voters(a),
    }))
}

/// Removes a coordinator from the group (joint consensus). Removing the leader is
/// allowed: it commits the change, then steps down.
#[utoipa::path(post, path = "/admin/coordinators/remove", params(CoordinatorRemoveQuery),
    responses(
        (status = 200, body = CoordinatorChange),
        (status = 404, description = "Not a voting member", body = ErrorBody),
        (status = 409, description = "The last voter, or the membership cannot change now", body = ErrorBody),
        NotLeader,
    ))]
pub async fn remove(
    c: web::Data<Coordinator>,
    q: Query<CoordinatorRemoveQuery>,
) -> Result<HttpResponse, ApiError> {
    let a = &c.authority;
    must_lead(a)?;
    let mut ids: BTreeSet<u64> = voters(a).into_iter().collect();
    if !ids.remove(&q.id) {
        return Err(ApiError::NotFound(format!(
            "coordinator {} is not a voting member (voters: {:?})",
            q.id,
            voters(a)
        )));
    }
    if ids.is_empty() {
        return Err(ApiError::Conflict(
            "the last coordinator cannot be removed".into(),
        ));
    }
    a.raft()
        .change_membership(ids, false)
        .await
        .map_err(membership_error)?;
    tracing::info!(id = q.id, "coordinator removed");
    Ok(HttpResponse::Ok().json(CoordinatorChange {
        id: q.id,
        voters: voters(a),
    }))
}

/// The coordinator's API document (`GET /internal/openapi.json`, cluster token).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(health, ready, ping, view, status),
    components(schemas(VsKind, KindReport, CoordinatorStatus))
)]
pub struct InternalApi;

/// The admin routes (admin token), served by every coordinator and forwarded to by the
/// frontends' `/admin/cluster/*`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(register, unregister, reserve, add, remove),
    components(schemas(VsKind, MemberChange, CoordinatorChange))
)]
pub struct AdminApi;
