//! Replication messages whose claimed sender is not a peer are refused.
use bookstore_common::config::Kind;
use bookstore_testkit::{TestCluster, CLUSTER_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_no_peer_is_refused() {
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let empty = bincode::serialize(&Vec::<bookstore_replication::protocol::Msg>::new()).unwrap();
    for from in [7, 0] {
        let r = http
            .post(format!(
                "{}/replication/msg?from={from}",
                c.url(Kind::Catalog, 0)
            ))
            .header("X-Cluster-Token", CLUSTER_TOKEN)
            .header("content-type", "application/octet-stream")
            .body(empty.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            400,
            "catalog 0 took a message claiming to come from replica {from}"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("from"), "{body}");
    }
}
