//! `bookstore-cache`: see the crate docs; `--help` lists the flags.
bookstore_common::service_main!(
    "The cache server of the bookstore.",
    bookstore_cache::cli::Cli,
    bookstore_cache::cli::launch
);
