//! Group commit as the replica does it (`node/disk.rs`, `disk_loop`): writers hand records
//! to one disk thread, which takes every request waiting, appends them all, makes them
//! durable with one `Wal::sync`, then answers each writer. A writer sends its next record
//! only after the answer to the previous one, like a client waiting for its
//! acknowledgement. Shared by `wal_measure` and the `wal` bench (by `#[path]`).
use std::sync::mpsc;

use bookstore_replication::wal::Wal;

/// Most requests one round takes, as in `node/disk.rs`.
const MAX_BATCH: usize = 4096;

pub struct Request {
    payload: Vec<u8>,
    done: mpsc::Sender<()>,
}

/// Write + fdatasync rounds that committed something, and the largest of them.
#[derive(Debug, Default)]
pub struct Rounds {
    pub count: u64,
    pub max_records: u64,
}

/// Assigns indices from the end of the log and group-commits until every sender is gone.
pub fn disk_thread(mut wal: Wal, requests: mpsc::Receiver<Request>) -> (Wal, Rounds) {
    let mut rounds = Rounds::default();
    let mut next = wal.last_index().map_or(1, |last| last + 1);
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        batch.extend(requests.try_iter().take(MAX_BATCH - 1));
        for request in &batch {
            wal.append(next, &request.payload).unwrap();
            next += 1;
        }
        wal.sync().unwrap();
        rounds.count += 1;
        rounds.max_records = rounds.max_records.max(batch.len() as u64);
        for request in batch {
            let _ = request.done.send(());
        }
    }
    (wal, rounds)
}

/// `writers` threads each append `per_writer` records of `payload`, one at a time.
pub fn run_writers(tx: &mpsc::Sender<Request>, writers: u64, per_writer: u64, payload: &[u8]) {
    std::thread::scope(|s| {
        for _ in 0..writers {
            let tx = tx.clone();
            s.spawn(move || {
                let (done, answer) = mpsc::channel();
                for _ in 0..per_writer {
                    let request = Request {
                        payload: payload.to_vec(),
                        done: done.clone(),
                    };
                    tx.send(request).unwrap();
                    answer.recv().unwrap();
                }
            });
        }
    });
}
