//! `augur-predict`: generate synthetic traces, train, evaluate, score and benchmark the failure
//! predictor.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use augur_predictor::eval::{evaluate, score_trace, tune_alert_rule, EvalConfig, TuneConfig};
use augur_predictor::generate::{generate, GeneratorConfig, NodeSim};
use augur_predictor::model::{Model, ModelInfo};
use augur_predictor::policy::{ClusterContext, NodeInput, PolicyConfig, RiskPolicy};
use augur_predictor::progress::Progress;
use augur_predictor::report::render_html;
use augur_predictor::trace::{NodeSeries, Trace};
use augur_predictor::train::{train, TrainConfig};
use clap::{Parser, Subcommand};
use rand::SeedableRng;

/// Failure prediction for Augur storage nodes.
#[derive(Parser)]
#[command(name = "augur-predict", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `augur_predictor=debug`.
    #[arg(long, global = true, default_value = "warn", env = "AUGUR_LOG")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic trace directory (see predictor/README.md for the model).
    Generate {
        /// Number of nodes.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Days simulated.
        #[arg(long, default_value_t = 30.0)]
        days: f64,
        /// Sample interval, e.g. 60s, 5s, 1m.
        #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
        interval: i64,
        /// Master seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
        /// Fleet annual failure rate at natural rate.
        #[arg(long, default_value_t = 0.05)]
        afr: f64,
        /// Hazard multiplier to oversample failures (failure-rich traces).
        #[arg(long, default_value_t = 1.0)]
        failure_boost: f64,
        /// Fraction of failures with no precursor.
        #[arg(long, default_value_t = 0.4)]
        sudden_fraction: f64,
        /// False precursors per expected failure.
        #[arg(long, default_value_t = 4.0)]
        false_precursor_ratio: f64,
    },
    /// Train a model on a trace directory.
    Train {
        /// Trace directory.
        #[arg(long)]
        traces: PathBuf,
        /// Prediction horizon H.
        #[arg(long, default_value = "24h", value_parser = parse_duration_ms)]
        horizon: i64,
        /// Output model file.
        #[arg(long)]
        out: PathBuf,
        /// Time between scoring rounds.
        #[arg(long, default_value = "5m", value_parser = parse_duration_ms)]
        round: i64,
        /// Number of boosted trees.
        #[arg(long, default_value_t = 150)]
        trees: usize,
        /// Label horizon of the trees (see `TrainConfig::tree_horizon_ms`).
        #[arg(long, default_value = "6h", value_parser = parse_duration_ms)]
        tree_horizon: i64,
        /// Keep rounds between the tree horizon and H before a failure as negatives.
        #[arg(long)]
        keep_gap: bool,
        /// Fraction of the trace's time span the trees are fitted on (the rest calibrates).
        #[arg(long, default_value_t = 0.85)]
        fit_frac: f64,
        /// Keep one in this many failure-free rounds as tree rows.
        #[arg(long, default_value_t = 3)]
        negative_stride: usize,
        /// Autoencoder epochs.
        #[arg(long, default_value_t = 12)]
        lstm_epochs: usize,
        /// Healthy windows for the autoencoder.
        #[arg(long, default_value_t = 6000)]
        lstm_windows: usize,
        /// k of the k-of-n alert rule.
        #[arg(long, default_value_t = 2)]
        k: usize,
        /// n of the k-of-n alert rule.
        #[arg(long, default_value_t = 3)]
        n: usize,
        /// False-alarm budget per 1000 healthy node-days for the threshold.
        #[arg(long, default_value_t = 1.0)]
        max_false_alarms: f64,
        /// Precision floor for the threshold (recall is maximised under it).
        #[arg(long, default_value_t = 0.85)]
        min_precision: f64,
        /// Seed of training's sampling.
        #[arg(long, default_value_t = 17)]
        seed: u64,
    },
    /// Evaluate a model and two baselines on a time-ordered split of a trace.
    Eval {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Trace directory.
        #[arg(long)]
        traces: PathBuf,
        /// Write the full report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an HTML report (PR curves, lead times, timelines) here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Fraction of the time span before the test slice.
        #[arg(long, default_value_t = 0.5)]
        test_from: f64,
        /// Override the model's k.
        #[arg(long)]
        k: Option<usize>,
        /// Override the model's n.
        #[arg(long)]
        n: Option<usize>,
        /// Override the model's threshold.
        #[arg(long)]
        threshold: Option<f64>,
        /// Write the model's per-round test-slice scores here (JSON lines, one node each).
        #[arg(long)]
        scores: Option<PathBuf>,
    },
    /// Re-choose a model's alert rule (k, n, threshold) on a validation trace: the one whose
    /// weakest target (precision, false alarms, recall, lead) has the most room. Use a seed
    /// neither training nor evaluation uses.
    Tune {
        /// Model file to start from.
        #[arg(long)]
        model: PathBuf,
        /// Validation trace directory.
        #[arg(long)]
        traces: PathBuf,
        /// Where to write the tuned model (may be the input).
        #[arg(long)]
        out: PathBuf,
        /// Precision target.
        #[arg(long, default_value_t = 0.8)]
        min_precision: f64,
        /// False alarms per 1000 healthy node-days allowed.
        #[arg(long, default_value_t = 1.0)]
        max_false_alarms: f64,
        /// Recall target over failures with a precursor.
        #[arg(long, default_value_t = 0.85)]
        min_recall: f64,
        /// Median lead target of true alerts.
        #[arg(long, default_value = "2h", value_parser = parse_duration_ms)]
        min_lead: i64,
        /// Candidate rules, `k/n` separated by commas.
        #[arg(long, default_value = "2/3,3/3,3/6,2/12,3/12,4/12")]
        rules: String,
        /// Also write the per-round validation scores here (JSON lines, as `eval --scores`).
        #[arg(long)]
        scores: Option<PathBuf>,
    },
    /// Print each node's risk over time with reasons, then the policy's verdict at the end.
    Score {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Trace directory.
        #[arg(long)]
        traces: PathBuf,
        /// Time between printed rows.
        #[arg(long, default_value = "6h", value_parser = parse_duration_ms)]
        every: i64,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Only print rows with at least this risk.
        #[arg(long, default_value_t = 0.0)]
        min_risk: f64,
        /// Emit JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark scoring one node's window (release build; reports medians).
    Bench {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Timed iterations per case.
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
}

/// Parses `2/3,3/12` into (k, n) pairs with 1 <= k <= n.
fn parse_rules(s: &str) -> Result<Vec<(usize, usize)>, String> {
    s.split(',')
        .map(|r| {
            let (k, n) = r
                .trim()
                .split_once('/')
                .ok_or_else(|| format!("rule `{r}` is not k/n"))?;
            let k: usize = k.parse().map_err(|_| format!("bad k in `{r}`"))?;
            let n: usize = n.parse().map_err(|_| format!("bad n in `{r}`"))?;
            if k == 0 || k > n {
                return Err(format!("rule `{r}` needs 1 <= k <= n"));
            }
            Ok((k, n))
        })
        .collect()
}

/// Parses `500ms`, `60s`, `5m`, `24h`, `2d` (a bare number is seconds).
fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 60s, 5m, 24h"))?;
    let mult = match unit {
        "ms" => 1.0,
        "" | "s" => 1e3,
        "m" | "min" => 6e4,
        "h" => 3.6e6,
        "d" => 8.64e7,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m, h, d)"
            ))
        }
    };
    let ms = (v * mult).round();
    if ms.is_nan() || ms < 1.0 {
        return Err(format!("duration `{s}` must be positive"));
    }
    Ok(ms as i64)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    let progress = Progress::stderr();
    match cli.command {
        Command::Generate {
            nodes,
            days,
            interval,
            seed,
            out,
            afr,
            failure_boost,
            sudden_fraction,
            false_precursor_ratio,
        } => {
            if nodes == 0 || days <= 0.0 {
                bail!("--nodes and --days must be positive");
            }
            if !(0.0..1.0).contains(&afr) || failure_boost <= 0.0 {
                bail!("--afr must be in 0..1 and --failure-boost positive");
            }
            if !(0.0..=1.0).contains(&sudden_fraction) {
                bail!("--sudden-fraction must be in 0..=1");
            }
            let cfg = GeneratorConfig {
                nodes,
                days,
                interval_ms: interval,
                seed,
                afr,
                failure_boost,
                sudden_fraction,
                false_precursor_ratio,
                ..Default::default()
            };
            let t = Instant::now();
            let summary = generate(&cfg, &out, &progress.bar("generating nodes"))
                .with_context(|| format!("generating into {}", out.display()))?;
            println!(
                "wrote {} samples of {nodes} nodes in {} files to {} in {:.1} s: {} failures ({} with precursor), {} false precursors",
                summary.samples,
                summary.files,
                out.display(),
                t.elapsed().as_secs_f64(),
                summary.failures,
                summary.precursor_failures,
                summary.false_precursors
            );
        }
        Command::Train {
            traces,
            horizon,
            out,
            round,
            trees,
            tree_horizon,
            keep_gap,
            fit_frac,
            negative_stride,
            lstm_epochs,
            lstm_windows,
            k,
            n,
            max_false_alarms,
            min_precision,
            seed,
        } => {
            if k == 0 || k > n {
                bail!("need 1 <= k <= n (got k={k}, n={n})");
            }
            let t = Instant::now();
            let trace = read_trace(&traces, &progress)?;
            let read_s = t.elapsed().as_secs_f64();
            let mut cfg = TrainConfig {
                horizon_ms: horizon,
                round_ms: round,
                tree_horizon_ms: tree_horizon,
                skip_gap: !keep_gap,
                fit_frac,
                negative_stride,
                k,
                n,
                max_false_alarms,
                min_precision,
                seed,
                lstm_windows,
                ..Default::default()
            };
            cfg.gbt.iterations = trees;
            cfg.lstm.epochs = lstm_epochs;
            let info = ModelInfo {
                trained_on: traces.display().to_string(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
                ..Default::default()
            };
            let (model, report) = train(&trace, &cfg, info, &progress)?;
            model.save(&out)?;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            let c = &report.calibration;
            println!(
                "trained on {} samples / {} nodes / {} failures: read {read_s:.1} s, total {:.1} s",
                trace.sample_count(),
                trace.nodes.len(),
                trace.failures.len(),
                t.elapsed().as_secs_f64()
            );
            for (phase, s) in &report.seconds {
                println!("  {phase:<12} {s:.1} s");
            }
            println!(
                "tree rows: {} positive, {} negative; threshold {:.4} ({}-of-{})",
                report.positives, report.negatives, report.threshold, k, n
            );
            println!(
                "calibration slice: precision {:.3} recall {:.3} (precursor {:.3}) false alarms/1000 node-days {:.2} failures {}",
                c.precision(),
                c.recall(),
                c.recall_precursor(),
                c.false_alarms_per_1000(),
                c.failures
            );
            let top: Vec<String> = report
                .top_features
                .iter()
                .map(|(n, g)| format!("{n} {:.1}%", g * 100.0))
                .collect();
            println!("top features by gain: {}", top.join(", "));
            println!("model written to {} ({} bytes)", out.display(), size);
        }
        Command::Eval {
            model,
            traces,
            json,
            html,
            test_from,
            k,
            n,
            threshold,
            scores,
        } => {
            let model = Model::load(&model)?;
            let trace = read_trace(&traces, &progress)?;
            let cfg = EvalConfig {
                test_from_frac: test_from,
                k,
                n,
                threshold,
                ..Default::default()
            };
            let report = evaluate(&model, &trace, &cfg, &progress.bar("scoring nodes"))?;
            println!(
                "test slice: {} nodes, {} failures, H = {} h, {}-of-{} rounds every {} min",
                report.nodes,
                report.test_failures,
                report.horizon_h,
                report.k,
                report.n,
                report.round_min
            );
            println!(
                "{:<18} {:>9} {:>7} {:>9} {:>6} {:>9} {:>6} {:>7} {:>9} {:>8}",
                "method",
                "precision",
                "recall",
                "rec.prec",
                "F1",
                "FA/1000d",
                "early",
                "PR-AUC",
                "lead med",
                "lead p10"
            );
            for m in &report.methods {
                let h = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} h"));
                println!(
                    "{:<18} {:>9.3} {:>7.3} {:>9.3} {:>6.3} {:>9.2} {:>6} {:>7.3} {:>9} {:>8}",
                    m.name,
                    m.precision,
                    m.recall,
                    m.recall_precursor,
                    m.f1,
                    m.false_alarms_per_1000_node_days,
                    m.early_alerts,
                    m.pr_auc,
                    h(m.lead_time_median_h),
                    h(m.lead_time_p10_h)
                );
            }
            println!("model operating curve (threshold: precision / precursor recall / FA per 1000 node-days / median lead):");
            for p in &report.threshold_sweep {
                println!(
                    "  {:.2}: {:.3} / {:.3} / {:.2} / {}",
                    p.threshold,
                    p.precision,
                    p.recall_precursor,
                    p.false_alarms_per_1000_node_days,
                    p.lead_time_median_h
                        .map_or("-".into(), |v| format!("{v:.2} h"))
                );
            }
            if let Some(path) = json {
                let f = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                serde_json::to_writer_pretty(std::io::BufWriter::new(f), &report)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = html {
                std::fs::write(&path, render_html(&report))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = scores {
                write_scores(&path, &report.model_scores)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Tune {
            model: model_path,
            traces,
            out,
            min_precision,
            max_false_alarms,
            min_recall,
            min_lead,
            rules,
            scores: scores_out,
        } => {
            let mut model = Model::load(&model_path)?;
            let rules = parse_rules(&rules).map_err(anyhow::Error::msg)?;
            let trace = read_trace(&traces, &progress)?;
            // Skip the first baseline span: windows there see a truncated history.
            let from = trace.start_ms() + model.window.baseline_ms;
            let scores = score_trace(&model, &trace, from, &progress.bar("scoring nodes"));
            if let Some(path) = scores_out {
                write_scores(&path, &scores)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let cfg = TuneConfig {
                rules,
                min_precision,
                max_false_alarms,
                min_recall,
                min_lead_h: min_lead as f64 / 3.6e6,
            };
            let Some((best, options)) = tune_alert_rule(&scores, model.horizon_ms, &cfg) else {
                bail!("no candidate rules");
            };
            println!(
                "rule   threshold  precision  recall  rec.prec  FA/1000d  early  lead med   slack"
            );
            for o in &options {
                let med = {
                    let mut l = o.stats.leads_h.clone();
                    l.sort_by(f64::total_cmp);
                    l.get(l.len() / 2)
                        .map_or("-".into(), |v| format!("{v:.2} h"))
                };
                println!(
                    "{:>2}/{:<3} {:>9.4} {:>10.3} {:>7.3} {:>9.3} {:>9.2} {:>6} {:>9}  {:+.3}",
                    o.k,
                    o.n,
                    o.threshold,
                    o.stats.precision(),
                    o.stats.recall(),
                    o.stats.recall_precursor(),
                    o.stats.false_alarms_per_1000(),
                    o.stats.early_alerts,
                    med,
                    o.slack
                );
            }
            println!(
                "chosen: {}-of-{} at {:.4}, {} every target on the validation trace ({} failures, {} healthy node-days)",
                best.k,
                best.n,
                best.threshold,
                if best.meets_goal() { "meeting" } else { "NOT meeting" },
                best.stats.failures,
                best.stats.healthy_node_days.round()
            );
            model.alert.k = best.k;
            model.alert.n = best.n;
            model.alert.threshold = best.threshold;
            model.info.tune_command = std::env::args().collect::<Vec<_>>().join(" ");
            model.save(&out)?;
            println!("model written to {}", out.display());
        }
        Command::Score {
            model,
            traces,
            every,
            node,
            min_risk,
            json,
        } => {
            let model = Model::load(&model)?;
            let trace = read_trace(&traces, &progress)?;
            score(&model, &trace, every, node.as_deref(), min_risk, json)?;
        }
        Command::Bench { model, iterations } => {
            let model = Model::load(&model)?;
            bench(&model, iterations.max(10));
        }
    }
    Ok(())
}

fn write_scores(path: &Path, nodes: &[augur_predictor::eval::NodeScores]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for s in nodes {
        serde_json::to_writer(&mut out, s)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn read_trace(dir: &Path, progress: &Progress) -> Result<Trace> {
    Trace::read_dir(dir, &progress.bar("reading sample files"))
        .with_context(|| format!("reading trace {}", dir.display()))
}

fn score(
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

fn bench(model: &Model, iterations: usize) {
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
            times.sort_by(f64::total_cmp);
            println!(
                "score one window ({} samples = {} h at {} s, {label}): median {:.1} us, p90 {:.1} us, min {:.1} us over {iterations} runs",
                series.range(at - model.window.baseline_ms, at).len(),
                model.window.baseline_ms / 3_600_000,
                interval_ms / 1000,
                times[times.len() / 2],
                times[times.len() * 9 / 10],
                times[0]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_duration_ms, parse_rules};

    #[test]
    fn rules_parse_and_reject_nonsense() {
        assert_eq!(parse_rules("2/3, 3/12"), Ok(vec![(2, 3), (3, 12)]));
        assert!(parse_rules("3/2").is_err());
        assert!(parse_rules("0/2").is_err());
        assert!(parse_rules("2-3").is_err());
    }

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration_ms("60s"), Ok(60_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("24h"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("1.5d"), Ok(129_600_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("30"), Ok(30_000));
        assert!(parse_duration_ms("5w").is_err());
        assert!(parse_duration_ms("h").is_err());
        assert!(parse_duration_ms("0s").is_err());
    }
}
