//! The order service's replicated state machine on a grown store: applying a record
//! (the per-sale cost on every replica) and a snapshot of 200,000 orders with as many
//! retained keys (what a replica's driver does while its writes wait).
//!
//! `cargo bench -p bookstore-order --bench order` (add `-- --test` to run each once).
use bookstore_common::idempotency::{IdempotencyKey, Retention};
use bookstore_common::types::{ItemNumber, Order};
use bookstore_order::state::{OrderSm, Record};
use bookstore_replication::node::StateMachine;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::time::Duration;

const ORDERS: u64 = 200_000;

/// The `n`th sale as a primary records it: a random key, a uuid order id, a time.
fn record(n: u64) -> Record {
    Record {
        key: IdempotencyKey::generate(),
        order: Order {
            order_id: uuid::Uuid::new_v4().simple().to_string(),
            item_number: ItemNumber::of(1 + (n % 7) as u32),
            price: 20,
            time_ms: 1_800_000_000_000 + n,
        },
    }
}

fn grown() -> OrderSm {
    let mut sm = OrderSm::new(Retention::default());
    for n in 0..ORDERS {
        sm.record(record(n));
    }
    sm
}

fn order(c: &mut Criterion) {
    let mut sm = grown();
    let mut group = c.benchmark_group("order_200k");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    group.throughput(Throughput::Elements(ORDERS));
    group.bench_function("snapshot", |b| b.iter(|| black_box(sm.snapshot().len())));
    group.throughput(Throughput::Elements(1));
    let mut n = ORDERS;
    group.bench_function("apply_record", |b| {
        b.iter_batched(
            || {
                n += 1;
                record(n)
            },
            |r| black_box(sm.apply(0, r).time_ms),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, order);
criterion_main!(benches);
