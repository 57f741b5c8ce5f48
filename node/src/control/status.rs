//! The leader's view of the data plane: `/v1/control` on the admin port, and the gauges of
//! [`super::metrics`] set from it.
//!
//! The view is recomputed from the records on every repair pass (`repair_interval_ms`), so
//! it is at most that old. Gauges describe the data plane only on the leader: a member that
//! does not lead sets them to zero and `augur_control_leading` to 0, so a dashboard sums or
//! filters by it. `augurctl shard list` reads the records themselves and does not depend on
//! this view.

use super::cluster::{is_active, Cluster};
use super::metrics::{
    migration_kind_name, migration_state_name, node_state_name, KindStateLabel, NodeLabel,
    StateLabel, MIGRATION_KINDS, MIGRATION_STATES, NODE_STATES,
};
use super::Control;
use augur_proto::{Migration, NodeId, ShardId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Most shard ids listed per category in the view; the counts are always complete.
pub const MAX_LISTED: usize = 1000;

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
    /// Migration records by kind and state (for the gauges; the JSON keeps the totals by
    /// state).
    #[serde(skip)]
    pub migrations_by_kind: BTreeMap<(&'static str, &'static str), usize>,
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
        *v.migrations_by_kind
            .entry((migration_kind_name(m.kind), migration_state_name(m.state)))
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
        for k in MIGRATION_KINDS.map(migration_kind_name) {
            for s in MIGRATION_STATES.map(migration_state_name) {
                m.migrations_by_kind
                    .get_or_create(&KindStateLabel { kind: k, state: s })
                    .set(v.migrations_by_kind.get(&(k, s)).copied().unwrap_or(0) as i64);
            }
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
    use augur_proto::NodeState;
    use prometheus_client::registry::Registry;

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

    /// Migrations are counted by state and, apart, by kind and state: a drain and the
    /// repairs after a failure are told apart on a dashboard.
    #[test]
    fn migrations_are_counted_by_kind_and_state() {
        use augur_proto::{MigrationKind, MigrationState};
        let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2, 3], 1)], 3);
        c.migrations = vec![
            migration(1, MigrationKind::Drain, MigrationState::Copying),
            migration(2, MigrationKind::Drain, MigrationState::Committed),
            migration(3, MigrationKind::Restore, MigrationState::Copying),
        ];
        let control = Control::for_tests(ControlSettings::default());
        let mut r = Registry::with_prefix("augur");
        control.metrics.register(&mut r);
        let now = Instant::now();
        control.update_view(&c, &[], now, now);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        for line in [
            "augur_control_migrations{state=\"copying\"} 2",
            "augur_control_migrations_by_kind{kind=\"drain\",state=\"copying\"} 1",
            "augur_control_migrations_by_kind{kind=\"drain\",state=\"committed\"} 1",
            "augur_control_migrations_by_kind{kind=\"restore\",state=\"copying\"} 1",
            "augur_control_migrations_by_kind{kind=\"balance\",state=\"copying\"} 0",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
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
