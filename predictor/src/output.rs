//! What the CLI prints and writes: evaluation tables, reports, per-round scores, the
//! `score` listing and the `bench` timings (kept apart from argument handling in `main.rs`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use augur_predictor::agent::{AgentConfig, HistoryHandle};
use augur_predictor::eval::EvalReport;
use augur_predictor::generate::NodeSim;
use augur_predictor::model::Model;
use augur_predictor::policy::{ClusterContext, NodeInput, PolicyConfig, RiskPolicy};
use augur_predictor::progress::Progress;
use augur_predictor::report::render_html;
use augur_predictor::trace::{NodeSeries, Trace};
use rand::SeedableRng;

/// Prints the headline table (with 95% intervals where computed) and the operating curve.
pub(crate) fn print_report(report: &EvalReport) {
    println!(
        "test slice: {} nodes, {} failures, H = {} h, rounds every {} min",
        report.nodes, report.test_failures, report.horizon_h, report.round_min
    );
    println!(
        "{:<18} {:>5} {:>9} {:>7} {:>9} {:>7} {:>6} {:>9} {:>6} {:>7} {:>9} {:>8}",
        "method",
        "rule",
        "precision",
        "recall",
        "rec.prec",
        "rec.24h",
        "F1",
        "FA/1000d",
        "early",
        "PR-AUC",
        "lead med",
        "lead p10"
    );
    let extra: Vec<&augur_predictor::eval::MethodReport> =
        report.policy.iter().chain(&report.references).collect();
    for m in report.methods.iter().chain(extra) {
        let h = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} h"));
        println!(
            "{:<18} {:>5} {:>9.3} {:>7.3} {:>9} {:>7.3} {:>6.3} {:>9.2} {:>6} {:>7.3} {:>9} {:>8}",
            m.name,
            format!("{}/{}", m.k, m.n),
            m.precision,
            m.recall,
            opt3(m.recall_precursor),
            m.recall_24h,
            m.f1,
            m.false_alarms_per_1000_node_days,
            m.early_alerts,
            m.pr_auc,
            h(m.lead_time_median_h),
            h(m.lead_time_p10_h)
        );
        if let Some(ci) = &m.ci95 {
            let iv = |v: &Option<augur_predictor::eval::Interval>| {
                v.map_or("-".to_string(), |i| format!("[{:.3}, {:.3}]", i.lo, i.hi))
            };
            println!(
                "{:<18} 95% (bootstrap over nodes, {} resamples): precision {} recall {} rec.24h {} F1 {} FA/1000d {} PR-AUC {} lead med {} p10 {}",
                "",
                ci.resamples,
                iv(&ci.precision),
                iv(&ci.recall),
                iv(&ci.recall_24h),
                iv(&ci.f1),
                iv(&ci.false_alarms_per_1000_node_days),
                iv(&ci.pr_auc),
                iv(&ci.lead_time_median_h),
                iv(&ci.lead_time_p10_h)
            );
        }
    }
    println!("model operating curve (threshold: precision / recall / precursor recall / FA per 1000 node-days / median lead):");
    for p in &report.threshold_sweep {
        println!(
            "  {:.4}: {:.3} / {:.3} / {} / {:.2} / {}",
            p.threshold,
            p.precision,
            p.recall,
            opt3(p.recall_precursor),
            p.false_alarms_per_1000_node_days,
            p.lead_time_median_h
                .map_or("-".into(), |v| format!("{v:.2} h"))
        );
    }
}

/// Writes the JSON report, the HTML report and the model's per-round scores, as asked.
pub(crate) fn write_report(
    report: &EvalReport,
    json: Option<&Path>,
    html: Option<&Path>,
    scores: Option<&Path>,
) -> Result<()> {
    if let Some(path) = json {
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), report)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = html {
        std::fs::write(path, render_html(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = scores {
        write_scores(path, &report.model_scores)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Three decimals, or `unknown` (precursor recall of a trace that does not record causes).
pub(crate) fn opt3(v: Option<f64>) -> String {
    v.map_or("unknown".to_string(), |v| format!("{v:.3}"))
}

pub(crate) fn write_scores(path: &Path, nodes: &[augur_predictor::eval::NodeScores]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for s in nodes {
        serde_json::to_writer(&mut out, s)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a trace directory with a progress bar, naming the directory in any error.
pub(crate) fn read_trace(dir: &Path, progress: &Progress) -> Result<Trace> {
    Trace::read_dir(dir, &progress.bar("reading sample files"))
        .with_context(|| format!("reading trace {}", dir.display()))
}

pub(crate) fn score(
    model: &Model,
    trace: &Trace,
    every: i64,
    only: Option<&str>,
    min_risk: f64,
    json: bool,
) -> Result<()> {
    let end = trace.end_ms();
    let mut latest = Vec::new();
    for s in &trace.nodes {
        if only.is_some_and(|n| n != s.node) {
            continue;
        }
        let (Some(&first), Some(&last)) = (s.ts.first(), s.ts.last()) else {
            continue;
        };
        let mut t = first + every - first.rem_euclid(every);
        while t <= last {
            if let Some(risk) = model.score_series(s, t, 3) {
                if risk.probability >= min_risk {
                    if json {
                        println!("{}", serde_json::to_string(&risk)?);
                    } else {
                        let reasons: Vec<String> = risk
                            .reasons
                            .iter()
                            .map(|r| {
                                format!("{}={:.3} ({:+.2})", r.feature, r.value, r.contribution)
                            })
                            .collect();
                        println!(
                            "{:<8} {:>14} risk {:.4} anomaly {:.3}  {}",
                            s.node,
                            t,
                            risk.probability,
                            risk.anomaly,
                            reasons.join(", ")
                        );
                    }
                }
            }
            t += every;
        }
        if last + model.alert.round_ms >= end {
            if let Some(risk) = model.score_series(s, last, 3) {
                latest.push(NodeInput {
                    risk,
                    data_bytes: 1,
                });
            }
        }
    }
    if json {
        return Ok(());
    }
    let mut policy = RiskPolicy::new(PolicyConfig::for_model(model))?;
    let decision = policy.evaluate(&latest, &ClusterContext::default());
    println!(
        "\npolicy at end of trace: {} of {} live nodes at risk{}",
        decision.at_risk.len(),
        latest.len(),
        if decision.storm {
            " — STORM GUARD: automated moves frozen"
        } else {
            ""
        }
    );
    for d in &decision.at_risk {
        println!(
            "  {:<8} risk {:.4} action {:?}{}  {}",
            d.node,
            d.risk,
            d.action,
            if d.holdout { " (holdout)" } else { "" },
            d.reasons.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn bench(model: &Model, iterations: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for interval_ms in [60_000i64, 5_000] {
        let profile = NodeSim::random_profile("bench".into(), 0, &mut rng);
        let mut sim = NodeSim::new(profile, 1);
        let span = model.window.baseline_ms + 3_600_000;
        let samples: Vec<_> = (0..span / interval_ms)
            .map(|i| sim.sample(1_763_942_400_000 + i * interval_ms, interval_ms))
            .collect();
        let series = NodeSeries::from_samples(&samples);
        let at = series.ts.last().copied().unwrap_or(0);
        for (label, explain) in [("risk only", 0usize), ("risk + 3 SHAP reasons", 3)] {
            let mut times = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                let t = Instant::now();
                let r = model.score_series(&series, at, explain);
                std::hint::black_box(r);
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let (median, p90, min) = spread(&mut times);
            println!(
                "score one window ({} samples = {} h at {} s, {label}): median {median:.1} us, p90 {p90:.1} us, min {min:.1} us over {iterations} runs",
                series.range(at - model.window.baseline_ms, at).len(),
                model.window.baseline_ms / 3_600_000,
                interval_ms / 1000,
            );
        }
    }
    bench_storage_node(model, iterations, &mut rng);
}

/// The storage node's path at 5 s, which the cases above do not measure: the agent appends
/// each sample to its bounded history (which keeps the model's grid as samples arrive), and
/// the scorer scores the history with three reasons (`HistoryHandle::score_node`). Beside
/// it, the path the node took before the grid was kept: copy the history
/// (`HistoryHandle::snapshot`) and `Model::score_samples` it, resampling every sample.
fn bench_storage_node(model: &Model, iterations: usize, rng: &mut rand::rngs::StdRng) {
    let interval_ms = 5_000i64;
    let capacity = AgentConfig::default().history_capacity;
    let profile = NodeSim::random_profile("bench".into(), 0, rng);
    let mut sim = NodeSim::new(profile, 1);
    let t0 = 1_763_942_400_000i64;
    let history = HistoryHandle::new(capacity, 0);
    let mut next = 0i64;
    let mut sample = move || {
        next += 1;
        sim.sample(t0 + (next - 1) * interval_ms, interval_ms)
    };
    for _ in 0..capacity {
        history.push(sample());
    }
    std::hint::black_box(history.score_node(model).ok());
    let (mut total, mut append) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let s = sample();
        let t = Instant::now();
        history.push(s);
        let a = t.elapsed();
        let r = history.score_node(model);
        let e = t.elapsed();
        std::hint::black_box(r.ok());
        total.push(e.as_secs_f64() * 1e6);
        append.push(a.as_secs_f64() * 1e6);
    }
    let hours = capacity as i64 * interval_ms / 3_600_000;
    let (median, p90, min) = spread(&mut total);
    let (a_median, a_p90, _) = spread(&mut append);
    println!(
        "storage node at 5 s, history of {capacity} samples = {hours} h (append one sample + score + 3 SHAP reasons from the incremental grid): median {median:.1} us, p90 {p90:.1} us, min {min:.1} us over {iterations} runs; the append alone median {a_median:.1} us, p90 {a_p90:.1} us"
    );
    let mut before = Vec::new();
    for _ in 0..iterations {
        let t = Instant::now();
        let r = model.score_samples(&history.snapshot());
        before.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(r.ok());
    }
    let (median, p90, min) = spread(&mut before);
    println!(
        "storage node at 5 s, the same history, as before the grid was kept (snapshot + score_samples + 3 SHAP reasons): median {median:.1} us, p90 {p90:.1} us, min {min:.1} us over {iterations} runs"
    );
}

/// Median, p90 and minimum of timings (sorts them).
fn spread(times: &mut [f64]) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    (
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[0],
    )
}
