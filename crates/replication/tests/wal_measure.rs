//! Ad-hoc throughput measurement of group commit (prints, asserts nothing about timing).
//!
//! `cargo test -p bookstore-replication --release --test wal_measure -- --ignored --nocapture`
//! (set `WAL_MEASURE_DIR` to measure on another file system than the temp dir's).
use std::sync::Arc;
use std::time::Instant;

use bookstore_replication::wal::{GroupCommitter, Wal, WalOptions};

fn measure(writers: u64, per_writer: u64, payload_len: usize) {
    let base = std::env::var_os("WAL_MEASURE_DIR").map(std::path::PathBuf::from);
    let tmp = match &base {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let (wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    let committer = Arc::new(GroupCommitter::new(wal));
    let payload = vec![0xab; payload_len];
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            let committer = Arc::clone(&committer);
            let payload = payload.clone();
            s.spawn(move || {
                for _ in 0..per_writer {
                    let (_, ticket) = committer.submit_next(payload.clone()).unwrap();
                    ticket.wait().unwrap();
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let stats = committer.stats();
    let records = writers * per_writer;
    println!(
        "{writers:>2} writer(s), {payload_len} B payloads: {records} records in {:.2?} = {:.0} records/s, \
         {} fdatasyncs ({:.3} per record, {:.1} records per batch, max batch {}), {:.0} us per fdatasync round",
        elapsed,
        records as f64 / elapsed.as_secs_f64(),
        stats.wal.data_syncs,
        stats.wal.data_syncs as f64 / records as f64,
        records as f64 / stats.batches.max(1) as f64,
        stats.max_batch_records,
        elapsed.as_secs_f64() * 1e6 / stats.batches.max(1) as f64,
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
