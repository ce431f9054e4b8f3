//! `bookstore-order`: one order replica. See the crate docs.
use bookstore_common::auth::Tokens;
use bookstore_common::cli::{fail, ServiceArgs};
use bookstore_common::config::Kind;
use bookstore_order::{run, OrderConfig};
use clap::Parser;

/// An order replica of the bookstore.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    bookstore_common::telemetry::init();
    let (cluster, listener) = args
        .common
        .load_and_bind(Kind::Order)
        .unwrap_or_else(|e| fail(e));
    let config = OrderConfig {
        id: args.common.id,
        cluster,
        tokens: Tokens::new(&args.common.cluster_token, None),
        output_dir: Some(args.common.output_dir.clone()),
        workers: args.common.workers,
    };
    if let Err(e) = run(listener, config, bookstore_common::server::termination()).await {
        fail(e);
    }
}
