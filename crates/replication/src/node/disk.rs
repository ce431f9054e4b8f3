//! The disk thread of a replica: it owns the [`Wal`], takes every queued [`DiskOp`],
//! writes them with one `fdatasync` (group commit) and reports their completions to the
//! driver in order; a disk error stops the replica. Also the bytes of a log entry in a WAL
//! record and the WAL's meta value ([`Meta`]).

use super::Input;
use crate::protocol::{Entry, Event, LogIndex, SnapshotMeta, View};
use crate::wal::Wal;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub(super) enum DiskOp {
    Persist(Vec<Entry>),
    View(View),
    Snapshot {
        meta: SnapshotMeta,
        data: Vec<u8>,
        received: bool,
    },
}

/// What the WAL's meta value holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) incarnation: u64,
    pub(super) view: Option<View>,
}
fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + e.data.len());
    v.extend_from_slice(&e.epoch.to_le_bytes());
    v.extend_from_slice(&e.data);
    v
}

pub(super) fn decode_entry(index: LogIndex, payload: &[u8]) -> Result<Entry, super::StartError> {
    if payload.len() < 8 {
        return Err(super::StartError::ShortRecord(index));
    }
    let epoch = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    Ok(Entry {
        index,
        epoch,
        data: payload[8..].to_vec(),
    })
}

pub(super) fn disk_loop<O>(
    mut wal: Wal,
    rx: std::sync::mpsc::Receiver<DiskOp>,
    events: mpsc::UnboundedSender<Input<O>>,
    incarnation: u64,
) {
    while let Ok(op) = rx.recv() {
        let mut ops = vec![op];
        while ops.len() < 4096 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut done = Vec::with_capacity(ops.len());
        let result = (|| -> Result<(), crate::wal::WalError> {
            for op in ops {
                match op {
                    DiskOp::Persist(entries) => {
                        let Some(first) = entries.first().map(|e| e.index) else {
                            continue;
                        };
                        if wal.last_index().is_some_and(|l| l >= first) {
                            wal.truncate_suffix(first)?;
                        }
                        for e in &entries {
                            wal.append(e.index, &encode_entry(e))?;
                        }
                        let last = entries.last().expect("non-empty");
                        done.push(Event::Persisted {
                            index: last.index,
                            epoch: last.epoch,
                        });
                    }
                    DiskOp::View(view) => {
                        wal.sync()?;
                        let epoch = view.epoch;
                        let meta = Meta {
                            incarnation,
                            view: Some(view),
                        };
                        wal.write_meta(&bincode::serialize(&meta).expect("meta encodes"))?;
                        done.push(Event::ViewPersisted { epoch });
                    }
                    DiskOp::Snapshot {
                        meta,
                        data,
                        received,
                    } => {
                        if received {
                            let from = wal.snapshot_index().map_or(1, |s| s + 1);
                            if wal.last_index().is_some_and(|l| l >= from) {
                                wal.truncate_suffix(from)?;
                            }
                        }
                        let mut bytes = Vec::with_capacity(8 + data.len());
                        bytes.extend_from_slice(&meta.epoch.to_le_bytes());
                        bytes.extend_from_slice(&data);
                        wal.install_snapshot(meta.index, &bytes)?;
                        done.push(if received {
                            Event::SnapshotInstalled { meta }
                        } else {
                            Event::SnapshotTaken {
                                meta,
                                bytes: bytes.len() as u64,
                            }
                        });
                    }
                }
            }
            wal.sync()
        })();
        match result {
            Ok(()) => {
                for e in done {
                    let _ = events.send(Input::Event(e));
                }
            }
            Err(e) => {
                let _ = events.send(Input::Fatal(e.to_string()));
                return;
            }
        }
    }
}
