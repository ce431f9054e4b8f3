//! Command-line entry point shared by the service binary and `infra serve`.
use crate::run;
use bookstore_common::cli::LaunchError;
use bookstore_common::cli::{ReplicaArgs, ServiceArgs};
use bookstore_common::config::Kind;
use bookstore_replication::control::ReplicaConfig;

/// Flags of the order server.
#[derive(clap::Args, Debug, Clone)]
pub struct Cli {
    #[command(flatten)]
    common: ServiceArgs,
    #[command(flatten)]
    replica: ReplicaArgs,
}

/// Loads configuration, binds, and serves until Ctrl-C or SIGTERM.
pub async fn launch(args: Cli) -> Result<(), LaunchError> {
    bookstore_common::telemetry::init();
    bookstore_common::batch::set_in_flight(args.common.batches.in_flight());
    let (cluster, listener) = args.common.load_and_bind(Kind::Order)?;
    let config = ReplicaConfig::from_args(Kind::Order, cluster, &args.common, &args.replica);
    run(listener, config, bookstore_common::server::termination()).await?;
    Ok(())
}
