//! The order log's idempotency keys, driven through the replicated state machine
//! directly (no HTTP): a retry of a successful buy finds its first order however many
//! buys came after it, for the whole retention window, and across a snapshot.
use bookstore_common::types::{ItemNumber, Order};
use bookstore_order::{OrderSm, Record};
use bookstore_replication::node::StateMachine;

/// 1 January 2025, in milliseconds since the Unix epoch.
const T0: u64 = 1_735_689_600_000;

fn record(key: &str, item: u32, time_ms: u64) -> Record {
    Record {
        key: key.parse().unwrap(),
        order: Order {
            order_id: format!("order-{key}"),
            item_number: ItemNumber::of(item),
            price: 10,
            time_ms,
        },
    }
}

/// Applies `r` as a log entry, as every replica does.
fn apply(sm: &mut OrderSm, index: u64, r: &Record) -> Order {
    let command = OrderSm::decode(&OrderSm::encode(r)).expect("a record decodes");
    sm.apply(index, command)
}

#[test]
fn a_retry_after_200000_fresh_buys_returns_the_first_order_id() {
    let mut sm = OrderSm::default();
    let first = sm.record(record("first", 1, T0));
    // 200,000 later buys with fresh keys, one a millisecond: well within a day.
    for i in 0..200_000u64 {
        apply(
            &mut sm,
            i + 2,
            &record(&format!("fresh-{i}"), 2, T0 + 1 + i),
        );
    }
    let again = sm.by_key("first").map(|o| o.order_id.clone());
    assert_eq!(
        again.as_deref(),
        Some(first.order_id.as_str()),
        "the retry of the first buy must find its order after 200,000 fresh buys"
    );
    // And the same through a snapshot (what a new backup or a restart starts from).
    let mut restored = OrderSm::default();
    restored.restore(&sm.snapshot()).unwrap();
    assert_eq!(
        restored.by_key("first").map(|o| o.order_id.as_str()),
        Some(first.order_id.as_str())
    );
}

#[test]
fn keys_older_than_the_retention_window_are_forgotten() {
    let mut sm = OrderSm::default();
    sm.record(record("old", 1, T0));
    sm.record(record("new", 1, T0 + 25 * 3_600_000));
    assert!(
        sm.by_key("old").is_none(),
        "a key 25 h old is past the default 24 h retention"
    );
    assert!(sm.by_key("new").is_some());
    assert_eq!(sm.orders().len(), 2, "the order history itself is kept");
}
