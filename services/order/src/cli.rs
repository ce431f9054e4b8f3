//! Command-line entry point shared by the service binary and `infra serve`.
use crate::{run, OrderConfig};
use bookstore_common::auth::Tokens;
use bookstore_common::cli::{ReplicaArgs, ServiceArgs};
use bookstore_common::config::Kind;
use bookstore_replication::node::Safety;

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
    bookstore_common::batch::set_in_flight(args.common.batches.in_flight());
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
        safety: Safety {
            sync_ack: !args.replica.unsafe_no_sync_ack,
            fencing: !args.replica.unsafe_no_fencing,
        },
    };
    run(listener, config, bookstore_common::server::termination())
        .await
        .map_err(|e| e.to_string())
}
