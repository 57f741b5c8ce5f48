//! Honest evaluation: time-ordered split, k-of-n alerting, event-level precision / recall,
//! false alarms per 1000 healthy node-days, PR-AUC and lead times, for the model and two
//! baselines (static thresholds, a single decision tree).
//!
//! Alert semantics (also used to pick the model's threshold at training): a node alerts when
//! its score is at or above threshold in `k` of its last `n` scored rounds. An alert is an
//! event at the round the condition becomes true; a condition that stays true re-fires once
//! per horizon, so every alert claims exactly "this node fails within H". It is a true positive
//! if the node fails within H after it, a false positive otherwise.

mod baselines;
mod metrics;
mod replay;
mod report;
mod rule;

pub use metrics::{
    alert_stats, bootstrap, harmonic, node_eval, pr_curve, quantile, AlertStats, Interval,
    Intervals, NodeEval, NodeScores,
};
pub use replay::replay_policy;
pub use report::{EvalReport, MethodReport, SweepPoint, Timeline, SWEEP_THRESHOLDS};
pub use rule::{
    alert_times, choose_threshold, choose_threshold_for_precision, tune_alert_rule, tune_rule_f1,
    RuleOption, TuneConfig,
};

use baselines::{static_score, static_stats, STATIC_STATS};
pub(crate) use metrics::HOUR_MS;
pub(crate) use report::method_report as report_method;
pub(crate) use report::pick_timelines as report_timelines;
use report::{method_report, pick_timelines};

use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::features::{feature_names, WindowFeatures};
use crate::gbt::{Gbt, GbtConfig};
use crate::model::{Model, ModelError};
use crate::trace::Trace;

/// The model's calibrated risk at every round of every node of `trace` from `from_ms` on
/// (rounds on the model's cadence; a failed node's rounds stop at its failure).
pub fn score_trace(
    model: &Model,
    trace: &Trace,
    from_ms: i64,
    progress: &ProgressBar,
) -> Vec<NodeScores> {
    let round = model.alert.round_ms;
    progress.set_length(trace.nodes.len() as u64);
    trace
        .nodes
        .par_iter()
        .map(|series| {
            let failure = trace.failures.get(&series.node);
            let failed_at = failure.map(|f| f.failed_at_ms);
            let first = series.ts.first().copied().unwrap_or(from_ms).max(from_ms);
            let last = series.ts.last().copied().unwrap_or(from_ms);
            let t0 = first + round - first.rem_euclid(round);
            let times: Vec<i64> = (0..)
                .map(|i| t0 + i * round)
                .take_while(|&t| t <= last)
                .filter(|&t| failed_at.is_none_or(|f| t < f))
                .collect();
            let (times, scores) = model.probabilities(series, &times);
            progress.inc(1);
            NodeScores {
                node: series.node.clone(),
                times,
                scores,
                failed_at: failed_at.filter(|&f| f >= from_ms),
                precursor: failure.and_then(|f| f.has_precursor()),
            }
        })
        .collect()
}

/// Evaluation settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalConfig {
    /// Fraction of the trace's time span before the test slice (baselines fit there).
    pub test_from_frac: f64,
    /// Override of the model's k (rounds above threshold).
    pub k: Option<usize>,
    /// Override of the model's n (window of rounds).
    pub n: Option<usize>,
    /// Override of the model's threshold.
    pub threshold: Option<f64>,
    /// Maximum false alarms per 1000 healthy node-days when tuning baseline thresholds.
    pub max_false_alarms: f64,
    /// Negative rounds kept per positive-free stretch when fitting the tree baseline.
    pub negative_stride: usize,
    /// Risk timelines to include in the report.
    pub timelines: usize,
    /// Bootstrap resamples (over nodes) for the 95% intervals; 0 for none.
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            test_from_frac: 0.5,
            k: None,
            n: None,
            threshold: None,
            max_false_alarms: 1.0,
            negative_stride: 6,
            timelines: 6,
            bootstrap: 200,
            seed: 7,
        }
    }
}

struct NodeRounds {
    node: String,
    failed_at: Option<i64>,
    precursor: Option<bool>,
    early_times: Vec<i64>,
    early_rows: Vec<f32>,
    early_static: Vec<[f32; 4]>,
    test_times: Vec<i64>,
    test_rows: Vec<f32>,
    test_static: Vec<[f32; 4]>,
    test_probs: Vec<f64>,
}

/// `report` with 95% bootstrap intervals over the nodes of `scores` (when asked for).
fn with_ci(
    cfg: &EvalConfig,
    scores: &[NodeScores],
    h: i64,
    mut report: MethodReport,
) -> MethodReport {
    if cfg.bootstrap > 0 {
        report.ci95 = Some(bootstrap(&report.stats, scores, h, cfg.bootstrap, cfg.seed));
    }
    report
}

fn label(failed_at: Option<i64>, t: i64, h: i64) -> bool {
    failed_at.is_some_and(|f| f > t && f - t <= h)
}

/// Evaluates `model` and the two baselines on `trace` (see the module docs).
pub fn evaluate(
    model: &Model,
    trace: &Trace,
    cfg: &EvalConfig,
    progress: &ProgressBar,
) -> Result<EvalReport, ModelError> {
    let h = model.horizon_ms;
    let k = cfg.k.unwrap_or(model.alert.k);
    let n = cfg.n.unwrap_or(model.alert.n).max(k);
    let round = model.alert.round_ms;
    let start = trace.start_ms();
    let end = trace.end_ms();
    let split = start + ((end - start) as f64 * cfg.test_from_frac.clamp(0.0, 1.0)) as i64;
    let split = split - split.rem_euclid(round);
    let names = feature_names();
    let n_feat = names.len();
    progress.set_length(trace.nodes.len() as u64);

    let rounds: Vec<NodeRounds> = trace
        .nodes
        .par_iter()
        .map(|series| {
            let series = &*series.resample(model.window.resolution_ms);
            let failure = trace.failures.get(&series.node);
            let failed_at = failure.map(|f| f.failed_at_ms);
            let first = series.ts.first().copied().unwrap_or(start);
            let last = series.ts.last().copied().unwrap_or(start);
            let t0 = first + round - first.rem_euclid(round);
            let times: Vec<i64> = (0..)
                .map(|i| t0 + i * round)
                .take_while(|&t| t <= last)
                .filter(|&t| failed_at.is_none_or(|f| t < f))
                .collect();
            let wf = WindowFeatures {
                series,
                spec: model.window,
            };
            let early: Vec<i64> = times
                .iter()
                .copied()
                .filter(|&t| t < split && wf.scorable(t))
                .collect();
            let mut early_rows = Vec::with_capacity(early.len() * n_feat);
            let mut buf = Vec::with_capacity(n_feat);
            for &t in &early {
                buf.clear();
                wf.extract(t, &mut buf);
                early_rows.extend(buf.iter().map(|&v| v as f32));
            }
            let test: Vec<i64> = times.iter().copied().filter(|&t| t >= split).collect();
            let (test_times, rows) = model.feature_rows(series, &test);
            let probs: Vec<f64> = model
                .gbt
                .margins(&rows)
                .into_iter()
                .map(|m| model.calibration.probability(m))
                .collect();
            let test_rows = rows
                .chunks(n_feat + 1)
                .flat_map(|r| r[..n_feat].iter().map(|&v| v as f32))
                .collect();
            progress.inc(1);
            NodeRounds {
                early_static: early.iter().map(|&t| static_stats(series, t)).collect(),
                test_static: test_times
                    .iter()
                    .map(|&t| static_stats(series, t))
                    .collect(),
                node: series.node.clone(),
                failed_at,
                precursor: failure.and_then(|f| f.has_precursor()),
                early_times: early,
                early_rows,
                test_times,
                test_rows,
                test_probs: probs,
            }
        })
        .collect();

    let scores_of = |early: bool, f: &dyn Fn(&NodeRounds, usize) -> f64| -> Vec<NodeScores> {
        rounds
            .iter()
            .map(|r| {
                let times = if early { &r.early_times } else { &r.test_times };
                NodeScores {
                    node: r.node.clone(),
                    times: times.clone(),
                    scores: (0..times.len()).map(|i| f(r, i)).collect(),
                    failed_at: r
                        .failed_at
                        .filter(|&f| if early { f < split } else { f >= split }),
                    precursor: r.precursor,
                }
            })
            .collect()
    };

    // The model.
    let model_scores = scores_of(false, &|r, i| r.test_probs[i]);
    let threshold = cfg.threshold.unwrap_or(model.alert.threshold);
    let mut methods = vec![with_ci(cfg, &model_scores, h, method_report(
        "model",
        format!(
            "LSTM autoencoder + {} boosted trees, Platt-calibrated, alert rule from the model file (training or tune)",
            model.gbt.booster.iterations
        ),
        &model_scores,
        threshold,
        k,
        n,
        h,
    ))];

    // Baseline 1: static thresholds at a healthy-quantile, the quantile tuned on the early slice.
    let mut best_static: Option<(f64, [f64; 4], f64)> = None;
    for q in [0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999] {
        let mut limits = [f64::INFINITY; 4];
        for (c, limit) in limits.iter_mut().enumerate() {
            let healthy: Vec<f64> = rounds
                .iter()
                .flat_map(|r| {
                    r.early_times.iter().enumerate().filter_map(move |(i, &t)| {
                        let v = r.early_static[i][c] as f64;
                        (!label(r.failed_at, t, h) && v.is_finite()).then_some(v)
                    })
                })
                .collect();
            *limit = quantile(&healthy, q).unwrap_or(f64::INFINITY).max(1e-9);
        }
        let early = scores_of(true, &|r, i| static_score(&r.early_static[i], &limits));
        let f1 = alert_stats(&early, 1.0, k, n, h).f1();
        if best_static.as_ref().is_none_or(|b| f1 > b.2) {
            best_static = Some((q, limits, f1));
        }
    }
    if let Some((q, limits, _)) = best_static {
        let test = scores_of(false, &|r, i| static_score(&r.test_static[i], &limits));
        let desc = format!(
            "alert when any of {} (10-min mean) exceeds its healthy {q} quantile on the early slice",
            STATIC_STATS.join(", ")
        );
        methods.push(with_ci(
            cfg,
            &test,
            h,
            method_report("static_thresholds", desc, &test, 1.0, k, n, h),
        ));
    }

    // Baseline 2: one decision tree on the same window features, fitted on the early slice.
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut w = Vec::new();
    for r in &rounds {
        for (i, &t) in r.early_times.iter().enumerate() {
            let pos = label(r.failed_at, t, h);
            if pos || i % cfg.negative_stride.max(1) == 0 {
                x.extend(
                    r.early_rows[i * n_feat..(i + 1) * n_feat]
                        .iter()
                        .map(|&v| v as f64),
                );
                y.push(if pos { 1.0 } else { 0.0 });
                w.push(if pos {
                    1.0
                } else {
                    cfg.negative_stride.max(1) as f64
                });
            }
        }
    }
    if y.iter().any(|&v| v > 0.0) {
        let tree_cfg = GbtConfig {
            iterations: 1,
            learning_rate: 1.0,
            max_depth: 6,
            subsample: 1.0,
            colsample: 1.0,
            ..Default::default()
        };
        match Gbt::fit(&x, n_feat, &y, &w, &[], &tree_cfg) {
            Ok(tree) => {
                let margins = |rows: &[f32]| -> Vec<f64> {
                    let r: Vec<f64> = rows.iter().map(|&v| v as f64).collect();
                    tree.margins(&r)
                };
                let early_m: Vec<Vec<f64>> =
                    rounds.iter().map(|r| margins(&r.early_rows)).collect();
                let test_m: Vec<Vec<f64>> = rounds.iter().map(|r| margins(&r.test_rows)).collect();
                let early: Vec<NodeScores> = scores_of(true, &|_, _| 0.0)
                    .into_iter()
                    .zip(&early_m)
                    .map(|(mut s, m)| {
                        s.scores = m.clone();
                        s
                    })
                    .collect();
                let (thr, _) = choose_threshold(&early, k, n, h, cfg.max_false_alarms);
                let test: Vec<NodeScores> = scores_of(false, &|_, _| 0.0)
                    .into_iter()
                    .zip(&test_m)
                    .map(|(mut s, m)| {
                        s.scores = m.clone();
                        s
                    })
                    .collect();
                methods.push(with_ci(cfg, &test, h, method_report(
                    "decision_tree",
                    "one depth-6 tree on the same window features, fitted and thresholded on the early slice".into(),
                    &test,
                    thr,
                    k,
                    n,
                    h,
                )));
            }
            Err(e) => tracing::warn!(error = %e, "decision-tree baseline could not be fitted"),
        }
    } else {
        tracing::warn!("no failures in the early slice: decision-tree baseline skipped");
    }

    let threshold_sweep = SWEEP_THRESHOLDS
        .par_iter()
        .map(|&t| {
            let st = alert_stats(&model_scores, t, k, n, h);
            SweepPoint {
                threshold: t,
                precision: st.precision(),
                recall_precursor: st.recall_precursor(),
                recall: st.recall(),
                false_alarms_per_1000_node_days: st.false_alarms_per_1000(),
                lead_time_median_h: quantile(&st.leads_h, 0.5),
            }
        })
        .collect();
    let timelines = pick_timelines(
        &model_scores,
        &methods[0].stats,
        threshold,
        k,
        n,
        h,
        cfg.timelines,
    );
    let mut pc = crate::policy::PolicyConfig::for_model(model);
    pc.k = k;
    pc.n = n;
    pc.enter = threshold.clamp(1e-6, 1.0);
    pc.leave = pc.enter * 0.5;
    pc.watch = pc.enter * 0.5;
    pc.drain = pc.enter.max(0.5);
    let policy = replay_policy(&model_scores, pc).ok().map(|acted| {
        method_report(
            "policy",
            "RiskPolicy replayed round by round over the model's scores (hysteresis, dynamic thresholds at an idle cluster, storm guard); an alert is an episode the policy acted on".into(),
            &acted,
            0.5,
            1,
            1,
            h,
        )
    });
    Ok(EvalReport {
        nodes: trace.nodes.len(),
        test_failures: methods[0].stats.failures,
        test_from_ms: split,
        test_to_ms: end,
        horizon_h: h as f64 / HOUR_MS,
        k,
        n,
        round_min: round as f64 / 60_000.0,
        methods,
        timelines,
        threshold_sweep,
        policy,
        references: Vec::new(),
        model_scores,
    })
}

#[cfg(test)]
mod tests {
    use super::metrics::DAY_MS;
    use super::*;

    fn node(scores: &[f64], failed_at: Option<i64>) -> NodeScores {
        NodeScores {
            node: "n".into(),
            times: (0..scores.len() as i64).map(|i| i * 10).collect(),
            scores: scores.to_vec(),
            failed_at,
            precursor: Some(true),
        }
    }

    #[test]
    fn k_of_n_fires_once_and_refires_after_horizon() {
        let s = node(
            &[0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.9],
            None,
        );
        // 2 of 3: fires at t=20 (rounds 0 and 2), stays on, re-fires after horizon 30 at t=50.
        assert_eq!(alert_times(&s, 0.5, 2, 3, 30), vec![20, 50, 110]);
        assert_eq!(alert_times(&s, 0.5, 3, 3, 1000), vec![40]);
    }

    #[test]
    fn stats_classify_alerts_and_leads() {
        // Fails at 100; alert at 20 is 80 before failure: true within horizon 90, false within 50.
        let s = node(&[0.1, 0.9, 0.9, 0.1, 0.1], Some(100));
        let st = alert_stats(std::slice::from_ref(&s), 0.5, 2, 2, 90);
        assert_eq!((st.true_alerts, st.false_alerts, st.detected), (1, 0, 1));
        assert!((st.leads_h[0] - 80.0 / HOUR_MS).abs() < 1e-12);
        let st = alert_stats(&[s], 0.5, 2, 2, 50);
        assert_eq!((st.true_alerts, st.false_alerts, st.detected), (0, 1, 0));
        assert_eq!(st.recall(), 0.0);
    }

    /// A node scored 100 times a day.
    fn at(scores: &[f64], failed: Option<i64>) -> NodeScores {
        let mut s = node(scores, failed);
        s.times = (0..scores.len() as i64)
            .map(|i| i * DAY_MS as i64 / 100)
            .collect();
        s
    }

    #[test]
    fn precision_floor_trades_recall_for_precision() {
        let day = DAY_MS as i64;
        let mut healthy = vec![0.3; 500];
        healthy[200] = 0.7;
        healthy[201] = 0.7;
        let mut strong = vec![0.3; 100];
        strong[98] = 0.8;
        strong[99] = 0.8;
        let mut weak = vec![0.3; 100];
        weak[98] = 0.65;
        weak[99] = 0.65;
        let nodes = [
            at(&healthy, None),
            at(&strong, Some(day + 1)),
            at(&weak, Some(day + 1)),
        ];
        // Best F1 catches both failures and pays a false alarm for it...
        let (t_f1, st_f1) = choose_threshold(&nodes, 2, 2, day, 1000.0);
        assert!(t_f1 <= 0.65 && st_f1.detected == 2, "{t_f1}");
        // ...a precision floor gives up the weak one instead.
        let (t, st) = choose_threshold_for_precision(&nodes, 2, 2, day, 0.99, 1000.0);
        assert!(t > 0.7 && t <= 0.8, "{t}");
        assert_eq!((st.detected, st.false_alerts), (1, 0));
        // An impossible floor falls back to best F1 within the budget.
        let (t_none, _) = choose_threshold_for_precision(&nodes, 2, 2, day, 1.01, 1000.0);
        assert_eq!(t_none, t_f1);
    }

    #[test]
    fn tuning_prefers_the_rule_that_meets_the_goal_with_most_recall() {
        let day = DAY_MS as i64;
        // A healthy node with two isolated spikes: 1-of-n rules alarm on it, 2-of-2 does not.
        let mut healthy = vec![0.1; 500];
        healthy[100] = 0.9;
        healthy[300] = 0.9;
        // A failing node whose risk flickers: only a rule tolerant of gaps sees two in a row.
        let mut failing = vec![0.1; 100];
        failing[95] = 0.8;
        failing[97] = 0.8;
        failing[99] = 0.8;
        let nodes = [at(&healthy, None), at(&failing, Some(day + 1))];
        let cfg = TuneConfig {
            rules: vec![(1, 1), (2, 2), (2, 3)],
            min_precision: 0.9,
            max_false_alarms: 1000.0,
            min_recall: 0.85,
            min_lead_h: 0.1,
        };
        let (best, options) = tune_alert_rule(&nodes, day, &cfg).unwrap();
        assert_eq!(options.len(), 3);
        assert!(!options[0].meets_goal(), "1-of-1 alarms on the spikes");
        assert!(
            !options[1].meets_goal(),
            "2-of-2 never sees the flickering failure"
        );
        assert_eq!((best.k, best.n), (2, 3));
        assert!(best.meets_goal() && best.stats.detected == 1);
        // The slack is the weakest target's relative room.
        let expect = (best.stats.precision() - 0.9) / 0.9;
        assert!(best.slack <= expect + 1e-12);
    }

    #[test]
    fn threshold_choice_respects_false_alarm_budget() {
        let day = DAY_MS as i64;
        let mut healthy = node(&[0.6; 2000], None);
        healthy.times = (0..2000).map(|i| i * day / 100).collect();
        healthy.scores[1000] = 0.95;
        healthy.scores[1001] = 0.95;
        let mut failing = node(&[0.3; 100], Some(100 * day / 100 + 1));
        failing.times = (0..100).map(|i| i * day / 100).collect();
        failing.scores[98] = 0.8;
        failing.scores[99] = 0.8;
        let (t, st) = choose_threshold(&[healthy, failing], 2, 2, day, 1000.0);
        assert!(t > 0.6 && t <= 0.8, "{t}");
        assert_eq!(st.detected, 1);
        let (ap, curve) = pr_curve(&[node(&[0.9, 0.1], Some(15))], 100);
        assert!((ap - 1.0).abs() < 1e-12 || ap > 0.0);
        assert!(!curve.is_empty());
    }
}
