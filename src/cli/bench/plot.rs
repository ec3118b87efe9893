//! SVG charts for `--plot DIR` (plotters, SVG backend only): a latency CDF of ours against the
//! raw path, and throughput against transfer size.

use super::raw::Res;
use plotters::prelude::*;
use std::path::Path;
use std::time::Duration;

/// Sorted samples in µs → (µs, cumulative fraction) points, thinned to ≤ 2000.
fn cdf(samples: &[Duration]) -> Vec<(f64, f64)> {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(|a, b| a.total_cmp(b));
    let n = us.len();
    let step = (n / 2000).max(1);
    us.iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i == n - 1)
        .map(|(i, &v)| (v, (i + 1) as f64 / n as f64))
        .collect()
}

/// Latency CDF of each named sample set, x clipped at 1.5 × the largest p99 (the tail beyond
/// is in the table and the JSON).
pub fn latency_cdf(path: &Path, title: &str, series: &[(&str, &[Duration])]) -> Res<()> {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series.iter().map(|(n, s)| (*n, cdf(s))).collect();
    let xmax = curves
        .iter()
        .filter_map(|(_, c)| c.iter().find(|p| p.1 >= 0.99).or(c.last()).map(|p| p.0))
        .fold(1.0f64, f64::max)
        * 1.5;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("latency, µs")
        .y_desc("fraction of requests ≤ x")
        .draw()?;
    for (i, (name, c)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                c.into_iter().filter(|p| p.0 <= xmax),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Throughput (GB/s) against transfer size (bytes, log scale) for each named series.
pub fn throughput_vs_size(path: &Path, title: &str, series: &[(&str, Vec<(u64, f64)>)]) -> Res<()> {
    let xs: Vec<u64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .collect();
    let (xmin, xmax) = (
        xs.iter().copied().min().unwrap_or(1).max(1) as f64,
        xs.iter().copied().max().unwrap_or(2).max(2) as f64,
    );
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(0.001f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin / 1.5..xmax * 1.5).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("transfer size, bytes")
        .y_desc("GB/s")
        .x_label_formatter(&|v| {
            if *v >= 1024.0 * 1024.0 {
                format!("{:.0} MiB", v / 1048576.0)
            } else {
                format!("{:.0} KiB", v / 1024.0)
            }
        })
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x as f64, y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
