//! Health, failover, per-tier timing, the OpenAPI documents, the replication and batch
//! routes, and read leases.
use super::*;

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
