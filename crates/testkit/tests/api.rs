//! The public and internal APIs end to end, on a real in-process cluster.
use bookstore_common::config::Kind;
use bookstore_common::types::Book;
use bookstore_testkit::{Options, TestCluster, ADMIN_TOKEN, CLUSTER_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;

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
        item_number: 1,
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

/// Every operation of every server's OpenAPI documents (which
/// crates/testkit/tests/contract.rs checks against the routers), with the server's URL,
/// the method, a concrete path and the security scheme the document gives it.
fn every_operation(c: &TestCluster) -> Vec<(String, String, String, Option<String>)> {
    let mut docs = vec![
        (c.frontend(), bookstore_frontend::public_openapi()),
        (c.frontend(), bookstore_frontend::internal_openapi()),
        (c.url(Kind::Cache, 0), bookstore_cache::internal_openapi()),
        (c.coordinator(), bookstore_coordinator::internal_openapi()),
        (c.coordinator(), bookstore_coordinator::admin_openapi()),
    ];
    for id in 0..2 {
        docs.push((
            c.url(Kind::Catalog, id),
            bookstore_catalog::internal_openapi(),
        ));
        docs.push((c.url(Kind::Order, id), bookstore_order::internal_openapi()));
    }
    let mut out = Vec::new();
    for (base, doc) in docs {
        let json = serde_json::to_value(&doc).unwrap();
        for (path, item) in json["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let scheme = op["security"][0]
                    .as_object()
                    .and_then(|o| o.keys().next().cloned());
                let path = path.replace("{kind}", "catalog");
                out.push((base.clone(), method.to_uppercase(), path, scheme));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_need_the_cluster_token() {
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let ops = every_operation(&c);
    let cluster_ops: Vec<_> = ops
        .iter()
        .filter(|o| o.3.as_deref() == Some("cluster_token"))
        .collect();
    // Every internal route of every server, from the documents: at least the ones the
    // seed cluster is known to have.
    assert!(
        cluster_ops.len() >= 35,
        "{} cluster-token routes",
        cluster_ops.len()
    );
    for (base, method, path, _) in &cluster_ops {
        for token in [None, Some("wrong"), Some(ADMIN_TOKEN)] {
            let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(t) = token {
                req = req.header("x-cluster-token", t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {base}{path} with {token:?}");
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("X-Cluster-Token"));
        }
    }
    // Every route the documents call public is public: none answers 401.
    for (base, method, path, scheme) in &ops {
        if scheme.is_none() && method == "GET" {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_ne!(r.status(), 401, "GET {base}{path}");
        }
    }
    // With the token, garbage is refused by name, not obeyed.
    for url in [
        c.url(Kind::Catalog, 1) + "/replication/msg?from=0",
        c.coordinator() + &bookstore_common::coordinators::ping_path("catalog"),
    ] {
        let r = http
            .post(&url)
            .header("x-cluster-token", CLUSTER_TOKEN)
            .body(vec![0xffu8; 64])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("undecodable"),
            "{url}: {v}"
        );
    }
    // With the token, reads work.
    let r = http
        .get(c.url(Kind::Catalog, 0) + "/query_by_item?item_number=1")
        .header("x-cluster-token", CLUSTER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // No state changed.
    let (_, v) = get(format!("{}/lookup?item_number=1", c.frontend())).await;
    assert_eq!(v["result"]["stock"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_restock_needs_the_admin_token_and_changes_stock_and_price() {
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    // Every admin route (from the documents) refuses a missing or wrong admin token, and
    // the cluster token in its place.
    let admin: Vec<_> = every_operation(&c)
        .into_iter()
        .filter(|o| o.3.as_deref() == Some("admin_token"))
        .collect();
    assert!(!admin.is_empty());
    for (base, method, path, _) in &admin {
        for auth in [
            None,
            Some("Bearer wrong".to_string()),
            Some(format!("Bearer {CLUSTER_TOKEN}")),
            Some(ADMIN_TOKEN.to_string()),
        ] {
            let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("admin"), "{v}");
        }
    }
    let url = format!(
        "{}/admin/restock?item_number=7&quantity=4&cost=21",
        c.frontend()
    );
    for auth in [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {CLUSTER_TOKEN}")),
    ] {
        let mut req = http.post(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401);
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = http
        .post(&url)
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = get(format!("{}/lookup?item_number=7", c.frontend())).await;
    assert_eq!(
        (v["result"]["stock"].as_u64(), v["result"]["cost"].as_u64()),
        (Some(7), Some(21))
    );
    let bad = [
        format!("{}/admin/restock?item_number=7", c.frontend()),
        format!("{}/admin/restock?item_number=7&quantity=-1", c.frontend()),
        format!("{}/admin/restock?item_number=7&cost=abc", c.frontend()),
    ];
    for u in bad {
        let r = http
            .post(&u)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{u}");
    }
    let r = http
        .post(format!(
            "{}/admin/restock?item_number=70&quantity=1",
            c.frontend()
        ))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_health() {
    let c = TestCluster::start().await;
    for (kind, id, e) in c.cluster.all() {
        let (s, v) = get(format!("{}/health", e.url())).await;
        assert_eq!(s, 200);
        assert_eq!(v["service"], kind.name());
        assert_eq!(v["id"], id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_catalog_primary_fails_over_and_recovers_from_disk() {
    let c = TestCluster::start().await;
    let client = c.internal();
    let cat0 = c.url(Kind::Catalog, 0);
    let _: Value = client
        .post_json(&format!("{cat0}/shutdown"), &[])
        .await
        .unwrap();
    assert_eq!(get(format!("{cat0}/health")).await.0, 503);
    // The seed's scenario: buy while a catalog replica is down. Ours fails over.
    let (s, v) = post(format!("{}/buy?item_number=3", c.frontend())).await;
    assert_eq!(s, 200, "{v}");
    let _: Value = client
        .post_json(&format!("{cat0}/recover"), &[])
        .await
        .unwrap();
    c.wait_ready().await;
    let (s, _) = post(format!("{}/buy?item_number=3", c.frontend())).await;
    assert_eq!(s, 200);
    // Both replicas converge on the same books, with both sales (a backup applies a
    // committed entry when the primary next tells it the commit index).
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen.clear();
        for id in 0..2 {
            // A backup answers 503 while it is not caught up.
            let v: Option<Value> = client
                .get_json(&format!("{}/books", c.url(Kind::Catalog, id)))
                .await
                .ok();
            seen.push(v.map(|v| v["result"].clone()).unwrap_or_default());
        }
        if seen[0] == seen[1] && !seen[0].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0][2]["stock"], 1, "book 3 sold twice: {}", seen[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_server_timing_per_tier() {
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let f = c.frontend();
    let tiers = |r: &reqwest::Response| -> Vec<String> {
        let h = r.headers()["server-timing"].to_str().unwrap().to_string();
        h.split(", ")
            .map(|p| {
                let (name, dur) = p.split_once(";dur=").unwrap();
                assert!(dur.parse::<f64>().unwrap() >= 0.0, "{h}");
                name.to_string()
            })
            .collect()
    };
    let r = http
        .get(format!("{f}/lookup?item_number=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(tiers(&r)[0], "frontend");
    assert!(tiers(&r).contains(&"catalog".to_string()) || tiers(&r).contains(&"cache".to_string()));
    let r = http
        .post(format!("{f}/buy?item_number=1"))
        .send()
        .await
        .unwrap();
    // The frontend folds the order service's calls (and theirs) into its header.
    assert_eq!(
        tiers(&r),
        [
            "frontend",
            "order",
            "order.catalog",
            "order.catalog.replication",
            "order.catalog.cache",
            "order.replication"
        ]
    );
    let r = c
        .internal()
        .raw()
        .post(format!("{}/buy?item_number=2", c.url(Kind::Order, 0)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        tiers(&r),
        [
            "order",
            "catalog",
            "catalog.replication",
            "catalog.cache",
            "replication"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_documents_are_served() {
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let (s, v) = get(format!("{}/openapi.json", c.frontend())).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        serde_json::to_value(bookstore_frontend::public_openapi()).unwrap()
    );
    assert!(v["paths"]["/buy"]["post"].is_object(), "{v}");
    let internal = [
        (c.frontend(), bookstore_frontend::internal_openapi()),
        (
            c.url(Kind::Catalog, 1),
            bookstore_catalog::internal_openapi(),
        ),
        (c.url(Kind::Order, 0), bookstore_order::internal_openapi()),
        (c.url(Kind::Cache, 0), bookstore_cache::internal_openapi()),
        (c.coordinator(), bookstore_coordinator::internal_openapi()),
    ];
    for (base, doc) in internal {
        let url = format!("{base}/internal/openapi.json");
        assert_eq!(http.get(&url).send().await.unwrap().status(), 401, "{url}");
        let r = http
            .get(&url)
            .header("x-cluster-token", CLUSTER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v, serde_json::to_value(doc).unwrap(), "{url}");
    }
}

/// A replication message as big as a snapshot of a 1,000,000-book catalog (~68 MB) is
/// read and judged by the replica, not refused for its size (which would leave a backup
/// that needs a snapshot unable to catch up, and writes waiting for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sized_replication_messages_arrive_in_parts() {
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let url = c.url(Kind::Catalog, 1) + "/replication/msg?from=0";
    let post = |url: String, body: Vec<u8>| {
        http.post(url)
            .header("x-cluster-token", CLUSTER_TOKEN)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    // Whole, 100 MiB is past the replicas' body limit.
    let r = post(url.clone(), vec![0xffu8; 100 << 20]).await.unwrap();
    assert_eq!(r.status(), 413);
    // In parts it is read; the last part makes the batch, refused as undecodable.
    let part = bookstore_replication::transfer::PART_BYTES;
    let total = 25 * part;
    for i in 0..25 {
        let r = post(
            format!("{url}&xfer=7&offset={}&total={total}", i * part),
            vec![0xffu8; part],
        )
        .await
        .unwrap();
        if i < 24 {
            assert_eq!(r.status(), 200, "part {i}");
        } else {
            assert_eq!(r.status(), 400, "read, then refused as undecodable");
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("undecodable"), "{v}");
        }
    }
    // A part that continues no transfer.
    let r = post(
        format!("{url}&xfer=8&offset={part}&total={total}"),
        vec![1; 8],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 409);
}

/// A sale of a sold-out book under a fresh key (the first send of a key the frontend made
/// up) is answered by the catalog primary from its state, with no log entry. Anything that
/// may have an earlier attempt goes through the log, so that its key is remembered: a key
/// given by the client, a batch sent again (`x-bookstore-resend`), a single `/update`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_fresh_sale_of_a_sold_out_book_skips_the_log() {
    let c = TestCluster::start().await;
    let http = c.internal();
    let catalog = c.url(Kind::Catalog, 0);
    let commit = || {
        let req = http.raw().get(format!("{catalog}/replication/status"));
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            v["commit"]
                .as_u64()
                .unwrap_or_else(|| panic!("no commit in {v}"))
        }
    };
    // Book 1 has 3 copies.
    for _ in 0..3 {
        let (s, _) = post(format!("{}/buy?item_number=1", c.frontend())).await;
        assert_eq!(s, 200);
    }
    let before = commit().await;
    let (s, v) = post(format!("{}/buy?item_number=1", c.frontend())).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(
        commit().await,
        before,
        "a fresh sold-out sale wrote a log entry"
    );
    let update = |key: &str, fresh: bool, resend: bool| {
        let mut req = http.raw().post(format!("{catalog}/update_batch")).json(
            &json!({"updates": [{"item_number": 1, "stock": -1, "key": key, "fresh": fresh}]}),
        );
        if resend {
            req = req.header("x-bookstore-resend", "1");
        }
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            assert_eq!(v["results"][0]["status"], 409, "{v}");
        }
    };
    update("fresh-first", true, false).await;
    assert_eq!(commit().await, before, "fresh, first send: no log entry");
    for (key, fresh, resend) in [("fresh-resent", true, true), ("not-fresh", false, false)] {
        let at = commit().await;
        update(key, fresh, resend).await;
        assert_eq!(commit().await, at + 1, "{key}: its refusal must be logged");
    }
    let at = commit().await;
    let r = reqwest::Client::new()
        .post(format!("{}/buy?item_number=1", c.frontend()))
        .header("idempotency-key", "the-client-s-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        commit().await,
        at + 1,
        "a client's key: its refusal must be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_routes_answer_each_request_as_the_single_route_would() {
    let c = TestCluster::start().await;
    let http = c.internal();
    let post_json = |url: String, body: Value| {
        let req = http.raw().post(url).json(&body);
        async move {
            let r = req.send().await.expect("request");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.expect("JSON body"))
        }
    };
    let order = c.url(Kind::Order, 0);
    let catalog = c.url(Kind::Catalog, 0);
    let statuses = |v: &Value| -> Vec<u64> {
        v["results"]
            .as_array()
            .unwrap_or_else(|| panic!("no results in {v}"))
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect()
    };

    // Buys: a success, an unknown book, and a retry of the first under its key.
    let (s, v) = post_json(
        format!("{order}/buy_batch"),
        json!({"buys": [
            {"item_number": 1, "key": "batch-a"},
            {"item_number": 99, "key": "batch-b"},
            {"item_number": 1, "key": "batch-a"},
        ]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(statuses(&v), [200, 404, 200], "{v}");
    assert_eq!(v["results"][0]["ok"], v["results"][2]["ok"], "{v}");
    assert!(v["results"][1]["error"].as_str().unwrap().contains("99"));
    assert!(v["results"][0]["timing"]
        .as_str()
        .unwrap()
        .starts_with("order;dur="));
    let (_, book) = get(format!("{}/lookup?item_number=1", c.frontend())).await;
    assert_eq!(book["result"]["stock"], 2, "the retried key bought once");

    // Stock changes: four buyers of book 3's three copies in one batch.
    let changes: Vec<Value> = (0..4)
        .map(|i| json!({"item_number": 3, "stock": -1, "key": format!("change-{i}")}))
        .collect();
    let (s, v) = post_json(
        format!("{catalog}/update_batch"),
        json!({ "updates": changes }),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut got = statuses(&v);
    got.sort();
    assert_eq!(got, [200, 200, 200, 409], "{v}");

    // A backup sends the whole batch to the primary.
    let (s, v) = post_json(
        format!("{}/update_batch", c.url(Kind::Catalog, 1)),
        json!({"updates": [{"item_number": 2, "stock": -1, "key": "on-backup"}]}),
    )
    .await;
    assert_eq!((s, v["primary"].as_u64()), (421, Some(0)), "{v}");

    // Bad bodies: 400 with an error naming the problem, and nothing applied.
    let too_many: Vec<Value> = (0..257)
        .map(|i| json!({"item_number": 2, "key": format!("k{i}")}))
        .collect();
    let cases = [
        (
            format!("{order}/buy_batch"),
            json!({"buys": []}),
            "1 to 256",
        ),
        (
            format!("{order}/buy_batch"),
            json!({ "buys": too_many }),
            "got 257",
        ),
        (
            format!("{order}/buy_batch"),
            json!({"buys": [{"item_number": 0, "key": "k"}]}),
            "item_number",
        ),
        (
            format!("{order}/buy_batch"),
            json!({"buys": [{"item_number": 2, "key": "a b"}]}),
            "buys[0].key",
        ),
        (
            format!("{catalog}/update_batch"),
            json!({"updates": [{"item_number": 2, "stock": 1i64 << 40, "key": "k"}]}),
            "updates[0].stock",
        ),
        (
            format!("{catalog}/update_batch"),
            json!([1, 2]),
            "bad JSON body",
        ),
        (
            format!("{}/invalidate_batch", c.url(Kind::Cache, 0)),
            json!({"items": []}),
            "items must hold",
        ),
        (
            format!("{}/internal/near/invalidate_batch", c.frontend()),
            json!({"items": [{"item_number": 1}]}),
            "version",
        ),
    ];
    for (url, body, needle) in cases {
        let (s, v) = post_json(url.clone(), body).await;
        assert_eq!(s, 400, "{url}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{url}: {msg:?} lacks {needle:?}");
    }
    let (_, book) = get(format!("{}/lookup?item_number=2", c.frontend())).await;
    assert_eq!(book["result"]["stock"], 3);
}

/// A primary answers reads only under a lease from the coordinators. Cut off from them
/// (here the one coordinator stops), the primary refuses reads once the lease runs out,
/// one tick before the view service could have chosen a successor, and it still commits
/// writes with its backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_without_word_from_the_view_service_stops_serving_reads() {
    let mut c = TestCluster::start().await;
    let client = c.internal();
    let cat0 = c.url(Kind::Catalog, 0);
    let read = format!("{cat0}/query_by_item?item_number=1");
    let _: Value = client
        .get_json(&read)
        .await
        .expect("the primary serves reads");
    c.stop(Kind::Coordinator, 0).await;
    // Ticks of 20 ms: the lease lasts 5 ticks after a ping, the view service's dead time
    // is 6 ticks.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    match client.get_json::<Value>(&read).await {
        Err(bookstore_common::client::CallError::Status { status, body }) => {
            assert_eq!(status, 503);
            assert!(body.error.contains("read lease"), "{}", body.error);
        }
        other => panic!("a primary without a lease answered a read: {other:?}"),
    }
    // Nor does it lend the cache a lease to answer reads for it.
    let lent = client
        .post_body::<_, Value>(
            &format!("{cat0}/cache_lease"),
            &json!({"flushed_to": null, "session": 1}),
        )
        .await;
    assert!(
        matches!(
            lent,
            Err(bookstore_common::client::CallError::Status { status: 421, .. })
        ),
        "a primary without a read lease lent the cache one: {lent:?}"
    );
    let written: Value = client
        .post_json(
            &format!("{cat0}/update?item_number=1&stock=-1"),
            &[("Idempotency-Key", "lease-test-1")],
        )
        .await
        .expect("writes need the backup, not the view service");
    assert_eq!(written["result"]["stock"], 2, "{written}");
}

/// A fake server that answers every request 200 `{}` and records whether any request
/// carried the cluster token.
async fn token_trap() -> (
    String,
    Arc<std::sync::atomic::AtomicU64>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let leaked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (s, l) = (seen.clone(), leaked.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (s, l) = (s.clone(), l.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                    s.fetch_add(1, Ordering::Relaxed);
                    if head.contains(&CLUSTER_TOKEN.to_lowercase()) {
                        l.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                        .await;
                }
            });
        }
    });
    (url, seen, leaked)
}

/// The admin token alone cannot make an address a member that is sent the cluster
/// token: a registered replica is shown to routers, observers and peers only once it has
/// pinged (with the cluster token) from the URL it was registered at, and an address
/// outside the cluster cannot be registered at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_registered_with_the_admin_token_never_receives_the_cluster_token() {
    use std::sync::atomic::Ordering;
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let register = |url: String| {
        let http = http.clone();
        let c = c.coordinator();
        async move {
            http.post(format!("{c}/admin/cluster/register"))
                .query(&[("kind", "catalog"), ("url", url.as_str())])
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
        }
    };
    let r = register("http://192.0.2.7:9000".into()).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not inside the cluster"),
        "{v}"
    );

    let (trap, seen, leaked) = token_trap().await;
    let r = register(trap.clone()).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // Everything that would send a member the token: the cluster map (which asks every
    // member for its status), searches (spread over members), lookups and buys (the
    // primary's backups).
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    while std::time::Instant::now() < deadline {
        let _ = http
            .get(format!("{}/cluster", c.frontend()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await;
        for topic in ["distributed%20systems", "graduate%20school"] {
            let _ = http
                .get(format!("{}/search?topic={topic}", c.frontend()))
                .header("cache-control", "no-cache")
                .send()
                .await;
        }
        let _ = http
            .post(format!("{}/buy?item_number=4", c.frontend()))
            .send()
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "the registered URL received the cluster token ({} requests in all)",
        seen.load(Ordering::Relaxed)
    );
    let view: Value = c
        .internal()
        .get_json(&c.view_url(Kind::Catalog))
        .await
        .unwrap();
    assert!(view["members"].get("2").is_none(), "{view}");
    assert_eq!(view["unproven"]["2"], trap.as_str(), "{view}");
}
