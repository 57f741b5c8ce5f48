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

use crate::model::Risk;

mod config;
pub use config::PolicyConfig;

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
    /// Scoring time of the last risk counted (see [`RiskPolicy::evaluate_latest`]).
    counted_at_ms: Option<i64>,
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

    /// Whether the policy holds `node` in the at-risk state (decided in a round, or
    /// restored): what a node that has gone quiet was when last judged.
    pub fn is_at_risk(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|s| s.at_risk)
    }

    /// How many of `nodes` live nodes may be at risk at once before the storm guard trips
    /// (`storm_fraction` of them, and never fewer than `storm_min_nodes`).
    pub fn storm_limit(&self, nodes: usize) -> usize {
        ((nodes as f64 * self.cfg.storm_fraction).floor() as usize).max(self.cfg.storm_min_nodes)
    }

    /// Forgets a node (removed from the cluster, or drained and replaced).
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// Restores what an earlier policy instance decided about `node`: whether it was at risk,
    /// and held out. A metadata leader that takes over rebuilds its policy from the decisions
    /// its predecessor persisted, so hysteresis holds across the change: an at-risk node
    /// leaves the state only below `leave`, as if nothing had happened. The k-of-n window of
    /// a node that was not yet at risk is not persisted and starts empty, so a leader change
    /// can delay a new flag by up to `k` rounds, never hasten one.
    pub fn restore(&mut self, node: &str, at_risk: bool, holdout: bool) {
        let k = self.cfg.k;
        let state = self.nodes.entry(node.to_string()).or_default();
        state.at_risk = at_risk;
        state.holdout = at_risk && holdout;
        state.recent.clear();
        if at_risk {
            // The rounds that put it there, so the window agrees with the state.
            state.recent.extend(std::iter::repeat_n(true, k));
        }
    }

    /// One policy round over the latest risk of every live node.
    pub fn evaluate(&mut self, inputs: &[NodeInput], ctx: &ClusterContext) -> PolicyDecision {
        self.round(inputs, ctx, false)
    }

    /// [`RiskPolicy::evaluate`] for a caller that runs rounds on its own clock over each
    /// node's *latest* risk, which may be the same scoring round as last time (a metadata
    /// leader re-reading heartbeats): a risk whose `at_ms` was already counted is not a new
    /// round. It neither counts again towards k-of-n nor moves the node in or out of the
    /// at-risk state; the node is still judged (its action, the storm guard's count) on it.
    pub fn evaluate_latest(
        &mut self,
        inputs: &[NodeInput],
        ctx: &ClusterContext,
    ) -> PolicyDecision {
        self.round(inputs, ctx, true)
    }

    fn round(
        &mut self,
        inputs: &[NodeInput],
        ctx: &ClusterContext,
        dedupe: bool,
    ) -> PolicyDecision {
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
            let fresh = !dedupe || state.counted_at_ms != Some(input.risk.at_ms);
            state.counted_at_ms = Some(input.risk.at_ms);
            if fresh {
                state.recent.push_back(risk >= enter);
                while state.recent.len() > c.n {
                    state.recent.pop_front();
                }
            }
            let above = state.recent.iter().filter(|&&b| b).count();
            if !fresh {
                // Already judged on this very score: state unchanged.
            } else if !state.at_risk && above >= c.k {
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
        let limit = self.storm_limit(inputs.len());
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
mod tests;
