//! Writes through a primary and its backup (real disks, in-memory network): 16 writes
//! submitted together with `Node::submit_all`, against 16 submitted at once by as many
//! tasks, as the services submitted them before. Together they share one turn of each
//! driver, one `fdatasync` on each replica and one message; one by one they trickle in.
//!
//! `cargo bench -p bookstore-replication --bench node` (add `-- --test` for a quick smoke run).
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[allow(dead_code)]
#[path = "../tests/replication/mesh.rs"]
mod mesh;

const WRITES: usize = 16;

fn writes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (_mesh, nodes, ticker) = rt.block_on(async { mesh::start(2, &dirs) });
    let node = nodes[rt.block_on(mesh::primary(&nodes, None))].clone();

    let mut group = c.benchmark_group("replicated_writes");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(WRITES as u64));
    group.bench_function(format!("{WRITES}_submitted_together"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let answers = node.submit_all(&[1; WRITES]).await;
                    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
                }
                start.elapsed()
            })
        })
    });
    group.bench_function(format!("{WRITES}_submitted_by_{WRITES}_tasks"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..WRITES)
                        .map(|_| {
                            let node = node.clone();
                            tokio::spawn(async move { node.submit(1).await })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap().unwrap();
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    ticker.abort();
    rt.block_on(async {
        for n in &nodes {
            n.crash().await;
        }
    });
}

criterion_group!(benches, writes);
criterion_main!(benches);
