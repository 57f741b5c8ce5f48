//! The control plane's Prometheus metrics (prefixed `augur_control_`): nodes, shards and
//! migrations as gauges the leader sets from its view on every repair pass, and counters of
//! what it did. A member that does not lead zeroes the gauges ([`ControlMetrics::reset`]).

use augur_proto::{MigrationKind, MigrationState, NodeState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A metric label naming a storage node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node's id.
    pub node: String,
}

/// A metric label naming a node or migration state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state's name ([`node_state_name`], [`migration_state_name`]).
    pub state: &'static str,
}

/// A metric label naming a migration's kind and state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindStateLabel {
    /// The kind's name ([`migration_kind_name`]).
    pub kind: &'static str,
    /// The state's name ([`migration_state_name`]).
    pub state: &'static str,
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
    /// Migration records by kind and state: a drain, a repair after a failure and
    /// balancing after a node joined each show apart.
    pub migrations_by_kind: Family<KindStateLabel, Gauge>,
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
    /// Replicas on draining nodes taken out of shards that kept their count without them.
    pub surplus_removed: Counter,
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

pub(crate) const NODE_STATES: [NodeState; 5] = [
    NodeState::Up,
    NodeState::Suspect,
    NodeState::Draining,
    NodeState::Down,
    NodeState::Removed,
];

pub(crate) const MIGRATION_STATES: [MigrationState; 6] = [
    MigrationState::Planned,
    MigrationState::Copying,
    MigrationState::CatchingUp,
    MigrationState::Cutover,
    MigrationState::Committed,
    MigrationState::Aborted,
];

pub(crate) const MIGRATION_KINDS: [MigrationKind; 3] = [
    MigrationKind::Restore,
    MigrationKind::Drain,
    MigrationKind::Balance,
];

/// A migration kind's name in metrics (as `augurctl migrations` prints it).
pub fn migration_kind_name(k: MigrationKind) -> &'static str {
    match k {
        MigrationKind::Restore => "restore",
        MigrationKind::Drain => "drain",
        MigrationKind::Balance => "balance",
    }
}

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
            "migrations_by_kind",
            "Migration records by kind (restore, drain, balance) and state",
            self.migrations_by_kind.clone(),
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
            "surplus_replicas_removed",
            "Replicas on draining nodes taken out of shards that kept their count without them",
            self.surplus_removed.clone(),
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
            for k in MIGRATION_KINDS {
                self.migrations_by_kind
                    .get_or_create(&KindStateLabel {
                        kind: migration_kind_name(k),
                        state: migration_state_name(s),
                    })
                    .set(0);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
