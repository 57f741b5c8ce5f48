//! The k-of-n alert rule and how its threshold and (k, n) are chosen.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::metrics::alert_stats;
use super::metrics::{node_eval, quantile, AlertStats, NodeEval, NodeScores, HOUR_MS};

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
/// `rank_step` times the previous rank), because the useful thresholds live in the far tail.
/// They do not depend on the rule, so a search over rules sorts the scores once.
fn candidate_thresholds(nodes: &[NodeScores], rank_step: f64) -> Vec<f64> {
    let mut all: Vec<f64> = nodes
        .iter()
        .flat_map(|s| s.scores.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    all.par_sort_unstable_by(|a, b| b.total_cmp(a));
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
}

/// Each candidate threshold with its alert statistics under the k-of-n rule: what
/// [`alert_stats`] gives at each, computed from the rule's per-round k-th highest score of
/// the last n rounds ([`KthSeries`]) so that one pass per node and threshold is a
/// comparison per round.
fn threshold_candidates(
    nodes: &[NodeScores],
    thresholds: &[f64],
    k: usize,
    n: usize,
    horizon_ms: i64,
) -> Vec<(f64, AlertStats)> {
    let series: Vec<KthSeries> = nodes
        .par_iter()
        .filter_map(|s| KthSeries::new(s, k, n))
        .collect();
    thresholds
        .par_iter()
        .map(|&t| {
            let per_node = series.iter().map(|ks| ks.eval(t, horizon_ms)).collect();
            (t, AlertStats::from_nodes(per_node))
        })
        .collect()
}

/// One node's scores under one k-of-n rule, for many thresholds: at each round the k-th
/// highest score among the last n rounds (NaN counting as lowest). At least k of those
/// rounds reach a threshold exactly when this value does, so [`alert_times`] at any
/// threshold follows from it.
struct KthSeries<'a> {
    s: &'a NodeScores,
    kth: Vec<f64>,
    /// The highest `kth`: thresholds above it raise nothing on this node.
    max_kth: f64,
    /// The node's outcome without alerts ([`node_eval`] at an unreachable threshold).
    quiet: NodeEval,
}

impl<'a> KthSeries<'a> {
    /// `None` for a node without rounds (which [`alert_stats`] leaves out).
    fn new(s: &'a NodeScores, k: usize, n: usize) -> Option<KthSeries<'a>> {
        let mut quiet = node_eval(s, f64::INFINITY, k, n, 0)?;
        (quiet.true_alerts, quiet.false_alerts, quiet.lead_h) = (0, 0, None);
        let lowest = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
        let mut window = Vec::with_capacity(n);
        let kth: Vec<f64> = (0..s.scores.len())
            .map(|j| {
                let from = (j + 1).saturating_sub(n);
                if j + 1 - from < k || k == 0 {
                    return f64::NEG_INFINITY;
                }
                window.clear();
                window.extend(s.scores[from..=j].iter().map(|&v| lowest(v)));
                *window
                    .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a))
                    .1
            })
            .collect();
        let max_kth = kth.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(KthSeries {
            s,
            kth,
            max_kth,
            quiet,
        })
    }

    /// [`node_eval`] at `threshold`.
    fn eval(&self, threshold: f64, horizon_ms: i64) -> NodeEval {
        let mut ne = self.quiet.clone();
        if self.max_kth < threshold {
            return ne;
        }
        let mut active_since: Option<i64> = None;
        for (&t, &m) in self.s.times.iter().zip(&self.kth) {
            // `kth` is never NaN (NaN scores count as lowest).
            if m < threshold {
                active_since = None;
                continue;
            }
            if active_since.is_some_and(|since| t - since < horizon_ms) {
                continue;
            }
            active_since = Some(t);
            match self.s.failed_at {
                Some(f) if f > t && f - t <= horizon_ms => {
                    if ne.true_alerts == 0 {
                        ne.lead_h = Some((f - t) as f64 / HOUR_MS);
                    }
                    ne.true_alerts += 1;
                }
                _ => ne.false_alerts += 1,
            }
        }
        ne
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
    // A finer grid than training's: the validation trace is the place to pin the
    // threshold down, and a 12% step in rank moved recall by several failures.
    let thresholds = candidate_thresholds(nodes, 1.02);
    let options: Vec<RuleOption> = cfg
        .rules
        .iter()
        .filter(|(k, n)| *k >= 1 && k <= n)
        .filter_map(|&(k, n)| {
            threshold_candidates(nodes, &thresholds, k, n, horizon_ms)
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
    let thresholds = candidate_thresholds(nodes, rank_step);
    let options: Vec<RuleOption> = goal
        .rules
        .iter()
        .filter(|(k, n)| *k >= 1 && k <= n)
        .flat_map(|&(k, n)| {
            threshold_candidates(nodes, &thresholds, k, n, horizon_ms)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::alert_stats;
    use rand::{Rng, SeedableRng};

    /// The threshold search's statistics (from each rule's k-th highest score of the last n
    /// rounds) are exactly those of walking every round with [`alert_times`], for every
    /// candidate threshold and rule, with missing scores, ties and failing nodes.
    #[test]
    fn threshold_search_equals_walking_the_rule() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let step = 300_000i64;
        let nodes: Vec<NodeScores> = (0..40)
            .map(|i| {
                let len = rng.gen_range(0..400usize);
                let fails = i % 3 == 0 && len > 0;
                NodeScores {
                    node: format!("n{i}"),
                    times: (0..len as i64).map(|j| j * step).collect(),
                    scores: (0..len)
                        .map(|j| match rng.gen_range(0..20) {
                            0 => f64::NAN,
                            1 => 0.5,
                            _ if fails && j + 30 > len => rng.gen_range(0.3..1.0),
                            _ => rng.gen_range(0.0..0.6f64).powi(3),
                        })
                        .collect(),
                    failed_at: fails.then_some(len as i64 * step + step),
                    precursor: fails.then_some(i % 2 == 0),
                }
            })
            .collect();
        let horizon = 2 * 3_600_000;
        let thresholds = candidate_thresholds(&nodes, 1.05);
        assert!(thresholds.len() > 50 && thresholds.contains(&0.5));
        for (k, n) in [(1, 1), (2, 3), (3, 6), (4, 12), (12, 12)] {
            let fast = threshold_candidates(&nodes, &thresholds, k, n, horizon);
            assert_eq!(fast.len(), thresholds.len());
            for (t, st) in fast {
                let walked = alert_stats(&nodes, t, k, n, horizon);
                assert_eq!(format!("{st:?}"), format!("{walked:?}"), "{k}/{n} at {t}");
            }
        }
    }
}
