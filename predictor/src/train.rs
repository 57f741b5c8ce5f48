//! Training: normaliser and autoencoder on healthy windows, trees on labelled rounds of an
//! early time slice, calibration and the alert threshold on the later slice.
//!
//! The time-ordered split matters: fleets drift (workload, firmware), so a model is only as
//! good as its performance on data later than what it learned from, and calibration must be
//! fitted where trees were not.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::eval::{choose_threshold_for_precision, pr_curve, AlertStats, NodeScores};
use crate::features::{feature_names, monotone_direction, Normaliser, WindowSpec};
use crate::gbt::{Gbt, GbtConfig, Platt};
use crate::lstm::{LstmAutoencoder, LstmConfig};
use crate::model::{feature_rows, AlertRule, Model, ModelInfo, ANOMALY_FEATURE, SCHEMA_VERSION};
use crate::progress::Progress;
use crate::sample::N_METRICS;
use crate::split::NodeSplit;
use crate::trace::{NodeSeries, Trace};

/// Why training could not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The trace cannot teach anything (no failures, too short...).
    #[error("training data: {0}")]
    Data(String),
    /// The tree learner rejected the data.
    #[error(transparent)]
    Gbt(#[from] crate::gbt::GbtError),
}

/// Training settings; defaults are the shipped model's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Prediction horizon H, ms.
    pub horizon_ms: i64,
    /// Label horizon of the trees, ms. Shorter than H on purpose: rounds a day before a failure
    /// usually show nothing yet, and as positives they teach trees to recognise the failing
    /// *nodes* rather than failing *behaviour*. Calibration then maps scores to P(fail within H).
    pub tree_horizon_ms: i64,
    /// Leave rounds between the tree horizon and H before a failure out of the tree rows.
    /// They are neither: an alert there is a true positive, so they must not be negatives,
    /// yet many show nothing yet (the precursor has not begun) or show a slow precursor that
    /// also appears, harmlessly, on healthy nodes. As negatives they capped the confidence
    /// in severe precursors; as positives they taught trees to alarm on mild ones.
    pub skip_gap: bool,
    /// Time between scoring rounds, ms.
    pub round_ms: i64,
    /// Fraction of the time span used to fit; the rest calibrates.
    pub fit_frac: f64,
    /// Keep one in this many failure-free rounds as tree training rows (weighted back up).
    pub negative_stride: usize,
    /// Share of the total training weight given to positive rows (class rebalancing).
    pub positive_share: f64,
    /// Healthy windows the autoencoder trains on.
    pub lstm_windows: usize,
    /// Metric rows sampled to fit the normaliser.
    pub normaliser_rows: usize,
    /// Autoencoder settings.
    pub lstm: LstmConfig,
    /// Tree settings.
    pub gbt: GbtConfig,
    /// Window geometry.
    pub window: WindowSpec,
    /// k of the alert rule.
    pub k: usize,
    /// n of the alert rule.
    pub n: usize,
    /// False-alarm budget (per 1000 healthy node-days) when choosing the threshold.
    pub max_false_alarms: f64,
    /// Precision floor when choosing the threshold: the threshold maximises recall on the
    /// calibration slice among those meeting this floor and the false-alarm budget. Set above
    /// the operational target, because the slice holds only a few dozen failures.
    pub min_precision: f64,
    /// Seed of all sampling.
    pub seed: u64,
    /// Refuse to train with fewer failures in the fit slice (trees cannot learn failure
    /// behaviour from a handful).
    pub min_failures: usize,
    /// Refuse to train with fewer failures in the calibration slice: a threshold chosen on
    /// a few failures is noise (a 10-minute fleet's slice held 4 and yielded a threshold of
    /// 0.006 and a model that caught nothing).
    pub min_calibration_failures: usize,
    /// Node metrics sampled less often than this cannot show precursors that give hours of
    /// warning: refuse (a daily log wants a disk model on SMART instead), ms.
    pub max_interval_ms: i64,
    /// Cross-validation folds over node groups (>= 2): the trees are fitted on the whole
    /// span of K-1 groups of nodes and score the group they did not see; calibration, the
    /// threshold and the choice between tree depths are made on those out-of-fold scores
    /// of every training node. 0 keeps the old time-ordered split (fit on the first
    /// `fit_frac` of the span, calibrate and choose the threshold on the rest), which left
    /// a few failures to choose a threshold on.
    pub cv_folds: usize,
    /// Which nodes train (the rest are held out for `eval`).
    pub split: NodeSplit,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            horizon_ms: 24 * 3_600_000,
            tree_horizon_ms: 6 * 3_600_000,
            skip_gap: true,
            round_ms: 5 * 60_000,
            fit_frac: 0.85,
            negative_stride: 3,
            positive_share: 0.2,
            lstm_windows: 6000,
            normaliser_rows: 200_000,
            lstm: LstmConfig::default(),
            gbt: GbtConfig::default(),
            window: WindowSpec::default(),
            k: 2,
            n: 3,
            max_false_alarms: 1.0,
            min_precision: 0.85,
            seed: 17,
            min_failures: 15,
            min_calibration_failures: 8,
            max_interval_ms: 3_600_000,
            cv_folds: 4,
            split: NodeSplit::all(),
        }
    }
}

/// What training measured on its own calibration slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Rows the trees were fitted on (positives).
    pub positives: usize,
    /// Rows the trees were fitted on (negatives, before weighting).
    pub negatives: usize,
    /// Alert statistics on the calibration slice at the chosen threshold.
    pub calibration: AlertStats,
    /// The chosen threshold.
    pub threshold: f64,
    /// Seconds per phase: read is not included (the caller reads).
    pub seconds: Vec<(String, f64)>,
    /// The ten features with the largest share of split gain.
    pub top_features: Vec<(String, f32)>,
}

/// One node's tree rows: values (row-major), labels, weights, and the node's fold.
type NodeRows = (Vec<f64>, Vec<f64>, Vec<f64>, usize);

fn rounds_of(
    series: &NodeSeries,
    round: i64,
    from: i64,
    to: i64,
    failed_at: Option<i64>,
) -> Vec<i64> {
    let (Some(&first), Some(&last)) = (series.ts.first(), series.ts.last()) else {
        return Vec::new();
    };
    let lo = first.max(from);
    let t0 = lo + (round - lo.rem_euclid(round)) % round;
    (0..)
        .map(|i| t0 + i * round)
        .take_while(|&t| t <= last.min(to))
        .filter(|&t| failed_at.is_none_or(|f| t < f))
        .collect()
}

/// Trains a model on `trace`.
pub fn train(
    trace: &Trace,
    cfg: &TrainConfig,
    info: ModelInfo,
    progress: &Progress,
) -> Result<(Model, TrainReport), TrainError> {
    let started = Instant::now();
    let mut seconds = Vec::new();
    let mut phase = Instant::now();
    let mut lap = |name: &str, phase: &mut Instant| {
        seconds.push((name.to_string(), phase.elapsed().as_secs_f64()));
        tracing::info!(
            phase = name,
            secs = phase.elapsed().as_secs_f64(),
            "training phase done"
        );
        *phase = Instant::now();
    };
    if trace.failures.is_empty() {
        return Err(TrainError::Data(
            "the trace has no failures; generate with --failure-boost or add failures.jsonl".into(),
        ));
    }
    let h = cfg.horizon_ms;
    let th = cfg.tree_horizon_ms.clamp(1, h);
    let start = trace.start_ms();
    let end = trace.end_ms();
    // The trace's sampling interval decides the window geometry (see
    // `WindowSpec::for_interval`); 1-minute traces keep the configured one.
    let mut intervals: Vec<i64> = trace.nodes.iter().filter_map(|s| s.interval_ms()).collect();
    if intervals.is_empty() {
        return Err(TrainError::Data(
            "no node has two samples with node metrics: a node model needs metric series (for SMART-only data train a disk model: --kind disk)".into(),
        ));
    }
    let mid_i = intervals.len() / 2;
    let interval = *intervals.select_nth_unstable(mid_i).1;
    if interval > cfg.max_interval_ms {
        return Err(TrainError::Data(format!(
            "node metrics are sampled every {:.1} h; the node model needs at least one sample per {:.1} h to see precursors hours ahead (for daily SMART logs train a disk model: --kind disk)",
            interval as f64 / 3.6e6,
            cfg.max_interval_ms as f64 / 3.6e6
        )));
    }
    let window = if interval * 10 > 11 * cfg.window.resolution_ms {
        WindowSpec::for_interval(interval)
    } else {
        cfg.window
    };
    if end - start < 2 * window.long_ms {
        return Err(TrainError::Data(format!(
            "the trace spans {:.1} h; at least {:.1} h are needed",
            (end - start) as f64 / 3.6e6,
            2.0 * window.long_ms as f64 / 3.6e6
        )));
    }
    let cv = cfg.cv_folds >= 2;
    // With cross-validation every round of the training nodes fits (out of fold) and
    // calibrates; without, the last part of the span calibrates.
    let split = if cv {
        end + 1
    } else {
        start + ((end - start) as f64 * cfg.fit_frac.clamp(0.1, 0.95)) as i64
    };
    let train_failures: Vec<&crate::sample::FailureRecord> = trace
        .failures
        .values()
        .filter(|f| cfg.split.is_train(&f.node))
        .collect();
    if cv {
        let mut per_fold = vec![0usize; cfg.cv_folds];
        for f in &train_failures {
            per_fold[cfg.split.fold(&f.node, cfg.cv_folds)] += 1;
        }
        if train_failures.len() < cfg.min_failures || per_fold.contains(&0) {
            return Err(TrainError::Data(format!(
                "the trace cannot support a model: {} failures among the training nodes (need {}), per cross-validation fold {per_fold:?} (each needs one); use a longer or failure-richer trace",
                train_failures.len(),
                cfg.min_failures
            )));
        }
    }
    let fit_failures = train_failures
        .iter()
        .filter(|f| f.failed_at_ms >= start && f.failed_at_ms < split)
        .count();
    let cal_failures = train_failures
        .iter()
        .filter(|f| f.failed_at_ms >= split && f.failed_at_ms <= end)
        .count();
    if !cv && (fit_failures < cfg.min_failures || cal_failures < cfg.min_calibration_failures) {
        return Err(TrainError::Data(format!(
            "the trace cannot support a model: {fit_failures} failures in the fit slice (need {}) and {cal_failures} in the calibration slice (need {}); use a longer or failure-richer trace, or another --fit-frac",
            cfg.min_failures, cfg.min_calibration_failures
        )));
    }

    let failed = |node: &str| trace.failures.get(node).map(|f| f.failed_at_ms);
    // "Healthy" for the autoencoder: not within 2H of a failure.
    let healthy_at = |node: &str, t: i64| failed(node).is_none_or(|f| t < f - 2 * h);
    let mut rng = StdRng::seed_from_u64(cfg.seed);

    // Every series on the model's grid, counts as per-minute rates (a 1-minute trace is
    // borrowed as is).
    let nodes: Vec<std::borrow::Cow<NodeSeries>> = trace
        .nodes
        .par_iter()
        .filter(|s| cfg.split.is_train(&s.node))
        .map(|s| s.resample(window.resolution_ms))
        .collect();

    // 1. Normaliser on healthy metric rows of the fit slice.
    let total_rows: usize = nodes.iter().map(|s| s.ts.len()).sum();
    let keep_p = (cfg.normaliser_rows as f64 / total_rows.max(1) as f64).min(1.0);
    let mut norm_rows: Vec<[f32; N_METRICS]> = Vec::new();
    for s in &nodes {
        for (i, &t) in s.ts.iter().enumerate() {
            if t < split && healthy_at(&s.node, t) && rng.gen_bool(keep_p) {
                norm_rows.push(s.values[i]);
            }
        }
    }
    let normaliser = Normaliser::fit(&norm_rows);

    // 2. Autoencoder on random healthy windows of the fit slice.
    let lo = start + window.long_ms;
    let mut windows = Vec::with_capacity(cfg.lstm_windows);
    let mut attempts = 0;
    while windows.len() < cfg.lstm_windows && attempts < cfg.lstm_windows * 20 {
        attempts += 1;
        let s = &nodes[rng.gen_range(0..nodes.len())];
        if split <= lo {
            break;
        }
        let t = rng.gen_range(lo..split);
        if healthy_at(&s.node, t) && s.range(t - window.mid_ms, t).len() >= window.min_samples {
            windows.push(normaliser.sequence(s, t, &window));
        }
    }
    if windows.is_empty() {
        return Err(TrainError::Data(
            "no healthy windows to train the autoencoder".into(),
        ));
    }
    let mut lstm = LstmAutoencoder::new(N_METRICS, cfg.lstm.hidden, cfg.lstm.seed);
    let lstm_loss = lstm.train(&windows, &cfg.lstm, &progress.bar("autoencoder"));
    lap("autoencoder", &mut phase);

    // 3. Tree rows: every positive round, one in `negative_stride` negative rounds.
    let bar = progress.bar("features (fit slice)");
    bar.set_length(trace.nodes.len() as u64);
    let n_feat = feature_names().len() + 1;
    let parts: Vec<NodeRows> = nodes
        .par_iter()
        .map(|s| {
            let f = failed(&s.node);
            let times: Vec<i64> = rounds_of(s, cfg.round_ms, start, split, f)
                .into_iter()
                .enumerate()
                .filter(|(i, t)| {
                    let pos = f.is_some_and(|f| f > *t && f - *t <= th);
                    let gap = cfg.skip_gap && f.is_some_and(|f| f - *t > th && f - *t <= h);
                    pos || (!gap && i % cfg.negative_stride.max(1) == 0)
                })
                .map(|(_, t)| t)
                .collect();
            let (kept, rows) = feature_rows(s, &times, &window, &normaliser, &lstm);
            let mut y = Vec::with_capacity(kept.len());
            let mut w = Vec::with_capacity(kept.len());
            for &t in &kept {
                let pos = f.is_some_and(|f| f > t && f - t <= th);
                y.push(if pos { 1.0 } else { 0.0 });
                w.push(if pos {
                    1.0
                } else {
                    cfg.negative_stride.max(1) as f64
                });
            }
            bar.inc(1);
            (rows, y, w, cfg.split.fold(&s.node, cfg.cv_folds.max(1)))
        })
        .collect();
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut w = Vec::new();
    let mut fold = Vec::new();
    for (rows, yy, ww, f) in parts {
        fold.extend(std::iter::repeat_n(f, yy.len()));
        x.extend(rows);
        y.extend(yy);
        w.extend(ww);
    }
    let positives = y.iter().filter(|&&v| v > 0.0).count();
    // Rebalance: forust bins features by weighted quantiles, and with positives at a fraction
    // of a percent of the weight every precursor lands in the top bin, where no split can
    // separate "a little loss" from "a lot". Positives get a fifth of the total weight; Platt
    // calibration on the later slice restores true probabilities.
    let neg_weight: f64 = y
        .iter()
        .zip(&w)
        .filter(|(&l, _)| l == 0.0)
        .map(|(_, &w)| w)
        .sum();
    if positives > 0 {
        let pos_weight =
            (neg_weight * cfg.positive_share / (1.0 - cfg.positive_share)) / positives as f64;
        for (wi, &yi) in w.iter_mut().zip(&y) {
            if yi > 0.0 {
                *wi = pos_weight.max(1.0);
            }
        }
    }
    if positives == 0 {
        return Err(TrainError::Data(
            "no failures in the fit slice (the first part of the trace); use a longer or failure-richer trace".into(),
        ));
    }
    lap("features", &mut phase);
    let mut monotone: Vec<i8> = feature_names()
        .iter()
        .map(|n| monotone_direction(n))
        .collect();
    monotone.push(1); // anomaly score
    let training_rows = y.len();
    let (gbt, cal, cv_pr_auc) = if cv {
        // Candidates: the configured trees and shallower ones; out-of-fold PR-AUC picks.
        let candidates = vec![
            (format!("depth{}", cfg.gbt.max_depth), cfg.gbt.clone()),
            (
                "depth3".to_string(),
                GbtConfig {
                    max_depth: 3,
                    ..cfg.gbt.clone()
                },
            ),
        ];
        let mut fold_models: Vec<Vec<Gbt>> = Vec::new();
        for (_, gc) in &candidates {
            let mut per = Vec::new();
            for f in 0..cfg.cv_folds {
                let keep: Vec<usize> = (0..y.len()).filter(|&i| fold[i] != f).collect();
                let xs: Vec<f64> = keep
                    .iter()
                    .flat_map(|&i| x[i * n_feat..(i + 1) * n_feat].iter().copied())
                    .collect();
                let ys: Vec<f64> = keep.iter().map(|&i| y[i]).collect();
                let ws: Vec<f64> = keep.iter().map(|&i| w[i]).collect();
                per.push(Gbt::fit(&xs, n_feat, &ys, &ws, &monotone, gc)?);
            }
            fold_models.push(per);
        }
        lap("cross-validation fits", &mut phase);
        let bar = progress.bar("out-of-fold scores");
        bar.set_length(nodes.len() as u64);
        // One feature pass; every candidate scores it with the model that did not see it.
        let per_node: Vec<Vec<NodeScores>> = nodes
            .par_iter()
            .map(|s| {
                let f = failed(&s.node);
                let k = cfg.split.fold(&s.node, cfg.cv_folds);
                let times = rounds_of(s, cfg.round_ms, start, end, f);
                let (kept, rows) = feature_rows(s, &times, &window, &normaliser, &lstm);
                bar.inc(1);
                fold_models
                    .iter()
                    .map(|models| NodeScores {
                        node: s.node.clone(),
                        times: kept.clone(),
                        scores: models[k].margins(&rows),
                        failed_at: f,
                        precursor: trace.failures.get(&s.node).and_then(|r| r.has_precursor()),
                    })
                    .collect()
            })
            .collect();
        let mut cv_pr_auc = Vec::new();
        let mut best = 0;
        for (c, (name, _)) in candidates.iter().enumerate() {
            let oof: Vec<NodeScores> = per_node.iter().map(|v| v[c].clone()).collect();
            let (ap, _) = pr_curve(&oof, h);
            tracing::info!(config = %name, pr_auc = ap, "out-of-fold PR-AUC");
            cv_pr_auc.push((name.clone(), ap));
            if ap > cv_pr_auc[best].1 {
                best = c;
            }
        }
        let oof: Vec<NodeScores> = per_node
            .into_iter()
            .map(|mut v| v.swap_remove(best))
            .collect();
        let gbt = Gbt::fit(&x, n_feat, &y, &w, &monotone, &candidates[best].1)?;
        lap("out-of-fold scores, final trees", &mut phase);
        (gbt, oof, cv_pr_auc)
    } else {
        let gbt = Gbt::fit(&x, n_feat, &y, &w, &monotone, &cfg.gbt)?;
        lap("trees", &mut phase);
        // Calibration and threshold on the later slice, every round.
        let bar = progress.bar("calibration slice");
        bar.set_length(nodes.len() as u64);
        let cal: Vec<NodeScores> = nodes
            .par_iter()
            .map(|s| {
                let f = failed(&s.node);
                let times = rounds_of(s, cfg.round_ms, split, end, f);
                let (kept, rows) = feature_rows(s, &times, &window, &normaliser, &lstm);
                let margins = gbt.margins(&rows);
                bar.inc(1);
                NodeScores {
                    node: s.node.clone(),
                    times: kept,
                    scores: margins,
                    failed_at: f.filter(|&f| f >= split),
                    precursor: trace.failures.get(&s.node).and_then(|r| r.has_precursor()),
                }
            })
            .collect();
        (gbt, cal, Vec::new())
    };
    drop(x);
    let mut m = Vec::new();
    let mut labels = Vec::new();
    for s in &cal {
        for (&t, &v) in s.times.iter().zip(&s.scores) {
            m.push(v);
            labels.push(s.failed_at.is_some_and(|f| f > t && f - t <= h));
        }
    }
    let calibration = Platt::fit(&m, &labels, &vec![1.0; m.len()]);
    drop((m, labels));
    let cal: Vec<NodeScores> = cal
        .into_iter()
        .map(|mut s| {
            s.scores
                .iter_mut()
                .for_each(|v| *v = calibration.probability(*v));
            s
        })
        .collect();
    let (threshold, stats) = choose_threshold_for_precision(
        &cal,
        cfg.k,
        cfg.n,
        h,
        cfg.min_precision,
        cfg.max_false_alarms,
    );
    if stats.failures == 0 {
        tracing::warn!(
            "no failures in the calibration slice: threshold chosen on false alarms alone"
        );
    }
    lap("calibration", &mut phase);
    let cal_rate = (stats.failures as f64 / stats.node_days.max(1e-9)).max(0.0);

    let mut features = feature_names();
    features.push(ANOMALY_FEATURE.to_string());
    let model = Model {
        schema_version: SCHEMA_VERSION,
        horizon_ms: h,
        window,
        features,
        normaliser,
        lstm,
        gbt,
        calibration,
        alert: AlertRule {
            threshold,
            k: cfg.k,
            n: cfg.n,
            round_ms: cfg.round_ms,
        },
        info: ModelInfo {
            samples: trace.sample_count(),
            nodes: nodes.len(),
            failures: train_failures.len(),
            training_rows,
            train_seconds: started.elapsed().as_secs_f64(),
            lstm_loss,
            calibrated_failures_per_node_day: Some(cal_rate),
            tuned_failures_per_node_day: Some(cal_rate),
            split: (cfg.split.train_frac < 1.0).then_some(cfg.split),
            cv_folds: if cv { cfg.cv_folds } else { 0 },
            cv_pr_auc,
            ..info
        },
    };
    let top_features = model
        .gbt
        .importance()
        .into_iter()
        .take(10)
        .filter_map(|(i, g)| model.features.get(i).map(|n| (n.clone(), g)))
        .collect();
    Ok((
        model,
        TrainReport {
            top_features,
            positives,
            negatives: training_rows - positives,
            calibration: stats,
            threshold,
            seconds,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate, GeneratorConfig};
    use crate::model::ModelError;

    /// End to end on a small failure-rich trace: train, save, load, score, refuse a bad schema.
    #[test]
    fn trains_saves_loads_and_scores() {
        let dir = tempfile::tempdir().unwrap();
        let gen = GeneratorConfig {
            nodes: 40,
            days: 6.0,
            interval_ms: 300_000,
            seed: 21,
            failure_boost: 150.0,
            nodes_per_file: 20,
            ..Default::default()
        };
        generate(&gen, dir.path(), &indicatif::ProgressBar::hidden()).unwrap();
        let trace = Trace::read_dir(dir.path(), &indicatif::ProgressBar::hidden()).unwrap();
        assert!(
            trace.failures.len() >= 4,
            "{} failures",
            trace.failures.len()
        );
        let cfg = TrainConfig {
            lstm_windows: 300,
            lstm: LstmConfig {
                epochs: 2,
                hidden: 8,
                ..Default::default()
            },
            gbt: GbtConfig {
                iterations: 20,
                ..Default::default()
            },
            round_ms: 900_000,
            min_failures: 1,
            min_calibration_failures: 0,
            cv_folds: 0,
            ..Default::default()
        };
        let (model, report) =
            train(&trace, &cfg, ModelInfo::default(), &Progress::hidden()).unwrap();
        assert!(report.positives > 0 && report.negatives > 0);
        assert!(model.alert.threshold.is_finite());
        let path = dir.path().join("m.model");
        model.save(&path).unwrap();
        let back = Model::load(&path).unwrap();
        let s = &trace.nodes[0];
        let at = *s.ts.last().unwrap();
        let a = model.score_series(s, at, 3).unwrap();
        let b = back.score_series(s, at, 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.reasons.len(), 3);
        assert!((0.0..=1.0).contains(&a.probability));

        // The evaluation pipeline runs end to end on the same small trace.
        let report = crate::eval::evaluate(
            &back,
            &trace,
            &crate::eval::EvalConfig::default(),
            &indicatif::ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(report.methods[0].name, "model");
        assert!(report.methods.len() >= 2, "baselines present");
        for m in &report.methods {
            assert!((0.0..=1.0).contains(&m.precision) && (0.0..=1.0).contains(&m.recall));
            assert!(m.false_alarms_per_1000_node_days >= 0.0);
        }
        assert_eq!(
            report.threshold_sweep.len(),
            crate::eval::SWEEP_THRESHOLDS.len()
        );
        let html = crate::report::render_html(&report);
        assert!(html.contains("<svg") && !html.contains("chart unavailable"));

        // Another schema version is refused by name.
        let mut v: serde_json::Value = serde_json::to_value(&model).unwrap();
        v["schema_version"] = serde_json::json!(SCHEMA_VERSION + 1);
        let other = dir.path().join("v2.model");
        std::fs::write(&other, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = Model::load(&other).unwrap_err();
        assert!(
            matches!(err, ModelError::Schema { found, .. } if found == u64::from(SCHEMA_VERSION) + 1),
            "{err}"
        );
        assert!(err.to_string().contains("v2.model"));
        // Garbage and truncated models are typed errors, not panics.
        std::fs::write(&other, b"not json").unwrap();
        assert!(matches!(
            Model::load(&other),
            Err(ModelError::Format { .. })
        ));
        v["schema_version"] = serde_json::json!(SCHEMA_VERSION);
        v["features"] = serde_json::json!(["x"]);
        std::fs::write(&other, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(matches!(
            Model::load(&other),
            Err(ModelError::Inconsistent { .. })
        ));
        assert!(matches!(
            Model::load(&dir.path().join("absent.model")),
            Err(ModelError::Io { .. })
        ));
        // Cross-validated over two node groups, with a quarter of the nodes held out: the
        // depth is chosen out of fold and the model records its split for `eval`.
        let cv_cfg = TrainConfig {
            cv_folds: 2,
            split: NodeSplit {
                train_frac: 0.75,
                salt: 3,
            },
            ..cfg.clone()
        };
        let (cv_model, cv_report) =
            train(&trace, &cv_cfg, ModelInfo::default(), &Progress::hidden()).unwrap();
        assert_eq!(cv_model.info.cv_pr_auc.len(), 2);
        assert_eq!(cv_model.info.cv_folds, 2);
        assert!(cv_model.info.nodes < trace.nodes.len() && cv_model.info.split.is_some());
        assert!(cv_report.calibration.failures == cv_model.info.failures);
        // A trace whose slices hold too few failures is refused with the counts, before
        // any expensive step.
        let err = train(
            &trace,
            &TrainConfig::default(),
            ModelInfo::default(),
            &Progress::hidden(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot support a model"), "{err}");
        // Too little history is an error for the node's scoring call.
        let few: Vec<_> = (0..2)
            .map(|i| crate::sample::HealthSample {
                cpu_util: Some(0.1),
                disk_read_lat_ms: Some(1.0),
                err_log_count: Some(0),
                ..crate::sample::HealthSample::empty("x", i * 60_000)
            })
            .collect();
        assert!(matches!(
            back.score_samples(&few),
            Err(ModelError::NotEnoughData { .. })
        ));
    }
}
