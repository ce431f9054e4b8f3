//! The coordinator group with real processes: no single process takes the store down.
//!
//! - Three frontends behind HAProxy under 16 clients: SIGKILL frontend 0, then the
//!   coordinator leader, then the catalog primary; after each, lookups and buys are
//!   answered again within a second and no acknowledged buy is lost.
//! - Two of three coordinators killed: no view changes, writes still commit, reads stop
//!   once the primaries' leases end; one coordinator back and everything resumes with
//!   no restart of anything else.
//! - Every coordinator killed and restarted: views and member tables as before, epochs
//!   never go back.
use bookstore_common::config::{Endpoint, Kind};
use bookstore_common::coordinators::view_path;
use bookstore_common::types::{Book, Versioned};
use infra::local::{free_port_cluster_with, options_in, LocalCluster, LocalOptions};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "coordinator-test-cluster-token";
const ADMIN: &str = "coordinator-test-admin-token";

struct Fixture {
    lc: LocalCluster,
    _dir: tempfile::TempDir,
}

/// A cluster of 3 coordinators, `frontends` frontends (behind HAProxy when more than
/// one), a cache and 2 catalogs and 2 orders; books 1-3 with `stock` copies each.
async fn start(frontends: usize, stock: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cluster = free_port_cluster_with(3, frontends, 2, 2).unwrap();
    let books: Vec<(u32, u64)> = (1..=3).map(|n| (n, stock)).collect();
    let options = options_in(dir.path(), &cluster, &books, TOKEN, ADMIN).unwrap();
    let haproxy = (frontends > 1).then(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Endpoint::new("127.0.0.1", l.local_addr().unwrap().port())
    });
    let lc = LocalCluster::start(
        LocalOptions {
            program: Some(env!("CARGO_BIN_EXE_infra").into()),
            haproxy,
            ..options
        },
        &|_| {},
    )
    .await
    .unwrap_or_else(|e| panic!("cluster start: {e}"));
    Fixture { lc, _dir: dir }
}

fn internal() -> bookstore_common::client::Client {
    bookstore_common::client::Client::with_timeout(TOKEN, Duration::from_secs(2))
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Buy(Result<String, String>),
    Lookup(Result<u64, String>),
}

/// What the clients saw: each operation's outcome and when it completed.
type History = Arc<Mutex<Vec<(Op, Duration)>>>;

/// A buy with a fresh idempotency key, retried with the same key on an unknown outcome
/// for up to 5 s; the order id, or why there is none.
async fn buy(http: &reqwest::Client, url: &str, item: u32) -> Result<String, String> {
    let key = format!("k{}", uuid::Uuid::new_v4().simple());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let last = match http
            .post(format!("{url}/buy?item_number={item}"))
            .header("Idempotency-Key", &key)
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                return Ok(v["order_id"].as_str().unwrap_or_default().to_string());
            }
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One lookup (no retry): the stock, or why there is none.
async fn lookup(http: &reqwest::Client, url: &str, item: u32) -> Result<u64, String> {
    let r = http
        .get(format!("{url}/lookup?item_number={item}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    v["result"]["stock"]
        .as_u64()
        .ok_or_else(|| format!("no stock in {v}"))
}

/// `buyers` clients buy books 1-3 in turn, `readers` clients look them up, until `stop`.
fn spawn_clients(
    buyers: u32,
    readers: u32,
    url: &str,
    stop: &Arc<AtomicBool>,
    t0: Instant,
) -> (Vec<tokio::task::JoinHandle<()>>, History) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let history: History = Arc::default();
    let tasks = (0..buyers + readers)
        .map(|i| {
            let (http, url, stop, history) =
                (http.clone(), url.to_string(), stop.clone(), history.clone());
            tokio::spawn(async move {
                let mut k = i;
                while !stop.load(Ordering::Relaxed) {
                    let item = 1 + k % 3;
                    k += 1;
                    let op = if i < buyers {
                        Op::Buy(buy(&http, &url, item).await)
                    } else {
                        let r = lookup(&http, &url, item).await;
                        if r.is_err() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Op::Lookup(r)
                    };
                    history.lock().unwrap().push((op, t0.elapsed()));
                }
            })
        })
        .collect();
    (tasks, history)
}

/// The longest stretch without a successful operation of the kind `is_ok` picks, from
/// `at` until `window` after it.
fn longest_gap(
    history: &[(Op, Duration)],
    is_ok: impl Fn(&Op) -> bool,
    at: Duration,
    window: Duration,
) -> Duration {
    let mut times: Vec<Duration> = history
        .iter()
        .filter(|(op, t)| is_ok(op) && *t > at && *t < at + window)
        .map(|(_, t)| *t)
        .collect();
    times.sort();
    let mut points = vec![at];
    points.extend(times);
    points.push(at + window);
    points.windows(2).map(|w| w[1] - w[0]).max().unwrap()
}

/// Every recorded order and every replica's stock, once the replicas agree.
async fn converged(lc: &LocalCluster) -> (BTreeMap<u64, u64>, HashSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut books = Vec::new();
        for e in lc.cluster.servers(Kind::Catalog) {
            let v: Option<Versioned<Vec<Book>>> = internal()
                .get_json(&format!("{}/books", e.url()))
                .await
                .ok();
            books.push(v.map(|v| {
                v.result
                    .iter()
                    .map(|b| (u64::from(b.item_number), u64::from(b.stock)))
                    .collect::<BTreeMap<_, _>>()
            }));
        }
        let mut orders = Vec::new();
        for e in lc.cluster.servers(Kind::Order) {
            let v: Option<Value> = internal()
                .get_json(&format!("{}/orders", e.url()))
                .await
                .ok();
            orders.push(v.and_then(|v| v["result"].as_array().cloned()));
        }
        let agree = books.iter().all(|b| b.is_some() && *b == books[0])
            && orders.iter().all(|o| o.is_some() && *o == orders[0]);
        if agree {
            let ids = orders[0]
                .as_ref()
                .unwrap()
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_string())
                .collect();
            return (books[0].clone().unwrap(), ids);
        }
        assert!(Instant::now() < deadline, "the replicas never converged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Acceptance: three frontends behind HAProxy, 16 clients (8 buying, 8 looking up), and
/// one after the other SIGKILL of frontend 0, of the coordinator leader, and of the
/// catalog primary. After each, lookups and buys are answered again within 1 s, and no
/// acknowledged buy is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_then_coordinator_leader_then_catalog_primary_killed_under_16_clients() {
    let _machine = crate::MACHINE.write().await;
    let mut f = start(3, 100_000).await;
    let url = f.lc.public_url();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let (clients, history) = spawn_clients(8, 8, &url, &stop, t0);
    let pause = Duration::from_millis(2000);
    tokio::time::sleep(pause).await;

    let mut faults = Vec::new();
    let at = t0.elapsed();
    f.lc.kill9(Kind::Frontend, 0).await.unwrap();
    faults.push(("frontend 0", at));
    tokio::time::sleep(pause).await;

    let leader =
        f.lc.coordinator_leader()
            .await
            .expect("a coordinator leads");
    let at = t0.elapsed();
    f.lc.kill9(Kind::Coordinator, leader).await.unwrap();
    faults.push(("the coordinator leader", at));
    tokio::time::sleep(pause).await;

    let primary = f.lc.primary(Kind::Catalog).await.unwrap();
    let at = t0.elapsed();
    f.lc.kill9(Kind::Catalog, primary).await.unwrap();
    faults.push(("the catalog primary", at));
    tokio::time::sleep(pause).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let history = history.lock().unwrap().clone();

    let window = Duration::from_millis(1800);
    let mut worst = Vec::new();
    for (what, at) in &faults {
        let buys = longest_gap(&history, |o| matches!(o, Op::Buy(Ok(_))), *at, window);
        let lookups = longest_gap(&history, |o| matches!(o, Op::Lookup(Ok(_))), *at, window);
        println!(
            "SIGKILL of {what}: longest gap in answered buys {buys:?}, in answered lookups {lookups:?}"
        );
        worst.push((what, buys, lookups));
    }
    let count = |p: &dyn Fn(&Op) -> bool| history.iter().filter(|(o, _)| p(o)).count();
    println!(
        "{} operations: {} buys acknowledged, {} unknown; {} lookups answered, {} not",
        history.len(),
        count(&|o| matches!(o, Op::Buy(Ok(_)))),
        count(&|o| matches!(o, Op::Buy(Err(_)))),
        count(&|o| matches!(o, Op::Lookup(Ok(_)))),
        count(&|o| matches!(o, Op::Lookup(Err(_)))),
    );
    for (what, buys, lookups) in &worst {
        assert!(
            *buys < Duration::from_secs(1),
            "after SIGKILL of {what}, buys paused for {buys:?}"
        );
        assert!(
            *lookups < Duration::from_secs(1),
            "after SIGKILL of {what}, lookups paused for {lookups:?}"
        );
    }

    // Nothing acknowledged is lost: every acknowledged order is recorded, and the stock
    // fell by at least as many copies.
    f.lc.restart(Kind::Catalog, primary).await.unwrap();
    f.lc.restart(Kind::Coordinator, leader).await.unwrap();
    f.lc.wait_ready(Duration::from_secs(20)).await.unwrap();
    let (books, orders) = converged(&f.lc).await;
    let acked: Vec<&String> = history
        .iter()
        .filter_map(|(o, _)| match o {
            Op::Buy(Ok(id)) => Some(id),
            _ => None,
        })
        .collect();
    assert!(acked.len() > 100, "only {} buys succeeded", acked.len());
    for id in &acked {
        assert!(orders.contains(*id), "acknowledged order {id} was lost");
    }
    let sold: u64 = books.values().map(|s| 100_000 - s).sum();
    assert!(
        sold >= acked.len() as u64 && sold == orders.len() as u64,
        "sold {sold}, recorded {}, acknowledged {}",
        orders.len(),
        acked.len()
    );
    f.lc.stop().await;
}

/// The epoch of each replicated kind's view, as the replicas report it.
async fn replica_epochs(lc: &LocalCluster) -> BTreeMap<(Kind, u32), u64> {
    let mut out = BTreeMap::new();
    for s in lc
        .servers
        .iter()
        .filter(|s| matches!(s.kind, Kind::Catalog | Kind::Order))
    {
        let v: Value = internal()
            .get_json(&format!("{}/replication/status", s.endpoint.url()))
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", s.kind, s.id));
        out.insert((s.kind, s.id), v["epoch"].as_u64().unwrap());
    }
    out
}

/// A read of the catalog primary itself (not the caches): the stock of book 1, or the
/// status it answered.
async fn primary_read(url: &str) -> Result<u64, u16> {
    match internal()
        .get_json::<Value>(&format!("{url}/query_by_item?item_number=1&consistent=1"))
        .await
    {
        Ok(v) => Ok(v["result"]["stock"].as_u64().unwrap_or_default()),
        Err(e) => Err(e.status().unwrap_or(0)),
    }
}

/// Acceptance: with 2 of 3 coordinators killed, no view changes; writes still commit
/// while the view's replicas answer; reads stop once the primaries' leases end. When one
/// coordinator returns, everything resumes with no restart of anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_coordinators_down_freezes_views_keeps_writes_stops_reads() {
    let _machine = crate::MACHINE.write().await;
    let mut f = start(1, 1000).await;
    let front = f.lc.frontend_url();
    let http = reqwest::Client::new();
    let primary = f.lc.primary(Kind::Catalog).await.unwrap();
    let primary_url = f.lc.cluster.server(Kind::Catalog, primary).unwrap().url();
    assert!(primary_read(&primary_url).await.is_ok());
    let epochs = replica_epochs(&f.lc).await;
    let mut others = BTreeMap::new();
    for s in &f.lc.servers {
        if s.kind != Kind::Coordinator {
            others.insert((s.kind, s.id), s.pid().unwrap());
        }
    }

    let leader = f.lc.coordinator_leader().await.unwrap();
    let follower = (0..3).find(|c| *c != leader).unwrap();
    let survivor = (0..3).find(|c| *c != leader && *c != follower).unwrap();
    f.lc.kill9(Kind::Coordinator, leader).await.unwrap();
    f.lc.kill9(Kind::Coordinator, follower).await.unwrap();
    let killed = Instant::now();

    // Writes commit: the view's replicas still answer each other.
    assert!(buy(&http, &front, 2).await.is_ok(), "a buy failed");
    // Reads stop once the lease (5 ticks of 50 ms after the last answered ping) ends.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        primary_read(&primary_url).await,
        Err(503),
        "the catalog primary still reads without a lease"
    );
    assert!(buy(&http, &front, 3).await.is_ok(), "a buy failed");
    // The survivor alone cannot decide or answer with authority.
    let survivor_url =
        f.lc.cluster
            .server(Kind::Coordinator, survivor)
            .unwrap()
            .url();
    let r = internal()
        .get_json::<Value>(&format!("{survivor_url}{}", view_path("catalog")))
        .await;
    assert!(
        matches!(r.as_ref().map_err(|e| e.status()), Err(Some(421 | 503))),
        "a lone coordinator answered a view: {r:?}"
    );
    // No view changes: the replicas stay in their epochs.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(replica_epochs(&f.lc).await, epochs, "a view changed");
    println!(
        "2 of 3 coordinators down for {:?}: writes committed, reads refused, no view change",
        killed.elapsed()
    );

    // One coordinator returns: a majority again, reads resume, nothing else restarted.
    f.lc.restart(Kind::Coordinator, follower).await.unwrap();
    let back = Instant::now();
    loop {
        if primary_read(&primary_url).await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "reads did not resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "reads resumed {:?} after a second coordinator came back",
        back.elapsed()
    );
    assert!(buy(&http, &front, 1).await.is_ok());
    assert!(lookup(&http, &front, 1).await.is_ok());
    for s in &f.lc.servers {
        if s.kind != Kind::Coordinator {
            assert_eq!(
                Some(&s.pid().unwrap()),
                others.get(&(s.kind, s.id)),
                "{} {} was restarted",
                s.kind,
                s.id
            );
        }
    }
    f.lc.stop().await;
}

/// Acceptance: SIGKILL every coordinator, then restart them: the views and the member
/// tables are as before (a replica added at run time included), and no epoch goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_coordinator_killed_and_restarted_keeps_views_and_members() {
    let _machine = crate::MACHINE.write().await;
    let mut f = start(1, 1000).await;
    let http = reqwest::Client::new();
    let front = f.lc.frontend_url();
    // A member table that differs from the cluster file's.
    f.lc.add(Kind::Catalog, &|_| {}).await.unwrap();
    assert!(buy(&http, &front, 1).await.is_ok());
    let mut before = BTreeMap::new();
    for kind in Kind::REPLICATED {
        before.insert(kind, f.lc.view_doc(kind).await.unwrap());
    }
    for id in 0..3 {
        f.lc.kill9(Kind::Coordinator, id).await.unwrap();
    }
    for id in 0..3 {
        f.lc.restart(Kind::Coordinator, id).await.unwrap();
    }
    f.lc.wait_leader(Duration::from_secs(20)).await.unwrap();
    for kind in Kind::REPLICATED {
        let after = f.lc.view_doc(kind).await.unwrap();
        let (b, a) = (&before[&kind], &after);
        assert_eq!(a.members, b.members, "{kind} members");
        let (bv, av) = (b.view.as_ref().unwrap(), a.view.as_ref().unwrap());
        assert!(
            av.epoch >= bv.epoch,
            "{kind}: epoch went back: {bv:?} -> {av:?}"
        );
        if av.epoch == bv.epoch {
            assert_eq!(av, bv, "{kind}: the same epoch names another view");
        }
        println!("{kind}: before {bv:?}, after {av:?}");
    }
    // And the store works on.
    f.lc.wait_ready(Duration::from_secs(20)).await.unwrap();
    assert!(buy(&http, &front, 1).await.is_ok());
    f.lc.stop().await;
}
