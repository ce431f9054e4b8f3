//! `bookstore-order`: see the crate docs; `--help` lists the flags.
use clap::Parser;

/// The order server of the bookstore.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    cli: bookstore_order::cli::Cli,
}

#[tokio::main]
async fn main() {
    if let Err(e) = bookstore_order::cli::launch(Args::parse().cli).await {
        bookstore_common::cli::fail(e);
    }
}
