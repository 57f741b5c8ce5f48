//! The risk policy: turns per-node probabilities into at-risk decisions and actions.
//!
//! Moving data is expensive and a false alarm churns the cluster, so the policy adds what a
//! bare threshold lacks: hysteresis (k-of-n rounds to enter, a lower bar to leave), adjustment
//! to cluster load, migration backlog and the failure rate actually observed, a storm guard
//! (many nodes flagged at once is more likely a shared cause or a model fault than a wave of
//! dying disks) and an optional random holdout that keeps some flagged nodes in place so
//! precision can be measured in production.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::{Model, Risk};

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

/// How the nodes left in place were doing: the production measure of precision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HoldoutReport {
    /// Held-out nodes whose horizon has run out or who failed within it.
    pub decided: usize,
    /// Of which failed within the horizon after being flagged.
    pub failed_within_horizon: usize,
    /// Held-out nodes still within their horizon.
    pub pending: usize,
    /// `failed_within_horizon / decided`, when anything was decided.
    pub precision: Option<f64>,
}

/// A policy configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyError(String);

/// Cluster-wide conditions the thresholds adapt to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClusterContext {
    /// Cluster load, 0 (idle) to 1 (saturated).
    pub load: f64,
    /// Migration backlog relative to the migrators' capacity, 0 (idle) to 1 (full).
    pub migration_backlog: f64,
    /// Failures per node-day observed recently, if known.
    pub observed_base_rate: Option<f64>,
}

impl Default for ClusterContext {
    fn default() -> Self {
        ClusterContext {
            load: 0.0,
            migration_backlog: 0.0,
            observed_base_rate: None,
        }
    }
}

/// One node's latest risk and how much data it holds.
#[derive(Debug, Clone)]
pub struct NodeInput {
    /// The model's verdict.
    pub risk: Risk,
    /// Bytes of shard data on the node (what a failure would put at risk).
    pub data_bytes: u64,
}

/// What to do about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Keep an eye on it; nothing moves.
    Watch,
    /// Place no new shards on it.
    StopPlacing,
    /// Move its shards away.
    Drain,
}

/// The policy's verdict on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDecision {
    /// Node id.
    pub node: String,
    /// Risk after base-rate adjustment.
    pub risk: f64,
    /// The model's calibrated probability.
    pub model_probability: f64,
    /// Bytes at risk.
    pub data_bytes: u64,
    /// Ordering key: risk x data at risk.
    pub priority: f64,
    /// Recommended action.
    pub action: Action,
    /// Whether the node is in the at-risk state (hysteresis).
    pub at_risk: bool,
    /// Left in place on purpose to measure precision.
    pub holdout: bool,
    /// Top reasons, e.g. `read_lat_norm_mean_1h=12.3 (+1.20)`.
    pub reasons: Vec<String>,
}

/// The result of one policy round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDecision {
    /// Nodes to act on or watch, highest priority first.
    pub at_risk: Vec<NodeDecision>,
    /// Storm guard tripped: automated moves are frozen (actions capped at `watch`).
    pub storm: bool,
    /// Human-readable alarm when something needs an operator.
    pub alarm: Option<String>,
    /// Entering threshold after load and backlog adjustment.
    pub effective_enter: f64,
    /// Leaving threshold after adjustment.
    pub effective_leave: f64,
}

#[derive(Debug, Default)]
struct NodeState {
    recent: VecDeque<bool>,
    at_risk: bool,
    holdout: bool,
}

/// One held-out flag: when the node was flagged and, once known, whether it failed in time.
#[derive(Debug, Clone, Copy)]
struct HoldoutFlag {
    flagged_at: i64,
    failed_in_time: Option<bool>,
}

/// Stateful policy: call [`RiskPolicy::evaluate`] once per scoring round.
#[derive(Debug)]
pub struct RiskPolicy {
    cfg: PolicyConfig,
    nodes: HashMap<String, NodeState>,
    holdouts: HashMap<String, Vec<HoldoutFlag>>,
    rng: StdRng,
}

impl RiskPolicy {
    /// Checks the settings and starts with every node healthy.
    pub fn new(cfg: PolicyConfig) -> Result<Self, PolicyError> {
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(PolicyError(format!("{name} = {v} must be within 0..=1")))
            }
        };
        unit("enter", cfg.enter)?;
        unit("leave", cfg.leave)?;
        unit("watch", cfg.watch)?;
        unit("drain", cfg.drain)?;
        unit("storm_fraction", cfg.storm_fraction)?;
        unit("holdout_fraction", cfg.holdout_fraction)?;
        if cfg.leave > cfg.enter {
            return Err(PolicyError(format!(
                "leave ({}) must not exceed enter ({}), or nodes would flap",
                cfg.leave, cfg.enter
            )));
        }
        if cfg.k == 0 || cfg.k > cfg.n {
            return Err(PolicyError(format!(
                "need 1 <= k <= n, got k={} n={}",
                cfg.k, cfg.n
            )));
        }
        if cfg.load_weight < 0.0 || cfg.backlog_weight < 0.0 || cfg.max_base_rate_factor < 1.0 {
            return Err(PolicyError(
                "weights must be >= 0 and max_base_rate_factor >= 1".into(),
            ));
        }
        if cfg.model_base_rate <= 0.0 {
            return Err(PolicyError("model_base_rate must be positive".into()));
        }
        if cfg.horizon_ms <= 0 {
            return Err(PolicyError("horizon_ms must be positive".into()));
        }
        let rng = StdRng::seed_from_u64(cfg.seed);
        Ok(RiskPolicy {
            cfg,
            nodes: HashMap::new(),
            holdouts: HashMap::new(),
            rng,
        })
    }

    /// Records that `node` failed at `at_ms`: a held-out flag of the horizon before it was a
    /// true alarm. Call it from the failure detector.
    pub fn record_failure(&mut self, node: &str, at_ms: i64) {
        let h = self.cfg.horizon_ms;
        if let Some(flags) = self.holdouts.get_mut(node) {
            for f in flags.iter_mut() {
                if f.failed_in_time.is_none() && at_ms >= f.flagged_at {
                    f.failed_in_time = Some(at_ms - f.flagged_at <= h);
                }
            }
        }
    }

    /// The outcome of every held-out flag as of `now_ms` (a flag older than the horizon
    /// with no failure was a false alarm).
    pub fn holdout_report(&self, now_ms: i64) -> HoldoutReport {
        let mut r = HoldoutReport::default();
        for f in self.holdouts.values().flatten() {
            match f.failed_in_time {
                Some(true) => {
                    r.decided += 1;
                    r.failed_within_horizon += 1;
                }
                Some(false) => r.decided += 1,
                None if now_ms - f.flagged_at > self.cfg.horizon_ms => r.decided += 1,
                None => r.pending += 1,
            }
        }
        r.precision = (r.decided > 0).then(|| r.failed_within_horizon as f64 / r.decided as f64);
        r
    }

    /// The settings in force.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Forgets a node (removed from the cluster, or drained and replaced).
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// One policy round over the latest risk of every live node.
    pub fn evaluate(&mut self, inputs: &[NodeInput], ctx: &ClusterContext) -> PolicyDecision {
        let c = &self.cfg;
        let bump = (1.0 + c.load_weight * ctx.load.clamp(0.0, 1.0))
            * (1.0 + c.backlog_weight * ctx.migration_backlog.clamp(0.0, 1.0));
        // Raise thresholds in odds, not in probability: multiplying a probability by the
        // bump drove `enter` to 1.0 at full load and backlog, where nothing could ever be
        // flagged again; odds scaled by the bump stay below 1 and keep their order.
        let raise = |p: f64| {
            let p = p.clamp(0.0, 1.0);
            if p >= 1.0 {
                return 1.0;
            }
            let odds = p / (1.0 - p) * bump;
            odds / (1.0 + odds)
        };
        let enter = raise(c.enter);
        let leave = raise(c.leave).min(enter);
        let drain = raise(c.drain).max(enter);
        // Base-rate correction: scale the odds by observed / calibrated failure rate.
        let odds_factor = ctx
            .observed_base_rate
            .filter(|r| r.is_finite() && *r >= 0.0)
            .map_or(1.0, |r| {
                (r / c.model_base_rate).clamp(1.0 / c.max_base_rate_factor, c.max_base_rate_factor)
            });

        let mut out = Vec::new();
        for input in inputs {
            let p = input.risk.probability.clamp(0.0, 1.0);
            let risk = if odds_factor == 1.0 || p >= 1.0 {
                p
            } else {
                let odds = p / (1.0 - p) * odds_factor;
                odds / (1.0 + odds)
            };
            let state = self.nodes.entry(input.risk.node.clone()).or_default();
            state.recent.push_back(risk >= enter);
            while state.recent.len() > c.n {
                state.recent.pop_front();
            }
            let above = state.recent.iter().filter(|&&b| b).count();
            if !state.at_risk && above >= c.k {
                state.at_risk = true;
                state.holdout = c.holdout_fraction > 0.0 && self.rng.gen_bool(c.holdout_fraction);
                if state.holdout {
                    self.holdouts
                        .entry(input.risk.node.clone())
                        .or_default()
                        .push(HoldoutFlag {
                            flagged_at: input.risk.at_ms,
                            failed_in_time: None,
                        });
                }
            } else if state.at_risk && risk < leave {
                state.at_risk = false;
                state.holdout = false;
                // A fresh start: rounds from before the episode must not count towards
                // re-entering it.
                state.recent.clear();
            }
            let action = if state.at_risk {
                if state.holdout {
                    Action::Watch
                } else if risk >= drain {
                    Action::Drain
                } else {
                    Action::StopPlacing
                }
            } else if risk >= c.watch {
                Action::Watch
            } else {
                continue;
            };
            out.push(NodeDecision {
                node: input.risk.node.clone(),
                risk,
                model_probability: p,
                data_bytes: input.data_bytes,
                priority: risk * input.data_bytes as f64,
                action,
                at_risk: state.at_risk,
                holdout: state.holdout,
                reasons: input
                    .risk
                    .reasons
                    .iter()
                    .map(|r| format!("{}={:.3} ({:+.2})", r.feature, r.value, r.contribution))
                    .collect(),
            });
        }
        let flagged = out.iter().filter(|d| d.at_risk).count();
        let limit =
            ((inputs.len() as f64 * c.storm_fraction).floor() as usize).max(c.storm_min_nodes);
        let storm = flagged > limit;
        let alarm = storm.then(|| {
            format!(
                "storm guard: {flagged} of {} nodes at risk (limit {limit}); automated moves frozen — check for a shared cause (rack, network, model)",
                inputs.len()
            )
        });
        if storm {
            tracing::error!(
                flagged,
                limit,
                nodes = inputs.len(),
                "risk storm: automated moves frozen"
            );
            for d in &mut out {
                d.action = Action::Watch;
            }
        }
        out.sort_by(|a, b| {
            b.at_risk
                .cmp(&a.at_risk)
                .then(b.priority.total_cmp(&a.priority))
                .then(b.risk.total_cmp(&a.risk))
        });
        PolicyDecision {
            at_risk: out,
            storm,
            alarm,
            effective_enter: enter,
            effective_leave: leave,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(node: &str, p: f64, bytes: u64) -> NodeInput {
        NodeInput {
            risk: Risk {
                node: node.into(),
                at_ms: 0,
                probability: p,
                anomaly: 0.0,
                reasons: Vec::new(),
            },
            data_bytes: bytes,
        }
    }

    fn policy() -> RiskPolicy {
        RiskPolicy::new(PolicyConfig {
            storm_min_nodes: 10,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn hysteresis_needs_k_of_n_to_enter_and_a_lower_bar_to_leave() {
        let mut p = policy();
        let ctx = ClusterContext::default();
        let d = p.evaluate(&[input("a", 0.6, 1)], &ctx);
        assert!(!d.at_risk[0].at_risk, "one round is not enough");
        assert_eq!(d.at_risk[0].action, Action::Watch);
        let d = p.evaluate(&[input("a", 0.55, 1)], &ctx);
        assert!(d.at_risk[0].at_risk);
        assert_eq!(d.at_risk[0].action, Action::StopPlacing);
        // Dropping below enter but above leave keeps it at risk.
        let d = p.evaluate(&[input("a", 0.3, 1)], &ctx);
        assert!(d.at_risk[0].at_risk);
        let d = p.evaluate(&[input("a", 0.8, 1)], &ctx);
        assert_eq!(d.at_risk[0].action, Action::Drain);
        let d = p.evaluate(&[input("a", 0.1, 1)], &ctx);
        assert!(d.at_risk.is_empty(), "left the state and below watch");
        // Leaving cleared the window: one round above enter is not enough to re-enter.
        let d = p.evaluate(&[input("a", 0.6, 1)], &ctx);
        assert!(!d.at_risk[0].at_risk, "the old rounds no longer count");
    }

    #[test]
    fn full_load_and_backlog_raise_thresholds_without_freezing_them() {
        let mut p = policy();
        let saturated = ClusterContext {
            load: 1.0,
            migration_backlog: 1.0,
            observed_base_rate: None,
        };
        let mut d = p.evaluate(&[input("a", 0.99, 1)], &saturated);
        d = if d.at_risk[0].at_risk {
            d
        } else {
            p.evaluate(&[input("a", 0.99, 1)], &saturated)
        };
        assert!(
            d.effective_enter > 0.5 && d.effective_enter < 0.99,
            "{}",
            d.effective_enter
        );
        assert!(
            d.at_risk[0].at_risk,
            "a near-certain failure is still flagged"
        );
        assert!(d.effective_leave < d.effective_enter);
    }

    #[test]
    fn holdout_outcomes_measure_precision() {
        let mut p = RiskPolicy::new(PolicyConfig {
            k: 1,
            n: 1,
            holdout_fraction: 1.0,
            storm_min_nodes: 1000,
            horizon_ms: 100,
            ..Default::default()
        })
        .unwrap();
        let at = |node: &str, t: i64| NodeInput {
            risk: Risk {
                at_ms: t,
                ..input(node, 0.9, 1).risk
            },
            data_bytes: 1,
        };
        p.evaluate(
            &[at("dies", 10), at("lives", 10)],
            &ClusterContext::default(),
        );
        assert_eq!(p.holdout_report(20).pending, 2);
        p.record_failure("dies", 60);
        let r = p.holdout_report(500);
        assert_eq!((r.decided, r.failed_within_horizon, r.pending), (2, 1, 0));
        assert_eq!(r.precision, Some(0.5));
    }

    #[test]
    fn orders_by_risk_times_data_and_adapts_to_load_and_base_rate() {
        let mut p = policy();
        let ctx = ClusterContext::default();
        for _ in 0..2 {
            p.evaluate(&[input("small", 0.9, 10), input("big", 0.6, 1000)], &ctx);
        }
        let d = p.evaluate(&[input("small", 0.9, 10), input("big", 0.6, 1000)], &ctx);
        assert_eq!(d.at_risk[0].node, "big");
        let busy = ClusterContext {
            load: 1.0,
            migration_backlog: 1.0,
            observed_base_rate: None,
        };
        let mut q = policy();
        let d = q.evaluate(&[input("x", 0.6, 1)], &busy);
        assert!(d.effective_enter > 0.6 && d.effective_enter <= 1.0);
        let rare = ClusterContext {
            observed_base_rate: Some(PolicyConfig::default().model_base_rate / 10.0),
            ..Default::default()
        };
        let d = q.evaluate(&[input("y", 0.6, 1)], &rare);
        assert!(
            d.at_risk[0].risk < 0.6,
            "fewer failures than calibrated lowers risk"
        );
    }

    #[test]
    fn storm_guard_freezes_moves_and_holdout_keeps_nodes_in_place() {
        let mut p = RiskPolicy::new(PolicyConfig {
            k: 1,
            n: 1,
            storm_fraction: 0.1,
            storm_min_nodes: 2,
            ..Default::default()
        })
        .unwrap();
        let many: Vec<_> = (0..20)
            .map(|i| input(&format!("n{i}"), if i < 5 { 0.9 } else { 0.01 }, 1))
            .collect();
        let d = p.evaluate(&many, &ClusterContext::default());
        assert!(d.storm && d.alarm.is_some());
        assert!(d.at_risk.iter().all(|x| x.action == Action::Watch));

        let mut h = RiskPolicy::new(PolicyConfig {
            k: 1,
            n: 1,
            holdout_fraction: 0.5,
            storm_min_nodes: 1000,
            ..Default::default()
        })
        .unwrap();
        let flagged: Vec<_> = (0..200).map(|i| input(&format!("n{i}"), 0.9, 1)).collect();
        let d = h.evaluate(&flagged, &ClusterContext::default());
        let held = d.at_risk.iter().filter(|x| x.holdout).count();
        assert!((60..140).contains(&held), "{held}");
        assert!(d
            .at_risk
            .iter()
            .all(|x| x.holdout == (x.action == Action::Watch)));
    }

    #[test]
    fn rejects_nonsense_settings() {
        let bad = PolicyConfig {
            leave: 0.9,
            enter: 0.5,
            ..Default::default()
        };
        assert!(RiskPolicy::new(bad).is_err());
        assert!(RiskPolicy::new(PolicyConfig {
            k: 4,
            n: 3,
            ..Default::default()
        })
        .is_err());
        let cfg: PolicyConfig = toml_like_defaults();
        assert_eq!(cfg, PolicyConfig::default());
    }

    fn toml_like_defaults() -> PolicyConfig {
        serde_json::from_str("{}").unwrap()
    }
}
