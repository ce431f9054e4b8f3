//! Batched leadership confirmation (Raft's ReadIndex): an answer that grants a read lease
//! or names a primary is released only after a quorum of coordinators confirmed, in a
//! heartbeat round that *started after the request was received*, that this node still
//! leads (`openraft::Raft::ensure_linearizable`).
//!
//! Why that is enough: a newer leader needs votes from a majority, which overlaps the
//! majority that acknowledged the round; a coordinator that voted for it refuses our
//! heartbeats afterwards. So any newer leader was elected after the round, hence after
//! the request was received, and (docs/replication.md, "Who decides") after the ping it
//! answers was sent.
//!
//! One round runs at a time; every request that arrives while it runs joins the next.
use crate::raft::Raft;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), String>>;

/// Handle on the confirmation task (cheap to clone).
#[derive(Clone)]
pub struct Confirmer {
    tx: mpsc::Sender<Waiter>,
}

/// Requests waiting for the next round. Bounded: beyond it a caller is told to retry
/// (each waiter is one in-flight HTTP request, which the server bounds anyway).
const QUEUE: usize = 4096;

impl Confirmer {
    /// Starts the task; it ends when every handle is dropped.
    pub fn start(raft: Raft, round_timeout: Duration) -> (Confirmer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(raft, rx, round_timeout));
        (Confirmer { tx }, task)
    }

    /// Resolves once a round that started after this call confirmed leadership; an error
    /// says why it could not.
    pub async fn confirm(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send(tx)
            .map_err(|_| "too many requests waiting for a leadership check".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the coordinator is stopping".into()))
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Waiter>, round_timeout: Duration) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        // Every waiter in `batch` was queued before this round starts.
        let result = match tokio::time::timeout(round_timeout, raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot confirm leadership: {e}")),
            Err(_) => Err(format!(
                "cannot confirm leadership: no quorum within {} ms",
                round_timeout.as_millis()
            )),
        };
        for w in batch {
            let _ = w.send(result.clone());
        }
    }
}
