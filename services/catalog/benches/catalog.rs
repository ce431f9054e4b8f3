//! The catalog's hot paths on a 1,000,000-book catalog (built in memory, topics of
//! 1,000 books as `loadtest gen-books` writes them): lookup, search of a 1,000-hit
//! topic, the replicated state machine applying a sale, and the JSON encoding of the
//! lookup and search answers.
//!
//! `cargo bench -p bookstore-catalog --bench catalog` (add `-- --test` to run each once).
use bookstore_catalog::state::{CatalogState, Update};
use bookstore_catalog::CatalogSm;
use bookstore_common::types::{
    Book, ItemNumber, LookupResponse, SearchHit, SearchResponse, Versioned,
};
use bookstore_replication::node::StateMachine;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::time::Duration;

const BOOKS: u32 = 1_000_000;
const HITS_PER_TOPIC: u32 = 1_000;

fn books() -> Vec<Book> {
    (1..=BOOKS)
        .map(|n| Book {
            item_number: ItemNumber::of(n),
            title: format!("Practical Replicas volume {n}"),
            topic: format!("topic-{:04}", (n - 1) / HITS_PER_TOPIC),
            stock: 1_000_000,
            cost: 5 + n % 96,
        })
        .collect()
}

/// Cheap deterministic item numbers spread over the catalog.
fn items() -> impl FnMut() -> ItemNumber {
    let mut x: u32 = 0x9E37_79B9;
    move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        ItemNumber::of(x % BOOKS + 1)
    }
}

fn catalog(c: &mut Criterion) {
    let state = CatalogState::new(books(), 0);
    let mut group = c.benchmark_group("catalog_1m");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    let mut next = items();
    group.bench_function("lookup", |b| {
        b.iter(|| black_box(state.lookup(next()).map(|b| b.stock)))
    });
    assert_eq!(state.search("topic-0500").len(), HITS_PER_TOPIC as usize);
    group.bench_function("search_1000_hits", |b| {
        b.iter(|| black_box(state.search(black_box("topic-0500")).len()))
    });
    group.bench_function("query_by_item_answer", |b| {
        // What the catalog route does: look up (an owned copy), encode.
        b.iter(|| {
            let book = state.lookup(next()).unwrap();
            serde_json::to_vec(&Versioned {
                result: book,
                version: state.version(),
            })
            .unwrap()
        })
    });
    // The check behind a fresh sold-out answer from state (no log entry): every sale is
    // refused with stock 0, a key is looked up first.
    let sold_out = CatalogState::new(
        books()
            .into_iter()
            .map(|b| Book { stock: 0, ..b })
            .collect(),
        0,
    );
    group.bench_function("sold_out_from_state", |b| {
        b.iter(|| {
            let u = Update {
                item_number: next(),
                stock_delta: -1,
                cost: None,
                request_id: Some("bench-fresh-key".parse().unwrap()),
            };
            black_box(sold_out.settled(&u).or_else(|| sold_out.sold_out(&u)))
        })
    });
    group.bench_function("query_by_topic_answer_1000_hits", |b| {
        b.iter(|| {
            let hits = state.search("topic-0500");
            serde_json::to_vec(&Versioned {
                result: &*hits,
                version: state.version(),
            })
            .unwrap()
        })
    });
    group.finish();

    // The state machine applying one sale (bincode command in, bincode outcome out).
    let mut sm = CatalogSm(state);
    let mut group = c.benchmark_group("catalog_sm_1m");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let mut index = 0u64;
    let mut next = items();
    group.bench_function("apply_sale", |b| {
        b.iter_batched(
            || {
                index += 1;
                let cmd = bincode::serialize(&Update {
                    item_number: next(),
                    stock_delta: -1,
                    cost: None,
                    request_id: Some(format!("bench-{index}").parse().unwrap()),
                })
                .unwrap();
                (index, cmd)
            },
            |(i, cmd)| black_box(sm.apply(i, CatalogSm::decode(&cmd).unwrap())),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let book = Book {
        item_number: ItemNumber::of(1),
        title: "How to get a good grade in 677 in 20 minutes a day".into(),
        topic: "distributed systems".into(),
        stock: 3,
        cost: 10,
    };
    let hits: Vec<SearchHit> = (1..=HITS_PER_TOPIC)
        .map(|n| SearchHit {
            item_number: ItemNumber::of(n),
            title: format!("Practical Replicas volume {n}"),
        })
        .collect();
    let lookup = LookupResponse { result: book };
    let search_small = SearchResponse {
        result: hits[..2].to_vec(),
    };
    let search_big = SearchResponse { result: hits };
    let mut group = c.benchmark_group("encode_json");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("lookup_response", |b| {
        b.iter(|| serde_json::to_vec(black_box(&lookup)).unwrap())
    });
    group.bench_function("search_response_2_hits", |b| {
        b.iter(|| serde_json::to_vec(black_box(&search_small)).unwrap())
    });
    group.bench_function("search_response_1000_hits", |b| {
        b.iter(|| serde_json::to_vec(black_box(&search_big)).unwrap())
    });
    // The frontend goes through serde_json::Value (it keeps the value for the cache).
    group.bench_function("lookup_response_via_value", |b| {
        b.iter(|| {
            let v = serde_json::to_value(black_box(&lookup)).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, catalog, encoding);
criterion_main!(benches);
