//! Durable write-ahead log (WAL) with group commit, snapshots and a small meta value.
//!
//! Synchronous std I/O only: call it from a dedicated thread or `spawn_blocking`. Group
//! commit is the caller's loop: append every record that is waiting, then one
//! [`Wal::sync`] makes them all durable (the replica's disk thread in `node.rs` does this).
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
//! All integers are little-endian; CRC is CRC-32 (IEEE, `crc32fast`).
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
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const SEGMENT_MAGIC: [u8; 8] = *b"BKSTWAL1";
const SEGMENT_HEADER_LEN: u64 = 16;
const RECORD_HEADER_LEN: usize = 16;
const SNAPSHOT_MAGIC: [u8; 8] = *b"BKSTSNP1";
const SNAPSHOT_HEADER_LEN: usize = 32;
const META_MAGIC: [u8; 8] = *b"BKSTMTA1";
const META_HEADER_LEN: usize = 16;
const META_FILE: &str = "meta";
const TMP_SUFFIX: &str = ".tmp";

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

    fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Self {
        WalError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
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

#[derive(Debug, Default)]
struct Counters {
    records_appended: AtomicU64,
    bytes_written: AtomicU64,
    data_syncs: AtomicU64,
    other_syncs: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> WalStats {
        WalStats {
            records_appended: self.records_appended.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            data_syncs: self.data_syncs.load(Ordering::Relaxed),
            other_syncs: self.other_syncs.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// First/last record index, including records still in the write buffer.
    first_index: Option<u64>,
    last_index: Option<u64>,
    /// Bytes on disk (header included), excluding the write buffer.
    len: u64,
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
    counters: Arc<Counters>,
    poisoned: Option<Arc<WalError>>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    parse_digits(digits)
}

fn snapshot_name(index: u64) -> String {
    format!("snap-{index:020}.snap")
}

fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    parse_digits(digits)
}

fn parse_digits(s: &str) -> Option<u64> {
    if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    a.max(b)
}

fn record_crc(len: u32, index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn encode_record(buf: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("checked against max_record_bytes");
    buf.reserve(RECORD_HEADER_LEN + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&record_crc(len, index, payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Parses the record at `pos`: `(index, payload, end offset)`, or why it is invalid.
fn parse_record(data: &[u8], pos: usize) -> Result<(u64, &[u8], usize), String> {
    let rest = &data[pos..];
    if rest.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "incomplete record header ({} of {RECORD_HEADER_LEN} bytes)",
            rest.len()
        ));
    }
    let len = le_u32(&rest[0..4]);
    let stored_crc = le_u32(&rest[4..8]);
    let index = le_u64(&rest[8..16]);
    let available = rest.len() - RECORD_HEADER_LEN;
    if len as usize > available {
        return Err(format!(
            "record length {len} runs past the end of the file ({available} bytes left)"
        ));
    }
    let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len as usize];
    let crc = record_crc(len, index, payload);
    if crc != stored_crc {
        return Err(format!(
            "CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
        ));
    }
    Ok((index, payload, pos + RECORD_HEADER_LEN + len as usize))
}

/// The first offset at or after `from` where a valid record with an index above
/// `prev_last` starts, if any (used to tell a torn tail from corruption).
fn find_valid_record(data: &[u8], from: usize, prev_last: Option<u64>) -> Option<usize> {
    (from..data.len().saturating_sub(RECORD_HEADER_LEN - 1)).find(|&q| {
        parse_record(data, q).is_ok_and(|(index, _, _)| prev_last.is_none_or(|p| index > p))
    })
}

#[derive(Debug, Default)]
struct SegmentScan {
    first_index: Option<u64>,
    last_index: Option<u64>,
    /// Offset just past the last record visited.
    valid_len: u64,
    /// A torn tail (offset, reason); only with `tolerate_torn_tail`.
    torn: Option<(u64, String)>,
    /// Set when `visit` returned false: offset of that record.
    stopped_at: Option<u64>,
}

fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..].copy_from_slice(&seq.to_le_bytes());
    h
}

/// Verifies a segment's bytes and visits its records in order. `visit(index, payload,
/// offset)` returns false to stop early.
fn scan_segment(
    path: &Path,
    seq: u64,
    data: &[u8],
    tolerate_torn_tail: bool,
    mut prev_last: Option<u64>,
    mut visit: impl FnMut(u64, &[u8], u64) -> bool,
) -> Result<SegmentScan, WalError> {
    let mut scan = SegmentScan::default();
    let header_len = SEGMENT_HEADER_LEN as usize;
    if data.len() < header_len || data[..8] != SEGMENT_MAGIC {
        let reason = if data.len() < header_len {
            format!("incomplete segment header ({} bytes)", data.len())
        } else {
            "bad segment magic".to_string()
        };
        // A segment is created by writing and syncing its header before any record, so a
        // bad header with nothing after it is a crash during creation.
        if tolerate_torn_tail && data.len() <= header_len {
            scan.torn = Some((0, reason));
            return Ok(scan);
        }
        return Err(WalError::corrupt(path, 0, reason));
    }
    let stored_seq = le_u64(&data[8..16]);
    if stored_seq != seq {
        return Err(WalError::corrupt(
            path,
            8,
            format!("header says segment {stored_seq}, file name says {seq}"),
        ));
    }
    let mut pos = header_len;
    while pos < data.len() {
        match parse_record(data, pos) {
            Ok((index, payload, end)) => {
                if let Some(prev) = prev_last {
                    if index <= prev {
                        return Err(WalError::corrupt(
                            path,
                            pos as u64,
                            format!("record index {index} does not follow index {prev}"),
                        ));
                    }
                }
                if !visit(index, payload, pos as u64) {
                    scan.stopped_at = Some(pos as u64);
                    scan.valid_len = pos as u64;
                    return Ok(scan);
                }
                scan.first_index.get_or_insert(index);
                scan.last_index = Some(index);
                prev_last = Some(index);
                pos = end;
            }
            Err(reason) => {
                if tolerate_torn_tail {
                    match find_valid_record(data, pos + 1, prev_last) {
                        None => {
                            scan.torn = Some((pos as u64, reason));
                            break;
                        }
                        Some(next) => {
                            return Err(WalError::corrupt(
                                path,
                                pos as u64,
                                format!(
                                    "{reason}; a valid record follows at offset {next}, so this is not a torn tail"
                                ),
                            ))
                        }
                    }
                }
                return Err(WalError::corrupt(path, pos as u64, reason));
            }
        }
    }
    scan.valid_len = pos as u64;
    Ok(scan)
}

fn sync_dir(dir: &Path, counters: &Counters) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir, None))?;
    Counters::add(&counters.other_syncs, 1);
    Ok(())
}

fn remove_durably(path: &Path, dir: &Path, counters: &Counters) -> Result<(), WalError> {
    fs::remove_file(path).map_err(io_err("remove", path, None))?;
    sync_dir(dir, counters)
}

/// Writes `parts` to `path` atomically: temp file, fsync, rename, fsync directory.
fn write_atomically(
    path: &Path,
    dir: &Path,
    parts: &[&[u8]],
    counters: &Counters,
) -> Result<(), WalError> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp, None))?;
        for part in parts {
            f.write_all(part).map_err(io_err("write", &tmp, None))?;
        }
        f.sync_all().map_err(io_err("fsync", &tmp, None))?;
        Counters::add(&counters.other_syncs, 1);
        fs::rename(&tmp, path).map_err(io_err("rename into place", path, None))?;
        sync_dir(dir, counters)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn create_segment(dir: &Path, seq: u64, counters: &Counters) -> Result<(Segment, File), WalError> {
    let path = dir.join(segment_name(seq));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err("create segment", &path, None))?;
    file.write_all(&segment_header(seq))
        .map_err(io_err("write header of", &path, Some(0)))?;
    file.sync_all().map_err(io_err("fsync", &path, None))?;
    Counters::add(&counters.other_syncs, 1);
    sync_dir(dir, counters)?;
    let segment = Segment {
        seq,
        path,
        first_index: None,
        last_index: None,
        len: SEGMENT_HEADER_LEN,
    };
    Ok((segment, file))
}

fn open_for_append(segment: &Segment) -> Result<File, WalError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment.path)
        .map_err(io_err("open segment", &segment.path, None))?;
    file.seek(SeekFrom::Start(segment.len)).map_err(io_err(
        "seek",
        &segment.path,
        Some(segment.len),
    ))?;
    Ok(file)
}

fn read_snapshot(path: &Path, index: u64) -> Result<Snapshot, WalError> {
    let data = fs::read(path).map_err(io_err("read snapshot", path, None))?;
    if data.len() < SNAPSHOT_HEADER_LEN || data[..8] != SNAPSHOT_MAGIC {
        return Err(WalError::corrupt(
            path,
            0,
            "bad or incomplete snapshot header",
        ));
    }
    let stored_index = le_u64(&data[8..16]);
    let len = le_u64(&data[16..24]);
    let stored_crc = le_u32(&data[24..28]);
    if stored_index != index {
        return Err(WalError::corrupt(
            path,
            8,
            format!("header says index {stored_index}, file name says {index}"),
        ));
    }
    let body = &data[SNAPSHOT_HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(WalError::corrupt(
            path,
            16,
            format!("snapshot length {len} but {} bytes present", body.len()),
        ));
    }
    let crc = snapshot_crc(index, body);
    if crc != stored_crc {
        return Err(WalError::corrupt(
            path,
            24,
            format!("snapshot CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"),
        ));
    }
    Ok(Snapshot {
        index,
        data: body.to_vec(),
    })
}

fn snapshot_crc(index: u64, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(&(data.len() as u64).to_le_bytes());
    h.update(data);
    h.finalize()
}

fn meta_crc(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(data.len() as u32).to_le_bytes());
    h.update(data);
    h.finalize()
}

fn read_meta(path: &Path) -> Result<Option<Vec<u8>>, WalError> {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io("read meta", path, None, e)),
    };
    if data.len() < META_HEADER_LEN || data[..8] != META_MAGIC {
        return Err(WalError::corrupt(path, 0, "bad or incomplete meta header"));
    }
    let len = le_u32(&data[8..12]) as usize;
    let stored_crc = le_u32(&data[12..16]);
    let body = &data[META_HEADER_LEN..];
    if body.len() != len {
        return Err(WalError::corrupt(
            path,
            8,
            format!("meta length {len} but {} bytes present", body.len()),
        ));
    }
    let crc = meta_crc(body);
    if crc != stored_crc {
        return Err(WalError::corrupt(
            path,
            12,
            format!("meta CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"),
        ));
    }
    Ok(Some(body.to_vec()))
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, verifies it, repairs a torn tail and
    /// returns what it holds.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), WalError> {
        let counters = Arc::new(Counters::default());
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir, None))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent, &counters)?;
            }
        }
        let mut seqs = Vec::new();
        let mut snapshots = Vec::new();
        let mut dir_dirty = false;
        let entries = fs::read_dir(dir).map_err(io_err("list directory", dir, None))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list directory", dir, None))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err("remove", &path, None))?;
                dir_dirty = true;
            } else if let Some(seq) = parse_segment_name(name) {
                seqs.push(seq);
            } else if let Some(index) = parse_snapshot_name(name) {
                snapshots.push(index);
            }
        }
        seqs.sort_unstable();
        snapshots.sort_unstable();

        let meta = read_meta(&dir.join(META_FILE))?;

        // Only the newest snapshot counts; older ones are leftovers of a crash between
        // installing a snapshot and deleting its predecessor.
        let snapshot = match snapshots.pop() {
            Some(index) => Some(read_snapshot(&dir.join(snapshot_name(index)), index)?),
            None => None,
        };
        for index in snapshots {
            let path = dir.join(snapshot_name(index));
            fs::remove_file(&path).map_err(io_err("remove", &path, None))?;
            dir_dirty = true;
        }
        let snap_index = snapshot.as_ref().map(|s| s.index);

        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(WalError::MissingSegment {
                    dir: dir.to_path_buf(),
                    expected: pair[0] + 1,
                    found: pair[1],
                });
            }
        }

        let mut records = Vec::new();
        let mut segments = Vec::with_capacity(seqs.len().max(1));
        let mut prev_last = None;
        let mut tail_repair = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let is_last = i + 1 == seqs.len();
            let path = dir.join(segment_name(seq));
            let data = fs::read(&path).map_err(io_err("read segment", &path, None))?;
            let scan = scan_segment(
                &path,
                seq,
                &data,
                is_last,
                prev_last,
                |index, payload, _| {
                    if snap_index.is_none_or(|s| index > s) {
                        records.push(Record {
                            index,
                            payload: payload.to_vec(),
                        });
                    }
                    true
                },
            )?;
            let mut len = scan.valid_len;
            if let Some((offset, reason)) = scan.torn {
                let mut file = OpenOptions::new().write(true).open(&path).map_err(io_err(
                    "open segment",
                    &path,
                    None,
                ))?;
                if offset < SEGMENT_HEADER_LEN {
                    file.set_len(0)
                        .map_err(io_err("truncate", &path, Some(0)))?;
                    file.write_all(&segment_header(seq)).map_err(io_err(
                        "write header of",
                        &path,
                        Some(0),
                    ))?;
                    len = SEGMENT_HEADER_LEN;
                } else {
                    file.set_len(offset)
                        .map_err(io_err("truncate", &path, Some(offset)))?;
                    len = offset;
                }
                file.sync_all().map_err(io_err("fsync", &path, None))?;
                Counters::add(&counters.other_syncs, 1);
                tail_repair = Some(TailRepair {
                    path: path.clone(),
                    offset: len,
                    dropped_bytes: (data.len() as u64).saturating_sub(len),
                    reason,
                });
            }
            prev_last = scan.last_index.or(prev_last);
            segments.push(Segment {
                seq,
                path,
                first_index: scan.first_index,
                last_index: scan.last_index,
                len,
            });
        }
        if dir_dirty {
            sync_dir(dir, &counters)?;
        }
        let active = match segments.last() {
            Some(segment) => open_for_append(segment)?,
            None => {
                let (segment, file) = create_segment(dir, 1, &counters)?;
                segments.push(segment);
                file
            }
        };
        let last_index = max_opt(prev_last, snap_index);
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            segments,
            active,
            buf: Vec::new(),
            buf_records: Vec::new(),
            last_index,
            durable_index: last_index,
            snapshot: snap_index.map(|i| (i, dir.join(snapshot_name(i)))),
            meta: meta.clone(),
            counters,
            poisoned: None,
        };
        wal.compact()?;
        let recovered = Recovered {
            snapshot,
            records,
            meta,
            tail_repair,
        };
        Ok((wal, recovered))
    }

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
        Counters::add(&self.counters.records_appended, 1);
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
        Counters::add(&self.counters.bytes_written, self.buf.len() as u64);
        Counters::add(&self.counters.data_syncs, 1);
        self.durable_index = max_opt(self.durable_index, self.buf_records.last().map(|r| r.0));
        self.buf.clear();
        self.buf_records.clear();
        Ok(())
    }

    /// Syncs the active segment and starts the next one.
    fn roll_over(&mut self) -> Result<(), WalError> {
        self.sync()?;
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let (segment, file) = create_segment(&self.dir, seq, &self.counters)?;
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
            remove_durably(&last.path, &self.dir, &self.counters)?;
            self.segments.pop();
            changed = true;
        }
        let segment = self.segments.last_mut().expect("at least one segment");
        let data = fs::read(&segment.path).map_err(io_err("read segment", &segment.path, None))?;
        let scan = scan_segment(
            &segment.path,
            segment.seq,
            &data,
            false,
            None,
            |index, _, _| index < from,
        )?;
        if scan.stopped_at.is_some() || scan.valid_len != data.len() as u64 {
            let file = OpenOptions::new()
                .write(true)
                .open(&segment.path)
                .map_err(io_err("open segment", &segment.path, None))?;
            file.set_len(scan.valid_len).map_err(io_err(
                "truncate",
                &segment.path,
                Some(scan.valid_len),
            ))?;
            file.sync_all()
                .map_err(io_err("fsync", &segment.path, None))?;
            Counters::add(&self.counters.other_syncs, 1);
            changed = true;
        }
        segment.first_index = scan.first_index;
        segment.last_index = scan.last_index;
        segment.len = scan.valid_len;
        if changed {
            self.active = open_for_append(segment)?;
        }
        let log_last = self.segments.iter().rev().find_map(|s| s.last_index);
        self.last_index = max_opt(log_last, self.snapshot.as_ref().map(|s| s.0));
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
        let mut header = [0u8; SNAPSHOT_HEADER_LEN];
        header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
        header[8..16].copy_from_slice(&index.to_le_bytes());
        header[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
        header[24..28].copy_from_slice(&snapshot_crc(index, data).to_le_bytes());
        write_atomically(&path, &self.dir, &[&header, data], &self.counters)?;
        if let Some((old_index, old_path)) = self.snapshot.take() {
            if old_index != index {
                remove_durably(&old_path, &self.dir, &self.counters)?;
            }
        }
        self.snapshot = Some((index, path));
        self.last_index = max_opt(self.last_index, Some(index));
        self.durable_index = max_opt(self.durable_index, Some(index));
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
            remove_durably(&self.segments[0].path, &self.dir, &self.counters)?;
            self.segments.remove(0);
        }
        Ok(())
    }

    /// Atomically and durably replaces the meta value.
    pub fn write_meta(&mut self, data: &[u8]) -> Result<(), WalError> {
        let len = u32::try_from(data.len()).map_err(|_| WalError::RecordTooLarge {
            len: data.len(),
            max: u32::MAX,
        })?;
        let mut header = [0u8; META_HEADER_LEN];
        header[..8].copy_from_slice(&META_MAGIC);
        header[8..12].copy_from_slice(&len.to_le_bytes());
        header[12..16].copy_from_slice(&meta_crc(data).to_le_bytes());
        let path = self.dir.join(META_FILE);
        write_atomically(&path, &self.dir, &[&header, data], &self.counters)?;
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
            let data =
                fs::read(&segment.path).map_err(io_err("read segment", &segment.path, None))?;
            let durable = &data[..(segment.len as usize).min(data.len())];
            scan_segment(
                &segment.path,
                segment.seq,
                durable,
                false,
                None,
                |index, payload, _| {
                    if index >= from {
                        out.push(Record {
                            index,
                            payload: payload.to_vec(),
                        });
                    }
                    true
                },
            )?;
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
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_encoding_round_trips() {
        let mut buf = segment_header(7).to_vec();
        encode_record(&mut buf, 42, b"hello");
        encode_record(&mut buf, 43, b"");
        let mut seen = Vec::new();
        let scan = scan_segment(Path::new("x"), 7, &buf, false, None, |i, p, off| {
            seen.push((i, p.to_vec(), off));
            true
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(42, b"hello".to_vec(), 16), (43, Vec::new(), 16 + 16 + 5)]
        );
        assert_eq!(scan.valid_len, buf.len() as u64);
    }

    #[test]
    fn torn_tail_vs_corruption() {
        let mut buf = segment_header(1).to_vec();
        encode_record(&mut buf, 1, b"aaaa");
        let second = buf.len();
        encode_record(&mut buf, 2, b"bbbb");
        encode_record(&mut buf, 3, b"cccc");
        // Torn: cut in the middle of the last record.
        let torn = &buf[..buf.len() - 2];
        let scan = scan_segment(Path::new("x"), 1, torn, true, None, |_, _, _| true).unwrap();
        assert_eq!(scan.last_index, Some(2));
        assert!(scan.torn.is_some());
        // Corrupt: flip a payload byte of record 2, record 3 is still valid.
        let mut bad = buf.clone();
        bad[second + RECORD_HEADER_LEN] ^= 0xff;
        let err = scan_segment(Path::new("x"), 1, &bad, true, None, |_, _, _| true).unwrap_err();
        match err {
            WalError::Corrupt { offset, .. } => assert_eq!(offset, second as u64),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!(parse_segment_name(&segment_name(12)), Some(12));
        assert_eq!(parse_snapshot_name(&snapshot_name(99)), Some(99));
        assert_eq!(parse_segment_name("12.seg"), None);
        assert_eq!(parse_snapshot_name("snap-x.snap"), None);
    }
}
