//! `infra`'s integration tests, with real processes, one binary:
//! - `coordinators`: the coordinator group; no single process takes the store down;
//! - `ec2`: `infra ec2` against moto's EC2 server (feature `ec2`);
//! - `faults`: replicas killed and paused while buyers run;
//! - `live`: scale out and in, rolling restarts;
//! - `local`: `infra local up` and `infra local test`;
//! - `status_page`: the `/status` page in headless Chromium;
//! - `tokens`: tokens as a careless operator or a log reader meets them.
mod coordinators;
mod ec2;
mod faults;
mod live;
mod local;
mod status_page;
mod tokens;

/// The machine (two cores). Tests that measure pauses hold it alone (`write`); other
/// tests that start a cluster share it (`read`), so that no measurement measures another
/// test.
pub static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
