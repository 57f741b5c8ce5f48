//! `augur-predict`: generate synthetic traces, train, evaluate, score and benchmark the failure
//! predictor.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use augur_predictor::disk::eval::{evaluate_disk, DiskEvalConfig};
use augur_predictor::disk::train::{train_disk, DiskTrainConfig};
use augur_predictor::disk::DiskModel;
use augur_predictor::eval::{evaluate, score_trace, tune_alert_rule, EvalConfig, TuneConfig};
use augur_predictor::generate::{generate, GeneratorConfig};
use augur_predictor::import::{import_backblaze, parse_date_ms, BackblazeImport};
use augur_predictor::model::ModelError;
use augur_predictor::model::{Model, ModelInfo};
use augur_predictor::progress::Progress;
use augur_predictor::split::NodeSplit;
use augur_predictor::trace::Trace;
use augur_predictor::train::{train, TrainConfig};
use clap::{Parser, Subcommand};

mod output;
use output::{bench, opt3, print_report, read_trace, score, write_report, write_scores};

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
        /// Which model: `node` (node metrics), `disk` (SMART) or `auto` (node when the
        /// trace has node metrics, else disk).
        #[arg(long, default_value = "auto")]
        kind: String,
        /// Prediction horizon H, e.g. 24h, 30d (default: 24h for node, 30d for disk models).
        #[arg(long, value_parser = parse_duration_ms)]
        horizon: Option<i64>,
        /// Fraction of nodes that train, by a hash of the node id; the rest are held out and
        /// `eval` reads only them (default: 0.7 for disk models, 1 for node models).
        #[arg(long)]
        train_frac: Option<f64>,
        /// Disk models: salt of the node hash (another salt, another split).
        #[arg(long, default_value_t = 0)]
        split_salt: u64,
        /// Disk models: train only on data before this date (YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_date_ms)]
        until: Option<i64>,
        /// Cross-validation folds over node groups (node models: 0 keeps the old split of
        /// the span into a fit and a calibration slice).
        #[arg(long, default_value_t = 4)]
        folds: usize,
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
        /// Keep one in this many failure-free rounds as tree rows (default: 3 for node
        /// models, 25 for disk models, whose daily rounds number in the tens of millions).
        #[arg(long, value_parser = parse_positive)]
        negative_stride: Option<usize>,
        /// Autoencoder epochs.
        #[arg(long, default_value_t = 12)]
        lstm_epochs: usize,
        /// Healthy windows for the autoencoder.
        #[arg(long, default_value_t = 6000)]
        lstm_windows: usize,
        /// k of the k-of-n alert rule (node models).
        #[arg(long, default_value_t = 2, value_parser = parse_positive)]
        k: usize,
        /// n of the k-of-n alert rule (node models).
        #[arg(long, default_value_t = 3, value_parser = parse_positive)]
        n: usize,
        /// False-alarm budget per 1000 healthy node-days for the threshold (node models:
        /// default 1; disk models: default the out-of-fold rate of Backblaze's rule).
        #[arg(long)]
        max_false_alarms: Option<f64>,
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
        /// Override the model's k (node models).
        #[arg(long, value_parser = parse_positive)]
        k: Option<usize>,
        /// Override the model's n (node models).
        #[arg(long, value_parser = parse_positive)]
        n: Option<usize>,
        /// Disk models: test rounds from this date (default: the model's training cut-off).
        #[arg(long, value_parser = parse_date_ms)]
        test_from_date: Option<i64>,
        /// Bootstrap resamples (over nodes) for the 95% intervals (0: none).
        #[arg(long, default_value_t = 200)]
        bootstrap: usize,
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
    /// Turn another fleet's failure data into a trace directory.
    Import {
        #[command(subcommand)]
        source: ImportSource,
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

#[derive(Subcommand)]
enum ImportSource {
    /// Backblaze drive stats in start-stop form (`hds.csv.gz`): one node per drive, one
    /// SMART-only sample per drive-day, failures from the `fails` column.
    Backblaze {
        /// The CSV (plain or .gz).
        file: PathBuf,
        /// Output trace directory (created).
        #[arg(long)]
        out: PathBuf,
        /// Keep only N never-failed drives (seeded sample); every failed drive is kept.
        #[arg(long)]
        healthy: Option<usize>,
        /// Seed of the healthy sample.
        #[arg(long, default_value_t = 20_261_128)]
        seed: u64,
    },
}

/// A count that must be at least 1 (`--k 0` would alert on every round).
fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("`{s}` is not a positive integer")),
    }
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
            kind,
            horizon,
            train_frac,
            split_salt,
            until,
            folds,
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
            if k > n {
                bail!("need 1 <= k <= n (got k={k}, n={n})");
            }
            let frac_for =
                |kind: &str| train_frac.unwrap_or(if kind == "disk" { 0.7 } else { 1.0 });
            if !(0.05..=1.0).contains(&frac_for(&kind)) {
                bail!("--train-frac must be in 0.05..=1");
            }
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let t = Instant::now();
            let mut split = NodeSplit {
                train_frac: frac_for(&kind),
                salt: split_salt,
            };
            let trace = if kind == "disk" {
                // Held-out nodes are never read: a full Backblaze import is large.
                Trace::read_dir_filtered(
                    &traces,
                    &|n| split.is_train(n),
                    &progress.bar("reading sample files"),
                )
                .with_context(|| format!("reading trace {}", traces.display()))?
            } else {
                read_trace(&traces, &progress)?
            };
            let read_s = t.elapsed().as_secs_f64();
            let has_metrics = trace.nodes.iter().any(|s| !s.ts.is_empty());
            let has_smart = trace.nodes.iter().any(|s| !s.smart.is_empty());
            let kind = match kind.as_str() {
                "auto" if has_metrics => "node",
                "auto" if has_smart => "disk",
                "auto" => bail!(
                    "{}: the samples carry neither node metrics nor SMART",
                    traces.display()
                ),
                "node" | "disk" => kind.as_str(),
                other => bail!("--kind {other}: use node, disk or auto"),
            };
            split.train_frac = frac_for(kind);
            if kind == "disk" {
                let mut cfg = DiskTrainConfig {
                    horizon_ms: horizon.unwrap_or(30 * 86_400_000),
                    split,
                    until_ms: until,
                    folds,
                    max_false_alarms,
                    ..Default::default()
                };
                if let Some(s) = negative_stride {
                    cfg.negative_stride = s;
                }
                let (model, report) = train_disk(
                    &trace,
                    &cfg,
                    &traces.display().to_string(),
                    &command,
                    &progress,
                )?;
                model.save(&out)?;
                let i = &model.info;
                println!(
                    "disk model: {} training devices, {} failures before the cut-off, {:.0} device-days; read {read_s:.1} s, total {:.1} s",
                    i.devices,
                    i.failures,
                    i.device_days,
                    t.elapsed().as_secs_f64()
                );
                for (phase, s) in &report.seconds {
                    println!("  {phase:<22} {s:.1} s");
                }
                println!(
                    "attributes: {}; tree rows {} positive / {} negative",
                    model.spec.attrs.join(", "),
                    i.training_rows.0,
                    i.training_rows.1
                );
                for (name, ap) in &i.cv_pr_auc {
                    println!("  out-of-fold PR-AUC {name}: {ap:.4}");
                }
                if let Some((thr, k, n, p, r, fa, f1)) = report.rule {
                    println!(
                        "Backblaze rule out of fold: log(1+raw) >= {thr:.3} {k}-of-{n}: precision {p:.3} recall {r:.3} FA/1000 device-days {fa:.2} F1 {f1:.3}"
                    );
                }
                let (p, r, fa, f1) = i.cv_at_rule;
                println!(
                    "model out of fold ({}, budget {:.2} FA/1000 device-days): {}-of-{} at {:.4}: precision {p:.3} recall {r:.3} FA/1000 device-days {fa:.2} F1 {f1:.3}",
                    i.chosen, report.budget, model.alert.k, model.alert.n, model.alert.threshold
                );
                println!(
                    "calibrated at {:.3e} failures per device-day",
                    i.calibrated_failures_per_device_day
                );
                let top: Vec<String> = report
                    .top_features
                    .iter()
                    .map(|(n, g)| format!("{n} {:.1}%", g * 100.0))
                    .collect();
                println!("top features by gain: {}", top.join(", "));
                println!("model written to {}", out.display());
                return Ok(());
            }
            let mut cfg = TrainConfig {
                horizon_ms: horizon.unwrap_or(86_400_000),
                round_ms: round,
                tree_horizon_ms: tree_horizon,
                skip_gap: !keep_gap,
                fit_frac,
                negative_stride: negative_stride.unwrap_or(3),
                k,
                n,
                max_false_alarms: max_false_alarms.unwrap_or(1.0),
                min_precision,
                seed,
                lstm_windows,
                cv_folds: folds,
                split,
                ..Default::default()
            };
            cfg.gbt.iterations = trees;
            cfg.lstm.epochs = lstm_epochs;
            let info = ModelInfo {
                trained_on: traces.display().to_string(),
                command,
                ..Default::default()
            };
            let (model, report) = train(&trace, &cfg, info, &progress)?;
            model.save(&out)?;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            let c = &report.calibration;
            println!(
                "trained on {} of {} nodes ({} samples in the trace), {} failures among them{}: read {read_s:.1} s, total {:.1} s",
                model.info.nodes,
                trace.nodes.len(),
                trace.sample_count(),
                model.info.failures,
                if model.info.cv_folds > 0 {
                    format!(", {}-fold cross-validation over node groups", model.info.cv_folds)
                } else {
                    String::new()
                },
                t.elapsed().as_secs_f64()
            );
            for (name, ap) in &model.info.cv_pr_auc {
                println!("  out-of-fold PR-AUC {name}: {ap:.4}");
            }
            for (phase, s) in &report.seconds {
                println!("  {phase:<12} {s:.1} s");
            }
            println!(
                "tree rows: {} positive, {} negative; threshold {:.4} ({}-of-{})",
                report.positives, report.negatives, report.threshold, k, n
            );
            println!(
                "{}: precision {:.3} recall {:.3} (precursor {}) false alarms/1000 node-days {:.2} failures {}",
                if model.info.cv_folds > 0 { "out of fold" } else { "calibration slice" },
                c.precision(),
                c.recall(),
                opt3(c.recall_precursor()),
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
            model: model_path,
            traces,
            json,
            html,
            test_from,
            k,
            n,
            threshold,
            scores,
            test_from_date,
            bootstrap,
        } => {
            let model = match Model::load(&model_path) {
                Ok(m) if m.info.split.is_some() => {
                    // Trained on part of the fleet: judge it on the nodes it never saw.
                    let split = m.info.split.unwrap_or_else(NodeSplit::all);
                    let trace = Trace::read_dir_filtered(
                        &traces,
                        &|n| !split.is_train(n),
                        &progress.bar("reading held-out nodes"),
                    )
                    .with_context(|| format!("reading trace {}", traces.display()))?;
                    let cfg = EvalConfig {
                        test_from_frac: test_from,
                        k,
                        n,
                        threshold,
                        bootstrap,
                        ..Default::default()
                    };
                    let report = evaluate(&m, &trace, &cfg, &progress.bar("scoring nodes"))?;
                    print_report(&report);
                    write_report(&report, json.as_deref(), html.as_deref(), scores.as_deref())?;
                    return Ok(());
                }
                Ok(m) => m,
                Err(ModelError::Kind { found, .. }) if found == "disk" => {
                    let disk = DiskModel::load(&model_path)?;
                    let trace = read_trace(&traces, &progress)?;
                    let cfg = DiskEvalConfig {
                        test_from_ms: test_from_date,
                        bootstrap,
                        ..Default::default()
                    };
                    let report = evaluate_disk(&disk, &trace, &cfg)?;
                    print_report(&report);
                    write_report(&report, json.as_deref(), html.as_deref(), scores.as_deref())?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let trace = read_trace(&traces, &progress)?;
            let cfg = EvalConfig {
                test_from_frac: test_from,
                k,
                n,
                threshold,
                bootstrap,
                ..Default::default()
            };
            let report = evaluate(&model, &trace, &cfg, &progress.bar("scoring nodes"))?;
            print_report(&report);
            write_report(&report, json.as_deref(), html.as_deref(), scores.as_deref())?;
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
                    "{:>2}/{:<3} {:>9.4} {:>10.3} {:>7.3} {:>9} {:>9.2} {:>6} {:>9}  {:+.3}",
                    o.k,
                    o.n,
                    o.threshold,
                    o.stats.precision(),
                    o.stats.recall(),
                    opt3(o.stats.recall_precursor()),
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
            let st = &best.stats;
            model.info.tuned_failures_per_node_day =
                Some(st.failures as f64 / st.node_days.max(1e-9));
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
        Command::Import {
            source:
                ImportSource::Backblaze {
                    file,
                    out,
                    healthy,
                    seed,
                },
        } => {
            let t = Instant::now();
            let settings = BackblazeImport {
                healthy,
                seed,
                ..Default::default()
            };
            let summary =
                import_backblaze(&file, &out, &settings, &progress.bar("writing drives"))?;
            println!(
                "{} rows, {} drives in the input; wrote {} drives ({} failed), {} drive-day samples in {} files to {} in {:.1} s",
                summary.rows,
                summary.drives_in_input,
                summary.drives,
                summary.failed,
                summary.samples,
                summary.files,
                out.display(),
                t.elapsed().as_secs_f64()
            );
        }
        Command::Bench { model, iterations } => {
            let model = Model::load(&model)?;
            bench(&model, iterations.max(10));
        }
    }
    Ok(())
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
