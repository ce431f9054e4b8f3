//! Load generator for the bookstore.
//!
//! - [`workload`]: what is sent (lookup, search, buy, mixed:R, race) and the parsers;
//! - [`runner`]: closed- and open-loop rounds, one per client count, HdrHistograms;
//! - [`report`]: the terminal table and `results.csv` / `results.json`;
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
pub mod chaos;
pub mod report;
pub mod runner;
pub mod workload;

pub use runner::{run, Error, Mode, RoundResult, RunConfig, RunReport, Stop};
pub use workload::Workload;
