//! Ad-hoc throughput measurement of group commit on the WAL (prints, asserts nothing
//! about timing).
//!
//! `cargo test -p bookstore-replication --release --test replication wal_measure -- --ignored --nocapture`
//! (set `WAL_MEASURE_DIR` to measure on another file system than the temp dir's).
//!
//! Writers hand records to one disk thread that batches like the replica's (`node/disk.rs`,
//! `disk_loop`): it takes every request waiting, appends them all, makes them durable with
//! one `Wal::sync`, then answers each writer. A writer sends its next record only after
//! the answer to the previous one, like a client waiting for its acknowledgement.
use std::sync::mpsc;
use std::time::Instant;

use bookstore_replication::wal::{Wal, WalOptions};

/// Most requests one round takes, as in `node/disk.rs`.
const MAX_BATCH: usize = 4096;

struct Request {
    payload: Vec<u8>,
    done: mpsc::Sender<()>,
}

/// Write + fdatasync rounds that committed something, and the largest of them.
#[derive(Debug, Default)]
struct Rounds {
    count: u64,
    max_records: u64,
}

/// Assigns indices from the end of the log and group-commits until every sender is gone.
fn disk_thread(mut wal: Wal, requests: mpsc::Receiver<Request>) -> (Wal, Rounds) {
    let mut rounds = Rounds::default();
    let mut next = wal.last_index().map_or(1, |last| last + 1);
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        batch.extend(requests.try_iter().take(MAX_BATCH - 1));
        for request in &batch {
            wal.append(next, &request.payload).unwrap();
            next += 1;
        }
        wal.sync().unwrap();
        rounds.count += 1;
        rounds.max_records = rounds.max_records.max(batch.len() as u64);
        for request in batch {
            let _ = request.done.send(());
        }
    }
    (wal, rounds)
}

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
    std::thread::scope(|s| {
        for _ in 0..writers {
            let tx = tx.clone();
            let payload = &payload;
            s.spawn(move || {
                let (done, answer) = mpsc::channel();
                for _ in 0..per_writer {
                    let request = Request {
                        payload: payload.clone(),
                        done: done.clone(),
                    };
                    tx.send(request).unwrap();
                    answer.recv().unwrap();
                }
            });
        }
    });
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
