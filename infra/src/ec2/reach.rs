//! Reaching the hosts of a deployed run from this machine: over ssh with the run's key and
//! its known host keys ([`Link`]), on every host at once ([`on_all_hosts`]), or on the
//! first coordinator host that answers ([`on_coordinator_host`]). Whatever needs a token
//! runs on a host (the admin calls, the waits on the views), so no token crosses the
//! internet in clear HTTP; only ssh does.
use super::cli::Until;
use super::remote::{control_script, Svc};
use super::say;
use super::ssh::{sh_quote, HostKeys, SshError, Target};
use super::state::RunState;
use crate::admin::{AdminAnswer, AdminError};
use anyhow::{anyhow, bail, Context};
use bookstore_common::config::Kind;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// One host of a deployed run, as this machine reaches it.
#[derive(Debug, Clone)]
pub struct Link {
    /// Index in the state's hosts.
    pub host: usize,
    pub instance_id: String,
    /// ssh to it, checking its learned host key.
    pub target: Target,
    /// The run's folder on it.
    pub dir: String,
    /// The address its services listen on.
    pub service_host: String,
}

/// How to reach host `h` of a deployed run.
pub fn link(st: &RunState, h: usize) -> anyhow::Result<Link> {
    let d = st.deployed()?;
    let host = st
        .hosts
        .get(h)
        .with_context(|| format!("run {}: no host {h}", st.run_id))?;
    let id = &host.instance_id;
    let reach = d
        .reach(id)
        .with_context(|| format!("run {}: no deployment record for {id}", st.run_id))?;
    Ok(Link {
        host: h,
        instance_id: id.clone(),
        target: Target {
            user: d.ssh_user.clone(),
            host: reach.ssh_host.clone(),
            port: reach.ssh_port,
            key: d.ssh_key.clone(),
            alias: id.clone(),
            known_hosts: d.known_hosts.clone(),
            host_keys: HostKeys::Check,
        },
        dir: format!("{}/{id}", d.remote_dir),
        service_host: reach.service_host.clone(),
    })
}

/// Every host of a deployed run.
pub fn links(st: &RunState) -> anyhow::Result<Vec<Link>> {
    (0..st.hosts.len()).map(|h| link(st, h)).collect()
}

/// An IPv6 address in brackets, for URLs.
pub fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The frontends' URLs as this machine reaches them (frontend 0 first).
pub fn public_frontends(st: &RunState) -> anyhow::Result<Vec<String>> {
    let d = st.deployed()?;
    let mut fronts: Vec<(u32, String)> = Vec::new();
    for (h, s) in st.services().filter(|(_, s)| s.kind == Kind::Frontend) {
        let id = &st.hosts[h].instance_id;
        let reach = d
            .reach(id)
            .with_context(|| format!("run {}: no deployment record for {id}", st.run_id))?;
        fronts.push((
            s.id,
            format!("http://{}:{}", bracket(&reach.ssh_host), s.port),
        ));
    }
    fronts.sort();
    if fronts.is_empty() {
        bail!("run {}: no frontend in the layout", st.run_id);
    }
    Ok(fronts.into_iter().map(|(_, u)| u).collect())
}

/// Runs `script` on a host, echoing its output as `[label] id: line`.
pub async fn run_and_echo(label: &str, l: &Link, script: &str) -> anyhow::Result<()> {
    let r = l
        .target
        .run(script)
        .await
        .with_context(|| l.instance_id.clone())?;
    for line in r.lines() {
        say(&format!("[{label}] {}: {line}", l.instance_id));
    }
    Ok(())
}

/// Runs one job per host at once; the error lists every host that failed, after `what`.
pub async fn on_all_hosts<F>(what: &str, jobs: impl IntoIterator<Item = F>) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let failed: Vec<String> = futures::future::join_all(jobs)
        .await
        .into_iter()
        .filter_map(Result::err)
        .map(|e| format!("{e:#}"))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{what}:\n  {}", failed.join("\n  ")))
    }
}

/// Runs `job` on the coordinators' hosts, in coordinator order, until one gets an ssh
/// session: a host that ssh cannot reach (down, or its host key refused) is skipped for
/// the next, so losing one host does not stop `add`, `remove` or `deploy`'s wait. The
/// error names every host tried.
pub async fn on_coordinator_host<T, F, Fut>(st: &RunState, job: F) -> anyhow::Result<T>
where
    F: Fn(Link) -> Fut,
    Fut: Future<Output = Result<T, SshError>>,
{
    let mut hosts: Vec<(u32, usize)> = st
        .services()
        .filter(|(_, s)| s.kind == Kind::Coordinator)
        .map(|(h, s)| (s.id, h))
        .collect();
    hosts.sort_unstable();
    hosts.dedup_by_key(|(_, h)| *h);
    if hosts.is_empty() {
        bail!("run {}: no coordinator in the layout", st.run_id);
    }
    let mut failed = Vec::new();
    for (_, h) in hosts {
        let l = link(st, h)?;
        let id = l.instance_id.clone();
        match job(l).await {
            Ok(t) => return Ok(t),
            Err(SshError::Connect(e)) => {
                say(&format!(
                    "{id} (a coordinator's host) cannot be reached: {e}"
                ));
                failed.push(format!("{id}: {e}"));
            }
            Err(e) => bail!("{id}: {e}"),
        }
    }
    Err(anyhow!(
        "no coordinator's host could be reached over ssh:\n  {}",
        failed.join("\n  ")
    ))
}

/// The shell line that runs `infra ARGS` in a host's run folder with the tokens of its
/// `env` file in the environment (never on a command line).
fn with_env(dir: &str, args: &str) -> String {
    format!(
        "cd {} && set -a && . ./env && set +a && ./infra {args}\n",
        sh_quote(dir)
    )
}

/// `POST path` (an admin route) to the coordinator leader with the admin token, run on a
/// coordinator's host (`infra ec2 admin`) so the token never leaves the cluster's hosts.
pub async fn admin(st: &RunState, path: &str) -> Result<serde_json::Value, AdminError> {
    let out = on_coordinator_host(st, |l| async move {
        let script = with_env(
            &l.dir,
            &format!("ec2 admin --cluster cluster.csv {}", sh_quote(path)),
        );
        l.target.run(&script).await.map(|o| (l.instance_id, o))
    })
    .await
    .map_err(|e| AdminError::Unreachable(format!("{e:#}")))?;
    let (id, stdout) = out;
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str::<AdminAnswer>(line).map_err(|e| {
        AdminError::BadAnswer(format!(
            "{id} answered {line:?} ({e}); is its infra older than `infra ec2 admin`? deploy again"
        ))
    })?
}

/// Runs `infra ec2 wait-member` on a coordinator's host (the cluster token stays there,
/// and the replica's port, open to the group only, is reachable), echoing its progress as
/// it comes.
pub async fn wait_member(
    label: &str,
    st: &RunState,
    kind: Kind,
    id: u32,
    until: Until,
    limit: Duration,
) -> anyhow::Result<()> {
    let until_arg = match until {
        Until::Synced => "synced",
        Until::Gone => "gone",
    };
    on_coordinator_host(st, |l| async move {
        say(&format!(
            "[{label}] waiting up to {} s until {kind} {id} is {until_arg} (asked on {})",
            limit.as_secs(),
            l.instance_id
        ));
        let script = with_env(
            &l.dir,
            &format!(
                "ec2 wait-member --cluster cluster.csv --kind {kind} --id {id} --until {until_arg} --seconds {}",
                limit.as_secs()
            ),
        );
        let id = l.instance_id.clone();
        l.target
            .run_lines(&script, |line| say(&format!("[{label}] {id}: {line}")))
            .await
    })
    .await
}

/// Runs `infra ec2 ready` on a coordinator's host: every catalog and order replica of the
/// run in the view and synced.
pub async fn wait_ready(st: &RunState, seconds: u64) -> anyhow::Result<()> {
    let (catalogs, orders) = (st.ids(Kind::Catalog).len(), st.ids(Kind::Order).len());
    on_coordinator_host(st, |l| async move {
        say(&format!(
            "[deploy] waiting until the replicas agree on primaries (asked on {}, so the cluster token stays off the network)",
            l.instance_id
        ));
        let script = with_env(
            &l.dir,
            &format!(
                "ec2 ready --cluster cluster.csv --seconds {seconds} --catalogs {catalogs} --orders {orders}"
            ),
        );
        let r = l.target.run(&script).await?;
        for line in r.lines() {
            say(&format!("[deploy] {}: {line}", l.instance_id));
        }
        Ok(())
    })
    .await
}

/// Writes host `h`'s control script for the services the state lists and installs it
/// over ssh (the running services are not touched).
pub async fn install_script(out: &Path, st: &RunState, h: usize) -> anyhow::Result<()> {
    let l = link(st, h)?;
    let host = &st.hosts[h];
    let svcs: Vec<Svc> = host
        .services
        .iter()
        .map(|s| Svc {
            service: *s,
            host: l.service_host.clone(),
        })
        .collect();
    let stage = st.dir(out).join("deploy");
    std::fs::create_dir_all(&stage).with_context(|| stage.display().to_string())?;
    let name = format!("bookstore-{}.sh", host.instance_id);
    let file = stage.join(&name);
    std::fs::write(&file, control_script(&st.run_id, &svcs))
        .with_context(|| file.display().to_string())?;
    l.target
        .copy_to(&[file.as_path()], &format!("{}/", l.dir))
        .await?;
    l.target
        .run(&format!(
            "set -e\ncd {}\nchmod 700 {n}\nmv {n} bookstore.sh\n",
            sh_quote(&l.dir),
            n = sh_quote(&name)
        ))
        .await?;
    Ok(())
}
