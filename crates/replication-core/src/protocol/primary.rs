//! The primary's side: accepting client writes, sending entries (or a snapshot request)
//! to every backup, tracking each backup's progress from its acks and nacks, committing
//! what the primary and every backup hold durably, and stepping down.

use super::{
    Command, Entry, LogIndex, Msg, Outcome, Progress, Replica, ReplicaId, RequestId, Role,
};

impl Replica {
    pub(super) fn become_primary(&mut self, out: &mut Vec<Command>) {
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
    pub(super) fn send_append(&mut self, b: ReplicaId, out: &mut Vec<Command>) {
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

    pub(super) fn try_commit(&mut self, out: &mut Vec<Command>) {
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

    pub(super) fn step_down(&mut self, out: &mut Vec<Command>) {
        for (_, request) in std::mem::take(&mut self.pending) {
            out.push(Command::Reply {
                request,
                outcome: Outcome::Retry,
            });
        }
        self.progress.clear();
        self.role = Role::Idle;
    }

    pub(super) fn on_client_write(
        &mut self,
        request: RequestId,
        data: Vec<u8>,
        out: &mut Vec<Command>,
    ) {
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

    /// This primary's last index and what it knows of backup `from`; `None` when this
    /// replica is not the primary or `from` is not one of its backups.
    fn backup_progress(&mut self, from: ReplicaId) -> Option<(LogIndex, &mut Progress)> {
        if self.role != Role::Primary {
            return None;
        }
        let last = self.last_index();
        Some((last, self.progress.get_mut(&from)?))
    }

    pub(super) fn on_ack(&mut self, from: ReplicaId, matched: LogIndex, out: &mut Vec<Command>) {
        let Some((last, p)) = self.backup_progress(from) else {
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

    pub(super) fn on_nack(&mut self, from: ReplicaId, commit: LogIndex, out: &mut Vec<Command>) {
        let Some((last, p)) = self.backup_progress(from) else {
            return;
        };
        p.next = p.matched.max(commit).min(last) + 1;
        self.send_append(from, out);
    }
}
