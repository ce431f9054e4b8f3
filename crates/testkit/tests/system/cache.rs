//! The cache never serves stale data after an acknowledged write.
use bookstore_common::config::Kind;
use bookstore_common::types::{Book, ItemNumber};
use bookstore_testkit::{stock_of, Options, TestCluster, ADMIN_TOKEN};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn books() -> Vec<Book> {
    vec![
        Book {
            item_number: ItemNumber::of(1),
            title: "Hot".into(),
            topic: "t".into(),
            stock: 100_000,
            cost: 5,
        },
        Book {
            item_number: ItemNumber::of(2),
            title: "Cold".into(),
            topic: "t".into(),
            stock: 3,
            cost: 5,
        },
    ]
}

/// A cluster started with `opts` whose cache holds a lease (so hits are served), the URL
/// of its frontend, and a client.
async fn leased(opts: Options) -> (TestCluster, String, reqwest::Client) {
    let c = TestCluster::with(opts).await;
    c.wait_cache_leased().await;
    let f = c.frontend();
    (c, f, reqwest::Client::new())
}

/// The test books, with cache leases `lease` long.
fn books_leased_for(lease: Duration) -> Options {
    Options {
        books: books(),
        lease,
        ..Options::default()
    }
}

async fn stock(http: &reqwest::Client, f: &str) -> u64 {
    stock_of(http, f, 1, &[]).await
}

/// Buys one copy of `item` through the frontend `f`; the answer's status.
async fn buy(http: &reqwest::Client, f: &str, item: u32) -> u16 {
    http.post(format!("{f}/buy?item_number={item}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_acknowledged_write_reads_show_it_with_concurrent_fills() {
    let (c, f, http) = leased(Options {
        books: books(),
        ..Options::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    // Readers keep missing and filling the cache, racing the writes.
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (http, f, stop) = (http.clone(), f.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let path = if i % 2 == 0 {
                        "lookup?item_number=1"
                    } else {
                        "search?topic=t"
                    };
                    let r = http.get(format!("{f}/{path}")).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut expected = 100_000u64;
    for round in 0..1000 {
        let ok = if round % 5 == 4 {
            expected += 2;
            http.post(format!("{f}/admin/restock?item_number=1&quantity=2"))
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .send()
                .await
                .unwrap()
        } else {
            expected -= 1;
            http.post(format!("{f}/buy?item_number=1"))
                .send()
                .await
                .unwrap()
        };
        assert_eq!(ok.status(), 200);
        let seen = stock(&http, &f).await;
        assert_eq!(
            seen, expected,
            "round {round}: a read after an acknowledged write was stale"
        );
        let s: Value = http
            .get(format!("{f}/search?topic=t"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(s["result"].as_array().unwrap().len(), 2);
    }
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 0);
    let stats: Value = c
        .internal()
        .get_json(&format!("{}/stats", c.url(Kind::Cache, 0)))
        .await
        .unwrap();
    assert!(
        stats["hits"].as_u64().unwrap() > 0,
        "the cache was used: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_gone_writes_still_succeed_and_reads_stay_fresh() {
    let (mut c, f, http) = leased(books_leased_for(Duration::from_millis(200))).await;
    assert_eq!(stock(&http, &f).await, 100_000);
    c.stop(Kind::Cache, 0).await;
    for expected in (99_995..100_000).rev() {
        assert_eq!(buy(&http, &f, 1).await, 200);
        assert_eq!(stock(&http, &f).await, expected);
    }
}

/// `Cache-Control: no-cache` on a lookup or search skips the cache both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_requests_skip_the_cache_both_ways() {
    let (c, f, http) = leased(Options::default()).await;
    let cache_stats = || async {
        c.internal()
            .get_json::<Value>(&format!("{}/stats", c.url(Kind::Cache, 0)))
            .await
            .unwrap()
    };
    let tiers = |r: &reqwest::Response| -> Vec<String> {
        let h = r.headers()["server-timing"].to_str().unwrap();
        bookstore_common::timing::parse(h)
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect()
    };
    let get = |path: &'static str, bypass: Option<&'static str>| {
        let mut req = http.get(format!("{f}/{path}"));
        if let Some(v) = bypass {
            req = req.header("cache-control", v);
        }
        req.send()
    };
    // A normal lookup fills the caches; wait until it is answered from the frontend's
    // near cache (no downstream call at all).
    let mut hit = false;
    for _ in 0..200 {
        let r = get("lookup?item_number=1", None).await.unwrap();
        assert_eq!(r.status(), 200);
        if tiers(&r) == ["frontend"] {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hit, "lookups never came from the near cache");
    let before = cache_stats().await;
    for (path, bypass) in [
        ("lookup?item_number=1", "no-cache"),
        ("lookup?item_number=2", "max-age=0, No-Store"),
        ("search?topic=travel", "no-cache"),
    ] {
        let r = get(path, Some(bypass)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(tiers(&r), ["frontend", "catalog"], "{path} {bypass}");
        let v: Value = r.json().await.unwrap();
        assert!(!v["result"].is_null(), "{v}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = cache_stats().await;
    assert_eq!(before["hits"], after["hits"], "{before} {after}");
    assert_eq!(before["misses"], after["misses"], "{before} {after}");
    assert_eq!(
        before["entries"], after["entries"],
        "no fill: {before} {after}"
    );
    // Another directive alone does not bypass: the answer comes from a cache (the near
    // one, or the cache service right after a flush of the near one, e.g. when the
    // catalog primary changes at start).
    let mut cached = false;
    for _ in 0..50 {
        let r = get("lookup?item_number=1", Some("max-age=0"))
            .await
            .unwrap();
        if tiers(&r) == ["frontend"] {
            cached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cached, "max-age=0 bypassed the cache");
}

/// A frontend that holds a near lease but does not answer (paused) cannot be told of an
/// invalidation: the cache then holds the write's acknowledgement until that lease has
/// run out, and the frontend's next lease starts with a flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_near_cache_is_waited_out_before_a_write_is_acknowledged() {
    use bookstore_cache::near::NEAR_LEASE;
    use bookstore_common::types::{NearLeaseReply, NearLeaseRequest};
    use std::time::Instant;
    let (c, f, http) = leased(Options {
        books: books(),
        silent_frontends: 1,
        ..Options::default()
    })
    .await;
    let cache = c.url(Kind::Cache, 0);
    let lease = |frontend: u64| {
        let (client, url) = (c.internal(), format!("{cache}/near_lease"));
        async move {
            client
                .post_body::<_, NearLeaseReply>(
                    &url,
                    &NearLeaseRequest {
                        frontend,
                        session: 1,
                    },
                )
                .await
                .unwrap()
        }
    };
    // Warm up (the first invalidations of a fresh cache wait one lease length anyway).
    assert_eq!(buy(&http, &f, 1).await, 200);
    tokio::time::sleep(NEAR_LEASE).await;
    // Frontend 1 (silent) takes a near lease; the next buy must wait it out.
    let granted = lease(1).await;
    let asked = Instant::now();
    assert!(granted.millis > 0 && granted.flush, "{granted:?}");
    assert_eq!(buy(&http, &f, 1).await, 200);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(granted.millis) - Duration::from_millis(20),
        "the buy was acknowledged after {waited:?}, inside frontend 1's {} ms lease",
        granted.millis
    );
    assert!(lease(1).await.flush, "frontend 1 missed an invalidation");
    // Unknown frontends get no lease.
    let e = c
        .internal()
        .post_body::<_, NearLeaseReply>(
            &format!("{cache}/near_lease"),
            &NearLeaseRequest {
                frontend: 7,
                session: 1,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    assert_eq!(stock(&http, &f).await, 100_000 - 2);
}

/// A sold-out answer never comes before the invalidation of the sale that sold the book
/// out: with the cache just stopped, the frontend's near cache may still answer for up to
/// its lease, so a client told "sold out" must not then be shown a copy left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sold_out_answer_no_cache_shows_a_copy() {
    let (mut c, f, http) = leased(books_leased_for(Duration::from_millis(300))).await;
    for _ in 0..2 {
        assert_eq!(buy(&http, &f, 2).await, 200);
    }
    // Book 2 has one copy left; wait until the frontend answers it from its near cache.
    let near_hit = || async {
        let r = http
            .get(format!("{f}/lookup?item_number=2"))
            .send()
            .await
            .unwrap();
        let tiers = r.headers()["server-timing"].to_str().unwrap().to_string();
        let v: Value = r.json().await.unwrap();
        (!tiers.contains("cache") && !tiers.contains("catalog"), v)
    };
    let mut warm = false;
    for _ in 0..200 {
        let (near, v) = near_hit().await;
        if near {
            assert_eq!(v["result"]["stock"], 1);
            warm = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(warm, "never answered from the near cache");
    c.stop(Kind::Cache, 0).await;
    // Two buyers race for the last copy; the one told "sold out" looks at once.
    let buyers: Vec<_> = (0..2)
        .map(|_| {
            let (http, f) = (http.clone(), f.clone());
            tokio::spawn(async move {
                let status = buy(&http, &f, 2).await;
                let seen = if status == 409 {
                    Some(stock_of(&http, &f, 2, &[]).await)
                } else {
                    None
                };
                (status, seen)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for b in buyers {
        let (status, seen) = b.await.unwrap();
        statuses.push(status);
        if let Some(stock) = seen {
            assert_eq!(stock, 0, "told sold out, then shown {stock} copies");
        }
    }
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
}
