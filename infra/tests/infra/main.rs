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

/// The `infra` binary under test.
pub const INFRA: &str = env!("CARGO_BIN_EXE_infra");

/// The workspace root (where `config/` and `data/` are).
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `infra local up` on a new cluster of free loopback ports (2 catalog and 2 order
/// replicas), its files under `out`, run from the workspace root; the caller adds its
/// environment and pipes and spawns it.
pub fn local_up(out: &std::path::Path) -> std::process::Command {
    let file = out.join("cluster.csv");
    std::fs::write(
        &file,
        infra::local::free_port_cluster(2, 2).unwrap().to_text(),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(INFRA);
    cmd.args(["local", "up", "--cluster"])
        .arg(&file)
        .arg("--output-dir")
        .arg(out)
        .current_dir(workspace());
    cmd
}

/// The machine (two cores). Tests that measure pauses hold it alone (`write`); other
/// tests that start a cluster share it (`read`), so that no measurement measures another
/// test.
pub static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
