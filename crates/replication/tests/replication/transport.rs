//! Replicas with no sockets ([`crate::mesh`]): a write, and writes submitted together,
//! commit on every replica, and after the primary crashes the view service makes a backup
//! primary that holds the writes and takes new ones.
use crate::mesh::{self, primary, url, TICK};
use bookstore_replication::node::SubmitError;
use std::time::Duration;

/// The answer of a submit, which must come within 5 s.
async fn within<T, E: std::fmt::Debug>(
    submit: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    tokio::time::timeout(Duration::from_secs(5), submit)
        .await
        .expect("committed within 5 s")
        .unwrap()
}

#[tokio::test]
async fn replicas_commit_and_fail_over_through_an_in_memory_transport() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mesh, nodes, ticker) = mesh::start(3, &dirs);

    let first = primary(&nodes, None).await;
    assert_eq!(within(nodes[first].submit(7)).await, 1);
    // Writes submitted together: consecutive entries, each with its own answer.
    let together =
        tokio::time::timeout(Duration::from_secs(5), nodes[first].submit_all(&[1, 2, 3]))
            .await
            .expect("committed within 5 s");
    assert_eq!(together, vec![Ok(2), Ok(3), Ok(4)]);
    let backup = (first + 1) % nodes.len();
    let refused = nodes[backup].submit_all(&[9, 9]).await;
    assert!(
        refused
            .iter()
            .all(|r| matches!(r, Err(SubmitError::NotPrimary { .. }))),
        "a backup refuses each write: {refused:?}"
    );
    assert!(nodes[first].submit_all(&[]).await.is_empty());
    for n in &nodes {
        for _ in 0..500 {
            if n.read_any(|s| s.0 == [7, 1, 2, 3]) {
                break;
            }
            tokio::time::sleep(TICK).await;
        }
        assert_eq!(
            n.read_any(|s| s.0.clone()),
            vec![7, 1, 2, 3],
            "replica {:?}",
            n.status()
        );
    }

    // The primary crashes; its messages and pings stop with it.
    mesh.nodes.lock().remove(&url(first));
    nodes[first].crash().await;
    let next = primary(&nodes, Some(first)).await;
    assert_ne!(next, first);
    assert_eq!(
        nodes[next].submit(8).await.unwrap(),
        5,
        "the writes survived"
    );
    assert_eq!(nodes[next].read(|s| s.0.clone()), Some(vec![7, 1, 2, 3, 8]));
    ticker.abort();
    for n in &nodes {
        n.crash().await;
    }
}
