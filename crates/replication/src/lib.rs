//! The replication runtime: drives the pure core (`bookstore-replication-core`, re-exported
//! here as [`lease`], [`protocol`], [`viewservice`] and [`wire`]) with tokio, HTTP and a disk, for
//! every replicated service (catalog and order).
//!
//! - [`wal`]: the durable write-ahead log (segments, snapshots, a meta value): the file
//!   I/O around the byte format of `bookstore_replication_core::wal_format`; its
//!   submodules open and recover a directory (`recovery`) and do the file operations
//!   (`files`).
//! - [`node`]: the runtime that drives one replica over HTTP with tokio: a disk thread
//!   for the WAL, one sender task per peer, ticks from a timer; the service's state
//!   machine plugs in through [`node::StateMachine`].
//! - [`transport`]: the [`transport::Transport`] trait, the node's way out to peers and
//!   coordinators, and its HTTP implementation.
//! - [`transfer`]: replication messages on the wire, a snapshot in parts.
//! - [`control`]: the routes every replicated service shares (`/health`, `/shutdown`,
//!   `/recover`, `/replication/*`).
pub mod control;
pub mod node;
pub use bookstore_replication_core::{lease, protocol, viewservice, wire};
pub mod transfer;
pub mod transport;
pub mod wal;
