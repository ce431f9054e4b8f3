//! Wire types of the control plane: what a replica's ping is answered with, what a view
//! report (`GET /vs/{kind}/view`) holds, and the member table of a replicated kind.
use crate::protocol::{Epoch, ReplicaId, View};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The answer to a replica's ping (bincode): the current view, `lead_from` (views with a
/// smaller epoch were decided before the view service knew the pinger's disk, see
/// [`crate::viewservice::VsCommand::Reply`]) and the member table (replica id -> base URL).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingAnswer {
    pub view: Option<View>,
    pub lead_from: Epoch,
    pub members: BTreeMap<ReplicaId, String>,
}

/// The replicas of one kind that may take part, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Members {
    /// Base URL by id.
    pub urls: BTreeMap<ReplicaId, String>,
    /// The id the next registered replica gets (ids are never reused).
    pub next_id: ReplicaId,
}

impl Members {
    /// The initial table: the cluster file's replicas, ids `0..urls.len()`.
    pub fn initial(urls: &[String]) -> Members {
        Members {
            urls: urls
                .iter()
                .enumerate()
                .map(|(i, u)| (i as ReplicaId, u.clone()))
                .collect(),
            next_id: urls.len() as ReplicaId,
        }
    }
}

/// What the view service last heard from one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaSeen {
    pub id: ReplicaId,
    /// Milliseconds since its last ping.
    pub heartbeat_age_ms: u64,
    /// The epoch it acted in and its applied index, as of that ping.
    pub epoch: Epoch,
    pub applied: u64,
}

/// The view service's account of one kind (`GET /vs/{kind}/view`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KindReport {
    /// The current view (none before the first one is decided).
    pub view: Option<View>,
    /// The view's primary has acknowledged it (a retirement waits for this).
    #[serde(default)]
    pub acked: bool,
    /// Backups that hold every committed entry.
    pub synced: Vec<ReplicaId>,
    /// Base URL of every member replica, by id (replicas added at run time included).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub members: BTreeMap<ReplicaId, String>,
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
