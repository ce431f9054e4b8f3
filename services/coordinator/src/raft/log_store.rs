//! The Raft log and vote, durable in the project's write-ahead log
//! (`bookstore_replication::wal`) under the coordinator's data directory.
//!
//! Every entry is kept in memory too (the coordinator's log is small: one entry per
//! decision) and written to the WAL as `index + 1` -> bincode entry, fsynced before
//! openraft is told it is durable. The vote and the last purged log id live in the WAL's
//! meta value (replaced atomically, fsynced). A purge is recorded there and then the
//! WAL's snapshot marker at that index lets it delete the segments below.
use super::{Entry, LogId, NodeId, OpenError, StorageError, TypeConfig, Vote};
use bookstore_replication::wal::{Wal, WalError, WalOptions};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogId, StorageIOError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

/// What the WAL's meta value holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

struct Inner {
    wal: Wal,
    entries: BTreeMap<u64, Entry>,
    meta: Meta,
}

/// The durable Raft log of one coordinator (cheap to clone: a shared handle).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

impl LogStore {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> Result<LogStore, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let options = WalOptions {
            segment_max_bytes: 1 << 20,
            ..WalOptions::default()
        };
        let (wal, rec) = Wal::open(dir, options).map_err(|source| OpenError::Wal {
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some(repair) = &rec.tail_repair {
            tracing::warn!(?repair, "repaired a torn tail of the coordinator log");
        }
        let meta: Meta = match &rec.meta {
            Some(bytes) => {
                bookstore_replication_core::protocol::decode(bytes).map_err(|source| {
                    OpenError::Decode {
                        path: dir.to_path_buf(),
                        what: "coordinator meta: ".into(),
                        source,
                    }
                })?
            }
            None => Meta::default(),
        };
        let purged = meta.last_purged.map_or(0, |l| l.index + 1);
        let mut entries = BTreeMap::new();
        for r in rec.records {
            if r.index <= purged {
                continue;
            }
            let e: Entry =
                bookstore_replication_core::protocol::decode(&r.payload).map_err(|source| {
                    OpenError::Decode {
                        path: dir.to_path_buf(),
                        what: format!("log record {}: ", r.index),
                        source,
                    }
                })?;
            entries.insert(e.log_id.index, e);
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner { wal, entries, meta })),
        })
    }

    /// Runs `f` on the log on a blocking thread (it may fsync); a failure is reported to
    /// openraft as a failed `verb` on `subject`.
    async fn blocking<R: Send + 'static>(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        f: impl FnOnce(&mut Inner) -> Result<R, WalError> + Send + 'static,
    ) -> Result<R, StorageError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&mut inner.lock())).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(io_error(subject, verb, e)),
            Err(e) => Err(io_error(subject, verb, e)),
        }
    }

    /// Index of the last entry and of the last purged one (for status pages).
    pub fn bounds(&self) -> (Option<u64>, Option<u64>) {
        let inner = self.inner.lock();
        (
            inner.entries.keys().next_back().copied(),
            inner.meta.last_purged.map(|l| l.index),
        )
    }
}

impl Inner {
    fn write_meta(&mut self) -> Result<(), WalError> {
        let bytes = bincode::serialize(&self.meta).expect("meta encodes");
        self.wal.write_meta(&bytes)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock();
        let last_purged_log_id = inner.meta.last_purged;
        let last_log_id = inner
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(ErrorSubject::Vote, ErrorVerb::Write, move |inner| {
            inner.meta.vote = Some(vote);
            inner.write_meta()
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.lock().meta.vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let result = self
            .blocking(ErrorSubject::Logs, ErrorVerb::Write, move |inner| {
                for e in entries {
                    let at = e.log_id.index + 1;
                    if inner.wal.last_index().is_some_and(|l| l >= at) {
                        inner.wal.truncate_suffix(at)?;
                        inner.entries.split_off(&e.log_id.index);
                    }
                    let bytes = bincode::serialize(&e).expect("entries encode");
                    inner.wal.append(at, &bytes)?;
                    inner.entries.insert(e.log_id.index, e);
                }
                inner.wal.sync()
            })
            .await;
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(ErrorSubject::Logs, ErrorVerb::Delete, move |inner| {
            inner.entries.split_off(&log_id.index);
            if inner.wal.last_index().is_some_and(|l| l > log_id.index) {
                inner.wal.truncate_suffix(log_id.index + 1)?;
            }
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(ErrorSubject::Logs, ErrorVerb::Delete, move |inner| {
            inner.meta.last_purged = Some(log_id);
            inner.write_meta()?;
            let keep = inner.entries.split_off(&(log_id.index + 1));
            inner.entries = keep;
            // A marker (no data) at the purged index lets the WAL delete old segments.
            if inner
                .wal
                .snapshot_index()
                .is_none_or(|s| s < log_id.index + 1)
            {
                inner.wal.install_snapshot(log_id.index + 1, &[])?;
            }
            Ok(())
        })
        .await
    }
}
