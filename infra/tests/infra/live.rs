//! The live cluster with real processes: scale out and in with no restart, services
//! started in any order, and N frontends behind HAProxy surviving the loss of one.
use bookstore_common::config::Kind;
use bookstore_common::types::{Book, Versioned};
use infra::local::{free_port_cluster, LocalCluster, LocalOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "live-test-cluster-token";
const ADMIN: &str = "live-test-admin-token";

fn files(dir: &std::path::Path, cluster: &bookstore_common::config::ClusterConfig) {
    let mut csv = String::from("item_number,title,topic,stock,cost\n");
    for n in 1..=3 {
        csv.push_str(&format!("{n},Book {n},t,100000,10\n"));
    }
    std::fs::write(dir.join("books.csv"), csv).unwrap();
    std::fs::write(dir.join("cluster.csv"), cluster.to_text()).unwrap();
}

fn options(dir: &std::path::Path) -> LocalOptions {
    let mut o = LocalOptions::new(
        dir.join("cluster.csv"),
        dir.join("books.csv"),
        dir.join("out"),
        TOKEN.into(),
        ADMIN.into(),
    );
    o.program = Some(env!("CARGO_BIN_EXE_infra").into());
    o
}

fn internal() -> bookstore_common::client::Client {
    bookstore_common::client::Client::with_timeout(TOKEN, Duration::from_secs(2))
}

/// A replica's `/books`. A replica may refuse reads for a moment (a backup catching up, a
/// primary between read leases on a loaded machine): that is waited out, up to 10 s.
async fn books_of(url: &str) -> BTreeMap<u64, u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let v: Versioned<Vec<Book>> = loop {
        match internal().get_json(&format!("{url}/books")).await {
            Ok(v) => break v,
            Err(e) if Instant::now() >= deadline => panic!("{url}/books: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    v.result
        .iter()
        .map(|b| (b.item_number.into(), b.stock.into()))
        .collect()
}

async fn buy(http: &reqwest::Client, frontend: &str, item: u32) -> u16 {
    match http
        .post(format!("{frontend}/buy?item_number={item}"))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

fn url_of(lc: &LocalCluster, kind: Kind, id: u32) -> String {
    lc.servers
        .iter()
        .find(|s| s.kind == kind && s.id == id)
        .map(|s| s.endpoint.url())
        .unwrap_or_else(|| panic!("no {kind} {id}"))
}

/// A third catalog and a third order replica join a running cluster, catch up, and are
/// included by the primary (a write must reach them); then the two original replicas of
/// each kind are retired one after the other, and the newcomers alone hold every sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_then_in_keeps_every_sale() {
    let _machine = crate::MACHINE.write().await;
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &free_port_cluster(2, 2).unwrap());
    let mut lc = LocalCluster::start(options(dir.path()), &|_| {})
        .await
        .unwrap();
    let f = lc.frontend_url();
    let http = reqwest::Client::new();
    let mut sold = 0u64;
    for _ in 0..20 {
        assert_eq!(buy(&http, &f, 1).await, 200);
        sold += 1;
    }

    let lines = std::sync::Mutex::new(Vec::new());
    let progress = |s: &str| lines.lock().unwrap().push(s.to_string());
    let c2 = lc.add(Kind::Catalog, &progress).await.unwrap();
    let o2 = lc.add(Kind::Order, &progress).await.unwrap();
    assert_eq!((c2, o2), (2, 2), "ids continue after the cluster file's");
    assert!(
        lines.lock().unwrap().iter().any(|l| l.contains("synced")),
        "{lines:?}"
    );
    for kind in [Kind::Catalog, Kind::Order] {
        let v = lc.view_doc(kind).await.unwrap();
        assert_eq!(v.members.len(), 3, "{v:?}");
        assert!(v.synced.contains(&2), "{v:?}");
    }
    // The cluster map shows the newcomers (they are not in the cluster file).
    let map: Value = internal().get_json(&format!("{f}/cluster")).await.unwrap();
    for kind in ["catalog", "order"] {
        let s = map["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == kind && s["id"] == 2)
            .unwrap_or_else(|| panic!("no {kind} 2 in {map}"));
        assert_eq!(s["role"], "backup", "{s}");
        assert_eq!(s["health"], "up", "{s}");
    }
    // The newcomer caught up on the sales made before it existed (a backup applies the
    // last commit when it hears of it: give it a moment) ...
    let c2_url = url_of(&lc, Kind::Catalog, 2);
    let deadline = Instant::now() + Duration::from_secs(2);
    while books_of(&c2_url).await[&1] != 100000 - sold && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(books_of(&c2_url).await[&1], 100000 - sold);
    // ... and every later write reaches it before it is acknowledged.
    for _ in 0..20 {
        assert_eq!(buy(&http, &f, 2).await, 200);
        sold += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while books_of(&c2_url).await[&2] != 100000 - 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(books_of(&c2_url).await[&2], 100000 - 20);

    // Retiring the only up-to-date replica is refused: catalog 0 and 1 go one at a time.
    for kind in [Kind::Catalog, Kind::Order] {
        lc.remove(kind, 0, &progress).await.unwrap();
        lc.remove(kind, 1, &progress).await.unwrap();
        let v = lc.view_doc(kind).await.unwrap();
        assert_eq!(v.view.as_ref().map(|v| v.primary), Some(2), "{v:?}");
        assert_eq!(v.members.len(), 1, "{v:?}");
        let refused = format!("{:#}", lc.remove(kind, 2, &progress).await.unwrap_err());
        assert!(refused.contains("cannot be retired"), "{refused}");
    }
    // The cluster still sells, and the survivor has every sale.
    for _ in 0..10 {
        assert_eq!(buy(&http, &f, 3).await, 200);
    }
    let map: Value = internal().get_json(&format!("{f}/cluster")).await.unwrap();
    let catalogs: Vec<&Value> = map["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "catalog")
        .collect();
    assert_eq!(catalogs.len(), 1, "retired replicas leave the map: {map}");
    let books = books_of(&url_of(&lc, Kind::Catalog, 2)).await;
    assert_eq!(books[&1], 100000 - 20);
    assert_eq!(books[&2], 100000 - 20);
    assert_eq!(books[&3], 100000 - 10);
    let orders: Value = internal()
        .get_json(&format!("{}/orders", url_of(&lc, Kind::Order, 2)))
        .await
        .unwrap();
    assert_eq!(
        orders["result"].as_array().map(Vec::len),
        Some(sold as usize + 10),
        "every acknowledged order is on the last order replica"
    );
    lc.stop().await;

    // A restart from the same output directory keeps the scaled cluster: only catalog 2
    // and order 2 are started (from the member table), and they still hold every sale.
    let lines = std::sync::Mutex::new(Vec::new());
    let mut lc = LocalCluster::start(options(dir.path()), &|s: &str| {
        lines.lock().unwrap().push(s.to_string())
    })
    .await
    .unwrap();
    let lines = lines.into_inner().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("member table")),
        "{lines:?}"
    );
    let started: Vec<(Kind, u32)> = lc.servers.iter().map(|s| (s.kind, s.id)).collect();
    assert!(started.contains(&(Kind::Catalog, 2)) && started.contains(&(Kind::Order, 2)));
    assert!(!started.contains(&(Kind::Catalog, 0)) && !started.contains(&(Kind::Order, 1)));
    let f = lc.frontend_url();
    assert_eq!(buy(&http, &f, 3).await, 200);
    assert_eq!(
        books_of(&url_of(&lc, Kind::Catalog, 2)).await[&3],
        100000 - 11
    );
    lc.stop().await;
}

/// Replicas and the cache started before the frontend that hosts the view service wait
/// (not ready) instead of failing; the cluster then forms and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_start_in_any_order() {
    let _machine = crate::MACHINE.write().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = free_port_cluster(2, 2).unwrap();
    files(dir.path(), &cluster);

    // A catalog alone: alive, but not ready, and it says why.
    let mut alone = tokio::process::Command::new(env!("CARGO_BIN_EXE_infra"))
        .args(["serve", "catalog", "--id", "1", "--cluster"])
        .arg(dir.path().join("cluster.csv"))
        .arg("--books")
        .arg(dir.path().join("books.csv"))
        .arg("--output-dir")
        .arg(dir.path().join("alone"))
        .env("BOOKSTORE_CLUSTER_TOKEN", TOKEN)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = cluster.server(Kind::Catalog, 1).unwrap().url();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        if let Ok(r) = http.get(format!("{url}/ready")).send().await {
            break r;
        }
        assert!(Instant::now() < deadline, "catalog 1 never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status(), 503);
    let why: Value = ready.json().await.unwrap();
    assert!(
        why["waiting_for"]
            .as_str()
            .unwrap()
            .contains("view service"),
        "{why}"
    );
    let health = http.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "alive while not ready");
    alone.kill().await.unwrap();
    let _ = alone.wait().await;

    // The whole cluster in reverse order: orders, catalogs, cache, then the frontend.
    let mut o = options(dir.path());
    o.reverse_start = true;
    let mut lc = LocalCluster::start(o, &|_| {}).await.unwrap();
    let f = lc.frontend_url();
    assert_eq!(buy(&http, &f, 1).await, 200);
    for s in &lc.servers {
        let r = http
            .get(format!("{}/ready", s.endpoint.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{} not ready", s.name());
    }
    lc.stop().await;
}

/// Three frontends behind HAProxy; one is killed with SIGKILL while 8 clients buy and
/// look up. Only requests in flight on it may fail (at most one per client), and after
/// HAProxy's health check has noticed, none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_survives_losing_a_frontend() {
    let Some(_) = infra::haproxy::binary() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("HAProxy is not installed (CI=true): apt-get install haproxy");
        }
        eprintln!("SKIPPED haproxy_survives_losing_a_frontend: HAProxy is not installed");
        return;
    };
    let _machine = crate::MACHINE.write().await;
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_cluster(2, 2).unwrap();
    // Three frontends on free ports, HAProxy on another.
    let mut parts = Vec::new();
    let mut hold = Vec::new();
    for _ in 0..4 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        parts.push(bookstore_common::config::Endpoint::new(
            "127.0.0.1",
            l.local_addr().unwrap().port(),
        ));
        hold.push(l);
    }
    drop(hold);
    let listen = parts.pop().unwrap();
    let mut all: Vec<(Kind, bookstore_common::config::Endpoint)> =
        parts.into_iter().map(|e| (Kind::Frontend, e)).collect();
    all.extend(
        base.all()
            .into_iter()
            .filter(|(k, _, _)| *k != Kind::Frontend)
            .map(|(k, _, e)| (k, e)),
    );
    files(
        dir.path(),
        &bookstore_common::config::ClusterConfig::from_parts(&all),
    );
    let mut o = options(dir.path());
    o.haproxy = Some(listen.clone());
    let mut lc = LocalCluster::start(o, &|_| {}).await.unwrap();
    assert_eq!(lc.public_url(), listen.url());
    let cfg = std::fs::read_to_string(dir.path().join("out/haproxy.cfg")).unwrap();
    assert_eq!(cfg.matches("check\n").count(), 3, "{cfg}");

    let stop = Arc::new(AtomicBool::new(false));
    let killed_at = Arc::new(AtomicU64::new(u64::MAX));
    let t0 = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let clients: Vec<_> = (0..8u32)
        .map(|i| {
            let (http, url, stop) = (http.clone(), lc.public_url(), stop.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = if i % 2 == 0 {
                        http.post(format!("{url}/buy?item_number={}", 1 + i % 3))
                            .send()
                            .await
                    } else {
                        http.get(format!("{url}/lookup?item_number={}", 1 + i % 3))
                            .send()
                            .await
                    };
                    n += 1;
                    let ok = r.as_ref().is_ok_and(|r| r.status() == 200);
                    if !ok {
                        failures.push((t0.elapsed(), format!("{r:?}")));
                    }
                }
                (n, failures)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    killed_at.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    lc.kill9(Kind::Frontend, 2).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let killed = Duration::from_millis(killed_at.load(Ordering::Relaxed));
    let mut total = 0;
    let mut failures = Vec::new();
    for c in clients {
        let (n, f) = c.await.unwrap();
        assert!(
            f.len() <= 1,
            "a client failed more than its one in-flight request: {f:?}"
        );
        total += n;
        failures.extend(f);
    }
    assert!(total > 100, "only {total} requests");
    for (at, what) in &failures {
        assert!(
            *at >= killed && *at < killed + Duration::from_secs(1),
            "a request failed at {at:?}, not while frontend 2 died at {killed:?}: {what}"
        );
    }
    eprintln!(
        "{total} requests through HAProxy, {} failed (in flight on the killed frontend)",
        failures.len()
    );
    lc.stop().await;
}
