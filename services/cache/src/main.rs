//! `bookstore-cache`: the cache server. See the crate docs.
use bookstore_cache::{run, CacheConfig};
use bookstore_common::auth::Tokens;
use bookstore_common::cli::{fail, ServiceArgs};
use bookstore_common::config::Kind;
use clap::Parser;
use std::time::Duration;

/// The cache server of the bookstore.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
    /// How often to renew the lease from the catalog, in milliseconds.
    #[arg(long, default_value_t = 200, env = "BOOKSTORE_CACHE_RENEW_MS")]
    renew_ms: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    bookstore_common::telemetry::init();
    let (cluster, listener) = args
        .common
        .load_and_bind(Kind::Cache)
        .unwrap_or_else(|e| fail(e));
    let config = CacheConfig {
        cluster,
        tokens: Tokens::new(&args.common.cluster_token, None),
        output_dir: Some(args.common.output_dir.clone()),
        renew_every: Duration::from_millis(args.renew_ms),
        workers: args.common.workers,
    };
    if let Err(e) = run(listener, config, bookstore_common::server::termination()).await {
        fail(e);
    }
}
