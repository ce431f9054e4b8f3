//! The admin client, one for local and EC2 clusters: `POST` an admin route
//! (`/admin/cluster/*`, `/admin/coordinators/*`) with the admin token to the coordinator
//! leader, found from any coordinator ([`Coordinators`] follows their 421 answers).
//!
//! `infra local` calls it on this machine, where the coordinators listen on loopback.
//! `infra ec2` calls it on a coordinator's host, through the hidden `infra ec2 admin` run
//! over ssh, so the admin token never crosses the internet in clear HTTP; the answer
//! comes back as one JSON line ([`AdminAnswer`]).
use anyhow::anyhow;
use bookstore_common::client::CallError;
use bookstore_common::coordinators::Coordinators;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long one admin call may take, every coordinator tried included.
const BUDGET: Duration = Duration::from_secs(30);

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AdminError {
    /// No coordinator answered (or none could be reached to ask).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The leader (or the last coordinator asked) refused, with its `error` text.
    #[error("status {status}: {message}")]
    Refused { status: u16, message: String },
    /// A 2xx answer that is not the JSON expected.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

impl AdminError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            AdminError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A view change is in progress: the same call succeeds shortly.
    pub fn retry_shortly(&self) -> bool {
        matches!(self, AdminError::Refused { message, .. } if message.contains("retry shortly"))
    }
}

impl From<CallError> for AdminError {
    fn from(e: CallError) -> AdminError {
        match e {
            CallError::Unreachable(s) => AdminError::Unreachable(s),
            CallError::Status { status, body } => AdminError::Refused {
                status,
                message: body.error,
            },
            CallError::Decode(s) => AdminError::BadAnswer(s),
            e @ CallError::TooLarge { .. } => AdminError::BadAnswer(e.to_string()),
        }
    }
}

/// An admin call's outcome as one JSON line (what `infra ec2 admin` prints on a host).
pub type AdminAnswer = Result<serde_json::Value, AdminError>;

/// Checks an admin route given on a command line: `/admin/...`, visible ASCII, no spaces.
pub fn check_path(path: &str) -> anyhow::Result<()> {
    if path.starts_with("/admin/") && path.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(anyhow!(
            "{path:?} is not an admin route (expected /admin/..., percent-encoded)"
        ))
    }
}

/// `POST path` (an `/admin/...` route) with `admin_token` to the coordinator leader, and
/// its JSON answer.
pub async fn post<T: serde::de::DeserializeOwned>(
    coordinators: &Coordinators,
    admin_token: &str,
    path: &str,
) -> Result<T, AdminError> {
    let body = coordinators
        .call(
            |c, base| c.post(format!("{base}{path}")).bearer_auth(admin_token),
            BUDGET,
            BUDGET,
        )
        .await?;
    serde_json::from_slice(&body).map_err(|e| AdminError::BadAnswer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_cross_as_one_json_line_and_keep_their_text() {
        let e = AdminError::Refused {
            status: 503,
            message: "the catalog view is changing; retry shortly".into(),
        };
        assert!(e.retry_shortly());
        assert_eq!(e.status(), Some(503));
        assert_eq!(
            e.to_string(),
            "status 503: the catalog view is changing; retry shortly"
        );
        let line = serde_json::to_string(&AdminAnswer::Err(e.clone())).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<AdminAnswer>(&line).unwrap(), Err(e));
        let ok: AdminAnswer = Ok(serde_json::json!({"id": 2}));
        let line = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<AdminAnswer>(&line).unwrap(), ok);
    }

    #[test]
    fn only_admin_routes_are_sent() {
        assert!(check_path("/admin/cluster/register?kind=catalog&url=http%3A%2F%2Fh%3A1").is_ok());
        assert!(check_path("/vs/catalog/view").is_err());
        assert!(check_path("/admin/x y").is_err());
        assert!(check_path("http://elsewhere/admin/x").is_err());
    }
}
