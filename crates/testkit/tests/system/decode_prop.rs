//! Property tests of the services' decoders of replicated data (log entries and
//! snapshots arrive from the primary over the network): arbitrary bytes give an error or
//! a command, never a panic; a command is what gets applied; valid data round-trips.
use bookstore_catalog::state::{CatalogState, Update};
use bookstore_catalog::CatalogSm;
use bookstore_common::types::ItemNumber;
use bookstore_order::{OrderSm, Record};
use bookstore_replication::node::StateMachine;
use bookstore_testkit::seed_books;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn catalog_entries_and_snapshots_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut sm = CatalogSm(CatalogState::new(seed_books(), 0));
        let command = CatalogSm::decode(&bytes);
        prop_assert_eq!(command.is_ok(), bookstore_catalog::state::decode_entry(&bytes).is_ok());
        if let Ok(c) = command {
            let _ = sm.apply(1, c);
        }
        let _ = CatalogState::from_bytes(&bytes);
        let _ = sm.restore(&bytes);
    }

    #[test]
    fn catalog_updates_round_trip(item in 1u32..10, delta in -5i64..5, cost in proptest::option::of(0u32..100), stamped in any::<bool>()) {
        let u = Update { item_number: ItemNumber::of(item), stock_delta: delta, cost, request_id: Some("k".parse().unwrap()) };
        let mut sm = CatalogSm(CatalogState::new(seed_books(), 0));
        // Entries as written now (stamped with a time) and before (bare updates).
        let entry = if stamped {
            bookstore_catalog::state::encode_entry(&u, 1_735_689_600_000)
        } else {
            bincode::serialize(&u).unwrap()
        };
        let command = CatalogSm::decode(&entry);
        prop_assert!(command.is_ok());
        let command = command.unwrap();
        prop_assert_eq!(&command.update, &u);
        prop_assert_eq!(command.time_ms, stamped.then_some(1_735_689_600_000));
        let _ = sm.apply(1, command);
        let snap = sm.snapshot();
        let mut again = CatalogSm(CatalogState::new(vec![], 0));
        prop_assert!(again.restore(&snap).is_ok());
        prop_assert_eq!(again.snapshot(), snap);
    }

    #[test]
    fn order_entries_and_snapshots_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut sm = OrderSm::default();
        let valid = bookstore_replication::protocol::decode::<Record>(&bytes).is_ok();
        let command = OrderSm::decode(&bytes);
        prop_assert_eq!(command.is_ok(), valid);
        if let Ok(r) = command {
            let _ = sm.apply(1, r);
        }
        let _ = sm.restore(&bytes);
    }
}
