//! The report of a chaos run: a summary table (`summary.txt`, also printed), everything
//! as JSON (`summary.json`), and availability and latency over time with the faults
//! marked (`timeline.svg`, hand-written SVG).
use super::check::{FinalState, Status, Verdict};
use super::gaps::Gap;
use super::history::{FaultRecord, Op, OpKind, Outcome};
use super::schedule::FaultKind;
use super::ChaosConfig;
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Counts of one kind of operation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCounts {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

/// One time bucket of the timeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bucket {
    pub t_s: f64,
    pub buys: usize,
    /// Buys answered ok or out of stock (a definite answer).
    pub buys_answered: usize,
    pub reads: usize,
    pub reads_ok: usize,
    pub buy_p50_ms: f64,
    pub buy_p99_ms: f64,
    pub read_p50_ms: f64,
    pub read_p99_ms: f64,
}

/// Everything about a run.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub run_id: String,
    pub dir: PathBuf,
    pub seed: u64,
    pub duration_s: f64,
    pub buyers: usize,
    pub readers: usize,
    pub stocks: Vec<u32>,
    pub env: Vec<(String, String)>,
    pub fault_kinds: Vec<String>,
    pub skipped: Vec<String>,
    pub heal_problems: Vec<String>,
    pub ops: BTreeMap<String, OpCounts>,
    pub faults_by_kind: BTreeMap<String, usize>,
    /// Per kind, the median and largest over its faults of the longest stretch without
    /// an answer overlapping the fault.
    pub longest_gaps: BTreeMap<String, Gap>,
    pub faults: Vec<FaultRecord>,
    pub verdicts: Vec<Verdict>,
    pub buy_availability: f64,
    pub read_availability: f64,
    pub timeline: Vec<Bucket>,
    pub final_state: FinalState,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn timeline(ops: &[Op], duration_s: f64) -> Vec<Bucket> {
    let width = (duration_s / 120.0).max(0.5);
    let n = (duration_s / width).ceil() as usize + 1;
    let mut buckets: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            t_s: i as f64 * width,
            ..Bucket::default()
        })
        .collect();
    let mut buy_lat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut read_lat: Vec<Vec<f64>> = vec![Vec::new(); n];
    for op in ops {
        let i = ((op.invoke_ns as f64 / 1e9) / width) as usize;
        if i >= n {
            continue;
        }
        let b = &mut buckets[i];
        match op.kind {
            OpKind::Buy => {
                b.buys += 1;
                if op.outcome != Outcome::Info {
                    b.buys_answered += 1;
                    buy_lat[i].push(op.latency_ms());
                }
            }
            OpKind::Read => {
                b.reads += 1;
                if op.outcome == Outcome::Ok {
                    b.reads_ok += 1;
                    read_lat[i].push(op.latency_ms());
                }
            }
            _ => {}
        }
    }
    for (i, b) in buckets.iter_mut().enumerate() {
        b.buy_p50_ms = pct(&mut buy_lat[i], 0.5);
        b.buy_p99_ms = pct(&mut buy_lat[i], 0.99);
        b.read_p50_ms = pct(&mut read_lat[i], 0.5);
        b.read_p99_ms = pct(&mut read_lat[i], 0.99);
    }
    buckets
}

impl ChaosReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run_id: String,
        dir: PathBuf,
        config: &ChaosConfig,
        kinds: Vec<FaultKind>,
        skipped: Vec<String>,
        heal_problems: Vec<String>,
        ops: &[Op],
        faults: Vec<FaultRecord>,
        verdicts: Vec<Verdict>,
        final_state: FinalState,
    ) -> ChaosReport {
        let mut counts: BTreeMap<String, OpCounts> = BTreeMap::new();
        for op in ops {
            let c = counts.entry(op.kind.name().to_string()).or_default();
            match op.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::Fail => c.fail += 1,
                Outcome::Info => c.info += 1,
            }
        }
        let mut faults_by_kind: BTreeMap<String, usize> =
            kinds.iter().map(|k| (k.name().to_string(), 0)).collect();
        for (k, n) in super::count_faults(&faults) {
            faults_by_kind.insert(k, n);
        }
        let buys: Vec<&Op> = ops.iter().filter(|o| o.kind == OpKind::Buy).collect();
        let reads: Vec<&Op> = ops.iter().filter(|o| o.kind == OpKind::Read).collect();
        let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        let duration_s = config.duration.as_secs_f64();
        ChaosReport {
            run_id,
            dir,
            seed: config.seed,
            duration_s,
            buyers: config.buyers,
            readers: config.readers,
            stocks: config.stocks.clone(),
            env: config.env.clone(),
            fault_kinds: kinds.iter().map(|k| k.name().to_string()).collect(),
            skipped,
            heal_problems,
            ops: counts,
            faults_by_kind,
            longest_gaps: super::gaps::longest_gaps(ops, &faults),
            faults,
            verdicts,
            buy_availability: ratio(
                buys.iter().filter(|o| o.outcome != Outcome::Info).count(),
                buys.len(),
            ),
            read_availability: ratio(
                reads.iter().filter(|o| o.outcome == Outcome::Ok).count(),
                reads.len(),
            ),
            timeline: timeline(ops, duration_s),
            final_state,
        }
    }

    /// No checker that counts failed.
    pub fn passed(&self) -> bool {
        !self.verdicts.iter().any(Verdict::fails_run)
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos run {} (seed {}, {:.0} s, {} buyers, {} readers, stocks {:?}{})",
            self.run_id,
            self.seed,
            self.duration_s,
            self.buyers,
            self.readers,
            self.stocks,
            if self.env.is_empty() {
                String::new()
            } else {
                format!(
                    ", env {}",
                    self.env
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
        );
        let _ = writeln!(s, "\noperations          ok     fail     info");
        let mut total = OpCounts::default();
        for (k, c) in &self.ops {
            let _ = writeln!(s, "  {k:<12} {:>8} {:>8} {:>8}", c.ok, c.fail, c.info);
            total.ok += c.ok;
            total.fail += c.fail;
            total.info += c.info;
        }
        let _ = writeln!(
            s,
            "  {:<12} {:>8} {:>8} {:>8}",
            "total", total.ok, total.fail, total.info
        );
        let _ = writeln!(
            s,
            "  availability: {:.1}% of buys answered (ok or sold out), {:.1}% of reads ok",
            100.0 * self.buy_availability,
            100.0 * self.read_availability
        );
        let _ = writeln!(
            s,
            "\nfaults                         count   longest gap without an answer (s), median / max\n\
             \x20                                                      buys            reads"
        );
        for (k, n) in &self.faults_by_kind {
            let g = self.longest_gaps.get(k).copied().unwrap_or_default();
            let _ = writeln!(
                s,
                "  {k:<28} {n:>5}   {:>20.2} / {:<5.2}   {:>5.2} / {:.2}",
                g.buys_median_s, g.buys_max_s, g.reads_median_s, g.reads_max_s
            );
        }
        let _ = writeln!(
            s,
            "  {:<28} {:>5}",
            "total",
            self.faults_by_kind.values().sum::<usize>()
        );
        for k in &self.skipped {
            let _ = writeln!(s, "  SKIPPED: {k}");
        }
        let troubled = self.faults.iter().filter(|f| !f.note.is_empty()).count();
        if troubled > 0 {
            let first = self.faults.iter().find(|f| !f.note.is_empty()).unwrap();
            let _ = writeln!(
                s,
                "  {troubled} faults with notes, first: {} {}: {}",
                first.kind, first.target, first.note
            );
        }
        for p in &self.heal_problems {
            let _ = writeln!(s, "  heal: {p}");
        }
        let _ = writeln!(s, "\ncheckers");
        for v in &self.verdicts {
            let status = match (v.status, v.informational) {
                (Status::Pass, _) => "PASS",
                (Status::Fail, false) => "FAIL",
                (Status::Fail, true) => "FAIL (informational)",
                (Status::Inconclusive, _) => "INCONCLUSIVE",
            };
            let _ = writeln!(s, "  {}. {:<50} {status}", v.id, v.name);
            let _ = writeln!(s, "     {}", v.detail);
            if let Some(c) = &v.counterexample {
                let _ = writeln!(s, "     first counter-example: {c}");
            }
        }
        let _ = writeln!(
            s,
            "\nverdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(
            s,
            "files: {} (history.jsonl, summary.json, timeline.svg)",
            self.dir.display()
        );
        s
    }

    /// Writes summary.txt, summary.json and timeline.svg.
    pub fn write(&self, _ops: &[Op]) -> anyhow::Result<()> {
        let w = |name: &str, text: String| {
            std::fs::write(self.dir.join(name), text)
                .with_context(|| self.dir.join(name).display().to_string())
        };
        w("summary.txt", self.table())?;
        w("summary.json", serde_json::to_string_pretty(self)?)?;
        w("timeline.svg", self.svg())
    }

    /// Availability and latency over time, faults as shaded bands.
    pub fn svg(&self) -> String {
        let f = Frame::new(self.duration_s);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
            f.w, f.h
        );
        let _ = writeln!(
            s,
            r#"<rect width="{}" height="{}" fill="white"/>"#,
            f.w, f.h
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" font-size="14">chaos run {} (seed {}): availability and latency; faults shaded</text>"#,
            f.left, self.run_id, self.seed
        );
        self.svg_faults(&mut s, &f);
        f.axes(&mut s);
        self.svg_availability(&mut s, &f);
        self.svg_latency(&mut s, &f);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#d62728">buys</text><text x="{:.1}" y="{:.1}" fill="#1f77b4">reads</text>"##,
            f.w - 120.0,
            f.a_top - 6.0,
            f.w - 80.0,
            f.a_top - 6.0
        );
        s.push_str("</svg>\n");
        s
    }

    /// Fault bands over both panels, and one row per kind below.
    fn svg_faults(&self, s: &mut String, f: &Frame) {
        let kinds: Vec<FaultKind> = FaultKind::ALL
            .into_iter()
            .filter(|k| self.faults_by_kind.contains_key(k.name()))
            .collect();
        for fault in &self.faults {
            let k = FaultKind::parse(&fault.kind).unwrap_or(FaultKind::Kill);
            let (x0, x1) = (
                f.x(fault.start_ns as f64 / 1e9),
                f.x(fault.end_ns as f64 / 1e9),
            );
            let wd = (x1 - x0).max(1.0);
            for (top, hh) in [(f.a_top, f.a_h), (f.l_top, f.l_h)] {
                let _ = writeln!(
                    s,
                    r#"<rect x="{x0:.1}" y="{top}" width="{wd:.1}" height="{hh}" fill="{}" fill-opacity="0.12"/>"#,
                    k.colour()
                );
            }
            let row = kinds.iter().position(|x| *x == k).unwrap_or(0) as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{wd:.1}" height="10" fill="{}"><title>{} {} ({:.2}-{:.2} s)</title></rect>"#,
                f.lanes_top + row * 14.0,
                k.colour(),
                fault.kind,
                fault.target,
                fault.start_ns as f64 / 1e9,
                fault.end_ns as f64 / 1e9
            );
        }
        for (i, k) in kinds.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="4" y="{:.1}" fill="{}" font-size="9">{}</text>"#,
                f.lanes_top + i as f64 * 14.0 + 9.0,
                k.colour(),
                k.name()
            );
        }
    }

    /// The middle of a bucket, in seconds.
    fn mid(&self, b: &Bucket) -> f64 {
        b.t_s + (self.timeline.get(1).map_or(1.0, |x| x.t_s) / 2.0)
    }

    /// The share of buys and reads answered, per bucket.
    fn svg_availability(&self, s: &mut String, f: &Frame) {
        let ya = |v: f64| f.a_top + f.a_h * (1.0 - v.clamp(0.0, 1.0));
        for (frac, label) in [(1.0, "100"), (0.5, "50"), (0.0, "0")] {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
                f.left - 4.0,
                ya(frac) + 4.0
            );
        }
        // One point per bucket that has any of the operation: (answered, all).
        let share = |of: fn(&Bucket) -> (usize, usize)| -> Vec<(f64, f64)> {
            let point = |b: &Bucket| {
                let (answered, all) = of(b);
                (all > 0).then(|| (f.x(self.mid(b)), ya(answered as f64 / all as f64)))
            };
            self.timeline.iter().filter_map(point).collect()
        };
        let buys = share(|b| (b.buys_answered, b.buys));
        let reads = share(|b| (b.reads_ok, b.reads));
        let _ = writeln!(s, "{}", polyline(&buys, "#d62728"));
        let _ = writeln!(s, "{}", polyline(&reads, "#1f77b4"));
    }

    /// Buy and read p99 per bucket, linear up to the largest.
    fn svg_latency(&self, s: &mut String, f: &Frame) {
        let max_ms = self
            .timeline
            .iter()
            .map(|b| b.buy_p99_ms.max(b.read_p99_ms))
            .fold(10.0, f64::max);
        let yl = |v: f64| f.l_top + f.l_h * (1.0 - (v / max_ms).clamp(0.0, 1.0));
        for frac in [1.0, 0.5, 0.0] {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"#,
                f.left - 4.0,
                yl(max_ms * frac) + 4.0,
                max_ms * frac
            );
        }
        let bl: Vec<(f64, f64)> = self
            .timeline
            .iter()
            .filter(|b| b.buys_answered > 0)
            .map(|b| (f.x(self.mid(b)), yl(b.buy_p99_ms)))
            .collect();
        let rl: Vec<(f64, f64)> = self
            .timeline
            .iter()
            .filter(|b| b.reads_ok > 0)
            .map(|b| (f.x(self.mid(b)), yl(b.read_p99_ms)))
            .collect();
        let _ = writeln!(s, "{}", polyline(&bl, "#d62728"));
        let _ = writeln!(s, "{}", polyline(&rl, "#1f77b4"));
    }
}

/// The timeline figure's geometry: two panels (availability above, latency below) over
/// one time axis, and the fault rows under them.
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    plot_w: f64,
    a_top: f64,
    a_h: f64,
    l_top: f64,
    l_h: f64,
    lanes_top: f64,
    /// Seconds the time axis covers.
    span: f64,
}

impl Frame {
    fn new(duration_s: f64) -> Frame {
        let (w, left, right) = (1000.0, 60.0, 20.0);
        Frame {
            w,
            h: 560.0,
            left,
            plot_w: w - left - right,
            a_top: 40.0,
            a_h: 170.0,
            l_top: 250.0,
            l_h: 170.0,
            lanes_top: 450.0,
            span: duration_s.max(1.0) + 10.0,
        }
    }

    /// The x of time `t` (seconds).
    fn x(&self, t: f64) -> f64 {
        self.left + self.plot_w * (t / self.span).clamp(0.0, 1.0)
    }

    /// The panels' frames and labels, and the time axis.
    fn axes(&self, s: &mut String) {
        let (left, plot_w) = (self.left, self.plot_w);
        for (top, hh, label) in [
            (self.a_top, self.a_h, "answered %"),
            (self.l_top, self.l_h, "p99 latency ms"),
        ] {
            let _ = writeln!(
                s,
                r#"<rect x="{left}" y="{top}" width="{plot_w}" height="{hh}" fill="none" stroke="black"/>"#
            );
            let _ = writeln!(
                s,
                r#"<text x="4" y="{:.1}" transform="rotate(-90 12 {:.1})">{label}</text>"#,
                top + hh / 2.0,
                top + hh / 2.0
            );
        }
        let step = if self.span > 300.0 { 60.0 } else { 10.0 };
        let bottom = self.l_top + self.l_h;
        let mut t = 0.0;
        while t <= self.span {
            let xx = self.x(t);
            let _ = writeln!(
                s,
                r#"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="black"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t:.0} s</text>"#,
                bottom,
                bottom + 4.0,
                bottom + 16.0
            );
            t += step;
        }
    }
}

/// An SVG polyline through `pts`.
fn polyline(pts: &[(f64, f64)], colour: &str) -> String {
    let p: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
    format!(
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
        p.join(" ")
    )
}
