//! The capacity estimate, a pure function of the nodes' latest usage, capacity, state and
//! risk, and of a used-bytes history; and when the hook may be called again.
//!
//! Nodes fall in three classes:
//!
//! - **pool**: Up and not cordoned, the nodes that accept replicas: their capacity is what
//!   the data must fit in;
//! - **at risk**: Suspect (by the policy or an operator) or Draining: their data must move
//!   into the pool, their capacity counts for nothing. A node Suspect only because its
//!   heartbeats are late (liveness) stays in the pool: a pause of a few seconds is not a
//!   lost node, and counting it as one asked the hook for a node at every rolling restart
//!   of a cluster with no spare;
//! - the rest: cordoned Up nodes keep their data and take none, Down and Removed nodes hold
//!   nothing the pool must take.
//!
//! Growth is the sum of each counted node's own slope ([`History`]), each history starting
//! when the node joined the counted classes. A slope of the counted total would read a node
//! joining or leaving them (uncordoned, back from Down, rebooted past the grace period) as a
//! step, and the least-squares line through a step of S bytes in a window of W days rises
//! about 1.5 S / W a day: an uncordoned 4 TB node became 180 TB asked for over 30 days.
//! Moves between counted nodes cancel (the source shrinks as its destination grows), but the
//! re-replication of a Down node's shards shows as growth of the nodes receiving them until
//! it leaves the window: those bytes are real, their rate is not.
//!
//! Projected used = the pool's and the at-risk nodes' used bytes + growth x horizon.
//! Capacity after drains = the pool's capacity - the expected loss, `risk x capacity` summed
//! over the pool, a node's risk being the predictor's probability that it fails within the
//! model's horizon. The planner does not compound that over its own, longer horizon (as a
//! constant hazard would, `1 - (1 - p)^(H / h)`): scores are on the policy's scale, and a
//! healthy node's residual score (a few percent) compounded over 30 days would write off
//! nearly half of every node. A node whose risk grows is drained by the policy well within
//! the horizon, and is then charged in full as an at-risk node.
//! Headroom = 1 - projected / capacity after drains.

use augur_proto::{CapacityHookCall, NodeId, NodeState};
use serde::Serialize;
use std::collections::VecDeque;

/// Milliseconds per day.
pub const DAY_MS: f64 = 86_400_000.0;

/// Most at-risk nodes listed in a hook request and the view (the counts are complete).
pub const MAX_LISTED: usize = 100;

/// One node, as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInput {
    /// The node.
    pub id: NodeId,
    /// Its recorded state.
    pub state: NodeState,
    /// Cordoned by an operator.
    pub cordoned: bool,
    /// Its capacity, bytes (its latest report, else its record).
    pub capacity_bytes: u64,
    /// Bytes it holds (likewise).
    pub used_bytes: u64,
    /// Suspect only because its heartbeats are late (liveness), not by a decision.
    pub late: bool,
    /// Its latest scored risk: probability of failure within the model's horizon.
    pub risk: Option<f64>,
    /// Its own used-bytes growth, bytes per day, when its history is long enough.
    pub growth_bytes_per_day: Option<f64>,
}

/// What the estimate is computed with.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The planner's horizon, days.
    pub horizon_days: f64,
    /// Headroom below which the alarm is raised.
    pub min_headroom: f64,
    /// The layout's replication factor, once the data plane exists.
    pub rf: Option<u32>,
}

/// Which part a node plays in the estimate (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Accepts replicas.
    Pool,
    /// Suspect (not merely late) or Draining: to be emptied.
    AtRisk,
    /// Neither.
    Other,
}

/// A node's class.
pub fn class(n: &NodeInput) -> Class {
    match n.state {
        // Late, as an Up node would be: a cordoned one keeps its data and takes none.
        NodeState::Suspect if n.late && n.cordoned => Class::Other,
        NodeState::Suspect if n.late => Class::Pool,
        NodeState::Suspect | NodeState::Draining => Class::AtRisk,
        NodeState::Up if !n.cordoned => Class::Pool,
        _ => Class::Other,
    }
}

/// An at-risk node, as listed in the hook's request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AtRiskNode {
    /// The node.
    pub node: NodeId,
    /// Its state.
    pub state: &'static str,
    /// Its latest scored risk.
    pub risk: Option<f64>,
    /// Its capacity, bytes.
    pub capacity_bytes: u64,
    /// Bytes it holds, which must move.
    pub used_bytes: u64,
}

/// One node's line in the view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeLine {
    /// The node.
    pub node: NodeId,
    /// Its class.
    pub class: Class,
    /// Capacity, bytes.
    pub capacity_bytes: u64,
    /// Used, bytes.
    pub used_bytes: u64,
    /// Growth, bytes per day (`None`: not enough history).
    pub growth_bytes_per_day: Option<f64>,
    /// Share of its capacity expected lost within the horizon (pool nodes with a risk).
    pub expected_loss: Option<f64>,
}

/// One round's estimate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Horizon, days.
    pub horizon_days: f64,
    /// Bytes the pool must hold now: the pool's and the at-risk nodes' used bytes.
    pub used_bytes: u64,
    /// Their growth, bytes per day (`None`: the history is too short; counted as 0).
    pub growth_bytes_per_day: Option<f64>,
    /// Used bytes expected at the horizon (growth below zero counts as zero).
    pub projected_used_bytes: u64,
    /// Nodes that accept replicas.
    pub pool_nodes: usize,
    /// Their capacity, bytes.
    pub pool_capacity_bytes: u64,
    /// Capacity of the at-risk nodes (lost to the drains), bytes.
    pub at_risk_capacity_bytes: u64,
    /// Pool capacity expected lost to predicted failures within the horizon, bytes.
    pub expected_loss_bytes: u64,
    /// Pool capacity minus the expected loss, bytes.
    pub capacity_after_drains_bytes: u64,
    /// `1 - projected / capacity after drains` (-1 with no capacity and data to hold).
    pub headroom: f64,
    /// The minimum.
    pub min_headroom: f64,
    /// Capacity to add for the headroom to reach its minimum, bytes.
    pub bytes_short: u64,
    /// Nodes to ask for (by the typical pool node's capacity; at least enough for the pool
    /// to reach the replication factor).
    pub nodes_wanted: u32,
    /// Headroom below the minimum, or fewer pool nodes than the replication factor.
    pub alarm: bool,
    /// Why, when raised.
    pub reason: Option<String>,
    /// At-risk nodes (the first [`MAX_LISTED`], riskiest first).
    pub at_risk: Vec<AtRiskNode>,
    /// Every node considered.
    pub nodes: Vec<NodeLine>,
}

/// The share of a node's capacity expected lost to a failure, for a risk `p` (a probability;
/// anything else counts as none or all).
pub fn loss_share(p: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The median of the positive values of `v`, if any.
fn median_positive(mut v: Vec<u64>) -> Option<u64> {
    v.retain(|c| *c > 0);
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn state_name(s: NodeState) -> &'static str {
    crate::control::metrics::node_state_name(s)
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The estimate over `nodes`, with the pool's growth `growth_bytes_per_day` (`None`: not
/// enough history). `None` when there is no storage node at all. Nodes that are all Down,
/// Removed or cordoned are the worst shortfall there is, not nothing to say: the estimate
/// then has an empty pool and raises the alarm.
pub fn estimate(
    nodes: &[NodeInput],
    growth_bytes_per_day: Option<f64>,
    p: &Params,
) -> Option<Estimate> {
    if nodes.is_empty() {
        return None;
    }
    let (mut used, mut pool_cap, mut at_risk_cap, mut loss) = (0u64, 0u64, 0u64, 0f64);
    let mut pool_nodes = 0usize;
    let mut at_risk = Vec::new();
    let mut lines = Vec::new();
    for n in nodes {
        let c = class(n);
        let mut expected_loss = None;
        match c {
            Class::Pool => {
                pool_nodes += 1;
                used = used.saturating_add(n.used_bytes);
                pool_cap = pool_cap.saturating_add(n.capacity_bytes);
                if let Some(r) = n.risk {
                    let share = loss_share(r);
                    loss += share * n.capacity_bytes as f64;
                    expected_loss = Some(share);
                }
            }
            Class::AtRisk => {
                used = used.saturating_add(n.used_bytes);
                at_risk_cap = at_risk_cap.saturating_add(n.capacity_bytes);
                at_risk.push(AtRiskNode {
                    node: n.id,
                    state: state_name(n.state),
                    risk: n.risk,
                    capacity_bytes: n.capacity_bytes,
                    used_bytes: n.used_bytes,
                });
            }
            Class::Other => {}
        }
        lines.push(NodeLine {
            node: n.id,
            class: c,
            capacity_bytes: n.capacity_bytes,
            used_bytes: n.used_bytes,
            growth_bytes_per_day: n.growth_bytes_per_day,
            expected_loss,
        });
    }
    at_risk.sort_by(|a, b| {
        b.risk
            .unwrap_or(0.0)
            .total_cmp(&a.risk.unwrap_or(0.0))
            .then(a.node.cmp(&b.node))
    });
    let growth = growth_bytes_per_day.filter(|g| g.is_finite());
    let added = growth.unwrap_or(0.0).max(0.0) * p.horizon_days;
    let projected = (used as f64 + added).min(u64::MAX as f64);
    let loss_bytes = loss.min(pool_cap as f64).round() as u64;
    let after = pool_cap.saturating_sub(loss_bytes);
    let headroom = if after > 0 {
        (after as f64 - projected) / after as f64
    } else if projected > 0.0 {
        -1.0
    } else {
        0.0
    };
    let needed = projected / (1.0 - p.min_headroom);
    let bytes_short = (needed - after as f64).max(0.0).ceil().min(u64::MAX as f64) as u64;
    let typical = median_positive(
        nodes
            .iter()
            .filter(|n| class(n) == Class::Pool)
            .map(|n| n.capacity_bytes)
            .collect(),
    )
    .or_else(|| median_positive(nodes.iter().map(|n| n.capacity_bytes).collect()));
    let by_bytes = match typical {
        _ if bytes_short == 0 => 0,
        Some(t) => bytes_short.div_ceil(t).min(u32::MAX as u64) as u32,
        None => 1,
    };
    let rf_short =
        p.rf.map_or(0, |rf| (rf as usize).saturating_sub(pool_nodes) as u32);
    let short_of_headroom = headroom < p.min_headroom;
    let alarm = short_of_headroom || rf_short > 0;
    let reason = alarm.then(|| {
        let draining = if at_risk.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = at_risk
                .iter()
                .take(5)
                .map(|a| format!("node {} ({})", a.node, a.state))
                .collect();
            let more = at_risk.len().saturating_sub(5);
            format!(
                " after draining {}{}",
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        };
        let mut why = Vec::new();
        if short_of_headroom {
            why.push(format!(
                "headroom {:.0}%{draining} is below {:.0}%: {} projected in {} days on {} \
                 ({} short)",
                headroom * 100.0,
                p.min_headroom * 100.0,
                gib(projected as u64),
                p.horizon_days,
                gib(after),
                gib(bytes_short)
            ));
        }
        if rf_short > 0 {
            why.push(format!(
                "{pool_nodes} node(s) accept replicas{draining}, fewer than the replication \
                 factor {}",
                p.rf.unwrap_or(0)
            ));
        }
        format!("capacity: {}", why.join("; "))
    });
    at_risk.truncate(MAX_LISTED);
    Some(Estimate {
        horizon_days: p.horizon_days,
        used_bytes: used,
        growth_bytes_per_day: growth,
        projected_used_bytes: projected as u64,
        pool_nodes,
        pool_capacity_bytes: pool_cap,
        at_risk_capacity_bytes: at_risk_cap,
        expected_loss_bytes: loss_bytes,
        capacity_after_drains_bytes: after,
        headroom,
        min_headroom: p.min_headroom,
        bytes_short,
        nodes_wanted: if alarm {
            by_bytes.max(rf_short).max(1)
        } else {
            0
        },
        alarm,
        reason,
        at_risk,
        nodes: lines,
    })
}

/// The growth of the counted nodes: the sum of the slopes known (`growth_bytes_per_day` of
/// each pool and at-risk node), `None` when none is (every history too short).
pub fn counted_growth(nodes: &[NodeInput]) -> Option<f64> {
    nodes
        .iter()
        .filter(|n| class(n) != Class::Other)
        .filter_map(|n| n.growth_bytes_per_day.filter(|g| g.is_finite()))
        .fold(None, |sum, g| Some(sum.unwrap_or(0.0) + g))
}

/// A bounded history of used-bytes samples on the leader's monotonic clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    samples: VecDeque<(u64, u64)>,
}

impl History {
    /// Adds a sample `(t_ms, bytes)`, keeping the latest `cap`.
    pub fn push(&mut self, t_ms: u64, bytes: u64, cap: usize) {
        while self.samples.len() >= cap.max(1) {
            self.samples.pop_front();
        }
        self.samples.push_back((t_ms, bytes));
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The least-squares slope in bytes per day, once the samples span `min_span_ms` (and
    /// there are at least two): `None` before, so a short burst is never extrapolated.
    pub fn slope_per_day(&self, min_span_ms: u64) -> Option<f64> {
        let (first, last) = (self.samples.front()?.0, self.samples.back()?.0);
        if self.samples.len() < 2 || last.saturating_sub(first) < min_span_ms.max(1) {
            return None;
        }
        let n = self.samples.len() as f64;
        let xs = || {
            self.samples
                .iter()
                .map(|(t, _)| (t - first) as f64 / DAY_MS)
        };
        let mean_x = xs().sum::<f64>() / n;
        let mean_y = self.samples.iter().map(|(_, b)| *b as f64).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (x, (_, y)) in xs().zip(self.samples.iter()) {
            sxy += (x - mean_x) * (*y as f64 - mean_y);
            sxx += (x - mean_x) * (x - mean_x);
        }
        (sxx > 0.0).then(|| sxy / sxx)
    }
}

/// Whether the hook may be called now, `last` being its last call: always the first time;
/// then once the nodes it asked for accept replicas (`accepting` counts the nodes that do:
/// a node that registered but is not yet Up has not come as far as capacity goes), or
/// `cooldown_ms` after it (wall clock).
pub fn may_call(
    last: Option<&CapacityHookCall>,
    now_ms: u64,
    cooldown_ms: u64,
    accepting: u64,
) -> bool {
    match last {
        None => true,
        Some(c) => {
            accepting >= c.nodes_accepting.saturating_add(c.nodes_wanted as u64)
                || now_ms >= c.at_ms.saturating_add(cooldown_ms)
        }
    }
}
