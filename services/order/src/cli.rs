//! Command-line entry point shared by the service binary and `infra serve`.
use crate::{run, OrderConfig};
use bookstore_common::auth::Tokens;
use bookstore_common::cli::{ReplicaArgs, ServiceArgs};
use bookstore_common::config::Kind;

/// Flags of the order server.
#[derive(clap::Args, Debug, Clone)]
pub struct Cli {
    #[command(flatten)]
    common: ServiceArgs,
    #[command(flatten)]
    replica: ReplicaArgs,
}

/// Loads configuration, binds, and serves until Ctrl-C or SIGTERM.
pub async fn launch(args: Cli) -> Result<(), String> {
    bookstore_common::telemetry::init();
    let (cluster, listener) = args.common.load_and_bind(Kind::Order)?;
    let config = OrderConfig {
        id: args.common.id,
        cluster,
        tokens: Tokens::new(&args.common.cluster_token, None),
        output_dir: Some(args.common.output_dir.clone()),
        data_dir: args.replica.data_dir(Kind::Order, &args.common),
        url: None,
        tick: args.replica.tick(),
        workers: args.common.workers,
        retention: args.replica.retention(),
    };
    run(listener, config, bookstore_common::server::termination())
        .await
        .map_err(|e| e.to_string())
}
