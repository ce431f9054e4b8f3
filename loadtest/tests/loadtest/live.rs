//! `infra local rolling-restart` under load: every catalog and order replica of a real
//! cluster is restarted one at a time while a `loadtest run` buys with 8 clients, and not
//! one buy fails. Needs the `infra` binary (built by `cargo test --workspace`).
use crate::support;
use bookstore_common::config::Kind;
use infra::local::{free_port_cluster, LocalCluster, LocalOptions};
use loadtest::{run, RunConfig, Stop, Workload};
use std::time::{Duration, Instant};
use support::infra_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_fails_no_buy() {
    let _machine = crate::MACHINE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("item_number,title,topic,stock,cost\n");
    for n in 1..=4 {
        csv.push_str(&format!("{n},Book {n},t,1000000,10\n"));
    }
    std::fs::write(dir.path().join("books.csv"), csv).unwrap();
    std::fs::write(
        dir.path().join("cluster.csv"),
        free_port_cluster(2, 2).unwrap().to_text(),
    )
    .unwrap();
    let mut options = LocalOptions::new(
        dir.path().join("cluster.csv"),
        dir.path().join("books.csv"),
        dir.path().join("out"),
        "rolling-cluster-token".into(),
        "rolling-admin-token".into(),
    );
    options.program = Some(infra_binary());
    let mut lc = LocalCluster::start(options, &|_| {}).await.unwrap();
    let primaries = (
        lc.primary(Kind::Catalog).await.unwrap(),
        lc.primary(Kind::Order).await.unwrap(),
    );

    let mut config = RunConfig::new(lc.frontend_url(), Workload::Buy);
    config.clients = vec![8];
    config.stop = Stop::Duration(Duration::from_secs(25));
    config.items = Some(vec![1, 2, 3, 4]);
    config.timeout = Duration::from_secs(10);
    config.progress = false;
    let load = tokio::spawn(async move { run(&config).await });

    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let lines = std::sync::Mutex::new(Vec::new());
    lc.rolling_restart(&|s: &str| lines.lock().unwrap().push(s.to_string()))
        .await
        .unwrap();
    let took = t0.elapsed();
    let report = load.await.unwrap().unwrap();
    let lines = lines.into_inner().unwrap();
    eprintln!("rolling restart took {took:?}:\n{}", lines.join("\n"));
    assert!(
        took < Duration::from_secs(20),
        "the restart ({took:?}) must finish while the load runs (25 s) for the test to mean anything"
    );
    // Every replica went, primaries last.
    for kind in ["catalog", "order"] {
        let order: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("restarting {kind}")))
            .collect();
        assert_eq!(order.len(), 2, "{lines:?}");
        assert!(order[1].contains("(primary)"), "{order:?}");
    }
    let round = &report.rounds[0];
    eprintln!(
        "{} buys in {:.1} s ({:.0}/s), p99 {:.1} ms, max {:.1} ms, errors {:?}",
        round.count,
        round.elapsed_s,
        round.throughput_rps,
        round.latency.p99_ms,
        round.latency.max_ms,
        round.errors
    );
    assert!(
        round.bought > 100,
        "too few buys to mean anything: {}",
        round.bought
    );
    assert_eq!(round.errors.total(), 0, "failed buys: {:?}", round.errors);
    assert_eq!(round.sold_out, 0);
    // The primaries changed hands while they restarted.
    let after = (
        lc.primary(Kind::Catalog).await.unwrap(),
        lc.primary(Kind::Order).await.unwrap(),
    );
    eprintln!("primaries before {primaries:?}, after {after:?}");
    lc.stop().await;
}
