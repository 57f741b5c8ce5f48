//! What the control plane's decisions read: the metadata records at one revision, and the
//! latest report each storage node gave about itself.
//!
//! Every decision of the control plane is a pure function of a [`Cluster`] and [`Reports`]
//! (plus a clock reading passed in), so each can be tested without a cluster, and every
//! write it leads to compares the versions it was computed from.

use augur_proto::data::{DataCluster, NodeReport, ReplicaStatus};
use augur_proto::{
    Migration, MigrationState, Node, NodeId, NodeState, Shard, ShardId, StateOrigin, StormGuard,
};
use std::collections::{BTreeMap, HashMap};

/// The metadata records the control plane works from, read at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cluster {
    /// Every storage-node record, by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Every shard record, by id.
    pub shards: BTreeMap<ShardId, Shard>,
    /// Every migration record, by id (ids grow, so this is also creation order).
    pub migrations: Vec<Migration>,
    /// The data plane's layout, once it is created.
    pub layout: Option<DataCluster>,
    /// The risk policy's storm guard (setting [`augur_proto::STORM_GUARD_SETTING`]; not
    /// frozen when absent).
    pub storm: StormGuard,
}

/// Whether a node in `state` is running and may hold and serve replicas: Up, Suspect (late,
/// but within grace) and Draining (being emptied, still serving).
pub fn is_live(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Up | NodeState::Suspect | NodeState::Draining
    )
}

/// Whether `node` may receive new replicas (a placement, a move's destination, a
/// re-replication): Up and not cordoned. Suspect nodes (late heartbeats, or a risk above the
/// policy's watch threshold), Draining nodes (being emptied) and cordoned nodes take none.
pub fn accepts_replicas(node: &Node) -> bool {
    node.state == NodeState::Up && !node.cordoned
}

/// Whether a migration is still in flight.
pub fn is_active(m: &Migration) -> bool {
    !matches!(m.state, MigrationState::Committed | MigrationState::Aborted)
}

impl Cluster {
    /// The state of `node`'s record, `None` if it has none.
    pub fn state(&self, node: NodeId) -> Option<NodeState> {
        self.nodes.get(&node).map(|n| n.state)
    }

    /// Whether `node` is registered and live (see [`is_live`]).
    pub fn live(&self, node: NodeId) -> bool {
        self.state(node).is_some_and(is_live)
    }

    /// Whether `node`'s replicas are lost to the cluster: declared Down, removed by an
    /// operator, or not registered at all.
    pub fn gone(&self, node: NodeId) -> bool {
        !self.live(node)
    }

    /// The migrations still in flight.
    pub fn active_migrations(&self) -> impl Iterator<Item = &Migration> {
        self.migrations.iter().filter(|m| is_active(m))
    }

    /// Whether `node` is registered and may receive new replicas (see [`accepts_replicas`]):
    /// the planner's test of an eligible destination.
    pub fn accepts_replicas(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(accepts_replicas)
    }

    /// Whether the storm guard has frozen automated moves.
    pub fn frozen(&self) -> bool {
        self.storm.frozen
    }

    /// Whether `node` is to be emptied now: its record says Draining, and the drain is not an
    /// automated one held by the storm guard (an operator's drain goes on while frozen).
    pub fn to_drain(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|n| {
            n.state == NodeState::Draining
                && !(self.storm.frozen && n.cause.origin == StateOrigin::Policy)
        })
    }

    /// The nodes to empty now (see [`Cluster::to_drain`]), by id.
    pub fn draining(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| self.to_drain(n.id))
    }
}

/// The latest report from each storage node (heartbeat or probe, whichever is newer).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reports {
    /// By node.
    pub by_node: HashMap<NodeId, NodeReport>,
}

impl Reports {
    /// What `node` last said about `shard`, if the report comes from the incarnation and node
    /// epoch its record holds: a report from a wiped disk's predecessor, or from a node that
    /// has not yet learnt it was declared Down, says nothing about what the node holds now.
    pub fn replica<'a>(
        &'a self,
        cluster: &Cluster,
        node: NodeId,
        shard: ShardId,
    ) -> Option<&'a ReplicaStatus> {
        let record = cluster.nodes.get(&node)?;
        let report = self.by_node.get(&node)?;
        if report.incarnation != record.incarnation || report.node_epoch != record.epoch {
            return None;
        }
        report.replicas.iter().find(|r| r.shard == shard)
    }

    /// What `node` last said about `shard` under the shard's current epoch.
    pub fn current<'a>(
        &'a self,
        cluster: &Cluster,
        node: NodeId,
        shard: &Shard,
    ) -> Option<&'a ReplicaStatus> {
        self.replica(cluster, node, shard.id)
            .filter(|r| r.epoch == shard.epoch)
    }

    /// Whether `node` has reported as the incarnation and node epoch its record names.
    pub fn heard_from(&self, cluster: &Cluster, node: NodeId) -> bool {
        let (Some(record), Some(report)) = (cluster.nodes.get(&node), self.by_node.get(&node))
        else {
            return false;
        };
        report.incarnation == record.incarnation && report.node_epoch == record.epoch
    }

    /// Whether `node` holds a live replica of `shard`: its node is live and it reports the
    /// shard under the shard's current epoch. Such a replica has every committed write (a
    /// primary commits only what every replica of the configuration has prepared), so it
    /// can be promoted without loss.
    pub fn live_replica(&self, cluster: &Cluster, node: NodeId, shard: &Shard) -> bool {
        cluster.live(node) && self.current(cluster, node, shard).is_some()
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Records and reports for the control plane's unit tests.
    use super::*;
    use augur_proto::data::{Checkpoint, ReplicaRole};
    use augur_proto::model::{Risk, ShardState};
    use augur_proto::MigrationKind;

    /// Migration `id` of shard 1 from node 3 to node 4, record version 50.
    pub fn migration(id: u64, kind: MigrationKind, state: MigrationState) -> Migration {
        Migration {
            id: augur_proto::MigrationId(id),
            shard: ShardId(1),
            from: NodeId(3),
            to: NodeId(4),
            state,
            reason: String::new(),
            priority: 1,
            deadline_ms: 10_000,
            bytes_copied: 0,
            bytes_total: 0,
            attempts: 1,
            kind,
            started_ms: 0,
            rate_bytes_per_s: 0,
            version: 50,
        }
    }

    /// A registered node in `state`, incarnation 7, epoch 1, rack `r{id}`.
    pub fn node(id: u64, state: NodeState) -> Node {
        Node {
            id: NodeId(id),
            incarnation: 7,
            addrs: vec![format!("127.0.0.1:{}", 9000 + id)],
            admin: String::new(),
            rack: format!("r{id}"),
            zone: String::new(),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            state,
            state_since_ms: 0,
            risk: Risk::default(),
            epoch: 1,
            last_heartbeat_ms: 0,
            version: 10 + id,
            cordoned: false,
            drain_when_back: None,
            undrain_when_back: None,
            cause: Default::default(),
        }
    }

    /// A stable shard on `replicas` (primary first) at `epoch`.
    pub fn shard(id: u64, replicas: &[u64], epoch: u64) -> Shard {
        Shard {
            id: ShardId(id),
            replicas: replicas.iter().map(|n| NodeId(*n)).collect(),
            learners: vec![],
            epoch,
            version: 100 + id,
            state: ShardState::Stable,
            size_bytes: 0,
            crc64: 0,
        }
    }

    /// A cluster of `nodes` (all Up) and `shards`, at rf `rf`.
    pub fn cluster(nodes: &[u64], shards: Vec<Shard>, rf: u32) -> Cluster {
        Cluster {
            nodes: nodes
                .iter()
                .map(|n| (NodeId(*n), node(*n, NodeState::Up)))
                .collect(),
            shards: shards.into_iter().map(|s| (s.id, s)).collect(),
            migrations: vec![],
            layout: Some(DataCluster { shards: 64, rf }),
            storm: StormGuard::default(),
        }
    }

    /// A replica's status.
    pub fn status(shard: u64, epoch: u64, role: ReplicaRole, prepared: u64) -> ReplicaStatus {
        ReplicaStatus {
            shard: ShardId(shard),
            epoch,
            role,
            prepared,
            committed: prepared,
            applied: prepared,
            serving: role == ReplicaRole::Primary,
            copied: role != ReplicaRole::Learner,
            copy_bytes: 0,
            size_estimate: 0,
            checkpoint: None,
        }
    }

    /// A checkpoint.
    pub fn checkpoint(seq: u64, crc64: u64) -> Checkpoint {
        Checkpoint {
            seq,
            crc64,
            bytes: 1000,
            keys: 10,
        }
    }

    /// Sets `node`'s report (incarnation 7, node epoch 1) to `replicas`.
    pub fn report(reports: &mut Reports, node: u64, replicas: Vec<ReplicaStatus>) {
        reports.by_node.insert(
            NodeId(node),
            NodeReport {
                node: NodeId(node),
                incarnation: 7,
                node_epoch: 1,
                used_bytes: 0,
                capacity_bytes: 1 << 40,
                replicas,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use augur_proto::data::ReplicaRole;

    #[test]
    fn reports_from_another_incarnation_or_node_epoch_say_nothing() {
        let c = cluster(&[1, 2], vec![shard(1, &[1, 2], 3)], 2);
        let s = &c.shards[&ShardId(1)];
        let mut r = Reports::default();
        report(&mut r, 2, vec![status(1, 3, ReplicaRole::Secondary, 5)]);
        assert!(r.live_replica(&c, NodeId(2), s));
        r.by_node.get_mut(&NodeId(2)).unwrap().incarnation = 8;
        assert!(r.replica(&c, NodeId(2), ShardId(1)).is_none());
        report(&mut r, 2, vec![status(1, 3, ReplicaRole::Secondary, 5)]);
        r.by_node.get_mut(&NodeId(2)).unwrap().node_epoch = 0;
        assert!(!r.live_replica(&c, NodeId(2), s));
        // An older shard epoch is not a current replica.
        report(&mut r, 2, vec![status(1, 2, ReplicaRole::Secondary, 5)]);
        assert!(r.replica(&c, NodeId(2), ShardId(1)).is_some());
        assert!(!r.live_replica(&c, NodeId(2), s));
    }

    #[test]
    fn down_removed_and_unknown_nodes_are_gone() {
        let mut c = cluster(&[1, 2, 3], vec![], 3);
        c.nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Down;
        c.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Draining;
        assert!(c.live(NodeId(1)) && c.live(NodeId(3)));
        assert!(c.gone(NodeId(2)) && c.gone(NodeId(9)));
    }

    #[test]
    fn only_up_uncordoned_nodes_accept_replicas_and_frozen_policy_drains_wait() {
        let mut c = cluster(&[1, 2, 3, 4, 5], vec![], 3);
        let set = |c: &mut Cluster, id: u64, state: NodeState, origin: StateOrigin| {
            let n = c.nodes.get_mut(&NodeId(id)).unwrap();
            n.state = state;
            n.cause.origin = origin;
        };
        set(&mut c, 2, NodeState::Suspect, StateOrigin::Policy);
        set(&mut c, 3, NodeState::Draining, StateOrigin::Policy);
        set(&mut c, 4, NodeState::Draining, StateOrigin::Operator);
        c.nodes.get_mut(&NodeId(5)).unwrap().cordoned = true;
        let accepting: Vec<u64> = (1..=6).filter(|i| c.accepts_replicas(NodeId(*i))).collect();
        assert_eq!(accepting, vec![1]);
        let draining: Vec<NodeId> = c.draining().map(|n| n.id).collect();
        assert_eq!(draining, vec![NodeId(3), NodeId(4)]);
        // Frozen: the policy's drain waits, the operator's goes on.
        c.storm.frozen = true;
        assert!(c.frozen());
        assert!(!c.to_drain(NodeId(3)) && c.to_drain(NodeId(4)));
        // A cordoned node is still live and keeps its replicas.
        assert!(c.live(NodeId(5)) && !c.to_drain(NodeId(5)));
    }
}
