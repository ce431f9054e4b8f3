//! `bookstore-catalog`: see the crate docs; `--help` lists the flags.
bookstore_common::service_main!(
    "The catalog server of the bookstore.",
    bookstore_catalog::cli::Cli,
    bookstore_catalog::cli::launch
);
