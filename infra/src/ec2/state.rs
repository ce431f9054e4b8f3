//! The state file of a run, `output/ec2/<run>/state.json`. `up` writes it after every
//! resource it creates, so a run killed at any point leaves a record `down` can finish;
//! resources created in the window between the API answer and the write are still found
//! by their tag. It holds the run's tokens, so it is written with mode 0600.
//!
//! Everything in it is typed: services are [`Service`]s of a [`Kind`], hosts and how
//! `deploy` reaches them are named structs. State files written before the types still
//! load: their services (`["catalog", 1, 8003]`) are read as [`Service`]s, and their
//! deployment record, which lacks the run's host keys, is dropped, so such a run is
//! deployed again before anything connects to it.
use anyhow::{anyhow, Context};
use bookstore_common::config::Kind;
use serde::{Deserialize, Deserializer, Serialize};
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

/// One service of a run: replica `id` of `kind`, listening on `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ServiceOnDisk")]
pub struct Service {
    #[serde(serialize_with = "kind_name")]
    pub kind: Kind,
    pub id: u32,
    pub port: u16,
}

impl Service {
    pub fn new(kind: Kind, id: u32, port: u16) -> Service {
        Service { kind, id, port }
    }

    /// Whether this is replica `id` of `kind`.
    pub fn is(&self, kind: Kind, id: u32) -> bool {
        self.kind == kind && self.id == id
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} (:{})", self.kind, self.id, self.port)
    }
}

/// A service as a state file holds it: named fields, or the `[kind, id, port]` of state
/// files written before the types.
#[derive(Deserialize)]
#[serde(untagged)]
enum ServiceOnDisk {
    Named { kind: String, id: u32, port: u16 },
    Tuple(String, u32, u16),
}

impl TryFrom<ServiceOnDisk> for Service {
    type Error = String;

    fn try_from(s: ServiceOnDisk) -> Result<Service, String> {
        let (kind, id, port) = match s {
            ServiceOnDisk::Named { kind, id, port } | ServiceOnDisk::Tuple(kind, id, port) => {
                (kind, id, port)
            }
        };
        let kind = Kind::parse(&kind).ok_or_else(|| format!("unknown service kind {kind:?}"))?;
        Ok(Service { kind, id, port })
    }
}

/// A [`Kind`] as its name (`"catalog"`); [`ServiceOnDisk`] reads it back.
fn kind_name<S: serde::Serializer>(kind: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.name())
}

/// One instance and the services it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub instance_id: String,
    pub public_ip: Option<String>,
    pub private_ip: String,
    pub services: Vec<Service>,
}

impl Host {
    /// Whether the host runs a service of `kind`.
    pub fn runs(&self, kind: Kind) -> bool {
        self.services.iter().any(|s| s.kind == kind)
    }

    /// Whether the host needs the admin token: a coordinator serves the admin API, a
    /// frontend checks the token before it forwards an admin call.
    pub fn needs_admin_token(&self) -> bool {
        self.runs(Kind::Coordinator) || self.runs(Kind::Frontend)
    }
}

/// How `deploy` reaches one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub instance_id: String,
    /// The address ssh reaches it at (its public address, or the host-map address), which
    /// is also where this machine reaches its frontend.
    pub ssh_host: String,
    pub ssh_port: u16,
    /// The address its services bind to and are reached at inside the cluster (the
    /// private address, or the host-map address).
    pub service_host: String,
}

/// Where `deploy` put things.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// One entry per host of the run.
    pub hosts: Vec<Reach>,
    pub ssh_user: String,
    pub ssh_key: PathBuf,
    /// The run's known_hosts: every host's key, learned at `deploy`'s first contact and
    /// checked on every later connection.
    pub known_hosts: PathBuf,
    /// Remote folder of the run; each instance uses `<remote_dir>/<instance id>/`.
    pub remote_dir: String,
}

impl Deployment {
    pub fn reach(&self, instance_id: &str) -> Option<&Reach> {
        self.hosts.iter().find(|r| r.instance_id == instance_id)
    }
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
    /// How many service ports the run has handed out: `up` places its services on the
    /// first ones, each `add` takes one more (at `base_port + ports_used`), so no port is
    /// ever reused, even after a `remove`. (0 in state files written before `add`.)
    #[serde(default)]
    pub ports_used: u16,
    /// How many ports from `base_port` on `up` opened to the group's members; `add` opens
    /// a port past them. (0 in state files written before: `add` then always opens its
    /// port, which is harmless.)
    #[serde(default)]
    pub ports_opened: u16,
    pub cluster_token: bookstore_common::auth::Secret,
    pub admin_token: bookstore_common::auth::Secret,
    #[serde(default, deserialize_with = "current_deployment")]
    pub deployment: Option<Deployment>,
}

/// A deployment record, or none for one written before host keys were recorded (such a
/// run is deployed again before anything connects to it).
fn current_deployment<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Deployment>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
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

    pub fn load(output_dir: &Path, run: &str) -> anyhow::Result<RunState> {
        let p = RunState::path(output_dir, run);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            anyhow!(
                "{}: {e} (no such run in {}?)",
                p.display(),
                runs_dir(output_dir).display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| p.display().to_string())
    }

    /// Writes the file atomically (temp file, fsync, rename), mode 0600.
    pub fn save(&self, output_dir: &Path) -> anyhow::Result<()> {
        let dir = run_dir(output_dir, &self.run_id);
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        let p = RunState::path(output_dir, &self.run_id);
        let text = serde_json::to_string_pretty(self)?;
        bookstore_common::files::replace(
            &p,
            &[text.as_bytes()],
            bookstore_common::files::Replace::PRIVATE,
        )?;
        Ok(())
    }

    pub fn dir(&self, output_dir: &Path) -> PathBuf {
        run_dir(output_dir, &self.run_id)
    }

    /// Every service of the run with the index of its host, in host order.
    pub fn services(&self) -> impl Iterator<Item = (usize, &Service)> {
        self.hosts
            .iter()
            .enumerate()
            .flat_map(|(h, host)| host.services.iter().map(move |s| (h, s)))
    }

    /// The ids of `kind`'s services, ascending.
    pub fn ids(&self, kind: Kind) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .services()
            .filter(|(_, s)| s.kind == kind)
            .map(|(_, s)| s.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The host running replica `id` of `kind`.
    pub fn host_of(&self, kind: Kind, id: u32) -> Option<usize> {
        self.services()
            .find(|(_, s)| s.is(kind, id))
            .map(|(h, _)| h)
    }

    /// The deployment record, or an error that says to deploy.
    pub fn deployed(&self) -> anyhow::Result<&Deployment> {
        self.deployment.as_ref().with_context(|| {
            format!(
                "run {} is not deployed (or was deployed by an older infra that did not record the hosts' keys): run `infra ec2 deploy --run {}`",
                self.run_id, self.run_id
            )
        })
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
) -> anyhow::Result<RunState> {
    if let Some(r) = run {
        super::check_run_id(r)?;
        return RunState::load(output_dir, r);
    }
    list_runs(output_dir)
        .into_iter()
        .rev()
        .find(|s| phases.contains(&s.phase))
        .with_context(|| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_read_both_shapes_and_refuse_unknown_kinds() {
        let named: Service =
            serde_json::from_str(r#"{"kind":"catalog","id":1,"port":8003}"#).unwrap();
        let tuple: Service = serde_json::from_str(r#"["catalog",1,8003]"#).unwrap();
        assert_eq!(named, Service::new(Kind::Catalog, 1, 8003));
        assert_eq!(tuple, named);
        assert_eq!(
            serde_json::to_string(&named).unwrap(),
            r#"{"kind":"catalog","id":1,"port":8003}"#
        );
        assert!(serde_json::from_str::<Service>(r#"["printer",1,8003]"#).is_err());
    }

    #[test]
    fn an_old_deployment_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let old = serde_json::json!({
            "run_id": "r", "created_unix": 1, "phase": "deployed", "region": "us-east-1",
            "endpoint_url": null, "allow_cidr": "203.0.113.7/32", "instance_type": "t3.micro",
            "image_id": null, "image_name": null, "key_name": null, "key_created": false,
            "ssh_key": null, "ssh_user": "admin", "security_group_id": null,
            "instance_ids": ["i-1"], "base_port": 8000, "ports_used": 7,
            "hosts": [{"instance_id": "i-1", "public_ip": null, "private_ip": "10.0.0.1",
                       "services": [["frontend", 0, 8000], ["coordinator", 0, 8001]]}],
            "cluster_token": "c", "admin_token": "a",
            "deployment": {"ssh_targets": [["i-1", "203.0.113.9", 22]],
                           "service_hosts": [["i-1", "10.0.0.1"]], "ssh_user": "admin",
                           "ssh_key": "/k", "remote_dir": "bookstore",
                           "frontend_url": "http://203.0.113.9:8000"}
        });
        std::fs::create_dir_all(run_dir(dir.path(), "r")).unwrap();
        std::fs::write(RunState::path(dir.path(), "r"), old.to_string()).unwrap();
        let st = RunState::load(dir.path(), "r").unwrap();
        assert_eq!(
            st.hosts[0].services[1],
            Service::new(Kind::Coordinator, 0, 8001)
        );
        assert!(st.deployment.is_none());
        assert!(st
            .deployed()
            .unwrap_err()
            .to_string()
            .contains("infra ec2 deploy --run r"));
        assert_eq!(st.ports_opened, 0);
    }
}
