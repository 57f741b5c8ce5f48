//! The HTML evaluation report: headline table, PR curves, lead-time histogram and risk
//! timelines, as inline SVG drawn by plotters (SVG backend only: no fonts or system libraries,
//! the browser renders the text).

use plotters::prelude::*;

use crate::eval::{EvalReport, Timeline};

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

fn pr_svg(report: &EvalReport) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Precision-recall (round level, label: fails within H)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("recall")
            .y_desc("precision")
            .draw()
            .map_err(err)?;
        for (m, color) in report.methods.iter().zip(COLORS.iter().cycle()) {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    m.pr_curve.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{} (AP {:.3})", m.name, m.pr_auc))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn lead_svg(report: &EvalReport) -> Result<String, String> {
    let Some(model) = report.methods.first() else {
        return Ok(String::new());
    };
    let bins = report.horizon_h.ceil().max(1.0) as u32;
    let mut counts = vec![0u32; bins as usize];
    for &l in &model.stats.leads_h {
        let b = (l.floor().max(0.0) as usize).min(bins as usize - 1);
        counts[b] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Lead time of first true alerts (model)", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(40)
            .build_cartesian_2d((0u32..bins).into_segmented(), 0u32..max + 1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("hours before failure")
            .y_desc("failures")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(COLORS[0].filled())
                    .margin(1)
                    .data(counts.iter().enumerate().map(|(i, &c)| (i as u32, c))),
            )
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn timeline_svg(t: &Timeline, start_ms: i64, threshold: f64) -> Result<String, String> {
    let hours = |ms: i64| (ms - start_ms) as f64 / 3.6e6;
    let x_max = t
        .points
        .last()
        .map(|p| hours(p.0))
        .into_iter()
        .chain(t.failed_at_ms.map(hours))
        .fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 220)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{} — {}", t.node, t.label), ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..x_max, 0f64..1.02f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("hours into test slice")
            .y_desc("risk")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                t.points.iter().map(|&(ms, p)| (hours(ms), p)),
                COLORS[0].stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, threshold), (x_max, threshold)],
                BLACK.mix(0.5),
            ))
            .map_err(err)?;
        chart
            .draw_series(
                t.alerts
                    .iter()
                    .map(|&a| Circle::new((hours(a), threshold), 4, RED.filled())),
            )
            .map_err(err)?;
        if let Some(f) = t.failed_at_ms {
            chart
                .draw_series(LineSeries::new(
                    vec![(hours(f), 0.0), (hours(f), 1.02)],
                    RED.stroke_width(2),
                ))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn or_message(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| format!("<p>chart unavailable: {}</p>", html_escape(&e)))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders a self-contained HTML page for an evaluation report.
pub fn render_html(report: &EvalReport) -> String {
    let mut rows = String::new();
    let fmt_h = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2} h"));
    for m in &report.methods {
        rows.push_str(&format!(
            "<tr><td title=\"{}\">{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td>{:.3}</td><td>{:.2}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{:.3}</td></tr>\n",
            html_escape(&m.description),
            html_escape(&m.name),
            m.precision,
            m.recall,
            m.recall_precursor
                .map_or("unknown".to_string(), |r| format!("{r:.3}")),
            m.f1,
            m.false_alarms_per_1000_node_days,
            m.pr_auc,
            fmt_h(m.lead_time_median_h),
            fmt_h(m.lead_time_p10_h),
            m.stats.true_alerts,
            m.stats.false_alerts,
            m.precision_at_natural_afr,
        ));
    }
    let threshold = report.methods.first().map_or(0.5, |m| m.threshold);
    let timelines: String = report
        .timelines
        .iter()
        .map(|t| or_message(timeline_svg(t, report.test_from_ms, threshold)))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>augur-predict evaluation</title>\n<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>\n<h1>Failure prediction — evaluation</h1>\n<p>{} nodes; test slice of {:.1} days with {} failures; horizon {} h; alert when risk ≥ threshold in {} of the last {} rounds (every {} min).</p>\n<table><tr><th>method</th><th>precision</th><th>recall</th><th>recall (precursor)</th><th>F1</th><th>false alarms / 1000 healthy node-days</th><th>PR-AUC</th><th>lead median</th><th>lead p10</th><th>alerts TP/FP</th><th>precision at 5% AFR</th></tr>\n{rows}</table>\n<h2>Precision-recall</h2>\n{}\n<h2>Lead times</h2>\n{}\n<h2>Risk timelines</h2>\n<p>Blue: risk; grey: threshold; red dots: alerts; red line: failure.</p>\n{timelines}\n</body></html>\n",
        report.nodes,
        (report.test_to_ms - report.test_from_ms) as f64 / 8.64e7,
        report.test_failures,
        report.horizon_h,
        report.k,
        report.n,
        report.round_min,
        or_message(pr_svg(report)),
        or_message(lead_svg(report)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{AlertStats, MethodReport};

    #[test]
    fn renders_svg_charts_without_fonts() {
        let stats = AlertStats {
            leads_h: vec![0.5, 3.2, 12.0],
            ..Default::default()
        };
        let method = MethodReport {
            name: "model".into(),
            description: "d".into(),
            threshold: 0.4,
            precision: 0.9,
            recall: 0.8,
            recall_precursor: Some(0.85),
            recall_24h: 0.4,
            k: 2,
            n: 3,
            ci95: None,
            f1: 0.85,
            f1_precursor: Some(0.87),
            false_alarms_per_1000_node_days: 0.5,
            early_alerts: 0,
            pr_auc: 0.7,
            lead_time_median_h: Some(3.2),
            lead_time_p10_h: Some(0.5),
            precision_at_natural_afr: 0.1,
            stats,
            pr_curve: vec![(0.0, 1.0), (0.5, 0.9), (1.0, 0.1)],
        };
        let report = EvalReport {
            nodes: 3,
            test_failures: 1,
            test_from_ms: 0,
            test_to_ms: 86_400_000,
            horizon_h: 24.0,
            k: 2,
            n: 3,
            round_min: 5.0,
            methods: vec![method],
            timelines: vec![Timeline {
                node: "s-1".into(),
                failed_at_ms: Some(40_000_000),
                label: "detected failure".into(),
                points: vec![(0, 0.01), (36_000_000, 0.6)],
                alerts: vec![36_000_000],
            }],
            model_scores: Vec::new(),
            threshold_sweep: Vec::new(),
            policy: None,
            references: Vec::new(),
        };
        let html = render_html(&report);
        assert!(html.contains("<svg"));
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("AP 0.700"));
        assert!(!html.contains("chart unavailable"), "{html}");
    }
}
