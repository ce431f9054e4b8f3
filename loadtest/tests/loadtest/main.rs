//! `loadtest`'s integration tests, one binary:
//! - `chaos`: `loadtest chaos` end to end, and its mutation run;
//! - `cli`: help, argument checks and a short run against the baseline;
//! - `cluster`: the load generator against an in-process cluster;
//! - `coordinator_isolation`: a coordinator leader cut off by iptables;
//! - `live`: `infra local rolling-restart` under load;
//! - `support`: helpers for the modules that run real processes.
mod chaos;
mod cli;
mod cluster;
mod coordinator_isolation;
mod live;
mod support;

/// The machine (two cores) and the iptables chain. Runs that measure, or that cut the
/// network, hold it alone (`write`); other tests that start a cluster share it (`read`),
/// so that no measurement measures another test.
pub static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
