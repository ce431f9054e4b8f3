//! The public and internal APIs end to end, on a real in-process cluster. This file:
//! the public API (search, lookup, buy, bad input, idempotency keys); `access`: which
//! token each route needs and who is sent the cluster token; `replication`: health,
//! failover, timing, OpenAPI, the replication routes and read leases.
use bookstore_common::config::Kind;
use bookstore_common::types::{Book, ItemNumber};
use bookstore_testkit::{Options, TestCluster, ADMIN_TOKEN, CLUSTER_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;

mod access;
mod replication;

async fn get(url: String) -> (StatusCode, Value) {
    let r = reqwest::get(&url).await.expect("request");
    let s = r.status();
    (s, r.json().await.expect("JSON body"))
}

async fn post(url: String) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .expect("request");
    let s = r.status();
    (s, r.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_returns_every_topic_and_an_empty_list_for_unknown() {
    let c = TestCluster::start().await;
    let f = c.frontend();
    let (s, v) = get(format!("{f}/search?topic=distributed%20systems")).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"result": [
            {"item_number": 1, "title": "How to get a good grade in 677 in 20 minutes a day"},
            {"item_number": 2, "title": "RPCs for Dummies"}]})
    );
    let (_, v) = get(format!("{f}/search?topic=graduate+school")).await;
    let items: Vec<u64> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["item_number"].as_u64().unwrap())
        .collect();
    assert_eq!(items, vec![3, 4, 5, 6]);
    // Twice more: the second and third come from the cache, identical.
    for _ in 0..2 {
        let (_, again) = get(format!("{f}/search?topic=graduate+school")).await;
        assert_eq!(again, v);
    }
    assert_eq!(
        get(format!("{f}/search?topic=cooking")).await,
        (StatusCode::OK, json!({"result": []}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_returns_every_seed_book_with_numbers() {
    let c = TestCluster::start().await;
    for b in bookstore_testkit::seed_books() {
        let (s, v) = get(format!(
            "{}/lookup?item_number={}",
            c.frontend(),
            b.item_number
        ))
        .await;
        assert_eq!(s, 200);
        assert!(v["result"]["stock"].is_u64() && v["result"]["cost"].is_u64());
        let got: Book = serde_json::from_value(v["result"].clone()).unwrap();
        assert_eq!(got, b);
    }
    let (_, v) = get(format!("{}/lookup?item_number=4", c.frontend())).await;
    assert_eq!(v["result"]["stock"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buying_book_1_succeeds_three_times_then_fails() {
    let c = TestCluster::start().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let (s, v) = post(format!("{}/buy?item_number=1", c.frontend())).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["result"], "Success");
        assert!(ids.insert(v["order_id"].as_str().unwrap().to_string()));
    }
    let (s, v) = post(format!("{}/buy?item_number=1", c.frontend())).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v, json!({"result": "Failed", "error": "out of stock"}));
    let (_, v) = get(format!("{}/lookup?item_number=1", c.frontend())).await;
    assert_eq!(v["result"]["stock"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_buyers_of_a_three_copy_book_three_succeed() {
    let c = TestCluster::start().await;
    let url = format!("{}/buy?item_number=2", c.frontend());
    let results = futures::future::join_all((0..4).map(|_| post(url.clone()))).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let failed = results.iter().filter(|(s, _)| *s == 409).count();
    assert_eq!((ok, failed), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_buys_of_ten_copies_sell_exactly_ten() {
    let books = vec![Book {
        item_number: ItemNumber::of(1),
        title: "Ten copies".into(),
        topic: "t".into(),
        stock: 10,
        cost: 7,
    }];
    let c = TestCluster::with(Options {
        books,
        ..Options::default()
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/buy?item_number=1", c.frontend());
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.post(&url).send().await.unwrap().status() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap().as_u16() {
            200 => ok += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 10);
    let (_, v) = get(format!("{}/lookup?item_number=1", c.frontend())).await;
    assert_eq!(v["result"]["stock"], 0);
    // The primary answers once it has applied what it committed; a loaded machine can
    // delay that (503), so allow it a moment.
    let url = format!("{}/orders", c.url(Kind::Order, 0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let orders: Value = loop {
        match c.internal().get_json(&url).await {
            Ok(v) => break v,
            Err(e) if e.status() == Some(503) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{url}: {e}"),
        }
    };
    let orders = orders["result"].as_array().unwrap();
    assert_eq!(orders.len(), 10);
    assert!(orders
        .iter()
        .all(|o| o["price"] == 7 && o["item_number"] == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_with_a_json_error_naming_the_problem() {
    let c = TestCluster::start().await;
    let f = c.frontend();
    let cases = [
        (format!("{f}/lookup"), 400, "missing parameter item_number"),
        (
            format!("{f}/lookup?item_number=abc"),
            400,
            "item_number must be a positive integer",
        ),
        (format!("{f}/lookup?item_number=-3"), 400, "item_number"),
        (
            format!("{f}/lookup?item_number=99999999999"),
            400,
            "item_number",
        ),
        (
            format!("{f}/lookup?item_number=99"),
            404,
            "no book with item_number 99",
        ),
        (format!("{f}/search"), 400, "missing parameter topic"),
        (format!("{f}/search?topic="), 400, "topic must not be empty"),
        (format!("{f}/nope"), 404, "no route GET /nope"),
    ];
    for (url, status, needle) in cases {
        let (s, v) = get(url.clone()).await;
        assert_eq!(s.as_u16(), status, "{url}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{url}: no error field in {v}"));
        assert!(msg.contains(needle), "{url}: {msg:?} lacks {needle:?}");
    }
    let (s, v) = post(format!("{f}/buy?item_number=99")).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str().unwrap()),
        (404, "no book with item_number 99")
    );
    let (s, v) = post(format!("{f}/buy?item_number=x")).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = post(format!("{f}/buy")).await;
    assert_eq!(s, 400, "{v}");
    // A GET that changes state is the seed's bug: GET /buy is refused.
    let r = reqwest::get(format!("{f}/buy?item_number=1"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "POST");
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    // Nothing was bought by any of the above.
    let (_, v) = get(format!("{f}/lookup?item_number=1")).await;
    assert_eq!(v["result"]["stock"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retried_buy_return_the_first_answer() {
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/buy?item_number=5", c.frontend());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = http
            .post(&url)
            .header("Idempotency-Key", "retry-me-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        ids.push(r.json::<Value>().await.unwrap()["order_id"].clone());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let (_, v) = get(format!("{}/lookup?item_number=5", c.frontend())).await;
    assert_eq!(v["result"]["stock"], 2);
    let r = http
        .post(&url)
        .header("Idempotency-Key", "x".repeat(200))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
