//! `bookstore-replication-core`'s integration tests, one binary:
//! - `common`: the deterministic in-memory harness (network, disks, view service,
//!   replicas) the other modules drive;
//! - `decode_prop`: property tests of the decoders of other processes' data;
//! - `model`: the stateright model check of the real protocol code;
//! - `sim`: the seeded randomized simulation;
//! - `targeted`: targeted scenarios on the simulated cluster.
mod common;
mod decode_prop;
mod model;
mod sim;
mod targeted;
