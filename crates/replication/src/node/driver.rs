//! The driver task of a replica: it owns the [`Replica`], turns every input (tick, client
//! write, peer message, view-service answer, disk completion) into an [`Event`], and
//! executes the resulting [`Command`]s in order: messages to the peers' sender tasks,
//! disk operations to the disk thread, entries to the state machine, answers to the
//! waiting clients, pings to the coordinators. It also keeps the read lease and the
//! published [`Status`](super::Status) up to date.

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
    pub(super) pending: HashMap<u64, WriteReply<S::Output>>,
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
                    Input::Members(members) => self.set_members(members),
                    Input::Write { data, reply } => {
                        self.next_request += 1;
                        self.pending.insert(self.next_request, reply);
                        let request = RequestId(self.next_request);
                        self.replica
                            .step(Event::ClientWrite { request, data }, &mut cmds);
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
                        tracing::error!(id = self.replica.id(), error = %e, "disk failure: replica stops");
                        self.stop();
                        self.inner.failure.send_replace(Some(e));
                        return;
                    }
                    Input::Stop => {
                        self.stop();
                        return;
                    }
                }
                self.execute(&mut cmds);
                handled += 1;
                if handled < 512 {
                    next = rx.try_recv().ok();
                }
            }
            self.publish_status();
        }
    }

    fn stop(&mut self) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(SubmitError::Retry));
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
        for cmd in cmds.drain(..) {
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
                Command::Persist { entries } => {
                    let _ = self.disk.send(DiskOp::Persist(entries));
                }
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
                    if let Some(reply) = self.pending.remove(&request.0) {
                        let _ = reply.send(answer);
                    }
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
        // Answers not claimed by a reply in the same step belong to entries applied on a
        // backup or replayed after a restart: nobody waits for them.
        self.outputs.clear();
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
