//! The k-of-n alert rule and how its threshold and (k, n) are chosen.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::metrics::{alert_stats, quantile, AlertStats, NodeScores};

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
    // Thresholds below the top fifth of all rounds alert on most nodes: never useful, and
    // on a fleet of tens of thousands of drives they cost most of the search.
    let max_rank = (all.len() / 5).max(all.len().min(1000));
    while (rank as usize) <= max_rank {
        candidates.push(all[rank as usize - 1]);
        rank = (rank * rank_step).max(rank + 1.0);
    }
    candidates.dedup();
    candidates
        .par_iter()
        .map(|&t| (t, alert_stats(nodes, t, k, n, horizon_ms)))
        .collect()
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
            // Real failure logs do not say which failures had a precursor: judge all of them.
            .min(rel(
                st.recall_precursor().unwrap_or(st.recall()),
                self.min_recall,
            ))
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
        .then(a.stats.detected.cmp(&b.stats.detected))
        .then(a.stats.precision().total_cmp(&b.stats.precision()))
}

/// What an operating point (a k-of-n rule and a threshold) is chosen for: the best F1 among
/// the candidate rules and thresholds with at most `max_false_alarms` false alarms per 1000
/// healthy node-days, preferring those that also reach `min_precision` when any does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatingGoal {
    /// Candidate (k, n) rules.
    pub rules: Vec<(usize, usize)>,
    /// False alarms per 1000 healthy node-days allowed.
    pub max_false_alarms: f64,
    /// Precision floor, honoured when some candidate reaches it (0: none).
    pub min_precision: f64,
}

/// The rule and threshold that best meet `goal` on `nodes` (every candidate threshold of
/// every rule, thresholds at score ranks spaced by `rank_step`); `None` when no candidate
/// detects a failure within the false-alarm budget. The option's `slack` holds its F1.
///
/// This is how the node model, the disk model and all their baselines choose where to
/// alert, each on its own out-of-fold scores of the training nodes: F1 is what the issue
/// compares them on, the false-alarm budget makes the comparison one at an equal or lower
/// false-alarm rate, and choosing for the best F1 within the budget (rather than, say, the
/// most recall at a high precision floor) keeps an operating point from sitting far quieter
/// than the budget allows. Ties go to the higher threshold.
pub fn choose_operating_point(
    nodes: &[NodeScores],
    horizon_ms: i64,
    goal: &OperatingGoal,
    rank_step: f64,
) -> Option<RuleOption> {
    let options: Vec<RuleOption> = goal
        .rules
        .iter()
        .filter(|(k, n)| *k >= 1 && k <= n)
        .flat_map(|&(k, n)| {
            threshold_candidates(nodes, k, n, horizon_ms, rank_step)
                .into_iter()
                .filter(|(_, st)| {
                    st.detected > 0 && st.false_alarms_per_1000() <= goal.max_false_alarms
                })
                .map(move |(threshold, stats)| RuleOption {
                    k,
                    n,
                    threshold,
                    slack: stats.f1(),
                    stats,
                })
        })
        .collect();
    let by_f1 = |a: &&RuleOption, b: &&RuleOption| {
        a.slack
            .total_cmp(&b.slack)
            .then(a.threshold.total_cmp(&b.threshold))
    };
    options
        .iter()
        .filter(|o| o.stats.precision() >= goal.min_precision)
        .max_by(by_f1)
        .or_else(|| options.iter().max_by(by_f1))
        .cloned()
}
