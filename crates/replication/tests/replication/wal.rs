//! Integration tests of the write-ahead log (`bookstore_replication::wal`).
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bookstore_replication::wal::{Record, Wal, WalError, WalOptions};

const SEGMENT_HEADER: u64 = 16;
const RECORD_HEADER: u64 = 16;

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i:05}").into_bytes()
}

fn records(range: std::ops::RangeInclusive<u64>) -> Vec<Record> {
    range
        .map(|index| Record {
            index,
            payload: payload(index),
        })
        .collect()
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_max_bytes: 256,
        ..WalOptions::default()
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn write_records(dir: &Path, opts: WalOptions, range: std::ops::RangeInclusive<u64>) {
    let (mut wal, _) = Wal::open(dir, opts).unwrap();
    for i in range {
        wal.append(i, &payload(i)).unwrap();
    }
    wal.sync().unwrap();
}

#[test]
fn round_trip_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.records, vec![]);
    assert_eq!(recovered.snapshot, None);
    assert_eq!(recovered.meta, None);
    for i in 1..=100 {
        wal.append(i, &payload(i)).unwrap();
    }
    assert_eq!(wal.last_index(), Some(100));
    assert_eq!(wal.durable_index(), None);
    wal.sync().unwrap();
    assert_eq!(wal.durable_index(), Some(100));
    assert_eq!(wal.stats().data_syncs, 1);
    assert_eq!(wal.read_from(98).unwrap(), records(98..=100));
    drop(wal);

    let (mut wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.records, records(1..=100));
    assert_eq!(recovered.tail_repair, None);
    assert_eq!(wal.last_index(), Some(100));
    assert_eq!(wal.first_index(), Some(1));
    // More appends after reopen, plus some that are never synced (lost like in a crash).
    for i in 101..=110 {
        wal.append(i, &payload(i)).unwrap();
    }
    wal.sync().unwrap();
    wal.append(111, b"never synced").unwrap();
    drop(wal);

    let (_wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.records, records(1..=110));

    // The directory (and missing parents) are created.
    let nested = tmp.path().join("a").join("b");
    let (mut wal, _) = Wal::open(&nested, WalOptions::default()).unwrap();
    wal.append(1, b"x").unwrap();
    wal.sync().unwrap();
    assert_eq!(segment_files(&nested).len(), 1);
}

#[test]
fn rejects_non_monotonic_and_oversized_records() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        max_record_bytes: 8,
        ..WalOptions::default()
    };
    let (mut wal, _) = Wal::open(tmp.path(), opts).unwrap();
    wal.append(5, b"a").unwrap();
    assert!(matches!(
        wal.append(5, b"b"),
        Err(WalError::NonMonotonicIndex { index: 5, last: 5 })
    ));
    assert!(matches!(
        wal.append(3, b"b"),
        Err(WalError::NonMonotonicIndex { .. })
    ));
    assert!(matches!(
        wal.append(6, b"123456789"),
        Err(WalError::RecordTooLarge { len: 9, max: 8 })
    ));
    // Gaps are fine.
    wal.append(9, b"c").unwrap();
    wal.sync().unwrap();
}

#[test]
fn segments_roll_over_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), small_segments(), 1..=60);
    let files = segment_files(tmp.path());
    assert!(files.len() > 5, "{files:?}");
    for f in &files {
        // Each record is 16 + 12 bytes; no segment exceeds 256 bytes.
        assert!(fs::metadata(f).unwrap().len() <= 256);
    }
    let (wal, recovered) = Wal::open(tmp.path(), small_segments()).unwrap();
    assert_eq!(recovered.records, records(1..=60));
    assert_eq!(wal.segment_count(), files.len());
    assert_eq!(wal.read_from(55).unwrap(), records(55..=60));
}

#[test]
fn torn_tail_is_repaired_and_valid_prefix_kept() {
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), WalOptions::default(), 1..=10);
    let seg = segment_files(tmp.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    // Cut the last record in half, then add garbage (a crash in the middle of a write).
    let file = OpenOptions::new().write(true).open(&seg).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);
    let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
    file.write_all(&[
        0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
    ])
    .unwrap();
    file.write_all(&[0u8; 100]).unwrap();
    drop(file);

    let (mut wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.records, records(1..=9));
    let repair = recovered.tail_repair.expect("tail repaired");
    assert_eq!(repair.path, seg);
    let record_len = RECORD_HEADER + payload(1).len() as u64;
    assert_eq!(repair.offset, SEGMENT_HEADER + 9 * record_len);
    assert_eq!(fs::metadata(&seg).unwrap().len(), repair.offset);
    assert_eq!(wal.last_index(), Some(9));

    // The log continues normally after the repair.
    wal.append(10, &payload(10)).unwrap();
    wal.append(11, &payload(11)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.records, records(1..=11));
    assert_eq!(recovered.tail_repair, None);
}

#[test]
fn torn_tail_cases() {
    // (bytes to keep of the last record, garbage to append)
    let cases: Vec<(u64, Vec<u8>)> = vec![
        (0, vec![0xff; 3]),  // garbage shorter than a header
        (5, vec![]),         // incomplete header
        (16, vec![]),        // header without payload
        (20, vec![0; 4096]), // zero-filled tail
        (27, b"xyz".to_vec()),
    ];
    let record_len = RECORD_HEADER + payload(1).len() as u64;
    for (keep, garbage) in cases {
        let tmp = tempfile::tempdir().unwrap();
        write_records(tmp.path(), WalOptions::default(), 1..=5);
        let seg = segment_files(tmp.path()).pop().unwrap();
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(SEGMENT_HEADER + 4 * record_len + keep)
            .unwrap();
        drop(file);
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(&garbage)
            .unwrap();
        let (_wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
        assert_eq!(recovered.records, records(1..=4), "keep {keep}");
        let expect_repair = keep > 0 || !garbage.is_empty();
        assert_eq!(
            recovered.tail_repair.is_some(),
            expect_repair,
            "keep {keep}"
        );
    }
}

#[test]
fn flipped_byte_in_the_middle_is_an_error_naming_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), WalOptions::default(), 1..=10);
    let seg = segment_files(tmp.path()).pop().unwrap();
    let record_len = RECORD_HEADER + payload(1).len() as u64;
    let fifth = SEGMENT_HEADER + 4 * record_len;
    let mut bytes = fs::read(&seg).unwrap();
    bytes[(fifth + RECORD_HEADER + 3) as usize] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();

    let err = Wal::open(tmp.path(), WalOptions::default()).unwrap_err();
    match &err {
        WalError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &seg);
            assert_eq!(*offset, fifth);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&seg.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("offset {fifth}")), "{msg}");
    // Nothing was "repaired" away.
    assert_eq!(fs::read(&seg).unwrap(), bytes);

    // A corrupted length field in the middle is caught too.
    let mut bytes2 = bytes.clone();
    bytes2[(fifth + RECORD_HEADER + 3) as usize] ^= 0x40; // undo
    bytes2[fifth as usize + 1] = 0x7f; // len becomes huge
    fs::write(&seg, &bytes2).unwrap();
    let err = Wal::open(tmp.path(), WalOptions::default()).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt { offset, .. } if offset == fifth),
        "{err}"
    );
}

#[test]
fn damage_in_an_older_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), small_segments(), 1..=40);
    let files = segment_files(tmp.path());
    let first = &files[0];
    let len = fs::metadata(first).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let err = Wal::open(tmp.path(), small_segments()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { path, .. } if path == first),
        "{err}"
    );

    // A missing segment in the middle is refused as well.
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), small_segments(), 1..=40);
    let files = segment_files(tmp.path());
    fs::remove_file(&files[2]).unwrap();
    let err = Wal::open(tmp.path(), small_segments()).unwrap_err();
    assert!(matches!(err, WalError::MissingSegment { .. }), "{err}");
}

#[test]
fn crash_while_creating_a_segment_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), small_segments(), 1..=20);
    let last = segment_files(tmp.path()).pop().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap();
    let seq: u64 = name.trim_end_matches(".seg").parse().unwrap();
    let next = tmp.path().join(format!("{:020}.seg", seq + 1));
    fs::write(&next, b"BKST").unwrap(); // header half written
    let (mut wal, recovered) = Wal::open(tmp.path(), small_segments()).unwrap();
    assert_eq!(recovered.records, records(1..=20));
    assert!(recovered.tail_repair.is_some());
    assert_eq!(fs::metadata(&next).unwrap().len(), SEGMENT_HEADER);
    wal.append(21, &payload(21)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_wal, recovered) = Wal::open(tmp.path(), small_segments()).unwrap();
    assert_eq!(recovered.records, records(1..=21));
}

#[test]
fn truncate_suffix_then_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), small_segments(), 1..=40);
    let before = segment_files(tmp.path()).len();
    let (mut wal, _) = Wal::open(tmp.path(), small_segments()).unwrap();
    wal.truncate_suffix(8).unwrap();
    assert_eq!(wal.last_index(), Some(7));
    assert_eq!(wal.durable_index(), Some(7));
    assert!(segment_files(tmp.path()).len() < before);
    // The deposed primary's entries are replaced by the new primary's.
    for i in 8..=12 {
        wal.append(i, format!("new-{i}").as_bytes()).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);

    let (mut wal, recovered) = Wal::open(tmp.path(), small_segments()).unwrap();
    let mut expect = records(1..=7);
    expect.extend((8..=12).map(|index| Record {
        index,
        payload: format!("new-{index}").into_bytes(),
    }));
    assert_eq!(recovered.records, expect);

    // Truncation also drops buffered records, and is durable without an explicit sync.
    wal.append(13, b"x").unwrap();
    wal.append(14, b"y").unwrap();
    wal.truncate_suffix(14).unwrap();
    assert_eq!(wal.last_index(), Some(13));
    drop(wal);
    let (mut wal, recovered) = Wal::open(tmp.path(), small_segments()).unwrap();
    assert_eq!(recovered.records.last().unwrap().index, 13);

    // Truncating everything, and past the end (a no-op).
    wal.truncate_suffix(100).unwrap();
    wal.truncate_suffix(1).unwrap();
    assert_eq!(wal.last_index(), None);
    assert_eq!(segment_files(tmp.path()).len(), 1);
    wal.append(1, b"fresh").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_wal, recovered) = Wal::open(tmp.path(), small_segments()).unwrap();
    assert_eq!(
        recovered.records,
        vec![Record {
            index: 1,
            payload: b"fresh".to_vec()
        }]
    );
}

#[test]
fn snapshot_compaction_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), small_segments(), 1..=60);
    let (mut wal, _) = Wal::open(tmp.path(), small_segments()).unwrap();
    let before = wal.segment_count();
    wal.install_snapshot(30, b"state@30").unwrap();
    assert!(wal.segment_count() < before);
    assert_eq!(segment_files(tmp.path()).len(), wal.segment_count());
    assert!(wal.first_index().unwrap() <= 31);
    assert_eq!(wal.snapshot_index(), Some(30));
    assert!(matches!(
        wal.truncate_suffix(30),
        Err(WalError::TruncateBelowSnapshot { .. })
    ));
    wal.append(61, &payload(61)).unwrap();
    wal.sync().unwrap();
    drop(wal);

    let (mut wal, recovered) = Wal::open(tmp.path(), small_segments()).unwrap();
    let snapshot = recovered.snapshot.unwrap();
    assert_eq!(
        (snapshot.index, snapshot.data.as_slice()),
        (30, &b"state@30"[..])
    );
    assert_eq!(recovered.records, records(31..=61));

    // A newer snapshot replaces the old file; an older one is refused.
    wal.install_snapshot(50, b"state@50").unwrap();
    assert!(matches!(
        wal.install_snapshot(40, b"old"),
        Err(WalError::StaleSnapshot { .. })
    ));
    let snaps: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    assert_eq!(snaps, vec![format!("snap-{:020}.snap", 50)]);
    drop(wal);
    let (_wal, recovered) = Wal::open(tmp.path(), small_segments()).unwrap();
    assert_eq!(recovered.snapshot.unwrap().index, 50);
    assert_eq!(recovered.records, records(51..=61));
}

#[test]
fn snapshot_beyond_the_log_end_state_transfer() {
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), WalOptions::default(), 1..=5);
    let (mut wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    wal.install_snapshot(100, b"state@100").unwrap();
    assert_eq!(wal.last_index(), Some(100));
    assert_eq!(wal.first_index(), None);
    assert_eq!(wal.segment_count(), 1);
    assert!(matches!(
        wal.append(6, b"late"),
        Err(WalError::NonMonotonicIndex { .. })
    ));
    wal.append(101, &payload(101)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.snapshot.unwrap().index, 100);
    assert_eq!(recovered.records, records(101..=101));
}

#[test]
fn leftovers_of_interrupted_snapshot_and_meta_writes_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    write_records(tmp.path(), WalOptions::default(), 1..=5);
    let (mut wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    wal.install_snapshot(3, b"s3").unwrap();
    wal.write_meta(b"epoch=1").unwrap();
    drop(wal);
    fs::write(tmp.path().join(format!("snap-{:020}.snap.tmp", 9)), b"half").unwrap();
    fs::write(tmp.path().join("meta.tmp"), b"half").unwrap();
    let (_wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.snapshot.unwrap().index, 3);
    assert_eq!(recovered.meta.as_deref(), Some(&b"epoch=1"[..]));
    assert_eq!(recovered.records, records(4..=5));
    assert!(!tmp.path().join("meta.tmp").exists());

    // A corrupt snapshot is an error naming the file (it is never silently skipped).
    let snap = tmp.path().join(format!("snap-{:020}.snap", 3));
    let mut bytes = fs::read(&snap).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&snap, bytes).unwrap();
    let err = Wal::open(tmp.path(), WalOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains(&snap.display().to_string()),
        "{err}"
    );
}

#[test]
fn meta_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.meta, None);
    wal.write_meta(b"view=3").unwrap();
    assert_eq!(wal.meta(), Some(&b"view=3"[..]));
    drop(wal);
    let (mut wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.meta.as_deref(), Some(&b"view=3"[..]));
    wal.write_meta(b"").unwrap();
    wal.write_meta(b"view=4;primary=b").unwrap();
    drop(wal);
    let (_wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.meta.as_deref(), Some(&b"view=4;primary=b"[..]));

    fs::write(tmp.path().join("meta"), b"BKSTMTA1garbage!").unwrap();
    let err = Wal::open(tmp.path(), WalOptions::default()).unwrap_err();
    assert!(err.to_string().contains("meta"), "{err}");
}

#[test]
fn group_commit_is_one_write_and_one_fdatasync_per_sync() {
    // What a group-committing caller (the replica's disk thread) relies on: however many
    // records were appended since the last sync, one `sync` writes them all with one
    // `fdatasync`; a sync with nothing buffered costs nothing; a segment rollover adds one.
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    let base = wal.stats();
    assert_eq!((base.records_appended, base.data_syncs), (0, 0));
    for round in 0..3u64 {
        for i in round * 100 + 1..=round * 100 + 100 {
            wal.append(i, &payload(i)).unwrap();
        }
        assert_eq!(wal.durable_index(), (round > 0).then_some(round * 100));
        wal.sync().unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.durable_index(), Some(round * 100 + 100));
        let stats = wal.stats();
        assert_eq!(stats.data_syncs, round + 1);
        assert_eq!(stats.records_appended, round * 100 + 100);
        let record_len = RECORD_HEADER + payload(1).len() as u64;
        assert_eq!(stats.bytes_written, (round * 100 + 100) * record_len);
    }
    drop(wal);

    let (mut wal, recovered) = Wal::open(tmp.path(), small_segments()).unwrap();
    assert_eq!(recovered.records, records(1..=300));
    // A record that does not fit the active segment starts the next one, after syncing
    // what is buffered (here nothing: no fdatasync; then 8 records of 28 bytes fill a
    // 256-byte segment, and the 9th rolls over with one fdatasync of those 8).
    let syncs_before = wal.stats().data_syncs;
    wal.append(301, &payload(301)).unwrap();
    assert_eq!(wal.segment_count(), 2);
    for i in 302..=316 {
        wal.append(i, &payload(i)).unwrap();
    }
    assert_eq!(wal.segment_count(), 3);
    assert_eq!(wal.stats().data_syncs, syncs_before + 1);
    assert_eq!(wal.durable_index(), Some(308));
    wal.sync().unwrap();
    assert_eq!(wal.stats().data_syncs, syncs_before + 2);
    assert_eq!(wal.durable_index(), Some(316));
}

/// Files as the first version of the WAL wrote them (taken from a directory it wrote:
/// segment 8 of a log whose snapshot is at 20, and the meta file). A data directory
/// written by any earlier build must keep opening.
#[test]
fn a_directory_written_by_the_first_format_opens() {
    fn record(buf: &mut Vec<u8>, crc: u32, index: u64, payload: &[u8]) {
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&index.to_le_bytes());
        buf.extend_from_slice(payload);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut segment = b"BKSTWAL1".to_vec();
    segment.extend_from_slice(&8u64.to_le_bytes());
    record(&mut segment, 0x96dd_7e2e, 56, &[0xab; 100]);
    record(&mut segment, 0xe157_8e39, 57, b"");
    record(&mut segment, 0x3723_2c45, 58, b"x");
    assert_eq!(segment.len(), 165);
    fs::write(tmp.path().join("00000000000000000008.seg"), &segment).unwrap();
    let mut snapshot = b"BKSTSNP1".to_vec();
    snapshot.extend_from_slice(&20u64.to_le_bytes());
    snapshot.extend_from_slice(&8u64.to_le_bytes());
    snapshot.extend_from_slice(&0x8476_a29au32.to_le_bytes());
    snapshot.extend_from_slice(&[0; 4]);
    snapshot.extend_from_slice(b"state@20");
    fs::write(tmp.path().join("snap-00000000000000000020.snap"), &snapshot).unwrap();
    let mut meta = b"BKSTMTA1".to_vec();
    meta.extend_from_slice(&7u32.to_le_bytes());
    meta.extend_from_slice(&0x311d_c1adu32.to_le_bytes());
    meta.extend_from_slice(b"epoch=3");
    fs::write(tmp.path().join("meta"), &meta).unwrap();

    let (mut wal, recovered) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    let snapshot = recovered.snapshot.unwrap();
    assert_eq!((snapshot.index, &snapshot.data[..]), (20, &b"state@20"[..]));
    assert_eq!(recovered.meta.as_deref(), Some(&b"epoch=3"[..]));
    assert_eq!(recovered.tail_repair, None);
    let expect = vec![
        Record {
            index: 56,
            payload: vec![0xab; 100],
        },
        Record {
            index: 57,
            payload: Vec::new(),
        },
        Record {
            index: 58,
            payload: b"x".to_vec(),
        },
    ];
    assert_eq!(recovered.records, expect);
    assert_eq!((wal.first_index(), wal.last_index()), (Some(56), Some(58)));
    // Appending continues the same segment, in the same format.
    wal.append(59, b"y").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let mut longer = segment.clone();
    record(&mut longer, 0x575f_0890, 59, b"y");
    let on_disk = fs::read(tmp.path().join("00000000000000000008.seg")).unwrap();
    assert_eq!(on_disk, longer);
}
