//! [`ApiError`]: every failure a handler can return, mapped to one HTTP status and a
//! JSON body `{"error": "..."}` naming the problem.
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// A missing or malformed parameter: 400.
    #[error("{0}")]
    BadRequest(String),
    /// An unknown item or route: 404.
    #[error("{0}")]
    NotFound(String),
    /// A buy of a sold-out book: 409 `{"result":"Failed","error":"out of stock"}`.
    #[error("out of stock")]
    OutOfStock,
    /// A missing or wrong token: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// Wrong method: 405 with an `Allow` header.
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    /// A replica that cannot take this request (shut down, not primary): 503.
    #[error("{0}")]
    Unavailable(String),
    /// A write sent to a replica that is not the primary: 421, naming the primary if known.
    #[error("not primary")]
    NotPrimary { primary: Option<u32> },
    /// A dependency failed in a way that is not the caller's fault: 502.
    #[error("{0}")]
    BadGateway(String),
    /// The request conflicts with the state (e.g. retiring the last up-to-date replica): 409.
    #[error("{0}")]
    Conflict(String),
    /// The caller was retired from the cluster: 410.
    #[error("{0}")]
    Gone(String),
    /// A coordinator that is not the leader: 421, with the leader's base URL if known.
    #[error("not the coordinator leader")]
    NotLeader { leader: Option<String> },
    /// A well-formed request that cannot be carried out as sent (an `Idempotency-Key`
    /// reused for another request): 422.
    #[error("{0}")]
    Unprocessable(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::OutOfStock => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotPrimary { .. } | ApiError::NotLeader { .. } => {
                StatusCode::MISDIRECTED_REQUEST
            }
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status_code());
        match self {
            ApiError::OutOfStock => {
                builder.json(json!({"result": "Failed", "error": "out of stock"}))
            }
            ApiError::MethodNotAllowed { allow } => builder
                .insert_header((header::ALLOW, *allow))
                .json(json!({"error": self.to_string()})),
            ApiError::Unavailable(_) => builder
                .insert_header((header::RETRY_AFTER, "1"))
                .json(json!({"error": self.to_string()})),
            ApiError::NotPrimary { primary } => {
                builder.json(json!({"error": self.to_string(), "primary": primary}))
            }
            ApiError::NotLeader { leader } => {
                builder.json(json!({"error": self.to_string(), "leader": leader}))
            }
            _ => builder.json(json!({"error": self.to_string()})),
        }
    }
}

/// The JSON error body every service sends, as a client decodes it.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, Default, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, in words.
    #[serde(default)]
    pub error: String,
    /// `"Failed"` on a buy of a sold-out book.
    #[serde(default)]
    pub result: Option<String>,
    /// With a 421: the replica the answering one believes is primary.
    #[serde(default)]
    pub primary: Option<u32>,
    /// With a 421 from a coordinator: the base URL of the leader, if it knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}
