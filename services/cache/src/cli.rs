//! Command-line entry point shared by the service binary and `infra serve`.
use crate::{run, CacheConfig};
use bookstore_common::auth::Tokens;
use bookstore_common::cli::LaunchError;
use bookstore_common::cli::ServiceArgs;
use bookstore_common::config::Kind;
use std::time::Duration;

/// Flags of the cache server.
#[derive(clap::Args, Debug, Clone)]
pub struct Cli {
    #[command(flatten)]
    common: ServiceArgs,
    /// How often to renew the lease from the catalog, in milliseconds.
    #[arg(long, default_value_t = 200, env = "BOOKSTORE_CACHE_RENEW_MS")]
    renew_ms: u64,
    /// The most answers the cache holds; a new one beyond that evicts another.
    #[arg(long, default_value_t = 200_000, env = "BOOKSTORE_CACHE_MAX_ENTRIES")]
    max_entries: usize,
}

/// Loads configuration, binds, and serves until Ctrl-C or SIGTERM.
pub async fn launch(args: Cli) -> Result<(), LaunchError> {
    bookstore_common::telemetry::init();
    let (cluster, listener) = args.common.load_and_bind(Kind::Cache)?;
    let config = CacheConfig {
        cluster,
        tokens: Tokens::new(&args.common.cluster_token, None),
        output_dir: Some(args.common.output_dir.clone()),
        renew_every: Duration::from_millis(args.renew_ms),
        max_entries: args.max_entries,
        workers: args.common.workers,
    };
    run(listener, config, bookstore_common::server::termination()).await?;
    Ok(())
}
