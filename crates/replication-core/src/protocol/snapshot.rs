//! Snapshots: compaction (asking the runtime for a snapshot once the retained log is too
//! long, then dropping the prefix it covers) and state transfer (the primary ships its
//! snapshot to a backup that is behind its retained log; the backup installs it).

use super::{Command, Entry, Msg, Replica, ReplicaId, Role, SnapshotMeta, View};

impl Replica {
    pub(super) fn maybe_compact(&mut self, out: &mut Vec<Command>) {
        if !self.snapshot_requested
            && self.log.len() > self.compact_after
            && self.applied > self.snap.index
        {
            self.snapshot_requested = true;
            out.push(Command::TakeSnapshot);
        }
    }

    pub(super) fn on_snapshot_taken(
        &mut self,
        meta: SnapshotMeta,
        bytes: u64,
        out: &mut Vec<Command>,
    ) {
        self.snapshot_requested = false;
        if meta.index <= self.snap.index || meta.index > self.applied {
            return;
        }
        debug_assert_eq!(self.term_at(meta.index), Some(meta.epoch));
        let drop = (meta.index - self.snap.index) as usize;
        let dropped: u64 = self.log.drain(..drop).map(|e| entry_bytes(&e)).sum();
        self.compact_after = compact_after(self.config.max_retained_log, bytes, drop, dropped);
        self.snap = meta;
        self.maybe_compact(out);
    }

    pub(super) fn on_snapshot_for_peer(
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

    pub(super) fn on_snapshot_msg(
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

    pub(super) fn on_snapshot_installed(&mut self, meta: SnapshotMeta, out: &mut Vec<Command>) {
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
}

/// An entry's size as the log holds it: its data, its index and its epoch.
fn entry_bytes(e: &Entry) -> u64 {
    e.data.len() as u64 + 16
}

/// Retained entries beyond which the next snapshot is asked for: at least `min`, and as
/// many entries as fill `snapshot_bytes` at the average size of the `entries` entries
/// (`entries_bytes` in all) the last snapshot replaced.
fn compact_after(min: usize, snapshot_bytes: u64, entries: usize, entries_bytes: u64) -> usize {
    let per_entry = (entries_bytes / entries.max(1) as u64).max(1);
    let fill = usize::try_from(snapshot_bytes / per_entry).unwrap_or(usize::MAX);
    min.max(fill)
}
