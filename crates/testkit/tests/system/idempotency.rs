//! `Idempotency-Key` end to end on an in-process cluster: a key names one request. Its
//! retry returns the first answer; the same key sent with another request (another
//! item, or a restock) is refused with `422` and a JSON error naming the problem, and
//! changes nothing.
use bookstore_common::config::Kind;
use bookstore_common::idempotency::Retention;
use bookstore_testkit::{stock_of, Options, TestCluster, ADMIN_TOKEN, CLUSTER_TOKEN};
use reqwest::StatusCode;
use serde_json::Value;

async fn buy(http: &reqwest::Client, f: &str, item: u32, key: &str) -> (StatusCode, Value) {
    let r = http
        .post(format!("{f}/buy?item_number={item}"))
        .header("Idempotency-Key", key)
        .send()
        .await
        .expect("request");
    let s = r.status();
    (s, r.json().await.expect("JSON body"))
}

async fn stock(http: &reqwest::Client, f: &str, item: u32) -> u64 {
    stock_of(http, f, item, &[("Cache-Control", "no-cache")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_item_gets_422_and_buys_nothing() {
    let c = TestCluster::start().await;
    let f = c.frontend();
    let http = reqwest::Client::new();
    let (s, first) = buy(&http, &f, 4, "reused-key-1").await;
    assert_eq!(s, 200, "{first}");
    let before = stock(&http, &f, 5).await;
    let (s, v) = buy(&http, &f, 5, "reused-key-1").await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a key reused for another item: {v}"
    );
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("Idempotency-Key"), "{v}");
    assert_eq!(stock(&http, &f, 5).await, before, "nothing was bought");
    // The key still answers its own request with the first answer.
    let (s, again) = buy(&http, &f, 4, "reused-key-1").await;
    assert_eq!(
        (s, &again["order_id"]),
        (StatusCode::OK, &first["order_id"])
    );
    // A restock under a buy's key is another request too.
    let r = http
        .post(format!("{f}/admin/restock?item_number=4&quantity=1"))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("Idempotency-Key", "reused-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// A full key table refuses a buy under a new key (503) before anything is bought; the
/// keys it holds keep answering. The catalog's table is larger here, so this is the
/// order service's own bound at work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_order_key_table_refuses_new_keys_and_keeps_the_old_ones() {
    let c = TestCluster::with(Options {
        order_retention: Retention {
            max_keys: 2,
            ..Retention::default()
        },
        ..Options::default()
    })
    .await;
    let f = c.frontend();
    let http = reqwest::Client::new();
    let (_, a) = buy(&http, &f, 4, "full-a").await;
    let (_, b) = buy(&http, &f, 4, "full-b").await;
    assert!(
        a["order_id"].is_string() && b["order_id"].is_string(),
        "{a} {b}"
    );
    let before = stock(&http, &f, 4).await;
    let (s, v) = buy(&http, &f, 4, "full-c").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // The order primary names the reason (the frontend does not pass internals on).
    let view: Value = c
        .internal()
        .get_json(&c.view_url(Kind::Order))
        .await
        .unwrap();
    let primary = view["view"]["primary"].as_u64().unwrap() as u32;
    let r = http
        .post(format!("{}/buy?item_number=4", c.url(Kind::Order, primary)))
        .header("X-Cluster-Token", CLUSTER_TOKEN)
        .header("Idempotency-Key", "full-d")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("idempotency"),
        "{v}"
    );
    assert_eq!(stock(&http, &f, 4).await, before, "nothing was bought");
    let (s, again) = buy(&http, &f, 4, "full-a").await;
    assert_eq!((s, &again["order_id"]), (StatusCode::OK, &a["order_id"]));
}
