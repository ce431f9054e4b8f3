//! Command-line entry point shared by the service binary and `infra serve`.
use crate::{run, CatalogConfig};
use bookstore_common::cli::LaunchError;
use bookstore_common::cli::{ReplicaArgs, ServiceArgs};
use bookstore_common::config::{load_books, Kind};
use bookstore_replication::control::ReplicaConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of the catalog server.
#[derive(clap::Args, Debug, Clone)]
pub struct Cli {
    #[command(flatten)]
    common: ServiceArgs,
    /// Books CSV (item_number,title,topic,stock,cost).
    #[arg(long, default_value = bookstore_common::config::DEFAULT_BOOKS_FILE, env = "BOOKSTORE_BOOKS")]
    books: PathBuf,
    #[command(flatten)]
    replica: ReplicaArgs,
    /// Cache lease in milliseconds (how long a write waits when the cache is unreachable).
    #[arg(long, default_value_t = 1000, env = "BOOKSTORE_CACHE_LEASE_MS")]
    cache_lease_ms: u64,
}

/// Loads configuration, binds, and serves until Ctrl-C or SIGTERM.
pub async fn launch(args: Cli) -> Result<(), LaunchError> {
    bookstore_common::telemetry::init();
    bookstore_common::batch::set_in_flight(args.common.batches.in_flight());
    let books = load_books(&args.books)?;
    let (cluster, listener) = args.common.load_and_bind(Kind::Catalog)?;
    let config = CatalogConfig {
        replica: ReplicaConfig::from_args(Kind::Catalog, cluster, &args.common, &args.replica),
        books,
        lease: Duration::from_millis(args.cache_lease_ms),
    };
    run(listener, config, bookstore_common::server::termination()).await?;
    Ok(())
}
