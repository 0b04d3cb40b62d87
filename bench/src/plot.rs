//! The SVG chart of a run: the latency distributions of the cross-process round trips (two
//! cores) and, for every comparison, subring's median ratio to its peer. Drawn with plotters.

use std::path::Path;

use plotters::prelude::*;

use crate::report::{median, Report};

/// Writes the chart of `report` to `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    let comparisons: Vec<(String, f64, bool)> = report
        .rows
        .iter()
        .filter(|r| r.vs.is_some())
        .filter_map(|r| {
            let ratio = median(report.ratios(r));
            ratio.is_finite().then(|| {
                let vs = r.vs.as_deref().unwrap_or_default();
                (
                    format!("{}: {vs} / {}", short(&r.section), r.name),
                    ratio,
                    r.unit.higher_is_better(),
                )
            })
        })
        .collect();
    let height = 480 + 22 * comparisons.len() as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (top, bottom) = root.split_vertically(440);
    latency_chart(report, &top)?;
    ratio_chart(&comparisons, &bottom)?;
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn draw_err(e: impl std::fmt::Display) -> String {
    format!("drawing the chart: {e}")
}

fn short(section: &str) -> String {
    section
        .replace("ipc round trip, ", "rt ")
        .replace("spsc ring, ", "spsc ")
        .replace("kernel 4K random read, ", "read ")
        .replace("4 KiB payloads, client to server", "4K payloads")
}

fn latency_chart<DB: DrawingBackend>(
    report: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), String> {
    let rows: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.section == crate::ipc::SPLIT && !r.cdf.is_empty())
        .collect();
    let (lo, hi) = rows
        .iter()
        .flat_map(|r| r.cdf.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0f64), |(l, h), v| (l.min(v), h.max(v)));
    if rows.is_empty() || lo >= hi {
        return Ok(());
    }
    let mut chart = ChartBuilder::on(area)
        .caption(
            "round-trip latency across processes, 2 cores (last repetition)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0f64..1f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("ns (log scale)")
        .y_desc("fraction of round trips")
        .draw()
        .map_err(draw_err)?;
    for (i, r) in rows.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.cdf.iter().map(|(q, ns)| (ns.max(lo), *q)),
                color.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(r.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)
}

fn ratio_chart<DB: DrawingBackend>(
    comparisons: &[(String, f64, bool)],
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), String> {
    if comparisons.is_empty() {
        return Ok(());
    }
    let max = comparisons.iter().map(|c| c.1).fold(1.0f64, f64::max) * 1.1;
    let n = comparisons.len();
    let labels: Vec<String> = comparisons.iter().map(|c| c.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "subring / peer, median of per-repetition ratios (green: subring better)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(430)
        .build_cartesian_2d(0f64..max, 0f64..n as f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            let i = y.floor() as usize;
            if (y - y.floor() - 0.5).abs() < 0.01 && i < n {
                labels[n - 1 - i].clone()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(
            comparisons
                .iter()
                .enumerate()
                .map(|(i, (_, ratio, higher))| {
                    let y = (n - 1 - i) as f64;
                    let better = if *higher {
                        *ratio >= 1.0
                    } else {
                        *ratio <= 1.0
                    };
                    let color = if better { GREEN.mix(0.7) } else { RED.mix(0.6) };
                    Rectangle::new([(0.0, y + 0.15), (*ratio, y + 0.85)], color.filled())
                }),
        )
        .map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new(
            [(1.0, 0.0), (1.0, n as f64)],
            BLACK.stroke_width(1),
        ))
        .map_err(draw_err)?;
    Ok(())
}
