//! The risk policy's pure half: what a round feeds the policy, and what each verdict does to a
//! node's record. No I/O, no clock: [`super`] reads the records and heartbeats, calls these,
//! and writes what they return with compares.

use crate::control::cluster::{is_active, is_live, Cluster};
use crate::control::settings::ControlSettings;
use augur_predictor::model::Reason;
use augur_predictor::policy::{
    Action, ClusterContext, NodeDecision, PolicyConfig, PolicyDecision, RiskPolicy,
};
use augur_proto::model::limits::bounded;
use augur_proto::wire::{HealthSummary, RiskReport};
use augur_proto::{Node, NodeId, NodeState, Risk, StateCause, StateOrigin, StormGuard};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What the leader last heard of one node's health: its latest scored risk and sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heard {
    /// The latest scored risk.
    pub risk: RiskReport,
    /// The latest health sample, summarised.
    pub summary: HealthSummary,
}

/// What a decision did to a node's record; the label of `augur_control_risk_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Up -> Suspect: above the watch threshold, or at risk but below drain, or held out.
    Watch,
    /// -> Draining: at risk and above the drain threshold.
    Drain,
    /// Draining -> Up or Suspect: the risk fell below the leave threshold (a false alarm).
    Undrain,
    /// Suspect -> Up: the risk fell back.
    Clear,
    /// An operator's undrain stops holding: the risk fell below the leave threshold, so the
    /// policy may act on the node again.
    Release,
    /// Same state, but the policy's at-risk or holdout flag changed (persisted so that a new
    /// leader restores it).
    Restate,
}

impl Verdict {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Watch => "watch",
            Verdict::Drain => "drain",
            Verdict::Undrain => "undrain",
            Verdict::Clear => "clear",
            Verdict::Release => "release",
            Verdict::Restate => "restate",
        }
    }
}

/// Every verdict, for zeroed metric series.
pub const VERDICTS: [Verdict; 6] = [
    Verdict::Watch,
    Verdict::Drain,
    Verdict::Undrain,
    Verdict::Clear,
    Verdict::Release,
    Verdict::Restate,
];

/// The thresholds a round used, for the reasons written on records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Entering the at-risk state, after load and backlog adjustment.
    pub enter: f64,
    /// Leaving it, after adjustment.
    pub leave: f64,
    /// Suspect from (as configured).
    pub watch: f64,
    /// Draining from (as configured; never below `enter`).
    pub drain: f64,
}

impl Thresholds {
    /// The thresholds of a round's decision under `cfg`.
    pub fn of(decision: &PolicyDecision, cfg: &PolicyConfig) -> Thresholds {
        Thresholds {
            enter: decision.effective_enter,
            leave: decision.effective_leave,
            watch: cfg.watch,
            drain: cfg.drain.max(decision.effective_enter),
        }
    }
}

/// The node ids the policy sees: a node's id as a string.
pub fn policy_name(id: NodeId) -> String {
    id.0.to_string()
}

/// The bytes a node's failure would put at risk: what it reports holding, or the verified
/// sizes of the shards it is a replica of, whichever is more.
fn data_bytes(cluster: &Cluster, node: &Node) -> u64 {
    let shards: u64 = cluster
        .shards
        .values()
        .filter(|s| s.replicas.contains(&node.id))
        .map(|s| s.size_bytes)
        .sum();
    node.used_bytes.max(shards)
}

/// One round's inputs: every live node (Up, Suspect, Draining) with a scored risk heard by
/// this leader, in id order. A node whose heartbeats stopped keeps its last score; the policy
/// counts a score once however many rounds see it (`evaluate_latest`), so a silent node's
/// stale score neither flags nor clears it.
pub fn inputs(
    cluster: &Cluster,
    heard: &BTreeMap<NodeId, Heard>,
) -> Vec<augur_predictor::policy::NodeInput> {
    cluster
        .nodes
        .values()
        .filter(|n| is_live(n.state))
        .filter_map(|n| {
            let h = heard.get(&n.id)?;
            Some(augur_predictor::policy::NodeInput {
                risk: augur_predictor::Risk {
                    node: policy_name(n.id),
                    at_ms: h.risk.at_ms,
                    probability: h.risk.score,
                    anomaly: 0.0,
                    reasons: h
                        .risk
                        .reasons
                        .iter()
                        .map(|(feature, contribution)| Reason {
                            feature: feature.clone(),
                            value: 0.0,
                            contribution: *contribution,
                        })
                        .collect(),
                },
                data_bytes: data_bytes(cluster, n),
            })
        })
        .collect()
}

/// The cluster-wide conditions the thresholds adapt to:
///
/// - load: the mean over the nodes heard of their busiest resource (CPU or data device) in
///   their latest sample;
/// - migration backlog: moves in flight over `max_moves`;
/// - observed base rate: nodes declared Down within `failure_window_ms` per node-day, only
///   once the window holds enough node-days that at least one failure is expected at the
///   model's calibrated rate (fewer say nothing, and zero failures in a small cluster would
///   otherwise lower every risk by the full factor).
pub fn context(
    cluster: &Cluster,
    heard: &BTreeMap<NodeId, Heard>,
    s: &ControlSettings,
    now_ms: u64,
) -> ClusterContext {
    let loads: Vec<f64> = heard
        .iter()
        .filter(|(id, _)| cluster.live(**id))
        .filter_map(|(_, h)| {
            let busiest = match (h.summary.cpu_util, h.summary.disk_util) {
                (Some(a), Some(b)) => a.max(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return None,
            };
            busiest.is_finite().then_some(busiest.clamp(0.0, 1.0))
        })
        .collect();
    let load = if loads.is_empty() {
        0.0
    } else {
        loads.iter().sum::<f64>() / loads.len() as f64
    };
    // Balancing moves are optional work: they do not make the policy more reluctant to drain.
    let active = cluster
        .migrations
        .iter()
        .filter(|m| is_active(m) && m.kind != augur_proto::MigrationKind::Balance)
        .count();
    let migration_backlog = (active as f64 / s.max_moves.max(1) as f64).clamp(0.0, 1.0);
    let failures = cluster
        .nodes
        .values()
        .filter(|n| {
            n.state == NodeState::Down
                && now_ms.saturating_sub(n.state_since_ms) <= s.failure_window_ms
        })
        .count();
    let counted = cluster.nodes.values().filter(|n| is_live(n.state)).count() + failures;
    let node_days = counted as f64 * s.failure_window_ms as f64 / 86_400_000.0;
    let observed_base_rate =
        (node_days * s.policy.model_base_rate >= 1.0).then(|| failures as f64 / node_days);
    ClusterContext {
        load,
        migration_backlog,
        observed_base_rate,
    }
}

/// The racks every one of whose live nodes the policy holds at risk, among racks of at least
/// `min_nodes` live nodes heard this round (empty rack names are no rack). The policy's own
/// guard counts nodes; this one catches a shared cause confined to one rack (power, top of
/// rack switch, cooling), which is no reason to empty the rack.
pub fn racks_at_risk(
    cluster: &Cluster,
    decision: &PolicyDecision,
    heard: &BTreeMap<NodeId, Heard>,
    min_nodes: usize,
) -> Vec<String> {
    let at_risk: BTreeSet<&str> = decision
        .at_risk
        .iter()
        .filter(|d| d.at_risk)
        .map(|d| d.node.as_str())
        .collect();
    let mut racks: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for n in cluster.nodes.values() {
        if n.rack.is_empty() || !is_live(n.state) || !heard.contains_key(&n.id) {
            continue;
        }
        let e = racks.entry(n.rack.as_str()).or_default();
        e.0 += 1;
        e.1 += at_risk.contains(policy_name(n.id).as_str()) as usize;
    }
    racks
        .into_iter()
        .filter(|(_, (live, flagged))| *live >= min_nodes && flagged == live)
        .map(|(r, _)| r.to_string())
        .collect()
}

/// Trips the storm guard on `decision` for a whole rack at risk (see [`racks_at_risk`]), as
/// the policy does for too many nodes: every action is capped at `watch` and an alarm says
/// why.
pub fn rack_storm(decision: &mut PolicyDecision, racks: &[String]) {
    if racks.is_empty() {
        return;
    }
    let msg = format!(
        "storm guard: every node of rack(s) {} at risk; automated moves frozen — check for a \
         shared cause (power, network, cooling)",
        racks.join(", ")
    );
    trip(decision, msg);
}

/// Trips the storm guard on `decision` as the policy does: every action capped at watch, and
/// `msg` added to the alarm.
fn trip(decision: &mut PolicyDecision, msg: String) {
    decision.alarm = Some(match decision.alarm.take() {
        Some(a) => format!("{a}; {msg}"),
        None => msg,
    });
    decision.storm = true;
    for d in &mut decision.at_risk {
        d.action = Action::Watch;
    }
}

/// Counts the live nodes this leader has not heard from at all (`unheard`) but the policy
/// holds at risk (restored from their records) towards the storm guard, at what they were
/// when last judged. A new leader rounds once `suspect_after_ms` has passed even if some
/// nodes are silent, and the nodes at risk are the likeliest to be late: without them a
/// guard their flags tripped would clear, and the nodes still heard would be drained during
/// the storm. A node silent for good is declared Down after `grace_ms` and forgotten, so it
/// cannot hold the guard for ever; a node that heartbeats without a score (no model, or its
/// history still filling) is not counted: it is heard, and may stay so indefinitely.
///
/// Each is added to the round's decisions (action Watch, no record is written: the policy
/// writes only nodes it heard), so the storm record and the alarm name it; the guard trips if
/// the heard and silent nodes at risk together exceed the policy's limit over every live node.
pub fn count_silent(
    decision: &mut PolicyDecision,
    cluster: &Cluster,
    unheard: &BTreeSet<NodeId>,
    policy: &RiskPolicy,
) {
    let live = cluster.nodes.values().filter(|n| is_live(n.state)).count();
    let silent: Vec<NodeDecision> = cluster
        .nodes
        .values()
        .filter(|n| is_live(n.state) && unheard.contains(&n.id))
        .filter(|n| policy.is_at_risk(&policy_name(n.id)))
        .map(|n| {
            let risk = n.risk.score.clamp(0.0, 1.0);
            let data_bytes = data_bytes(cluster, n);
            NodeDecision {
                node: policy_name(n.id),
                risk,
                model_probability: risk,
                data_bytes,
                priority: risk * data_bytes as f64,
                action: Action::Watch,
                at_risk: true,
                holdout: n.cause.holdout,
                reasons: vec!["not heard by this leader yet: at risk as last recorded".into()],
            }
        })
        .collect();
    if silent.is_empty() {
        return;
    }
    let quiet = silent.len();
    decision.at_risk.extend(silent);
    let flagged = decision.at_risk.iter().filter(|d| d.at_risk).count();
    let limit = policy.storm_limit(live);
    if decision.storm || flagged <= limit {
        return;
    }
    let msg = format!(
        "storm guard: {flagged} of {live} nodes at risk (limit {limit}), {quiet} of them not \
         heard by this leader yet; automated moves frozen — check for a shared cause (rack, \
         network, model)"
    );
    trip(decision, msg);
}

/// The storm guard's record after a round, if it must change: when the guard trips or
/// clears, or while frozen when the set of nodes at risk changes (the alarm names them).
pub fn storm_record(
    current: &StormGuard,
    decision: &PolicyDecision,
    now_ms: u64,
) -> Option<StormGuard> {
    let flagged: Vec<NodeId> = if decision.storm {
        let mut v: Vec<NodeId> = decision
            .at_risk
            .iter()
            .filter(|d| d.at_risk)
            .filter_map(|d| d.node.parse().ok().map(NodeId))
            .collect();
        v.sort();
        v
    } else {
        Vec::new()
    };
    if current.frozen == decision.storm && current.flagged == flagged {
        return None;
    }
    Some(StormGuard {
        frozen: decision.storm,
        alarm: decision.alarm.as_ref().map(|a| bounded(a.clone())),
        flagged,
        since_ms: now_ms,
    })
}

/// The node's top reasons, for a record's cause: `feature (+contribution)`, strongest first.
fn top(heard: Option<&Heard>) -> String {
    let Some(h) = heard else {
        return String::new();
    };
    let v: Vec<String> = h
        .risk
        .reasons
        .iter()
        .take(3)
        .map(|(f, c)| format!("{f} ({c:+.2})"))
        .collect();
    if v.is_empty() {
        String::new()
    } else {
        format!("; top: {}", v.join(", "))
    }
}

/// The record `node` should be written as after the policy's verdict `d` on it (`None`: the
/// policy did not list it, its risk is below watch and it is not at risk), and why; `None`
/// when the record stays as it is.
///
/// Who owns a state decides what the policy may do with it:
///
/// - Down and Removed nodes, Suspect nodes that liveness set (late heartbeats), and nodes an
///   operator drained are left alone: an operator's drain is sticky.
/// - An operator's undrain (Up, origin Operator) holds while the policy still holds the node
///   at risk; once it does not (its risk fell below `leave`), the record says so (origin
///   Policy) and the policy acts on the node again from then on.
/// - Otherwise (Up, or Suspect or Draining set by the policy): a Drain action drains it; a
///   node already Draining stays so while it is at risk (hysteresis: only a risk below
///   `leave` undrains it, a false alarm); Watch and StopPlacing make it Suspect; no verdict
///   makes it Up. While the storm guard holds, the policy caps actions at Watch, so no new
///   node is drained.
pub fn next_record(
    node: &Node,
    d: Option<&NodeDecision>,
    heard: Option<&Heard>,
    t: &Thresholds,
    now_ms: u64,
) -> Option<(Node, Verdict)> {
    let origin = node.cause.origin;
    let score = heard.map_or(node.risk.score, |h| h.risk.score);
    match (node.state, origin) {
        (NodeState::Down | NodeState::Removed, _) => return None,
        // Liveness's (late heartbeats; or, set by hand, an operator's): theirs to clear.
        (NodeState::Suspect, o) if o != StateOrigin::Policy => return None,
        (NodeState::Draining, o) if o != StateOrigin::Policy => return None,
        (NodeState::Up, StateOrigin::Operator) => {
            // The policy leaves the at-risk state only below `leave` (restored as at risk
            // by a new leader, see [`restorable`]).
            if d.is_some_and(|d| d.at_risk) {
                return None;
            }
            let mut n = node.clone();
            n.cause = StateCause {
                origin: StateOrigin::Policy,
                reason: bounded(format!(
                    "operator's undrain released: risk {score:.3} below leave {:.3}",
                    t.leave
                )),
                risk: score.clamp(0.0, 1.0),
                at_risk: false,
                holdout: false,
            };
            return Some((n, Verdict::Release));
        }
        _ => {}
    }
    let (target, at_risk, holdout) = match d {
        None => (NodeState::Up, false, false),
        Some(d) if d.action == Action::Drain => (NodeState::Draining, true, false),
        Some(d) if node.state == NodeState::Draining && d.at_risk => {
            (NodeState::Draining, true, d.holdout)
        }
        Some(d) => (NodeState::Suspect, d.at_risk, d.holdout),
    };
    if target == node.state {
        let unchanged = target == NodeState::Up
            || (node.cause.at_risk == at_risk && node.cause.holdout == holdout);
        if unchanged {
            return None;
        }
    }
    let verdict = match (node.state, target) {
        (a, b) if a == b => Verdict::Restate,
        (_, NodeState::Draining) => Verdict::Drain,
        (NodeState::Draining, _) => Verdict::Undrain,
        (_, NodeState::Suspect) => Verdict::Watch,
        _ => Verdict::Clear,
    };
    let why = match (target, d) {
        (NodeState::Draining, _) => format!(
            "at risk: risk {score:.3} >= drain {:.3} (entered at {:.3}, k of n rounds)",
            t.drain, t.enter
        ),
        (NodeState::Suspect, Some(d)) if d.holdout => format!(
            "at risk (risk {score:.3} >= enter {:.3}) but held out: left in place to measure \
             the policy's precision",
            t.enter
        ),
        (NodeState::Suspect, Some(d)) if d.at_risk => format!(
            "at risk: risk {score:.3} (enter {:.3}), below drain {:.3}: no new replicas",
            t.enter, t.drain
        ),
        (NodeState::Suspect, _) if node.state == NodeState::Draining => format!(
            "false alarm: risk {score:.3} below leave {:.3}; undrained, watched (>= {:.3})",
            t.leave, t.watch
        ),
        (NodeState::Suspect, _) => format!("watch: risk {score:.3} >= {:.3}", t.watch),
        _ if node.state == NodeState::Draining => format!(
            "false alarm: risk {score:.3} below leave {:.3}; undrained",
            t.leave
        ),
        _ => format!("risk {score:.3} below watch {:.3}", t.watch),
    };
    let mut n = node.clone();
    if n.state != target {
        n.state_since_ms = now_ms;
    }
    n.state = target;
    if let Some(h) = heard {
        n.risk = Risk {
            score: h.risk.score.clamp(0.0, 1.0),
            model: h.risk.model.clone(),
            top_features: h
                .risk
                .reasons
                .iter()
                .take(augur_proto::model::limits::MAX_FEATURES)
                .cloned()
                .collect(),
        };
    }
    n.cause = StateCause {
        origin: StateOrigin::Policy,
        reason: bounded(format!("{why}{}", top(heard))),
        risk: score.clamp(0.0, 1.0),
        at_risk,
        holdout,
    };
    Some((n, verdict))
}

/// What a new leader restores into its policy from the records, as (node, at risk, held
/// out): every node whose state the policy set (Draining is always at risk), and every node an
/// operator undrained (also one liveness has since marked Suspect, `Node::undrain_when_back`),
/// as at risk: the undrain overrode an at-risk state, and holds until the
/// risk falls below `leave`, whichever leader sees it fall.
pub fn restorable(cluster: &Cluster) -> Vec<(String, bool, bool)> {
    cluster
        .nodes
        .values()
        .filter_map(|n| restorable_node(n).map(|(a, h)| (policy_name(n.id), a, h)))
        .collect()
}

/// What the policy restores of one node from its record, as (at risk, held out), if
/// anything ([`restorable`]). Also used when a node comes back from Down: the policy forgot
/// it then, and a drain of the policy's that the node resumes
/// (`Node::drain_when_back`) would otherwise be undone at the next round, its k-of-n
/// window being empty.
pub fn restorable_node(n: &Node) -> Option<(bool, bool)> {
    match (n.state, n.cause.origin) {
        (NodeState::Draining, StateOrigin::Policy) => Some((true, false)),
        (NodeState::Suspect, StateOrigin::Policy) => Some((n.cause.at_risk, n.cause.holdout)),
        (NodeState::Up, StateOrigin::Operator) => Some((true, false)),
        // Late heartbeats displaced an operator's undrain, which their return restores.
        (NodeState::Suspect, StateOrigin::Liveness) if n.undrain_when_back.is_some() => {
            Some((true, false))
        }
        _ => None,
    }
}
