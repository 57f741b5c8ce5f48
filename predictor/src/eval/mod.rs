//! Honest evaluation: the model and its baselines on nodes none of them saw, with k-of-n
//! alerting, event-level precision / recall, false alarms per 1000 healthy node-days,
//! PR-AUC and lead times, each with a 95% bootstrap interval over nodes.
//!
//! Alert semantics (also used to choose every method's operating point at training): a
//! node alerts when its score is at or above threshold in `k` of its last `n` scored
//! rounds. An alert is an event at the round the condition becomes true; a condition that
//! stays true re-fires once per horizon, so every alert claims exactly "this node fails
//! within H". It is a true positive if the node fails within H after it, a false positive
//! otherwise.
//!
//! The baselines are not fitted here: training fitted and tuned them on the training nodes
//! exactly as the model was, and the model file carries them, so nothing is fitted on the
//! evaluated nodes and their whole span is test data.

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
    alert_times, choose_operating_point, tune_alert_rule, OperatingGoal, RuleOption, TuneConfig,
};

pub(crate) use metrics::HOUR_MS;
pub(crate) use report::method_report as report_method;
pub(crate) use report::pick_timelines as report_timelines;
use report::{method_report, pick_timelines};

use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelError};
use crate::trace::Trace;
use crate::train::rounds_of;

/// Every method's per-round scores over a trace.
#[derive(Debug, Clone, Default)]
pub struct MethodScores {
    /// The model's calibrated risk.
    pub model: Vec<NodeScores>,
    /// The static thresholds' score (multiples of their limits), when the model has them.
    pub static_thresholds: Option<Vec<NodeScores>>,
    /// The single tree's margin, when the model has it.
    pub decision_tree: Option<Vec<NodeScores>>,
}

/// One node's scores: the model's, then the static thresholds' and the tree's when present.
type NodeMethodScores = (NodeScores, Option<Vec<f64>>, Option<Vec<f64>>);

/// Scores every round of every node of `trace` from `from_ms` on (rounds on the model's
/// cadence; a failed node's rounds stop at its failure) with the model and its baselines.
/// Labels are the true failure times ([`crate::sample::FailureRecord::truth_ms`]).
pub fn score_methods(
    model: &Model,
    trace: &Trace,
    from_ms: i64,
    progress: &ProgressBar,
) -> MethodScores {
    let round = model.alert.round_ms;
    let baselines = model.baselines.as_ref();
    let static_thresholds = baselines.and_then(|b| b.static_thresholds.as_ref());
    let tree = baselines.and_then(|b| b.decision_tree.as_ref());
    let n_feat = model.features.len();
    progress.set_length(trace.nodes.len() as u64);
    let per_node: Vec<NodeMethodScores> = trace
        .nodes
        .par_iter()
        // One task per node, so that no core waits on the other's unsplittable run.
        .with_max_len(1)
        .map(|series| {
            let series = &*series.resample(model.window.resolution_ms);
            let failure = trace.failures.get(&series.node);
            let truth = failure.map(|f| f.truth_ms());
            let times = rounds_of(series, round, from_ms, i64::MAX, truth);
            let (times, rows) = model.feature_rows(series, &times);
            let scores = model
                .gbt
                .margins(&rows)
                .into_iter()
                .map(|m| model.calibration.probability(m))
                .collect();
            let st =
                static_thresholds.map(|st| times.iter().map(|&t| st.score(series, t)).collect());
            let tr = tree.map(|tr| {
                let window: Vec<f64> = rows
                    .chunks(n_feat)
                    .flat_map(|r| r[..n_feat - 1].iter().copied())
                    .collect();
                tr.gbt.margins(&window)
            });
            progress.inc(1);
            let model_scores = NodeScores {
                node: series.node.clone(),
                times,
                scores,
                failed_at: truth.filter(|&f| f >= from_ms),
                precursor: failure.and_then(|f| f.has_precursor()),
            };
            (model_scores, st, tr)
        })
        .collect();
    let with = |s: &NodeScores, scores: &Option<Vec<f64>>| NodeScores {
        scores: scores.clone().unwrap_or_default(),
        ..s.clone()
    };
    MethodScores {
        static_thresholds: static_thresholds
            .map(|_| per_node.iter().map(|(m, s, _)| with(m, s)).collect()),
        decision_tree: tree.map(|_| per_node.iter().map(|(m, _, t)| with(m, t)).collect()),
        model: per_node.into_iter().map(|p| p.0).collect(),
    }
}

/// Evaluation settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalConfig {
    /// Fraction of the trace's time span skipped before the test slice (0: all of it).
    pub test_from_frac: f64,
    /// Override of the model's k (rounds above threshold).
    pub k: Option<usize>,
    /// Override of the model's n (window of rounds).
    pub n: Option<usize>,
    /// Override of the model's threshold.
    pub threshold: Option<f64>,
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
            test_from_frac: 0.0,
            k: None,
            n: None,
            threshold: None,
            timelines: 6,
            bootstrap: 200,
            seed: 7,
        }
    }
}

/// Evaluates `model` and its baselines on `trace` (see the module docs).
pub fn evaluate(
    model: &Model,
    trace: &Trace,
    cfg: &EvalConfig,
    progress: &ProgressBar,
) -> Result<EvalReport, ModelError> {
    let h = model.horizon_ms;
    let k = cfg.k.unwrap_or(model.alert.k);
    let n = cfg.n.unwrap_or(model.alert.n).max(k);
    let threshold = cfg.threshold.unwrap_or(model.alert.threshold);
    let round = model.alert.round_ms;
    let (start, end) = (trace.start_ms(), trace.end_ms());
    let from = start + ((end - start) as f64 * cfg.test_from_frac.clamp(0.0, 1.0)) as i64;
    let scored = score_methods(model, trace, from, progress);
    let with_ci = |mut r: MethodReport, scores: &[NodeScores]| {
        if cfg.bootstrap > 0 {
            r.ci95 = Some(bootstrap(&r.stats, scores, h, cfg.bootstrap, cfg.seed));
        }
        r
    };
    let model_scores = scored.model;
    let mut methods = vec![with_ci(
        method_report(
            "model",
            format!(
                "LSTM autoencoder + {} boosted trees, Platt-calibrated out of fold; {k}-of-{n} at {threshold:.4}",
                model.gbt.booster.iterations
            ),
            &model_scores,
            threshold,
            k,
            n,
            h,
        ),
        &model_scores,
    )];
    let baselines = model.baselines.as_ref();
    if let (Some(st), Some(scores)) = (
        baselines.and_then(|b| b.static_thresholds.as_ref()),
        scored.static_thresholds.as_deref(),
    ) {
        let desc = format!(
            "alert when any of {} (mean over {} min) exceeds its healthy {} quantile on the training nodes by {:.3}x, {}-of-{}; tuned out of fold as the model was",
            st.stats.join(", "),
            st.span_ms / 60_000,
            st.quantile,
            st.alert.threshold,
            st.alert.k,
            st.alert.n
        );
        let r = method_report(
            "static_thresholds",
            desc,
            scores,
            st.alert.threshold,
            st.alert.k,
            st.alert.n,
            h,
        );
        methods.push(with_ci(r, scores));
    }
    if let (Some(tree), Some(scores)) = (
        baselines.and_then(|b| b.decision_tree.as_ref()),
        scored.decision_tree.as_deref(),
    ) {
        let desc = format!(
            "one depth-6 tree on the same window features, fitted on the training nodes; {}-of-{} at margin {:.3} tuned out of fold as the model was",
            tree.alert.k, tree.alert.n, tree.alert.threshold
        );
        let r = method_report(
            "decision_tree",
            desc,
            scores,
            tree.alert.threshold,
            tree.alert.k,
            tree.alert.n,
            h,
        );
        methods.push(with_ci(r, scores));
    }
    if baselines.is_none() {
        tracing::warn!("the model file carries no baselines: only the model is reported");
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
        test_from_ms: from,
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
        let goal = |min_precision| OperatingGoal {
            rules: vec![(2, 2)],
            max_false_alarms: 1000.0,
            min_precision,
        };
        // Best F1 catches both failures and pays a false alarm for it...
        let f1 = choose_operating_point(&nodes, day, &goal(0.0), 1.02).unwrap();
        assert!(f1.threshold <= 0.65 && f1.stats.detected == 2, "{f1:?}");
        assert!((f1.slack - f1.stats.f1()).abs() < 1e-12);
        // ...a precision floor gives up the weak one instead.
        let p = choose_operating_point(&nodes, day, &goal(0.99), 1.02).unwrap();
        assert!(p.threshold > 0.7 && p.threshold <= 0.8, "{p:?}");
        assert_eq!((p.stats.detected, p.stats.false_alerts), (1, 0));
        // An impossible floor falls back to best F1 within the budget.
        let none = choose_operating_point(&nodes, day, &goal(1.01), 1.02).unwrap();
        assert_eq!(none.threshold, f1.threshold);
        // A budget nothing meets yields no operating point.
        let strict = OperatingGoal {
            max_false_alarms: -1.0,
            ..goal(0.0)
        };
        assert!(choose_operating_point(&nodes, day, &strict, 1.02).is_none());
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
        let goal = OperatingGoal {
            rules: vec![(2, 2)],
            max_false_alarms: 1000.0,
            min_precision: 0.0,
        };
        let nodes = [healthy, failing];
        let o = choose_operating_point(&nodes, day, &goal, 1.02).unwrap();
        assert!(o.threshold > 0.6 && o.threshold <= 0.8, "{o:?}");
        assert_eq!((o.stats.detected, o.stats.false_alerts_healthy), (1, 1));
        // Without room for the spike's false alarm, nothing can be detected.
        let quiet = OperatingGoal {
            max_false_alarms: 0.0,
            ..goal
        };
        assert!(choose_operating_point(&nodes, day, &quiet, 1.02).is_none());
        let (ap, curve) = pr_curve(&[node(&[0.9, 0.1], Some(15))], 100);
        assert!((ap - 1.0).abs() < 1e-12 || ap > 0.0);
        assert!(!curve.is_empty());
    }

    /// PR-AUC and the curve take a tie of scores as one threshold, so they do not depend on
    /// the order the rounds come in (the sort is unstable): the same to the bit with the
    /// nodes reversed, with ties between positive and negative rounds, a NaN and -0.0.
    #[test]
    fn pr_curve_is_independent_of_the_order_of_ties() {
        let levels = [0.0, -0.0, 0.25, 0.5, 0.5, 0.75, f64::NAN, 1.0];
        let nodes: Vec<NodeScores> = (0..30)
            .map(|i| {
                let scores: Vec<f64> = (0..400).map(|j| levels[(i * 7 + j * 3) % 8]).collect();
                node(&scores, (i % 3 == 0).then_some(4000 + i as i64))
            })
            .collect();
        let (ap, curve) = pr_curve(&nodes, 500);
        assert!(ap > 0.0 && ap < 1.0, "{ap}");
        let reversed: Vec<NodeScores> = nodes.iter().rev().cloned().collect();
        let (ap_r, curve_r) = pr_curve(&reversed, 500);
        assert_eq!(ap.to_bits(), ap_r.to_bits());
        assert_eq!(format!("{curve:?}"), format!("{curve_r:?}"));
    }
}
