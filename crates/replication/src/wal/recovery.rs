//! Opening a WAL directory: listing its files, removing leftovers of interrupted writes,
//! loading the newest snapshot and the meta value, verifying every segment in order and
//! cutting off a torn tail of the last one. Kept apart from the running log's operations
//! because it is the one place that decides what a crash left behind.
use std::fs;
use std::path::Path;

use bookstore_replication_core::wal_format::{
    parse_segment_name, parse_snapshot_name, scan_segment, segment_name, snapshot_name, META_FILE,
    TMP_SUFFIX,
};

use super::files::{
    create_segment, damaged, open_for_append, read_meta, read_segment, read_snapshot, sync_dir,
    truncate_segment, Segment,
};
use super::{io_err, Record, Recovered, TailRepair, Wal, WalError, WalOptions, WalStats};

/// The WAL files found in a directory.
#[derive(Debug, Default)]
struct Listing {
    /// Segment numbers, ascending.
    seqs: Vec<u64>,
    /// Snapshot indices, ascending.
    snapshots: Vec<u64>,
    /// Files were removed: the directory needs an fsync.
    dirty: bool,
}

/// What the segments hold.
#[derive(Debug, Default)]
struct Segments {
    segments: Vec<Segment>,
    /// Records above the snapshot's index, in order.
    records: Vec<Record>,
    /// Index of the last record in any segment.
    last_index: Option<u64>,
    tail_repair: Option<TailRepair>,
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, verifies it, repairs a torn tail and
    /// returns what it holds.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), WalError> {
        let mut stats = WalStats::default();
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir, None))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent, &mut stats)?;
            }
        }
        let mut listing = list(dir)?;
        let meta = read_meta(&dir.join(META_FILE))?;
        // Only the newest snapshot counts; older ones are leftovers of a crash between
        // installing a snapshot and deleting its predecessor.
        let snapshot = match listing.snapshots.pop() {
            Some(index) => Some(read_snapshot(&dir.join(snapshot_name(index)), index)?),
            None => None,
        };
        for index in listing.snapshots.drain(..) {
            let path = dir.join(snapshot_name(index));
            fs::remove_file(&path).map_err(io_err("remove", &path, None))?;
            listing.dirty = true;
        }
        let snap_index = snapshot.as_ref().map(|s| s.index);
        let mut found = recover_segments(dir, &listing.seqs, snap_index, &mut stats)?;
        if listing.dirty {
            sync_dir(dir, &mut stats)?;
        }
        let active = match found.segments.last() {
            Some(segment) => open_for_append(segment)?,
            None => {
                let (segment, file) = create_segment(dir, 1, &mut stats)?;
                found.segments.push(segment);
                file
            }
        };
        let last_index = found.last_index.max(snap_index);
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            segments: found.segments,
            active,
            buf: Vec::new(),
            buf_records: Vec::new(),
            last_index,
            durable_index: last_index,
            snapshot: snap_index.map(|i| (i, dir.join(snapshot_name(i)))),
            meta: meta.clone(),
            stats,
            poisoned: None,
        };
        wal.compact()?;
        let recovered = Recovered {
            snapshot,
            records: found.records,
            meta,
            tail_repair: found.tail_repair,
        };
        Ok((wal, recovered))
    }
}

/// Lists the segments and snapshots in `dir` and removes half-written (`*.tmp`) files.
fn list(dir: &Path) -> Result<Listing, WalError> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(dir).map_err(io_err("list directory", dir, None))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list directory", dir, None))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove", &path, None))?;
            listing.dirty = true;
        } else if let Some(seq) = parse_segment_name(name) {
            listing.seqs.push(seq);
        } else if let Some(index) = parse_snapshot_name(name) {
            listing.snapshots.push(index);
        }
    }
    listing.seqs.sort_unstable();
    listing.snapshots.sort_unstable();
    for pair in listing.seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(WalError::MissingSegment {
                dir: dir.to_path_buf(),
                expected: pair[0] + 1,
                found: pair[1],
            });
        }
    }
    Ok(listing)
}

/// Verifies the segments `seqs` in order, collects the records above `snap_index` and
/// cuts a torn tail off the last segment.
fn recover_segments(
    dir: &Path,
    seqs: &[u64],
    snap_index: Option<u64>,
    stats: &mut WalStats,
) -> Result<Segments, WalError> {
    let mut found = Segments {
        segments: Vec::with_capacity(seqs.len().max(1)),
        ..Segments::default()
    };
    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        let path = dir.join(segment_name(seq));
        let data = read_segment(&path)?;
        let records = &mut found.records;
        let scan = scan_segment(
            seq,
            &data,
            is_last,
            found.last_index,
            |index, payload, _| {
                if snap_index.is_none_or(|s| index > s) {
                    records.push(Record {
                        index,
                        payload: payload.to_vec(),
                    });
                }
                true
            },
        )
        .map_err(|d| damaged(&path, d))?;
        let mut len = scan.valid_len;
        if let Some((offset, reason)) = scan.torn {
            len = truncate_segment(&path, seq, offset, stats)?;
            found.tail_repair = Some(TailRepair {
                path: path.clone(),
                offset: len,
                dropped_bytes: (data.len() as u64).saturating_sub(len),
                reason,
            });
        }
        found.last_index = scan.last_index.or(found.last_index);
        found.segments.push(Segment {
            seq,
            path,
            first_index: scan.first_index,
            last_index: scan.last_index,
            len,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_ignores_foreign_files_and_removes_tmp() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            segment_name(2),
            segment_name(3),
            snapshot_name(5),
            "snap-1.snap".to_string(),
            "notes.txt".to_string(),
            format!("{}{TMP_SUFFIX}", snapshot_name(9)),
        ] {
            fs::write(tmp.path().join(name), b"").unwrap();
        }
        let listing = list(tmp.path()).unwrap();
        assert_eq!(listing.seqs, vec![2, 3]);
        assert_eq!(listing.snapshots, vec![5]);
        assert!(listing.dirty);
        let left = tmp.path().join(format!("{}{TMP_SUFFIX}", snapshot_name(9)));
        assert!(!left.exists());
        assert!(tmp.path().join("notes.txt").exists());
    }
}
