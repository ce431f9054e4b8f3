//! `bookstore-coordinator`: see the crate docs; `--help` lists the flags.
use clap::Parser;

/// A coordinator of the bookstore: one member of the Raft group that decides views.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    cli: bookstore_coordinator::cli::Cli,
}

#[tokio::main]
async fn main() {
    if let Err(e) = bookstore_coordinator::cli::launch(Args::parse().cli).await {
        bookstore_common::cli::fail(e);
    }
}
