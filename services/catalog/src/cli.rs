//! Command-line entry point shared by the service binary and `infra serve`.
use crate::{run, CatalogConfig};
use bookstore_common::auth::Tokens;
use bookstore_common::cli::{ReplicaArgs, ServiceArgs};
use bookstore_common::config::{load_books, Kind};
use bookstore_replication::node::Safety;
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
pub async fn launch(args: Cli) -> Result<(), String> {
    bookstore_common::telemetry::init();
    bookstore_common::batch::set_in_flight(args.common.batches.in_flight());
    let books = load_books(&args.books).map_err(|e| e.to_string())?;
    let (cluster, listener) = args.common.load_and_bind(Kind::Catalog)?;
    let config = CatalogConfig {
        id: args.common.id,
        books,
        cluster,
        tokens: Tokens::new(&args.common.cluster_token, None),
        output_dir: Some(args.common.output_dir.clone()),
        data_dir: args.replica.data_dir(Kind::Catalog, &args.common),
        url: None,
        lease: Duration::from_millis(args.cache_lease_ms),
        tick: args.replica.tick(),
        workers: args.common.workers,
        retention: args.replica.retention(),
        safety: Safety {
            sync_ack: !args.replica.unsafe_no_sync_ack,
            fencing: !args.replica.unsafe_no_fencing,
        },
    };
    run(listener, config, bookstore_common::server::termination())
        .await
        .map_err(|e| e.to_string())
}
