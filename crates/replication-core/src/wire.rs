//! Wire types of the control plane: what a replica's ping is answered with, what a view
//! report (`GET /vs/{kind}/view`) holds, and the member table of a replicated kind.
use crate::terms::{Epoch, ReplicaId, View};
use crate::viewservice::Ping;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What a replica sends to the coordinators (bincode, `POST /vs/{kind}/ping`, cluster
/// token): the protocol's ping and the base URL the replica serves at. A replica
/// registered at run time becomes a *proven* member when it first pings from the URL it
/// was registered with; until then nobody sends it the cluster token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRequest {
    pub ping: Ping,
    pub url: String,
}

/// The answer to a replica's ping (bincode): the current view, `lead_from` (views with a
/// smaller epoch were decided before the view service knew the pinger's disk, see
/// [`crate::viewservice::VsCommand::Reply`]) and the member table (replica id -> base URL).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingAnswer {
    pub view: Option<View>,
    pub lead_from: Epoch,
    pub members: BTreeMap<ReplicaId, String>,
    /// The coordinator group's members (base URLs), so replicas follow its changes.
    pub coordinators: Vec<String>,
}

/// The replicas of one kind that may take part, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Members {
    /// Base URL by id.
    pub urls: BTreeMap<ReplicaId, String>,
    /// The id the next registered replica gets (ids are never reused).
    pub next_id: ReplicaId,
    /// Registered replicas that have not yet pinged from their URL: not shown to
    /// anyone who would send them the cluster token.
    #[serde(default)]
    pub unproven: BTreeSet<ReplicaId>,
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
            unproven: BTreeSet::new(),
        }
    }

    /// The members that may be sent the cluster token: every member but the unproven.
    pub fn proven(&self) -> BTreeMap<ReplicaId, String> {
        self.urls
            .iter()
            .filter(|(id, _)| !self.unproven.contains(id))
            .map(|(id, u)| (*id, u.clone()))
            .collect()
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
    /// Base URL of every proven member replica, by id (replicas added at run time
    /// included once they have pinged from that URL).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub members: BTreeMap<ReplicaId, String>,
    /// Registered replicas that have not pinged from their URL yet.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub unproven: BTreeMap<ReplicaId, String>,
    /// View changes (new epochs) decided since this coordinator became leader.
    #[serde(default)]
    pub view_changes: u64,
    /// View changes that replaced a primary that left the view.
    #[serde(default)]
    pub failovers: u64,
    /// Every replica that pinged since this coordinator became leader, by id.
    #[serde(default)]
    pub replicas: Vec<ReplicaSeen>,
    /// The coordinator that decided the current view, and the Raft term it led then.
    #[serde(default)]
    pub decided_by: Option<DecidedBy>,
    /// The coordinator group's members: base URL by coordinator id.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub coordinators: BTreeMap<u64, String>,
    /// Grows with every committed change of this kind (view, synced set, members): a
    /// router that knows it can wait for the next change (`?version=`).
    #[serde(default)]
    pub version: u64,
}

/// Which coordinator decided a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecidedBy {
    pub coordinator: u64,
    pub term: u64,
}

/// A coordinator's role in its Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CoordinatorRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// What one coordinator reports about itself (`GET /coordinator/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CoordinatorStatus {
    pub id: u64,
    pub role: CoordinatorRole,
    /// The Raft term it is in.
    pub term: u64,
    /// The leader it knows of, by id and base URL.
    pub leader: Option<u64>,
    pub leader_url: Option<String>,
    /// The last log index applied to its state machine (it trails the commit index by
    /// at most the entries in flight).
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    /// Milliseconds since its last contact with the leader: for a follower, since the
    /// leader's last accepted AppendEntries; for the leader, since a quorum last
    /// acknowledged it.
    pub leader_contact_age_ms: Option<u64>,
    /// Voting members, by id.
    pub voters: Vec<u64>,
    /// Every member (voters and learners): base URL by id.
    #[schema(value_type = BTreeMap<String, String>)]
    pub members: BTreeMap<u64, String>,
    /// As leader: milliseconds since it took over the view services (it declares no
    /// replica dead during the first read-lease period after that).
    pub leading_for_ms: Option<u64>,
}
