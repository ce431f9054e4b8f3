//! The operation logs of a running cluster: no parameter forges a line, and every
//! server counts the lines its log dropped in `/metrics`.
use bookstore_common::config::Kind;
use bookstore_testkit::{Options, TestCluster, CLUSTER_TOKEN};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_can_be_forged_through_a_parameter() {
    let out = tempfile::tempdir().unwrap();
    let c = TestCluster::with(Options {
        output_dir: Some(out.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let f = c.frontend();
    let http = reqwest::Client::new();
    for topic in [
        "x%0Arestock,1,99999,0",
        "x%0D%0Arestock,2,1,0",
        "x%0Dbought%20book%201",
        "x%E2%80%A8restock,3,1,0",
    ] {
        let r = http
            .get(format!("{f}/search?topic={topic}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success() || r.status().is_client_error());
    }
    // Give the writers (a few ms behind) time, then read every operation log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen = 0;
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with("_log") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            seen += 1;
            assert!(
                !line.starts_with("restock") && !line.starts_with("bought"),
                "{}: forged line {line:?}",
                path.display()
            );
            assert!(!line.contains('\u{2028}'), "{line:?}");
        }
    }
    assert!(seen > 0, "no log lines at all");
    // Every server counts the lines its log dropped (none here).
    let mut servers = vec![c.frontend(), c.url(Kind::Cache, 0)];
    servers.extend((0..2).map(|i| c.url(Kind::Catalog, i)));
    servers.extend((0..2).map(|i| c.url(Kind::Order, i)));
    for url in servers {
        let text = http
            .get(format!("{url}/metrics"))
            .header("X-Cluster-Token", CLUSTER_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("bookstore_oplog_dropped_lines_total 0"),
            "{url}/metrics has no oplog drop counter"
        );
    }
}
