//! Command-line entry point shared by the service binary and `infra serve`.
use crate::{run, FrontendConfig};
use bookstore_common::auth::Tokens;
use bookstore_common::cli::LaunchError;
use bookstore_common::cli::ServiceArgs;
use bookstore_common::config::Kind;

/// Flags of the frontend server.
#[derive(clap::Args, Debug, Clone)]
pub struct Cli {
    #[command(flatten)]
    common: ServiceArgs,
    /// The cluster's tick in milliseconds: the routers ask the coordinators for the
    /// views every two ticks.
    #[arg(long, default_value_t = 50, env = "BOOKSTORE_TICK_MS")]
    tick_ms: u64,
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
pub async fn launch(args: Cli) -> Result<(), LaunchError> {
    bookstore_common::telemetry::init();
    bookstore_common::batch::set_in_flight(args.common.batches.in_flight());
    if let Some(t) = args.admin_token.as_deref().filter(|t| !t.is_empty()) {
        bookstore_common::auth::check_token("admin token", t)?;
    }
    let (cluster, listener) = args.common.load_and_bind(Kind::Frontend)?;
    let config = FrontendConfig {
        id: args.common.id,
        cluster,
        tokens: Tokens::new(&args.common.cluster_token, args.admin_token.as_deref()),
        output_dir: Some(args.common.output_dir.clone()),
        tick: std::time::Duration::from_millis(args.tick_ms.max(1)),
        workers: args.common.workers,
        near_entries: args.near_entries,
    };
    run(listener, config, bookstore_common::server::termination()).await?;
    Ok(())
}
