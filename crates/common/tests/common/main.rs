//! `bookstore-common`'s integration tests, one binary:
//! - `client`: the internal HTTP client against hostile or broken servers;
//! - `limits`: every limit of `server::serve_with`, over a real socket;
//! - `nofile`: the open-file limit a server raises (in its own process: the limit is the
//!   process's);
//! - `oplog`: the operation logs against forged lines, floods and full queues;
//! - `parsers_prop`: property tests of every parser of outside data.
mod client;
mod limits;
mod nofile;
mod oplog;
mod parsers_prop;
