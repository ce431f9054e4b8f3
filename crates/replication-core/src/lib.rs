//! The pure core of replication: no I/O, no clock, no HTTP. Everything here is a value or
//! a state machine that a runtime drives, so the same code runs in the services, in the
//! seeded simulation and in the stateright model.
//!
//! - [`protocol`]: the primary-backup replica protocol (events in, commands out), and
//!   [`protocol::decode`], the bounded bincode decoder of everything other processes send.
//! - [`terms`]: replica ids, epochs, log positions and views, shared by the protocol and
//!   the view service (neither imports the other for them).
//! - [`lease`]: a primary's read lease and the tick counts it is derived from.
//! - [`viewservice`]: the view service's decision rules (who is primary in which epoch).
//! - [`wire`]: the named structs that travel between replicas, coordinators and routers
//!   (ping answers, view reports, member tables).
//! - [`wal_format`]: the bytes of the write-ahead log's files (records, segments, snapshot,
//!   meta, CRCs) and the scan that tells a torn tail from corruption; the runtime does the
//!   file I/O.
pub mod lease;
pub mod protocol;
pub mod terms;
pub mod viewservice;
pub mod wal_format;
pub mod wire;
