//! Tokens are never logged: with every log level on (TRACE, every crate: ours, actix,
//! reqwest, hyper), a cluster that serves public, admin and internal requests, with the
//! right and with wrong tokens, writes neither token nor a wrong one to its log.
use bookstore_common::config::Kind;
use bookstore_testkit::{TestCluster, ADMIN_TOKEN, CLUSTER_TOKEN};
use rusty_fork::rusty_fork_test;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

rusty_fork_test! {
    #[test]
    fn no_token_reaches_the_log() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(no_token_in_the_log());
    }
}

async fn no_token_in_the_log() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let wrong = "wrong-token-4d1f";
    let f = c.frontend();
    http.post(format!("{f}/buy?item_number=2"))
        .send()
        .await
        .unwrap();
    for auth in [ADMIN_TOKEN, wrong] {
        http.post(format!("{f}/admin/restock?item_number=2&quantity=1"))
            .header("authorization", format!("Bearer {auth}"))
            .send()
            .await
            .unwrap();
    }
    for token in [CLUSTER_TOKEN, wrong] {
        for url in [
            format!("{}/books", c.url(Kind::Catalog, 0)),
            format!("{}/stats", c.url(Kind::Cache, 0)),
            c.view_url(Kind::Order),
        ] {
            http.get(url)
                .header("x-cluster-token", token)
                .send()
                .await
                .unwrap();
        }
    }
    drop(c);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).to_string();
    // The log did capture the traffic (so the test can see a leak).
    assert!(text.contains("frontend serving"), "nothing captured");
    assert!(text.lines().count() > 100, "{} lines", text.lines().count());
    for secret in [CLUSTER_TOKEN, ADMIN_TOKEN, wrong] {
        let leak = text.lines().find(|l| l.contains(secret));
        assert!(leak.is_none(), "{secret:?} logged: {leak:?}");
    }
}
