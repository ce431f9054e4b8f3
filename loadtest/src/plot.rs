//! `latency.svg`: p50 (solid) and p99 (dashed) latency against the client count, one
//! colour per tier, log-log axes (tiers differ by orders of magnitude). SVG only, drawn
//! with `plotters` without its font and bitmap features (text is left to the viewer).
use crate::runner::RunReport;
use anyhow::{bail, Context};
use plotters::prelude::*;
use std::path::Path;

/// `(clients, p50 ms, p99 ms)`.
type Point = (f64, f64, f64);

/// One tier's points for each round that has the tier.
fn series(report: &RunReport, tier: &str) -> Vec<Point> {
    report
        .rounds
        .iter()
        .filter_map(|r| {
            let t = r.tiers.iter().find(|t| t.tier == tier && t.count > 0)?;
            Some((r.clients as f64, t.latency.p50_ms, t.latency.p99_ms))
        })
        .collect()
}

/// Draws the report's `latency.svg` at `path` (nothing to plot is an error).
pub fn latency_svg(report: &RunReport, path: &Path) -> anyhow::Result<()> {
    let tiers: Vec<(String, Vec<Point>)> = report
        .tier_names()
        .into_iter()
        .map(|t| {
            let s = series(report, &t);
            (t, s)
        })
        .filter(|(_, s)| !s.is_empty())
        .collect();
    if tiers.is_empty() {
        bail!("no answered requests to plot");
    }
    let points = tiers.iter().flat_map(|(_, s)| s.iter());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, 0f64, f64::MAX, 0f64);
    for &(x, p50, p99) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(p50.min(p99));
        y_max = y_max.max(p50.max(p99));
    }
    let x_range = (x_min / 1.25).max(0.5)..x_max * 1.25;
    let y_range = (y_min.max(0.001) / 1.5)..(y_max.max(0.001) * 1.5);
    let caption = format!(
        "{}{}: latency vs clients, solid p50, dashed p99",
        report.workload,
        if report.cache_bypassed {
            " (cache bypassed)"
        } else {
            ""
        }
    );
    let err = || format!("cannot draw {}", path.display());
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).with_context(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range.log_scale(), y_range.log_scale())
        .with_context(err)?;
    chart
        .configure_mesh()
        .x_desc("clients (connections)")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .with_context(err)?;
    for (i, (tier, s)) in tiers.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(s.iter().map(|p| (p.0, p.1)), style))
            .with_context(err)?
            .label(tier.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(DashedLineSeries::new(
                s.iter().map(|p| (p.0, p.2)),
                6,
                4,
                style,
            ))
            .with_context(err)?;
        // Single points still show: a short tick at each measured client count.
        chart
            .draw_series(
                s.iter()
                    .map(|p| PathElement::new(vec![(p.0 / 1.02, p.1), (p.0 * 1.02, p.1)], style)),
            )
            .with_context(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .with_context(err)?;
    root.present().with_context(err)?;
    Ok(())
}
