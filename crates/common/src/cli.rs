//! Command-line flags every service binary shares (each also an environment variable).
use crate::config::{ClusterConfig, Kind};
use std::net::TcpListener;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Replica id: the position of this server among the lines of its kind in the cluster file.
    #[arg(long, default_value_t = 0, env = "BOOKSTORE_ID")]
    pub id: u32,
    /// Cluster file (`kind,host:port` a line).
    #[arg(long, default_value = crate::config::DEFAULT_CLUSTER_FILE, env = "BOOKSTORE_CLUSTER")]
    pub cluster: PathBuf,
    /// Directory for the operation logs.
    #[arg(long, default_value = crate::config::DEFAULT_OUTPUT_DIR, env = "BOOKSTORE_OUTPUT_DIR")]
    pub output_dir: PathBuf,
    /// Token every internal call must carry (X-Cluster-Token); at least 16 characters.
    #[arg(long, env = "BOOKSTORE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: crate::auth::Secret,
    /// Listen here instead of the cluster file's address for this server.
    #[arg(long)]
    pub listen: Option<String>,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2, env = "BOOKSTORE_WORKERS")]
    pub workers: usize,
    #[command(flatten)]
    pub batches: BatchArgs,
}

/// How many batches a server may have on their way to another at once (frontend -> order
/// buys, order -> catalog stock changes, catalog -> cache invalidations).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BatchArgs {
    /// For every batcher of this server (default 2; 1 for the frontend's buys).
    #[arg(long, env = "BOOKSTORE_BATCHES_IN_FLIGHT", value_parser = clap::value_parser!(u64).range(1..))]
    pub batches_in_flight: Option<u64>,
    /// For the frontend's buys to the order service (default 1).
    #[arg(long, env = "BOOKSTORE_BATCHES_IN_FLIGHT_BUYS", value_parser = clap::value_parser!(u64).range(1..))]
    pub batches_in_flight_buys: Option<u64>,
    /// For the order service's stock changes to the catalog.
    #[arg(long, env = "BOOKSTORE_BATCHES_IN_FLIGHT_UPDATES", value_parser = clap::value_parser!(u64).range(1..))]
    pub batches_in_flight_updates: Option<u64>,
    /// For the catalog's invalidations to the cache.
    #[arg(long, env = "BOOKSTORE_BATCHES_IN_FLIGHT_INVALIDATIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub batches_in_flight_invalidations: Option<u64>,
}

impl BatchArgs {
    /// These flags as the process-wide setting [`crate::batch::set_in_flight`] takes.
    pub fn in_flight(&self) -> crate::batch::InFlight {
        let by_name = [
            ("buys", self.batches_in_flight_buys),
            ("updates", self.batches_in_flight_updates),
            ("invalidations", self.batches_in_flight_invalidations),
        ]
        .into_iter()
        .filter_map(|(n, v)| Some((n.to_string(), v? as usize)))
        .collect();
        crate::batch::InFlight {
            all: self.batches_in_flight.map(|v| v as usize),
            by_name,
        }
    }
}

impl ServiceArgs {
    /// Loads the cluster file and binds this server's address.
    pub fn load_and_bind(&self, kind: Kind) -> Result<(ClusterConfig, TcpListener), LaunchError> {
        let cluster = ClusterConfig::load(&self.cluster)?;
        let addr = match &self.listen {
            Some(a) => a.clone(),
            None => cluster
                .server(kind, self.id)
                .ok_or_else(|| LaunchError::NoSuchServer {
                    file: self.cluster.clone(),
                    kind,
                    id: self.id,
                    listed: cluster.servers(kind).len(),
                })?
                .addr(),
        };
        crate::auth::check_token("cluster token", &self.cluster_token)?;
        let listener = crate::server::bind(&addr, &format!("{kind} {}", self.id))?;
        Ok((cluster, listener))
    }
}

/// Why a server did not start, or stopped with an error; printed as the binary's message.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{}: no {kind} with id {id} (it lists {listed})", file.display())]
    NoSuchServer {
        file: PathBuf,
        kind: Kind,
        id: u32,
        listed: usize,
    },
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    #[error(transparent)]
    Bind(#[from] crate::server::BindError),
    /// Serving failed (the runtime, a listener).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A service's own error (the coordinator's Raft group, say).
    #[error("{0}")]
    Service(Box<dyn std::error::Error + Send + Sync>),
}

/// Prints `error: ...` and exits with status 2.
pub fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// The whole `main.rs` of a service binary: a `main` that parses the service's flags
/// (`$cli`, a `clap::Args`; `--help` shows `$about`) and runs `$launch` with them on a
/// tokio runtime, exiting with [`fail`] on an error.
#[macro_export]
macro_rules! service_main {
    ($about:literal, $cli:path, $launch:path) => {
        #[derive(clap::Parser, Debug)]
        #[command(version, about = $about)]
        struct Args {
            #[command(flatten)]
            cli: $cli,
        }

        #[tokio::main]
        async fn main() {
            if let Err(e) = $launch(<Args as clap::Parser>::parse().cli).await {
                $crate::cli::fail(e);
            }
        }
    };
}

/// Flags of a replicated server (catalog, order).
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicaArgs {
    /// Data directory of this replica (WAL and snapshots); default `<output-dir>/data/<kind><id>`.
    #[arg(long, env = "BOOKSTORE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Replication tick in milliseconds (heartbeats every 2 ticks, failure suspected after 10).
    /// Every server of a cluster must use the same tick: a primary's read lease (5 ticks)
    /// must end before the view service declares it dead (6 of frontend 0's ticks).
    #[arg(long, default_value_t = 50, env = "BOOKSTORE_TICK_MS")]
    pub tick_ms: u64,
    /// How long each Idempotency-Key is kept, in seconds from its first use (a retry
    /// within it never buys twice). Use the same on every replica of a kind.
    #[arg(long, default_value_t = 86_400, env = "BOOKSTORE_IDEMPOTENCY_RETENTION_S",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_retention_s: u64,
    /// The most Idempotency-Keys a replica keeps; past it, requests with a new key are
    /// refused (503) until old ones age out. Use the same on every replica of a kind.
    #[arg(long, default_value_t = crate::idempotency::DEFAULT_MAX_KEYS,
          env = "BOOKSTORE_IDEMPOTENCY_MAX_KEYS")]
    pub idempotency_max_keys: usize,
    /// Mutation switch: acknowledge a write before the backups hold it. Only for proving
    /// that the fault tests and checkers catch its removal; never in production.
    #[arg(long, hide = true, env = "BOOKSTORE_UNSAFE_NO_SYNC_ACK",
          value_parser = clap::builder::FalseyValueParser::new())]
    pub unsafe_no_sync_ack: bool,
    /// Mutation switch: accept messages from an older epoch. Only for proving that the
    /// tests catch its removal; never in production.
    #[arg(long, hide = true, env = "BOOKSTORE_UNSAFE_NO_FENCING",
          value_parser = clap::builder::FalseyValueParser::new())]
    pub unsafe_no_fencing: bool,
}

impl ReplicaArgs {
    pub fn data_dir(&self, kind: Kind, common: &ServiceArgs) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            common
                .output_dir
                .join("data")
                .join(format!("{kind}{}", common.id))
        })
    }

    pub fn tick(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.tick_ms.max(1))
    }

    pub fn retention(&self) -> crate::idempotency::Retention {
        crate::idempotency::Retention {
            window: std::time::Duration::from_secs(self.idempotency_retention_s),
            max_keys: self.idempotency_max_keys.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        replica: ReplicaArgs,
    }

    #[derive(Parser)]
    struct Batches {
        #[command(flatten)]
        batches: BatchArgs,
    }

    #[test]
    fn a_batchers_own_flag_wins_over_the_one_for_all() {
        let none = Batches::parse_from(["x"]).batches.in_flight();
        assert_eq!(none.for_batcher("buys", 2), 2);
        let b = Batches::parse_from([
            "x",
            "--batches-in-flight",
            "4",
            "--batches-in-flight-buys",
            "1",
        ])
        .batches
        .in_flight();
        assert_eq!(b.for_batcher("buys", 2), 1);
        assert_eq!(b.for_batcher("updates", 2), 4);
        assert!(Batches::try_parse_from(["x", "--batches-in-flight", "0"]).is_err());
    }

    #[test]
    fn idempotency_retention_is_a_flag_with_a_24_hour_default() {
        let r = Args::parse_from(["x"]).replica.retention();
        assert_eq!(r, crate::idempotency::Retention::default());
        assert_eq!(r.window, std::time::Duration::from_secs(24 * 3600));
        let args = [
            "x",
            "--idempotency-retention-s",
            "60",
            "--idempotency-max-keys",
            "5",
        ];
        let r = Args::parse_from(args).replica.retention();
        assert_eq!((r.window.as_secs(), r.max_keys), (60, 5));
        assert!(Args::try_parse_from(["x", "--idempotency-retention-s", "0"]).is_err());
    }
}
