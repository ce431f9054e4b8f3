//! Command-line entry point shared by the coordinator binary and `infra serve`.
use crate::{run, CoordinatorConfig};
use bookstore_common::auth::Tokens;
use bookstore_common::cli::LaunchError;
use bookstore_common::cli::ServiceArgs;
use bookstore_common::config::Kind;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of a coordinator.
#[derive(clap::Args, Debug, Clone)]
pub struct Cli {
    #[command(flatten)]
    common: ServiceArgs,
    /// Raft log, vote and snapshots; default `<output-dir>/data/coordinator<id>`.
    #[arg(long, env = "BOOKSTORE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// View-service tick in milliseconds: a replica silent for 6 ticks is dead, and a
    /// primary's read lease lasts 5. Every server of a cluster must use the same tick.
    #[arg(long, default_value_t = 50, env = "BOOKSTORE_TICK_MS")]
    tick_ms: u64,
    /// Raft heartbeat interval in milliseconds; an election starts after 3 to 6 of them
    /// without a leader (plus openraft's leader lease of 6).
    #[arg(long, default_value_t = 50, env = "BOOKSTORE_RAFT_HEARTBEAT_MS")]
    raft_heartbeat_ms: u64,
    /// Start empty and wait to be added to a running group (`infra local add
    /// coordinator` does this); without it, a coordinator listed in the cluster file forms
    /// the initial group with the others listed there.
    #[arg(long)]
    join: bool,
    /// A network where replicas may be registered besides the cluster file's hosts, e.g.
    /// 10.0.0.0/16 (repeat, or separate with commas).
    #[arg(long, env = "BOOKSTORE_MEMBER_CIDRS", value_delimiter = ',')]
    member_cidr: Vec<ipnet::IpNet>,
    /// Admin token for `/admin/*` (membership changes).
    #[arg(long, env = "BOOKSTORE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Mutation switch: a new leader declares replicas dead without waiting out the read
    /// leases its predecessors may have granted. Only for proving that the tests catch
    /// its removal; never in production.
    #[arg(long, hide = true, env = "BOOKSTORE_UNSAFE_NO_LEASE_WAIT",
          value_parser = clap::builder::FalseyValueParser::new())]
    unsafe_no_lease_wait: bool,
}

/// Loads configuration, binds, and serves until Ctrl-C or SIGTERM.
pub async fn launch(args: Cli) -> Result<(), LaunchError> {
    bookstore_common::telemetry::init();
    let (cluster, listener) = args.common.load_and_bind(Kind::Coordinator)?;
    let initial = cluster
        .servers(Kind::Coordinator)
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u64, e.url()))
        .collect();
    let addr = listener.local_addr()?;
    let url = match &args.common.listen {
        Some(l) => format!("http://{l}"),
        None => cluster
            .server(Kind::Coordinator, args.common.id)
            .map(|e| e.url())
            .unwrap_or_else(|| format!("http://{addr}")),
    };
    let kinds = Kind::REPLICATED
        .iter()
        .map(|k| (k.name().to_string(), cluster.urls(*k)))
        .collect();
    let mut member_hosts: Vec<String> = cluster.all().into_iter().map(|(_, _, e)| e.host).collect();
    member_hosts.sort();
    member_hosts.dedup();
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        args.common
            .output_dir
            .join("data")
            .join(format!("coordinator{}", args.common.id))
    });
    let lease_wait = !args.unsafe_no_lease_wait;
    let config = CoordinatorConfig {
        id: u64::from(args.common.id),
        url,
        initial,
        join: args.join,
        kinds,
        member_hosts,
        member_cidrs: args.member_cidr.clone(),
        data_dir,
        tokens: Tokens::new(&args.common.cluster_token, args.admin_token.as_deref()),
        tick: Duration::from_millis(args.tick_ms.max(1)),
        heartbeat: Duration::from_millis(args.raft_heartbeat_ms.max(1)),
        lease_wait,
        workers: args.common.workers,
    };
    run(listener, config, bookstore_common::server::termination())
        .await
        .map_err(|e| LaunchError::Service(e.into()))
}
