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
//!
//! # Layout
//!
//! - this module: the replica's state ([`Replica`]), its configuration and what it finds
//!   on disk, the event dispatch ([`Replica::step`]), the accessors, and the handlers every
//!   role shares (ticks, disk completions, the epoch check of peer messages);
//! - `messages`: the values that cross a replica's boundary (views, entries, peer
//!   messages, events in, commands out) and [`well_formed`];
//! - `view`: learning, persisting and activating views, and pinging the view service;
//! - `primary`: the primary's side (client writes, replication to backups, commits);
//! - `backup`: the backup's side (the consistency check, truncation, acks);
//! - `snapshot`: compaction and state transfer by snapshot.
//!
//! [`Ping`]: crate::viewservice::Ping
//! [`Ping::synced`]: crate::viewservice::Ping::synced

use bincode::Options;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

mod backup;
mod messages;
mod primary;
mod snapshot;
mod view;

pub use messages::{well_formed, Command, Entry, Event, Msg, Outcome, RequestId, SnapshotMeta};

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

pub use crate::terms::{Epoch, LogIndex, ReplicaId, View};

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
    /// entries are retained in memory (only applied entries can be compacted), and once
    /// the retained entries are as large as the last snapshot (reckoned by the average
    /// size of the entries that snapshot replaced). The second rule keeps the bytes written
    /// for snapshots proportional to the bytes logged however large the state grows, at
    /// the price of a retained log (memory, replay after a restart) up to the state's size.
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
    /// Retained entries beyond which a snapshot is asked for (see
    /// [`Config::max_retained_log`]).
    compact_after: usize,
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
        let compact_after = config.max_retained_log;
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
            compact_after,
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
            Event::SnapshotTaken { meta, bytes } => self.on_snapshot_taken(meta, bytes, out),
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

    // ----- event handlers every role shares ---------------------------------------------

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
}
