//! `bookstore-catalog`: one catalog replica. See the crate docs.
use bookstore_catalog::{run, CatalogConfig};
use bookstore_common::auth::Tokens;
use bookstore_common::cli::{fail, ServiceArgs};
use bookstore_common::config::{load_books, Kind};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// A catalog replica of the bookstore.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
    /// Books CSV (item_number,title,topic,stock,cost).
    #[arg(long, default_value = bookstore_common::config::DEFAULT_BOOKS_FILE, env = "BOOKSTORE_BOOKS")]
    books: PathBuf,
    /// Cache lease in milliseconds (how long a write waits when the cache is unreachable).
    #[arg(long, default_value_t = 1000, env = "BOOKSTORE_CACHE_LEASE_MS")]
    cache_lease_ms: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    bookstore_common::telemetry::init();
    let books = load_books(&args.books).unwrap_or_else(|e| fail(e));
    let (cluster, listener) = args
        .common
        .load_and_bind(Kind::Catalog)
        .unwrap_or_else(|e| fail(e));
    let config = CatalogConfig {
        id: args.common.id,
        books,
        cluster,
        tokens: Tokens::new(&args.common.cluster_token, None),
        output_dir: Some(args.common.output_dir.clone()),
        lease: Duration::from_millis(args.cache_lease_ms),
        workers: args.common.workers,
    };
    if let Err(e) = run(listener, config, bookstore_common::server::termination()).await {
        fail(e);
    }
}
