//! What a run leaves: a table for the terminal (rows = metrics, columns = client
//! counts) and `DIR/<run-id>/results.csv` + `results.json`.
use crate::runner::{Mode, RoundResult, RunReport, Stop};
use crate::workload::Workload;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Default output folder of the command line.
pub const DEFAULT_OUT_DIR: &str = "output/loadtest";

/// One line of `results.csv`: one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsvRow {
    pub run_id: String,
    pub target: String,
    pub workload: String,
    pub mode: String,
    pub rate: Option<f64>,
    pub clients: usize,
    pub count: u64,
    pub errors: u64,
    pub errors_connect: u64,
    pub errors_timeout: u64,
    pub errors_5xx: u64,
    pub errors_4xx: u64,
    pub errors_other: u64,
    pub lookups: u64,
    pub searches: u64,
    pub buys: u64,
    pub bought: u64,
    pub sold_out: u64,
    pub restocks: u64,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub mean_ms: f64,
    pub stdev_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub race_stock_before: Option<u32>,
    pub race_successes: Option<u64>,
    pub race_stock_after: Option<u32>,
    pub race_consistent: Option<bool>,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Closed => "closed",
        Mode::Open => "open",
    }
}

/// The CSV rows of a report, one per round.
pub fn csv_rows(report: &RunReport) -> Vec<CsvRow> {
    report
        .rounds
        .iter()
        .map(|r| {
            let l = &r.latency;
            CsvRow {
                run_id: report.run_id.clone(),
                target: report.target.clone(),
                workload: report.workload.to_string(),
                mode: mode_name(report.mode).into(),
                rate: report.rate,
                clients: r.clients,
                count: r.count,
                errors: r.errors.total(),
                errors_connect: r.errors.connect,
                errors_timeout: r.errors.timeout,
                errors_5xx: r.errors.server_5xx,
                errors_4xx: r.errors.unexpected_4xx,
                errors_other: r.errors.other,
                lookups: r.ops.lookup,
                searches: r.ops.search,
                buys: r.ops.buy,
                bought: r.bought,
                sold_out: r.sold_out,
                restocks: r.restocks,
                elapsed_s: r.elapsed_s,
                throughput_rps: r.throughput_rps,
                mean_ms: l.mean_ms,
                stdev_ms: l.stdev_ms,
                min_ms: l.min_ms,
                p50_ms: l.p50_ms,
                p90_ms: l.p90_ms,
                p99_ms: l.p99_ms,
                p999_ms: l.p999_ms,
                max_ms: l.max_ms,
                race_stock_before: r.race.as_ref().map(|x| x.stock_before),
                race_successes: r.race.as_ref().map(|x| x.successes),
                race_stock_after: r.race.as_ref().and_then(|x| x.stock_after),
                race_consistent: r.race.as_ref().map(|x| x.consistent),
            }
        })
        .collect()
}

/// Writes `dir/<run-id>/results.csv` and `results.json`; returns that folder.
pub fn write_files(report: &RunReport, dir: &Path) -> std::io::Result<PathBuf> {
    let folder = dir.join(&report.run_id);
    std::fs::create_dir_all(&folder)?;
    let mut w = csv::Writer::from_path(folder.join("results.csv"))?;
    for row in csv_rows(report) {
        w.serialize(row).map_err(std::io::Error::other)?;
    }
    w.flush()?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(folder.join("results.json"), json + "\n")?;
    Ok(folder)
}

/// Reads back a `results.json`.
pub fn read_json(path: &Path) -> std::io::Result<RunReport> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// Reads back a `results.csv`.
pub fn read_csv(path: &Path) -> std::io::Result<Vec<CsvRow>> {
    let mut r = csv::Reader::from_path(path)?;
    r.deserialize()
        .collect::<Result<Vec<CsvRow>, _>>()
        .map_err(std::io::Error::other)
}

fn describe(report: &RunReport) -> String {
    let mode = match (report.mode, report.rate) {
        (Mode::Open, Some(r)) => format!("open loop at {r} req/s"),
        _ => "closed loop".to_string(),
    };
    let stop = match report.stop {
        Stop::Requests(n) => format!("{n} requests per client count"),
        Stop::Duration(d) => format!("{}s per client count", d.as_secs_f64()),
    };
    format!(
        "workload {}, {mode}, {stop}, target {}, seed {}, run {}",
        report.workload, report.target, report.seed, report.run_id
    )
}

/// A count read off a round.
type Count = dyn Fn(&RoundResult) -> u64;

/// The report as a table: one row per metric, one column per client count.
pub fn table(report: &RunReport) -> String {
    let rounds = &report.rounds;
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&RoundResult) -> String| {
        rows.push((name.to_string(), rounds.iter().map(f).collect()));
    };
    let any = |f: &Count| rounds.iter().any(|r| f(r) > 0);
    let ms = |v: f64| format!("{v:.3}");
    row("clients", &|r| r.clients.to_string());
    row("requests answered", &|r| r.count.to_string());
    row("errors", &|r| r.errors.total().to_string());
    let kinds: [(&str, &Count); 5] = [
        ("  connect", &|r| r.errors.connect),
        ("  timeout", &|r| r.errors.timeout),
        ("  5xx", &|r| r.errors.server_5xx),
        ("  unexpected 4xx", &|r| r.errors.unexpected_4xx),
        ("  other", &|r| r.errors.other),
    ];
    for (name, f) in kinds {
        if any(f) {
            row(name, &|r| f(r).to_string());
        }
    }
    if matches!(report.workload, Workload::Mixed { .. }) {
        row("  lookups", &|r| r.ops.lookup.to_string());
        row("  searches", &|r| r.ops.search.to_string());
        row("  buys", &|r| r.ops.buy.to_string());
    }
    if report.workload.buys() {
        row("bought (200)", &|r| r.bought.to_string());
        row("sold out (409)", &|r| r.sold_out.to_string());
    }
    if any(&|r| r.restocks) {
        row("restocks", &|r| r.restocks.to_string());
    }
    row("throughput (req/s)", &|r| {
        format!("{:.1}", r.throughput_rps)
    });
    row("mean (ms)", &|r| ms(r.latency.mean_ms));
    row("p50 (ms)", &|r| ms(r.latency.p50_ms));
    row("p90 (ms)", &|r| ms(r.latency.p90_ms));
    row("p99 (ms)", &|r| ms(r.latency.p99_ms));
    row("p99.9 (ms)", &|r| ms(r.latency.p999_ms));
    row("max (ms)", &|r| ms(r.latency.max_ms));
    row("elapsed (s)", &|r| format!("{:.2}", r.elapsed_s));
    if report.workload == Workload::Race {
        let race = |r: &RoundResult, f: &dyn Fn(&crate::runner::RaceResult) -> String| {
            r.race.as_ref().map_or("-".to_string(), f)
        };
        row("race: stock before", &|r| {
            race(r, &|x| x.stock_before.to_string())
        });
        row("race: successes", &|r| {
            race(r, &|x| x.successes.to_string())
        });
        row("race: stock after", &|r| {
            race(r, &|x| x.stock_after.map_or("?".into(), |s| s.to_string()))
        });
        row("race: consistent", &|r| {
            race(r, &|x| if x.consistent { "yes" } else { "NO" }.to_string())
        });
    }
    let name_w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let col_w = rows
        .iter()
        .flat_map(|(_, v)| v.iter().map(String::len))
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = describe(report);
    out.push('\n');
    for (name, values) in &rows {
        let _ = write!(out, "{name:<name_w$}");
        for v in values {
            let _ = write!(out, "  {v:>col_w$}");
        }
        out.push('\n');
    }
    out
}
