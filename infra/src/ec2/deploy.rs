//! `infra ec2 deploy`: copy the `infra` binary, the books, the cluster file, each host's
//! tokens and control script to every host over ssh, start the services, and wait until
//! they are healthy, the replicas are in their views, and this machine reaches every
//! frontend.
//!
//! The first contact with each host learns its ssh host key into the run's known_hosts;
//! every later connection (of this and every other command) checks it. Each host's `env`
//! file holds the cluster token, and the admin token only where a coordinator or a
//! frontend runs.
use super::cli::DeployOpts;
use super::layout::{self, HostMap};
use super::reach::{self, links, on_all_hosts, run_and_echo, Link};
use super::remote::{control_script, Svc};
use super::say;
use super::ssh::sh_quote;
use super::state::{Deployment, Host, Phase, Reach, RunState};
use anyhow::{anyhow, bail, Context};
use bookstore_common::config::Kind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `deploy`: see [`super::cli::Ec2Command::Deploy`].
pub async fn deploy(
    out: &Path,
    mut st: RunState,
    o: &DeployOpts,
    user: Option<&str>,
    key: Option<&Path>,
) -> anyhow::Result<RunState> {
    let run = st.run_id.clone();
    let map = host_map(&st, o)?;
    let binary = match &o.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this program")?,
    };
    if !binary.is_file() {
        bail!("--binary {}: no such file", binary.display());
    }
    bookstore_common::config::load_books(&o.books)?;
    let user = user.map_or_else(|| st.ssh_user.clone(), str::to_string);
    let key = key
        .map(Path::to_path_buf)
        .or_else(|| st.ssh_key.clone())
        .context("no private key for ssh: pass --ssh-key")?;
    if !key.exists() {
        bail!("private key {}: no such file", key.display());
    }
    renumber(&mut st, o.keep_data)?;
    // Recorded before anything starts, so `collect` and `stop` work after a failed deploy.
    st.deployment = Some(record(out, &st, &map, user, key, &o.remote_dir)?);
    st.phase = Phase::Up;
    st.save(out)?;
    let staged = stage(out, &st, &o.books)?;
    say(&format!(
        "[deploy] run {run}: {} to {} hosts (cluster file {})",
        binary.display(),
        st.hosts.len(),
        staged.cluster_file.display()
    ));
    let wait = Duration::from_secs(o.ssh_wait);
    let jobs = links(&st)?
        .into_iter()
        .map(|l| install(l, &staged, &binary, o.keep_data, wait));
    on_all_hosts("deploy failed", jobs).await?;
    say("[deploy] every service started; waiting until they answer /health");
    let checks = links(&st)?.into_iter().map(|l| async move {
        let script = format!("cd {} && ./bookstore.sh health 60\n", sh_quote(&l.dir));
        run_and_echo("deploy", &l, &script).await
    });
    on_all_hosts("services did not become healthy", checks).await?;
    reach::wait_ready(&st, 60).await?;
    let urls = reach::public_frontends(&st)?;
    reach_frontends(&urls, &st.allow_cidr).await?;
    st.phase = Phase::Deployed;
    st.save(out)?;
    println!("bookstore run {run} is deployed: {}", urls[0]);
    println!(
        "  frontends: {} (spread clients over them: docs/ec2.md)",
        urls.join(" ")
    );
    println!("  try:   curl '{}/lookup?item_number=1'", urls[0]);
    println!(
        "  admin token: in {} (admin_token); `infra ec2 add|remove` make admin calls over ssh",
        RunState::path(out, &run).display()
    );
    println!("  next:  infra ec2 test --run {run}; infra ec2 collect --run {run}; infra ec2 down --run {run}");
    Ok(st)
}

/// `--host-map`, checked against the run's instances.
fn host_map(st: &RunState, o: &DeployOpts) -> anyhow::Result<HostMap> {
    let map = layout::parse_host_map(&o.host_map)?;
    for id in map.keys() {
        if id != "*" && !st.hosts.iter().any(|h| &h.instance_id == id) {
            bail!(
                "--host-map names {id}, which is not an instance of run {}",
                st.run_id
            );
        }
    }
    Ok(map)
}

/// Where each instance is reached and runs its services: the host map's address for
/// both, else the public address for ssh and the private one for the services.
fn record(
    out: &Path,
    st: &RunState,
    map: &HostMap,
    ssh_user: String,
    ssh_key: PathBuf,
    remote_dir: &str,
) -> anyhow::Result<Deployment> {
    let mut hosts = Vec::new();
    for h in &st.hosts {
        let mapped = map.get(&h.instance_id).or_else(|| map.get("*"));
        let (ssh_host, ssh_port, service_host) = match mapped {
            Some((host, port)) => (host.clone(), *port, host.clone()),
            None => {
                let public = h.public_ip.clone().with_context(|| {
                    format!(
                        "instance {} has no public address: give it one, or map it with --host-map {}=HOST[:PORT]",
                        h.instance_id, h.instance_id
                    )
                })?;
                (public, 22, h.private_ip.clone())
            }
        };
        hosts.push(Reach {
            instance_id: h.instance_id.clone(),
            ssh_host,
            ssh_port,
            service_host,
        });
    }
    let known_hosts = std::path::absolute(st.dir(out).join("known_hosts"))
        .with_context(|| st.dir(out).display().to_string())?;
    Ok(Deployment {
        hosts,
        ssh_user,
        ssh_key,
        known_hosts,
        remote_dir: remote_dir.trim_end_matches('/').to_string(),
    })
}

/// A cluster file numbers the replicas of a kind 0, 1, ...; after `add` and `remove` the
/// ids may have gaps. A fresh deploy (new data) renumbers them; one that keeps the data
/// (and the coordinators' member tables) cannot.
fn renumber(st: &mut RunState, keep_data: bool) -> anyhow::Result<()> {
    for kind in [Kind::Catalog, Kind::Order] {
        let ids = st.ids(kind);
        if ids.iter().enumerate().all(|(n, &i)| n as u32 == i) {
            continue;
        }
        if keep_data {
            bail!(
                "run {}: the {kind} ids ({ids:?}) have gaps after `remove`, which a cluster file cannot express; deploy without --keep-data (they are renumbered from 0)",
                st.run_id
            );
        }
        for s in st.hosts.iter_mut().flat_map(|h| &mut h.services) {
            if s.kind == kind {
                s.id = ids.iter().position(|&i| i == s.id).unwrap_or(0) as u32;
            }
        }
        say(&format!(
            "[deploy] {kind} ids {ids:?} are renumbered 0-{} (fresh data)",
            ids.len() - 1
        ));
    }
    Ok(())
}

/// The files `deploy` copies, staged in `<run>/deploy/`: the cluster file and the books
/// for every host, and each host's `env-<instance>` and `bookstore-<instance>.sh`.
struct Staged {
    dir: PathBuf,
    cluster_file: PathBuf,
    books_file: PathBuf,
}

impl Staged {
    fn env(&self, instance_id: &str) -> PathBuf {
        self.dir.join(format!("env-{instance_id}"))
    }

    fn script(&self, instance_id: &str) -> PathBuf {
        self.dir.join(format!("bookstore-{instance_id}.sh"))
    }
}

fn stage(out: &Path, st: &RunState, books: &Path) -> anyhow::Result<Staged> {
    let d = st.deployed()?;
    let dir = st.dir(out).join("deploy");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let staged = Staged {
        cluster_file: dir.join("cluster.csv"),
        books_file: dir.join("books.csv"),
        dir,
    };
    let service_hosts: Vec<String> = d.hosts.iter().map(|r| r.service_host.clone()).collect();
    let cluster = layout::cluster(st.services(), &service_hosts);
    std::fs::write(&staged.cluster_file, cluster.to_text())
        .with_context(|| staged.cluster_file.display().to_string())?;
    std::fs::copy(books, &staged.books_file).with_context(|| books.display().to_string())?;
    for (h, host) in st.hosts.iter().enumerate() {
        write_private(&staged.env(&host.instance_id), &env_file(st, host))?;
        let svcs: Vec<Svc> = host
            .services
            .iter()
            .map(|s| Svc {
                service: *s,
                host: service_hosts[h].clone(),
            })
            .collect();
        let script = staged.script(&host.instance_id);
        std::fs::write(&script, control_script(&st.run_id, &svcs))
            .with_context(|| script.display().to_string())?;
    }
    Ok(staged)
}

/// A host's `env` file: the cluster token, and the admin token only if it runs a
/// coordinator or a frontend.
fn env_file(st: &RunState, host: &Host) -> String {
    let admin = if host.needs_admin_token() {
        format!("BOOKSTORE_ADMIN_TOKEN={}\n", st.admin_token.expose())
    } else {
        String::new()
    };
    format!(
        "BOOKSTORE_CLUSTER_TOKEN={}\n{admin}RUST_LOG=info\n",
        st.cluster_token.expose()
    )
}

/// One host: wait for its sshd (learning its host key), stop what an earlier deploy
/// started, copy the files, start its services.
async fn install(
    l: Link,
    staged: &Staged,
    binary: &Path,
    keep_data: bool,
    wait: Duration,
) -> anyhow::Result<()> {
    let id = &l.instance_id;
    let failed = |e: super::ssh::SshError| anyhow!("{id}: {e}");
    say(&format!(
        "[deploy] {id}: waiting for ssh at {}",
        l.target.name()
    ));
    l.target
        .clone()
        .learning()
        .wait_reachable(wait)
        .await
        .map_err(failed)?;
    let q = sh_quote(&l.dir);
    let clear = if keep_data {
        ""
    } else {
        "rm -rf \"$d/output/data\""
    };
    l.target
        .run(&format!(
            "set -e\nd={q}\nmkdir -p \"$d\"\nif [ -x \"$d/bookstore.sh\" ]; then \"$d/bookstore.sh\" stop; fi\n{clear}\n"
        ))
        .await
        .map_err(failed)?;
    say(&format!(
        "[deploy] {id}: copying the binary, books, cluster file and tokens to {}/",
        l.dir
    ));
    l.target
        .copy_to(&[binary], &format!("{}/infra", l.dir))
        .await
        .map_err(failed)?;
    let (env, script) = (staged.env(id), staged.script(id));
    let files = [
        staged.cluster_file.as_path(),
        staged.books_file.as_path(),
        env.as_path(),
        script.as_path(),
    ];
    l.target
        .copy_to(&files, &format!("{}/", l.dir))
        .await
        .map_err(failed)?;
    let started = l
        .target
        .run(&format!(
            "set -e\ncd {q}\nmv {} env\nmv {} bookstore.sh\nchmod 700 bookstore.sh infra\nchmod 600 env\n./bookstore.sh start\n",
            sh_quote(&format!("env-{id}")),
            sh_quote(&format!("bookstore-{id}.sh"))
        ))
        .await
        .map_err(failed)?;
    for line in started.lines() {
        say(&format!("[deploy] {id}: {line}"));
    }
    Ok(())
}

/// Checks that this machine reaches every frontend's `/health` (through the security
/// group), for up to 30 s.
async fn reach_frontends(urls: &[String], allow: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in urls {
        say(&format!(
            "[deploy] checking that this machine reaches the frontend at {url}"
        ));
        loop {
            match http.get(format!("{url}/health")).send().await {
                Ok(r) if r.status().is_success() => break,
                r if Instant::now() > deadline => {
                    bail!(
                        "the frontend runs but {url}/health does not answer from here ({}); is --allow {allow} this machine's address?",
                        match r {
                            Ok(r) => r.status().to_string(),
                            Err(e) => e.to_string(),
                        }
                    );
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }
    Ok(())
}

/// Writes `text` to `path` (replacing it atomically), readable by the owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    bookstore_common::files::replace(
        path,
        &[text.as_bytes()],
        bookstore_common::files::Replace::PRIVATE,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn write_private_leaves_the_file_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        // A file left readable by everyone (an earlier run, a copy) is tightened too.
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_private(&path, "BOOKSTORE_ADMIN_TOKEN=x\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "BOOKSTORE_ADMIN_TOKEN=x\n"
        );
    }

    use super::*;
    use crate::ec2::scale::tests::{host, state};
    use crate::ec2::state::Service;

    #[test]
    fn a_fresh_deploy_renumbers_ids_with_gaps() {
        use Kind::*;
        let hosts = vec![
            host("a", &[(Catalog, 1, 8003), (Order, 0, 8004)]),
            host("b", &[(Catalog, 2, 8006), (Order, 1, 8005)]),
        ];
        let mut st = state(hosts, 7);
        assert!(renumber(&mut st.clone(), true)
            .unwrap_err()
            .to_string()
            .contains("without --keep-data"));
        renumber(&mut st, false).unwrap();
        assert_eq!(st.hosts[0].services[0], Service::new(Catalog, 0, 8003));
        assert_eq!(st.hosts[1].services[0], Service::new(Catalog, 1, 8006));
        assert_eq!(st.hosts[1].services[1], Service::new(Order, 1, 8005));
        // Contiguous ids: nothing to do, with or without the data.
        renumber(&mut st, true).unwrap();
    }

    #[test]
    fn only_coordinator_and_frontend_hosts_get_the_admin_token() {
        use Kind::*;
        let st = state(
            vec![
                host("a", &[(Frontend, 0, 8000), (Coordinator, 0, 8001)]),
                host("b", &[(Catalog, 0, 8002)]),
            ],
            3,
        );
        let env = |h: usize| env_file(&st, &st.hosts[h]);
        assert_eq!(
            env(0),
            "BOOKSTORE_CLUSTER_TOKEN=c\nBOOKSTORE_ADMIN_TOKEN=a\nRUST_LOG=info\n"
        );
        assert_eq!(env(1), "BOOKSTORE_CLUSTER_TOKEN=c\nRUST_LOG=info\n");
    }

    #[test]
    fn the_deployment_record_maps_hosts_and_learns_keys_in_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(
            vec![
                host("i-a", &[(Kind::Frontend, 0, 8000)]),
                host("i-b", &[(Kind::Catalog, 0, 8001)]),
            ],
            2,
        );
        st.hosts[1].public_ip = Some("203.0.113.9".into());
        let map = layout::parse_host_map(&["i-a=127.0.0.1:2222".into()]).unwrap();
        let d = record(dir.path(), &st, &map, "me".into(), "/k".into(), "r/").unwrap();
        assert_eq!(d.remote_dir, "r");
        assert_eq!(
            d.hosts[0],
            Reach {
                instance_id: "i-a".into(),
                ssh_host: "127.0.0.1".into(),
                ssh_port: 2222,
                service_host: "127.0.0.1".into()
            }
        );
        assert_eq!(
            (
                d.hosts[1].ssh_host.as_str(),
                d.hosts[1].service_host.as_str()
            ),
            ("203.0.113.9", "10.0.0.1")
        );
        assert!(d.known_hosts.is_absolute() && d.known_hosts.ends_with("ec2/r/known_hosts"));
        st.deployment = Some(d);
        let l = reach::link(&st, 0).unwrap();
        assert_eq!(l.target.alias, "i-a");
        assert_eq!(l.target.host_keys, crate::ec2::ssh::HostKeys::Check);
        assert_eq!(l.dir, "r/i-a");
        assert_eq!(
            reach::public_frontends(&st).unwrap(),
            vec!["http://127.0.0.1:8000"]
        );
    }
}
