//! Running the bookstore: `infra local up` starts every server of a cluster file as its
//! own OS process on this machine and supervises them; `infra local test` runs the
//! seed's scenarios against a cluster.
//!
//! - [`local`]: process supervision (spawn, health wait, clean stop, no orphans), scale
//!   out and in (`add`, `remove`) and `rolling_restart`.
//! - [`admin`]: the admin client (an admin route, with the admin token, to the
//!   coordinator leader), which `local` calls here and `ec2` calls on a coordinator's host.
//! - [`control`]: the control API of a running `local up` that `local add|remove|
//!   rolling-restart` call.
//! - [`haproxy`]: HAProxy in front of N frontends (`local up --frontends N`).
//! - [`membership`]: one reading of a replica's standing in its view (for `add`/`remove`).
//! - [`scenarios`]: the seed's client scenarios with a pass/fail report.
//! - `ec2` (feature `ec2`): `infra ec2 up|deploy|test|collect|stop|add|remove|down|run` on
//!   EC2 (aws-sdk-ec2).
pub mod admin;
pub mod control;
#[cfg(feature = "ec2")]
pub mod ec2;
pub mod haproxy;
pub mod local;
pub mod membership;
pub mod scenarios;
