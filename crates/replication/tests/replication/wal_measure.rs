//! Ad-hoc throughput measurement of group commit on the WAL (prints, asserts nothing
//! about timing).
//!
//! `cargo test -p bookstore-replication --release --test replication wal_measure -- --ignored --nocapture`
//! (set `WAL_MEASURE_DIR` to measure on another file system than the temp dir's).
//!
//! The writers and the disk thread are `group_commit`'s.
use std::sync::mpsc;
use std::time::Instant;

use bookstore_replication::wal::{Wal, WalOptions};

use crate::group_commit::{disk_thread, run_writers};

fn measure(writers: u64, per_writer: u64, payload_len: usize) {
    let base = std::env::var_os("WAL_MEASURE_DIR").map(std::path::PathBuf::from);
    let tmp = match &base {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let (wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    let (tx, rx) = mpsc::channel();
    let disk = std::thread::spawn(move || disk_thread(wal, rx));
    let payload = vec![0xab; payload_len];
    let start = Instant::now();
    run_writers(&tx, writers, per_writer, &payload);
    let elapsed = start.elapsed();
    drop(tx);
    let (wal, rounds) = disk.join().unwrap();
    let stats = wal.stats();
    let records = writers * per_writer;
    assert_eq!(stats.records_appended, records);
    println!(
        "{writers:>2} writer(s), {payload_len} B payloads: {records} records in {:.2?} = {:.0} records/s, \
         {} fdatasyncs ({:.3} per record, {:.1} records per batch, max batch {}), {:.0} us per fdatasync round",
        elapsed,
        records as f64 / elapsed.as_secs_f64(),
        stats.data_syncs,
        stats.data_syncs as f64 / records as f64,
        records as f64 / rounds.count.max(1) as f64,
        rounds.max_records,
        elapsed.as_secs_f64() * 1e6 / rounds.count.max(1) as f64,
    );
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn group_commit_throughput() {
    measure(1, 2000, 128);
    measure(16, 500, 128);
    measure(64, 250, 128);
    measure(1, 2000, 4096);
    measure(16, 500, 4096);
}
