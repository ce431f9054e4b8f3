//! Group-commit append throughput of the WAL with 1 and 16 concurrent writers.
//!
//! `cargo bench -p bookstore-replication --bench wal` (add `-- --test` for a quick smoke run).
//!
//! The writers and the disk thread are the tests' `group_commit`: one disk thread that
//! batches like the replica's (`node/disk.rs`, `disk_loop`).
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bookstore_replication::wal::{Wal, WalOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

// The bench prints the WAL's own counts, not the rounds `group_commit` counts.
#[allow(dead_code)]
#[path = "../tests/replication/group_commit.rs"]
mod group_commit;
use group_commit::{disk_thread, run_writers};

const RECORDS_PER_WRITER: u64 = 16;

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_group_commit");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for writers in [1u64, 16] {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        let disk = std::thread::spawn(move || disk_thread(wal, rx));
        let payload = vec![0x5a; 128];
        group.throughput(Throughput::Elements(writers * RECORDS_PER_WRITER));
        group.bench_function(
            format!("{writers}_writers_x{RECORDS_PER_WRITER}_records"),
            |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        run_writers(&tx, writers, RECORDS_PER_WRITER, &payload);
                    }
                    start.elapsed()
                })
            },
        );
        drop(tx);
        let stats = disk.join().unwrap().0.stats();
        eprintln!(
            "{writers} writer(s): {} records, {} fdatasyncs ({:.3} per record)",
            stats.records_appended,
            stats.data_syncs,
            stats.data_syncs as f64 / stats.records_appended.max(1) as f64
        );
    }
    group.finish();
}

/// A 64 MiB snapshot reassembled from its 4 MiB parts (`transfer::Assemblies`), as a
/// backup does before it decodes the batch.
fn snapshot_parts(c: &mut Criterion) {
    use bookstore_replication::transfer::{Assemblies, PART_BYTES};
    let total = 16 * PART_BYTES;
    let part = vec![7u8; PART_BYTES];
    let mut group = c.benchmark_group("snapshot_transfer");
    group.throughput(Throughput::Bytes(total as u64));
    group.sample_size(10);
    group.bench_function("reassemble_64MiB_in_4MiB_parts", |b| {
        b.iter(|| {
            let a = Assemblies::default();
            let mut whole = None;
            for i in 0..16 {
                whole = a.add(1, (1, i * PART_BYTES, total), &part).unwrap();
            }
            whole.expect("complete").len()
        })
    });
    group.finish();
}

criterion_group!(benches, group_commit, snapshot_parts);
criterion_main!(benches);
