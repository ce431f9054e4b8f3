//! The `infra ec2` command line: every command's flags, and [`main`], which hands each
//! command to the module that does it.
// The flags' doc comments are their `--help` text, written for a terminal, not rustdoc.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]
use super::layout;
use super::state::{self, Phase};
use super::{deploy, down, onhost, ops, run, scale, up};
use bookstore_common::config::Kind;
use clap::{Args, Subcommand};
use std::path::PathBuf;

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
    /// Scale out: register one more catalog or order replica with the coordinators (over
    /// ssh, on a coordinator's host), start it on the least loaded host without one of its
    /// kind, and wait until it is synced. Nothing else restarts.
    Add(AddArgs),
    /// Scale in: retire replica ID of KIND with the coordinators (refused if no other
    /// replica holds every committed write), wait until the view no longer includes it,
    /// and stop it. Nothing else restarts.
    Remove(RemoveArgs),
    /// Terminate the instances, wait, delete the security group and the key pair.
    /// Idempotent; --all-runs cleans up every run's leftovers found by tag.
    Down(DownArgs),
    /// up, deploy, test, collect and down in one command; teardown happens on failure and
    /// on Ctrl-C too.
    Run(Box<RunArgs>),
    /// (What deploy runs on a coordinator's host.) Wait until every catalog and order
    /// replica is in the view and synced.
    #[command(hide = true)]
    Ready(ReadyArgs),
    /// (What add and remove run on a coordinator's host.) Wait until one replica is a
    /// synced member of its view, or is out of it.
    #[command(hide = true)]
    WaitMember(WaitMemberArgs),
    /// (What add and remove run on a coordinator's host, so the admin token stays off the
    /// network.) POST one admin route to the coordinator leader; prints the answer as one
    /// JSON line.
    #[command(hide = true)]
    Admin(AdminArgs),
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
    /// The run's cluster file (the coordinators are asked, wherever their leader is).
    #[arg(long, default_value = "cluster.csv")]
    pub cluster: std::path::PathBuf,
    #[arg(long, value_parser = replicated_kind)]
    pub kind: Kind,
    #[arg(long)]
    pub id: u32,
    #[arg(long, value_enum)]
    pub until: Until,
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    #[arg(long, env = "BOOKSTORE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: String,
}

#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The run's cluster file (its coordinators are asked, wherever their leader is).
    #[arg(long, default_value = "cluster.csv")]
    pub cluster: std::path::PathBuf,
    /// The admin route, e.g. `/admin/cluster/unregister?kind=catalog&id=0`.
    pub path: String,
    #[arg(long, env = "BOOKSTORE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    #[arg(long, env = "BOOKSTORE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: String,
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
    /// The run's cluster file (the coordinators are asked, wherever their leader is).
    #[arg(long, default_value = "cluster.csv")]
    pub cluster: std::path::PathBuf,
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Catalog replicas to wait for.
    #[arg(long, default_value_t = layout::REPLICAS)]
    pub catalogs: u32,
    /// Order replicas to wait for.
    #[arg(long, default_value_t = layout::REPLICAS)]
    pub orders: u32,
    #[arg(long, env = "BOOKSTORE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: String,
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
    /// Number of instances. Each coordinator gets a host of its own, with a frontend
    /// beside it; the cache, 2 catalogs and 2 orders are spread over all of them, replicas
    /// of one kind on different hosts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub hosts: u32,
    /// Coordinators (the Raft group that decides views): 3 survive the loss of any one
    /// host; 1 is for small runs (a lost coordinator host stops view changes). Needs at
    /// least as many hosts.
    #[arg(long, default_value_t = 3, value_parser = coordinator_count)]
    pub coordinators: u32,
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
    /// ports accept. The other service ports accept members of the group only.
    #[arg(long)]
    pub allow: String,
    /// First service port: the frontends take the first ones, the others follow.
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

fn coordinator_count(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!(
            "{s:?}: a coordinator group has 1, 3 or 5 members (3 survive the loss of one host)"
        )),
    }
}

/// Runs a command; `Ok(false)` when tests ran and failed.
pub async fn main(cmd: Ec2Command) -> anyhow::Result<bool> {
    let deployed =
        |sel: &SelectArgs| state::pick_run(&sel.output_dir, sel.run.as_deref(), &[Phase::Deployed]);
    let touched = |sel: &SelectArgs| {
        state::pick_run(
            &sel.output_dir,
            sel.run.as_deref(),
            &[Phase::Deployed, Phase::Up],
        )
    };
    match cmd {
        Ec2Command::Up(a) => {
            let run = a.sel.run.clone().unwrap_or_else(super::new_run_id);
            up::up(&a, &run).await.map(|_| true)
        }
        Ec2Command::Deploy(a) => {
            let st = touched(&a.sel)?;
            let (user, key) = (a.ssh_user.as_deref(), a.ssh_key.as_deref());
            deploy::deploy(&a.sel.output_dir, st, &a.opts, user, key)
                .await
                .map(|_| true)
        }
        Ec2Command::Test(a) => {
            let st = deployed(&a.sel)?;
            ops::test(&a.sel.output_dir, &st, &a.books, a.load_seconds).await
        }
        Ec2Command::Collect(a) => ops::collect(&a.output_dir, &touched(&a)?)
            .await
            .map(|_| true),
        Ec2Command::Stop(a) => ops::stop(&touched(&a)?).await.map(|_| true),
        Ec2Command::Down(a) => down::command(&a).await.map(|_| true),
        Ec2Command::Add(a) => {
            let st = deployed(&a.sel)?;
            scale::add(&a.sel.output_dir, st, &a.api, a.kind, a.wait_seconds)
                .await
                .map(|_| true)
        }
        Ec2Command::Remove(a) => {
            let st = deployed(&a.sel)?;
            scale::remove(&a.sel.output_dir, st, a.kind, a.id, a.wait_seconds)
                .await
                .map(|_| true)
        }
        Ec2Command::Run(a) => run::run(*a).await,
        Ec2Command::Ready(a) => onhost::ready(&a).await.map(|_| true),
        Ec2Command::WaitMember(a) => onhost::wait_member(&a).await.map(|_| true),
        Ec2Command::Admin(a) => onhost::admin(&a).await.map(|_| true),
    }
}
