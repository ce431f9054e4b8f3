//! The backup's side: accepting [`Msg::Replicate`] only from the primary of its view,
//! the consistency check on `(prev_index, prev_epoch)`, truncating a deposed primary's
//! uncommitted suffix, and acknowledging entries once they match and are durable.

use super::{well_formed, Command, Entry, Epoch, LogIndex, Msg, Replica, ReplicaId, Role, View};

impl Replica {
    /// Is `from` the primary we should follow for this message?
    pub(super) fn accepts_primary(&self, from: ReplicaId, view: &View) -> bool {
        if !self.config.fencing {
            return true; // mutation: accept any message from anyone
        }
        self.role == Role::Backup && self.view.as_ref() == Some(view) && view.primary == from
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_replicate(
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

    pub(super) fn send_ack(&mut self, out: &mut Vec<Command>, force: bool) {
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
}
