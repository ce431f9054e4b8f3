//! The coordinator group's Raft, on `openraft`: the type configuration, the durable log
//! ([`log_store`]), the state machine ([`state_machine`]) and the HTTP transport between
//! coordinators ([`network`]). Everything protocol-specific is openraft's; this module only
//! plugs storage and network in.
pub mod log_store;
pub mod network;
pub mod state_machine;

use crate::state::{Applied, Proposal};
use std::path::PathBuf;

/// Why a coordinator's durable Raft state (log, vote, snapshot) could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Wal {
        path: PathBuf,
        source: bookstore_replication::wal::WalError,
    },
    /// A file or record that does not decode (`what` names which).
    #[error("{path}: {what}{source}")]
    Decode {
        path: PathBuf,
        what: String,
        source: bincode::Error,
    },
}
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The coordinator group's types: proposals in, their outcomes out; nodes are
    /// addressed by their base URL.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// A coordinator's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
