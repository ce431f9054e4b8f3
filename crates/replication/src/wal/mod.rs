//! Durable write-ahead log (WAL) with group commit, snapshots and a small meta value.
//!
//! Synchronous std I/O only: call it from a dedicated thread or `spawn_blocking`. Group
//! commit is the caller's loop: append every record that is waiting, then one
//! [`Wal::sync`] makes them all durable (the replica's disk thread in `node/disk.rs` does this).
//!
//! # Directory layout
//!
//! | file | content |
//! | --- | --- |
//! | `00000000000000000001.seg`, `…02.seg`, … | log segments, numbered consecutively |
//! | `snap-<index, 20 digits>.snap` | the latest snapshot (older ones are deleted) |
//! | `meta` | the meta value (e.g. the current view/epoch) |
//! | `*.tmp` | half-written snapshot/meta files; deleted on open |
//!
//! All integers are little-endian; CRC is CRC-32 (IEEE, `crc32fast`). The encoding and
//! the verification of these bytes are pure functions in the core crate
//! ([`bookstore_replication_core::wal_format`]); this module does the file I/O.
//!
//! * **Segment** = 16-byte header (`b"BKSTWAL1"`, `u64` segment number) followed by records.
//! * **Record** = `u32 len | u32 crc | u64 index | len bytes of payload`; the CRC covers
//!   `len`, `index` and the payload. Indices are given by the caller and strictly increase
//!   across the whole log (gaps are allowed).
//! * **Snapshot** = `b"BKSTSNP1" | u64 index | u64 len | u32 crc(index, len, data) | u32 0 | data`.
//! * **Meta** = `b"BKSTMTA1" | u32 len | u32 crc(len, data) | data`.
//!
//! # Guarantees
//!
//! * [`Wal::append`] only buffers. After [`Wal::sync`] returns `Ok`, every record appended
//!   before it is on stable storage (one `write` + one `fdatasync` per call).
//! * Open verifies every CRC. A bad or incomplete record in the **last** segment, with no
//!   valid record anywhere after it, is a torn write: the segment is truncated there
//!   ([`Recovered::tail_repair`] says where). Any other bad record (in an older segment, or
//!   followed by a valid record) is corruption and open fails with [`WalError::Corrupt`]
//!   naming the file and byte offset. (A corrupted *final* record is indistinguishable from
//!   a torn write and is therefore dropped; it can only be one that was not yet synced or
//!   a media error on the very last record.)
//! * A segment is synced before the next one is created, so only the last segment can
//!   have a torn tail.
//! * [`Wal::truncate_suffix`], [`Wal::install_snapshot`] and [`Wal::write_meta`] are
//!   durable when they return. Snapshot and meta files are replaced atomically
//!   (temp file, fsync, rename, fsync directory). A crash during `truncate_suffix` leaves
//!   a prefix of the old log that still holds every record below `from`.
//! * After an I/O error while writing or syncing the log, the [`Wal`] is poisoned (every
//!   later log operation fails with [`WalError::Poisoned`]): after a failed `fdatasync` the
//!   page cache state is unknown, so the only safe recovery is to reopen.
//! * Dropping a [`Wal`] without `sync` discards buffered records, exactly like a crash.
//! * One process per directory: no lock file is taken, the caller must ensure it.
//!
//! # Modules
//!
//! - this one: the [`Wal`] and its operations on the running log (append, sync, truncate,
//!   snapshot, meta, read back), and the types they take and return;
//! - `recovery`: [`Wal::open`], which verifies a directory and repairs a torn tail;
//! - `files`: the file operations both are built from (segment files, atomic
//!   replacement, directory fsyncs).
mod files;
mod recovery;

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bookstore_replication_core::wal_format::{
    encode_record, meta_header, scan_segment, snapshot_header, snapshot_name, META_FILE,
    RECORD_HEADER_LEN,
};

use files::{
    create_segment, damaged, open_for_append, read_segment, remove_durably, truncate_segment,
    write_atomically, Segment,
};

/// Tuning knobs for [`Wal::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is started when appending a record would make the active segment
    /// larger than this (a single record larger than this gets a segment of its own).
    pub segment_max_bytes: u64,
    /// Largest accepted payload; larger appends fail with [`WalError::RecordTooLarge`].
    pub max_record_bytes: u32,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_max_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
        }
    }
}

/// Everything that can go wrong. Cheap to clone (I/O errors are shared), so one failure
/// can be reported to every waiter of a group commit.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An operating-system call failed.
    #[error("{op} {}{}: {source}", .path.display(), OffsetSuffix(*.offset))]
    Io {
        op: &'static str,
        path: PathBuf,
        offset: Option<u64>,
        #[source]
        source: Arc<io::Error>,
    },
    /// A file failed verification somewhere other than a repairable torn tail.
    #[error("corrupt WAL file {} at offset {offset}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Segment numbers are not consecutive.
    #[error("WAL directory {}: segment {expected} is missing (next present is {found})", .dir.display())]
    MissingSegment {
        dir: PathBuf,
        expected: u64,
        found: u64,
    },
    /// Indices must strictly increase.
    #[error("record index {index} must be greater than the last index {last}")]
    NonMonotonicIndex { index: u64, last: u64 },
    /// Payload larger than [`WalOptions::max_record_bytes`].
    #[error("record of {len} bytes exceeds max_record_bytes = {max}")]
    RecordTooLarge { len: usize, max: u32 },
    /// `truncate_suffix` may not remove entries covered by the snapshot.
    #[error(
        "cannot truncate from index {from}: entries up to {snapshot_index} are in the snapshot"
    )]
    TruncateBelowSnapshot { from: u64, snapshot_index: u64 },
    /// `install_snapshot` with an index older than the installed snapshot.
    #[error("snapshot index {index} is older than the installed snapshot {current}")]
    StaleSnapshot { index: u64, current: u64 },
    /// An earlier write/sync failed; reopen the WAL to recover.
    #[error("the WAL is unusable after an earlier failure (reopen to recover): {0}")]
    Poisoned(#[source] Arc<WalError>),
}

struct OffsetSuffix(Option<u64>);

impl fmt::Display for OffsetSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(offset) => write!(f, " at offset {offset}"),
            None => Ok(()),
        }
    }
}

impl WalError {
    fn io(op: &'static str, path: &Path, offset: Option<u64>, source: io::Error) -> Self {
        WalError::Io {
            op,
            path: path.to_path_buf(),
            offset,
            source: Arc::new(source),
        }
    }
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
    offset: Option<u64>,
) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |e| WalError::io(op, path, offset, e)
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub index: u64,
    pub payload: Vec<u8>,
}

/// A snapshot of the state machine covering every entry up to and including `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub index: u64,
    pub data: Vec<u8>,
}

/// A torn tail that [`Wal::open`] cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    pub path: PathBuf,
    /// The segment now ends here.
    pub offset: u64,
    pub dropped_bytes: u64,
    /// Why the first dropped record was rejected.
    pub reason: String,
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Every record with an index above the snapshot's, in order.
    pub records: Vec<Record>,
    /// The last value given to [`Wal::write_meta`].
    pub meta: Option<Vec<u8>>,
    /// Set when a torn tail was truncated.
    pub tail_repair: Option<TailRepair>,
}

/// Counters since open. `data_syncs` counts `fdatasync`s of segment files (one per
/// [`Wal::sync`] that had something to write, including the one a segment rollover makes);
/// `other_syncs` counts every other fsync (directories, new segments, snapshots, meta,
/// truncation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records_appended: u64,
    pub bytes_written: u64,
    pub data_syncs: u64,
    pub other_syncs: u64,
}

/// The write-ahead log. Not thread-safe by itself (`&mut self`): one thread owns it.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    /// Consecutive segments, oldest first; the last one is active. Never empty.
    segments: Vec<Segment>,
    active: File,
    /// Encoded records not yet written, and (index, offset in `buf`) of each.
    buf: Vec<u8>,
    buf_records: Vec<(u64, usize)>,
    last_index: Option<u64>,
    durable_index: Option<u64>,
    snapshot: Option<(u64, PathBuf)>,
    meta: Option<Vec<u8>>,
    stats: WalStats,
    poisoned: Option<Arc<WalError>>,
}

impl Wal {
    fn check_poisoned(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(cause) => Err(WalError::Poisoned(Arc::clone(cause))),
            None => Ok(()),
        }
    }

    fn poison(&mut self, error: WalError) -> WalError {
        self.poisoned = Some(Arc::new(error.clone()));
        error
    }

    /// Buffers a record. `index` must be greater than [`Wal::last_index`]. Not durable
    /// until [`Wal::sync`].
    pub fn append(&mut self, index: u64, payload: &[u8]) -> Result<(), WalError> {
        self.check_poisoned()?;
        if payload.len() > self.opts.max_record_bytes as usize {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: self.opts.max_record_bytes,
            });
        }
        if let Some(last) = self.last_index {
            if index <= last {
                return Err(WalError::NonMonotonicIndex { index, last });
            }
        }
        let record_len = (RECORD_HEADER_LEN + payload.len()) as u64;
        let active = self.segments.last().expect("at least one segment");
        if active.first_index.is_some()
            && active.len + self.buf.len() as u64 + record_len > self.opts.segment_max_bytes
        {
            self.roll_over()?;
        }
        self.buf_records.push((index, self.buf.len()));
        encode_record(&mut self.buf, index, payload);
        let active = self.segments.last_mut().expect("at least one segment");
        active.first_index.get_or_insert(index);
        active.last_index = Some(index);
        self.last_index = Some(index);
        self.stats.records_appended += 1;
        Ok(())
    }

    /// Writes the buffered records with one `write` and makes them durable with one
    /// `fdatasync`. A no-op (no fsync) when nothing is buffered.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let active = self.segments.last_mut().expect("at least one segment");
        let offset = active.len;
        let result = self
            .active
            .write_all(&self.buf)
            .map_err(io_err("write", &active.path, Some(offset)))
            .and_then(|()| {
                self.active
                    .sync_data()
                    .map_err(io_err("fdatasync", &active.path, None))
            });
        if let Err(e) = result {
            return Err(self.poison(e));
        }
        active.len += self.buf.len() as u64;
        self.stats.bytes_written += self.buf.len() as u64;
        self.stats.data_syncs += 1;
        self.durable_index = self.durable_index.max(self.buf_records.last().map(|r| r.0));
        self.buf.clear();
        self.buf_records.clear();
        Ok(())
    }

    /// Syncs the active segment and starts the next one.
    fn roll_over(&mut self) -> Result<(), WalError> {
        self.sync()?;
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let (segment, file) = create_segment(&self.dir, seq, &mut self.stats)?;
        self.segments.push(segment);
        self.active = file;
        Ok(())
    }

    /// Removes every record with index >= `from` (buffered or on disk); durable on return.
    /// Buffered records below `from` are synced as a side effect.
    pub fn truncate_suffix(&mut self, from: u64) -> Result<(), WalError> {
        self.check_poisoned()?;
        if let Some((snapshot_index, _)) = self.snapshot {
            if from <= snapshot_index {
                return Err(WalError::TruncateBelowSnapshot {
                    from,
                    snapshot_index,
                });
            }
        }
        if let Some(pos) = self.buf_records.iter().position(|&(i, _)| i >= from) {
            self.buf.truncate(self.buf_records[pos].1);
            self.buf_records.truncate(pos);
        }
        self.sync()?;
        let result = self.truncate_on_disk(from);
        if let Err(e) = result {
            return Err(self.poison(e));
        }
        Ok(())
    }

    fn truncate_on_disk(&mut self, from: u64) -> Result<(), WalError> {
        let mut changed = false;
        // Segments whose first record is >= from (or that are empty) go entirely, newest
        // first, so that a crash in between leaves a prefix of the log.
        while self.segments.len() > 1 {
            let last = self.segments.last().expect("non-empty");
            if last.first_index.is_some_and(|f| f < from) {
                break;
            }
            remove_durably(&last.path, &self.dir, &mut self.stats)?;
            self.segments.pop();
            changed = true;
        }
        let segment = self.segments.last_mut().expect("at least one segment");
        let data = read_segment(&segment.path)?;
        let scan = scan_segment(segment.seq, &data, false, None, |index, _, _| index < from)
            .map_err(|d| damaged(&segment.path, d))?;
        if scan.stopped_at.is_some() || scan.valid_len != data.len() as u64 {
            truncate_segment(&segment.path, segment.seq, scan.valid_len, &mut self.stats)?;
            changed = true;
        }
        segment.first_index = scan.first_index;
        segment.last_index = scan.last_index;
        segment.len = scan.valid_len;
        if changed {
            self.active = open_for_append(segment)?;
        }
        let log_last = self.segments.iter().rev().find_map(|s| s.last_index);
        self.last_index = log_last.max(self.snapshot.as_ref().map(|s| s.0));
        self.durable_index = self.last_index;
        Ok(())
    }

    /// Durably stores a snapshot covering every entry up to `index`, deletes the previous
    /// snapshot and the segments that hold only entries <= `index`. Buffered records are
    /// synced first. `index` may be beyond the end of the log (state transfer); later
    /// appends must then use larger indices.
    pub fn install_snapshot(&mut self, index: u64, data: &[u8]) -> Result<(), WalError> {
        self.check_poisoned()?;
        if let Some((current, _)) = self.snapshot {
            if index < current {
                return Err(WalError::StaleSnapshot { index, current });
            }
        }
        self.sync()?;
        let path = self.dir.join(snapshot_name(index));
        let header = snapshot_header(index, data);
        write_atomically(&path, &self.dir, &[&header, data], &mut self.stats)?;
        if let Some((old_index, old_path)) = self.snapshot.take() {
            if old_index != index {
                remove_durably(&old_path, &self.dir, &mut self.stats)?;
            }
        }
        self.snapshot = Some((index, path));
        self.last_index = self.last_index.max(Some(index));
        self.durable_index = self.durable_index.max(Some(index));
        self.compact()
    }

    /// Deletes the oldest segments whose records are all covered by the snapshot.
    fn compact(&mut self) -> Result<(), WalError> {
        let Some((snap, _)) = self.snapshot else {
            return Ok(());
        };
        let active = self.segments.last().expect("at least one segment");
        if active.last_index.is_some_and(|l| l <= snap) {
            // Everything in the active segment is covered: start afresh so it can go.
            self.roll_over()?;
        }
        while self.segments.len() > 1 && self.segments[0].last_index.is_none_or(|l| l <= snap) {
            remove_durably(&self.segments[0].path, &self.dir, &mut self.stats)?;
            self.segments.remove(0);
        }
        Ok(())
    }

    /// Atomically and durably replaces the meta value.
    pub fn write_meta(&mut self, data: &[u8]) -> Result<(), WalError> {
        let header = meta_header(data).ok_or(WalError::RecordTooLarge {
            len: data.len(),
            max: u32::MAX,
        })?;
        let path = self.dir.join(META_FILE);
        write_atomically(&path, &self.dir, &[&header, data], &mut self.stats)?;
        self.meta = Some(data.to_vec());
        Ok(())
    }

    /// Reads the durable records with index >= `from` back from disk (e.g. to catch up a
    /// lagging backup). Buffered, unsynced records are not included.
    pub fn read_from(&self, from: u64) -> Result<Vec<Record>, WalError> {
        let mut out = Vec::new();
        for segment in &self.segments {
            if segment.last_index.is_none_or(|l| l < from) {
                continue;
            }
            let data = read_segment(&segment.path)?;
            let durable = &data[..(segment.len as usize).min(data.len())];
            scan_segment(segment.seq, durable, false, None, |index, payload, _| {
                if index >= from {
                    out.push(Record {
                        index,
                        payload: payload.to_vec(),
                    });
                }
                true
            })
            .map_err(|d| damaged(&segment.path, d))?;
        }
        Ok(out)
    }

    /// The directory this WAL lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options it was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.opts
    }

    /// Highest index appended (buffered included) or covered by the snapshot.
    pub fn last_index(&self) -> Option<u64> {
        self.last_index
    }

    /// Highest index known to be on stable storage (log or snapshot).
    pub fn durable_index(&self) -> Option<u64> {
        self.durable_index
    }

    /// Index of the oldest record still in the log (it may be covered by the snapshot).
    pub fn first_index(&self) -> Option<u64> {
        self.segments.iter().find_map(|s| s.first_index)
    }

    /// Index of the installed snapshot.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.0)
    }

    /// The current meta value.
    pub fn meta(&self) -> Option<&[u8]> {
        self.meta.as_deref()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        self.stats
    }
}
