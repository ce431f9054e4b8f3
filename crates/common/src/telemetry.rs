//! Structured tracing to stderr; `RUST_LOG` sets the filter (default `info`, with
//! openraft's own chatter, votes and unreachable peers, kept to errors).
use tracing_subscriber::EnvFilter;

/// Installs the subscriber once per process (later calls do nothing).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
