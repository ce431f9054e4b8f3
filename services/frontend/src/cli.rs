//! Command-line entry point shared by the service binary and `infra serve`.
use crate::{run, FrontendConfig};
use bookstore_common::auth::Tokens;
use bookstore_common::cli::{ReplicaArgs, ServiceArgs};
use bookstore_common::config::Kind;

/// Flags of the frontend server.
#[derive(clap::Args, Debug, Clone)]
pub struct Cli {
    #[command(flatten)]
    common: ServiceArgs,
    /// Frontend 0 hosts the view services: `--data-dir` keeps their state, `--tick-ms`
    /// paces them (a replica silent for 6 ticks is dead).
    #[command(flatten)]
    replica: ReplicaArgs,
    /// Token of the admin routes (`Authorization: Bearer ...`; at least 16 characters);
    /// unset = admin routes refuse all.
    #[arg(long, env = "BOOKSTORE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<bookstore_common::auth::Secret>,
    /// The most answers this frontend's near cache holds (0: no near cache; every hit
    /// then asks the cache service).
    #[arg(long, default_value_t = 100_000, env = "BOOKSTORE_NEAR_ENTRIES")]
    near_entries: usize,
}

/// Loads configuration, binds, and serves until Ctrl-C or SIGTERM.
pub async fn launch(args: Cli) -> Result<(), String> {
    bookstore_common::telemetry::init();
    if let Some(t) = args.admin_token.as_deref().filter(|t| !t.is_empty()) {
        bookstore_common::auth::check_token("admin token", t)?;
    }
    let (cluster, listener) = args.common.load_and_bind(Kind::Frontend)?;
    let config = FrontendConfig {
        id: args.common.id,
        cluster,
        tokens: Tokens::new(&args.common.cluster_token, args.admin_token.as_deref()),
        output_dir: Some(args.common.output_dir.clone()),
        data_dir: args.replica.data_dir(Kind::Frontend, &args.common),
        tick: args.replica.tick(),
        workers: args.common.workers,
        near_entries: args.near_entries,
    };
    run(listener, config, bookstore_common::server::termination())
        .await
        .map_err(|e| e.to_string())
}
