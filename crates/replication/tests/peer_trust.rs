//! A replica fed what a buggy or hostile peer could send: whatever the messages, what it
//! stores on its disk must let it start again (a bad message is refused, it never
//! poisons the disk). Real replicas (disk, driver), no network: messages are handed to
//! `Node::deliver` as the HTTP route would.
use bookstore_replication::node::{Node, NodeOptions, StateMachine};
use bookstore_replication::protocol::{Entry, Msg, View};
use std::time::Duration;

/// Keeps every applied entry.
#[derive(Default)]
struct Applied(Vec<Vec<u8>>);

impl StateMachine for Applied {
    fn apply(&mut self, _index: u64, data: &[u8]) -> Vec<u8> {
        self.0.push(data.to_vec());
        Vec::new()
    }
    fn snapshot(&self) -> Vec<u8> {
        bincode::serialize(&self.0).unwrap()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.0 = bookstore_replication::protocol::decode(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn start(dir: &std::path::Path) -> Node<Applied> {
    // Peers and view service that never answer (port 9 on loopback: discard).
    let mut opts = NodeOptions::new(
        0,
        vec!["http://127.0.0.1:9".into(), "http://127.0.0.1:9".into()],
        "http://127.0.0.1:9/vs/catalog".into(),
        dir.to_path_buf(),
        "peer-trust-cluster-token",
    );
    opts.tick = Duration::from_millis(10);
    Node::start(opts, Applied::default).unwrap()
}

fn view(epoch: u64) -> View {
    View {
        epoch,
        primary: 1,
        backups: vec![0],
    }
}

fn entry(index: u64, epoch: u64) -> Entry {
    Entry {
        index,
        epoch,
        data: vec![index as u8],
    }
}

/// Replica 1 makes replica 0 its backup in `epoch` (the view is persisted first).
async fn become_backup(node: &Node<Applied>, epoch: u64) {
    let heartbeat = Msg::Replicate {
        view: view(epoch),
        prev_index: 0,
        prev_epoch: 0,
        entries: vec![],
        commit: 0,
    };
    node.deliver(1, vec![heartbeat]);
    for _ in 0..200 {
        if node.status().role == "backup" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("replica 0 never became a backup: {:?}", node.status());
}

#[tokio::test]
async fn entries_with_a_gap_are_refused_and_the_replica_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    become_backup(&node, 1).await;
    // Entries 1 and 3, no 2.
    node.deliver(
        1,
        vec![Msg::Replicate {
            view: view(1),
            prev_index: 0,
            prev_epoch: 0,
            entries: vec![entry(1, 1), entry(3, 1)],
            commit: 0,
        }],
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.crash().await;
    let again = std::panic::AssertUnwindSafe(node.restart());
    let restarted = futures::FutureExt::catch_unwind(again).await;
    assert!(
        matches!(restarted, Ok(Ok(()))),
        "the replica cannot start from what a peer's message left on its disk"
    );
}
