//! Runs the load generator against an in-process bookstore cluster and the baseline.
use bookstore_testkit::{Options, TestCluster, ADMIN_TOKEN};
use loadtest::report::{read_csv, read_json, table, write_files};
use loadtest::tiers::END_TO_END;
use loadtest::{run, RoundResult, RunConfig, RunReport, Stop, Workload};
use std::time::Duration;

use crate::support::Baseline;

/// Checks that `svg` is well-formed XML with an `<svg>` root; returns its text nodes.
fn svg_texts(svg: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut root = None;
    let mut texts = Vec::new();
    for token in xmlparser::Tokenizer::from(svg) {
        match token.unwrap_or_else(|e| panic!("not well-formed XML: {e}")) {
            xmlparser::Token::ElementStart { local, .. } => {
                root.get_or_insert_with(|| local.to_string());
                stack.push(local.to_string());
            }
            xmlparser::Token::ElementEnd { end, .. } => match end {
                xmlparser::ElementEnd::Open => {}
                xmlparser::ElementEnd::Empty => {
                    stack.pop().expect("an open element");
                }
                xmlparser::ElementEnd::Close(_, name) => {
                    assert_eq!(
                        stack.pop().as_deref(),
                        Some(name.as_str()),
                        "mismatched tag"
                    );
                }
            },
            xmlparser::Token::Text { text } => texts.push(
                text.as_str()
                    .trim()
                    .replace("&gt;", ">")
                    .replace("&lt;", "<")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&"),
            ),
            _ => {}
        }
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    assert_eq!(root.as_deref(), Some("svg"));
    texts
}

fn tier_names(round: &RoundResult) -> Vec<&str> {
    round.tiers.iter().map(|t| t.tier.as_str()).collect()
}

fn config(target: &str, workload: Workload, clients: &[usize], requests: u64) -> RunConfig {
    let mut c = RunConfig::new(target, workload);
    c.clients = clients.to_vec();
    c.stop = Stop::Requests(requests);
    c.timeout = Duration::from_secs(5);
    c
}

fn assert_sane(round: &RoundResult) {
    let l = &round.latency;
    assert!(l.min_ms > 0.0, "{l:?}");
    assert!(l.min_ms <= l.p50_ms, "{l:?}");
    assert!(l.p50_ms <= l.p90_ms && l.p90_ms <= l.p99_ms, "{l:?}");
    assert!(l.p99_ms <= l.p999_ms && l.p999_ms <= l.max_ms, "{l:?}");
    assert!(l.mean_ms <= l.max_ms, "{l:?}");
    assert!(round.throughput_rps > 0.0);
    assert_eq!(round.histogram.as_ref().map(|h| h.len()), Some(round.count));
}

fn assert_clean(report: &RunReport, requests: u64, clients: &[usize]) {
    assert_eq!(report.rounds.len(), clients.len());
    for (round, c) in report.rounds.iter().zip(clients) {
        assert_eq!(round.clients, *c);
        assert_eq!(round.errors.total(), 0, "{:?}", round.errors);
        assert_eq!(round.count, requests, "clients {c}");
        assert_sane(round);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_mixed_against_a_cluster() {
    let _machine = crate::MACHINE.read().await;
    let cluster = TestCluster::start().await;
    let target = cluster.frontend();

    let lookup = run(&config(&target, Workload::Lookup, &[1, 4], 200))
        .await
        .unwrap();
    assert_clean(&lookup, 200, &[1, 4]);
    assert_eq!(lookup.items, (1..=7).collect::<Vec<_>>(), "found by search");
    assert_eq!(lookup.rounds[1].ops.lookup, 200);

    let search = run(&config(&target, Workload::Search, &[1, 4], 200))
        .await
        .unwrap();
    assert_clean(&search, 200, &[1, 4]);
    assert_eq!(search.rounds[0].ops.search, 200);

    let mut mixed = config(&target, Workload::Mixed { buy_fraction: 0.3 }, &[1, 4], 200);
    mixed.admin_token = Some(ADMIN_TOKEN.into());
    mixed.restock_quantity = 5;
    let mixed = run(&mixed).await.unwrap();
    assert_clean(&mixed, 200, &[1, 4]);
    for r in &mixed.rounds {
        assert!(
            r.ops.lookup > 0 && r.ops.search > 0 && r.ops.buy > 0,
            "{:?}",
            r.ops
        );
        assert_eq!(r.ops.buy, r.bought + r.sold_out);
        assert!(r.bought > 0);
    }

    // An unknown item is an unexpected 4xx, not an answer.
    let mut missing = config(&target, Workload::Lookup, &[2], 10);
    missing.items = Some(vec![999]);
    let missing = run(&missing).await.unwrap();
    assert_eq!(missing.rounds[0].count, 0);
    assert_eq!(missing.rounds[0].errors.unexpected_4xx, 10);

    // Per-tier latency from the Server-Timing headers: end-to-end first, then the
    // frontend's own time, then its calls (to the cache on a near-cache miss, and to the
    // catalog on a miss of both; near-cache hits call nothing). The first round starts
    // cold: its first lookup of each item reaches the cache service.
    let cold = tier_names(&lookup.rounds[0]);
    assert!(
        cold.contains(&"frontend->cache") || cold.contains(&"frontend->catalog"),
        "{cold:?}"
    );
    for r in &lookup.rounds {
        let names = tier_names(r);
        assert_eq!(
            names[..2],
            [END_TO_END, "frontend (in server)"],
            "{names:?}"
        );
        assert_eq!(r.tiers[0].count, r.count);
        assert_eq!(r.tiers[0].latency, r.latency);
        assert_eq!(r.tiers[1].count, r.count, "every answer has a header");
        // The frontend's own time is part of the client's.
        assert!(
            r.tiers[1].latency.p50_ms <= r.latency.p50_ms,
            "{:?}",
            r.tiers
        );
    }
    // Buys add the order service and its call to the catalog.
    let buy_tiers = tier_names(&mixed.rounds[1]);
    for t in ["frontend->order", "order->catalog", "order->replication"] {
        assert!(buy_tiers.contains(&t), "{t} missing from {buy_tiers:?}");
    }

    // Results files are written and parse back.
    let dir = tempfile::tempdir().unwrap();
    let folder = write_files(&lookup, dir.path()).unwrap();
    assert_eq!(folder, dir.path().join(&lookup.run_id));
    let all_rows = read_csv(&folder.join("results.csv")).unwrap();
    let tier_rows: usize = lookup.rounds.iter().map(|r| r.tiers.len()).sum();
    assert_eq!(all_rows.len(), tier_rows);
    assert!(all_rows.iter().any(|r| r.tier == "frontend (in server)"));
    let rows: Vec<_> = all_rows.iter().filter(|r| r.tier == END_TO_END).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].clients, 1);
    assert_eq!(rows[1].clients, 4);
    assert_eq!(rows[1].count, 200);
    assert_eq!(rows[1].workload, "lookup");
    assert_eq!(rows[1].p99_ms, lookup.rounds[1].latency.p99_ms);
    let back = read_json(&folder.join("results.json")).unwrap();
    assert_eq!(back.run_id, lookup.run_id);
    assert_eq!(back.rounds.len(), 2);
    // JSON keeps floats to within a unit in the last place, not always bit for bit.
    let (a, b) = (&back.rounds[1].latency, &lookup.rounds[1].latency);
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * y.abs().max(1.0);
    assert!(
        close(a.mean_ms, b.mean_ms) && close(a.stdev_ms, b.stdev_ms),
        "{a:?} vs {b:?}"
    );
    assert!(close(a.p50_ms, b.p50_ms) && close(a.p99_ms, b.p99_ms) && close(a.max_ms, b.max_ms));
    assert_eq!(a.quantiles.len(), b.quantiles.len());
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(raw["workload"], "lookup");
    assert_eq!(raw["rounds"][0]["count"], 200);
    assert_eq!(raw["rounds"][0]["tiers"][1]["tier"], "frontend (in server)");
    // latency.svg: well-formed, an <svg> root, a legend naming every tier.
    let svg = std::fs::read_to_string(folder.join("latency.svg")).unwrap();
    let texts = svg_texts(&svg);
    for name in lookup.tier_names() {
        assert!(texts.contains(&name), "{name} not in {texts:?}");
    }
    let folder = write_files(&mixed, dir.path()).unwrap();
    let texts = svg_texts(&std::fs::read_to_string(folder.join("latency.svg")).unwrap());
    assert!(texts.contains(&"order->catalog".to_string()), "{texts:?}");

    let t = table(&mixed);
    assert!(
        t.contains("p99 (ms)") && t.contains("sold out (409)"),
        "{t}"
    );
    assert!(
        t.contains("  client->frontend p99") && t.contains("  order->catalog mean"),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buys_and_races() {
    let _machine = crate::MACHINE.read().await;
    let cluster = TestCluster::with(Options::default()).await;
    let target = cluster.frontend();

    // A race on an item of stock 3, no admin token: 3 successes, then none.
    let mut race = config(&target, Workload::Race, &[1, 4], 50);
    race.items = Some(vec![7]);
    let no_restock = run(&race).await.unwrap();
    assert_clean(&no_restock, 50, &[1, 4]);
    let first = no_restock.rounds[0].race.clone().unwrap();
    assert_eq!(first.item, 7);
    assert_eq!(first.stock_before, 3);
    assert_eq!(first.successes, 3);
    assert_eq!(first.stock_after, Some(0));
    assert!(first.consistent);
    let second = no_restock.rounds[1].race.clone().unwrap();
    assert_eq!((second.stock_before, second.successes), (0, 0));
    assert!(no_restock.race_consistent());

    // Seven items of stock 3 or 6: 200 buys sell everything out, then restock.
    let mut buy = config(&target, Workload::Buy, &[1, 4], 200);
    buy.admin_token = Some(ADMIN_TOKEN.into());
    buy.restock_quantity = 10;
    let buy = run(&buy).await.unwrap();
    assert_clean(&buy, 200, &[1, 4]);
    for r in &buy.rounds {
        assert_eq!(r.bought + r.sold_out, 200);
        assert_eq!(r.ops.buy, 200);
    }
    assert!(buy.rounds.iter().map(|r| r.restocks).sum::<u64>() > 0);

    // Topped up to 40 before each round: exactly 40 of 200 buys succeed each time.
    race.stop = Stop::Requests(200);
    race.admin_token = Some(ADMIN_TOKEN.into());
    race.race_stock = Some(40);
    let topped = run(&race).await.unwrap();
    assert_clean(&topped, 200, &[1, 4]);
    for r in &topped.rounds {
        let x = r.race.as_ref().unwrap();
        assert_eq!(x.stock_before, 40);
        assert_eq!(x.successes, 40, "{x:?}");
        assert_eq!(r.sold_out, 160);
        assert!(x.consistent, "{x:?}");
    }
    assert!(table(&topped).contains("race: consistent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_the_rate() {
    let _machine = crate::MACHINE.read().await;
    let cluster = TestCluster::start().await;
    let mut c = RunConfig::new(cluster.frontend(), Workload::Lookup);
    c.clients = vec![4];
    c.rate = Some(40.0);
    c.stop = Stop::Duration(Duration::from_secs(1));
    let report = run(&c).await.unwrap();
    assert_eq!(report.mode, loadtest::Mode::Open);
    let r = &report.rounds[0];
    assert_eq!(r.errors.total(), 0);
    assert!((36..=41).contains(&r.count), "{} requests", r.count);
    assert!(r.elapsed_s >= 0.95 && r.elapsed_s < 2.0, "{}", r.elapsed_s);
    assert_sane(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_answers_and_errors_are_counted() {
    let _machine = crate::MACHINE.read().await;
    let baseline = Baseline::start();
    let target = baseline.url.clone();
    let body: serde_json::Value = reqwest::get(format!("{target}/lookup"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["result"]["item_number"], 1);
    let report = run(&config(&target, Workload::Lookup, &[1, 4], 200))
        .await
        .unwrap();
    assert_clean(&report, 200, &[1, 4]);
    baseline.stop().await;

    // Nothing listens any more: every request is a connect error.
    let mut dead = config(&target, Workload::Lookup, &[2], 6);
    dead.items = Some(vec![1]);
    let dead = run(&dead).await.unwrap();
    assert_eq!(dead.rounds[0].count, 0);
    assert_eq!(
        dead.rounds[0].errors.connect, 6,
        "{:?}",
        dead.rounds[0].errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_on_and_off_are_compared() {
    let _machine = crate::MACHINE.read().await;
    let cluster = TestCluster::start().await;
    cluster.wait_cache_leased().await;
    let target = cluster.frontend();
    let mut on = config(&target, Workload::Lookup, &[2], 300);
    on.items = Some(vec![1, 2]);
    let on = run(&on).await.unwrap();
    let mut off = config(&target, Workload::Lookup, &[2], 300);
    off.items = Some(vec![1, 2]);
    off.bypass_cache = true;
    let off = run(&off).await.unwrap();
    assert_clean(&on, 300, &[2]);
    assert_clean(&off, 300, &[2]);
    assert!(off.cache_bypassed && !on.cache_bypassed);
    // Bypassed: every answer came from the catalog, none from the cache.
    let calls = |r: &RunReport, tier: &str| {
        r.rounds[0]
            .tiers
            .iter()
            .find(|t| t.tier == tier)
            .map_or(0, |t| t.count)
    };
    assert_eq!(calls(&off, "frontend->catalog"), 300);
    assert_eq!(calls(&off, "frontend->cache"), 0);
    // With the cache on, two items: almost every answer is a hit (of the frontend's near
    // cache, after the first lookups of each item asked the cache service).
    assert!(
        calls(&on, "frontend->cache") >= 2,
        "{:?}",
        on.rounds[0].tiers
    );
    assert!(
        calls(&on, "frontend->catalog") < 30,
        "{:?}",
        on.rounds[0].tiers
    );

    let rows = loadtest::report::compare_cache(&on, &off);
    assert_eq!(rows.len(), 1);
    let c = &rows[0];
    assert_eq!(c.clients, 2);
    let expect = on.rounds[0].throughput_rps / off.rounds[0].throughput_rps;
    assert!((c.throughput_ratio - expect).abs() < 1e-9);
    let t = loadtest::report::comparison_table("lookup", &rows);
    assert!(
        t.contains("throughput on/off") && t.contains("mean off/on"),
        "{t}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = loadtest::report::write_comparison(&rows, dir.path()).unwrap();
    let mut r = csv::Reader::from_path(path).unwrap();
    let back: Vec<loadtest::report::CacheComparison> =
        r.deserialize().collect::<Result<_, _>>().unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].clients, 2);
    let rows = read_csv(&write_files(&off, dir.path()).unwrap().join("results.csv")).unwrap();
    assert!(rows.iter().all(|r| r.cache == "off"));
}
