//! Reconfigurations asked for from outside: a primary's request to remove a replica that
//! stopped acknowledging (`ReportReplica`), and an operator forcing a primary onto a shard
//! with no live replica (`ForcePrimary`).
//!
//! Both are decided by pure functions over the records and reports ([`report_replica`],
//! [`force_primary`]) and written by one transaction that compares what they read.

use super::cluster::{Cluster, Reports};
use super::repair::reconfigure_txn;
use super::store::MetaStore;
use super::Control;
use crate::meta::MetaNode;
use augur_proto::data::ReplicaRole;
use augur_proto::model::{limits, ShardState};
use augur_proto::wire::ApiError;
use augur_proto::{Key, NodeId, NodeState, Record, Response, Shard, ShardId};
use augur_transport::Role;
use std::time::Instant;

/// Why a requested reconfiguration was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconfigError {
    /// An id in the request is zero.
    #[error("invalid id: {0}")]
    InvalidId(#[from] augur_proto::IdError),
    /// Only a storage node (the shard's primary) may report a replica.
    #[error("only a storage node may report a replica")]
    NotStorage,
    /// The shard does not exist.
    #[error("shard {0} does not exist")]
    UnknownShard(ShardId),
    /// The caller is not the shard's primary at the epoch it named.
    #[error("node {caller} is not the primary of shard {shard} at epoch {epoch} (the shard is at epoch {current}, primary {primary})")]
    NotPrimary {
        /// The shard.
        shard: ShardId,
        /// The epoch the caller named.
        epoch: u64,
        /// The caller.
        caller: NodeId,
        /// The shard's epoch.
        current: u64,
        /// The shard's primary.
        primary: NodeId,
    },
    /// The caller acts under an epoch the shard has left (or has not reached).
    #[error("shard {shard} is at epoch {current}, not {epoch}: refetch the shard record")]
    WrongEpoch {
        /// The shard.
        shard: ShardId,
        /// The epoch the caller named.
        epoch: u64,
        /// The shard's epoch.
        current: u64,
    },
    /// The caller's node was declared Down (or removed): its roles are void.
    #[error("node {0} is not live in the registry: its roles are void until it registers again")]
    CallerNotLive(NodeId),
    /// The node named is neither a replica nor a learner of the shard.
    #[error("node {node} is not a replica or learner of shard {shard}")]
    NotInShard {
        /// The shard.
        shard: ShardId,
        /// The node.
        node: NodeId,
    },
    /// Removing the node would leave the shard without a replica.
    #[error("removing node {node} would leave shard {shard} without a replica")]
    LastReplica {
        /// The shard.
        shard: ShardId,
        /// The node.
        node: NodeId,
    },
    /// A replica of the shard is alive: the control plane promotes it without loss.
    #[error("replica {node} of shard {shard} is alive; forcing a primary is only for shards none of whose replicas is")]
    ReplicaAlive {
        /// The shard.
        shard: ShardId,
        /// The live replica.
        node: NodeId,
    },
    /// The node to force is not live.
    #[error("node {0} is not live: it cannot serve the shard")]
    NodeNotLive(NodeId),
    /// No report shows the node holding a copy of the shard.
    #[error("no report shows node {node} holding a complete copy of shard {shard} (it reports what it holds in every heartbeat; wait for one)")]
    NoCopy {
        /// The shard.
        shard: ShardId,
        /// The node.
        node: NodeId,
    },
    /// The records changed between the read and the write.
    #[error("shard {0} changed meanwhile; ask again")]
    Conflict(ShardId),
    /// Reading or writing the records failed.
    #[error(transparent)]
    Store(#[from] ApiError),
}

impl From<ReconfigError> for ApiError {
    fn from(e: ReconfigError) -> ApiError {
        match e {
            ReconfigError::Store(e) => e,
            ReconfigError::NotStorage
            | ReconfigError::NotPrimary { .. }
            | ReconfigError::CallerNotLive(_) => ApiError::PermissionDenied(e.to_string()),
            ReconfigError::Conflict(_) => ApiError::Unavailable(e.to_string()),
            other => ApiError::InvalidArgument(other.to_string()),
        }
    }
}

/// `ReportReplica` from `caller` about `replica` of `shard` at `epoch`: the shard as it should
/// be written, or `None` if the replica is already gone (a retry whose first attempt was
/// applied).
///
/// The caller must be the shard's primary at exactly `epoch`, with a live node record; the
/// replica must be another replica or a learner of the shard. A retry at the same epoch after
/// the removal was applied finds the shard at a later epoch with the caller still primary and
/// the replica absent: that is answered as done.
pub fn report_replica(
    shard: &Shard,
    cluster: &Cluster,
    caller: NodeId,
    epoch: u64,
    replica: NodeId,
) -> Result<Option<Shard>, ReconfigError> {
    if !cluster.live(caller) {
        return Err(ReconfigError::CallerNotLive(caller));
    }
    let primary = shard.replicas.first().copied();
    let is_primary = primary == Some(caller);
    let present = shard.replicas.contains(&replica) || shard.learners.contains(&replica);
    if epoch < shard.epoch && is_primary && !present {
        return Ok(None);
    }
    if epoch != shard.epoch {
        return Err(ReconfigError::WrongEpoch {
            shard: shard.id,
            epoch,
            current: shard.epoch,
        });
    }
    let Some(primary) = primary.filter(|_| is_primary) else {
        return Err(ReconfigError::NotPrimary {
            shard: shard.id,
            epoch,
            caller,
            current: shard.epoch,
            primary: primary.unwrap_or(NodeId(0)),
        });
    };
    if replica == primary {
        return Err(ReconfigError::LastReplica {
            shard: shard.id,
            node: replica,
        });
    }
    if !present {
        return Err(ReconfigError::NotInShard {
            shard: shard.id,
            node: replica,
        });
    }
    let mut next = shard.clone();
    next.replicas.retain(|n| *n != replica);
    next.learners.retain(|n| *n != replica);
    next.epoch = shard.epoch + 1;
    if next.replicas.is_empty() {
        return Err(ReconfigError::LastReplica {
            shard: shard.id,
            node: replica,
        });
    }
    Ok(Some(next))
}

/// A primary that restarted asks to be replaced at a new epoch: entries it wrote just before
/// the restart may have reached its secondaries without reaching its own disk, so writing
/// more under the same epoch could give two different entries one (sequence, epoch). The live
/// replica with the highest prepared sequence (the caller included) leads at `epoch + 1`;
/// nobody is removed. Returns `None` if the shard already moved past `epoch`.
pub fn reelect(
    shard: &Shard,
    cluster: &Cluster,
    reports: &Reports,
    caller: NodeId,
    epoch: u64,
) -> Result<Option<Shard>, ReconfigError> {
    if epoch < shard.epoch {
        return Ok(None);
    }
    if epoch != shard.epoch {
        return Err(ReconfigError::WrongEpoch {
            shard: shard.id,
            epoch,
            current: shard.epoch,
        });
    }
    let primary = shard.replicas.first().copied();
    if primary != Some(caller) {
        return Err(ReconfigError::NotPrimary {
            shard: shard.id,
            epoch,
            caller,
            current: shard.epoch,
            primary: primary.unwrap_or(NodeId(0)),
        });
    }
    if !cluster.live(caller) {
        return Err(ReconfigError::CallerNotLive(caller));
    }
    let rank = |n: &NodeId| {
        let status = reports.current(cluster, *n, shard)?;
        let up = cluster.state(*n) == Some(NodeState::Up);
        Some((status.prepared, up, std::cmp::Reverse(*n)))
    };
    let best = shard
        .replicas
        .iter()
        .filter(|n| cluster.live(**n))
        .filter_map(|n| rank(n).map(|r| (r, *n)))
        .max()
        .map(|(_, n)| n)
        .unwrap_or(caller);
    let mut next = shard.clone();
    next.epoch = shard.epoch + 1;
    next.replicas = std::iter::once(best)
        .chain(shard.replicas.iter().copied().filter(|n| *n != best))
        .collect();
    Ok(Some(next))
}

/// `ForcePrimary`: `node` becomes the sole replica and primary of `shard` (epoch + 1), with
/// the nodes it displaces.
///
/// **This can lose acknowledged writes.** It is allowed only when no replica of the shard is
/// alive (live node reporting the shard's current epoch), so the automatic promotion cannot
/// act. The forced node serves what it holds: writes committed after its copy fell behind
/// (those the dead replicas acknowledged while it was absent or lagging) are gone, and its
/// own uncommitted tail becomes committed when it reconciles. The node must be live and must
/// hold a copy: a replica, a replica removed earlier whose data is still there, or a learner
/// whose copy completed, as its latest report shows.
pub fn force_primary(
    shard: &Shard,
    cluster: &Cluster,
    reports: &Reports,
    node: NodeId,
) -> Result<(Shard, Vec<NodeId>), ReconfigError> {
    if let Some(alive) = shard
        .replicas
        .iter()
        .find(|r| reports.live_replica(cluster, **r, shard))
    {
        return Err(ReconfigError::ReplicaAlive {
            shard: shard.id,
            node: *alive,
        });
    }
    if !cluster.live(node) {
        return Err(ReconfigError::NodeNotLive(node));
    }
    let holds = reports
        .replica(cluster, node, shard.id)
        .is_some_and(|r| r.role != ReplicaRole::Learner || r.copied);
    if !holds {
        return Err(ReconfigError::NoCopy {
            shard: shard.id,
            node,
        });
    }
    let displaced: Vec<NodeId> = shard
        .replicas
        .iter()
        .chain(&shard.learners)
        .copied()
        .filter(|n| *n != node)
        .collect();
    let mut next = shard.clone();
    next.replicas = vec![node];
    next.learners.clear();
    next.epoch = shard.epoch + 1;
    next.state = ShardState::Stable;
    Ok((next, displaced))
}

/// The records a request about `shard` needs: the shard, and the records of `nodes` (those
/// that exist), read one by one rather than listing whole tables.
async fn read_partial(
    meta: &dyn MetaStore,
    shard: ShardId,
    nodes: impl Fn(&Shard) -> Vec<NodeId>,
) -> Result<(Shard, Cluster), ReconfigError> {
    let Some(Record::Shard(record)) = meta.get(Key::Shard(shard)).await? else {
        return Err(ReconfigError::UnknownShard(shard));
    };
    let mut cluster = Cluster::default();
    for id in nodes(&record) {
        if let Some(Record::Node(n)) = meta.get(Key::Node(id)).await? {
            cluster.nodes.insert(id, n);
        }
    }
    cluster.shards.insert(shard, record.clone());
    Ok((record, cluster))
}

impl Control {
    /// Decides and writes a `ReportReplica` (see [`report_replica`]).
    pub(crate) async fn handle_report_replica(
        &self,
        meta: &dyn MetaStore,
        caller: Option<Role>,
        shard: ShardId,
        epoch: u64,
        replica: NodeId,
        reason: &str,
    ) -> Result<(), ReconfigError> {
        let Some(Role::Storage(caller)) = caller else {
            return Err(ReconfigError::NotStorage);
        };
        shard.validate()?;
        replica.validate()?;
        // The reason is the caller's free text: bounded before it reaches the log.
        let reason: String = reason.chars().take(limits::MAX_STRING).collect();
        if replica == caller {
            return self
                .handle_reelect(meta, caller, shard, epoch, &reason)
                .await;
        }
        let (record, cluster) = read_partial(meta, shard, |_| vec![caller]).await?;
        let Some(next) = report_replica(&record, &cluster, caller, epoch, replica)? else {
            return Ok(());
        };
        let new_epoch = next.epoch;
        // Comparing the caller's record too: a primary declared Down meanwhile has no say.
        let txn = reconfigure_txn(&record, next, &[caller], &cluster);
        if !meta.propose(txn).await?.succeeded {
            return Err(ReconfigError::Conflict(shard));
        }
        self.note_lost(shard, &[replica], Instant::now());
        self.metrics.replicas_removed.inc();
        tracing::warn!(shard = %shard, epoch = new_epoch, primary = %caller, replica = %replica, reason, "removed a replica at its primary's request");
        Ok(())
    }

    /// Writes a restarted primary's re-election (see [`reelect`]).
    async fn handle_reelect(
        &self,
        meta: &dyn MetaStore,
        caller: NodeId,
        shard: ShardId,
        epoch: u64,
        reason: &str,
    ) -> Result<(), ReconfigError> {
        let (record, cluster) = read_partial(meta, shard, |s| s.replicas.clone()).await?;
        let reports = self.reports();
        let Some(next) = reelect(&record, &cluster, &reports, caller, epoch)? else {
            return Ok(());
        };
        let (new_epoch, primary) = (next.epoch, next.replicas.first().copied());
        let txn = reconfigure_txn(&record, next, &[caller], &cluster);
        if !meta.propose(txn).await?.succeeded {
            return Err(ReconfigError::Conflict(shard));
        }
        tracing::warn!(shard = %shard, epoch = new_epoch, primary = ?primary, restarted = %caller, reason, "chose a primary again after a primary restarted");
        Ok(())
    }

    /// Decides and writes a `ForcePrimary` (see [`force_primary`]).
    pub(crate) async fn handle_force_primary(
        &self,
        meta: &dyn MetaStore,
        shard: ShardId,
        node: NodeId,
    ) -> Result<(), ReconfigError> {
        shard.validate()?;
        node.validate()?;
        let (record, cluster) = read_partial(meta, shard, |s| {
            s.replicas
                .iter()
                .chain(&s.learners)
                .copied()
                .chain(std::iter::once(node))
                .collect()
        })
        .await?;
        let reports = self.reports();
        let (next, displaced) = force_primary(&record, &cluster, &reports, node)?;
        let new_epoch = next.epoch;
        // Comparing the displaced nodes' records too: one that registered again meanwhile
        // may be a live replica after all.
        let txn = reconfigure_txn(&record, next, &displaced, &cluster);
        if !meta.propose(txn).await?.succeeded {
            return Err(ReconfigError::Conflict(shard));
        }
        self.note_lost(shard, &displaced, Instant::now());
        tracing::error!(shard = %shard, epoch = new_epoch, primary = %node, displaced = ?displaced, "operator forced a primary: writes the displaced replicas acknowledged may be lost");
        Ok(())
    }
}

impl MetaNode {
    /// `Request::ReportReplica`, from the storage node `caller`.
    pub(crate) async fn report_replica(
        &self,
        caller: Option<Role>,
        shard: ShardId,
        epoch: u64,
        replica: NodeId,
        reason: String,
    ) -> Response {
        let control = self.control.clone();
        match control
            .handle_report_replica(self, caller, shard, epoch, replica, &reason)
            .await
        {
            Ok(()) => Response::Done,
            Err(e) => Response::Error(e.into()),
        }
    }

    /// `Request::ForcePrimary`, from an operator.
    pub(crate) async fn force_primary(&self, shard: ShardId, node: NodeId) -> Response {
        let control = self.control.clone();
        match control.handle_force_primary(self, shard, node).await {
            Ok(()) => Response::Done,
            Err(e) => Response::Error(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cluster::fixtures::*;
    use crate::control::settings::ControlSettings;
    use crate::control::store::fake::MemStore;
    use augur_proto::data::ReplicaRole::{Learner, Secondary, Stray};
    use augur_proto::NodeState;

    fn c3() -> Cluster {
        let mut s = shard(1, &[1, 2, 3], 4);
        s.learners = vec![NodeId(4)];
        cluster(&[1, 2, 3, 4], vec![s], 3)
    }

    #[test]
    fn only_the_primary_at_that_epoch_may_remove_a_replica() {
        let c = c3();
        let s = &c.shards[&ShardId(1)];
        let next = report_replica(s, &c, NodeId(1), 4, NodeId(3))
            .unwrap()
            .unwrap();
        assert_eq!(next.replicas, vec![NodeId(1), NodeId(2)]);
        assert_eq!(next.epoch, 5);
        let learner = report_replica(s, &c, NodeId(1), 4, NodeId(4))
            .unwrap()
            .unwrap();
        assert!(learner.learners.is_empty());
        assert!(matches!(
            report_replica(s, &c, NodeId(2), 4, NodeId(3)),
            Err(ReconfigError::NotPrimary { .. })
        ));
        assert!(matches!(
            report_replica(s, &c, NodeId(1), 3, NodeId(3)),
            Err(ReconfigError::WrongEpoch { .. })
        ));
        assert!(matches!(
            report_replica(s, &c, NodeId(1), 5, NodeId(3)),
            Err(ReconfigError::WrongEpoch { .. })
        ));
        assert!(matches!(
            report_replica(s, &c, NodeId(1), 4, NodeId(9)),
            Err(ReconfigError::NotInShard { .. })
        ));
        assert!(matches!(
            report_replica(s, &c, NodeId(1), 4, NodeId(1)),
            Err(ReconfigError::LastReplica { .. })
        ));
        let mut down = c.clone();
        down.nodes.get_mut(&NodeId(1)).unwrap().state = NodeState::Down;
        assert!(matches!(
            report_replica(s, &down, NodeId(1), 4, NodeId(3)),
            Err(ReconfigError::CallerNotLive(_))
        ));
        // The errors reach the caller typed.
        assert!(matches!(
            ApiError::from(ReconfigError::NotStorage),
            ApiError::PermissionDenied(_)
        ));
    }

    #[test]
    fn a_retry_after_the_removal_is_done() {
        let mut c = c3();
        let s = c.shards[&ShardId(1)].clone();
        let next = report_replica(&s, &c, NodeId(1), 4, NodeId(3))
            .unwrap()
            .unwrap();
        c.shards.insert(ShardId(1), next.clone());
        assert_eq!(report_replica(&next, &c, NodeId(1), 4, NodeId(3)), Ok(None));
        // Not for someone who is no longer primary.
        let mut moved = next.clone();
        moved.replicas = vec![NodeId(2), NodeId(1)];
        assert!(report_replica(&moved, &c, NodeId(1), 4, NodeId(3)).is_err());
    }

    #[test]
    fn a_restarted_primary_hands_over_to_the_most_advanced_live_replica() {
        let sh = shard(1, &[1, 2, 3], 4);
        let cl = cluster(&[1, 2, 3], vec![sh.clone()], 3);
        let mut reports = Reports::default();
        report(
            &mut reports,
            1,
            vec![status(1, 4, ReplicaRole::Primary, 10)],
        );
        report(&mut reports, 2, vec![status(1, 4, Secondary, 12)]);
        report(&mut reports, 3, vec![status(1, 4, Secondary, 11)]);
        let next = reelect(&sh, &cl, &reports, NodeId(1), 4).unwrap().unwrap();
        assert_eq!(next.replicas, vec![NodeId(2), NodeId(1), NodeId(3)]);
        assert_eq!(next.epoch, 5);
        // Already moved on: nothing to do. Not the primary: refused.
        assert_eq!(reelect(&sh, &cl, &reports, NodeId(1), 3), Ok(None));
        assert!(matches!(
            reelect(&sh, &cl, &reports, NodeId(2), 4),
            Err(ReconfigError::NotPrimary { .. })
        ));
        // With no reports at this epoch, the caller stays primary at a new epoch.
        let none = Reports::default();
        let next = reelect(&sh, &cl, &none, NodeId(1), 4).unwrap().unwrap();
        assert_eq!((next.replicas[0], next.epoch), (NodeId(1), 5));
    }

    #[tokio::test]
    async fn report_replica_writes_once_and_refuses_non_storage_callers() {
        let store = MemStore::with(&c3());
        let control = Control::for_tests(ControlSettings::default());
        let me = Some(Role::Storage(NodeId(1)));
        control
            .handle_report_replica(&store, me, ShardId(1), 4, NodeId(2), "timeout")
            .await
            .unwrap();
        let s = store.read().shards[&ShardId(1)].clone();
        assert_eq!(
            (s.replicas.clone(), s.epoch),
            (vec![NodeId(1), NodeId(3)], 5)
        );
        // Retried: answered done, nothing more written.
        control
            .handle_report_replica(&store, me, ShardId(1), 4, NodeId(2), "timeout")
            .await
            .unwrap();
        assert_eq!(store.read().shards[&ShardId(1)], s);
        for who in [None, Some(Role::Operator), Some(Role::Client)] {
            assert_eq!(
                control
                    .handle_report_replica(&store, who, ShardId(1), 5, NodeId(3), "x")
                    .await,
                Err(ReconfigError::NotStorage)
            );
        }
        assert_eq!(
            control
                .handle_report_replica(&store, me, ShardId(9), 5, NodeId(3), "x")
                .await,
            Err(ReconfigError::UnknownShard(ShardId(9)))
        );
        let zero = control
            .handle_report_replica(&store, me, ShardId(1), 5, NodeId(0), "x")
            .await;
        assert!(matches!(zero, Err(ReconfigError::InvalidId(_))));
        assert!(matches!(
            ApiError::from(zero.unwrap_err()),
            ApiError::InvalidArgument(_)
        ));
        // Nothing was written by any refusal.
        assert_eq!(store.read().shards[&ShardId(1)], s);
    }

    #[tokio::test]
    async fn force_primary_writes_the_sole_replica_from_reports() {
        let mut c = c3();
        for n in [1, 2, 3] {
            c.nodes.get_mut(&NodeId(n)).unwrap().state = NodeState::Down;
        }
        let store = MemStore::with(&c);
        let control = Control::for_tests(ControlSettings::default());
        // No report yet (a new leader): refused until the node's heartbeat says what it holds.
        assert!(matches!(
            control
                .handle_force_primary(&store, ShardId(1), NodeId(4))
                .await,
            Err(ReconfigError::NoCopy { .. })
        ));
        let mut done = status(1, 4, Learner, 30);
        done.copied = true;
        let mut r = Reports::default();
        report(&mut r, 4, vec![done]);
        control.record_probe(NodeId(4), Instant::now(), Ok(r.by_node[&NodeId(4)].clone()));
        control
            .handle_force_primary(&store, ShardId(1), NodeId(4))
            .await
            .unwrap();
        let s = store.read().shards[&ShardId(1)].clone();
        assert_eq!(
            (s.replicas, s.learners, s.epoch),
            (vec![NodeId(4)], vec![], 5)
        );
        assert_eq!(
            control
                .handle_force_primary(&store, ShardId(2), NodeId(4))
                .await,
            Err(ReconfigError::UnknownShard(ShardId(2)))
        );
    }

    #[test]
    fn force_primary_needs_every_replica_dead_and_a_copy_on_the_node() {
        let mut c = c3();
        for n in [1, 2, 3] {
            c.nodes.get_mut(&NodeId(n)).unwrap().state = NodeState::Down;
        }
        c.nodes.insert(NodeId(5), node(5, NodeState::Up));
        let s = c.shards[&ShardId(1)].clone();
        let mut r = Reports::default();
        // Node 5 holds a stray copy from an earlier configuration.
        report(&mut r, 5, vec![status(1, 2, Stray, 40)]);
        // Node 4 is a learner that has not finished copying.
        report(&mut r, 4, vec![status(1, 4, Learner, 41)]);
        let (next, displaced) = force_primary(&s, &c, &r, NodeId(5)).unwrap();
        assert_eq!((next.replicas, next.epoch), (vec![NodeId(5)], 5));
        assert!(next.learners.is_empty());
        assert_eq!(displaced, vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)]);
        assert!(matches!(
            force_primary(&s, &c, &r, NodeId(4)),
            Err(ReconfigError::NoCopy { .. })
        ));
        assert!(matches!(
            force_primary(&s, &c, &r, NodeId(1)),
            Err(ReconfigError::NodeNotLive(_))
        ));
        // One replica back and reporting the current epoch: promotion's job, not force's.
        c.nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Up;
        report(&mut r, 2, vec![status(1, 4, Secondary, 42)]);
        assert!(matches!(
            force_primary(&s, &c, &r, NodeId(5)),
            Err(ReconfigError::ReplicaAlive { .. })
        ));
        // Back but at an older epoch: it cannot be promoted, so forcing it is allowed.
        report(&mut r, 2, vec![status(1, 3, Secondary, 42)]);
        let (next, _) = force_primary(&s, &c, &r, NodeId(2)).unwrap();
        assert_eq!(next.replicas, vec![NodeId(2)]);
    }
}
