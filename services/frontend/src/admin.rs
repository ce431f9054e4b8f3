//! The admin membership routes, forwarded to the coordinator leader: a frontend holds no
//! part of the control plane. The caller's admin token (already checked here) travels
//! with the request to the coordinators only, which check it again.
use crate::Ctx;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use bookstore_common::client::{encode, CallError};
use bookstore_common::error::ErrorBody;
use bookstore_common::openapi::answers::{BadKind, NoSuchMember, SoleHolder};
use bookstore_common::params::Query;
use bookstore_common::types::{MemberChange, RegisterQuery, UnregisterQuery};
use bookstore_common::ApiError;
use std::time::Duration;

/// How long a forwarded change may take (a registration commits through Raft).
const FORWARD_BUDGET: Duration = Duration::from_secs(10);

async fn forward(ctx: &Ctx, req: &HttpRequest, path_and_query: String) -> HttpResponse {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let answer = ctx
        .coordinators
        .call(
            |c, base| {
                c.post(format!("{base}{path_and_query}"))
                    .header(header::AUTHORIZATION.as_str(), auth.as_str())
            },
            FORWARD_BUDGET,
            FORWARD_BUDGET,
        )
        .await;
    match answer {
        Ok(body) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        Err(CallError::Status { status, body }) => {
            HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY))
                .json(body)
        }
        Err(e) => actix_web::ResponseError::error_response(&ApiError::Unavailable(format!(
            "no coordinator leader answered: {e}"
        ))),
    }
}

/// Scale out: adds a replica to `kind`'s member table (forwarded to the coordinators);
/// answers its new id. Start the replica with `--id <id> --listen host:port` afterwards
/// (`infra local add` does both).
#[utoipa::path(post, path = "/admin/cluster/register", params(RegisterQuery),
    responses(
        (status = 200, body = MemberChange),
        (status = 400, description = "Bad kind or URL", body = ErrorBody),
    ))]
pub async fn register(ctx: Ctx, req: HttpRequest, q: Query<RegisterQuery>) -> HttpResponse {
    let path = format!(
        "/admin/cluster/register?kind={}&url={}",
        encode(&q.kind),
        encode(&q.url)
    );
    forward(&ctx, &req, path).await
}

/// Scale in: retires a replica (forwarded to the coordinators); the view service then
/// drops it like a dead one.
#[utoipa::path(post, path = "/admin/cluster/unregister", params(UnregisterQuery),
    responses(
        (status = 200, body = MemberChange),
        BadKind, NoSuchMember, SoleHolder,
    ))]
pub async fn unregister(ctx: Ctx, req: HttpRequest, q: Query<UnregisterQuery>) -> HttpResponse {
    let path = format!(
        "/admin/cluster/unregister?kind={}&id={}",
        encode(&q.kind),
        q.id
    );
    forward(&ctx, &req, path).await
}

/// The membership routes (admin token), for the frontend's public document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(register, unregister), components(schemas(MemberChange)))]
pub struct MembershipApi;
