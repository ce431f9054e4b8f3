//! Property tests of every parser of outside data: whatever the input, they answer with a
//! value or an error naming the problem, never a panic.
use bookstore_common::config::{parse_books, ClusterConfig};
use bookstore_common::openapi::{ItemQuery, TopicQuery};
use bookstore_common::params::{idempotency_key, parse, CostOrNa, MAX_TOPIC_CHARS};
use bookstore_common::types::{CacheFill, LeaseRequest};
use proptest::prelude::*;

/// Parameters of every type a route takes.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Mixed {
    cost: Option<CostOrNa>,
    stock: Option<i64>,
    limit: Option<u32>,
    consistent: Option<String>,
}

fn item(q: &str) -> Result<u32, bookstore_common::ApiError> {
    parse::<ItemQuery>(q).map(|q| q.item_number.0.get())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn query_strings_never_panic(q in ".{0,200}") {
        let _ = item(&q);
        let _ = parse::<TopicQuery>(&q);
        let _ = parse::<Mixed>(&q);
    }

    #[test]
    fn item_numbers_round_trip(n in 1u32..) {
        prop_assert_eq!(item(&format!("item_number={n}")).unwrap(), n);
    }

    #[test]
    fn bad_item_numbers_are_named(s in "[^0-9&=#+ ]{1,12}") {
        let e = item(&format!("item_number={s}")).unwrap_err();
        prop_assert!(e.to_string().contains("item_number"));
    }

    #[test]
    fn idempotency_keys_never_panic(k in proptest::collection::vec(any::<u8>(), 0..200)) {
        let r = idempotency_key(Some(&k));
        if let Ok(Some(key)) = r {
            prop_assert!(!key.as_str().is_empty() && key.as_str().len() <= 128);
        }
    }

    #[test]
    fn cluster_files_never_panic(text in "(((frontend|cache|catalog|order|x),[a-z0-9.:]{0,20})?\n){0,8}") {
        if let Err(e) = ClusterConfig::parse(&text, "f") {
            prop_assert!(e.to_string().starts_with("f:"));
        }
    }

    #[test]
    fn books_files_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut text = b"item_number,title,topic,stock,cost\n".to_vec();
        text.extend(body);
        if let Err(e) = parse_books(&text[..], "b") {
            prop_assert!(e.to_string().starts_with("b"));
        }
    }

    #[test]
    fn valid_books_parse(rows in proptest::collection::vec(("[a-zA-Z ]{1,20}", "[a-z]{1,8}", any::<u32>(), any::<u32>()), 1..20)) {
        let mut text = String::from("item_number,title,topic,stock,cost\n");
        for (i, (title, topic, stock, cost)) in rows.iter().enumerate() {
            text.push_str(&format!("{},{title},{topic},{stock},{cost}\n", i + 1));
        }
        let books = parse_books(text.as_bytes(), "b");
        // Titles that are only spaces are trimmed to empty and refused, by name.
        match books {
            Ok(b) => prop_assert_eq!(b.len(), rows.len()),
            Err(e) => prop_assert!(e.to_string().contains("is empty"), "{}", e),
        }
    }

    #[test]
    fn json_bodies_never_panic(text in ".{0,200}") {
        let _ = serde_json::from_str::<LeaseRequest>(&text);
        let _ = serde_json::from_str::<CacheFill>(&text);
    }

    #[test]
    fn whole_numbers_are_read_as_json_schema_integers(n in 0u64..=i64::MAX as u64, frac in 1u32..1000) {
        let fill = |v: String| serde_json::from_str::<CacheFill>(
            &format!(r#"{{"version": {v}, "items": [1], "response": {{}}}}"#));
        prop_assert_eq!(fill(n.to_string()).unwrap().version, n);
        // An integral float, as JSON Schema's `integer` allows (checked where an f64 still
        // holds a thousandth exactly).
        let small = n % (1 << 40);
        prop_assert_eq!(fill(format!("{small}.0")).unwrap().version, small);
        let fraction = fill(format!("{small}.{frac:03}")).is_err();
        let negative = fill(format!("-{}", n.max(1))).is_err();
        let too_big = fill(((i64::MAX as u64) + 1 + n % 1000).to_string()).is_err();
        prop_assert!(fraction && negative && too_big);
    }

    #[test]
    fn topics_are_limited_in_characters(t in "[a-zé日]{1,300}") {
        let q = format!("topic={}", bookstore_common::client::encode(&t));
        let r = parse::<TopicQuery>(&q).map(|q| q.topic.0);
        prop_assert_eq!(r.is_ok(), t.chars().count() <= MAX_TOPIC_CHARS);
    }
}
