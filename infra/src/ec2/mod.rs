//! `infra ec2 ...`: run the bookstore on EC2 instances (or on an EC2-compatible emulator).
//!
//! - [`cli`]: the clap commands and their flags; `main` hands each to its module.
//! - [`up`]: key pair, security group, instances, cluster file and state file of a run.
//! - [`deploy`]: binary, books, cluster file, tokens and control script to every host;
//!   start, health, readiness.
//! - [`scale`]: `add` and `remove` of catalog and order replicas on a deployed run.
//! - [`ops`]: `test`, `collect` and `stop`.
//! - [`down`]: delete a run's resources (or every run's, found by tag).
//! - [`run`]: `up`, `deploy`, `test` and always the teardown.
//! - [`onhost`]: the hidden commands `deploy`, `add` and `remove` run on a host over ssh
//!   (`ready`, `wait-member`, `admin`), so no token crosses the internet in clear HTTP.
//! - [`reach`]: how this machine reaches a deployed run's hosts (ssh links, every host at
//!   once, the first coordinator host that answers).
//! - [`api`]: the EC2 calls (aws-sdk-ec2), with errors turned into messages a person can
//!   act on (missing credentials, missing image, quota).
//! - [`state`]: the typed per-run state file `output/ec2/<run>/state.json`, written after
//!   every resource is created so that `down` can finish what a killed run left.
//! - [`layout`]: which service runs on which host (coordinators on distinct hosts, each
//!   with a frontend), the cluster file, CIDRs, host maps.
//! - [`ssh`]: ssh/scp/tar through the system's OpenSSH client, with the run's known host
//!   keys.
//! - [`remote`]: the control script deployed to every host (start, stop, health, and
//!   start-one / stop-one for `add` and `remove`).
//!
//! See `docs/ec2.md` for the walk-through.
use anyhow::bail;
pub mod api;
pub mod cli;
pub mod deploy;
pub mod down;
pub mod layout;
pub mod onhost;
pub mod ops;
pub mod reach;
pub mod remote;
pub mod run;
pub mod scale;
pub mod ssh;
pub mod state;
pub mod up;

/// The tag every resource of a run carries; its value is the run id.
pub const RUN_TAG: &str = "bookstore-run";
/// Prefix of the names of key pairs and security groups.
pub const NAME_PREFIX: &str = "bookstore-";

/// Progress to stderr; a closed stderr is not a reason to stop.
pub fn say(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "infra ec2: {s}");
}

/// A new run id: UTC time stamp and 4 random hex digits, e.g. `20261123-150102-a1b2`.
pub fn new_run_id() -> String {
    let now = bookstore_common::clock::now_ms() / 1000;
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", bookstore_common::clock::utc_stamp(now), &rand[..4])
}

/// A run id is used in resource names and paths: letters, digits, `-` and `_` only.
pub fn check_run_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("bad run id {id:?}: use 1-64 letters, digits, '-' or '_'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_checked() {
        assert!(check_run_id(&new_run_id()).is_ok());
        assert!(check_run_id("a/b").is_err());
        assert!(check_run_id("").is_err());
    }
}
