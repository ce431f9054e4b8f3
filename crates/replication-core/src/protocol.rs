//! Primary-backup replica protocol as a pure state machine.
//!
//! A [`Replica`] consumes [`Event`]s and returns [`Command`]s. It performs no I/O, reads
//! no clock and uses no randomness: time is [`Event::Tick`], disk writes are commands
//! whose completion the runtime reports back as events. The same code therefore runs in
//! the real service, in the deterministic simulation tests and in the model checker.
//!
//! # Protocol
//!
//! * Views ([`View`]) are decided by the single view service (`viewservice`). A replica
//!   learns views from view-service replies ([`Event::VsReply`]) and from peers
//!   ([`Msg::Replicate`] carries the primary's view, [`Msg::Reject`] the newer view). A
//!   learned view is first persisted ([`Command::PersistView`]) and only *activated* once
//!   [`Event::ViewPersisted`] arrives, so a restarted replica never acts in an older
//!   epoch than one it already acted in.
//! * **Epoch fencing.** Every message carries the sender's epoch. Messages from a lower
//!   epoch are answered with [`Msg::Reject`] (carrying the newer view) and otherwise
//!   ignored; a message from a higher epoch makes the receiver adopt the newer view. A
//!   primary that learns of a higher epoch steps down at once: every pending client
//!   write is answered [`Outcome::Retry`] (its fate is unknown) and it stops acting.
//! * **Writes.** Only the primary of its active view accepts [`Event::ClientWrite`]. It
//!   appends an [`Entry`] (`index = last + 1`, `epoch = view.epoch`) and at once both
//!   persists it and sends it to *every* backup of the view, so its own `fdatasync` and
//!   the backups' overlap (concurrent writes still share fsyncs and messages). The
//!   commit index is the largest index that is durable on the primary **and**
//!   acknowledged as durable by every backup of the view (synchronous replication).
//!   Only then is [`Outcome::Committed`] replied.
//! * **Restart fence.** Sending before persisting means a backup may hold an entry
//!   `(index, epoch)` that its primary lost in a crash. Were that primary to restart and
//!   lead the same epoch, it would append a *different* entry with the same
//!   `(index, epoch)`, and log matching (invariant 2) would break. So a replica never
//!   leads an epoch it may have acted in before its restart: [`Replica::recover`] sets
//!   its fence to the epoch of its persisted view, every [`Ping`] carries it, and the
//!   view service answers a primary that pings with a fence at its view's epoch by
//!   moving to the next epoch with the same members (`viewservice`). That primary still
//!   holds every committed entry (a commit needs its own persist), and the backups'
//!   consistency check truncates the lost entries' copies.
//! * **Backups** accept [`Msg::Replicate`] only from the primary of their (equal) epoch,
//!   after the Raft-style consistency check on `(prev_index, prev_epoch)`. A conflicting
//!   suffix (uncommitted entries of a deposed primary) is truncated. An [`Msg::Ack`] is sent
//!   only for entries that are verified to match the primary **and** are durable. On a
//!   mismatch the backup answers [`Msg::Nack`] with its commit index; committed entries are
//!   identical on every log, so the primary resends from there (at most one round trip
//!   for any divergence). If the primary no longer retains those entries it ships a
//!   snapshot ([`Command::SendSnapshot`] -> [`Event::SnapshotForPeer`] ->
//!   [`Msg::Snapshot`] -> [`Command::InstallSnapshot`] -> [`Event::SnapshotInstalled`]).
//! * **New primary barrier.** When a replica becomes primary it records
//!   `epoch_start = last_index`. Everything in its log (which contains every committed
//!   entry) gets committed in the new epoch once all backups hold it. A backup is
//!   reported *synced* to the view service (in [`Ping::synced`]) only when it durably
//!   holds every entry up to `max(commit_index, epoch_start)`; because every later
//!   commit needs its ack, it then stays synced for as long as it is in the view.
//! * **Fresh replicas.** A replica that starts with an empty disk (new, or disk lost) is
//!   *fresh*: it leads a view only if the view service decided that view after it had
//!   learned the replica's current disk incarnation (`lead_from` in [`Event::VsReply`]).
//!   The view service drops a replica with a new incarnation from the synced set, so a
//!   replica that lost its disk is never primary on the strength of data it no longer has.
//!
//! * **Restart.** [`Replica::recover`] restores the log and the last persisted view, but a
//!   restarted replica leads (or serves reads) only after the view service answered it
//!   once: it may have been deposed while it was down. Commit and apply positions are
//!   volatile; a primary re-commits its whole durable log once every backup holds it.
//!
//! # Invariants (checked by the simulation and model tests)
//!
//! 1. At most one primary per epoch (the view service).
//! 2. Log matching: two logs holding an entry with the same `(index, epoch)` are equal up
//!    to that index.
//! 3. Every committed entry is in the log of the primary and of every synced backup of
//!    the current view; hence a promoted (synced) backup holds every acknowledged write.
//! 4. A deposed primary cannot commit: its backups have moved to the newer epoch and
//!    reject its messages.
//! 5. Entries are applied in index order, only once committed, and never rolled back.
//!
//! # Runtime contract
//!
//! Execute the returned commands **in order**. `Persist`, `PersistView`,
//! `InstallSnapshot` and `TakeSnapshot` must be completed in the order issued (a FIFO
//! disk queue); report completion with the matching event. `Apply` commands must be
//! applied to the state machine in the order issued.

use crate::viewservice::Ping;
use bincode::Options;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Decodes a bincode message from another process (replication messages, view-service
/// pings and answers) in the format `bincode::serialize` writes, refusing trailing bytes
/// and any length prefix longer than the input: arbitrary bytes give an error, never a
/// panic or an allocation larger than the input.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
}

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

/// Protocol configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Config {
    /// Ping the view service and send heartbeats / retransmissions every this many ticks.
    pub heartbeat_ticks: u64,
    /// A backup that has not heard from its primary for this many ticks stops serving reads.
    pub dead_ticks: u64,
    /// Maximum number of entries in one [`Msg::Replicate`].
    pub max_entries_per_msg: usize,
    /// Ask the runtime for a snapshot ([`Command::TakeSnapshot`]) once more than this many
    /// entries are retained in memory (only applied entries can be compacted).
    pub max_retained_log: usize,
    /// MUTATION KNOB for tests: `false` ignores epochs (accept any message, never step down).
    pub fencing: bool,
    /// MUTATION KNOB for tests: `false` commits right after the primary's own persist.
    pub sync_ack: bool,
    /// MUTATION KNOB for tests: `false` lets a restarted primary lead the epoch it
    /// crashed in (see "Restart fence" above).
    pub restart_fence: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_ticks: 2,
            dead_ticks: 10,
            max_entries_per_msg: 256,
            max_retained_log: 10_000,
            fencing: true,
            sync_ack: true,
            restart_fence: true,
        }
    }
}

/// What a replica finds on its disk at start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DurableState {
    /// Identifies this replica's disk. Chosen once when the disk is created (empty) and
    /// stored with it; it must be larger than the incarnation of any earlier disk of the
    /// same replica (e.g. wall-clock milliseconds at creation).
    pub incarnation: u64,
    /// Last persisted view.
    pub view: Option<View>,
    /// Last durable snapshot (the runtime restores its state machine from it).
    pub snapshot: Option<SnapshotMeta>,
    /// Durable log entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

impl DurableState {
    /// An empty (new or lost) disk.
    pub fn empty(incarnation: u64) -> Self {
        DurableState {
            incarnation,
            ..Default::default()
        }
    }
    /// Does this disk hold nothing?
    pub fn is_empty(&self) -> bool {
        self.view.is_none() && self.snapshot.is_none() && self.entries.is_empty()
    }
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
    /// The runtime durably snapshotted its state machine (after [`Command::TakeSnapshot`]).
    SnapshotTaken { meta: SnapshotMeta },
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

/// Role of a replica in its active view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Backup,
    /// Not in the active view, no view yet, waiting for a view to be persisted, or a fresh
    /// replica that may not lead this view.
    Idle,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Progress {
    matched: LogIndex,
    next: LogIndex,
    snapshot_sent_at: Option<u64>,
}

/// One replica's protocol state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Replica {
    id: ReplicaId,
    config: Config,
    incarnation: u64,
    now: u64,
    /// Active (durable) view.
    view: Option<View>,
    /// Newer view waiting for [`Event::ViewPersisted`].
    pending_view: Option<View>,
    role: Role,
    /// Started with an empty disk.
    fresh: bool,
    /// For a fresh replica: smallest epoch it may lead (`None` until the VS told us).
    lead_from: Option<Epoch>,
    /// Heard from the view service since start (a restarted replica does not lead or
    /// serve on the strength of its persisted view alone: it may have been deposed).
    vs_confirmed: bool,
    /// Epoch of the view persisted before this start: this replica may have acted in it
    /// (and sent entries it had not persisted), so it never leads it again.
    fence: Epoch,
    snap: SnapshotMeta,
    log: VecDeque<Entry>,
    persisted: LogIndex,
    commit: LogIndex,
    applied: LogIndex,
    snapshot_requested: bool,
    // Backup side.
    /// Replica whose log we follow and its epoch (the primary of our view under fencing).
    follow: Option<(ReplicaId, Epoch)>,
    matched: LogIndex,
    acked: LogIndex,
    installing: Option<SnapshotMeta>,
    last_primary_contact: Option<u64>,
    /// Highest commit index the primary told us about (this epoch).
    primary_commit: LogIndex,
    // Primary side.
    epoch_start: LogIndex,
    progress: BTreeMap<ReplicaId, Progress>,
    pending: BTreeMap<LogIndex, RequestId>,
    /// Commands produced by [`Replica::recover`]; returned with the first handled event.
    deferred: Vec<Command>,
}

impl Replica {
    /// Start a replica from what is on its disk (use [`DurableState::empty`] for an
    /// empty disk). The runtime restores its state machine from the durable snapshot.
    /// Commands resulting from the recovery itself are returned by the first
    /// [`Replica::handle`] call (feed a [`Event::Tick`] right away if you want them now).
    pub fn recover(id: ReplicaId, config: Config, durable: DurableState) -> Replica {
        let fresh = durable.is_empty();
        let snap = durable.snapshot.unwrap_or_default();
        let log: VecDeque<Entry> = durable
            .entries
            .into_iter()
            .filter(|e| e.index > snap.index)
            .collect();
        for (i, e) in log.iter().enumerate() {
            assert_eq!(
                e.index,
                snap.index + 1 + i as u64,
                "durable log not contiguous"
            );
        }
        let last = snap.index + log.len() as u64;
        let fence = match &durable.view {
            Some(v) if config.restart_fence => v.epoch,
            _ => 0,
        };
        let mut r = Replica {
            id,
            config,
            incarnation: durable.incarnation,
            now: 0,
            view: None,
            pending_view: None,
            role: Role::Idle,
            fresh,
            lead_from: None,
            vs_confirmed: false,
            fence,
            snap,
            log,
            persisted: last,
            commit: snap.index,
            applied: snap.index,
            snapshot_requested: false,
            follow: None,
            matched: 0,
            acked: 0,
            installing: None,
            last_primary_contact: None,
            primary_commit: 0,
            epoch_start: 0,
            progress: BTreeMap::new(),
            pending: BTreeMap::new(),
            deferred: Vec::new(),
        };
        if let Some(v) = durable.view {
            let mut out = Vec::new();
            r.activate(v, &mut out);
            r.deferred = out;
        }
        r
    }

    /// Feed one event; returns the commands to execute in order.
    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        self.step(event, &mut out);
        out
    }

    /// Like [`Replica::handle`] but appends to `out`.
    pub fn step(&mut self, event: Event, out: &mut Vec<Command>) {
        out.append(&mut self.deferred);
        match event {
            Event::Tick => self.on_tick(out),
            Event::ClientWrite { request, data } => self.on_client_write(request, data, out),
            Event::Message { from, msg } => self.on_message(from, msg, out),
            Event::VsReply { view, lead_from } => self.on_vs_reply(view, lead_from, out),
            Event::Persisted { index, epoch } => self.on_persisted(index, epoch, out),
            Event::ViewPersisted { epoch } => {
                if self.pending_view.as_ref().map(|v| v.epoch) == Some(epoch) {
                    let v = self.pending_view.take().expect("checked");
                    self.activate(v, out);
                }
            }
            Event::SnapshotTaken { meta } => self.on_snapshot_taken(meta, out),
            Event::SnapshotForPeer { to, meta, data } => {
                self.on_snapshot_for_peer(to, meta, data, out)
            }
            Event::SnapshotInstalled { meta } => self.on_snapshot_installed(meta, out),
            Event::SnapshotRefused { meta } => {
                if self.installing == Some(meta) {
                    self.installing = None;
                }
            }
        }
    }

    // ----- accessors -------------------------------------------------------------------

    pub fn id(&self) -> ReplicaId {
        self.id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    /// The active (durable) view.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }
    /// Highest epoch known (active or being persisted).
    pub fn known_epoch(&self) -> Epoch {
        self.pending_view
            .as_ref()
            .or(self.view.as_ref())
            .map_or(0, |v| v.epoch)
    }
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }
    pub fn last_index(&self) -> LogIndex {
        self.snap.index + self.log.len() as u64
    }
    pub fn persisted_index(&self) -> LogIndex {
        self.persisted
    }
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.snap
    }
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Retained log entries (after the snapshot).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.log.iter()
    }
    /// Backups the primary currently considers synced (what it reports to the VS).
    pub fn synced_backups(&self) -> Vec<ReplicaId> {
        if self.role != Role::Primary {
            return Vec::new();
        }
        let floor = self.commit.max(self.epoch_start);
        self.progress
            .iter()
            .filter(|(_, p)| p.matched >= floor)
            .map(|(b, _)| *b)
            .collect()
    }

    /// May this replica serve reads from its state machine? The primary: once it has
    /// committed its new-epoch barrier and applied everything committed. A backup: while
    /// it is in the view, heard from its primary within `dead_ticks` and applied what it
    /// knows to be committed (bounded staleness; reads are not linearizable).
    pub fn can_serve_reads(&self) -> bool {
        if self.pending_view.is_some() || self.applied != self.commit || !self.deferred.is_empty() {
            return false;
        }
        match self.role {
            Role::Primary => self.commit >= self.epoch_start,
            Role::Backup => {
                self.installing.is_none()
                    && self
                        .last_primary_contact
                        .is_some_and(|t| self.now - t <= self.config.dead_ticks)
                    && self.matched >= self.commit
                    && self.applied >= self.primary_commit
            }
            Role::Idle => false,
        }
    }

    // ----- helpers --------------------------------------------------------------------

    fn epoch(&self) -> Epoch {
        self.view.as_ref().map_or(0, |v| v.epoch)
    }

    fn latest_view(&self) -> Option<&View> {
        self.pending_view.as_ref().or(self.view.as_ref())
    }

    fn term_at(&self, index: LogIndex) -> Option<Epoch> {
        if index == self.snap.index {
            return Some(self.snap.epoch);
        }
        if index < self.snap.index {
            return None;
        }
        self.log
            .get((index - self.snap.index - 1) as usize)
            .map(|e| e.epoch)
    }

    fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snap.index {
            return None;
        }
        self.log.get((index - self.snap.index - 1) as usize)
    }

    fn may_lead(&self, epoch: Epoch) -> bool {
        self.vs_confirmed
            && epoch > self.fence
            && (!self.fresh || self.lead_from.is_some_and(|f| epoch >= f))
    }

    fn ping(&self, out: &mut Vec<Command>) {
        let epoch = match self.role {
            Role::Primary | Role::Backup if self.pending_view.is_none() => self.epoch(),
            _ => 0,
        };
        out.push(Command::PingVs(Ping {
            from: self.id,
            incarnation: self.incarnation,
            epoch,
            applied: self.applied,
            synced: self.synced_backups(),
            fence: self.fence,
        }));
    }

    fn apply_committed(&mut self, out: &mut Vec<Command>) {
        while self.applied < self.commit {
            let Some(e) = self.entry(self.applied + 1) else {
                break;
            };
            let entry = e.clone();
            self.applied += 1;
            out.push(Command::Apply { entry });
        }
    }

    fn maybe_compact(&mut self, out: &mut Vec<Command>) {
        if !self.snapshot_requested
            && self.log.len() > self.config.max_retained_log
            && self.applied > self.snap.index
        {
            self.snapshot_requested = true;
            out.push(Command::TakeSnapshot);
        }
    }

    fn step_down(&mut self, out: &mut Vec<Command>) {
        for (_, request) in std::mem::take(&mut self.pending) {
            out.push(Command::Reply {
                request,
                outcome: Outcome::Retry,
            });
        }
        self.progress.clear();
        self.role = Role::Idle;
    }

    /// Learn a view (from the VS or a peer); persist it before acting in it.
    fn adopt_view(&mut self, v: View, out: &mut Vec<Command>) {
        if v.epoch <= self.known_epoch() {
            return;
        }
        if self.role == Role::Primary {
            if !self.config.fencing && v.primary != self.id {
                return; // mutation: never step down
            }
            self.step_down(out);
        }
        self.role = Role::Idle;
        self.pending_view = Some(v.clone());
        out.push(Command::PersistView(v));
    }

    fn activate(&mut self, v: View, out: &mut Vec<Command>) {
        let epoch_changed = self.epoch() != v.epoch;
        self.view = Some(v.clone());
        if epoch_changed {
            self.matched = self.commit;
            self.acked = 0;
            self.follow = Some((v.primary, v.epoch));
        }
        if v.primary == self.id && self.may_lead(v.epoch) {
            self.become_primary(out);
        } else if v.is_backup(self.id) {
            self.role = Role::Backup;
            if epoch_changed {
                self.last_primary_contact = None;
                self.primary_commit = 0;
            }
        } else {
            self.role = Role::Idle;
        }
        self.ping(out);
    }

    fn become_primary(&mut self, out: &mut Vec<Command>) {
        self.role = Role::Primary;
        self.epoch_start = self.last_index();
        let next = self.last_index() + 1;
        let backups = self
            .view
            .as_ref()
            .map(|v| v.backups.clone())
            .unwrap_or_default();
        self.progress = backups
            .iter()
            .map(|b| {
                (
                    *b,
                    Progress {
                        matched: 0,
                        next,
                        snapshot_sent_at: None,
                    },
                )
            })
            .collect();
        for b in backups {
            self.send_append(b, out);
        }
        self.try_commit(out);
    }

    /// Primary: send the next batch (or a heartbeat, or a snapshot request) to `b`.
    fn send_append(&mut self, b: ReplicaId, out: &mut Vec<Command>) {
        let last = self.last_index();
        let Some(p) = self.progress.get(&b) else {
            return;
        };
        let next = p.next.min(last + 1).max(1);
        if next <= self.snap.index {
            let due = match p.snapshot_sent_at {
                None => true,
                Some(t) => self.now >= t + self.config.dead_ticks,
            };
            if due {
                self.progress.get_mut(&b).expect("exists").snapshot_sent_at = Some(self.now);
                out.push(Command::SendSnapshot { to: b });
            }
            return;
        }
        let prev_index = next - 1;
        let prev_epoch = self.term_at(prev_index).expect("prev retained");
        // Entries are sent whether or not they are durable here yet: the restart fence
        // keeps a restarted primary from re-using an (index, epoch) a backup may hold.
        let upto = last.min(next - 1 + self.config.max_entries_per_msg as u64);
        let entries: Vec<Entry> = (next..=upto)
            .map(|i| self.entry(i).expect("retained").clone())
            .collect();
        self.progress.get_mut(&b).expect("exists").next = upto + 1;
        out.push(Command::Send {
            to: b,
            msg: Msg::Replicate {
                view: self.view.clone().expect("primary has a view"),
                prev_index,
                prev_epoch,
                entries,
                commit: self.commit,
            },
        });
    }

    fn try_commit(&mut self, out: &mut Vec<Command>) {
        if self.role != Role::Primary {
            return;
        }
        let mut c = self.persisted.min(self.last_index());
        if self.config.sync_ack {
            for p in self.progress.values() {
                c = c.min(p.matched);
            }
        }
        if c <= self.commit {
            return;
        }
        self.commit = c;
        self.apply_committed(out);
        let done: Vec<LogIndex> = self.pending.range(..=c).map(|(i, _)| *i).collect();
        for index in done {
            let request = self.pending.remove(&index).expect("exists");
            out.push(Command::Reply {
                request,
                outcome: Outcome::Committed { index },
            });
        }
        self.maybe_compact(out);
    }

    fn send_ack(&mut self, out: &mut Vec<Command>, force: bool) {
        if self.role != Role::Backup && self.config.fencing {
            return;
        }
        let Some((to, epoch)) = self.follow else {
            return;
        };
        let ackable = self.matched.min(self.persisted);
        if force || ackable > self.acked {
            self.acked = self.acked.max(ackable);
            out.push(Command::Send {
                to,
                msg: Msg::Ack {
                    epoch,
                    matched: ackable,
                },
            });
        }
    }

    // ----- event handlers -------------------------------------------------------------

    fn on_tick(&mut self, out: &mut Vec<Command>) {
        self.now += 1;
        if self.now.checked_rem(self.config.heartbeat_ticks.max(1)) != Some(0) {
            return;
        }
        self.ping(out);
        if self.role == Role::Primary {
            let backups: Vec<ReplicaId> = self.progress.keys().copied().collect();
            for b in backups {
                let p = self.progress.get_mut(&b).expect("exists");
                p.next = p.matched + 1; // retransmit anything unacknowledged
                self.send_append(b, out);
            }
        }
        self.maybe_compact(out);
    }

    fn on_client_write(&mut self, request: RequestId, data: Vec<u8>, out: &mut Vec<Command>) {
        if self.role != Role::Primary || self.pending_view.is_some() {
            let hint = self
                .latest_view()
                .map(|v| v.primary)
                .filter(|p| *p != self.id);
            out.push(Command::Reply {
                request,
                outcome: Outcome::NotPrimary { hint },
            });
            return;
        }
        let entry = Entry {
            index: self.last_index() + 1,
            epoch: self.epoch(),
            data,
        };
        self.pending.insert(entry.index, request);
        self.log.push_back(entry.clone());
        out.push(Command::Persist {
            entries: vec![entry],
        });
        // Sent now, while it is being persisted here: the fsyncs overlap.
        let backups: Vec<ReplicaId> = self.progress.keys().copied().collect();
        for b in backups {
            self.send_append(b, out);
        }
    }

    fn on_vs_reply(&mut self, view: Option<View>, lead_from: Epoch, out: &mut Vec<Command>) {
        if lead_from != Epoch::MAX {
            self.vs_confirmed = true;
            if self.fresh {
                self.lead_from = Some(lead_from);
            }
            let lead_now = self.role == Role::Idle
                && self.pending_view.is_none()
                && view.as_ref().map(|v| v.epoch) == self.view.as_ref().map(|v| v.epoch)
                && self
                    .view
                    .as_ref()
                    .is_some_and(|v| v.primary == self.id && self.may_lead(v.epoch));
            if lead_now {
                self.become_primary(out);
                self.ping(out);
            }
        }
        if let Some(v) = view {
            self.adopt_view(v, out);
        }
    }

    fn on_persisted(&mut self, index: LogIndex, epoch: Epoch, out: &mut Vec<Command>) {
        if index <= self.persisted || self.term_at(index) != Some(epoch) {
            return; // stale completion (the entry was since truncated or compacted)
        }
        self.persisted = index.min(self.last_index());
        match self.role {
            Role::Primary => self.try_commit(out),
            Role::Backup => self.send_ack(out, false),
            Role::Idle => {}
        }
    }

    fn on_message(&mut self, from: ReplicaId, msg: Msg, out: &mut Vec<Command>) {
        if self.config.fencing {
            let mine = self.known_epoch();
            let theirs = msg.epoch();
            if theirs < mine {
                if !matches!(msg, Msg::Reject { .. }) {
                    if let Some(v) = self.latest_view().cloned() {
                        out.push(Command::Send {
                            to: from,
                            msg: Msg::Reject { view: v },
                        });
                    }
                }
                return;
            }
            if theirs > mine {
                match msg {
                    Msg::Replicate { view, .. }
                    | Msg::Snapshot { view, .. }
                    | Msg::Reject { view } => self.adopt_view(view, out),
                    // We are behind but cannot learn the view from an ack: ask the VS.
                    Msg::Ack { .. } | Msg::Nack { .. } => self.ping(out),
                }
                return;
            }
            if self.pending_view.is_some() {
                return; // same epoch as a view we have not persisted yet: retried later
            }
        }
        match msg {
            Msg::Replicate {
                view,
                prev_index,
                prev_epoch,
                entries,
                commit,
            } => self.on_replicate(from, view, prev_index, prev_epoch, entries, commit, out),
            Msg::Snapshot { view, meta, data } => self.on_snapshot_msg(from, view, meta, data, out),
            Msg::Ack { matched, .. } => self.on_ack(from, matched, out),
            Msg::Nack { commit, .. } => self.on_nack(from, commit, out),
            Msg::Reject { .. } => {} // equal epoch: nothing to learn
        }
    }

    /// Is `from` the primary we should follow for this message?
    fn accepts_primary(&self, from: ReplicaId, view: &View) -> bool {
        if !self.config.fencing {
            return true; // mutation: accept any message from anyone
        }
        self.role == Role::Backup && self.view.as_ref() == Some(view) && view.primary == from
    }

    #[allow(clippy::too_many_arguments)]
    fn on_replicate(
        &mut self,
        from: ReplicaId,
        view: View,
        mut prev_index: LogIndex,
        mut prev_epoch: Epoch,
        mut entries: Vec<Entry>,
        commit: LogIndex,
        out: &mut Vec<Command>,
    ) {
        let epochs = self.config.fencing;
        if !self.accepts_primary(from, &view)
            || !well_formed(&view, prev_index, prev_epoch, &entries, epochs)
        {
            return;
        }
        self.last_primary_contact = Some(self.now);
        self.primary_commit = self.primary_commit.max(commit);
        self.follow = Some((from, view.epoch));
        if self.installing.is_some() {
            return;
        }
        let nack = |me: &Self, out: &mut Vec<Command>| {
            out.push(Command::Send {
                to: from,
                msg: Msg::Nack {
                    epoch: view.epoch,
                    commit: me.commit,
                },
            });
        };
        // Entries covered by our snapshot are committed and therefore identical.
        if prev_index < self.snap.index {
            let skip = (self.snap.index - prev_index) as usize;
            if skip > entries.len() {
                nack(self, out);
                return;
            }
            entries.drain(..skip);
            prev_index = self.snap.index;
            prev_epoch = self.snap.epoch;
        }
        if self.term_at(prev_index) != Some(prev_epoch) {
            nack(self, out);
            return;
        }
        let verified = prev_index + entries.len() as u64;
        let mut new = Vec::new();
        for e in entries {
            if !new.is_empty() {
                self.log.push_back(e.clone());
                new.push(e);
                continue;
            }
            match self.term_at(e.index) {
                Some(t) if t == e.epoch => {}
                Some(_) => {
                    if e.index <= self.commit {
                        // Never truncate a committed entry (cannot happen with fencing).
                        nack(self, out);
                        return;
                    }
                    let keep = (e.index - self.snap.index - 1) as usize;
                    self.log.truncate(keep);
                    self.persisted = self.persisted.min(e.index - 1);
                    self.acked = self.acked.min(e.index - 1);
                    self.matched = self.matched.min(e.index - 1);
                    self.log.push_back(e.clone());
                    new.push(e);
                }
                None => {
                    self.log.push_back(e.clone());
                    new.push(e);
                }
            }
        }
        let new_entries = new.len();
        if !new.is_empty() {
            out.push(Command::Persist { entries: new });
        }
        self.matched = self.matched.max(verified);
        let c = commit.min(verified);
        if c > self.commit {
            self.commit = c;
            self.apply_committed(out);
            self.maybe_compact(out);
        }
        // New entries are acknowledged once durable (from `on_persisted`); otherwise
        // answer at once so the primary learns our position.
        self.send_ack(out, new_entries == 0);
    }

    fn on_snapshot_msg(
        &mut self,
        from: ReplicaId,
        view: View,
        meta: SnapshotMeta,
        data: Vec<u8>,
        out: &mut Vec<Command>,
    ) {
        if !self.accepts_primary(from, &view) || (self.config.fencing && meta.epoch > view.epoch) {
            return;
        }
        self.last_primary_contact = Some(self.now);
        self.primary_commit = self.primary_commit.max(meta.index);
        self.follow = Some((from, view.epoch));
        if self.installing.is_some() {
            return;
        }
        if meta.index <= self.commit {
            self.matched = self.matched.max(self.commit);
            self.send_ack(out, true);
            return;
        }
        self.installing = Some(meta);
        out.push(Command::InstallSnapshot { meta, data });
    }

    fn on_snapshot_installed(&mut self, meta: SnapshotMeta, out: &mut Vec<Command>) {
        if self.installing != Some(meta) {
            return;
        }
        self.installing = None;
        self.snap = meta;
        self.log.clear();
        self.persisted = meta.index;
        self.commit = self.commit.max(meta.index);
        self.applied = meta.index;
        self.matched = self.matched.max(meta.index);
        self.acked = self.acked.min(meta.index);
        self.snapshot_requested = false;
        self.send_ack(out, true);
    }

    fn on_snapshot_taken(&mut self, meta: SnapshotMeta, out: &mut Vec<Command>) {
        self.snapshot_requested = false;
        if meta.index <= self.snap.index || meta.index > self.applied {
            return;
        }
        debug_assert_eq!(self.term_at(meta.index), Some(meta.epoch));
        let drop = (meta.index - self.snap.index) as usize;
        self.log.drain(..drop);
        self.snap = meta;
        self.maybe_compact(out);
    }

    fn on_snapshot_for_peer(
        &mut self,
        to: ReplicaId,
        meta: SnapshotMeta,
        data: Vec<u8>,
        out: &mut Vec<Command>,
    ) {
        if self.role != Role::Primary || meta.index > self.commit {
            return;
        }
        let Some(p) = self.progress.get_mut(&to) else {
            return;
        };
        p.next = p.next.max(meta.index + 1);
        p.snapshot_sent_at = Some(self.now);
        out.push(Command::Send {
            to,
            msg: Msg::Snapshot {
                view: self.view.clone().expect("primary has a view"),
                meta,
                data,
            },
        });
    }

    fn on_ack(&mut self, from: ReplicaId, matched: LogIndex, out: &mut Vec<Command>) {
        if self.role != Role::Primary {
            return;
        }
        let last = self.last_index();
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        let matched = matched.min(last);
        if matched > p.matched {
            p.matched = matched;
            p.snapshot_sent_at = None;
        }
        p.next = p.next.max(p.matched + 1);
        let more = p.next <= last;
        self.try_commit(out);
        if more {
            self.send_append(from, out);
        }
    }

    fn on_nack(&mut self, from: ReplicaId, commit: LogIndex, out: &mut Vec<Command>) {
        if self.role != Role::Primary {
            return;
        }
        let last = self.last_index();
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.next = p.matched.max(commit).min(last) + 1;
        self.send_append(from, out);
    }
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
