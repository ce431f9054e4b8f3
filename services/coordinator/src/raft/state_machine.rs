//! The Raft state machine: the [`ControlState`] every coordinator applies committed
//! proposals to, in memory, with snapshots written atomically (fsynced) to
//! `<data dir>/control.snapshot`. On start the snapshot is loaded and openraft re-applies
//! the committed log after it.
use super::{Entry, LogId, Membership, NodeId, OpenError, SnapshotMeta, StorageError, TypeConfig};
use crate::state::{Applied, ControlState};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the state machine holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    pub control: ControlState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

struct Inner {
    path: PathBuf,
    data: RwLock<SmData>,
    snapshot: Mutex<Option<StoredSnapshot>>,
    /// Counts applied batches and installed snapshots, for those waiting for a change.
    applied: tokio::sync::watch::Sender<u64>,
}

/// The coordinator's state machine (cheap to clone: a shared handle).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

fn sm_error(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

impl StateMachineStore {
    /// Opens the state machine of the data directory `dir`: its last snapshot, if any.
    pub fn open(dir: &Path) -> Result<StateMachineStore, OpenError> {
        let path = dir.join("control.snapshot");
        let undecodable = |source| OpenError::Decode {
            path: path.clone(),
            what: String::new(),
            source,
        };
        let (data, snapshot) = match std::fs::read(&path) {
            Ok(bytes) => {
                let s: StoredSnapshot =
                    bookstore_replication_core::protocol::decode(&bytes).map_err(undecodable)?;
                let control: ControlState =
                    bookstore_replication_core::protocol::decode(&s.data).map_err(undecodable)?;
                let data = SmData {
                    last_applied: s.meta.last_log_id,
                    membership: s.meta.last_membership.clone(),
                    control,
                };
                (data, Some(s))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (SmData::default(), None),
            Err(source) => return Err(OpenError::Io { path, source }),
        };
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                path,
                data: RwLock::new(data),
                snapshot: Mutex::new(snapshot),
                applied: tokio::sync::watch::channel(0).0,
            }),
        })
    }

    /// Reads the applied state.
    pub fn read<R>(&self, f: impl FnOnce(&SmData) -> R) -> R {
        f(&self.inner.data.read())
    }

    /// A receiver that sees every change of the applied state.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    fn changed(&self) {
        self.inner.applied.send_modify(|n| *n += 1);
    }

    /// Writes `s` atomically and durably (temp file, fsync, rename, fsync directory).
    fn store(&self, s: StoredSnapshot) -> std::io::Result<()> {
        let bytes = bincode::serialize(&s).expect("snapshot encodes");
        // Owner only (0600), as before.
        let how = bookstore_common::files::Replace {
            mode: Some(0o600),
            sync_dir: true,
        };
        bookstore_common::files::replace(&self.inner.path, &[&bytes], how)?;
        *self.inner.snapshot.lock() = Some(s);
        Ok(())
    }

    async fn store_blocking(&self, s: StoredSnapshot) -> Result<(), StorageError> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.store(s)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(sm_error(ErrorVerb::Write, e)),
            Err(e) => Err(sm_error(ErrorVerb::Write, e)),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let d = self.inner.data.read();
            let id = d.last_applied.map_or_else(
                || "none".to_string(),
                |l| format!("{}-{}", l.leader_id, l.index),
            );
            let meta = SnapshotMeta {
                last_log_id: d.last_applied,
                last_membership: d.membership.clone(),
                snapshot_id: id,
            };
            (meta, bincode::serialize(&d.control).expect("state encodes"))
        };
        self.store_blocking(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let d = self.inner.data.read();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut d = self.inner.data.write();
        for e in entries {
            d.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => Applied::Done { version: 0 },
                EntryPayload::Normal(p) => d.control.apply(p),
                EntryPayload::Membership(m) => {
                    let ids: Vec<NodeId> = m.nodes().map(|(id, _)| *id).collect();
                    d.control.saw_coordinators(ids);
                    d.membership = Membership::new(Some(e.log_id), m);
                    Applied::Done { version: 0 }
                }
            });
        }
        drop(d);
        self.changed();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let control: ControlState = bookstore_replication_core::protocol::decode(&data)
            .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        self.store_blocking(StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .await?;
        *self.inner.data.write() = SmData {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            control,
        };
        self.changed();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.inner.snapshot.lock().clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
