//! The chart of a run (`--chart FILE`): calls/s and p99 latency against the
//! number of callers, for `get` and `create`, one line per target (echo
//! ceiling, person-service, nameko, girolle), persistent mode.
//!
//! Drawn with plotters' SVG backend only: text goes into the SVG as `<text>`
//! elements with plotters' built-in size estimates, so no font files or
//! font-rendering libraries are needed to build or run it.

use crate::load::Workload;
use crate::report::{Mode, Results, Target};
use plotters::prelude::*;
use std::path::Path;

const TARGETS: [(Target, RGBColor); 4] = [
    (Target::Echo, RGBColor(120, 120, 120)),
    (Target::PersonService, RGBColor(214, 39, 40)),
    (Target::Nameko, RGBColor(31, 119, 180)),
    (Target::Girolle, RGBColor(44, 160, 44)),
];

/// One line: a target's (callers, value) points.
type Line = (Target, RGBColor, Vec<(f64, f64)>);

fn lines(results: &Results, workload: Workload, value: impl Fn(f64, f64) -> f64) -> Vec<Line> {
    TARGETS
        .iter()
        .filter_map(|&(target, color)| {
            let mut points: Vec<(f64, f64)> = results
                .rows
                .iter()
                .filter(|r| r.target == target && r.mode == Mode::Persistent)
                .filter(|r| r.workload == workload && r.measured.calls > 0)
                .map(|r| {
                    (
                        r.callers as f64,
                        value(r.measured.calls_per_s, r.measured.latency.p99_ms),
                    )
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!points.is_empty()).then_some((target, color, points))
        })
        .collect()
}

/// Writes the chart to `path`; `title` says which run it shows.
pub fn write(results: &Results, path: &Path, title: &str) -> Result<(), String> {
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| format!("drawing {}: {e}", path.display()))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| format!("drawing {}: {e}", path.display()))?;
    let panels = root.split_evenly((2, 2));
    let max_callers = results
        .rows
        .iter()
        .map(|r| r.callers as f64)
        .fold(1.0, f64::max);
    let specs = [
        (Workload::Get, true),
        (Workload::Get, false),
        (Workload::Create, true),
        (Workload::Create, false),
    ];
    for (area, (workload, rate)) in panels.iter().zip(specs) {
        let data = lines(
            results,
            workload,
            |calls, p99| if rate { calls } else { p99 },
        );
        let top = data
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|(_, v)| *v))
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.1;
        let caption = format!(
            "{} — {}",
            workload.method(),
            if rate { "calls/s" } else { "p99 latency, ms" }
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d((1.0..max_callers * 1.2).log_scale(), 0.0..top)
            .map_err(|e| format!("drawing {}: {e}", path.display()))?;
        chart
            .configure_mesh()
            .x_desc("concurrent callers")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| {
                if rate {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .draw()
            .map_err(|e| format!("drawing {}: {e}", path.display()))?;
        for (target, color, points) in data {
            let style = ShapeStyle::from(color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(|e| format!("drawing {}: {e}", path.display()))?
                .label(target.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&p| Circle::new(p, 3, ShapeStyle::from(color).filled())),
                )
                .map_err(|e| format!("drawing {}: {e}", path.display()))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| format!("drawing {}: {e}", path.display()))?;
    }
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}
