//! Code shared by every bookstore service.
//!
//! - [`types`]: the wire types of the public and internal APIs.
//! - [`config`]: the cluster file, the books CSV and environment settings.
//! - [`error`]: [`ApiError`], the one error enum of the HTTP boundary, mapped to status codes.
//! - [`files`]: atomic file replacement (temp file, fsync, rename), 0600 for token files.
//! - [`params`]: each route's query as a serde struct (the [`params::Query`] extractor),
//!   with errors that name the parameter.
//! - [`cli`]: the flags every server shares (`ServiceArgs`, `ReplicaArgs`, `BatchArgs`).
//! - [`router`]: calling the primary of a replicated service, following its view, and
//!   batching calls to it.
//! - [`auth`]: cluster-token and admin-token checks (constant time).
//! - [`batch`]: coalescing concurrent calls to another service into one call.
//! - [`cache_store`]: cache entries and their version rules, used by the cache service
//!   and by each frontend's near cache.
//! - [`client`]: the pooled HTTP client services use to call each other.
//! - [`clock`]: milliseconds since the Unix epoch, and UTC time stamps (`time` crate).
//! - [`coordinators`]: finding and calling the coordinator group's leader.
//! - [`idempotency`]: the table of `Idempotency-Key`s the replicated services keep, by age.
//! - [`metrics`]: Prometheus `/metrics` (per-route request counts and latency histograms,
//!   downstream tiers, service gauges) and the middleware that records requests.
//! - [`oplog`]: the seed's one-operation-a-line logs, written off the request path.
//! - [`server`]: running an actix app on an already-bound listener with a shutdown future,
//!   and the limits every server enforces ([`server::Limits`]).
//! - [`openapi`]: assembling and serving the OpenAPI documents (utoipa).
//! - [`tasks`]: a server's background tasks, cancelled and waited for at its stop.
//! - [`telemetry`]: structured tracing to stderr.
//! - [`timing`]: `Server-Timing` headers (own time and each downstream call, nested
//!   callees folded in as `callee.call`).
pub mod auth;
pub mod batch;
pub mod cache_store;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod coordinators;
pub mod error;
pub mod files;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod oplog;
pub mod params;
pub mod router;
pub mod server;
pub mod tasks;
pub mod telemetry;
pub mod timing;
pub mod types;

pub use error::ApiError;
