//! The state file of a run, `output/ec2/<run>/state.json`. `up` writes it after every
//! resource it creates, so a run killed at any point leaves a record `down` can finish;
//! resources created in the window between the API answer and the write are still found
//! by their tag. It holds the run's tokens, so it is written with mode 0600.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `up` is creating resources (or was killed while it did).
    Creating,
    /// Every instance is running.
    Up,
    /// `deploy` started every service and they answered.
    Deployed,
    /// `down` deleted everything.
    Down,
}

/// One instance and the services it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub instance_id: String,
    pub public_ip: Option<String>,
    pub private_ip: String,
    /// `kind id port`, e.g. `("catalog", 1, 8003)`.
    pub services: Vec<(String, u32, u16)>,
}

/// Where `deploy` put things.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Instance id to the `host:port` ssh reached it at.
    pub ssh_targets: Vec<(String, String, u16)>,
    /// The host each instance's services bind to and are reached at (the private address,
    /// or the host-map address).
    pub service_hosts: Vec<(String, String)>,
    pub ssh_user: String,
    pub ssh_key: PathBuf,
    /// Remote folder of the run; each instance uses `<remote_dir>/<instance id>/`.
    pub remote_dir: String,
    pub frontend_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub created_unix: u64,
    pub phase: Phase,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub allow_cidr: String,
    pub instance_type: String,
    pub image_id: Option<String>,
    pub image_name: Option<String>,
    pub key_name: Option<String>,
    /// The key pair was made by `up` (so `down` deletes it); false for `--key-name`.
    pub key_created: bool,
    /// Private key for ssh.
    pub ssh_key: Option<PathBuf>,
    pub ssh_user: String,
    pub security_group_id: Option<String>,
    pub instance_ids: Vec<String>,
    pub hosts: Vec<Host>,
    pub base_port: u16,
    /// How many service ports the run has handed out: `up` places 6, each `add` one more
    /// (at `base_port + ports_used`), so no port is ever reused, even after a `remove`.
    /// (0 in state files written before `add` existed.)
    #[serde(default)]
    pub ports_used: u16,
    pub cluster_token: bookstore_common::auth::Secret,
    pub admin_token: bookstore_common::auth::Secret,
    pub deployment: Option<Deployment>,
}

/// `<output>/ec2`
pub fn runs_dir(output_dir: &Path) -> PathBuf {
    output_dir.join("ec2")
}

/// `<output>/ec2/<run>`
pub fn run_dir(output_dir: &Path, run: &str) -> PathBuf {
    runs_dir(output_dir).join(run)
}

impl RunState {
    pub fn path(output_dir: &Path, run: &str) -> PathBuf {
        run_dir(output_dir, run).join("state.json")
    }

    pub fn load(output_dir: &Path, run: &str) -> Result<RunState, String> {
        let p = RunState::path(output_dir, run);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            format!(
                "{}: {e} (no such run in {}?)",
                p.display(),
                runs_dir(output_dir).display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Writes the file atomically (temp file, fsync, rename), mode 0600.
    pub fn save(&self, output_dir: &Path) -> Result<(), String> {
        use std::io::Write;
        let dir = run_dir(output_dir, &self.run_id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let p = RunState::path(output_dir, &self.run_id);
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        // `mode` applies only to a file it creates: tighten a temp file left behind.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))
    }

    pub fn dir(&self, output_dir: &Path) -> PathBuf {
        run_dir(output_dir, &self.run_id)
    }
}

/// Every run with a state file, oldest first.
pub fn list_runs(output_dir: &Path) -> Vec<RunState> {
    let mut runs: Vec<RunState> = std::fs::read_dir(runs_dir(output_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            RunState::load(output_dir, &name).ok()
        })
        .collect();
    runs.sort_by(|a, b| (a.created_unix, &a.run_id).cmp(&(b.created_unix, &b.run_id)));
    runs
}

/// The run named by `--run`, else the newest run whose phase is in `phases`.
pub fn pick_run(
    output_dir: &Path,
    run: Option<&str>,
    phases: &[Phase],
) -> Result<RunState, String> {
    if let Some(r) = run {
        super::check_run_id(r)?;
        return RunState::load(output_dir, r);
    }
    list_runs(output_dir)
        .into_iter()
        .rev()
        .find(|s| phases.contains(&s.phase))
        .ok_or_else(|| {
            format!(
                "no run to use in {} (looked for one that is {}); start one with `infra ec2 up` or name one with --run",
                runs_dir(output_dir).display(),
                phases
                    .iter()
                    .map(|p| format!("{p:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        })
}
