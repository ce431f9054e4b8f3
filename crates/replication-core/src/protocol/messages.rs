//! The values that cross a replica's boundary: what a log holds ([`Entry`],
//! [`SnapshotMeta`]), the messages between replicas ([`Msg`]), the events a
//! [`Replica`](super::Replica) consumes ([`Event`]) and the commands it returns
//! ([`Command`], [`Outcome`]), and [`well_formed`], the shape check of a received
//! [`Msg::Replicate`].

use crate::terms::{Epoch, LogIndex, ReplicaId, View};
use crate::viewservice::Ping;
use serde::{Deserialize, Serialize};

/// One log entry. `data` is an opaque state-machine command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entry {
    pub index: LogIndex,
    pub epoch: Epoch,
    pub data: Vec<u8>,
}

/// Client request identifier (the state machine de-duplicates retries by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Position of the last entry covered by a snapshot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct SnapshotMeta {
    pub index: LogIndex,
    pub epoch: Epoch,
}

/// Replica-to-replica messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Msg {
    /// Primary -> backup: entries after `(prev_index, prev_epoch)` (may be empty: heartbeat).
    Replicate {
        view: View,
        prev_index: LogIndex,
        prev_epoch: Epoch,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    /// Primary -> backup: state-machine snapshot covering `1..=meta.index`.
    Snapshot {
        view: View,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    /// Backup -> primary: my log matches yours and is durable up to `matched`.
    Ack { epoch: Epoch, matched: LogIndex },
    /// Backup -> primary: consistency check failed; resend from `commit + 1`.
    Nack { epoch: Epoch, commit: LogIndex },
    /// Your epoch is stale; this is the newer view.
    Reject { view: View },
}

impl Msg {
    /// Epoch the sender was in.
    pub fn epoch(&self) -> Epoch {
        match self {
            Msg::Replicate { view, .. } | Msg::Snapshot { view, .. } | Msg::Reject { view } => {
                view.epoch
            }
            Msg::Ack { epoch, .. } | Msg::Nack { epoch, .. } => *epoch,
        }
    }
}

/// Inputs of a replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    /// Logical time passes.
    Tick,
    /// A client asks to append `data`.
    ClientWrite { request: RequestId, data: Vec<u8> },
    /// A message from another replica.
    Message { from: ReplicaId, msg: Msg },
    /// The view service answered a ping (`None`: no view decided yet). `lead_from` as in
    /// `VsCommand::Reply`.
    VsReply {
        view: Option<View>,
        lead_from: Epoch,
    },
    /// The durable log now holds the entry `(index, epoch)` and everything before it.
    Persisted { index: LogIndex, epoch: Epoch },
    /// The view with this epoch is durable.
    ViewPersisted { epoch: Epoch },
    /// The runtime durably snapshotted its state machine (after [`Command::TakeSnapshot`]);
    /// `bytes` is the snapshot's size, which sets when the next one is asked for.
    SnapshotTaken { meta: SnapshotMeta, bytes: u64 },
    /// The runtime's latest snapshot, to ship to `to` (after [`Command::SendSnapshot`]).
    /// It must cover exactly entries `1..=meta.index`, all committed.
    SnapshotForPeer {
        to: ReplicaId,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    /// The runtime installed and durably stored a received snapshot, discarding its
    /// whole durable log (after [`Command::InstallSnapshot`]).
    SnapshotInstalled { meta: SnapshotMeta },
    /// The runtime could not restore its state machine from a received snapshot (it
    /// does not decode or does not hold together): nothing was installed, and the
    /// replica waits for another one.
    SnapshotRefused { meta: SnapshotMeta },
}

/// Outcome of a client write.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Durable on the primary and every backup of the view; applied at `index`.
    Committed { index: LogIndex },
    /// Not the primary; try `hint` if known.
    NotPrimary { hint: Option<ReplicaId> },
    /// Unknown (the primary stepped down); retry with the same request id.
    Retry,
}

/// Outputs of a replica, to be executed by the runtime in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    /// Send `msg` to replica `to` (best effort).
    Send { to: ReplicaId, msg: Msg },
    /// Send this ping to the view service; feed its answer as [`Event::VsReply`].
    PingVs(Ping),
    /// Durably write `entries` (contiguous) to the log, first discarding every durable
    /// entry with index `>= entries[0].index`; then feed [`Event::Persisted`] for the last.
    Persist { entries: Vec<Entry> },
    /// Durably store the view; then feed [`Event::ViewPersisted`].
    PersistView(View),
    /// Apply a committed entry to the state machine (strictly in index order).
    Apply { entry: Entry },
    /// Answer a client write.
    Reply {
        request: RequestId,
        outcome: Outcome,
    },
    /// Snapshot the state machine at its applied index, persist it, drop the WAL prefix it
    /// covers; then feed [`Event::SnapshotTaken`].
    TakeSnapshot,
    /// Fetch the latest snapshot and feed it as [`Event::SnapshotForPeer`] for `to`.
    SendSnapshot { to: ReplicaId },
    /// Replace the state machine with `data`, durably store it as the snapshot and discard
    /// the whole durable log; then feed [`Event::SnapshotInstalled`].
    InstallSnapshot { meta: SnapshotMeta, data: Vec<u8> },
}

/// Whether a [`Msg::Replicate`] holds together, as the protocol sends it: entries
/// contiguous from `prev_index + 1` and, with `epochs` (fencing on), epochs never
/// decreasing from `prev_epoch` and never past the view's. A message that does not is
/// refused whole: stored, such entries would make a log that cannot be recovered (gaps)
/// or that lies about its epochs.
pub fn well_formed(
    view: &View,
    prev_index: LogIndex,
    prev_epoch: Epoch,
    entries: &[Entry],
    epochs: bool,
) -> bool {
    let mut last_epoch = prev_epoch;
    if epochs && prev_epoch > view.epoch {
        return false;
    }
    for (i, e) in entries.iter().enumerate() {
        let contiguous = prev_index
            .checked_add(1 + i as u64)
            .is_some_and(|want| e.index == want);
        if !contiguous {
            return false;
        }
        if epochs && (e.epoch < last_epoch || e.epoch > view.epoch) {
            return false;
        }
        last_epoch = e.epoch;
    }
    true
}
