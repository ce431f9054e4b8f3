//! The driver task of a replica: it owns the [`Replica`], turns every input (tick, client
//! write, peer message, view-service answer, disk completion) into an [`Event`], and
//! executes the resulting [`Command`]s in order: messages to the peers' sender tasks,
//! disk operations to the disk thread, entries to the state machine, answers to the
//! waiting clients, pings to the coordinators. It also keeps the read lease and the
//! published [`Status`](super::Status) up to date.
//!
//! It works in turns: each takes every input queued (up to 512), steps the replica
//! through them, then executes their commands together. So writes that arrive together
//! (a batch submitted with [`Node::submit_all`](super::Node::submit_all), or messages
//! carrying several entries) leave together: consecutive `Persist`s become one disk
//! operation (one write, one `fdatasync`, one completion), and every message is queued
//! before its sender wakes. Executing later in the turn changes nothing the protocol
//! sees: it only ever learns of execution through new events.

use super::disk::DiskOp;
use super::{Inner, Input, Node, Peer, ReplicaRole, StateMachine, SubmitError, WriteReply};
use crate::protocol::{
    Command, Epoch, Event, LogIndex, Outcome, Replica, ReplicaId, RequestId, Role, SnapshotMeta,
};
use crate::viewservice::Ping;
use crate::wire::{PingAnswer, PingRequest};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub(super) struct Driver<S: StateMachine> {
    pub(super) inner: Arc<Inner<S>>,
    pub(super) replica: Replica,
    pub(super) tx: mpsc::UnboundedSender<Input<S::Output>>,
    pub(super) disk: std::sync::mpsc::Sender<DiskOp>,
    pub(super) peers: HashMap<ReplicaId, Peer>,
    /// Index and epoch of the last entry applied to the state machine.
    pub(super) applied: (LogIndex, Epoch),
    /// Writes submitted together and not all answered, by the request id of their first
    /// (their requests are consecutive: a request's batch is the last one starting at or
    /// before it).
    pub(super) batches: BTreeMap<u64, Answers<S::Output>>,
    pub(super) outputs: HashMap<LogIndex, S::Output>,
    pub(super) next_request: u64,
}

impl<S: StateMachine> Driver<S> {
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input<S::Output>>) {
        let mut cmds = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(input) = next.take() {
                match input {
                    Input::Tick => self.replica.step(Event::Tick, &mut cmds),
                    Input::Members(members) => {
                        self.execute(&mut cmds);
                        self.set_members(members);
                    }
                    Input::Write { data, reply } if data.is_empty() => {
                        let _ = reply.send(Vec::new());
                    }
                    Input::Write { data, reply } => {
                        let first = self.next_request + 1;
                        self.batches.insert(first, Answers::new(data.len(), reply));
                        for data in data {
                            self.next_request += 1;
                            let request = RequestId(self.next_request);
                            self.replica
                                .step(Event::ClientWrite { request, data }, &mut cmds);
                        }
                    }
                    Input::VsAnswer {
                        view,
                        lead_from,
                        sent,
                    } => {
                        let names_me = view.as_ref().map(|v| (v.epoch, v.primary));
                        self.replica
                            .step(Event::VsReply { view, lead_from }, &mut cmds);
                        self.renew_lease(names_me, sent);
                    }
                    Input::Event(e) => self.replica.step(e, &mut cmds),
                    Input::Fatal(e) => {
                        self.execute(&mut cmds);
                        tracing::error!(id = self.replica.id(), error = %e, "disk failure: replica stops");
                        self.stop();
                        self.inner.failure.send_replace(Some(e));
                        return;
                    }
                    Input::Stop => {
                        self.execute(&mut cmds);
                        self.stop();
                        return;
                    }
                }
                handled += 1;
                if handled < 512 {
                    next = rx.try_recv().ok();
                }
            }
            // Once per turn, so the turn's writes leave together: one disk operation for
            // its consecutive entries, and every message queued before a sender wakes.
            self.execute(&mut cmds);
            self.publish_status();
        }
    }

    fn stop(&mut self) {
        for (_, answers) in std::mem::take(&mut self.batches) {
            answers.send();
        }
        let mut s = self.inner.status.write();
        s.up = false;
        s.serving_reads = false;
        s.role = ReplicaRole::Down;
    }

    /// A view-service answer naming this replica primary of the epoch it leads renews
    /// its read lease, counted from when the ping was sent.
    fn renew_lease(&self, view: Option<(Epoch, ReplicaId)>, sent: Instant) {
        let Some((epoch, primary)) = view else {
            return;
        };
        let leading = (self.replica.role() == Role::Primary)
            .then(|| self.replica.view().map(|v| v.epoch))
            .flatten();
        self.inner.read_lease.lock().renew(
            self.replica.id(),
            leading,
            (epoch, primary),
            sent + self.inner.opts.read_lease(),
        );
    }

    fn publish_status(&self) {
        let r = &self.replica;
        let view = r.view();
        let mut s = self.inner.status.write();
        s.up = true;
        s.role = r.role().into();
        let epoch = view.map_or(0, |v| v.epoch);
        if epoch != s.epoch && epoch != 0 {
            s.view_changes += 1;
        }
        s.epoch = epoch;
        s.primary = view.map(|v| v.primary);
        s.backups = view.map(|v| v.backups.clone()).unwrap_or_default();
        s.commit = r.commit_index();
        s.applied = r.applied_index();
        s.serving_reads = r.can_serve_reads();
    }

    fn execute(&mut self, cmds: &mut Vec<Command>) {
        let mut persist = Persists::default();
        for cmd in cmds.drain(..) {
            if other_disk_op(&cmd) {
                // Disk operations keep their order.
                persist.flush(&self.disk);
            }
            match cmd {
                Command::Send { to, msg } => {
                    if let Some(p) = self.peers.get(&to) {
                        // Full: the peer is not keeping up. Dropping is safe, the
                        // protocol retransmits what is unacknowledged at each heartbeat.
                        if p.tx.try_send(msg).is_err() {
                            self.inner
                                .dropped
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                Command::PingVs(ping) => self.ping_vs(ping),
                Command::Persist { entries } => persist.extend_contiguous(entries, &self.disk),
                Command::PersistView(view) => {
                    let _ = self.disk.send(DiskOp::View(view));
                }
                Command::Apply { entry } => {
                    match S::decode(&entry.data) {
                        Ok(command) => {
                            let out = self.inner.sm.write().apply(entry.index, command);
                            self.outputs.insert(entry.index, out);
                        }
                        // Every replica decodes the same bytes alike: all apply nothing.
                        Err(e) => {
                            tracing::error!(index = entry.index, error = %e, "applied an undecodable entry as nothing");
                        }
                    }
                    self.applied = (entry.index, entry.epoch);
                }
                Command::Reply { request, outcome } => {
                    let answer = match outcome {
                        Outcome::Committed { index } => match self.outputs.remove(&index) {
                            Some(out) => Ok(out),
                            None => {
                                tracing::error!(index, "committed entry without an applied answer");
                                Err(SubmitError::Retry)
                            }
                        },
                        Outcome::NotPrimary { hint } => Err(SubmitError::NotPrimary { hint }),
                        Outcome::Retry => Err(SubmitError::Retry),
                    };
                    self.answer(request.0, answer);
                }
                Command::TakeSnapshot => {
                    let data = self.inner.sm.read().snapshot();
                    let meta = SnapshotMeta {
                        index: self.applied.0,
                        epoch: self.applied.1,
                    };
                    let _ = self.disk.send(DiskOp::Snapshot {
                        meta,
                        data,
                        received: false,
                    });
                }
                Command::SendSnapshot { to } => {
                    let data = self.inner.sm.read().snapshot();
                    let meta = SnapshotMeta {
                        index: self.applied.0,
                        epoch: self.applied.1,
                    };
                    let _ = self
                        .tx
                        .send(Input::Event(Event::SnapshotForPeer { to, meta, data }));
                }
                Command::InstallSnapshot { meta, data } => {
                    let mut sm = (self.inner.initial)();
                    match sm.restore(&data) {
                        Ok(()) => {
                            *self.inner.sm.write() = sm;
                            self.applied = (meta.index, meta.epoch);
                            let _ = self.disk.send(DiskOp::Snapshot {
                                meta,
                                data,
                                received: true,
                            });
                        }
                        Err(e) => {
                            // A peer's snapshot that does not restore is refused: the
                            // state and the disk stay as they were.
                            tracing::warn!(error = %e, index = meta.index, "refused a snapshot that does not restore");
                            let _ = self.tx.send(Input::Event(Event::SnapshotRefused { meta }));
                        }
                    }
                }
            }
        }
        persist.flush(&self.disk);
        // Answers not claimed by a reply in the same turn belong to entries applied on a
        // backup or replayed after a restart: nobody waits for them.
        self.outputs.clear();
    }

    /// Records the answer to `request` in its batch, and sends the batch's answers once
    /// every write of it has one.
    fn answer(&mut self, request: u64, answer: Result<S::Output, SubmitError>) {
        let Some((&first, answers)) = self.batches.range_mut(..=request).next_back() else {
            return;
        };
        if answers.set((request - first) as usize, answer) {
            let answers = self.batches.remove(&first).expect("present");
            answers.send();
        }
    }

    /// Follows the member table: a sender for every new peer, none for retired ones.
    fn set_members(&mut self, members: BTreeMap<ReplicaId, String>) {
        let me = self.inner.opts.id;
        *self.inner.members.write() = members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, u)| (*id, u.clone()))
            .collect();
        let before = self.peers.len();
        self.peers
            .retain(|id, p| members.get(id).is_some_and(|u| *u == p.base));
        for (id, base) in members {
            if id != me && !self.peers.contains_key(&id) {
                let node = Node {
                    inner: self.inner.clone(),
                };
                self.peers.insert(id, node.peer(&base));
                tracing::info!(id, base, "new peer");
            }
        }
        if self.peers.len() != before {
            tracing::info!(me, peers = ?self.peers.keys().collect::<Vec<_>>(), "peers changed");
        }
    }

    /// Pings the coordinator leader. The read lease an answer grants is counted from
    /// before the first attempt, wherever the answer came from.
    fn ping_vs(&self, ping: Ping) {
        let inner = self.inner.clone();
        let tx = self.tx.clone();
        let tick = self.inner.opts.tick;
        let node = Node {
            inner: self.inner.clone(),
        };
        node.spawn(async move {
            let sent = Instant::now();
            let request = PingRequest {
                ping,
                url: inner.opts.url.clone(),
            };
            let answer = inner.transport.ping(&inner.opts.kind, request, tick).await;
            let Some(PingAnswer {
                view,
                lead_from,
                members,
                ..
            }) = answer
            else {
                return;
            };
            if !members.is_empty() {
                let _ = tx.send(Input::Members(members));
            }
            let _ = tx.send(Input::VsAnswer {
                view,
                lead_from,
                sent,
            });
        });
    }
}

/// Whether `cmd` becomes a disk operation other than a `Persist`: the `Persist`s before it
/// go to the disk first. Messages, answers and applies need no order with respect to
/// `Persist`s: the protocol learns of a write to disk only from its `Persisted`. (A match
/// with no wildcard: a new command must take a side.)
fn other_disk_op(cmd: &Command) -> bool {
    match cmd {
        Command::PersistView(_) | Command::TakeSnapshot | Command::InstallSnapshot { .. } => true,
        Command::Persist { .. }
        | Command::Send { .. }
        | Command::PingVs(_)
        | Command::Apply { .. }
        | Command::Reply { .. }
        | Command::SendSnapshot { .. } => false,
    }
}

/// Consecutive `Persist` commands whose entries follow on from each other, sent to the
/// disk thread as one operation: it writes them as it would have written them one after
/// the other (the first discards what its first index replaces, the rest only append),
/// and reports one `Persisted` for the last, which covers the earlier ones.
#[derive(Default)]
struct Persists(Vec<crate::protocol::Entry>);

impl Persists {
    fn extend_contiguous(
        &mut self,
        entries: Vec<crate::protocol::Entry>,
        disk: &std::sync::mpsc::Sender<DiskOp>,
    ) {
        let follows = match (self.0.last(), entries.first()) {
            (Some(last), Some(first)) => first.index == last.index + 1,
            _ => true,
        };
        if !follows {
            self.flush(disk);
        }
        self.0.extend(entries);
    }

    fn flush(&mut self, disk: &std::sync::mpsc::Sender<DiskOp>) {
        if !self.0.is_empty() {
            let _ = disk.send(DiskOp::Persist(std::mem::take(&mut self.0)));
        }
    }
}

/// The answers to writes submitted together, sent in one reply once the last is in.
pub(super) struct Answers<O> {
    answers: Vec<Option<Result<O, SubmitError>>>,
    left: usize,
    reply: WriteReply<O>,
}

impl<O> Answers<O> {
    fn new(n: usize, reply: WriteReply<O>) -> Answers<O> {
        Answers {
            answers: (0..n).map(|_| None).collect(),
            left: n,
            reply,
        }
    }

    /// Records the answer in `slot` unless it has one (the first answer stands); true
    /// once every write has one.
    fn set(&mut self, slot: usize, answer: Result<O, SubmitError>) -> bool {
        if let Some(a @ None) = self.answers.get_mut(slot) {
            *a = Some(answer);
            self.left -= 1;
        }
        self.left == 0
    }

    /// Sends the answers; a write still without one gets [`SubmitError::Retry`] (its
    /// fate is unknown: the replica stopped).
    fn send(self) {
        let answers = self.answers.into_iter();
        let _ = self.reply.send(
            answers
                .map(|a| a.unwrap_or(Err(SubmitError::Retry)))
                .collect(),
        );
    }
}
