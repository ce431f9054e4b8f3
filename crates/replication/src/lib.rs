//! One replication engine for every replicated service (catalog and order).
//!
//! - [`protocol`]: the primary-backup protocol as a pure state machine (events in,
//!   commands out, no I/O, time as ticks), and [`protocol::decode`], the bounded bincode
//!   decoder of everything other processes send (messages, pings, log entries, snapshots).
//! - [`viewservice`]: the single authority that decides views (epochs).
//! - [`wal`]: the durable write-ahead log with group commit and snapshots.
//! - [`node`]: the runtime that drives one replica over HTTP with tokio: a disk thread
//!   for the WAL, one sender task per peer, ticks from a timer; the service's state
//!   machine plugs in through [`node::StateMachine`].
//! - [`control`]: the routes every replicated service shares (`/health`, `/shutdown`,
//!   `/recover`, `/replication/*`).
//! - [`vs_host`]: hosts the view service of each replicated kind (in the frontend).
pub mod control;
pub mod node;
pub mod protocol;
pub mod viewservice;
pub mod vs_host;
pub mod wal;
