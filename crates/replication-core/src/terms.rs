//! The terms the protocol and the view service share: replica ids, epochs, log
//! positions and views. Both use them; neither depends on the other for them (the
//! protocol uses the view service's `Ping`, the view service nothing of the protocol).
use serde::{Deserialize, Serialize};

/// Identifier of a replica (0..n-1).
pub type ReplicaId = u32;
/// View number; increases with every view change.
pub type Epoch = u64;
/// 1-based position in the replicated log; 0 means "nothing".
pub type LogIndex = u64;

/// A view: who is primary, who are the backups, in which epoch.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct View {
    pub epoch: Epoch,
    pub primary: ReplicaId,
    pub backups: Vec<ReplicaId>,
}

impl View {
    /// Is `r` the primary or a backup of this view?
    pub fn contains(&self, r: ReplicaId) -> bool {
        self.primary == r || self.backups.contains(&r)
    }
    /// Is `r` a backup of this view?
    pub fn is_backup(&self, r: ReplicaId) -> bool {
        self.backups.contains(&r)
    }
}
