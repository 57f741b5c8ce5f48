//! Honest evaluation: time-ordered split, k-of-n alerting, event-level precision / recall,
//! false alarms per 1000 healthy node-days, PR-AUC and lead times, for the model and two
//! baselines (static thresholds, a single decision tree).
//!
//! Alert semantics (also used to pick the model's threshold at training): a node alerts when
//! its score is at or above threshold in `k` of its last `n` scored rounds. An alert is an
//! event at the round the condition becomes true; a condition that stays true re-fires once
//! per horizon, so every alert claims exactly "this node fails within H". It is a true positive
//! if the node fails within H after it, a false positive otherwise.

use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::features::{feature_names, WindowFeatures};
use crate::gbt::{Gbt, GbtConfig};
use crate::model::{Model, ModelError};
use crate::trace::Trace;

const DAY_MS: f64 = 86_400_000.0;
const HOUR_MS: f64 = 3_600_000.0;

/// Scores of one node over a time slice.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeScores {
    /// Node id.
    pub node: String,
    /// Scored round times, increasing.
    pub times: Vec<i64>,
    /// Score per round (probability or any monotone risk).
    pub scores: Vec<f64>,
    /// When the node failed, if it did.
    pub failed_at: Option<i64>,
    /// Whether that failure had a precursor (ground truth when known).
    pub precursor: bool,
}

/// Times at which a node raises alerts under the k-of-n rule.
pub fn alert_times(
    s: &NodeScores,
    threshold: f64,
    k: usize,
    n: usize,
    horizon_ms: i64,
) -> Vec<i64> {
    let mut out = Vec::new();
    let mut recent: std::collections::VecDeque<bool> = std::collections::VecDeque::new();
    let mut above_in_window = 0usize;
    let mut active_since: Option<i64> = None;
    for (&t, &score) in s.times.iter().zip(&s.scores) {
        let above = score >= threshold;
        recent.push_back(above);
        above_in_window += above as usize;
        if recent.len() > n {
            if let Some(old) = recent.pop_front() {
                above_in_window -= old as usize;
            }
        }
        if above_in_window >= k {
            match active_since {
                None => {
                    out.push(t);
                    active_since = Some(t);
                }
                Some(since) if t - since >= horizon_ms => {
                    out.push(t);
                    active_since = Some(t);
                }
                Some(_) => {}
            }
        } else {
            active_since = None;
        }
    }
    out
}

/// Outcome of one node in an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEval {
    /// Node id.
    pub node: String,
    /// Failure time within the slice, if any.
    pub failed_at_ms: Option<i64>,
    /// Whether the failure had a precursor.
    pub precursor: bool,
    /// True alerts.
    pub true_alerts: usize,
    /// False alerts.
    pub false_alerts: usize,
    /// Lead of the first true alert, hours.
    pub lead_h: Option<f64>,
    /// Highest score seen.
    pub max_score: f64,
}

/// Event-level counts for one method at one threshold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertStats {
    /// True-positive alerts.
    pub true_alerts: usize,
    /// False-positive alerts.
    pub false_alerts: usize,
    /// Of the false alerts, those on nodes that did not fail in the slice.
    pub false_alerts_healthy: usize,
    /// Of the false alerts, those on nodes that did fail, but more than H later (precursors
    /// seen too early count against precision, not as false alarms on healthy nodes).
    pub early_alerts: usize,
    /// Failures in the slice.
    pub failures: usize,
    /// Of which with a precursor.
    pub precursor_failures: usize,
    /// Failures with at least one true alert.
    pub detected: usize,
    /// Precursor failures with at least one true alert.
    pub detected_precursor: usize,
    /// Lead time of the first true alert per detected failure, hours.
    pub leads_h: Vec<f64>,
    /// Observed node-days.
    pub node_days: f64,
    /// Node-days of nodes that did not fail in the slice.
    pub healthy_node_days: f64,
    /// Per-node outcomes.
    pub per_node: Vec<NodeEval>,
}

impl AlertStats {
    /// Of all alerts, the fraction that were followed by a failure within H.
    pub fn precision(&self) -> f64 {
        let all = self.true_alerts + self.false_alerts;
        if all == 0 {
            0.0
        } else {
            self.true_alerts as f64 / all as f64
        }
    }
    /// Fraction of failures with a true alert.
    pub fn recall(&self) -> f64 {
        ratio(self.detected, self.failures)
    }
    /// Fraction of precursor failures with a true alert.
    pub fn recall_precursor(&self) -> f64 {
        ratio(self.detected_precursor, self.precursor_failures)
    }
    /// Harmonic mean of precision and recall (all failures).
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
    /// False alarms on healthy nodes per 1000 healthy node-days.
    pub fn false_alarms_per_1000(&self) -> f64 {
        if self.healthy_node_days <= 0.0 {
            0.0
        } else {
            self.false_alerts_healthy as f64 * 1000.0 / self.healthy_node_days
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Counts alerts and outcomes of every node.
pub fn alert_stats(
    nodes: &[NodeScores],
    threshold: f64,
    k: usize,
    n: usize,
    horizon_ms: i64,
) -> AlertStats {
    let mut st = AlertStats::default();
    for s in nodes {
        let (Some(&first), Some(&last)) = (s.times.first(), s.times.last()) else {
            continue;
        };
        let days = (last - first) as f64 / DAY_MS;
        st.node_days += days;
        let alerts = alert_times(s, threshold, k, n, horizon_ms);
        let mut ne = NodeEval {
            node: s.node.clone(),
            failed_at_ms: s.failed_at,
            precursor: s.precursor,
            true_alerts: 0,
            false_alerts: 0,
            lead_h: None,
            max_score: s.scores.iter().copied().fold(f64::NAN, f64::max),
        };
        if s.failed_at.is_some() {
            st.failures += 1;
            st.precursor_failures += s.precursor as usize;
        } else {
            st.healthy_node_days += days;
        }
        for &a in &alerts {
            match s.failed_at {
                Some(f) if f > a && f - a <= horizon_ms => {
                    if ne.true_alerts == 0 {
                        ne.lead_h = Some((f - a) as f64 / HOUR_MS);
                    }
                    ne.true_alerts += 1;
                }
                _ => ne.false_alerts += 1,
            }
        }
        st.true_alerts += ne.true_alerts;
        st.false_alerts += ne.false_alerts;
        if s.failed_at.is_some() {
            st.early_alerts += ne.false_alerts;
        } else {
            st.false_alerts_healthy += ne.false_alerts;
        }
        if let Some(lead) = ne.lead_h {
            st.detected += 1;
            st.detected_precursor += s.precursor as usize;
            st.leads_h.push(lead);
        }
        st.per_node.push(ne);
    }
    st
}

/// Candidate thresholds for `nodes`: score quantiles spaced geometrically in rank (each
/// `rank_step` times the previous rank), because the useful thresholds live in the far tail;
/// each with its alert statistics.
fn threshold_candidates(
    nodes: &[NodeScores],
    k: usize,
    n: usize,
    horizon_ms: i64,
    rank_step: f64,
) -> Vec<(f64, AlertStats)> {
    let mut all: Vec<f64> = nodes
        .iter()
        .flat_map(|s| s.scores.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    all.sort_by(|a, b| b.total_cmp(a));
    let mut candidates = Vec::new();
    let mut rank = 1.0f64;
    while (rank as usize) <= all.len() {
        candidates.push(all[rank as usize - 1]);
        rank = (rank * rank_step).max(rank + 1.0);
    }
    candidates.dedup();
    candidates
        .par_iter()
        .map(|&t| (t, alert_stats(nodes, t, k, n, horizon_ms)))
        .collect()
}

/// The best F1 among candidates with at most `max_fa` false alarms on healthy nodes per 1000
/// healthy node-days (ties to the higher threshold), or, if none qualifies, the quietest.
fn best_f1(evaluated: Vec<(f64, AlertStats)>, max_fa: f64) -> (f64, AlertStats) {
    let best_ok = evaluated
        .iter()
        .filter(|(_, s)| s.false_alarms_per_1000() <= max_fa)
        .max_by(|a, b| a.1.f1().total_cmp(&b.1.f1()).then(b.0.total_cmp(&a.0)));
    match best_ok {
        Some((t, s)) => (*t, s.clone()),
        None => evaluated
            .into_iter()
            .min_by(|a, b| {
                a.1.false_alarms_per_1000()
                    .total_cmp(&b.1.false_alarms_per_1000())
            })
            .unwrap_or((f64::INFINITY, AlertStats::default())),
    }
}

/// Picks the threshold with the best F1 among those with at most `max_fa` false alarms on
/// healthy nodes per 1000 healthy node-days (or, if none qualifies, the quietest one).
pub fn choose_threshold(
    nodes: &[NodeScores],
    k: usize,
    n: usize,
    horizon_ms: i64,
    max_fa: f64,
) -> (f64, AlertStats) {
    best_f1(threshold_candidates(nodes, k, n, horizon_ms, 1.12), max_fa)
}

/// Picks the threshold for a precision-constrained goal: the highest recall among thresholds
/// with precision at least `min_precision` and at most `max_fa` false alarms per 1000 healthy
/// node-days (ties go to the higher precision, then the higher threshold). When no threshold
/// meets both, falls back to [`choose_threshold`]'s best F1 within the false-alarm budget.
///
/// Why not best F1: an operator pays for every false alert with a needless drain, so the
/// issue fixes a precision floor and a false-alarm ceiling, and recall is what is left to
/// maximise.
pub fn choose_threshold_for_precision(
    nodes: &[NodeScores],
    k: usize,
    n: usize,
    horizon_ms: i64,
    min_precision: f64,
    max_fa: f64,
) -> (f64, AlertStats) {
    let evaluated = threshold_candidates(nodes, k, n, horizon_ms, 1.12);
    let best = evaluated
        .iter()
        .filter(|(_, s)| {
            s.true_alerts > 0
                && s.precision() >= min_precision
                && s.false_alarms_per_1000() <= max_fa
        })
        .max_by(|a, b| {
            a.1.detected
                .cmp(&b.1.detected)
                .then(a.1.precision().total_cmp(&b.1.precision()))
                .then(a.0.total_cmp(&b.0))
        });
    match best {
        Some((t, s)) => (*t, s.clone()),
        None => best_f1(evaluated, max_fa),
    }
}

/// The targets, which [`tune_alert_rule`] chooses an alert rule for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneConfig {
    /// Candidate (k, n) rules.
    pub rules: Vec<(usize, usize)>,
    /// Precision target.
    pub min_precision: f64,
    /// False alarms per 1000 healthy node-days allowed.
    pub max_false_alarms: f64,
    /// Recall target over failures with a precursor.
    pub min_recall: f64,
    /// Median lead target of true alerts, hours.
    pub min_lead_h: f64,
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig {
            rules: vec![(2, 3), (3, 3), (3, 6), (2, 12), (3, 12), (4, 12)],
            min_precision: 0.8,
            max_false_alarms: 1.0,
            min_recall: 0.85,
            min_lead_h: 2.0,
        }
    }
}

impl TuneConfig {
    /// The smallest relative slack of `st` against the targets: positive when every target
    /// is met, and the larger, the further the weakest one is from its limit.
    pub fn slack(&self, st: &AlertStats) -> f64 {
        if st.true_alerts == 0 {
            return -1.0;
        }
        let lead = quantile(&st.leads_h, 0.5).unwrap_or(0.0);
        let rel = |v: f64, target: f64| (v - target) / target.abs().max(1e-9);
        rel(st.precision(), self.min_precision)
            .min(-rel(
                st.false_alarms_per_1000(),
                self.max_false_alarms.max(1e-9),
            ))
            .min(rel(st.recall_precursor(), self.min_recall))
            .min(rel(lead, self.min_lead_h.max(1e-9)))
    }
}

/// One rule's best threshold on the validation trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleOption {
    /// Rounds above threshold required...
    pub k: usize,
    /// ...among this many.
    pub n: usize,
    /// The threshold with the largest [`TuneConfig::slack`] for this rule.
    pub threshold: f64,
    /// That slack (positive: every target met on the validation trace).
    pub slack: f64,
    /// Its figures on the validation trace.
    pub stats: AlertStats,
}

impl RuleOption {
    /// Whether every target is met on the validation trace.
    pub fn meets_goal(&self) -> bool {
        self.slack >= 0.0
    }
}

/// Chooses the alert rule (k, n and threshold) on a validation trace's scores: the one whose
/// weakest target has the most room ([`TuneConfig::slack`], ties to more recall). Returns the
/// choice first, then every rule's best option.
///
/// Why maximin over the targets rather than, say, best F1: the targets are
/// constraints, not a trade-off, and the point furthest inside all of them is the one most
/// likely to stay inside on a trace the choice never saw. Why a separate validation trace: the
/// training trace's calibration slice holds a few dozen failures, too few to pick a rule, and
/// the evaluation trace must stay unseen. A third seed makes the choice at the failure rate
/// the evaluation will see.
pub fn tune_alert_rule(
    nodes: &[NodeScores],
    horizon_ms: i64,
    cfg: &TuneConfig,
) -> Option<(RuleOption, Vec<RuleOption>)> {
    let options: Vec<RuleOption> = cfg
        .rules
        .iter()
        .filter(|(k, n)| *k >= 1 && k <= n)
        .filter_map(|&(k, n)| {
            // A finer grid than training's: the validation trace is the place to pin the
            // threshold down, and a 12% step in rank moved recall by several failures.
            threshold_candidates(nodes, k, n, horizon_ms, 1.02)
                .into_iter()
                .map(|(threshold, stats)| RuleOption {
                    k,
                    n,
                    threshold,
                    slack: cfg.slack(&stats),
                    stats,
                })
                .max_by(better)
        })
        .collect();
    let best = options.iter().max_by(|a, b| better(a, b))?.clone();
    Some((best, options))
}

/// Orders options by slack, then recall over precursor failures, then precision.
fn better(a: &RuleOption, b: &RuleOption) -> std::cmp::Ordering {
    a.slack
        .total_cmp(&b.slack)
        .then(a.stats.detected_precursor.cmp(&b.stats.detected_precursor))
        .then(a.stats.precision().total_cmp(&b.stats.precision()))
}

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
                precursor: failure.is_some_and(|f| f.has_precursor()),
            }
        })
        .collect()
}

/// Round-level precision-recall curve (label: fails within H) and its average precision.
pub fn pr_curve(nodes: &[NodeScores], horizon_ms: i64) -> (f64, Vec<(f64, f64)>) {
    let mut pts: Vec<(f64, bool)> = Vec::new();
    for s in nodes {
        for (&t, &v) in s.times.iter().zip(&s.scores) {
            let pos = s.failed_at.is_some_and(|f| f > t && f - t <= horizon_ms);
            pts.push((if v.is_finite() { v } else { f64::NEG_INFINITY }, pos));
        }
    }
    pts.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total_pos = pts.iter().filter(|p| p.1).count();
    if total_pos == 0 {
        return (0.0, Vec::new());
    }
    let (mut tp, mut fp, mut ap, mut prev_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut curve = Vec::new();
    let step = (pts.len() / 400).max(1);
    let mut i = 0;
    while i < pts.len() {
        // Ties are one threshold: consume them together.
        let mut j = i;
        while j < pts.len() && pts[j].0 == pts[i].0 {
            if pts[j].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        let recall = tp as f64 / total_pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
        if curve.is_empty() || j / step != i / step || j == pts.len() {
            curve.push((recall, precision));
        }
        i = j;
    }
    (ap, curve)
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
        }
    }
}

/// Headline figures of one method on the test slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodReport {
    /// `model`, `static_thresholds` or `decision_tree`.
    pub name: String,
    /// How the method was set up.
    pub description: String,
    /// Alert threshold used.
    pub threshold: f64,
    /// Event precision.
    pub precision: f64,
    /// Recall over all failures.
    pub recall: f64,
    /// Recall over failures with a precursor.
    pub recall_precursor: f64,
    /// F1 (precision, recall over all failures).
    pub f1: f64,
    /// F1 with recall over precursor failures.
    pub f1_precursor: f64,
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
    /// Raw counts and per-node outcomes.
    pub stats: AlertStats,
    /// PR curve points (recall, precision).
    pub pr_curve: Vec<(f64, f64)>,
}

fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[((s.len() - 1) as f64 * q).round() as usize])
}

fn method_report(
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
        precision: p,
        recall: st.recall(),
        recall_precursor: rp,
        f1: st.f1(),
        f1_precursor: if p + rp > 0.0 {
            2.0 * p * rp / (p + rp)
        } else {
            0.0
        },
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
    /// Recall over precursor failures.
    pub recall_precursor: f64,
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

/// Static-threshold statistics over the last 10 minutes, as an operator would alert on them:
/// raw read and write latency, kernel error lines per minute, temperature.
const STATIC_STATS: [&str; 4] = [
    "disk_read_lat_ms",
    "disk_write_lat_ms",
    "err_log_per_min",
    "temp_c",
];

fn static_stats(series: &crate::trace::NodeSeries, t: i64) -> [f32; 4] {
    use crate::sample::metric;
    let r = series.range(t - 600_000, t);
    let mut out = [f32::NAN; 4];
    if r.is_empty() {
        return out;
    }
    let step_min = if r.len() > 1 {
        (series.ts[r.end - 1] - series.ts[r.start]) as f32 / 60_000.0 / (r.len() - 1) as f32
    } else {
        1.0
    };
    for (k, m) in [
        metric::READ_LAT,
        metric::WRITE_LAT,
        metric::ERR_LOG,
        metric::TEMP,
    ]
    .into_iter()
    .enumerate()
    {
        let vals: Vec<f32> = r
            .clone()
            .map(|i| series.values[i][m])
            .filter(|v| !v.is_nan())
            .collect();
        if !vals.is_empty() {
            let mean = vals.iter().sum::<f32>() / vals.len() as f32;
            out[k] = if m == metric::ERR_LOG {
                mean / step_min.max(1.0 / 60.0)
            } else {
                mean
            };
        }
    }
    out
}

struct NodeRounds {
    node: String,
    failed_at: Option<i64>,
    precursor: bool,
    early_times: Vec<i64>,
    early_rows: Vec<f32>,
    early_static: Vec<[f32; 4]>,
    test_times: Vec<i64>,
    test_rows: Vec<f32>,
    test_static: Vec<[f32; 4]>,
    test_probs: Vec<f64>,
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
                precursor: failure.is_some_and(|f| f.has_precursor()),
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
    let mut methods = vec![method_report(
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
    )];

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
        methods.push(method_report(
            "static_thresholds",
            desc,
            &test,
            1.0,
            k,
            n,
            h,
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
                methods.push(method_report(
                    "decision_tree",
                    "one depth-6 tree on the same window features, fitted and thresholded on the early slice".into(),
                    &test,
                    thr,
                    k,
                    n,
                    h,
                ));
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
        model_scores,
    })
}

fn static_score(stats: &[f32; 4], limits: &[f64; 4]) -> f64 {
    stats
        .iter()
        .zip(limits)
        .map(|(&v, &l)| v as f64 / l)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

fn pick_timelines(
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
        &|ne| ne.failed_at_ms.is_some() && ne.lead_h.is_none() && ne.precursor,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(scores: &[f64], failed_at: Option<i64>) -> NodeScores {
        NodeScores {
            node: "n".into(),
            times: (0..scores.len() as i64).map(|i| i * 10).collect(),
            scores: scores.to_vec(),
            failed_at,
            precursor: true,
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
