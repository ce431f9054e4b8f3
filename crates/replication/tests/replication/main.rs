//! `bookstore-replication`'s integration tests, one binary:
//! - `group_commit`: the WAL's group commit as a replica does it (for `wal_measure` and
//!   the `wal` bench);
//! - `mesh`: replicas over an in-memory transport (for `transport` and the `node` bench);
//! - `peer_trust`: a replica fed what a buggy or hostile peer could send;
//! - `transport`: replicas over an in-memory transport, failover included;
//! - `wal`: the write-ahead log on a real disk;
//! - `wal_measure`: group-commit throughput, printed (ignored unless asked for).
mod group_commit;
mod mesh;
mod peer_trust;
mod transport;
mod wal;
mod wal_measure;
