//! The leader's view of the data plane: `/v1/control` on the admin port, and Prometheus
//! gauges and counters in the member's registry.
//!
//! The view is recomputed from the records on every repair pass (`repair_interval_ms`), so
//! it is at most that old. Gauges describe the data plane only on the leader: a member that
//! does not lead sets them to zero and `augur_control_leading` to 0, so a dashboard sums or
//! filters by it. `augurctl shard list` reads the records themselves and does not depend on
//! this view.

use super::cluster::{is_active, Cluster};
use super::Control;
use augur_proto::{Migration, MigrationState, NodeId, NodeState, ShardId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// Most shard ids listed per category in the view; the counts are always complete.
pub const MAX_LISTED: usize = 1000;

/// A metric label naming a storage node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    node: String,
}

/// A metric label naming a node or migration state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    state: &'static str,
}

/// A metric label naming a risk-policy decision (see [`super::risk::decide::Verdict`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// The verdict's name.
    pub decision: &'static str,
}

/// The control plane's metrics.
#[derive(Clone, Debug, Default)]
pub struct ControlMetrics {
    /// 1 while this member leads (and the gauges below describe the data plane).
    pub leading: Gauge,
    /// Storage nodes by state.
    pub nodes: Family<StateLabel, Gauge>,
    /// Shards with fewer live replicas than the layout's replication factor.
    pub under_replicated: Gauge,
    /// Shards whose primary's node is not live.
    pub without_primary: Gauge,
    /// Shards whose primary is dead with no replica to promote.
    pub stuck: Gauge,
    /// Migration records by state.
    pub migrations: Family<StateLabel, Gauge>,
    /// Nodes this member declared Down.
    pub declared_down: Counter,
    /// Secondaries promoted in place of a dead primary.
    pub promotions: Counter,
    /// Replicas and learners removed from shards (dead, or at their primary's request).
    pub replicas_removed: Counter,
    /// Moves committed.
    pub moves_committed: Counter,
    /// Moves aborted.
    pub moves_aborted: Counter,
    /// Bytes of shards moved by committed moves (their verified sizes).
    pub bytes_moved: Counter,
    /// Copy rate of the moves in flight together, bytes per second, as their records last
    /// measured it.
    pub move_rate: Gauge,
    /// Primaries handed off from draining nodes.
    pub hand_offs: Counter,
    /// Primaries handed off to even out how many shards each Up node leads.
    pub primaries_balanced: Counter,
    /// Each storage node's latest scored risk (`augur_node_risk{node="N"}`); a node with no
    /// score (no model, not enough history) has no series.
    pub node_risk: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    /// 1 while the risk policy's storm guard holds automated moves.
    pub storm_frozen: Gauge,
    /// Node records the risk policy changed, by decision.
    pub risk_decisions: Family<DecisionLabel, Counter>,
    /// Storage nodes an operator cordoned.
    pub cordoned: Gauge,
    /// Capacity planner: used bytes projected at its horizon.
    pub capacity_projected_used: Gauge,
    /// Capacity planner: capacity of the nodes accepting replicas, less expected failures.
    pub capacity_after_drains: Gauge,
    /// Capacity planner: headroom fraction after draining the at-risk nodes.
    pub capacity_headroom: Gauge<f64, AtomicU64>,
    /// Capacity planner: 1 while its alarm is raised.
    pub capacity_alarm: Gauge,
    /// Capacity planner: storage nodes it asks for.
    pub capacity_nodes_wanted: Gauge,
    /// Calls of the capacity hook.
    pub capacity_hook_calls: Counter,
    /// Calls of the capacity hook that failed (exit status, timeout, HTTP error).
    pub capacity_hook_failures: Counter,
}

const NODE_STATES: [NodeState; 5] = [
    NodeState::Up,
    NodeState::Suspect,
    NodeState::Draining,
    NodeState::Down,
    NodeState::Removed,
];

const MIGRATION_STATES: [MigrationState; 6] = [
    MigrationState::Planned,
    MigrationState::Copying,
    MigrationState::CatchingUp,
    MigrationState::Cutover,
    MigrationState::Committed,
    MigrationState::Aborted,
];

/// A node state's name in metrics and JSON.
pub fn node_state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Up => "up",
        NodeState::Suspect => "suspect",
        NodeState::Draining => "draining",
        NodeState::Down => "down",
        NodeState::Removed => "removed",
    }
}

/// A migration state's name in metrics and JSON.
pub fn migration_state_name(s: MigrationState) -> &'static str {
    match s {
        MigrationState::Planned => "planned",
        MigrationState::Copying => "copying",
        MigrationState::CatchingUp => "catching_up",
        MigrationState::Cutover => "cutover",
        MigrationState::Committed => "committed",
        MigrationState::Aborted => "aborted",
    }
}

impl ControlMetrics {
    /// Registers every metric in `registry` (prefixed `control_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "node_risk",
            "Latest risk each storage node reported (on the policy's scale, 0..1)",
            self.node_risk.clone(),
        );
        let r = registry.sub_registry_with_prefix("control");
        r.register(
            "leading",
            "1 if this member leads and the control gauges describe the data plane",
            self.leading.clone(),
        );
        r.register("nodes", "Storage nodes by state", self.nodes.clone());
        r.register(
            "nodes_cordoned",
            "Storage nodes cordoned by an operator (no new replicas)",
            self.cordoned.clone(),
        );
        r.register(
            "storm_frozen",
            "1 while the risk policy's storm guard holds automated moves (too many nodes, or a whole rack, at risk)",
            self.storm_frozen.clone(),
        );
        r.register(
            "risk_decisions",
            "Node records the risk policy changed, by decision",
            self.risk_decisions.clone(),
        );
        r.register(
            "shards_under_replicated",
            "Shards with fewer live replicas than the replication factor",
            self.under_replicated.clone(),
        );
        r.register(
            "shards_without_primary",
            "Shards whose primary's node is not live",
            self.without_primary.clone(),
        );
        r.register(
            "shards_stuck",
            "Shards whose primary is dead with no replica to promote (need force-primary)",
            self.stuck.clone(),
        );
        r.register(
            "migrations",
            "Migration records by state",
            self.migrations.clone(),
        );
        r.register(
            "nodes_declared_down",
            "Storage nodes declared Down by this member",
            self.declared_down.clone(),
        );
        r.register(
            "promotions",
            "Secondaries promoted in place of a dead primary",
            self.promotions.clone(),
        );
        r.register(
            "replicas_removed",
            "Replicas and learners removed from shards",
            self.replicas_removed.clone(),
        );
        r.register(
            "moves_committed",
            "Moves committed",
            self.moves_committed.clone(),
        );
        r.register("moves_aborted", "Moves aborted", self.moves_aborted.clone());
        r.register(
            "moved_bytes",
            "Bytes of shards moved by committed moves",
            self.bytes_moved.clone(),
        );
        r.register(
            "move_rate_bytes_per_second",
            "Copy rate of the moves in flight together, as last recorded",
            self.move_rate.clone(),
        );
        r.register(
            "hand_offs",
            "Primaries handed off from draining nodes",
            self.hand_offs.clone(),
        );
        r.register(
            "primaries_balanced",
            "Primaries handed off to even out how many shards each Up node leads",
            self.primaries_balanced.clone(),
        );
        r.register(
            "capacity_projected_used_bytes",
            "Used bytes the capacity planner projects at its horizon",
            self.capacity_projected_used.clone(),
        );
        r.register(
            "capacity_after_drains_bytes",
            "Capacity of the nodes accepting replicas after draining the at-risk ones, less expected failures",
            self.capacity_after_drains.clone(),
        );
        r.register(
            "capacity_headroom",
            "Headroom fraction after drains at the capacity planner's horizon",
            self.capacity_headroom.clone(),
        );
        r.register(
            "capacity_alarm",
            "1 while the capacity planner's alarm is raised",
            self.capacity_alarm.clone(),
        );
        r.register(
            "capacity_nodes_wanted",
            "Storage nodes the capacity planner asks for",
            self.capacity_nodes_wanted.clone(),
        );
        r.register(
            "capacity_hook_calls",
            "Calls of the capacity hook",
            self.capacity_hook_calls.clone(),
        );
        r.register(
            "capacity_hook_failures",
            "Calls of the capacity hook that failed",
            self.capacity_hook_failures.clone(),
        );
    }

    /// Zeroes the capacity planner's gauges (no estimate).
    pub fn reset_capacity(&self) {
        self.capacity_projected_used.set(0);
        self.capacity_after_drains.set(0);
        self.capacity_headroom.set(0.0);
        self.capacity_alarm.set(0);
        self.capacity_nodes_wanted.set(0);
    }

    /// Zeroes the gauges when leadership begins or ends.
    pub fn reset(&self, leading: bool) {
        self.leading.set(leading as i64);
        for s in NODE_STATES {
            self.nodes
                .get_or_create(&StateLabel {
                    state: node_state_name(s),
                })
                .set(0);
        }
        for s in MIGRATION_STATES {
            self.migrations
                .get_or_create(&StateLabel {
                    state: migration_state_name(s),
                })
                .set(0);
        }
        self.under_replicated.set(0);
        self.move_rate.set(0);
        self.without_primary.set(0);
        self.stuck.set(0);
        self.node_risk.clear();
        self.storm_frozen.set(0);
        self.cordoned.set(0);
        self.reset_capacity();
        for v in super::risk::decide::VERDICTS {
            // Counters keep counting across leaderships; this only makes every series exist.
            let _ = self
                .risk_decisions
                .get_or_create(&DecisionLabel { decision: v.name() });
        }
    }
}

/// One storage node as the leader sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeView {
    /// The node.
    pub id: NodeId,
    /// Its recorded state.
    pub state: &'static str,
    /// Cordoned by an operator: no new replicas.
    pub cordoned: bool,
    /// Who set its state, why, and its risk then.
    pub cause: augur_proto::StateCause,
    /// Its recorded epoch.
    pub epoch: u64,
    /// Milliseconds since its last heartbeat reached this leader (`None`: none yet).
    pub heard_ms_ago: Option<u64>,
    /// Milliseconds since its last answered probe.
    pub probed_ms_ago: Option<u64>,
    /// Why its last probe failed, if it did after the last success.
    pub probe_error: Option<String>,
    /// Shards it is a replica of.
    pub replicas: usize,
    /// Shards it is primary of.
    pub primaries: usize,
    /// Shards it is learning.
    pub learners: usize,
    /// Its health from its latest heartbeat (risk or why none, latest sample summarised);
    /// `None` until a heartbeat carrying health reached this leader.
    pub health: Option<augur_proto::wire::NodeHealth>,
    /// Health samples this leader holds for it (batches every 30 s, bounded).
    pub samples_held: usize,
    /// Time of the newest of them, wall-clock milliseconds.
    pub latest_sample_ms: Option<i64>,
}

/// The leader's view of the data plane.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ControlView {
    /// Whether this member leads; everything else is empty when it does not.
    pub leading: bool,
    /// How long it has led, in milliseconds.
    pub leading_for_ms: u64,
    /// The layout's replication factor, once the data plane exists.
    pub rf: Option<u32>,
    /// Shards in the layout.
    pub shards: usize,
    /// Every storage node.
    pub nodes: Vec<NodeView>,
    /// Storage nodes by state.
    pub nodes_by_state: BTreeMap<&'static str, usize>,
    /// How many shards have fewer live replicas than `rf`.
    pub under_replicated_count: usize,
    /// Those shards (the first [`MAX_LISTED`]).
    pub under_replicated: Vec<ShardId>,
    /// How many shards have a primary whose node is not live.
    pub without_live_primary_count: usize,
    /// Those shards (the first [`MAX_LISTED`]).
    pub without_live_primary: Vec<ShardId>,
    /// Shards whose primary is dead and that no replica can take over: they wait for a
    /// replica to return or an operator's `augurctl shard force-primary`.
    pub stuck: Vec<ShardId>,
    /// Migration records by state.
    pub migrations_by_state: BTreeMap<&'static str, usize>,
    /// Moves in flight.
    pub migrations_active: Vec<Migration>,
    /// The risk policy: whether it runs, and its last round (storm guard, alarm, thresholds,
    /// verdicts).
    pub risk: super::risk::RiskStatus,
    /// The storm guard as recorded (the planner's `frozen`).
    pub storm: augur_proto::StormGuard,
    /// Copy rate of the moves in flight together, bytes per second (as last recorded).
    pub move_rate_bytes_per_s: u64,
    /// The capacity planner: its last estimate, alarm and hook calls.
    pub capacity: super::capacity::CapacityStatus,
}

/// Computes the view from the records and reports (pure).
pub fn compute(
    control: &Control,
    cluster: &Cluster,
    stuck: &[ShardId],
    leading_for_ms: u64,
    now: Instant,
) -> ControlView {
    let mut v = ControlView {
        leading: true,
        leading_for_ms,
        rf: cluster.layout.map(|l| l.rf),
        shards: cluster.shards.len(),
        stuck: stuck.iter().take(MAX_LISTED).copied().collect(),
        storm: cluster.storm.clone(),
        ..Default::default()
    };
    let rf = cluster.layout.map_or(0, |l| l.rf as usize);
    let mut per_node: BTreeMap<NodeId, (usize, usize, usize)> = BTreeMap::new();
    for s in cluster.shards.values() {
        for (i, n) in s.replicas.iter().enumerate() {
            let e = per_node.entry(*n).or_default();
            e.0 += 1;
            e.1 += (i == 0) as usize;
        }
        for n in &s.learners {
            per_node.entry(*n).or_default().2 += 1;
        }
        let live = s.replicas.iter().filter(|n| cluster.live(**n)).count();
        if live < rf {
            v.under_replicated_count += 1;
            if v.under_replicated.len() < MAX_LISTED {
                v.under_replicated.push(s.id);
            }
        }
        if s.replicas.first().is_none_or(|p| !cluster.live(*p)) {
            v.without_live_primary_count += 1;
            if v.without_live_primary.len() < MAX_LISTED {
                v.without_live_primary.push(s.id);
            }
        }
    }
    for n in cluster.nodes.values() {
        *v.nodes_by_state
            .entry(node_state_name(n.state))
            .or_default() += 1;
        let (replicas, primaries, learners) = per_node.get(&n.id).copied().unwrap_or_default();
        let seen = control.last_seen(n.id);
        let probe = control.last_probe(n.id).unwrap_or_default();
        let ago = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        v.nodes.push(NodeView {
            id: n.id,
            state: node_state_name(n.state),
            cordoned: n.cordoned,
            cause: n.cause.clone(),
            epoch: n.epoch,
            heard_ms_ago: seen.as_ref().map(|s| ago(s.at)),
            probed_ms_ago: probe.ok.as_ref().map(|(t, _)| ago(*t)),
            probe_error: probe.failed.map(|(_, e)| e),
            replicas,
            primaries,
            learners,
            health: seen.and_then(|s| s.health),
            samples_held: 0,
            latest_sample_ms: None,
        });
    }
    for m in &cluster.migrations {
        *v.migrations_by_state
            .entry(migration_state_name(m.state))
            .or_default() += 1;
        if is_active(m) {
            v.move_rate_bytes_per_s = v.move_rate_bytes_per_s.saturating_add(m.rate_bytes_per_s);
            v.migrations_active.push(m.clone());
        }
    }
    v
}

impl Control {
    /// Notes a node's latest risk in `augur_node_risk`.
    pub(crate) fn note_risk(&self, node: NodeId, risk: &augur_proto::wire::RiskState) {
        let label = NodeLabel {
            node: node.0.to_string(),
        };
        match risk.score() {
            Some(score) => {
                self.metrics.node_risk.get_or_create(&label).set(score);
            }
            None => {
                self.metrics.node_risk.remove(&label);
            }
        }
    }

    /// Recomputes the view and the gauges after a repair pass.
    pub(crate) fn update_view(
        &self,
        cluster: &Cluster,
        stuck: &[ShardId],
        leader_since: Instant,
        now: Instant,
    ) {
        let leading_for = now.saturating_duration_since(leader_since).as_millis() as u64;
        let v = compute(self, cluster, stuck, leading_for, now);
        let m = &self.metrics;
        m.leading.set(1);
        for s in NODE_STATES {
            let name = node_state_name(s);
            let count = v.nodes_by_state.get(name).copied().unwrap_or(0);
            m.nodes
                .get_or_create(&StateLabel { state: name })
                .set(count as i64);
        }
        for s in MIGRATION_STATES {
            let name = migration_state_name(s);
            let count = v.migrations_by_state.get(name).copied().unwrap_or(0);
            m.migrations
                .get_or_create(&StateLabel { state: name })
                .set(count as i64);
        }
        m.under_replicated.set(v.under_replicated_count as i64);
        m.cordoned
            .set(cluster.nodes.values().filter(|n| n.cordoned).count() as i64);
        m.storm_frozen.set(cluster.storm.frozen as i64);
        m.move_rate
            .set(v.move_rate_bytes_per_s.min(i64::MAX as u64) as i64);
        m.without_primary.set(v.without_live_primary_count as i64);
        m.stuck.set(stuck.len() as i64);
        self.set_view(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cluster::fixtures::*;
    use crate::control::settings::ControlSettings;

    #[test]
    fn the_view_counts_what_needs_attention() {
        let mut c = cluster(
            &[1, 2, 3],
            vec![
                shard(1, &[1, 2, 3], 1),
                shard(2, &[2, 3], 1),
                shard(3, &[3, 1, 2], 1),
            ],
            3,
        );
        c.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Down;
        let control = Control::for_tests(ControlSettings::default());
        let now = Instant::now();
        control.update_view(&c, &[ShardId(3)], now, now);
        let v = control.view();
        assert!(v.leading);
        assert_eq!(v.under_replicated, vec![ShardId(1), ShardId(2), ShardId(3)]);
        assert_eq!(v.without_live_primary, vec![ShardId(3)]);
        assert_eq!(v.stuck, vec![ShardId(3)]);
        assert_eq!(v.nodes_by_state.get("down"), Some(&1));
        let n1 = v.nodes.iter().find(|n| n.id == NodeId(1)).unwrap();
        assert_eq!((n1.replicas, n1.primaries), (2, 1));
        assert_eq!(control.metrics.stuck.get(), 1);
        assert_eq!(control.metrics.under_replicated.get(), 3);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["stuck"], serde_json::json!([3]));
        // Losing leadership empties the view and zeroes the gauges.
        control.set_leadership(Some(4), now);
        control.set_leadership(None, now);
        assert!(!control.view().leading);
        assert_eq!(control.metrics.stuck.get(), 0);
        assert_eq!(control.metrics.leading.get(), 0);
    }

    #[test]
    fn metrics_are_exposed_under_the_control_prefix() {
        let m = ControlMetrics::default();
        let mut r = Registry::with_prefix("augur");
        m.register(&mut r);
        m.reset(true);
        m.declared_down.inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("augur_control_nodes{state=\"down\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("augur_control_nodes_declared_down_total 1"),
            "{out}"
        );
        assert!(out.contains("augur_control_leading 1"), "{out}");
    }

    #[test]
    fn node_risk_is_exported_per_node_and_dropped_without_a_score() {
        use augur_proto::wire::{RiskReport, RiskState};
        let control = Control::for_tests(ControlSettings::default());
        let mut r = Registry::with_prefix("augur");
        control.metrics.register(&mut r);
        let scored = RiskState::Scored(RiskReport {
            score: 0.75,
            model: "node".into(),
            ..Default::default()
        });
        control.note_risk(NodeId(2), &scored);
        control.note_risk(NodeId(3), &scored);
        control.note_risk(
            NodeId(3),
            &RiskState::NoModel {
                reason: "none".into(),
            },
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(out.contains("augur_node_risk{node=\"2\"} 0.75"), "{out}");
        assert!(!out.contains("augur_node_risk{node=\"3\"}"), "{out}");
        control.metrics.reset(false);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(!out.contains("augur_node_risk{"), "{out}");
    }
}
