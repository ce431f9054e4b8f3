//! Token checks for internal (cluster token) and admin (admin token) routes.
//!
//! Tokens are compared in constant time and never logged. Wrap a scope with
//! `actix_web::middleware::from_fn(require_cluster_token)` after registering
//! [`Tokens`] as app data.
//!
//! Operator routes (`/metrics`, the frontend's `/cluster`) take either token, so that
//! both the services and a Prometheus server (which can only send
//! `Authorization: Bearer`) can read them: see [`require_operator_token`].
use crate::types::CLUSTER_TOKEN_HEADER;
use crate::ApiError;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web;
use std::sync::Arc;

/// The tokens a service checks.
#[derive(Clone)]
pub struct Tokens {
    cluster: Arc<str>,
    admin: Option<Arc<str>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(<redacted>)")
    }
}

impl Tokens {
    pub fn new(cluster: &str, admin: Option<&str>) -> Tokens {
        Tokens {
            cluster: cluster.into(),
            admin: admin.filter(|a| !a.is_empty()).map(Into::into),
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    fn cluster_ok(&self, given: Option<&[u8]>) -> bool {
        given.is_some_and(|g| constant_time_eq::constant_time_eq(g, self.cluster.as_bytes()))
    }

    fn admin_ok(&self, given: Option<&[u8]>) -> bool {
        match (&self.admin, given) {
            (Some(a), Some(g)) => constant_time_eq::constant_time_eq(g, a.as_bytes()),
            _ => false,
        }
    }
}

fn tokens(req: &ServiceRequest) -> Tokens {
    req.app_data::<web::Data<Tokens>>()
        .map(|t| t.get_ref().clone())
        .expect("Tokens must be registered as app data")
}

/// Middleware: the request must carry `X-Cluster-Token: <cluster token>`.
pub async fn require_cluster_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let given = req
        .headers()
        .get(CLUSTER_TOKEN_HEADER)
        .map(|v| v.as_bytes());
    if !tokens(&req).cluster_ok(given) {
        return Err(ApiError::Unauthorized(
            "internal route: missing or wrong X-Cluster-Token".into(),
        )
        .into());
    }
    next.call(req).await
}

/// Middleware for operator routes: the request must carry the cluster token
/// (`X-Cluster-Token: <cluster token>` or `Authorization: Bearer <cluster token>`) or
/// the admin token (`Authorization: Bearer <admin token>`).
pub async fn require_operator_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let t = tokens(&req);
    let header = req
        .headers()
        .get(CLUSTER_TOKEN_HEADER)
        .map(|v| v.as_bytes());
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let ok = t.cluster_ok(header) || t.cluster_ok(bearer) || t.admin_ok(bearer);
    if !ok {
        return Err(ApiError::Unauthorized(
            "operator route: send `X-Cluster-Token: <cluster token>` or \
             `Authorization: Bearer <cluster or admin token>`"
                .into(),
        )
        .into());
    }
    next.call(req).await
}

/// Middleware: the request must carry `Authorization: Bearer <admin token>`.
pub async fn require_admin_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if !tokens(&req).admin_ok(given) {
        return Err(ApiError::Unauthorized(
            "admin route: missing or wrong `Authorization: Bearer <admin token>`".into(),
        )
        .into());
    }
    next.call(req).await
}
