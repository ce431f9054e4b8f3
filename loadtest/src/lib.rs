//! Load generator for the bookstore.
//!
//! - [`workload`]: what is sent (lookup, search, buy, mixed:R, race) and the parsers;
//! - [`runner`]: closed- and open-loop rounds, one per client count, HdrHistograms;
//! - [`tiers`]: per-tier latency from the answers' `Server-Timing` headers;
//! - [`report`]: the terminal table, `results.csv` / `results.json` and `latency.svg`
//!   (through [`plot`]), and the cache-on/cache-off comparison;
//! - [`procstat`]: the servers' CPU time and context switches, from `/proc`
//!   (`loadtest run --server-cpu`, `loadtest server-cpu`);
//! - [`books`]: `loadtest gen-books`, large books CSVs for the catalog;
//! - [`baseline`]: a bare one-hop server to compare a report with;
//! - [`chaos`]: `loadtest chaos`, a Jepsen-style fault-injection run with checkers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), loadtest::Error> {
//! use loadtest::{run, RunConfig, Stop, Workload};
//! let mut config = RunConfig::new("http://127.0.0.1:8000", Workload::Lookup);
//! config.clients = vec![1, 3, 5, 9];
//! config.stop = Stop::Requests(1000);
//! let report = run(&config).await?;
//! println!("{}", loadtest::report::table(&report));
//! # Ok(()) }
//! ```
pub mod baseline;
pub mod books;
pub mod chaos;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod runner;
pub mod tiers;
pub mod workload;

pub use runner::{run, Error, Mode, RoundResult, RunConfig, RunReport, Stop};
pub use workload::Workload;
