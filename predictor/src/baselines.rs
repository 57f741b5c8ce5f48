//! The node model's baselines: static thresholds, as an operator would set them, and a
//! single decision tree on the model's window features.
//!
//! Both are fitted and tuned exactly as the model is (see [`crate::train`]): on the
//! training nodes, out of fold over the same node groups, with the same candidate alert
//! rules and the same goal (the best F1 within the false-alarm budget), and stored in the
//! model file, so `eval` compares the three on nodes none of them saw without refitting
//! anything on the evaluated nodes.

use serde::{Deserialize, Serialize};

use crate::gbt::Gbt;
use crate::model::AlertRule;
use crate::sample::metric;
use crate::trace::NodeSeries;

/// What the static thresholds watch, each as its mean over the model's short window (10
/// minutes at 1-minute sampling): raw read and write latency, kernel error lines per
/// minute, temperature and packet loss — the signals an operator puts an alert on.
pub const STATIC_STATS: [(&str, usize); 5] = [
    ("disk_read_lat_ms", metric::READ_LAT),
    ("disk_write_lat_ms", metric::WRITE_LAT),
    ("err_log_per_min", metric::ERR_LOG),
    ("temp_c", metric::TEMP),
    ("net_loss_pct", metric::LOSS),
];

/// Number of static statistics.
pub const N_STATIC: usize = STATIC_STATS.len();

/// Healthy-round quantiles the static limits are tried at (training picks one).
pub const STATIC_QUANTILES: [f64; 5] = [0.99, 0.995, 0.999, 0.9995, 0.9999];

/// The static statistics of the `span_ms` up to `t` (NaN where unmeasured). The series must
/// be resampled (counts are per-minute rates).
pub fn static_stats(series: &NodeSeries, t: i64, span_ms: i64) -> [f32; N_STATIC] {
    let r = series.range(t - span_ms, t);
    let mut out = [f32::NAN; N_STATIC];
    for (k, &(_, m)) in STATIC_STATS.iter().enumerate() {
        let (mut sum, mut n) = (0.0f64, 0u32);
        for i in r.clone() {
            let v = series.values[i][m];
            if !v.is_nan() {
                sum += v as f64;
                n += 1;
            }
        }
        if n > 0 {
            out[k] = (sum / n as f64) as f32;
        }
    }
    out
}

/// How far the worst statistic is above its limit (1.0: at the limit; 0 when nothing is
/// measured).
pub fn static_score(stats: &[f32; N_STATIC], limits: &[f64]) -> f64 {
    stats
        .iter()
        .zip(limits)
        .map(|(&v, &l)| v as f64 / l)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

/// Static thresholds: alert when any statistic exceeds its limit (the healthy `quantile` of
/// the training nodes' rounds) by the alert rule's threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaticThresholds {
    /// Names of the statistics, in [`STATIC_STATS`] order.
    pub stats: Vec<String>,
    /// The healthy quantile the limits sit at.
    pub quantile: f64,
    /// One limit per statistic.
    pub limits: Vec<f64>,
    /// Span the statistics are averaged over, ms.
    pub span_ms: i64,
    /// When it alerts (the threshold is in multiples of the limits).
    pub alert: AlertRule,
}

impl StaticThresholds {
    /// The score at `t` (the series resampled as the model reads it).
    pub fn score(&self, series: &NodeSeries, t: i64) -> f64 {
        static_score(&static_stats(series, t, self.span_ms), &self.limits)
    }
}

/// A single depth-6 tree on the model's window features (without the autoencoder).
#[derive(Debug, Serialize, Deserialize)]
pub struct TreeBaseline {
    /// The tree (a one-tree booster; its margin is the score).
    pub gbt: Gbt,
    /// When it alerts.
    pub alert: AlertRule,
}

/// One method's operating point and what it measured there out of fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutOfFold {
    /// `model`, `static_thresholds` or `decision_tree`.
    pub name: String,
    /// The chosen rule and threshold.
    pub alert: AlertRule,
    /// Precision of alerts.
    pub precision: f64,
    /// Recall over all failures.
    pub recall: f64,
    /// Recall over precursor failures, when the trace records them.
    pub recall_precursor: Option<f64>,
    /// False alarms per 1000 healthy node-days.
    pub false_alarms_per_1000_node_days: f64,
    /// F1.
    pub f1: f64,
    /// Round-level average precision.
    pub pr_auc: f64,
}

/// The baselines a node model was trained beside.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeBaselines {
    /// Static thresholds (absent when they detect nothing within the budget).
    pub static_thresholds: Option<StaticThresholds>,
    /// The single tree (absent when it detects nothing within the budget).
    pub decision_tree: Option<TreeBaseline>,
}

impl NodeBaselines {
    /// Checks what a corrupt file could break at scoring time.
    pub fn check(&self, n_window_features: usize) -> Result<(), String> {
        if let Some(s) = &self.static_thresholds {
            if s.limits.len() != N_STATIC || s.limits.iter().any(|l| l.is_nan() || *l <= 0.0) {
                return Err(format!("static thresholds: limits {:?}", s.limits));
            }
            check_rule(&s.alert)?;
        }
        if let Some(t) = &self.decision_tree {
            t.gbt.validate()?;
            if t.gbt.n_features != n_window_features {
                return Err(format!(
                    "decision tree reads {} features, the model has {n_window_features} window features",
                    t.gbt.n_features
                ));
            }
            check_rule(&t.alert)?;
        }
        Ok(())
    }
}

/// An alert rule a scorer can apply: 1 <= k <= n, a positive cadence, a threshold that is
/// a number.
pub(crate) fn check_rule(r: &AlertRule) -> Result<(), String> {
    if r.k == 0 || r.k > r.n || r.round_ms <= 0 || r.threshold.is_nan() {
        return Err(format!("invalid alert rule {r:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::N_METRICS;

    #[test]
    fn static_score_is_the_worst_ratio_to_its_limit() {
        let mut s = NodeSeries {
            node: "n".into(),
            ..Default::default()
        };
        for i in 0..20i64 {
            let mut row = [f32::NAN; N_METRICS];
            row[metric::READ_LAT] = 2.0;
            row[metric::ERR_LOG] = if i >= 15 { 3.0 } else { 0.0 };
            s.ts.push(i * 60_000);
            s.values.push(row);
        }
        let st = static_stats(&s, 19 * 60_000, 600_000);
        assert_eq!(st[0], 2.0);
        assert!((st[2] - 1.5).abs() < 1e-6, "{}", st[2]);
        assert!(st[3].is_nan(), "no sensor, no statistic");
        let limits = [4.0, 1.0, 0.5, 60.0, 1.0];
        assert!((static_score(&st, &limits) - 3.0).abs() < 1e-6);
        let bad = NodeBaselines {
            static_thresholds: Some(StaticThresholds {
                stats: vec![],
                quantile: 0.99,
                limits: vec![1.0; 3],
                span_ms: 600_000,
                alert: AlertRule {
                    threshold: 1.0,
                    k: 1,
                    n: 1,
                    round_ms: 300_000,
                },
            }),
            decision_tree: None,
        };
        assert!(bad.check(10).is_err());
    }
}
