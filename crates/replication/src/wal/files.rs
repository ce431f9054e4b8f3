//! The file operations the log is built from: creating, opening and truncating segment
//! files, reading and verifying snapshot and meta files, atomic replacement, durable
//! removal and directory fsyncs. Each one maps an I/O failure to a [`WalError`] naming
//! the operation and the file, and counts the fsyncs it makes in [`WalStats`].
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bookstore_replication_core::wal_format::{
    self, decode_meta, decode_snapshot, segment_header, segment_name, SEGMENT_HEADER_LEN,
    TMP_SUFFIX,
};

use super::{io_err, Snapshot, WalError, WalStats};
use bookstore_common::files;

/// One segment file of the log.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) seq: u64,
    pub(super) path: PathBuf,
    /// First/last record index, including records still in the write buffer.
    pub(super) first_index: Option<u64>,
    pub(super) last_index: Option<u64>,
    /// Bytes on disk (header included), excluding the write buffer.
    pub(super) len: u64,
}

/// A file's bytes that fail verification, as an error naming the file.
pub(super) fn damaged(path: &Path, damage: wal_format::Damage) -> WalError {
    WalError::Corrupt {
        path: path.to_path_buf(),
        offset: damage.offset,
        reason: damage.reason,
    }
}

pub(super) fn read_segment(path: &Path) -> Result<Vec<u8>, WalError> {
    fs::read(path).map_err(io_err("read segment", path, None))
}

pub(super) fn sync_dir(dir: &Path, stats: &mut WalStats) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir, None))?;
    stats.other_syncs += 1;
    Ok(())
}

pub(super) fn remove_durably(
    path: &Path,
    dir: &Path,
    stats: &mut WalStats,
) -> Result<(), WalError> {
    fs::remove_file(path).map_err(io_err("remove", path, None))?;
    sync_dir(dir, stats)
}

/// Writes `parts` to `path` (in `dir`) atomically: temp file, fsync, rename, fsync
/// directory ([`bookstore_common::files::replace`]). The temp file's name ends in
/// [`TMP_SUFFIX`], so recovery removes one a crash left.
pub(super) fn write_atomically(
    path: &Path,
    dir: &Path,
    parts: &[&[u8]],
    stats: &mut WalStats,
) -> Result<(), WalError> {
    debug_assert_eq!(path.parent(), Some(dir));
    debug_assert_eq!(files::TMP_SUFFIX, TMP_SUFFIX);
    let how = files::Replace {
        mode: None,
        sync_dir: true,
    };
    files::replace(path, parts, how).map_err(|e| WalError::io(e.op, &e.path, None, e.source))?;
    // The file's fsync and the directory's.
    stats.other_syncs += 2;
    Ok(())
}

/// Creates segment `seq` with its header, durably (file and directory synced).
pub(super) fn create_segment(
    dir: &Path,
    seq: u64,
    stats: &mut WalStats,
) -> Result<(Segment, File), WalError> {
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
    stats.other_syncs += 1;
    sync_dir(dir, stats)?;
    let segment = Segment {
        seq,
        path,
        first_index: None,
        last_index: None,
        len: SEGMENT_HEADER_LEN as u64,
    };
    Ok((segment, file))
}

/// Opens a segment for appending at its end (`segment.len`).
pub(super) fn open_for_append(segment: &Segment) -> Result<File, WalError> {
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

/// Cuts segment `seq` to `len` bytes, durably. Below the header's length the segment is
/// rewritten as an empty one (header only); returns the length it now has.
pub(super) fn truncate_segment(
    path: &Path,
    seq: u64,
    len: u64,
    stats: &mut WalStats,
) -> Result<u64, WalError> {
    let mut file =
        OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err("open segment", path, None))?;
    let len = if len < SEGMENT_HEADER_LEN as u64 {
        file.set_len(0).map_err(io_err("truncate", path, Some(0)))?;
        file.write_all(&segment_header(seq))
            .map_err(io_err("write header of", path, Some(0)))?;
        SEGMENT_HEADER_LEN as u64
    } else {
        file.set_len(len)
            .map_err(io_err("truncate", path, Some(len)))?;
        len
    };
    file.sync_all().map_err(io_err("fsync", path, None))?;
    stats.other_syncs += 1;
    Ok(len)
}

/// Reads and verifies the snapshot file for `index`.
pub(super) fn read_snapshot(path: &Path, index: u64) -> Result<Snapshot, WalError> {
    let file = fs::read(path).map_err(io_err("read snapshot", path, None))?;
    let data = decode_snapshot(index, &file).map_err(|d| damaged(path, d))?;
    Ok(Snapshot {
        index,
        data: data.to_vec(),
    })
}

/// Reads and verifies the meta file; `None` if there is none.
pub(super) fn read_meta(path: &Path) -> Result<Option<Vec<u8>>, WalError> {
    let file = match fs::read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read meta", path, None)(e)),
    };
    let data = decode_meta(&file).map_err(|d| damaged(path, d))?;
    Ok(Some(data.to_vec()))
}
