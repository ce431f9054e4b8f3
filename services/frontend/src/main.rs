//! `bookstore-frontend`: see the crate docs; `--help` lists the flags.
bookstore_common::service_main!(
    "The frontend server of the bookstore.",
    bookstore_frontend::cli::Cli,
    bookstore_frontend::cli::launch
);
