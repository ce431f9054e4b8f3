//! `bookstore-coordinator`: see the crate docs; `--help` lists the flags.
bookstore_common::service_main!(
    "A coordinator of the bookstore: one member of the Raft group that decides views.",
    bookstore_coordinator::cli::Cli,
    bookstore_coordinator::cli::launch
);
