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
    /// The shard's primary is on a live node: it may still serve under its lease.
    #[error("the primary of shard {shard}, node {node}, is live: it may still be serving; forcing a primary waits until its node is declared Down or removed")]
    PrimaryLive {
        /// The shard.
        shard: ShardId,
        /// The primary.
        node: NodeId,
    },
    /// A replica is on a live node this leader has no report from yet (a new leader): it may
    /// be promotable without loss.
    #[error("replica {node} of shard {shard} is on a live node not heard from yet: retry after its next heartbeat")]
    NotHeardFrom {
        /// The shard.
        shard: ShardId,
        /// The replica's node.
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
/// act, and when the primary's node is not live: a live primary may be serving under its
/// lease while its reports lag an epoch bump (a learner just added) or are not yet known (a
/// new leader), and a second primary beside it would answer stale reads and lose its writes.
/// A replica on a live node this leader has not heard from yet is waited for too: its first
/// report may make it promotable without loss. The forced node serves what it holds: writes
/// committed after its copy fell behind (those the dead replicas acknowledged while it was
/// absent or lagging) are gone, and its
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
    if let Some(&primary) = shard.replicas.first() {
        if primary != node && cluster.live(primary) {
            return Err(ReconfigError::PrimaryLive {
                shard: shard.id,
                node: primary,
            });
        }
    }
    if let Some(unheard) = shard
        .replicas
        .iter()
        .find(|r| **r != node && cluster.live(**r) && !reports.heard_from(cluster, **r))
    {
        return Err(ReconfigError::NotHeardFrom {
            shard: shard.id,
            node: *unheard,
        });
    }
    if !cluster.live(node) {
        return Err(ReconfigError::NodeNotLive(node));
    }
    // `copied` is kept through role changes: a stray that was a learner whose copy never
    // finished holds part of the shard, whatever its role says now.
    let holds = reports
        .replica(cluster, node, shard.id)
        .is_some_and(|r| r.copied);
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
        self.note_lost(&record, &[replica], Instant::now());
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
        self.note_lost(&record, &displaced, Instant::now());
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
#[path = "failure_tests.rs"]
mod tests;
