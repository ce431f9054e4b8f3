//! `/cluster`, `/metrics`, `/status.json` and `/status` on a real in-process cluster.
use bookstore_common::config::Kind;
use bookstore_common::types::{ClusterMap, ServerInfo, StatusPage};
use bookstore_testkit::{Options, TestCluster, ADMIN_TOKEN, CLUSTER_TOKEN};
use std::time::{Duration, Instant};

fn server<'a>(map: &'a ClusterMap, kind: &str, id: u32) -> &'a ServerInfo {
    map.servers
        .iter()
        .find(|s| s.kind == kind && s.id == id)
        .unwrap_or_else(|| panic!("no {kind} {id} in {map:#?}"))
}

async fn cluster_map(frontend: &str) -> ClusterMap {
    let r = reqwest::Client::new()
        .get(format!("{frontend}/cluster"))
        .header("x-cluster-token", CLUSTER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits (up to `limit`) for a map satisfying `ok`; returns the last map seen.
async fn wait_for(frontend: &str, limit: Duration, ok: impl Fn(&ClusterMap) -> bool) -> ClusterMap {
    let deadline = Instant::now() + limit;
    loop {
        let map = cluster_map(frontend).await;
        if ok(&map) || Instant::now() > deadline {
            return map;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scrape(url: &str, auth: Option<(&str, &str)>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{url}/metrics"));
    if let Some((k, v)) = auth {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Parses the exposition with prometheus-parse and checks every line is a comment or a
/// sample it recognizes.
fn parse(text: &str) -> prometheus_parse::Scrape {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        assert!(
            matches!(
                prometheus_parse::LineInfo::parse(line),
                prometheus_parse::LineInfo::Sample { .. }
            ),
            "unparsable line {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the sample `name` whose labels include every pair of `labels` (0 if none).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_map_needs_a_token_names_every_server_and_follows_a_failover() {
    // A 50 ms tick (not the test default of 20 ms): fewer spurious view changes when
    // the machine is busy.
    let mut tc = TestCluster::with(Options {
        tick: Duration::from_millis(50),
        ..Options::default()
    })
    .await;
    let f = tc.frontend();
    let http = reqwest::Client::new();
    let r = http.get(format!("{f}/cluster")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{f}/cluster"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{f}/cluster"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let map: ClusterMap = r.json().await.unwrap();
    assert_eq!(map.servers.len(), 7, "{map:#?}");
    // At a cold start the first replica to ping may lead until replica 0 takes over.
    let map = wait_for(&f, Duration::from_secs(5), |m| {
        server(m, "catalog", 0).role == "primary" && server(m, "order", 0).role == "primary"
    })
    .await;
    for s in &map.servers {
        assert_eq!(s.health, "up", "{s:?}");
        let e = tc
            .cluster
            .server(Kind::parse(&s.kind).unwrap(), s.id)
            .unwrap();
        assert_eq!(s.address.as_deref(), Some(e.to_string().as_str()));
    }
    assert_eq!(server(&map, "frontend", 0).role, "serving");
    assert_eq!(server(&map, "cache", 0).role, "serving");
    let coordinator = server(&map, "coordinator", 0);
    assert_eq!(coordinator.role, "leader", "{coordinator:?}");
    assert!(
        coordinator.epoch.unwrap() >= 1,
        "a Raft term: {coordinator:?}"
    );
    for kind in ["catalog", "order"] {
        let primary = server(&map, kind, 0);
        assert_eq!(primary.role, "primary", "{map:#?}");
        assert!(primary.heartbeat_age_ms.unwrap() < 2000, "{primary:?}");
        let backup = server(&map, kind, 1);
        assert_eq!(backup.role, "backup");
        assert_eq!(backup.synced, Some(true));
        assert_eq!(backup.epoch, primary.epoch);
        let view = map.views.iter().find(|v| v.kind == kind).unwrap();
        assert_eq!(view.primary, Some(0));
        assert_eq!(
            view.decided_by,
            Some(0),
            "coordinator 0 decided it: {view:?}"
        );
    }

    // Writes move the commit index; the backups catch up (lag 0).
    for _ in 0..3 {
        let r = http
            .post(format!("{f}/buy?item_number=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let map = wait_for(&f, Duration::from_secs(5), |m| {
        ["catalog", "order"].iter().all(|k| {
            server(m, k, 1).lag_entries == Some(0) && server(m, k, 0).commit_index >= Some(3)
        })
    })
    .await;
    assert_eq!(server(&map, "order", 1).lag_entries, Some(0), "{map:#?}");
    assert!(server(&map, "order", 0).commit_index >= Some(3), "{map:#?}");

    // The catalog primary goes away: the map shows it down and the backup promoted.
    let epoch = server(&map, "catalog", 1).epoch.unwrap();
    // (A loaded machine can make the view service drop a replica for a moment, so the
    // failovers are counted from here.)
    let failovers = |m: &ClusterMap, kind: &str| {
        m.views
            .iter()
            .find(|v| v.kind == kind)
            .unwrap()
            .failovers
            .unwrap()
    };
    let before = failovers(&map, "catalog");
    tc.stop(Kind::Catalog, 0).await;
    // (The view names the new primary a moment before the replica acts in it.)
    let map = wait_for(&f, Duration::from_secs(10), |m| {
        let view = m.views.iter().find(|v| v.kind == "catalog").unwrap();
        server(m, "catalog", 1).role == "primary" && server(m, "catalog", 1).epoch == view.epoch
    })
    .await;
    let old = server(&map, "catalog", 0);
    assert_eq!((old.role.as_str(), old.health.as_str()), ("down", "down"));
    assert!(old.error.is_some());
    let new = server(&map, "catalog", 1);
    assert_eq!(new.role, "primary", "{map:#?}");
    assert!(new.epoch.unwrap() > epoch);
    assert!(failovers(&map, "catalog") > before, "{map:#?}");

    // The coordinator leader's metrics count the failover.
    let (status, text) = scrape(&tc.coordinator(), Some(("x-cluster-token", CLUSTER_TOKEN))).await;
    assert_eq!(status, 200);
    let s = parse(&text);
    assert!(
        value(&s, "bookstore_vs_failovers_total", &[("kind", "catalog")]) >= before as f64 + 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_per_route_and_tier_and_need_a_token() {
    let tc = TestCluster::start().await;
    let f = tc.frontend();
    let cache = tc.url(Kind::Cache, 0);
    let catalog = tc.url(Kind::Catalog, 0);
    let token = ("x-cluster-token", CLUSTER_TOKEN);
    for url in [&f, &cache, &catalog, &tc.url(Kind::Order, 1)] {
        assert_eq!(scrape(url, None).await.0, 401, "{url}");
    }
    let lookups = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "bookstore_http_requests_total",
            &[("route", "/lookup"), ("method", "GET"), ("status", "200")],
        )
    };
    let before = parse(&scrape(&f, Some(token)).await.1);
    tc.wait_cache_leased().await;
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let r = http
            .get(format!("{f}/lookup?item_number=3"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await; // let the fill land
    }
    let r = http
        .get(format!("{f}/lookup?item_number=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    http.get(format!("{f}/no/such/{}", "path"))
        .send()
        .await
        .unwrap();

    // Prometheus sends the token as a bearer token; the admin token works too.
    let bearer = format!("Bearer {CLUSTER_TOKEN}");
    let (status, text) = scrape(&f, Some(("authorization", &bearer))).await;
    assert_eq!(status, 200);
    let after = parse(&text);
    assert_eq!(lookups(&after) - lookups(&before), 5.0, "{text}");
    let bad = &[("route", "/lookup"), ("status", "400")];
    assert_eq!(value(&after, "bookstore_http_requests_total", bad), 1.0);
    // Unknown paths share one series.
    assert_eq!(
        value(
            &after,
            "bookstore_http_requests_total",
            &[("route", "unmatched")]
        ),
        1.0
    );
    assert!(!text.contains("/no/such"));
    // The latency histogram and the downstream tiers (from Server-Timing).
    assert!(text.contains(
        "bookstore_http_request_duration_seconds_count{route=\"/lookup\",method=\"GET\",status=\"200\"} 5"
    ), "{text}");
    // The first lookup asks the cache service; later ones may be answered from the
    // frontend's near cache (no downstream call).
    let cache_calls: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "bookstore_downstream_duration_seconds_count{route=\"/lookup\",tier=\"cache\"} ",
            )
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!((1.0..=5.0).contains(&cache_calls), "{text}");
    // The near cache's gauges: it holds the answer it was filled with, under a lease.
    assert!(
        value(&after, "bookstore_frontend_near_entries", &[]) >= 1.0,
        "{text}"
    );
    assert!(text.contains("bookstore_frontend_near_leased "), "{text}");
    assert!(text.contains(
        "bookstore_downstream_duration_seconds_count{route=\"/lookup\",tier=\"catalog\"}"
    ));
    let hits = value(
        &after,
        "bookstore_frontend_cache_lookups_total",
        &[("result", "hit")],
    );
    let misses = value(
        &after,
        "bookstore_frontend_cache_lookups_total",
        &[("result", "miss")],
    );
    let near = value(
        &after,
        "bookstore_frontend_cache_lookups_total",
        &[("result", "near")],
    );
    assert_eq!(hits + misses + near, 5.0, "{text}");
    assert!(hits + near >= 1.0, "{text}");
    // The view services' metrics are the coordinator leader's.
    let (status, text) = scrape(&tc.coordinator(), Some(("authorization", &bearer))).await;
    assert_eq!(status, 200);
    let coord = parse(&text);
    let vs_epoch = value(&coord, "bookstore_vs_epoch", &[("kind", "catalog")]);
    assert!(vs_epoch >= 1.0, "{text}");
    assert_eq!(
        value(
            &coord,
            "bookstore_vs_lag_entries",
            &[("kind", "catalog"), ("replica", "1")]
        ),
        0.0
    );
    assert_eq!(
        value(&coord, "bookstore_coordinator_is_leader", &[]),
        1.0,
        "{text}"
    );
    assert!(
        value(&coord, "bookstore_coordinator_term", &[]) >= 1.0,
        "{text}"
    );

    // The cache counts its own hits and misses.
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let (status, text) = scrape(&cache, Some(("authorization", &admin))).await;
    assert_eq!(status, 200);
    let c = parse(&text);
    assert_eq!(
        value(&c, "bookstore_cache_requests_total", &[("result", "hit")]),
        hits
    );
    assert_eq!(value(&c, "bookstore_cache_leased", &[]), 1.0);

    // The catalog primary exports its replication state.
    let (status, text) = scrape(&catalog, Some(token)).await;
    assert_eq!(status, 200);
    let c = parse(&text);
    assert_eq!(
        value(&c, "bookstore_replication_role", &[("role", "primary")]),
        1.0
    );
    assert_eq!(
        value(&c, "bookstore_replication_role", &[("role", "backup")]),
        0.0
    );
    assert_eq!(value(&c, "bookstore_replication_epoch", &[]), vs_epoch);
    assert!(value(&c, "bookstore_replication_view_changes_total", &[]) >= 1.0);
    assert_eq!(value(&c, "bookstore_replication_lag_entries", &[]), 0.0);
    // The catalog answered the frontend's misses on its internal route.
    assert!(
        value(
            &c,
            "bookstore_http_requests_total",
            &[("route", "/query_by_item")]
        ) >= misses,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_and_its_json_are_public_and_show_no_addresses() {
    let tc = TestCluster::start().await;
    let f = tc.frontend();
    let r = reqwest::get(format!("{f}/status")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(page.contains("status.json") && page.contains("setInterval"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    for path in ["/status", "/status.json", "/metrics"] {
        let r = reqwest::Client::new()
            .post(format!("{f}{path}"))
            .header("x-cluster-token", CLUSTER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(r.headers()["allow"], "GET");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("GET"), "{body}");
    }
    let r = reqwest::get(format!("{f}/status.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    // (Not the bare port number: a timestamp or an age may contain its digits.)
    for (_, _, e) in tc.cluster.all() {
        assert!(!text.contains(&e.to_string()), "{text} shows {e}");
    }
    assert!(!text.contains("address"));
    let status: StatusPage = serde_json::from_str(&text).unwrap();
    assert_eq!(status.cluster.servers.len(), 7);
    assert_eq!(server(&status.cluster, "catalog", 0).role, "primary");
    assert_eq!(status.books.len(), 7, "{text}");
    let book = status.books.iter().find(|b| b.item_number == 1).unwrap();
    let r: serde_json::Value = reqwest::get(format!("{f}/lookup?item_number=1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        u64::from(book.stock),
        r["result"]["stock"].as_u64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frontend_maps_the_cluster_with_the_coordinators_views() {
    use bookstore_common::auth::Tokens;
    use bookstore_common::config::{ClusterConfig, Endpoint};
    let tc = TestCluster::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut parts: Vec<(Kind, Endpoint)> = tc
        .cluster
        .all()
        .into_iter()
        .map(|(k, _, e)| (k, e))
        .collect();
    parts.push((Kind::Frontend, Endpoint::new("127.0.0.1", port)));
    let config = bookstore_frontend::FrontendConfig {
        id: 1,
        cluster: ClusterConfig::from_parts(&parts),
        tokens: Tokens::new(CLUSTER_TOKEN, Some(ADMIN_TOKEN)),
        output_dir: None,
        tick: Duration::from_millis(20),
        workers: 1,
        near_entries: 1000,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bookstore_frontend::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let f1 = format!("http://127.0.0.1:{port}");
    let map = wait_for(&f1, Duration::from_secs(5), |m| {
        server(m, "catalog", 0).role == "primary" && server(m, "order", 0).role == "primary"
    })
    .await;
    assert_eq!(map.frontend, 1);
    assert_eq!(map.servers.len(), 8, "{map:#?}");
    assert_eq!(server(&map, "frontend", 0).role, "serving");
    assert_eq!(server(&map, "frontend", 1).role, "serving");
    assert_eq!(server(&map, "catalog", 1).role, "backup", "{map:#?}");
    // Heartbeats are only known to the coordinator leader: they came from there.
    assert!(
        server(&map, "catalog", 1).heartbeat_age_ms.is_some(),
        "{map:#?}"
    );
    assert!(map
        .views
        .iter()
        .all(|v| v.error.is_none() && v.epoch.is_some()));
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_buys_leave_in_batches_and_the_batches_are_counted() {
    let tc = TestCluster::start().await;
    let f = tc.frontend();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{f}/admin/restock?item_number=4&quantity=100"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let buys = (0..48).map(|_| {
        let req = http.post(format!("{f}/buy?item_number=4")).send();
        async move { req.await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(buys).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let token = ("x-cluster-token", CLUSTER_TOKEN);
    let counts = |text: &str, batcher: &str| {
        let s = parse(text);
        let labels = [("batcher", batcher)];
        (
            value(&s, "bookstore_batches_total", &labels),
            value(&s, "bookstore_batched_requests_total", &labels),
        )
    };
    let (batches, requests) = counts(&scrape(&f, Some(token)).await.1, "buys");
    assert_eq!(requests, 48.0);
    assert!(
        (1.0..48.0).contains(&batches),
        "48 concurrent buys took {batches} batches"
    );
    let order = scrape(&tc.url(Kind::Order, 0), Some(token)).await.1;
    let (batches, requests) = counts(&order, "updates");
    assert_eq!(requests, 48.0, "{order}");
    assert!((1.0..48.0).contains(&batches), "{order}");
    let catalog = scrape(&tc.url(Kind::Catalog, 0), Some(token)).await.1;
    let (batches, requests) = counts(&catalog, "invalidations");
    assert!(requests >= 48.0 && batches >= 1.0, "{catalog}");
}
