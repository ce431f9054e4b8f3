//! Running the bookstore: `infra local up` starts every server of a cluster file as its
//! own OS process on this machine and supervises them; `infra local test` runs the
//! seed's scenarios against a cluster.
//!
//! - [`local`]: process supervision (spawn, health wait, clean stop, no orphans).
//! - [`scenarios`]: the seed's client scenarios with a pass/fail report.
pub mod local;
pub mod scenarios;
