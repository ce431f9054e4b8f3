//! The catalog's idempotency records, driven through its state directly: a successful
//! sale's key survives any number of later answers that changed nothing (sold out), and a
//! key reused for another request is refused.
use bookstore_catalog::state::{CatalogState, Update, UpdateError};
use bookstore_common::types::{Book, ItemNumber};

fn book(n: u32, stock: u32) -> Book {
    Book {
        item_number: ItemNumber::of(n),
        title: format!("t{n}"),
        topic: "a".into(),
        stock,
        cost: 10,
    }
}

fn sell(n: u32, key: &str) -> Update {
    Update {
        item_number: ItemNumber::of(n),
        stock_delta: -1,
        cost: None,
        request_id: Some(key.parse().unwrap()),
    }
}

#[test]
fn sold_out_answers_never_push_out_a_successful_sale() {
    let mut c = CatalogState::new(vec![book(1, 1), book(2, 0)], 0);
    let first = c.update(&sell(1, "first"), 1);
    assert!(first.is_ok());
    // Anyone can ask for a sold-out book, with as many fresh keys as they like.
    for i in 0..200_000u64 {
        let out = c.update(&sell(2, &format!("fresh-{i}")), i + 2);
        assert_eq!(out, Err(UpdateError::OutOfStock));
    }
    assert_eq!(
        c.settled(&sell(1, "first")),
        Some(first.clone()),
        "the successful sale's key must still be known"
    );
    // The retry changes nothing.
    assert_eq!(c.update(&sell(1, "first"), 300_000), first);
    assert_eq!(c.lookup(ItemNumber::of(1)).unwrap().stock, 0);
}

#[test]
fn a_key_reused_for_another_item_is_refused() {
    let mut c = CatalogState::new(vec![book(1, 5), book(2, 5)], 0);
    c.update(&sell(1, "k"), 1).unwrap();
    let reused = c.update(&sell(2, "k"), 2);
    assert!(
        reused.is_err(),
        "a key reused for another item must be refused, got {reused:?}"
    );
    assert_eq!(
        reused,
        Err(UpdateError::KeyReused {
            first_item: ItemNumber::of(1)
        })
    );
    assert_eq!(
        c.lookup(ItemNumber::of(2)).unwrap().stock,
        5,
        "and change nothing"
    );
}

/// A log entry (from a primary, not through the HTTP layer's range check) may carry any
/// change of stock: it is refused, never a panic or a wrapped stock.
#[test]
fn any_change_of_stock_is_checked_below_the_http_layer() {
    let mut c = CatalogState::new(vec![book(1, 5)], 0);
    for delta in [i64::MAX, i64::MIN, i64::from(u32::MAX)] {
        let u = Update {
            item_number: ItemNumber::of(1),
            stock_delta: delta,
            cost: None,
            request_id: None,
        };
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.update(&u, 1)));
        assert!(
            matches!(out, Ok(Err(_))),
            "a change of {delta} was not refused"
        );
        assert_eq!(c.lookup(ItemNumber::of(1)).unwrap().stock, 5);
    }
}
