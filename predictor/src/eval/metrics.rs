//! Event-level metrics: per-node alert outcomes, precision / recall / false alarms, PR-AUC,
//! quantiles and bootstrap intervals over nodes.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::rule::alert_times;

pub(crate) const DAY_MS: f64 = 86_400_000.0;
pub(crate) const HOUR_MS: f64 = 3_600_000.0;

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
    /// Whether that failure had a precursor: ground truth when the trace records it, `None`
    /// when it does not (real failure logs).
    pub precursor: Option<bool>,
}

/// Outcome of one node in an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEval {
    /// Node id.
    pub node: String,
    /// Failure time within the slice, if any.
    pub failed_at_ms: Option<i64>,
    /// Whether the failure had a precursor (`None`: unknown).
    pub precursor: Option<bool>,
    /// True alerts.
    pub true_alerts: usize,
    /// False alerts.
    pub false_alerts: usize,
    /// Lead of the first true alert, hours.
    pub lead_h: Option<f64>,
    /// Observed days (first to last scored round, plus one round).
    #[serde(default)]
    pub days: f64,
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
    /// Of which known to have had a precursor.
    pub precursor_failures: usize,
    /// Of which nobody knows whether they had a precursor.
    #[serde(default)]
    pub precursor_unknown: usize,
    /// Failures with at least one true alert.
    pub detected: usize,
    /// Precursor failures with at least one true alert.
    pub detected_precursor: usize,
    /// Failures with a true alert at least 24 h before the failure.
    #[serde(default)]
    pub detected_24h: usize,
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
    /// Aggregates per-node outcomes (also used to re-aggregate bootstrap resamples).
    pub fn from_nodes(per_node: Vec<NodeEval>) -> AlertStats {
        let mut st = AlertStats::default();
        for ne in &per_node {
            st.add(ne, 1);
        }
        st.per_node = per_node;
        st
    }

    fn add(&mut self, ne: &NodeEval, times: usize) {
        self.node_days += ne.days * times as f64;
        if ne.failed_at_ms.is_some() {
            self.failures += times;
            match ne.precursor {
                Some(true) => self.precursor_failures += times,
                Some(false) => {}
                None => self.precursor_unknown += times,
            }
            self.early_alerts += ne.false_alerts * times;
        } else {
            self.healthy_node_days += ne.days * times as f64;
            self.false_alerts_healthy += ne.false_alerts * times;
        }
        self.true_alerts += ne.true_alerts * times;
        self.false_alerts += ne.false_alerts * times;
        if let Some(lead) = ne.lead_h {
            self.detected += times;
            if ne.precursor == Some(true) {
                self.detected_precursor += times;
            }
            // The first true alert is the earliest, so its lead is the longest warning.
            if lead >= 24.0 {
                self.detected_24h += times;
            }
            for _ in 0..times {
                self.leads_h.push(lead);
            }
        }
    }

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
    /// Fraction of failures flagged at least 24 h ahead.
    pub fn recall_24h(&self) -> f64 {
        ratio(self.detected_24h, self.failures)
    }
    /// Fraction of precursor failures with a true alert; `None` when the trace does not say
    /// which failures had a precursor (or none had).
    pub fn recall_precursor(&self) -> Option<f64> {
        (self.precursor_unknown == 0 && self.precursor_failures > 0)
            .then(|| ratio(self.detected_precursor, self.precursor_failures))
    }
    /// Harmonic mean of precision and recall (all failures).
    pub fn f1(&self) -> f64 {
        harmonic(self.precision(), self.recall())
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

/// Harmonic mean, 0 when both are 0.
pub fn harmonic(p: f64, r: f64) -> f64 {
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// One node's outcome under the k-of-n rule at `threshold`.
pub fn node_eval(
    s: &NodeScores,
    threshold: f64,
    k: usize,
    n: usize,
    horizon_ms: i64,
) -> Option<NodeEval> {
    let (Some(&first), Some(&last)) = (s.times.first(), s.times.last()) else {
        return None;
    };
    let step = if s.times.len() > 1 {
        (last - first) as f64 / (s.times.len() - 1) as f64
    } else {
        0.0
    };
    let mut ne = NodeEval {
        node: s.node.clone(),
        failed_at_ms: s.failed_at,
        precursor: s.precursor,
        true_alerts: 0,
        false_alerts: 0,
        lead_h: None,
        days: ((last - first) as f64 + step) / DAY_MS,
        max_score: s.scores.iter().copied().fold(f64::NAN, f64::max),
    };
    // A node never at the threshold raises nothing: skip the walk (most nodes, most
    // thresholds, when tuning over a large fleet).
    if ne.max_score.is_nan() || ne.max_score < threshold {
        return Some(ne);
    }
    for a in alert_times(s, threshold, k, n, horizon_ms) {
        match s.failed_at {
            Some(f) if f > a && f - a <= horizon_ms => {
                let lead = (f - a) as f64 / HOUR_MS;
                if ne.true_alerts == 0 {
                    ne.lead_h = Some(lead);
                }
                ne.true_alerts += 1;
            }
            _ => ne.false_alerts += 1,
        }
    }
    Some(ne)
}

/// Counts alerts and outcomes of every node.
pub fn alert_stats(
    nodes: &[NodeScores],
    threshold: f64,
    k: usize,
    n: usize,
    horizon_ms: i64,
) -> AlertStats {
    AlertStats::from_nodes(
        nodes
            .iter()
            .filter_map(|s| node_eval(s, threshold, k, n, horizon_ms))
            .collect(),
    )
}

/// A 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// 2.5th percentile of the bootstrap distribution.
    pub lo: f64,
    /// 97.5th percentile.
    pub hi: f64,
}

/// 95% bootstrap intervals of one method's headline figures (resampling nodes with
/// replacement: nodes, not rounds, are the independent units).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Intervals {
    /// Resamples drawn.
    pub resamples: usize,
    /// Precision.
    pub precision: Option<Interval>,
    /// Recall (all failures).
    pub recall: Option<Interval>,
    /// Recall with at least 24 h of warning.
    pub recall_24h: Option<Interval>,
    /// Recall over precursor failures (when known).
    pub recall_precursor: Option<Interval>,
    /// F1.
    pub f1: Option<Interval>,
    /// False alarms per 1000 healthy node-days.
    pub false_alarms_per_1000_node_days: Option<Interval>,
    /// Round-level PR-AUC.
    pub pr_auc: Option<Interval>,
    /// Median lead, hours.
    pub lead_time_median_h: Option<Interval>,
    /// 10th-percentile lead, hours.
    pub lead_time_p10_h: Option<Interval>,
}

fn interval(mut v: Vec<f64>) -> Option<Interval> {
    v.retain(|x| x.is_finite());
    if v.len() < 10 {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some(Interval {
        lo: at(0.025),
        hi: at(0.975),
    })
}

/// Bootstrap intervals for a method's outcomes `st` (per node) and its round scores `nodes`
/// (for PR-AUC), with `resamples` draws from `seed`. Nodes are resampled with replacement; the
/// same draw serves every figure so they stay consistent with each other.
pub fn bootstrap(
    st: &AlertStats,
    nodes: &[NodeScores],
    horizon_ms: i64,
    resamples: usize,
    seed: u64,
) -> Intervals {
    use rand::{Rng, SeedableRng};
    let per = &st.per_node;
    if per.is_empty() || resamples == 0 {
        return Intervals::default();
    }
    let index: std::collections::HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, s)| (s.node.as_str(), i))
        .collect();
    let ranked = RankedRounds::new(nodes, horizon_ms);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut figs: [Vec<f64>; 9] = Default::default();
    let mut weights = vec![0u32; per.len()];
    let mut node_w = vec![0u32; nodes.len()];
    for _ in 0..resamples {
        weights.iter_mut().for_each(|w| *w = 0);
        for _ in 0..per.len() {
            weights[rng.gen_range(0..per.len())] += 1;
        }
        let mut b = AlertStats::default();
        node_w.iter_mut().for_each(|w| *w = 0);
        for (ne, &w) in per.iter().zip(&weights) {
            if w > 0 {
                b.add(ne, w as usize);
                if let Some(&i) = index.get(ne.node.as_str()) {
                    node_w[i] += w;
                }
            }
        }
        figs[0].push(b.precision());
        figs[1].push(if b.failures > 0 { b.recall() } else { f64::NAN });
        figs[2].push(if b.failures > 0 {
            b.recall_24h()
        } else {
            f64::NAN
        });
        figs[3].push(b.recall_precursor().unwrap_or(f64::NAN));
        figs[4].push(b.f1());
        figs[5].push(b.false_alarms_per_1000());
        figs[6].push(ranked.average_precision(&node_w));
        figs[7].push(quantile(&b.leads_h, 0.5).unwrap_or(f64::NAN));
        figs[8].push(quantile(&b.leads_h, 0.1).unwrap_or(f64::NAN));
    }
    let [p, r, r24, rp, f1, fa, ap, lm, l10] = figs;
    Intervals {
        resamples,
        precision: interval(p),
        recall: interval(r),
        recall_24h: interval(r24),
        recall_precursor: interval(rp),
        f1: interval(f1),
        false_alarms_per_1000_node_days: interval(fa),
        pr_auc: interval(ap),
        lead_time_median_h: interval(lm),
        lead_time_p10_h: interval(l10),
    }
}

/// Every scored round of every node, sorted once by score, so a bootstrap replicate's
/// average precision is one linear pass with per-node multiplicities.
struct RankedRounds {
    /// (score, node index, positive).
    rounds: Vec<(f64, u32, bool)>,
}

impl RankedRounds {
    fn new(nodes: &[NodeScores], horizon_ms: i64) -> Self {
        let mut rounds = Vec::new();
        for (i, s) in nodes.iter().enumerate() {
            for (&t, &v) in s.times.iter().zip(&s.scores) {
                let pos = s.failed_at.is_some_and(|f| f > t && f - t <= horizon_ms);
                let v = if v.is_finite() { v } else { f64::NEG_INFINITY };
                rounds.push((v, i as u32, pos));
            }
        }
        rounds.sort_by(|a, b| b.0.total_cmp(&a.0));
        RankedRounds { rounds }
    }

    fn average_precision(&self, weight: &[u32]) -> f64 {
        let total: f64 = self
            .rounds
            .iter()
            .filter(|r| r.2)
            .map(|r| weight[r.1 as usize] as f64)
            .sum();
        if total == 0.0 {
            return f64::NAN;
        }
        let (mut tp, mut fp, mut ap, mut prev) = (0.0, 0.0, 0.0, 0.0);
        let mut i = 0;
        while i < self.rounds.len() {
            let mut j = i;
            while j < self.rounds.len() && self.rounds[j].0 == self.rounds[i].0 {
                let w = weight[self.rounds[j].1 as usize] as f64;
                if self.rounds[j].2 {
                    tp += w;
                } else {
                    fp += w;
                }
                j += 1;
            }
            if tp + fp > 0.0 {
                let recall = tp / total;
                ap += (recall - prev) * tp / (tp + fp);
                prev = recall;
            }
            i = j;
        }
        ap
    }
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
    // Millions of rounds in training; the order within a tie does not matter (a tie is
    // consumed as one threshold below), so an unstable sort on both cores is safe.
    pts.par_sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
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

/// The `q` quantile (nearest rank) of `v`, `None` when empty.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[((s.len() - 1) as f64 * q).round() as usize])
}
