//! Token checks for internal (cluster token) and admin (admin token) routes.
//!
//! Tokens are compared in constant time and never logged. Wrap a scope with
//! `actix_web::middleware::from_fn(require_cluster_token)` after registering
//! [`Tokens`] as app data.
//!
//! Operator routes (`/metrics`, the frontend's `/cluster`) take either token, so that
//! both the services and a Prometheus server (which can only send
//! `Authorization: Bearer`) can read them: see [`require_operator_token`].
//!
//! A token is held as a [`Secret`] (its `Debug` is `<redacted>` and it has no
//! `Display`), and a supplied one must pass [`check_token`]: at least
//! [`MIN_TOKEN_LEN`] visible ASCII characters.
use crate::types::CLUSTER_TOKEN_HEADER;
use crate::ApiError;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web;
use std::sync::Arc;

/// The fewest characters a supplied token may have.
pub const MIN_TOKEN_LEN: usize = 16;

/// Checks a supplied token (`what` names it in the error): at least [`MIN_TOKEN_LEN`]
/// visible ASCII characters.
pub fn check_token(what: &str, token: &str) -> Result<(), TokenError> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotVisible { what: what.into() });
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort {
            what: what.into(),
            len: token.len(),
        });
    }
    Ok(())
}

/// A supplied token that [`check_token`] refused; `what` names it ("cluster token").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the {what} must be visible ASCII characters only")]
    NotVisible { what: String },
    #[error("the {what} must be at least {MIN_TOKEN_LEN} characters long (it is {len})")]
    TooShort { what: String, len: usize },
}

/// A token (or any secret text): `Debug` prints `<redacted>`, there is no `Display`,
/// and [`Secret::expose`] (or deref) gives the text where it is really needed.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_invisible_tokens_are_refused_and_secrets_are_redacted() {
        assert!(check_token("cluster token", "0123456789abcdef").is_ok());
        let e = check_token("cluster token", "0123456789abcde")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16 characters"), "{e}");
        assert!(check_token("admin token", "0123456789abcdef ").is_err());
        let s = Secret::from("0123456789abcdef");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), "0123456789abcdef");
        let t = Tokens::new(&s, Some("fedcba9876543210"));
        assert_eq!(format!("{t:?}"), "Tokens(<redacted>)");
    }
}
