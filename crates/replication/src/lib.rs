//! One replication engine for every replicated service (catalog and order).
//!
//! - [`protocol`]: the primary-backup protocol as a pure state machine (events in,
//!   commands out, no I/O, time as ticks).
//! - [`viewservice`]: the single authority that decides views (epochs).
//! - [`wal`]: the durable write-ahead log with group commit and snapshots.
pub mod protocol;
pub mod viewservice;
pub mod wal;
