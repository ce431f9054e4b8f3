//! The `infra ec2` commands.
use super::api::Api;
use super::layout::{self, HostMap};
use super::remote::{control_script, Svc};
use super::ssh::{self, sh_quote, Target};
use super::state::{self, Deployment, Host, Phase, RunState};
use super::{check_run_id, new_run_id, say, NAME_PREFIX};
use crate::membership::{self, Standing};
use bookstore_common::config::{ClusterConfig, Kind};
use bookstore_common::router::ViewDoc;
use bookstore_replication::node::Status;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Replicas of each replicated kind.
const REPLICAS: u32 = 2;

#[derive(Subcommand, Debug)]
pub enum Ec2Command {
    /// Create a key pair, a security group and N instances (one call); write the cluster
    /// file and the state file under output/ec2/<run>/.
    Up(Box<UpArgs>),
    /// Copy the infra binary, books, cluster file and tokens to every host over SSH,
    /// start each service (systemd, else setsid nohup) and wait until all are healthy.
    Deploy(Box<DeployArgs>),
    /// Run `infra local test`'s scenarios and a short load run against the remote frontend.
    Test(TestArgs),
    /// Pull every host's logs into output/ec2/<run>/<instance>/.
    Collect(SelectArgs),
    /// Stop the services on every host (over SSH); the instances keep running.
    Stop(SelectArgs),
    /// Scale out: register one more catalog or order replica with the view service, start
    /// it on the least loaded host without one of its kind, and wait until it is synced.
    /// Nothing else restarts.
    Add(AddArgs),
    /// Scale in: retire replica ID of KIND from the view service (refused if no other
    /// replica holds every committed write), wait until the view no longer includes it,
    /// and stop it. Nothing else restarts.
    Remove(RemoveArgs),
    /// Terminate the instances, wait, delete the security group and the key pair.
    /// Idempotent; --all-runs cleans up every run's leftovers found by tag.
    Down(DownArgs),
    /// up, deploy, test, collect and down in one command; teardown happens on failure and
    /// on Ctrl-C too.
    Run(Box<RunArgs>),
    /// (What deploy runs on the frontend's host.) Wait until every catalog and order
    /// replica is in the view and synced.
    #[command(hide = true)]
    Ready(ReadyArgs),
    /// (What add and remove run on the frontend's host.) Wait until one replica is a
    /// synced member of its view, or is out of it.
    #[command(hide = true)]
    WaitMember(WaitMemberArgs),
}

#[derive(Args, Debug, Clone)]
pub struct AddArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub sel: SelectArgs,
    /// catalog or order.
    #[arg(value_parser = replicated_kind)]
    pub kind: Kind,
    /// How long the new replica may take to catch up and become a synced member.
    #[arg(long, default_value_t = 120)]
    pub wait_seconds: u64,
}

#[derive(Args, Debug, Clone)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub sel: SelectArgs,
    /// catalog or order.
    #[arg(value_parser = replicated_kind)]
    pub kind: Kind,
    /// The replica's id (`infra ec2 add` prints it; the state file lists every service).
    pub id: u32,
    /// How long the view may take to drop the replica.
    #[arg(long, default_value_t = 60)]
    pub wait_seconds: u64,
}

/// Whether [`WaitMemberArgs`] waits for a replica to be in the view or out of it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The primary, or a synced backup that serves reads in the current view.
    Synced,
    /// Neither primary nor backup of the current view.
    Gone,
}

#[derive(Args, Debug, Clone)]
pub struct WaitMemberArgs {
    /// The frontend, e.g. http://10.0.0.5:8000.
    #[arg(long)]
    pub frontend: String,
    #[arg(long, value_parser = replicated_kind)]
    pub kind: Kind,
    #[arg(long)]
    pub id: u32,
    #[arg(long, value_enum)]
    pub until: Until,
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    #[arg(long, env = "BOOKSTORE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: bookstore_common::auth::Secret,
}

fn replicated_kind(s: &str) -> Result<Kind, String> {
    match Kind::parse(s) {
        Some(k @ (Kind::Catalog | Kind::Order)) => Ok(k),
        _ => Err(format!(
            "only catalog and order replicas are added and removed, not {s:?}"
        )),
    }
}

#[derive(Args, Debug, Clone)]
pub struct ReadyArgs {
    /// The frontend, e.g. http://10.0.0.5:8000.
    #[arg(long)]
    pub frontend: String,
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Catalog replicas to wait for.
    #[arg(long, default_value_t = REPLICAS)]
    pub catalogs: u32,
    /// Order replicas to wait for.
    #[arg(long, default_value_t = REPLICAS)]
    pub orders: u32,
    #[arg(long, env = "BOOKSTORE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: bookstore_common::auth::Secret,
}

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// AWS region (default: AWS_REGION, else the profile's region).
    #[arg(long)]
    pub region: Option<String>,
    /// EC2 endpoint, e.g. an emulator at http://127.0.0.1:5000 (default: the SDK's
    /// AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL, else AWS itself).
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct SelectArgs {
    /// Where runs live: <output-dir>/ec2/<run>/.
    #[arg(long, default_value = "output", env = "BOOKSTORE_OUTPUT_DIR")]
    pub output_dir: PathBuf,
    /// The run's id. `up` and `run`: the new run's name (default: a time stamp); the
    /// other commands: which run (default: the newest one they apply to).
    #[arg(long)]
    pub run: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub sel: SelectArgs,
    /// Number of instances; the 6 services (frontend, cache, 2 catalogs, 2 orders) are
    /// spread over them, replicas of one kind on different hosts.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub hosts: u32,
    #[arg(long, default_value = "t3.micro")]
    pub instance_type: String,
    /// Image name pattern (EC2 wildcards); the newest available x86_64 match is used. The
    /// binary is built here, so the image needs glibc at least as new (Debian 12 is).
    #[arg(long, default_value = "debian-12-amd64-*")]
    pub image_name: String,
    /// Owner of the image: an account id (136693071363 is Debian's), `amazon` or `self`.
    #[arg(long, default_value = "136693071363")]
    pub image_owner: String,
    /// Use this existing key pair instead of making one (needs --ssh-key).
    #[arg(long, requires = "ssh_key")]
    pub key_name: Option<String>,
    /// Private key of --key-name.
    #[arg(long)]
    pub ssh_key: Option<PathBuf>,
    /// Login user of the image (Debian: admin, Ubuntu: ubuntu, Amazon Linux: ec2-user).
    #[arg(long, default_value = "admin")]
    pub ssh_user: String,
    /// The operator's CIDR (e.g. 203.0.113.7/32): the only source SSH and the frontend
    /// port accept. The service ports accept members of the group only.
    #[arg(long)]
    pub allow: String,
    /// First service port (frontend); the others follow it.
    #[arg(long, default_value_t = 8000)]
    pub base_port: u16,
}

#[derive(Args, Debug, Clone)]
pub struct DeployOpts {
    /// Reach an instance somewhere else than its public address, and run its services
    /// there: INSTANCE=HOST[:PORT] (repeatable; `*` = every instance not named), or a file
    /// of such lines. For emulators, whose addresses are not real.
    #[arg(long)]
    pub host_map: Vec<String>,
    /// The binary to deploy (default: this one); it runs every service.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Books CSV the catalogs load.
    #[arg(long, default_value = "data/books.csv", env = "BOOKSTORE_BOOKS")]
    pub books: PathBuf,
    /// Remote folder (relative to the login folder, or absolute); each instance uses
    /// <remote-dir>/<instance id>/.
    #[arg(long, default_value = "bookstore")]
    pub remote_dir: String,
    /// Keep the replicas' data from an earlier deploy (default: start from the books).
    #[arg(long)]
    pub keep_data: bool,
    /// How long to wait for each host's sshd, in seconds.
    #[arg(long, default_value_t = 300)]
    pub ssh_wait: u64,
}

#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    #[command(flatten)]
    pub sel: SelectArgs,
    #[command(flatten)]
    pub opts: DeployOpts,
    /// Login user (default: the one given to `up`).
    #[arg(long)]
    pub ssh_user: Option<String>,
    /// Private key (default: the run's own, or the one given to `up`).
    #[arg(long)]
    pub ssh_key: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct TestArgs {
    #[command(flatten)]
    pub sel: SelectArgs,
    /// Books CSV the cluster was deployed with.
    #[arg(long, default_value = "data/books.csv", env = "BOOKSTORE_BOOKS")]
    pub books: PathBuf,
    /// Length of the load run (a `loadtest` binary next to this one); 0 skips it.
    #[arg(long, default_value_t = 5)]
    pub load_seconds: u64,
}

#[derive(Args, Debug, Clone)]
pub struct DownArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub sel: SelectArgs,
    /// Every run's leftovers in the region, found by their tag (crashed runs, lost state).
    #[arg(long, conflicts_with = "run")]
    pub all_runs: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub up: UpArgs,
    #[command(flatten)]
    pub deploy: DeployOpts,
    /// Length of the load run; 0 skips it.
    #[arg(long, default_value_t = 5)]
    pub load_seconds: u64,
}

/// Runs a command; `Ok(false)` when tests ran and failed.
pub async fn main(cmd: Ec2Command) -> Result<bool, String> {
    match cmd {
        Ec2Command::Up(a) => {
            let run = match &a.sel.run {
                Some(r) => r.clone(),
                None => new_run_id(),
            };
            up(&a, &run).await.map(|_| true)
        }
        Ec2Command::Deploy(a) => {
            let st = state::pick_run(
                &a.sel.output_dir,
                a.sel.run.as_deref(),
                &[Phase::Up, Phase::Deployed],
            )?;
            deploy(
                &a.sel.output_dir,
                st,
                &a.opts,
                a.ssh_user.as_deref(),
                a.ssh_key.as_deref(),
            )
            .await
            .map(|_| true)
        }
        Ec2Command::Test(a) => {
            let st = state::pick_run(&a.sel.output_dir, a.sel.run.as_deref(), &[Phase::Deployed])?;
            test(&a.sel.output_dir, &st, &a.books, a.load_seconds).await
        }
        Ec2Command::Collect(a) => {
            let st = state::pick_run(
                &a.output_dir,
                a.run.as_deref(),
                &[Phase::Deployed, Phase::Up],
            )?;
            collect(&a.output_dir, &st).await.map(|_| true)
        }
        Ec2Command::Stop(a) => {
            let st = state::pick_run(
                &a.output_dir,
                a.run.as_deref(),
                &[Phase::Deployed, Phase::Up],
            )?;
            stop(&st).await.map(|_| true)
        }
        Ec2Command::Down(a) => {
            if a.all_runs {
                down_all(&a.api, &a.sel.output_dir).await.map(|_| true)
            } else {
                let run = match a.sel.run.clone() {
                    Some(r) => r,
                    None => match state::pick_run(
                        &a.sel.output_dir,
                        None,
                        &[Phase::Creating, Phase::Up, Phase::Deployed],
                    ) {
                        Ok(s) => s.run_id,
                        Err(_) => {
                            println!(
                                "no run in {} is up: nothing to take down (`down --run ID` or `down --all-runs` look for resources by tag)",
                                state::runs_dir(&a.sel.output_dir).display()
                            );
                            return Ok(true);
                        }
                    },
                };
                down(&a.api, &a.sel.output_dir, &run).await.map(|_| true)
            }
        }
        Ec2Command::Add(a) => {
            let st = state::pick_run(&a.sel.output_dir, a.sel.run.as_deref(), &[Phase::Deployed])?;
            add(
                &a.sel.output_dir,
                st,
                &a.api,
                a.kind,
                Duration::from_secs(a.wait_seconds),
            )
            .await
            .map(|_| true)
        }
        Ec2Command::Remove(a) => {
            let st = state::pick_run(&a.sel.output_dir, a.sel.run.as_deref(), &[Phase::Deployed])?;
            remove(
                &a.sel.output_dir,
                st,
                a.kind,
                a.id,
                Duration::from_secs(a.wait_seconds),
            )
            .await
            .map(|_| true)
        }
        Ec2Command::WaitMember(a) => {
            let started = Instant::now();
            let say_line = |line: &str| {
                println!("[{:5.1} s] {line}", started.elapsed().as_secs_f64());
            };
            wait_member(
                &a.frontend,
                &a.cluster_token,
                a.kind,
                a.id,
                a.until,
                Duration::from_secs(a.seconds),
                &say_line,
            )
            .await?;
            Ok(true)
        }
        Ec2Command::Run(a) => run(*a).await,
        Ec2Command::Ready(a) => {
            wait_ready(
                &a.frontend,
                &a.cluster_token,
                &[(Kind::Catalog, a.catalogs), (Kind::Order, a.orders)],
                Duration::from_secs(a.seconds),
            )
            .await?;
            println!("every catalog and order replica is in the view and synced");
            Ok(true)
        }
    }
}

fn token(var: &str) -> Result<String, String> {
    let t = std::env::var(var).unwrap_or_else(|_| crate::local::random_token());
    if t.is_empty()
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._~+/=-".contains(c))
    {
        return Err(format!(
            "{var} may hold only letters, digits and ._~+/=- (it goes into an environment file)"
        ));
    }
    bookstore_common::auth::check_token(var, &t)?;
    Ok(t)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `up`: see [`Ec2Command::Up`]. The state file is written before each resource is
/// created and after, so `down` can always finish the job.
pub async fn up(a: &UpArgs, run: &str) -> Result<RunState, String> {
    check_run_id(run)?;
    layout::check_cidr(&a.allow)?;
    let out = &a.sel.output_dir;
    if RunState::path(out, run).exists() {
        return Err(format!(
            "run {run} exists already ({}); pick another --run",
            RunState::path(out, run).display()
        ));
    }
    if let Some(k) = &a.ssh_key {
        if !k.exists() {
            return Err(format!("--ssh-key {}: no such file", k.display()));
        }
    }
    let n_services = layout::services(REPLICAS, REPLICAS).len() as u16;
    if a.base_port == 0 || a.base_port.checked_add(n_services).is_none() {
        return Err(format!(
            "--base-port {}: the {n_services} service ports must fit below 65536",
            a.base_port
        ));
    }
    say(&format!("[up] run {run}: connecting to EC2"));
    let api = Api::connect(a.api.region.as_deref(), a.api.endpoint_url.as_deref()).await?;
    say(&format!(
        "[up] region {}; looking for the newest image named {:?} (owner {})",
        api.region, a.image_name, a.image_owner
    ));
    let (image_id, image_name) = api.find_image(&a.image_name, &a.image_owner).await?;
    say(&format!("[up] image {image_id} ({image_name})"));

    let mut st = RunState {
        run_id: run.to_string(),
        created_unix: now_unix(),
        phase: Phase::Creating,
        region: api.region.clone(),
        endpoint_url: a.api.endpoint_url.clone().or_else(|| api.endpoint.clone()),
        allow_cidr: a.allow.clone(),
        instance_type: a.instance_type.clone(),
        image_id: Some(image_id.clone()),
        image_name: Some(image_name),
        key_name: None,
        key_created: false,
        ssh_key: a.ssh_key.clone().map(|k| k.canonicalize().unwrap_or(k)),
        ssh_user: a.ssh_user.clone(),
        security_group_id: None,
        instance_ids: Vec::new(),
        hosts: Vec::new(),
        base_port: a.base_port,
        ports_used: n_services,
        cluster_token: token("BOOKSTORE_CLUSTER_TOKEN")?.into(),
        admin_token: token("BOOKSTORE_ADMIN_TOKEN")?.into(),
        deployment: None,
    };
    st.save(out)?;
    let dir = st.dir(out);
    let name = format!("{NAME_PREFIX}{run}");

    // Key pair: the user's own, or a new ed25519 key whose private half stays here.
    let key_name = match &a.key_name {
        Some(k) => {
            say(&format!("[up] using your key pair {k}"));
            k.clone()
        }
        None => {
            let key = dir.join("ssh_key");
            let public = ssh::keygen(&key, &name).await?;
            st.key_name = Some(name.clone());
            st.key_created = true;
            st.ssh_key = Some(key.canonicalize().unwrap_or(key));
            st.save(out)?;
            api.import_key(&name, &public, run).await?;
            say(&format!(
                "[up] key pair {name} (private key {})",
                st.ssh_key
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ));
            name.clone()
        }
    };
    if st.key_name.is_none() {
        st.key_name = Some(key_name.clone());
    }

    let group = api.create_security_group(&name, run).await?;
    st.security_group_id = Some(group.clone());
    st.save(out)?;
    let last_port = a.base_port + n_services - 1;
    api.authorize(&group, &a.allow, a.base_port, (a.base_port, last_port))
        .await?;
    say(&format!(
        "[up] security group {group}: ssh (22) and frontend ({}) from {} only; ports {}-{last_port} from the group only",
        a.base_port, a.allow, a.base_port
    ));

    say(&format!(
        "[up] launching {} {} instances",
        a.hosts, a.instance_type
    ));
    let ids = api
        .launch(a.hosts, &image_id, &a.instance_type, &key_name, &group, run)
        .await?;
    st.instance_ids = ids.clone();
    st.save(out)?;
    say(&format!(
        "[up] launched {}; waiting until they run",
        ids.join(", ")
    ));
    api.wait_running(&ids).await?;
    let described = api.describe(&ids).await?;
    let placed = layout::place(
        ids.len(),
        a.base_port,
        &layout::services(REPLICAS, REPLICAS),
    );
    let mut hosts = Vec::new();
    for (h, inst) in described.iter().enumerate() {
        let id = inst.instance_id().unwrap_or_default().to_string();
        let private_ip = inst
            .private_ip_address()
            .ok_or_else(|| format!("instance {id} has no private address"))?
            .to_string();
        hosts.push(Host {
            instance_id: id,
            public_ip: inst.public_ip_address().map(str::to_string),
            private_ip,
            services: placed
                .iter()
                .filter(|p| p.2 == h)
                .map(|&(k, i, _, port)| (k.name().to_string(), i, port))
                .collect(),
        });
    }
    let addrs: Vec<String> = hosts.iter().map(|h| h.private_ip.clone()).collect();
    let cluster = layout::cluster(&placed, &addrs);
    let cluster_file = dir.join("cluster.csv");
    std::fs::write(&cluster_file, cluster.to_text())
        .map_err(|e| format!("{}: {e}", cluster_file.display()))?;
    st.hosts = hosts;
    st.phase = Phase::Up;
    st.save(out)?;
    println!(
        "run {run} is up ({} instances, region {})",
        st.hosts.len(),
        st.region
    );
    for h in &st.hosts {
        println!(
            "  {}  public {}  private {}  runs {}",
            h.instance_id,
            h.public_ip.as_deref().unwrap_or("-"),
            h.private_ip,
            h.services
                .iter()
                .map(|(k, i, p)| format!("{k} {i} (:{p})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("  cluster file: {}", cluster_file.display());
    println!("  state file:   {}", RunState::path(out, run).display());
    println!("  next: infra ec2 deploy --run {run}   (and `infra ec2 down --run {run}` when done)");
    Ok(st)
}

/// Where each instance is reached and runs its services.
struct Placement {
    targets: Vec<Target>,
    service_hosts: Vec<String>,
}

fn placement(st: &RunState, map: &HostMap, user: &str, key: &Path) -> Result<Placement, String> {
    let mut targets = Vec::new();
    let mut service_hosts = Vec::new();
    for h in &st.hosts {
        let mapped = map.get(&h.instance_id).or_else(|| map.get("*"));
        let (host, port, service_host) = match mapped {
            Some((host, port)) => (host.clone(), *port, host.clone()),
            None => {
                let public = h.public_ip.clone().ok_or_else(|| {
                    format!(
                        "instance {} has no public address: give it one, or map it with --host-map {}=HOST[:PORT]",
                        h.instance_id, h.instance_id
                    )
                })?;
                (public, 22, h.private_ip.clone())
            }
        };
        targets.push(Target {
            user: user.to_string(),
            host,
            port,
            key: key.to_path_buf(),
        });
        service_hosts.push(service_host);
    }
    Ok(Placement {
        targets,
        service_hosts,
    })
}

fn deployed_cluster(st: &RunState, service_hosts: &[String]) -> ClusterConfig {
    let mut parts = Vec::new();
    // Cluster-file order: frontend, cache, catalogs, orders, ids ascending.
    let mut all: Vec<(Kind, u32, String, u16)> = Vec::new();
    for (h, host) in st.hosts.iter().enumerate() {
        for (k, i, port) in &host.services {
            if let Some(kind) = Kind::parse(k) {
                all.push((kind, *i, service_hosts[h].clone(), *port));
            }
        }
    }
    all.sort_by_key(|(k, i, _, _)| (*k, *i));
    for (k, _, host, port) in all {
        parts.push((k, bookstore_common::config::Endpoint::new(host, port)));
    }
    ClusterConfig::from_parts(&parts)
}

/// Services of `kind` in the run.
fn count(st: &RunState, kind: Kind) -> usize {
    st.hosts
        .iter()
        .flat_map(|h| &h.services)
        .filter(|(k, _, _)| k == kind.name())
        .count()
}

/// A cluster file numbers the replicas of a kind 0, 1, ...; after `add` and `remove` the
/// ids may have gaps. A fresh deploy (new data) renumbers them; one that keeps the data
/// (and the view service's member table) cannot.
fn renumber(st: &mut RunState, keep_data: bool) -> Result<(), String> {
    for kind in [Kind::Catalog, Kind::Order] {
        let mut ids: Vec<u32> = st
            .hosts
            .iter()
            .flat_map(|h| &h.services)
            .filter(|(k, _, _)| k == kind.name())
            .map(|(_, i, _)| *i)
            .collect();
        ids.sort_unstable();
        if ids.iter().enumerate().all(|(n, &i)| n as u32 == i) {
            continue;
        }
        if keep_data {
            return Err(format!(
                "run {}: the {kind} ids ({ids:?}) have gaps after `remove`, which a cluster file cannot express; deploy without --keep-data (they are renumbered from 0)",
                st.run_id
            ));
        }
        for h in &mut st.hosts {
            for s in &mut h.services {
                if s.0 == kind.name() {
                    s.1 = ids.iter().position(|&i| i == s.1).unwrap_or(0) as u32;
                }
            }
        }
        say(&format!(
            "[deploy] {kind} ids {ids:?} are renumbered 0-{} (fresh data)",
            ids.len() - 1
        ));
    }
    Ok(())
}

/// `deploy`: see [`Ec2Command::Deploy`].
pub async fn deploy(
    out: &Path,
    mut st: RunState,
    o: &DeployOpts,
    user: Option<&str>,
    key: Option<&Path>,
) -> Result<RunState, String> {
    let run = st.run_id.clone();
    let map = layout::parse_host_map(&o.host_map)?;
    for id in map.keys() {
        if id != "*" && !st.hosts.iter().any(|h| &h.instance_id == id) {
            return Err(format!(
                "--host-map names {id}, which is not an instance of run {run}"
            ));
        }
    }
    let binary = match &o.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?,
    };
    if !binary.is_file() {
        return Err(format!("--binary {}: no such file", binary.display()));
    }
    bookstore_common::config::load_books(&o.books).map_err(|e| e.to_string())?;
    let user = user
        .map(str::to_string)
        .unwrap_or_else(|| st.ssh_user.clone());
    let key = key
        .map(Path::to_path_buf)
        .or_else(|| st.ssh_key.clone())
        .ok_or("no private key for ssh: pass --ssh-key")?;
    if !key.exists() {
        return Err(format!("private key {}: no such file", key.display()));
    }
    renumber(&mut st, o.keep_data)?;
    let pl = placement(&st, &map, &user, &key)?;
    let cluster = deployed_cluster(&st, &pl.service_hosts);
    let stage = st.dir(out).join("deploy");
    std::fs::create_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    let cluster_file = stage.join("cluster.csv");
    std::fs::write(&cluster_file, cluster.to_text())
        .map_err(|e| format!("{}: {e}", cluster_file.display()))?;
    let books_file = stage.join("books.csv");
    std::fs::copy(&o.books, &books_file).map_err(|e| format!("{}: {e}", o.books.display()))?;
    let env_file = stage.join("env");
    write_private(
        &env_file,
        &format!(
            "BOOKSTORE_CLUSTER_TOKEN={}\nBOOKSTORE_ADMIN_TOKEN={}\nRUST_LOG=info\n",
            st.cluster_token.expose(),
            st.admin_token.expose()
        ),
    )?;
    say(&format!(
        "[deploy] run {run}: {} to {} hosts (cluster file {})",
        binary.display(),
        st.hosts.len(),
        cluster_file.display()
    ));

    let (fe_index, fe_port) = st
        .hosts
        .iter()
        .enumerate()
        .find_map(|(h, host)| {
            host.services
                .iter()
                .find(|(k, i, _)| k == "frontend" && *i == 0)
                .map(|(_, _, p)| (h, *p))
        })
        .ok_or("no frontend 0 in the run's layout")?;
    let url = format!("http://{}:{fe_port}", bracket(&pl.targets[fe_index].host));
    // Recorded before anything starts, so `collect` and `stop` work after a failed deploy.
    st.deployment = Some(Deployment {
        ssh_targets: st
            .hosts
            .iter()
            .zip(&pl.targets)
            .map(|(h, t)| (h.instance_id.clone(), t.host.clone(), t.port))
            .collect(),
        service_hosts: st
            .hosts
            .iter()
            .zip(&pl.service_hosts)
            .map(|(h, s)| (h.instance_id.clone(), s.clone()))
            .collect(),
        ssh_user: user.clone(),
        ssh_key: key.clone(),
        remote_dir: o.remote_dir.trim_end_matches('/').to_string(),
        frontend_url: url.clone(),
    });
    st.phase = Phase::Up;
    st.save(out)?;
    let jobs = st.hosts.iter().enumerate().map(|(h, host)| {
        let target = pl.targets[h].clone();
        let dir = format!("{}/{}", o.remote_dir.trim_end_matches('/'), host.instance_id);
        let svcs: Vec<Svc> = host
            .services
            .iter()
            .map(|(k, i, port)| Svc {
                kind: k.clone(),
                id: *i,
                host: pl.service_hosts[h].clone(),
                port: *port,
            })
            .collect();
        let script_file = stage.join(format!("bookstore-{}.sh", host.instance_id));
        let files = [cluster_file.clone(), books_file.clone(), env_file.clone()];
        let binary = binary.clone();
        let run = run.clone();
        let keep_data = o.keep_data;
        let wait = Duration::from_secs(o.ssh_wait);
        let id = host.instance_id.clone();
        async move {
            std::fs::write(&script_file, control_script(&run, &svcs))
                .map_err(|e| format!("{}: {e}", script_file.display()))?;
            say(&format!("[deploy] {id}: waiting for ssh at {}", target.name()));
            target.wait_reachable(wait).await?;
            let q = sh_quote(&dir);
            let clear = if keep_data { "" } else { "rm -rf \"$d/output/data\"" };
            target
                .run(&format!(
                    "set -e\nd={q}\nmkdir -p \"$d\"\nif [ -x \"$d/bookstore.sh\" ]; then \"$d/bookstore.sh\" stop; fi\n{clear}\n"
                ))
                .await?;
            say(&format!("[deploy] {id}: copying the binary, books, cluster file and tokens to {dir}/"));
            target.copy_to(&[binary.as_path()], &format!("{dir}/infra")).await?;
            let mut list: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            list.push(script_file.as_path());
            target.copy_to(&list, &format!("{dir}/")).await?;
            let started = target
                .run(&format!(
                    "set -e\ncd {q}\nmv {} bookstore.sh\nchmod 700 bookstore.sh infra\nchmod 600 env\n./bookstore.sh start\n",
                    sh_quote(&format!("bookstore-{id}.sh"))
                ))
                .await?;
            for line in started.lines() {
                say(&format!("[deploy] {id}: {line}"));
            }
            Ok::<_, String>(())
        }
    });
    let results = futures::future::join_all(jobs).await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if !failed.is_empty() {
        return Err(format!("deploy failed:\n  {}", failed.join("\n  ")));
    }
    say("[deploy] every service started; waiting until they answer /health");
    let checks = st.hosts.iter().enumerate().map(|(h, host)| {
        let target = pl.targets[h].clone();
        let dir = format!(
            "{}/{}",
            o.remote_dir.trim_end_matches('/'),
            host.instance_id
        );
        let id = host.instance_id.clone();
        async move {
            let script = format!("cd {} && ./bookstore.sh health 60\n", sh_quote(&dir));
            run_and_echo("deploy", &id, &target, &script).await
        }
    });
    on_all_hosts("services did not become healthy", checks).await?;
    let fe = &st.hosts[fe_index];
    let fe_dir = format!("{}/{}", o.remote_dir.trim_end_matches('/'), fe.instance_id);
    let fe_local = format!("http://{}:{fe_port}", bracket(&pl.service_hosts[fe_index]));
    say(&format!(
        "[deploy] waiting until the replicas agree on primaries (asked on {}, so the cluster token stays off the network)",
        fe.instance_id
    ));
    let r = pl.targets[fe_index]
        .run(&format!(
            "cd {} && set -a && . ./env && set +a && ./infra ec2 ready --frontend {fe_local} --seconds 60 --catalogs {} --orders {}\n",
            sh_quote(&fe_dir),
            count(&st, Kind::Catalog),
            count(&st, Kind::Order)
        ))
        .await?;
    for line in r.lines() {
        say(&format!("[deploy] {}: {line}", fe.instance_id));
    }
    say(&format!(
        "[deploy] checking that this machine reaches the frontend at {url}"
    ));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http.get(format!("{url}/health")).send().await {
            Ok(r) if r.status().is_success() => break,
            r => {
                if Instant::now() > deadline {
                    return Err(format!(
                        "the frontend runs but {url}/health does not answer from here ({}); is --allow {} this machine's address?",
                        match r {
                            Ok(r) => r.status().to_string(),
                            Err(e) => e.to_string(),
                        },
                        st.allow_cidr
                    ));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    st.phase = Phase::Deployed;
    st.save(out)?;
    println!("bookstore run {run} is deployed: {url}");
    println!("  try:   curl '{url}/lookup?item_number=1'");
    println!(
        "  admin token: in {} (admin_token)",
        RunState::path(out, &run).display()
    );
    println!("  next:  infra ec2 test --run {run}; infra ec2 collect --run {run}; infra ec2 down --run {run}");
    Ok(st)
}

/// An IPv6 address in brackets, for URLs.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| {
            // `mode` applies only to a file it creates: tighten one that was there.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            f.write_all(text.as_bytes())
        })
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Polls the frontend until it answers and every catalog and order replica is in the
/// view and synced (the same readiness as `local up`).
async fn wait_ready(
    url: &str,
    cluster_token: &str,
    replicas: &[(Kind, u32)],
    limit: Duration,
) -> Result<(), String> {
    let client =
        bookstore_common::client::Client::with_timeout(cluster_token, Duration::from_secs(2));
    let deadline = Instant::now() + limit;
    for &(kind, n) in replicas {
        let view_url = format!("{url}/vs/{kind}/view");
        let mut last;
        loop {
            match client.get_json::<serde_json::Value>(&view_url).await {
                Ok(v) => {
                    let backups = v["view"]["backups"].as_array().map_or(0, Vec::len);
                    let synced = v["synced"].as_array().map_or(0, Vec::len);
                    if !v["view"].is_null() && backups + 1 == n as usize && synced == backups {
                        break;
                    }
                    last = v.to_string();
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {kind} replicas did not all join the view within {limit:?} (last answer: {last})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

fn targets_of(st: &RunState) -> Result<Vec<(String, Target, String)>, String> {
    let d = st.deployment.as_ref().ok_or_else(|| {
        format!(
            "run {} is not deployed: run `infra ec2 deploy --run {}`",
            st.run_id, st.run_id
        )
    })?;
    Ok(d.ssh_targets
        .iter()
        .map(|(id, host, port)| {
            (
                id.clone(),
                Target {
                    user: d.ssh_user.clone(),
                    host: host.clone(),
                    port: *port,
                    key: d.ssh_key.clone(),
                },
                format!("{}/{id}", d.remote_dir),
            )
        })
        .collect())
}

/// `test`: the seed scenarios, then a short load run if a `loadtest` binary is at hand.
pub async fn test(
    out: &Path,
    st: &RunState,
    books_file: &Path,
    load_seconds: u64,
) -> Result<bool, String> {
    let d = st
        .deployment
        .as_ref()
        .ok_or_else(|| format!("run {} is not deployed", st.run_id))?;
    let url = d.frontend_url.clone();
    let books = bookstore_common::config::load_books(books_file).map_err(|e| e.to_string())?;
    let log = st.dir(out).join("client_log");
    say(&format!("[test] running the seed scenarios against {url}"));
    let verdicts = crate::scenarios::run_all(&url, &books, &log, None).await?;
    print!("{}", crate::scenarios::table(&verdicts));
    println!("client log: {}", log.display());
    let mut ok = verdicts.iter().all(|v| v.passed || v.skipped);
    if load_seconds == 0 {
        say("[test] load run skipped (--load-seconds 0)");
        return Ok(ok);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let loadtest = exe.with_file_name("loadtest");
    if !loadtest.is_file() {
        say(&format!(
            "[test] load run skipped: no loadtest binary next to {} (build it: cargo build --release -p loadtest)",
            exe.display()
        ));
        return Ok(ok);
    }
    say(&format!(
        "[test] load run: {} s of lookups from 4 clients against {url}",
        load_seconds
    ));
    let status = tokio::process::Command::new(&loadtest)
        .args([
            "run",
            "--target",
            &url,
            "--workload",
            "lookup",
            "--clients",
            "4",
            "--duration",
        ])
        .arg(format!("{load_seconds}s"))
        .arg("--out")
        .arg(st.dir(out).join("loadtest"))
        .args(["--run-id", "lookup", "--quiet"])
        .status()
        .await
        .map_err(|e| format!("{}: {e}", loadtest.display()))?;
    if !status.success() {
        say(&format!("[test] the load run failed: {status}"));
        ok = false;
    }
    Ok(ok)
}

/// `collect`: every host's logs (not the replicas' data) into `<run>/<instance>/`.
pub async fn collect(out: &Path, st: &RunState) -> Result<(), String> {
    let jobs = targets_of(st)?.into_iter().map(|(id, t, dir)| {
        let dest = st.dir(out).join(&id);
        async move {
            t.pull_dir(&format!("{dir}/output"), &["data"], &dest)
                .await
                .map_err(|e| format!("{id}: {e}"))?;
            let n = std::fs::read_dir(&dest).map(|d| d.count()).unwrap_or(0);
            say(&format!(
                "[collect] {id}: {n} files into {}",
                dest.display()
            ));
            Ok::<_, String>(())
        }
    });
    on_all_hosts("collect failed", jobs).await
}

/// `stop`: stops every host's services.
pub async fn stop(st: &RunState) -> Result<(), String> {
    let jobs = targets_of(st)?.into_iter().map(|(id, t, dir)| async move {
        let script = format!(
            "d={}\nif [ -x \"$d/bookstore.sh\" ]; then \"$d/bookstore.sh\" stop; fi\n",
            sh_quote(&dir)
        );
        run_and_echo("stop", &id, &t, &script).await
    });
    on_all_hosts("stop failed", jobs).await
}

/// The host `add` puts a new replica of `kind` on: the least loaded host without one of
/// that kind, else the least loaded (lowest index on a tie), as `up` places services.
pub fn pick_host(hosts: &[Host], kind: Kind) -> usize {
    let pick = |allow_same: bool| {
        (0..hosts.len())
            .filter(|&h| allow_same || !hosts[h].services.iter().any(|(k, _, _)| k == kind.name()))
            .min_by_key(|&h| (hosts[h].services.len(), h))
    };
    pick(false).or_else(|| pick(true)).unwrap_or(0)
}

/// The port of the next service: `base_port + ports_used`, and past every port in use
/// (a state file from before `ports_used` existed holds 0).
pub fn next_port(st: &RunState) -> Result<u16, String> {
    let counted = u32::from(st.base_port) + u32::from(st.ports_used);
    let past_used = st
        .hosts
        .iter()
        .flat_map(|h| h.services.iter().map(|s| u32::from(s.2) + 1))
        .max()
        .unwrap_or(0);
    u16::try_from(counted.max(past_used))
        .map_err(|_| format!("run {}: no service port left below 65536", st.run_id))
}

/// The ssh target, remote folder and service address of host `h` of a deployed run.
fn host_access(st: &RunState, h: usize) -> Result<(Target, String, String), String> {
    let id = &st.hosts[h].instance_id;
    let service_host = st
        .deployment
        .as_ref()
        .and_then(|d| d.service_hosts.iter().find(|(i, _)| i == id))
        .map(|(_, s)| s.clone())
        .ok_or_else(|| format!("run {}: no deployment record for {id}", st.run_id))?;
    let (_, target, dir) = targets_of(st)?
        .into_iter()
        .find(|(i, _, _)| i == id)
        .ok_or_else(|| format!("run {}: no ssh target for {id}", st.run_id))?;
    Ok((target, dir, service_host))
}

/// Writes host `h`'s control script for the services the state lists and installs it
/// over ssh (the running services are not touched).
async fn install_script(out: &Path, st: &RunState, h: usize) -> Result<(), String> {
    let (target, dir, service_host) = host_access(st, h)?;
    let host = &st.hosts[h];
    let svcs: Vec<Svc> = host
        .services
        .iter()
        .map(|(k, i, port)| Svc {
            kind: k.clone(),
            id: *i,
            host: service_host.clone(),
            port: *port,
        })
        .collect();
    let stage = st.dir(out).join("deploy");
    std::fs::create_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    let name = format!("bookstore-{}.sh", host.instance_id);
    let file = stage.join(&name);
    std::fs::write(&file, control_script(&st.run_id, &svcs))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    target
        .copy_to(&[file.as_path()], &format!("{dir}/"))
        .await?;
    target
        .run(&format!(
            "set -e\ncd {}\nchmod 700 {n}\nmv {n} bookstore.sh\n",
            sh_quote(&dir),
            n = sh_quote(&name)
        ))
        .await
        .map(|_| ())
}

/// Where the frontend 0 of a deployed run is: host index and the URL its own host reaches
/// it at.
fn frontend_local(st: &RunState) -> Result<(usize, String), String> {
    for (h, host) in st.hosts.iter().enumerate() {
        if let Some((_, _, port)) = host
            .services
            .iter()
            .find(|(k, i, _)| k == "frontend" && *i == 0)
        {
            let (_, _, service_host) = host_access(st, h)?;
            return Ok((h, format!("http://{}:{port}", bracket(&service_host))));
        }
    }
    Err(format!("run {}: no frontend 0 in the layout", st.run_id))
}

/// Runs `infra ec2 wait-member` on the frontend's host (so the cluster token stays off the
/// network, and the replica's port, open to the group only, is reachable), echoing its
/// progress as it comes.
async fn wait_member_remote(
    label: &str,
    st: &RunState,
    kind: Kind,
    id: u32,
    until: Until,
    limit: Duration,
) -> Result<(), String> {
    let (fe, fe_url) = frontend_local(st)?;
    let (target, dir, _) = host_access(st, fe)?;
    let fe_id = st.hosts[fe].instance_id.clone();
    let until_arg = match until {
        Until::Synced => "synced",
        Until::Gone => "gone",
    };
    say(&format!(
        "[{label}] waiting up to {} s until {kind} {id} is {until_arg} (asked on {fe_id})",
        limit.as_secs()
    ));
    target
        .run_lines(
            &format!(
                "cd {} && set -a && . ./env && set +a && ./infra ec2 wait-member --frontend {fe_url} --kind {kind} --id {id} --until {until_arg} --seconds {}\n",
                sh_quote(&dir),
                limit.as_secs()
            ),
            |line| say(&format!("[{label}] {fe_id}: {line}")),
        )
        .await
}

/// An admin call to the frontend (`Authorization: Bearer <admin token>`; no cluster
/// token). Returns the status and the answer (the `error` text of a failure).
async fn admin_post(url: &str, admin_token: &str) -> Result<serde_json::Value, (u16, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| (0, e.to_string()))?;
    let r = http
        .post(url)
        .bearer_auth(admin_token)
        .send()
        .await
        .map_err(|e| (0, format!("cannot reach the frontend: {e}")))?;
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err((
            status,
            body["error"]
                .as_str()
                .map_or_else(|| format!("status {status}"), str::to_string),
        ))
    }
}

/// `add`: see [`Ec2Command::Add`]. Returns the new replica's id.
pub async fn add(
    out: &Path,
    mut st: RunState,
    api_args: &ApiArgs,
    kind: Kind,
    limit: Duration,
) -> Result<u32, String> {
    let run = st.run_id.clone();
    let frontend_url = st
        .deployment
        .as_ref()
        .map(|d| d.frontend_url.clone())
        .ok_or_else(|| format!("run {run} is not deployed: run `infra ec2 deploy --run {run}`"))?;
    let h = pick_host(&st.hosts, kind);
    let port = next_port(&st)?;
    let (target, dir, service_host) = host_access(&st, h)?;
    let instance = st.hosts[h].instance_id.clone();
    // `up` opened base_port.. for its own services; a port past them needs a rule.
    let opened = st.base_port as u32 + layout::services(REPLICAS, REPLICAS).len() as u32;
    if u32::from(port) >= opened {
        let group = st
            .security_group_id
            .clone()
            .ok_or_else(|| format!("run {run} has no security group"))?;
        let region = api_args.region.clone().unwrap_or_else(|| st.region.clone());
        let endpoint = api_args
            .endpoint_url
            .clone()
            .or_else(|| st.endpoint_url.clone());
        let api = Api::connect(Some(&region), endpoint.as_deref()).await?;
        api.authorize_within(&group, port).await?;
        say(&format!(
            "[add] security group {group}: port {port} open to the group's members"
        ));
    }
    let url = format!("http://{}:{port}", bracket(&service_host));
    let answer = admin_post(
        &format!(
            "{frontend_url}/admin/cluster/register?kind={kind}&url={}",
            bookstore_common::client::encode(&url)
        ),
        &st.admin_token,
    )
    .await
    .map_err(|(_, e)| format!("register {kind} at {url} with {frontend_url}: {e}"))?;
    let id = answer["id"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| format!("register answered without an id: {answer}"))?;
    say(&format!(
        "[add] registered {kind} {id} at {url} ({instance})"
    ));
    // Recorded before anything starts, so `stop`, `collect` and `remove` know it.
    st.hosts[h]
        .services
        .push((kind.name().to_string(), id, port));
    st.ports_used = port - st.base_port + 1;
    st.save(out)?;
    let undo = format!(
        "{kind} {id} is registered and in the state file; `infra ec2 remove --run {run} {kind} {id}` retires it"
    );
    install_script(out, &st, h)
        .await
        .map_err(|e| format!("{e}\n{undo}"))?;
    let script = format!(
        "cd {} && ./bookstore.sh start-one {kind} {id} && ./bookstore.sh health 60 {kind} {id}\n",
        sh_quote(&dir)
    );
    run_and_echo("add", &instance, &target, &script)
        .await
        .map_err(|e| format!("{e}\n{undo}"))?;
    wait_member_remote("add", &st, kind, id, Until::Synced, limit)
        .await
        .map_err(|e| format!("{e}\n{undo}"))?;
    println!("{kind} {id} runs on {instance} at {url} and is a synced replica");
    Ok(id)
}

/// `remove`: see [`Ec2Command::Remove`].
pub async fn remove(
    out: &Path,
    mut st: RunState,
    kind: Kind,
    id: u32,
    limit: Duration,
) -> Result<(), String> {
    let run = st.run_id.clone();
    let frontend_url = st
        .deployment
        .as_ref()
        .map(|d| d.frontend_url.clone())
        .ok_or_else(|| format!("run {run} is not deployed: run `infra ec2 deploy --run {run}`"))?;
    let h = st
        .hosts
        .iter()
        .position(|host| {
            host.services
                .iter()
                .any(|(k, i, _)| k == kind.name() && *i == id)
        })
        .ok_or_else(|| {
            let mut have: Vec<u32> = st
                .hosts
                .iter()
                .flat_map(|host| host.services.iter())
                .filter(|(k, _, _)| k == kind.name())
                .map(|(_, i, _)| *i)
                .collect();
            have.sort_unstable();
            let have: Vec<String> = have.iter().map(u32::to_string).collect();
            format!(
                "run {run} has no {kind} {id} (its {kind} replicas: {})",
                have.join(", ")
            )
        })?;
    let instance = st.hosts[h].instance_id.clone();
    let url = format!("{frontend_url}/admin/cluster/unregister?kind={kind}&id={id}");
    // A view change in progress answers 503 "retry shortly": retry until it settles.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin_post(&url, &st.admin_token).await {
            Ok(_) => {
                say(&format!(
                    "[remove] {kind} {id} retired from the view service"
                ));
                break;
            }
            Err((404, e)) if e.contains("not a member") => {
                say(&format!(
                    "[remove] {kind} {id} was retired already (an earlier remove?)"
                ));
                break;
            }
            Err((_, e)) if e.contains("retry shortly") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err((_, e)) => return Err(format!("retire {kind} {id}: {e}")),
        }
    }
    wait_member_remote("remove", &st, kind, id, Until::Gone, limit).await?;
    let (target, dir, _) = host_access(&st, h)?;
    let script = format!(
        "cd {} && ./bookstore.sh stop-one {kind} {id}\n",
        sh_quote(&dir)
    );
    run_and_echo("remove", &instance, &target, &script).await?;
    st.hosts[h]
        .services
        .retain(|(k, i, _)| !(k == kind.name() && *i == id));
    st.save(out)?;
    install_script(out, &st, h).await?;
    println!("{kind} {id} is retired and stopped (its data stays in {dir}/output on {instance})");
    Ok(())
}

/// Polls the view service until replica `id` of `kind` is a synced member that acts in
/// the current view (`Until::Synced`, as `local add` waits), or is out of the view
/// (`Until::Gone`). `progress` hears every change of what it sees.
pub async fn wait_member(
    frontend: &str,
    cluster_token: &str,
    kind: Kind,
    id: u32,
    until: Until,
    limit: Duration,
    progress: &dyn Fn(&str),
) -> Result<(), String> {
    let client =
        bookstore_common::client::Client::with_timeout(cluster_token, Duration::from_secs(2));
    let view_url = format!("{frontend}/vs/{kind}/view");
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        let (done, seen) = match client.get_json::<ViewDoc>(&view_url).await {
            Err(e) => (false, format!("the view service does not answer: {e}")),
            Ok(doc) => {
                let summary = membership::summary(&doc);
                match (until, membership::standing(&doc, id)) {
                    (_, Standing::NoView) => (false, summary),
                    (Until::Gone, Standing::Out) => {
                        (true, format!("{kind} {id} is out of the view ({summary})"))
                    }
                    (Until::Gone, _) => (
                        false,
                        format!("{kind} {id} is still in the view ({summary})"),
                    ),
                    (Until::Synced, Standing::Member { epoch, role }) => {
                        let status = match doc.members.get(&id) {
                            Some(u) => client
                                .get_json::<Status>(&format!("{u}/replication/status"))
                                .await
                                .ok(),
                            None => None,
                        };
                        let acting = status
                            .as_ref()
                            .is_some_and(|s| membership::acts_as(s, epoch, role));
                        (
                            acting,
                            if acting {
                                format!("{kind} {id} is a synced {role} and serves ({summary})")
                            } else {
                                format!(
                                    "{kind} {id} is a synced {role} in the view; waiting until it acts in epoch {epoch} and serves reads"
                                )
                            },
                        )
                    }
                    (Until::Synced, Standing::CatchingUp) => (
                        false,
                        format!("{kind} {id} is a backup, catching up ({summary})"),
                    ),
                    (Until::Synced, Standing::Out) => (
                        false,
                        format!("{kind} {id} is not in the view yet ({summary})"),
                    ),
                }
            }
        };
        if seen != last {
            progress(&seen);
            last = seen;
        }
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{kind} {id} is not {} after {limit:?} (last seen: {last})",
                match until {
                    Until::Synced => "a synced member",
                    Until::Gone => "out of the view",
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `script` on a host, echoing its output as `[label] id: line`.
async fn run_and_echo(label: &str, id: &str, t: &Target, script: &str) -> Result<(), String> {
    let r = t.run(script).await.map_err(|e| format!("{id}: {e}"))?;
    for line in r.lines() {
        say(&format!("[{label}] {id}: {line}"));
    }
    Ok(())
}

/// Runs one job per host at once; the error lists every host that failed, after `what`.
async fn on_all_hosts<F>(what: &str, jobs: impl IntoIterator<Item = F>) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let failed: Vec<String> = futures::future::join_all(jobs)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}:\n  {}", failed.join("\n  ")))
    }
}

/// `down --run RUN`: what the state file lists plus whatever carries the run's tag.
pub async fn down(api_args: &ApiArgs, out: &Path, run: &str) -> Result<(), String> {
    check_run_id(run)?;
    let st = RunState::load(out, run).ok();
    if st.is_none() {
        say(&format!(
            "[down] no state file for run {run}; looking for its resources by tag"
        ));
    }
    let region = api_args
        .region
        .clone()
        .or_else(|| st.as_ref().map(|s| s.region.clone()));
    let endpoint = api_args
        .endpoint_url
        .clone()
        .or_else(|| st.as_ref().and_then(|s| s.endpoint_url.clone()));
    let api = Api::connect(region.as_deref(), endpoint.as_deref()).await?;
    let mut instances: Vec<String> = st
        .as_ref()
        .map(|s| s.instance_ids.clone())
        .unwrap_or_default();
    for (id, _) in api.tagged_instances(Some(run)).await? {
        if !instances.contains(&id) {
            instances.push(id);
        }
    }
    if instances.is_empty() {
        say(&format!("[down] run {run}: no instances"));
    } else {
        say(&format!(
            "[down] run {run}: terminating {}",
            instances.join(", ")
        ));
        api.terminate(&instances).await?;
        say("[down] instances terminated");
    }
    let mut groups: Vec<String> = st
        .as_ref()
        .and_then(|s| s.security_group_id.clone())
        .into_iter()
        .collect();
    for (g, _) in api.tagged_security_groups(Some(run)).await? {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for g in &groups {
        api.delete_security_group(g).await?;
        say(&format!("[down] security group {g} deleted"));
    }
    let mut keys: Vec<String> = st
        .as_ref()
        .filter(|s| s.key_created)
        .and_then(|s| s.key_name.clone())
        .into_iter()
        .collect();
    for (k, _) in api.tagged_key_pairs(Some(run)).await? {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for k in &keys {
        api.delete_key_pair(k).await?;
        say(&format!("[down] key pair {k} deleted"));
    }
    if let Some(mut s) = st {
        s.phase = Phase::Down;
        s.save(out)?;
    }
    println!(
        "run {run} is down (nothing of it is left in region {})",
        api.region
    );
    Ok(())
}

/// `down --all-runs`: every tagged instance, group and key pair in the region.
pub async fn down_all(api_args: &ApiArgs, out: &Path) -> Result<(), String> {
    let api = Api::connect(api_args.region.as_deref(), api_args.endpoint_url.as_deref()).await?;
    let instances = api.tagged_instances(None).await?;
    let groups = api.tagged_security_groups(None).await?;
    let keys = api.tagged_key_pairs(None).await?;
    let mut runs: Vec<String> = instances
        .iter()
        .chain(&groups)
        .chain(&keys)
        .map(|(_, r)| r.clone())
        .collect();
    runs.sort();
    runs.dedup();
    say(&format!(
        "[down] region {}: {} instances, {} security groups, {} key pairs of {} runs ({})",
        api.region,
        instances.len(),
        groups.len(),
        keys.len(),
        runs.len(),
        runs.join(", ")
    ));
    let ids: Vec<String> = instances.into_iter().map(|(i, _)| i).collect();
    if !ids.is_empty() {
        say(&format!("[down] terminating {}", ids.join(", ")));
        api.terminate(&ids).await?;
    }
    for (g, r) in &groups {
        api.delete_security_group(g).await?;
        say(&format!("[down] security group {g} (run {r}) deleted"));
    }
    for (k, r) in &keys {
        api.delete_key_pair(k).await?;
        say(&format!("[down] key pair {k} (run {r}) deleted"));
    }
    for mut s in state::list_runs(out) {
        if s.phase != Phase::Down
            && s.region == api.region
            && (runs.contains(&s.run_id) || s.endpoint_url == api.endpoint)
        {
            s.phase = Phase::Down;
            s.save(out)?;
        }
    }
    println!("every bookstore run in region {} is down", api.region);
    Ok(())
}

/// `run`: up, deploy, test, collect, stop, down. Teardown runs whatever happened before:
/// an error, failed tests, Ctrl-C or SIGTERM. If this process is killed outright, the
/// state file lets `infra ec2 down` finish.
pub async fn run(a: RunArgs) -> Result<bool, String> {
    let run = a.up.sel.run.clone().unwrap_or_else(new_run_id);
    check_run_id(&run)?;
    let out = a.up.sel.output_dir.clone();
    let work = async {
        let st = up(&a.up, &run).await?;
        let st = deploy(&out, st, &a.deploy, None, None).await?;
        let ok = test(&out, &st, &a.deploy.books, a.load_seconds).await?;
        Ok::<bool, String>(ok)
    };
    let result = tokio::select! {
        r = work => r,
        _ = bookstore_common::server::termination() => Err("interrupted (Ctrl-C or SIGTERM)".to_string()),
    };
    match &result {
        Ok(true) => say("[run] tests passed; collecting logs and tearing down"),
        Ok(false) => say("[run] tests FAILED; collecting logs and tearing down"),
        Err(e) => say(&format!("[run] {e}\ninfra ec2: [run] tearing down (further Ctrl-C is ignored; if this process is killed, `infra ec2 down --run {run}` finishes)")),
    }
    let mut teardown_errors = Vec::new();
    match RunState::load(&out, &run) {
        Ok(st) => {
            if st.deployment.is_some() {
                if let Err(e) = collect(&out, &st).await {
                    teardown_errors.push(e);
                }
                if let Err(e) = stop(&st).await {
                    teardown_errors.push(e);
                }
            }
            if let Err(e) = down(&a.up.api, &out, &run).await {
                teardown_errors.push(format!(
                    "{e}\n  finish with: infra ec2 down --run {run} --output-dir {}",
                    out.display()
                ));
            }
        }
        Err(_) => say("[run] nothing was created; nothing to tear down"),
    }
    let teardown = if teardown_errors.is_empty() {
        Ok(())
    } else {
        Err(format!("teardown: {}", teardown_errors.join("\n")))
    };
    match (result, teardown) {
        (Ok(ok), Ok(())) => Ok(ok),
        (Ok(_), Err(t)) => Err(t),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(t)) => Err(format!("{e}\n{t}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, services: &[(&str, u32, u16)]) -> Host {
        Host {
            instance_id: id.into(),
            public_ip: None,
            private_ip: "10.0.0.1".into(),
            services: services
                .iter()
                .map(|&(k, i, p)| (k.to_string(), i, p))
                .collect(),
        }
    }

    fn state(hosts: Vec<Host>, ports_used: u16) -> RunState {
        RunState {
            run_id: "r".into(),
            created_unix: 0,
            phase: Phase::Deployed,
            region: "us-east-1".into(),
            endpoint_url: None,
            allow_cidr: "203.0.113.7/32".into(),
            instance_type: "t3.micro".into(),
            image_id: None,
            image_name: None,
            key_name: None,
            key_created: false,
            ssh_key: None,
            ssh_user: "admin".into(),
            security_group_id: None,
            instance_ids: Vec::new(),
            hosts,
            base_port: 8000,
            ports_used,
            cluster_token: "c".into(),
            admin_token: "a".into(),
            deployment: None,
        }
    }

    #[test]
    fn write_private_leaves_the_file_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        // A file left readable by everyone (an earlier run, a copy) is tightened too.
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "BOOKSTORE_ADMIN_TOKEN=x\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "BOOKSTORE_ADMIN_TOKEN=x\n"
        );
    }

    #[test]
    fn a_run_state_does_not_print_its_tokens() {
        let mut st = state(Vec::new(), 0);
        st.cluster_token = "cluster-token-0123456789".into();
        st.admin_token = "admin-token-0123456789ab".into();
        let shown = format!("{st:?}");
        assert!(!shown.contains("cluster-token-0123456789"), "{shown}");
        assert!(!shown.contains("admin-token-0123456789ab"), "{shown}");
    }

    #[test]
    fn a_new_replica_goes_to_the_least_loaded_host_without_its_kind() {
        let hosts = vec![
            host("a", &[("frontend", 0, 8000), ("catalog", 0, 8002)]),
            host(
                "b",
                &[("cache", 0, 8001), ("catalog", 1, 8003), ("order", 0, 8004)],
            ),
            host("c", &[("order", 1, 8005)]),
        ];
        assert_eq!(pick_host(&hosts, Kind::Catalog), 2);
        // Every host has an order replica but c: c is also the least loaded.
        assert_eq!(
            pick_host(&hosts, Kind::Order),
            0,
            "a has none and is lighter than b"
        );
        let full = vec![
            host("a", &[("catalog", 0, 8002), ("order", 0, 8004)]),
            host("b", &[("catalog", 1, 8003)]),
        ];
        assert_eq!(pick_host(&full, Kind::Catalog), 1, "else the least loaded");
    }

    #[test]
    fn ports_are_never_reused() {
        let hosts = vec![host("a", &[("frontend", 0, 8000), ("catalog", 2, 8006)])];
        assert_eq!(next_port(&state(hosts.clone(), 7)).unwrap(), 8007);
        // A removed service's port (8007) is not handed out again.
        assert_eq!(next_port(&state(hosts.clone(), 8)).unwrap(), 8008);
        // A state file from before `ports_used`: past the highest port in use.
        assert_eq!(next_port(&state(hosts, 0)).unwrap(), 8007);
        let mut st = state(vec![], 0);
        st.base_port = 65_535;
        st.ports_used = 1;
        assert!(next_port(&st).is_err());
    }

    #[test]
    fn a_fresh_deploy_renumbers_ids_with_gaps() {
        let hosts = vec![
            host("a", &[("catalog", 1, 8003), ("order", 0, 8004)]),
            host("b", &[("catalog", 2, 8006), ("order", 1, 8005)]),
        ];
        let mut st = state(hosts, 7);
        assert!(renumber(&mut st.clone(), true)
            .unwrap_err()
            .contains("without --keep-data"));
        renumber(&mut st, false).unwrap();
        assert_eq!(st.hosts[0].services[0], ("catalog".to_string(), 0, 8003));
        assert_eq!(st.hosts[1].services[0], ("catalog".to_string(), 1, 8006));
        assert_eq!(st.hosts[1].services[1], ("order".to_string(), 1, 8005));
        // Contiguous ids: nothing to do, with or without the data.
        renumber(&mut st, true).unwrap();
    }
}
