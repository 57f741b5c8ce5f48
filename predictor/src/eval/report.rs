//! What `eval` reports: per-method figures, timelines and the model's operating curve (the
//! `eval --json` shape that scripts read).

use serde::{Deserialize, Serialize};

use super::metrics::{
    alert_stats, harmonic, pr_curve, quantile, AlertStats, Intervals, NodeEval, NodeScores,
};
use super::rule::alert_times;

/// Headline figures of one method on the test slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodReport {
    /// `model`, `static_thresholds`, `decision_tree` or `backblaze_rule`.
    pub name: String,
    /// How the method was set up.
    pub description: String,
    /// Alert threshold used.
    pub threshold: f64,
    /// k of the method's k-of-n rule.
    #[serde(default)]
    pub k: usize,
    /// n of the method's k-of-n rule.
    #[serde(default)]
    pub n: usize,
    /// Event precision.
    pub precision: f64,
    /// Recall over all failures.
    pub recall: f64,
    /// Recall over failures with a precursor; `null` when the trace does not record which
    /// failures had one.
    pub recall_precursor: Option<f64>,
    /// Recall over failures flagged at least 24 h ahead.
    #[serde(default)]
    pub recall_24h: f64,
    /// F1 (precision, recall over all failures).
    pub f1: f64,
    /// F1 with recall over precursor failures (`null` when that recall is unknown).
    pub f1_precursor: Option<f64>,
    /// False alarms on healthy nodes per 1000 healthy node-days.
    pub false_alarms_per_1000_node_days: f64,
    /// Alerts on failing nodes more than H before their failure (counted as false positives
    /// in precision).
    pub early_alerts: usize,
    /// Round-level average precision.
    pub pr_auc: f64,
    /// Median lead of first true alerts, hours.
    pub lead_time_median_h: Option<f64>,
    /// 10th percentile lead, hours.
    pub lead_time_p10_h: Option<f64>,
    /// Expected precision at a natural 5% AFR with this recall and false-alarm rate.
    pub precision_at_natural_afr: f64,
    /// 95% bootstrap intervals over nodes (absent when not computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95: Option<Intervals>,
    /// Raw counts and per-node outcomes.
    pub stats: AlertStats,
    /// PR curve points (recall, precision).
    pub pr_curve: Vec<(f64, f64)>,
}

/// A method's figures on `nodes` under its k-of-n rule at `threshold`.
pub(crate) fn method_report(
    name: &str,
    description: String,
    nodes: &[NodeScores],
    threshold: f64,
    k: usize,
    n: usize,
    horizon_ms: i64,
) -> MethodReport {
    let st = alert_stats(nodes, threshold, k, n, horizon_ms);
    let (pr_auc, pr_curve) = pr_curve(nodes, horizon_ms);
    let p = st.precision();
    let rp = st.recall_precursor();
    // Natural rate: 5% AFR, the same recall and false-alarm rate.
    let fail_per_day = 0.05 / 365.25;
    let tp_rate = st.recall() * fail_per_day;
    let fa_rate = st.false_alarms_per_1000() / 1000.0;
    MethodReport {
        name: name.into(),
        description,
        threshold,
        k,
        n,
        precision: p,
        recall: st.recall(),
        recall_precursor: rp,
        recall_24h: st.recall_24h(),
        f1: st.f1(),
        f1_precursor: rp.map(|rp| harmonic(p, rp)),
        false_alarms_per_1000_node_days: st.false_alarms_per_1000(),
        early_alerts: st.early_alerts,
        pr_auc,
        lead_time_median_h: quantile(&st.leads_h, 0.5),
        lead_time_p10_h: quantile(&st.leads_h, 0.1),
        precision_at_natural_afr: if tp_rate + fa_rate > 0.0 {
            tp_rate / (tp_rate + fa_rate)
        } else {
            0.0
        },
        ci95: None,
        stats: st,
        pr_curve,
    }
}

/// One node's risk over the test slice, for the HTML report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// Node id.
    pub node: String,
    /// Failure time, if any.
    pub failed_at_ms: Option<i64>,
    /// Why it was picked (detected failure, missed failure, false alarm...).
    pub label: String,
    /// (time, probability) points.
    pub points: Vec<(i64, f64)>,
    /// Alert times.
    pub alerts: Vec<i64>,
}

/// The full evaluation result (`eval --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Nodes in the trace.
    pub nodes: usize,
    /// Failures in the test slice.
    pub test_failures: usize,
    /// Test slice start, ms.
    pub test_from_ms: i64,
    /// Test slice end, ms.
    pub test_to_ms: i64,
    /// Horizon, hours.
    pub horizon_h: f64,
    /// k of the k-of-n rule.
    pub k: usize,
    /// n of the k-of-n rule.
    pub n: usize,
    /// Minutes between scoring rounds.
    pub round_min: f64,
    /// Model, then the baselines.
    pub methods: Vec<MethodReport>,
    /// Risk timelines of a few nodes (model scores).
    pub timelines: Vec<Timeline>,
    /// The model's operating curve: the same metrics at other thresholds.
    pub threshold_sweep: Vec<SweepPoint>,
    /// The risk policy replayed over the model's test scores, with its own figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<MethodReport>,
    /// Reference points that were not tuned (Backblaze's rule exactly as Backblaze states
    /// it), for comparison with published figures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<MethodReport>,
    /// The model's per-round scores on the test slice (`eval --scores`), so alert rules can
    /// be studied without rescoring; not part of the JSON report.
    #[serde(skip)]
    pub model_scores: Vec<NodeScores>,
}

/// The model's figures at one alternative threshold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Threshold.
    pub threshold: f64,
    /// Event precision.
    pub precision: f64,
    /// Recall over precursor failures (`null` when unknown).
    pub recall_precursor: Option<f64>,
    /// Recall over all failures.
    pub recall: f64,
    /// False alarms per 1000 healthy node-days.
    pub false_alarms_per_1000_node_days: f64,
    /// Median lead of first true alerts, hours.
    pub lead_time_median_h: Option<f64>,
}

/// Thresholds of the operating curve in the report: coarse below 0.5, finer where calibrated
/// alert thresholds live.
pub const SWEEP_THRESHOLDS: [f64; 11] = [0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9];

/// A few nodes' risk timelines for the HTML report: detected and missed failures, false
/// alarms, a quiet node.
pub(crate) fn pick_timelines(
    nodes: &[NodeScores],
    stats: &AlertStats,
    threshold: f64,
    k: usize,
    n: usize,
    h: i64,
    want: usize,
) -> Vec<Timeline> {
    let mut picks: Vec<(usize, String)> = Vec::new();
    let by_name = |name: &str| nodes.iter().position(|s| s.node == name);
    let mut push = |pred: &dyn Fn(&NodeEval) -> bool, label: &str, max: usize| {
        let mut added = 0;
        for ne in &stats.per_node {
            if added >= max {
                break;
            }
            if pred(ne) {
                if let Some(i) = by_name(&ne.node) {
                    if !picks.iter().any(|p| p.0 == i) {
                        picks.push((i, label.to_string()));
                        added += 1;
                    }
                }
            }
        }
    };
    let third = want.div_ceil(3).max(1);
    push(&|ne| ne.lead_h.is_some(), "detected failure", third);
    push(
        &|ne| ne.failed_at_ms.is_some() && ne.lead_h.is_none() && ne.precursor != Some(false),
        "missed failure",
        1,
    );
    push(
        &|ne| ne.false_alerts > 0 && ne.failed_at_ms.is_none(),
        "false alarm",
        third,
    );
    push(
        &|ne| ne.failed_at_ms.is_none() && ne.false_alerts == 0,
        "healthy",
        1,
    );
    picks.truncate(want);
    picks
        .into_iter()
        .map(|(i, label)| {
            let s = &nodes[i];
            let step = (s.times.len() / 500).max(1);
            Timeline {
                node: s.node.clone(),
                failed_at_ms: s.failed_at,
                label,
                points: s
                    .times
                    .iter()
                    .zip(&s.scores)
                    .step_by(step)
                    .map(|(&t, &v)| (t, v))
                    .collect(),
                alerts: alert_times(s, threshold, k, n, h),
            }
        })
        .collect()
}
