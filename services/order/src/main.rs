//! `bookstore-order`: see the crate docs; `--help` lists the flags.
bookstore_common::service_main!(
    "The order server of the bookstore.",
    bookstore_order::cli::Cli,
    bookstore_order::cli::launch
);
