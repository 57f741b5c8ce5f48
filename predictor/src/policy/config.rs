//! The policy's settings, and their defaults matched to a node or disk model.

use serde::{Deserialize, Serialize};

use crate::model::Model;

/// Policy settings (a section of the node's TOML config). All thresholds are calibrated
/// probabilities of failing within the model's horizon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// Risk at or above which a round counts towards entering the at-risk state.
    pub enter: f64,
    /// Risk below which an at-risk node leaves the state.
    pub leave: f64,
    /// Rounds at or above `enter` needed...
    pub k: usize,
    /// ...among the last `n` rounds.
    pub n: usize,
    /// Risk from which a not-at-risk node is listed as `watch`.
    pub watch: f64,
    /// Risk from which an at-risk node is drained rather than only closed to new shards.
    pub drain: f64,
    /// How much full cluster load (1.0) raises the thresholds (0.3 = +30%): draining a node
    /// under peak load hurts clients more.
    pub load_weight: f64,
    /// How much a full migration backlog (1.0) raises the thresholds.
    pub backlog_weight: f64,
    /// Base failure rate (failures per node-day) the model was calibrated for.
    pub model_base_rate: f64,
    /// Limits on the base-rate correction factor, so a few failures cannot swing it wildly.
    pub max_base_rate_factor: f64,
    /// Storm guard: at most this fraction of live nodes at risk...
    pub storm_fraction: f64,
    /// ...and never trips below this many nodes.
    pub storm_min_nodes: usize,
    /// Fraction of newly flagged nodes left in place to measure precision (0 disables).
    pub holdout_fraction: f64,
    /// The model's horizon, ms: a held-out node that fails within it after being flagged
    /// was a true alarm, one that does not was a false one.
    pub horizon_ms: i64,
    /// Seed of the holdout draw.
    pub seed: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            enter: 0.5,
            leave: 0.25,
            k: 2,
            n: 3,
            watch: 0.2,
            drain: 0.7,
            load_weight: 0.3,
            backlog_weight: 0.5,
            model_base_rate: 0.05 / 365.25,
            max_base_rate_factor: 4.0,
            storm_fraction: 0.05,
            storm_min_nodes: 3,
            holdout_fraction: 0.0,
            horizon_ms: 86_400_000,
            seed: 1,
        }
    }
}

impl PolicyConfig {
    /// Defaults matched to a model: enter at its alert threshold with its k-of-n rule and
    /// horizon, and the base-rate correction anchored to the failure rate the model was
    /// calibrated at (as recorded in its file; models trained before that was recorded keep
    /// the default 5% AFR, and a warning says so).
    pub fn for_model(model: &Model) -> Self {
        let enter = model.alert.threshold.clamp(1e-6, 1.0);
        let model_base_rate = match model.info.calibrated_failures_per_node_day {
            Some(r) if r > 0.0 && r.is_finite() => r,
            _ => {
                tracing::warn!(
                    "the model file records no calibration failure rate: base-rate correction assumes 5% AFR"
                );
                PolicyConfig::default().model_base_rate
            }
        };
        PolicyConfig {
            enter,
            leave: enter * 0.5,
            watch: enter * 0.5,
            drain: enter.max(0.5),
            k: model.alert.k,
            n: model.alert.n,
            horizon_ms: model.horizon_ms,
            model_base_rate,
            ..Default::default()
        }
    }

    /// Defaults matched to a disk model (its threshold, rule, horizon and calibration rate),
    /// for a policy run on disk risks alone. A node running both models feeds the policy
    /// [`crate::combine::combine_risks`] on the node model's scale instead.
    pub fn for_disk_model(model: &crate::disk::DiskModel) -> Self {
        let enter = model.alert.threshold.clamp(1e-6, 1.0);
        let rate = model.info.calibrated_failures_per_device_day;
        PolicyConfig {
            enter,
            leave: enter * 0.5,
            watch: enter * 0.5,
            drain: enter.max(0.5),
            k: model.alert.k,
            n: model.alert.n,
            horizon_ms: model.horizon_ms,
            model_base_rate: if rate > 0.0 && rate.is_finite() {
                rate
            } else {
                PolicyConfig::default().model_base_rate
            },
            ..Default::default()
        }
    }
}
