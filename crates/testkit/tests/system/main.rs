//! System tests: the services together on in-process clusters, one binary.
//! - `api`: the public and internal APIs end to end;
//! - `cache`: no stale read after an acknowledged write;
//! - `contract`: the OpenAPI documents against the routers, and docs/security.md's table;
//! - `decode_prop`: property tests of the services' decoders of replicated data;
//! - `disk_failure`: a replica whose disk fails stops serving and says so;
//! - `idempotency`: `Idempotency-Key` end to end;
//! - `observability`: `/cluster`, `/metrics`, `/status.json` and `/status`;
//! - `oplog`: no parameter forges an operation-log line;
//! - `peer_trust`: replication messages from non-peers are refused;
//! - `schemathesis`: schemathesis against the running servers;
//! - `slow_clients`: slowloris does not starve normal clients;
//! - `status_bounds`: the public `/status.json` stays bounded under load;
//! - `token_logging`: no token reaches the log (in its own process: it installs the
//!   global log subscriber).
mod api;
mod cache;
mod contract;
mod decode_prop;
mod disk_failure;
mod idempotency;
mod observability;
mod oplog;
mod peer_trust;
mod schemathesis;
mod slow_clients;
mod status_bounds;
mod token_logging;
