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
    format!("{}-{}", utc_stamp(now), &rand[..4])
}

/// `YYYYMMDD-HHMMSS` for a Unix time (proleptic Gregorian calendar, UTC).
pub fn utc_stamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A run id is used in resource names and paths: letters, digits, `-` and `_` only.
pub fn check_run_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "bad run id {id:?}: use 1-64 letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_795_446_062), "20261123-150102");
    }

    #[test]
    fn run_ids_are_checked() {
        assert!(check_run_id(&new_run_id()).is_ok());
        assert!(check_run_id("a/b").is_err());
        assert!(check_run_id("").is_err());
    }
}
