//! Group-commit append throughput with 1 and 16 concurrent writers.
//!
//! `cargo bench -p bookstore-replication --bench wal` (add `-- --test` for a quick smoke run).
use std::sync::Arc;
use std::time::{Duration, Instant};

use bookstore_replication::wal::{GroupCommitter, Wal, WalOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const RECORDS_PER_WRITER: u64 = 16;

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_group_commit");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for writers in [1u64, 16] {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
        let committer = Arc::new(GroupCommitter::new(wal));
        let payload = vec![0x5a; 128];
        group.throughput(Throughput::Elements(writers * RECORDS_PER_WRITER));
        group.bench_function(
            format!("{writers}_writers_x{RECORDS_PER_WRITER}_records"),
            |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        std::thread::scope(|s| {
                            for _ in 0..writers {
                                let committer = &committer;
                                let payload = &payload;
                                s.spawn(move || {
                                    for _ in 0..RECORDS_PER_WRITER {
                                        let (_, ticket) =
                                            committer.submit_next(payload.clone()).unwrap();
                                        ticket.wait().unwrap();
                                    }
                                });
                            }
                        });
                    }
                    start.elapsed()
                })
            },
        );
        let stats = committer.stats();
        eprintln!(
            "{writers} writer(s): {} records, {} fdatasyncs ({:.3} per record)",
            stats.records,
            stats.wal.data_syncs,
            stats.wal.data_syncs as f64 / stats.records.max(1) as f64
        );
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
