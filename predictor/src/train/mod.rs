//! Training the node model: the normaliser and autoencoder on healthy windows, then trees,
//! calibration and the operating point chosen by cross-validation over node groups, with
//! the baselines fitted and tuned the same way beside it.
//!
//! Why cross-validation over node groups: a threshold chosen on one thin slice of time
//! rests on a handful of failures (a 10-minute fleet's last 15% held 4 and gave a model
//! that caught nothing). Out-of-fold scores of *every* training node — each scored by trees
//! that never saw it — give every failure a vote in the tree depth, the calibration and the
//! operating point, and groups of nodes (not of rounds) keep a node from scoring itself.

mod baselines;
mod store;

use std::collections::BTreeMap;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::baselines::{NodeBaselines, OutOfFold};
use crate::eval::{choose_operating_point, pr_curve, NodeScores, OperatingGoal};
use crate::features::{feature_defs, ColumnMap, Monotone, Normaliser, WindowSpec};
use crate::gbt::{Gbt, GbtConfig, Platt};
use crate::lstm::{LstmAutoencoder, LstmConfig};
use crate::model::{Model, ModelInfo, SCHEMA_VERSION};
use crate::progress::Progress;
use crate::sample::{FailureRecord, N_METRICS};
use crate::split::NodeSplit;
use crate::trace::{NodeSeries, Trace};
use baselines::{fit_static, fit_tree, out_of_fold, rule, tree_config, tree_jobs, RANK_STEP};
use store::{Featuriser, FitJob, Store};

pub(crate) use store::rounds_of;

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
    /// Keep one in this many failure-free rounds as tree training rows (weighted back up).
    /// 6 (one round in 30 minutes) since 2026-12-06: against 3, training took 27% less time
    /// and memory with the same out-of-fold and held-out figures (predictor/README.md,
    /// "Fewer negative rows"); the shipped `default.model` was trained at 3.
    pub negative_stride: usize,
    /// Share of the total training weight given to positive rows (class rebalancing).
    pub positive_share: f64,
    /// Healthy windows the autoencoder trains on.
    pub lstm_windows: usize,
    /// Metric rows sampled to fit the normaliser.
    pub normaliser_rows: usize,
    /// Autoencoder settings.
    pub lstm: LstmConfig,
    /// Tree settings (cross-validation also tries them at depth 3).
    pub gbt: GbtConfig,
    /// Window geometry (stretched for traces coarser than its grid).
    pub window: WindowSpec,
    /// Candidate (k, n) alert rules; every method picks its own among them.
    pub rules: Vec<(usize, usize)>,
    /// False alarms per 1000 healthy node-days allowed at the operating point (every
    /// method; the model and the tree are further held to the static thresholds' own
    /// out-of-fold rate when that is lower, so the model is compared with them at an equal
    /// or lower false-alarm rate).
    pub max_false_alarms: f64,
    /// Precision floor of the operating point, honoured when reachable (0: none).
    pub min_precision: f64,
    /// Seed of all sampling.
    pub seed: u64,
    /// Refuse to train with fewer failures among the training nodes.
    pub min_failures: usize,
    /// Node metrics sampled less often than this cannot show precursors that give hours of
    /// warning: refuse (a daily log wants a disk model on SMART instead), ms.
    pub max_interval_ms: i64,
    /// Cross-validation folds over node groups (at least 2).
    pub cv_folds: usize,
    /// Which nodes train (the rest are held out for `eval`).
    pub split: NodeSplit,
    /// Take a failed node's failure time as the end of its reports (its last sample plus
    /// one sampling interval) when that is earlier than the recorded time. Failure logs are
    /// often written hours after the death (an operator's ticket rather than the
    /// heartbeat), while a dead node stops reporting at once: judged from the recorded
    /// time, the rounds right before the death fall outside the tree horizon and the most
    /// telling rows are lost. It reads only what training may know (the samples and the
    /// log); off by default, because an agent outage just before a death moves the time
    /// earlier than it was.
    #[serde(default)]
    pub failure_at_silence: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            horizon_ms: 24 * 3_600_000,
            tree_horizon_ms: 6 * 3_600_000,
            skip_gap: true,
            round_ms: 5 * 60_000,
            negative_stride: 6,
            positive_share: 0.2,
            lstm_windows: 6000,
            normaliser_rows: 200_000,
            lstm: LstmConfig::default(),
            gbt: GbtConfig::default(),
            window: WindowSpec::default(),
            rules: vec![(2, 3), (3, 6), (2, 12), (3, 12), (4, 12)],
            max_false_alarms: 1.0,
            min_precision: 0.0,
            seed: 17,
            min_failures: 15,
            max_interval_ms: 3_600_000,
            cv_folds: 4,
            split: NodeSplit::all(),
            failure_at_silence: false,
        }
    }
}

/// What training measured out of fold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Rows the trees were fitted on (positives).
    pub positives: usize,
    /// Rows the trees were fitted on (negatives, before weighting).
    pub negatives: usize,
    /// Failures among the training nodes' scored rounds.
    pub failures: usize,
    /// Every method's operating point and out-of-fold figures (the model first).
    pub out_of_fold: Vec<OutOfFold>,
    /// The false-alarm budget the model was held to.
    pub budget: f64,
    /// Seconds per phase: read is not included (the caller reads).
    pub seconds: Vec<(String, f64)>,
    /// The ten features with the largest share of split gain.
    pub top_features: Vec<(String, f32)>,
}

/// The median sampling interval of the trace's node metrics, or why there is none to use.
fn trace_interval(trace: &Trace, cfg: &TrainConfig) -> Result<i64, TrainError> {
    let mut intervals: Vec<i64> = trace.nodes.iter().filter_map(|s| s.interval_ms()).collect();
    if intervals.is_empty() {
        return Err(TrainError::Data(
            "no node has two samples with node metrics: a node model needs metric series (for SMART-only data train a disk model: --kind disk)".into(),
        ));
    }
    let mid = intervals.len() / 2;
    let interval = *intervals.select_nth_unstable(mid).1;
    if interval > cfg.max_interval_ms {
        return Err(TrainError::Data(format!(
            "node metrics are sampled every {:.1} h; the node model needs at least one sample per {:.1} h to see precursors hours ahead (for daily SMART logs train a disk model: --kind disk)",
            interval as f64 / 3.6e6,
            cfg.max_interval_ms as f64 / 3.6e6
        )));
    }
    Ok(interval)
}

/// The failures as training sees them: recorded times, or with
/// [`TrainConfig::failure_at_silence`] the end of the node's reports when that is earlier.
fn training_failures(trace: &Trace, cfg: &TrainConfig) -> BTreeMap<String, FailureRecord> {
    let mut failures = trace.failures.clone();
    if !cfg.failure_at_silence {
        return failures;
    }
    for s in &trace.nodes {
        let (Some(f), Some(&last)) = (failures.get_mut(&s.node), s.ts.last()) else {
            continue;
        };
        let silent_at = last + s.interval_ms().unwrap_or(0);
        f.failed_at_ms = f.failed_at_ms.min(silent_at);
    }
    failures
}

/// Refuses data that cannot support a model, with the counts, before any expensive step.
fn check_data(trace: &Trace, cfg: &TrainConfig, window: &WindowSpec) -> Result<usize, TrainError> {
    if cfg.cv_folds < 2 {
        return Err(TrainError::Data(format!(
            "cross-validation needs at least 2 folds (got {})",
            cfg.cv_folds
        )));
    }
    let (start, end) = (trace.start_ms(), trace.end_ms());
    if end - start < 2 * window.long_ms {
        return Err(TrainError::Data(format!(
            "the trace spans {:.1} h; at least {:.1} h are needed",
            (end - start) as f64 / 3.6e6,
            2.0 * window.long_ms as f64 / 3.6e6
        )));
    }
    let mut per_fold = vec![0usize; cfg.cv_folds];
    let mut failures = 0;
    for f in trace
        .failures
        .values()
        .filter(|f| cfg.split.is_train(&f.node))
    {
        per_fold[cfg.split.fold(&f.node, cfg.cv_folds)] += 1;
        failures += 1;
    }
    if failures < cfg.min_failures || per_fold.contains(&0) {
        return Err(TrainError::Data(format!(
            "the trace cannot support a model: {failures} failures among the training nodes (need {}), per cross-validation fold {per_fold:?} (each needs one); use a longer or failure-richer trace",
            cfg.min_failures
        )));
    }
    Ok(failures)
}

/// The normaliser and the autoencoder, on healthy data of the training nodes (not within
/// 2H of a failure). Unsupervised, so fitted once on every training node: the out-of-fold
/// anomaly scores are slightly optimistic.
fn fit_autoencoder(
    nodes: &[std::borrow::Cow<NodeSeries>],
    trace: &Trace,
    failures: &BTreeMap<String, FailureRecord>,
    cfg: &TrainConfig,
    window: &WindowSpec,
    progress: &Progress,
) -> Result<(Normaliser, LstmAutoencoder, f64), TrainError> {
    let h = cfg.horizon_ms;
    let healthy_at = |node: &str, t: i64| {
        failures
            .get(node)
            .is_none_or(|f| t < f.failed_at_ms - 2 * h)
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let total_rows: usize = nodes.iter().map(|s| s.ts.len()).sum();
    let keep_p = (cfg.normaliser_rows as f64 / total_rows.max(1) as f64).min(1.0);
    let mut norm_rows: Vec<[f32; N_METRICS]> = Vec::new();
    for s in nodes {
        for (i, &t) in s.ts.iter().enumerate() {
            if healthy_at(&s.node, t) && rng.gen_bool(keep_p) {
                norm_rows.push(s.values[i]);
            }
        }
    }
    let normaliser = Normaliser::fit(&norm_rows);
    let (lo, hi) = (trace.start_ms() + window.long_ms, trace.end_ms());
    let mut windows = Vec::with_capacity(cfg.lstm_windows);
    let mut attempts = 0;
    while lo < hi && windows.len() < cfg.lstm_windows && attempts < cfg.lstm_windows * 20 {
        attempts += 1;
        let s = &nodes[rng.gen_range(0..nodes.len())];
        let t = rng.gen_range(lo..hi);
        if healthy_at(&s.node, t) && s.range(t - window.mid_ms, t).len() >= window.min_samples {
            windows.push(normaliser.sequence(s, t, window));
        }
    }
    if windows.is_empty() {
        return Err(TrainError::Data(
            "no healthy windows to train the autoencoder".into(),
        ));
    }
    let mut lstm = LstmAutoencoder::new(N_METRICS, cfg.lstm.hidden, cfg.lstm.seed);
    let loss = lstm.train(&windows, &cfg.lstm, &progress.bar("autoencoder"));
    Ok((normaliser, lstm, loss))
}

/// Trains a model on `trace`'s training nodes.
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
    // The trace's sampling interval decides the window geometry (see
    // `WindowSpec::for_interval`); 1-minute traces keep the configured one.
    let interval = trace_interval(trace, cfg)?;
    let window = if interval * 10 > 11 * cfg.window.resolution_ms {
        WindowSpec::for_interval(interval)
    } else {
        cfg.window
    };
    let train_failures = check_data(trace, cfg, &window)?;

    // Every series on the model's grid, counts as per-minute rates.
    let nodes: Vec<std::borrow::Cow<NodeSeries>> = trace
        .nodes
        .par_iter()
        .with_max_len(1)
        .filter(|s| cfg.split.is_train(&s.node))
        .map(|s| s.resample(window.resolution_ms))
        .collect();
    let failures = training_failures(trace, cfg);
    let (normaliser, lstm, lstm_loss) =
        fit_autoencoder(&nodes, trace, &failures, cfg, &window, progress)?;
    lap("autoencoder", &mut phase);

    let featuriser = Featuriser {
        window: &window,
        normaliser: &normaliser,
        lstm: &lstm,
    };
    let store = Store::build(&nodes, &failures, cfg, &featuriser, progress);
    drop(nodes);
    let rows = store.tree_rows(cfg);
    let positives = rows.positives();
    if positives == 0 {
        return Err(TrainError::Data(
            "no scored round within the tree horizon of a failure; use a longer or failure-richer trace".into(),
        ));
    }
    lap("features", &mut phase);

    // Model selection: the configured trees and shallower ones, out-of-fold PR-AUC picks.
    let mut monotone: Vec<i8> = feature_defs().iter().map(|d| d.monotone.sign()).collect();
    monotone.push(Monotone::Rises.sign()); // the anomaly score
    let candidates = [
        (format!("depth{}", cfg.gbt.max_depth), cfg.gbt.clone()),
        (
            "depth3".to_string(),
            GbtConfig {
                max_depth: 3,
                ..cfg.gbt.clone()
            },
        ),
    ];
    let bar = progress.bar("cross-validation fits");
    bar.set_length(candidates.len() as u64);
    let mut cv_pr_auc = Vec::new();
    let mut best: Option<(usize, f64, Vec<NodeScores>)> = None;
    // One queue for every fit that needs no choice made first, longest first: the
    // candidates' folds, then the single tree's (whose fits had run one at a time beside
    // the final trees, one core idle).
    let tree_cfg = tree_config(cfg);
    let folds = cfg.cv_folds;
    let jobs: Vec<FitJob> = candidates
        .iter()
        .flat_map(|(_, gc)| FitJob::per_fold(gc, store.n_features, &monotone, folds))
        .chain(tree_jobs(&store, &tree_cfg, folds))
        .collect();
    let mut fits = store.fit_jobs(&rows, &jobs, store::CONCURRENT_FITS)?;
    let tree_folds = fits.split_off(candidates.len() * folds);
    let mut fits = fits.into_iter();
    for (c, (name, _)) in candidates.iter().enumerate() {
        let per_fold: Vec<Gbt> = fits.by_ref().take(folds).collect();
        let oof = store.oof_margins(&per_fold, store.n_features);
        let (ap, _) = pr_curve(&oof, h);
        tracing::info!(config = %name, pr_auc = ap, "out-of-fold PR-AUC");
        cv_pr_auc.push((name.clone(), ap));
        if best.as_ref().is_none_or(|b| ap > b.1) {
            best = Some((c, ap, oof));
        }
        bar.inc(1);
    }
    let Some((chosen, _, mut oof)) = best else {
        return Err(TrainError::Data("no tree configuration to try".into()));
    };
    lap("cross-validation", &mut phase);

    // The final trees depend only on the rows and the chosen depth: they are fitted on a
    // thread of their own beside the calibration and the baselines (whose one remaining
    // fit, the single tree on every row, is then the second of at most two fits holding a
    // copy of the rows at once).
    let final_cfg = &candidates[chosen].1;
    let (tuned, final_fit) = std::thread::scope(|scope| {
        let final_fit = scope.spawn(|| {
            store.fit(
                &rows,
                |_| true,
                store.n_features,
                &monotone,
                final_cfg,
                true,
            )
        });
        let tuned = (|| -> Result<_, TrainError> {
            // Calibration on the out-of-fold margins of every round of every training node.
            let mut m = Vec::new();
            let mut labels = Vec::new();
            for s in &oof {
                for (&t, &v) in s.times.iter().zip(&s.scores) {
                    m.push(v);
                    labels.push(s.failed_at.is_some_and(|f| f > t && f - t <= h));
                }
            }
            let calibration = Platt::fit(&m, &labels, &vec![1.0; m.len()]);
            drop((m, labels));
            for s in &mut oof {
                s.scores
                    .iter_mut()
                    .for_each(|v| *v = calibration.probability(*v));
            }

            // Operating points, every method the same way: static thresholds first (their
            // out-of-fold false-alarm rate, when lower than the budget, becomes the model's
            // and the tree's), then the model and the tree.
            let mut goal = OperatingGoal {
                rules: cfg.rules.clone(),
                max_false_alarms: cfg.max_false_alarms,
                min_precision: cfg.min_precision,
            };
            let static_fit = fit_static(&store, cfg, &goal, window.short_ms);
            if let Some((_, s)) = &static_fit {
                goal.max_false_alarms =
                    goal.max_false_alarms.min(s.false_alarms_per_1000_node_days);
            }
            let chosen_point = choose_operating_point(&oof, h, &goal, RANK_STEP).or_else(|| {
                tracing::warn!(
                    budget = goal.max_false_alarms,
                    "the model detects nothing out of fold at the static thresholds' false-alarm rate; using the configured budget"
                );
                goal.max_false_alarms = cfg.max_false_alarms;
                choose_operating_point(&oof, h, &goal, RANK_STEP)
            });
            let Some(point) = chosen_point else {
                return Err(TrainError::Data(format!(
                    "cross-validated, the model detects no failure within {:.2} false alarms per 1000 healthy node-days: the data cannot support a model at that rate",
                    cfg.max_false_alarms
                )));
            };
            let model_oof = out_of_fold("model", &point, &oof, cfg);
            let tree_fit = fit_tree(&store, &rows, cfg, &goal, &tree_folds)?;
            Ok((calibration, goal, static_fit, point, model_oof, tree_fit))
        })();
        lap("calibration and operating points", &mut phase);
        (tuned, final_fit.join())
    });
    let (calibration, goal, static_fit, point, model_oof, tree_fit) = tuned?;
    let gbt = final_fit.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    // Only the part of the final fit that outlasted the calibration and the baselines.
    lap("final trees", &mut phase);

    let cal_rate = {
        let failures = oof.iter().filter(|s| s.failed_at.is_some()).count() as f64;
        let days: f64 = oof
            .iter()
            .map(|s| s.times.len() as f64 * cfg.round_ms as f64 / 86_400_000.0)
            .sum();
        failures / days.max(1e-9)
    };
    let mut out_of_fold = vec![model_oof];
    out_of_fold.extend(static_fit.as_ref().map(|s| s.1.clone()));
    out_of_fold.extend(tree_fit.as_ref().map(|t| t.1.clone()));
    // Every feature this build computes, in its order (older models list a subset).
    let features = ColumnMap::build_names();
    let model = Model {
        schema_version: SCHEMA_VERSION,
        horizon_ms: h,
        window,
        features,
        normaliser,
        lstm,
        gbt,
        calibration,
        alert: rule(&point, cfg),
        info: ModelInfo {
            samples: trace.sample_count(),
            nodes: store.nodes.len(),
            failures: train_failures,
            training_rows: rows.y.len(),
            train_seconds: started.elapsed().as_secs_f64(),
            lstm_loss,
            calibrated_failures_per_node_day: Some(cal_rate),
            tuned_failures_per_node_day: Some(cal_rate),
            split: (cfg.split.train_frac < 1.0).then_some(cfg.split),
            cv_folds: cfg.cv_folds,
            cv_pr_auc,
            false_alarm_budget: Some(goal.max_false_alarms),
            out_of_fold: out_of_fold.clone(),
            ..info
        },
        baselines: Some(NodeBaselines {
            static_thresholds: static_fit.map(|s| s.0),
            decision_tree: tree_fit.map(|t| t.0),
        }),
        columns: ColumnMap::full(),
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
            positives,
            negatives: rows.y.len() - positives,
            failures: oof.iter().filter(|s| s.failed_at.is_some()).count(),
            out_of_fold,
            budget: goal.max_false_alarms,
            seconds,
            top_features,
        },
    ))
}

#[cfg(test)]
mod tests;
