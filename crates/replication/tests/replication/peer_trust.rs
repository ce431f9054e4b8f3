//! A replica fed what a buggy or hostile peer could send: whatever the messages, what it
//! stores on its disk must let it start again (a bad message is refused, it never
//! poisons the disk). And a snapshot larger than any request body may be still arrives. Real replicas (disk, driver), no network: messages are handed to
//! `Node::deliver` as the HTTP route would.
use bookstore_replication::node::{Node, NodeOptions, StateMachine};
use bookstore_replication::protocol::{Entry, Msg, View};
use std::time::Duration;

/// Keeps every applied entry.
#[derive(Default)]
struct Applied(Vec<Vec<u8>>);

impl StateMachine for Applied {
    type Command = Vec<u8>;
    type Output = ();
    fn encode(command: &Vec<u8>) -> Vec<u8> {
        command.clone()
    }
    fn decode(data: &[u8]) -> Result<Vec<u8>, bookstore_replication::node::DecodeError> {
        Ok(data.to_vec())
    }
    fn apply(&mut self, _index: u64, data: Vec<u8>) {
        self.0.push(data);
    }
    fn snapshot(&self) -> Vec<u8> {
        bincode::serialize(&self.0).unwrap()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), bookstore_replication::node::DecodeError> {
        self.0 = bookstore_replication::protocol::decode(data)?;
        Ok(())
    }
}

fn start(dir: &std::path::Path) -> Node<Applied> {
    // Peers and view service that never answer (port 9 on loopback: discard).
    start_with_primary(dir, "http://127.0.0.1:9")
}

/// Replica 0, whose peer replica 1 (the primary of [`view`]) is at `primary`.
fn start_with_primary(dir: &std::path::Path, primary: &str) -> Node<Applied> {
    let mut opts = NodeOptions::new(
        0,
        vec!["http://127.0.0.1:9".into(), primary.into()],
        "catalog",
        vec!["http://127.0.0.1:9".into()],
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

/// A `Replicate` in the view of `epoch` of `entries` from the start of the log, with
/// nothing committed (without entries, a heartbeat).
fn replicate(epoch: u64, entries: Vec<Entry>) -> Msg {
    Msg::Replicate {
        view: view(epoch),
        prev_index: 0,
        prev_epoch: 0,
        entries,
        commit: 0,
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
    let heartbeat = replicate(epoch, vec![]);
    node.deliver(1, vec![heartbeat]);
    for _ in 0..200 {
        if node.status().role == bookstore_replication::node::ReplicaRole::Backup {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("replica 0 never became a backup: {:?}", node.status());
}

/// Crashes `node` and starts it again from its disk, which must work: no error and no
/// panic (else `why`).
async fn crash_and_restart(node: &Node<Applied>, why: &str) {
    node.crash().await;
    let again = std::panic::AssertUnwindSafe(node.restart());
    let restarted = futures::FutureExt::catch_unwind(again).await;
    assert!(matches!(restarted, Ok(Ok(()))), "{why}");
}

#[tokio::test]
async fn entries_with_a_gap_are_refused_and_the_replica_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    become_backup(&node, 1).await;
    // Entries 1 and 3, no 2.
    node.deliver(1, vec![replicate(1, vec![entry(1, 1), entry(3, 1)])]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    crash_and_restart(
        &node,
        "the replica cannot start from what a peer's message left on its disk",
    )
    .await;
}

/// A peer that accepts connections and never answers: what is queued for it stays
/// bounded (the rest is dropped and counted; the protocol retransmits).
#[tokio::test]
async fn the_queue_to_a_stuck_peer_is_bounded() {
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = NodeOptions::new(
        0,
        vec![
            "http://127.0.0.1:9".into(),
            format!("http://{}", stuck.local_addr().unwrap()),
        ],
        "catalog",
        vec!["http://127.0.0.1:9".into()],
        dir.path().to_path_buf(),
        "peer-trust-cluster-token",
    );
    opts.tick = Duration::from_millis(10);
    let node = Node::start(opts, Applied::default).unwrap();
    become_backup(&node, 1).await;
    // Each heartbeat is answered with an ack to replica 1, which never reads them.
    let heartbeat = replicate(1, vec![]);
    let n = 3 * bookstore_replication::node::PEER_QUEUE;
    node.deliver(1, vec![heartbeat; n]);
    for _ in 0..200 {
        if node.dropped_messages() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dropped = node.dropped_messages() as usize;
    assert!(
        dropped >= n - 2 * bookstore_replication::node::PEER_QUEUE,
        "{dropped} of {n} acks dropped: the queue grew"
    );
    node.crash().await;
    drop(stuck);
}

/// A snapshot larger than the replicas' body limit reaches a backup over HTTP, in parts;
/// sent whole (as before parts existed) it is refused with 413 and never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_the_body_limit_arrives_in_parts() {
    use bookstore_common::server::{serve_with, Limits};
    use bookstore_replication::protocol::SnapshotMeta;
    use bookstore_replication::transfer::{post, PART_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    become_backup(&node, 1).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/replication/msg?from=1",
        listener.local_addr().unwrap()
    );
    let served = node.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with(
        listener,
        1,
        Limits::replica(),
        move |cfg: &mut actix_web::web::ServiceConfig| {
            let node = served.clone();
            cfg.route(
                "/replication/msg",
                actix_web::web::post().to(
                    move |bookstore_common::params::Query(q): bookstore_common::params::Query<
                        bookstore_replication::transfer::MsgQuery,
                    >,
                          body: bytes::Bytes| {
                        let node = node.clone();
                        async move {
                            bookstore_replication::node::receive(&node, &q, &body)
                                .map(|()| actix_web::HttpResponse::Ok().finish())
                        }
                    },
                ),
            );
        },
        async {
            let _ = stopped.await;
        },
    ));
    // Five entries, a MiB past the body limit in all (debug builds decode slowly).
    let limit = Limits::replica().max_body;
    let state: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; (limit + (1 << 20)) / 5]).collect();
    let snapshot = |index| Msg::Snapshot {
        view: view(1),
        meta: SnapshotMeta { index, epoch: 1 },
        data: bincode::serialize(&state).unwrap(),
    };
    let client = bookstore_common::client::Client::new("peer-trust-cluster-token");
    let whole = bincode::serialize(&vec![snapshot(5)]).unwrap();
    assert!(whole.len() > limit && PART_BYTES < limit);
    let refused = post(&client, &url, whole, usize::MAX).await.unwrap_err();
    assert!(refused.to_string().contains("413"), "{refused}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(node.status().applied, 0, "a refused snapshot was installed");
    let parts = bincode::serialize(&vec![snapshot(5)]).unwrap();
    post(&client, &url, parts, PART_BYTES).await.unwrap();
    for _ in 0..400 {
        if node.status().applied == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(node.status().applied, 5, "{:?}", node.status());
    assert!(
        node.read_any(|s| s.0 == state),
        "the installed state differs"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    node.crash().await;
}

mod arbitrary {
    use super::*;
    use bookstore_replication::protocol::SnapshotMeta;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Mostly the backup's own epoch (1), so that messages get past the epoch checks.
    fn epoch() -> impl Strategy<Value = u64> {
        prop_oneof![3 => Just(1u64), 1 => 0u64..4]
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (1u64..5, epoch(), vec(any::<u8>(), 0..3)).prop_map(|(index, epoch, data)| Entry {
            index,
            epoch,
            data,
        })
    }

    /// Snapshot data: the state machine's own encoding, or bytes that are not.
    fn snapshot_data() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            vec(vec(any::<u8>(), 0..3), 0..4).prop_map(|v| bincode::serialize(&v).unwrap()),
            vec(any::<u8>(), 0..24),
        ]
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            4 => (epoch(), 0u64..3, 0u64..2, vec(entry(), 0..4), 0u64..5).prop_map(
                |(e, prev_index, prev_epoch, entries, commit)| Msg::Replicate {
                    view: view(e),
                    prev_index,
                    prev_epoch,
                    entries,
                    commit,
                }
            ),
            2 => (epoch(), 0u64..7, epoch(), snapshot_data()).prop_map(|(e, index, epoch, data)| {
                Msg::Snapshot {
                    view: view(e),
                    meta: SnapshotMeta { index, epoch },
                    data,
                }
            }),
            1 => (0u64..4, 0u64..7).prop_map(|(epoch, matched)| Msg::Ack { epoch, matched }),
            1 => (0u64..4, 0u64..7).prop_map(|(epoch, commit)| Msg::Nack { epoch, commit }),
            1 => epoch().prop_map(|e| Msg::Reject { view: view(e) }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Whatever a peer sends, the replica keeps running and starts again from its disk.
        #[test]
        fn any_messages_leave_a_disk_the_replica_starts_from(msgs in vec(msg(), 1..12)) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let node = start(dir.path());
                become_backup(&node, 1).await;
                for m in msgs {
                    node.deliver(1, vec![m]);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
                assert_eq!(node.failure(), None, "a peer's message stopped the replica");
                crash_and_restart(
                    &node,
                    "the replica cannot start from what peers' messages left on its disk",
                )
                .await;
                node.crash().await;
            });
        }
    }
}

/// A stop ends every task the replica started (ticks, driver, peer senders, pings), and
/// returns only then, at once: nothing of a stopped replica runs on, and a sender stuck
/// on a peer that never answers is cancelled rather than waited out (its HTTP timeout is
/// 1 s). Without the cancellation the stop takes that long; without the wait, tasks are
/// still running when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cancels_and_waits_for_every_task_of_the_replica() {
    // Replica 1, the primary, accepts connections and never answers.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_url = format!("http://{}", stuck.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in stuck.incoming() {
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let node = start_with_primary(dir.path(), &stuck_url);
    become_backup(&node, 1).await;
    node.deliver(1, vec![replicate(1, vec![entry(1, 1)])]);
    // The backup's answer to its primary is on its way, and stuck (for the call's
    // timeout, 1 s for a small body).
    let limit = std::time::Instant::now() + Duration::from_secs(5);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < limit,
            "the backup never answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(node.running_tasks() >= 3, "{} tasks", node.running_tasks());
    let t0 = std::time::Instant::now();
    node.crash().await;
    let took = t0.elapsed();
    assert_eq!(node.running_tasks(), 0, "tasks left after the stop");
    assert!(took < Duration::from_millis(500), "the stop took {took:?}");
    // A restart starts them again.
    node.restart().await.unwrap();
    assert!(node.running_tasks() >= 2);
    node.crash().await;
    assert_eq!(node.running_tasks(), 0);
}
