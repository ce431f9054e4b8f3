//! `bookstore-frontend`: the public REST API. See the crate docs.
use bookstore_common::auth::Tokens;
use bookstore_common::cli::{fail, ServiceArgs};
use bookstore_common::config::Kind;
use bookstore_frontend::{run, FrontendConfig};
use clap::Parser;

/// The public frontend of the bookstore.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: ServiceArgs,
    /// Token of the admin routes (`Authorization: Bearer ...`); unset = admin routes refuse all.
    #[arg(long, env = "BOOKSTORE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    bookstore_common::telemetry::init();
    let (cluster, listener) = args
        .common
        .load_and_bind(Kind::Frontend)
        .unwrap_or_else(|e| fail(e));
    let config = FrontendConfig {
        id: args.common.id,
        cluster,
        tokens: Tokens::new(&args.common.cluster_token, args.admin_token.as_deref()),
        output_dir: Some(args.common.output_dir.clone()),
        workers: args.common.workers,
    };
    if let Err(e) = run(listener, config, bookstore_common::server::termination()).await {
        fail(e);
    }
}
