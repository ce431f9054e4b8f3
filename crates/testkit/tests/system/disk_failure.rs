//! A replica whose disk fails stops serving, and says so: its `/health` is no longer
//! `200 ok`, and its server exits with an error naming the disk failure (so the process
//! exits non-zero and systemd's `Restart=on-failure` starts it again, from its disk).
use bookstore_common::config::Kind;
use bookstore_testkit::{TestCluster, CLUSTER_TOKEN};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_disk_failed_is_not_healthy() {
    let mut c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let health = format!("{}/health", c.url(Kind::Catalog, 0));
    assert_eq!(http.get(&health).send().await.unwrap().status(), 200);
    // Catalog 0 loses its data directory; its next disk write (the view without
    // catalog 1, which crashes now) fails.
    std::fs::remove_dir_all(c.data.path().join("catalog0")).unwrap();
    let r = http
        .post(format!("{}/shutdown", c.url(Kind::Catalog, 1)))
        .header("X-Cluster-Token", CLUSTER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut last = String::new();
    let mut unhealthy = false;
    for _ in 0..100 {
        match http.get(&health).send().await {
            Ok(r) if r.status() == 200 => last = r.text().await.unwrap_or_default(),
            Ok(r) => {
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(status, 503, "{body}");
                assert_eq!(body["status"], "failed", "{body}");
                unhealthy = true;
                break;
            }
            // The replica's server is gone already.
            Err(_) => {
                unhealthy = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        unhealthy,
        "catalog 0 lost its disk but still answers /health with 200: {last}"
    );
    let exit = c.exit_of(Kind::Catalog, 0, Duration::from_secs(5)).await;
    let e = exit.expect_err("the server must end with an error");
    assert!(e.to_string().contains("disk failure"), "{e}");
}
