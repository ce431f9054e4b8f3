//! What a run leaves: a table for the terminal (rows = metrics and then tiers, columns =
//! client counts) and `DIR/<run-id>/results.csv`, `results.json` and `latency.svg`;
//! for `--compare-cache`, the two runs side by side with their ratios.
use crate::runner::{LatencySummary, Mode, RoundResult, RunReport, Stop};
use crate::tiers::END_TO_END;
use crate::workload::Workload;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Default output folder of the command line.
pub const DEFAULT_OUT_DIR: &str = "output/loadtest";

/// One line of `results.csv`: one tier of one round. Each round's first line is the
/// end-to-end tier (`client->frontend`) with every column; the lines of the other tiers
/// (`frontend->cache`, `order->catalog`, ...) fill `count` (answers that reported the
/// tier) and the latency columns, and leave the other counters at 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CsvRow {
    pub run_id: String,
    pub target: String,
    pub workload: String,
    pub mode: String,
    pub rate: Option<f64>,
    /// `on`, or `off` when lookups and searches bypassed the cache.
    pub cache: String,
    pub clients: usize,
    pub tier: String,
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

/// The CSV rows of a report: per round, the end-to-end row, then one row per tier.
pub fn csv_rows(report: &RunReport) -> Vec<CsvRow> {
    let mut rows = Vec::new();
    for r in &report.rounds {
        rows.push(round_row(report, r));
        for t in r.tiers.iter().filter(|t| t.tier != END_TO_END) {
            let row = CsvRow {
                tier: t.tier.clone(),
                count: t.count,
                ..CsvRow::of_round(report, r)
            };
            rows.push(row.with_latency(&t.latency));
        }
    }
    rows
}

fn round_row(report: &RunReport, r: &RoundResult) -> CsvRow {
    let row = CsvRow {
        tier: END_TO_END.into(),
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
        throughput_rps: r.throughput_rps,
        race_stock_before: r.race.as_ref().map(|x| x.stock_before),
        race_successes: r.race.as_ref().map(|x| x.successes),
        race_stock_after: r.race.as_ref().and_then(|x| x.stock_after),
        race_consistent: r.race.as_ref().map(|x| x.consistent),
        ..CsvRow::of_round(report, r)
    };
    row.with_latency(&r.latency)
}

impl CsvRow {
    /// A row of round `r` with only what every tier's row shares: the run's settings,
    /// the client count and the round's length. Counters are 0.
    fn of_round(report: &RunReport, r: &RoundResult) -> CsvRow {
        CsvRow {
            run_id: report.run_id.clone(),
            target: report.target.clone(),
            workload: report.workload.to_string(),
            mode: mode_name(report.mode).into(),
            rate: report.rate,
            cache: if report.cache_bypassed { "off" } else { "on" }.into(),
            clients: r.clients,
            elapsed_s: r.elapsed_s,
            ..CsvRow::default()
        }
    }

    /// This row with its latency columns taken from `l`.
    fn with_latency(self, l: &LatencySummary) -> CsvRow {
        CsvRow {
            mean_ms: l.mean_ms,
            stdev_ms: l.stdev_ms,
            min_ms: l.min_ms,
            p50_ms: l.p50_ms,
            p90_ms: l.p90_ms,
            p99_ms: l.p99_ms,
            p999_ms: l.p999_ms,
            max_ms: l.max_ms,
            ..self
        }
    }
}

/// Writes `dir/<run-id>/results.csv`, `results.json` and (when any request was
/// answered) `latency.svg`; returns that folder.
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
    if report.rounds.iter().any(|r| r.count > 0) {
        crate::plot::latency_svg(report, &folder.join("latency.svg"))
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    }
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
    if rounds.iter().any(|r| r.server.is_some()) {
        let per = |r: &RoundResult, f: &dyn Fn(&crate::procstat::Cost) -> f64, n: u64| {
            r.server.as_ref().map_or("-".to_string(), |c| {
                format!("{:.3}", f(c) / n.max(1) as f64)
            })
        };
        row("server CPU per request (ms)", &|r| {
            per(r, &|c| c.cpu_ms, r.count)
        });
        row("server switches per request", &|r| {
            per(r, &|c| c.switches as f64, r.count)
        });
        if report.workload.buys() {
            row("server CPU per copy sold (ms)", &|r| {
                per(r, &|c| c.cpu_ms, r.bought)
            });
            row("server switches per copy sold", &|r| {
                per(r, &|c| c.switches as f64, r.bought)
            });
        }
    }
    let tiers = report.tier_names();
    if !tiers.is_empty() {
        row("per tier (ms; from Server-Timing)", &|_| String::new());
    }
    for name in &tiers {
        let tier = |r: &RoundResult| r.tiers.iter().find(|t| &t.tier == name).cloned();
        let cell = |r: &RoundResult, f: &dyn Fn(&crate::tiers::TierResult) -> String| {
            tier(r).as_ref().map_or("-".to_string(), f)
        };
        row(&format!("  {name} mean"), &|r| {
            cell(r, &|t| ms(t.latency.mean_ms))
        });
        row(&format!("  {name} p50"), &|r| {
            cell(r, &|t| ms(t.latency.p50_ms))
        });
        row(&format!("  {name} p99"), &|r| {
            cell(r, &|t| ms(t.latency.p99_ms))
        });
        if rounds
            .iter()
            .any(|r| tier(r).is_some_and(|t| t.count != r.count))
        {
            row(&format!("  {name} calls"), &|r| {
                cell(r, &|t| t.count.to_string())
            });
        }
    }
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
    let mut out = describe(report);
    if report.cache_bypassed {
        out.push_str(", cache bypassed (Cache-Control: no-cache)");
    }
    out.push('\n');
    render(&mut out, &rows);
    out
}

/// Aligned rows: a name column, then one right-aligned column per value.
fn render(out: &mut String, rows: &[(String, Vec<String>)]) {
    let name_w = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let col_w = rows
        .iter()
        .flat_map(|(_, v)| v.iter().map(String::len))
        .max()
        .unwrap_or(0)
        .max(8);
    for (name, values) in rows {
        let _ = write!(out, "{name:<name_w$}");
        for v in values {
            let _ = write!(out, "  {v:>col_w$}");
        }
        out.push('\n');
    }
}

/// One client count of a `--compare-cache` run: the same workload with the cache on
/// and bypassed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheComparison {
    pub clients: usize,
    pub throughput_on_rps: f64,
    pub throughput_off_rps: f64,
    /// Throughput with the cache over throughput without (> 1: the cache helps).
    pub throughput_ratio: f64,
    pub mean_on_ms: f64,
    pub mean_off_ms: f64,
    pub p50_on_ms: f64,
    pub p50_off_ms: f64,
    pub p99_on_ms: f64,
    pub p99_off_ms: f64,
    /// Mean latency without the cache over mean latency with it (> 1: the cache helps).
    pub mean_ratio: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Pairs the rounds of a cache-on and a cache-off run by client count.
pub fn compare_cache(on: &RunReport, off: &RunReport) -> Vec<CacheComparison> {
    on.rounds
        .iter()
        .filter_map(|a| {
            let b = off.rounds.iter().find(|b| b.clients == a.clients)?;
            Some(CacheComparison {
                clients: a.clients,
                throughput_on_rps: a.throughput_rps,
                throughput_off_rps: b.throughput_rps,
                throughput_ratio: ratio(a.throughput_rps, b.throughput_rps),
                mean_on_ms: a.latency.mean_ms,
                mean_off_ms: b.latency.mean_ms,
                p50_on_ms: a.latency.p50_ms,
                p50_off_ms: b.latency.p50_ms,
                p99_on_ms: a.latency.p99_ms,
                p99_off_ms: b.latency.p99_ms,
                mean_ratio: ratio(b.latency.mean_ms, a.latency.mean_ms),
            })
        })
        .collect()
}

/// The comparison as a table (rows = figures, columns = client counts).
pub fn comparison_table(workload: &str, rows: &[CacheComparison]) -> String {
    let mut out = format!("{workload}: cache on vs cache bypassed (Cache-Control: no-cache)\n");
    let f1 = |v: f64| format!("{v:.1}");
    let f3 = |v: f64| format!("{v:.3}");
    let f2 = |v: f64| format!("{v:.2}x");
    type Get = fn(&CacheComparison) -> f64;
    type Format<'a> = &'a dyn Fn(f64) -> String;
    let spec: [(&str, Get, Format); 11] = [
        ("clients", |c| c.clients as f64, &|v| format!("{v:.0}")),
        ("throughput, cache on (req/s)", |c| c.throughput_on_rps, &f1),
        (
            "throughput, cache off (req/s)",
            |c| c.throughput_off_rps,
            &f1,
        ),
        ("throughput on/off", |c| c.throughput_ratio, &f2),
        ("mean, cache on (ms)", |c| c.mean_on_ms, &f3),
        ("mean, cache off (ms)", |c| c.mean_off_ms, &f3),
        ("mean off/on", |c| c.mean_ratio, &f2),
        ("p50, cache on (ms)", |c| c.p50_on_ms, &f3),
        ("p50, cache off (ms)", |c| c.p50_off_ms, &f3),
        ("p99, cache on (ms)", |c| c.p99_on_ms, &f3),
        ("p99, cache off (ms)", |c| c.p99_off_ms, &f3),
    ];
    let table: Vec<(String, Vec<String>)> = spec
        .iter()
        .map(|(name, get, fmt)| (name.to_string(), rows.iter().map(|c| fmt(get(c))).collect()))
        .collect();
    render(&mut out, &table);
    out
}

/// Writes the comparison as `folder/comparison.csv`.
pub fn write_comparison(rows: &[CacheComparison], folder: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(folder)?;
    let path = folder.join("comparison.csv");
    let mut w = csv::Writer::from_path(&path)?;
    for row in rows {
        w.serialize(row).map_err(std::io::Error::other)?;
    }
    w.flush()?;
    Ok(path)
}
