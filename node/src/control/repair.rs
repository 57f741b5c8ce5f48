//! Shards with replicas on dead nodes: promote a new primary, drop the dead replicas.
//!
//! Level-triggered: every pass looks at every shard, so a repair interrupted by a leader
//! change is simply found again by the next leader.
//!
//! - **The primary's node is gone** (Down, Removed or unregistered): the live secondary with
//!   the highest prepared sequence, as its latest report under the shard's current epoch
//!   says, becomes primary (ties: an Up node before a Suspect or Draining one, then the lower
//!   id). Every such secondary holds every committed write, since a primary commits only what
//!   all replicas of its configuration prepared; the highest prepared keeps the longest
//!   uncommitted tail, which the new primary then commits when it reconciles. The dead
//!   replicas and learners leave the shard in the same write (epoch + 1).
//! - **No secondary can take over** (none live, or none reports the current epoch): nothing is
//!   written. Promoting a replica that may lack committed writes would lose acknowledged
//!   data; the shard waits, visibly (`/v1/control`, metrics, `augurctl shard list`), for a
//!   replica to come back or an operator's `ForcePrimary`.
//! - **The primary lives**: dead secondaries and learners are removed (epoch + 1), so the
//!   primary stops waiting for their acknowledgements.
//!
//! Each write compares the shard's version and the version of every dead node's record: if a
//! node registered again meanwhile, the write fails and the next pass decides afresh, so a
//! node that came back never finds itself replaced on the strength of a stale Down.

use super::cluster::{Cluster, Reports};
use super::store::MetaStore;
use super::Control;
use augur_proto::wire::ApiError;
use augur_proto::{Compare, CompareTarget, Key, NodeId, NodeState, Op, Record, Shard, Txn};
use std::time::Instant;

/// What to do about one shard.
#[derive(Debug, Clone, PartialEq)]
pub enum Repair {
    /// Write `shard` (the new configuration, epoch bumped).
    Reconfigure {
        /// The shard as it should be written.
        shard: Shard,
        /// Dead nodes dropped from its replicas or learners.
        removed: Vec<NodeId>,
        /// The secondary made primary, if the primary was dead.
        promoted: Option<NodeId>,
    },
    /// The primary is dead and no replica can take over without risking loss.
    Stuck,
}

/// The repair `shard` needs, `None` if it needs none.
pub fn repair(shard: &Shard, cluster: &Cluster, reports: &Reports) -> Option<Repair> {
    let primary = *shard.replicas.first()?;
    let dead = |n: &NodeId| cluster.gone(*n);
    let dead_members: Vec<NodeId> = shard
        .replicas
        .iter()
        .chain(&shard.learners)
        .copied()
        .filter(dead)
        .collect();
    if dead_members.is_empty() {
        return None;
    }
    let mut next = shard.clone();
    next.epoch = shard.epoch + 1;
    next.learners.retain(|n| !dead(n));
    let mut promoted = None;
    if dead(&primary) {
        let rank = |n: &NodeId| {
            let status = reports.current(cluster, *n, shard)?;
            let up = cluster.state(*n) == Some(NodeState::Up);
            // Highest prepared, then Up, then the lowest id (hence the reversed id).
            Some((status.prepared, up, std::cmp::Reverse(*n)))
        };
        let best = shard.replicas[1..]
            .iter()
            .filter(|n| !dead(n))
            .filter_map(|n| rank(n).map(|r| (r, *n)))
            .max()
            .map(|(_, n)| n);
        let Some(best) = best else {
            return Some(Repair::Stuck);
        };
        next.replicas = std::iter::once(best)
            .chain(
                shard
                    .replicas
                    .iter()
                    .copied()
                    .filter(|n| *n != best && !dead(n)),
            )
            .collect();
        promoted = Some(best);
    } else {
        next.replicas.retain(|n| !dead(n));
    }
    Some(Repair::Reconfigure {
        shard: next,
        removed: dead_members,
        promoted,
    })
}

/// The transaction that writes `next` in place of `old`, valid only while `old` and the
/// records of `nodes` (the dead nodes removed, or the node whose word the change rests on)
/// are as they were read in `cluster` (absent ones must still be absent).
pub fn reconfigure_txn(old: &Shard, next: Shard, nodes: &[NodeId], cluster: &Cluster) -> Txn {
    let mut compares = vec![Compare {
        key: Key::Shard(old.id),
        target: CompareTarget::VersionEq(old.version),
    }];
    for n in nodes {
        compares.push(Compare {
            key: Key::Node(*n),
            target: match cluster.nodes.get(n) {
                Some(rec) => CompareTarget::VersionEq(rec.version),
                None => CompareTarget::Absent,
            },
        });
    }
    Txn {
        compares,
        ops: vec![Op::Put(Record::Shard(next))],
    }
}

/// What one repair pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RepairOutcome {
    /// Shards written.
    pub reconfigured: usize,
    /// Shards whose primary is dead with no replica to promote.
    pub stuck: Vec<augur_proto::ShardId>,
}

impl Control {
    /// One repair pass over every shard of `cluster`, as read by the caller; `now` stamps the
    /// losses it records for re-replication.
    pub(crate) async fn repair_tick(
        &self,
        meta: &dyn MetaStore,
        cluster: &Cluster,
        reports: &Reports,
        now: Instant,
    ) -> Result<RepairOutcome, ApiError> {
        let mut out = RepairOutcome::default();
        for shard in cluster.shards.values() {
            match repair(shard, cluster, reports) {
                None => {}
                Some(Repair::Stuck) => {
                    if !self.stuck_logged(shard.id) {
                        tracing::error!(shard = %shard.id, epoch = shard.epoch, replicas = ?shard.replicas, "shard has no live replica to promote: it waits for a replica to return or for `augurctl shard force-primary`");
                    }
                    out.stuck.push(shard.id);
                }
                Some(Repair::Reconfigure {
                    shard: next,
                    removed,
                    promoted,
                }) => {
                    let epoch = next.epoch;
                    let replicas = next.replicas.clone();
                    // The promoted node's record too: one declared Down (or re-registered)
                    // since the read must not be made primary on the word of stale reports.
                    let mut rests_on = removed.clone();
                    rests_on.extend(promoted);
                    let txn = reconfigure_txn(shard, next, &rests_on, cluster);
                    match meta.propose(txn).await {
                        Ok(r) if r.succeeded => {
                            out.reconfigured += 1;
                            self.note_lost(shard, &removed, now);
                            self.metrics.replicas_removed.inc_by(removed.len() as u64);
                            if let Some(p) = promoted {
                                self.metrics.promotions.inc();
                                tracing::warn!(shard = %shard.id, epoch, primary = %p, old_primary = %shard.replicas[0], removed = ?removed, "promoted a secondary of a dead primary");
                            } else {
                                tracing::warn!(shard = %shard.id, epoch, replicas = ?replicas, removed = ?removed, "removed dead replicas");
                            }
                        }
                        Ok(_) => {
                            tracing::debug!(shard = %shard.id, "shard or node records changed under a repair; next pass decides again")
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        self.forget_stuck_except(&out.stuck);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cluster::fixtures::*;
    use crate::control::settings::ControlSettings;
    use crate::control::store::fake::MemStore;
    use augur_proto::data::ReplicaRole::{Primary, Secondary};
    use augur_proto::ShardId;

    fn set(c: &mut Cluster, n: u64, s: NodeState) {
        c.nodes.get_mut(&NodeId(n)).unwrap().state = s;
    }

    /// Writes node `n`'s record as `c` has it, in state `s` (liveness or a registration
    /// changing it behind a pass's back).
    fn write_state(store: &MemStore, c: &Cluster, n: u64, s: NodeState) {
        let mut rec = c.nodes[&NodeId(n)].clone();
        rec.state = s;
        store.put(Record::Node(rec));
    }

    /// One repair pass over the records `c` as read.
    async fn pass(control: &Control, store: &MemStore, c: &Cluster, r: &Reports) -> RepairOutcome {
        control
            .repair_tick(store, c, r, Instant::now())
            .await
            .unwrap()
    }

    #[test]
    fn the_live_secondary_with_the_highest_prepared_is_promoted() {
        let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2, 3, 4], 5)], 4);
        set(&mut c, 1, NodeState::Down);
        let mut r = Reports::default();
        report(&mut r, 2, vec![status(1, 5, Secondary, 10)]);
        report(&mut r, 3, vec![status(1, 5, Secondary, 12)]);
        // Node 4 prepared more but reports an older epoch: not a current replica.
        report(&mut r, 4, vec![status(1, 4, Secondary, 20)]);
        let s = &c.shards[&ShardId(1)];
        let Some(Repair::Reconfigure {
            shard: next,
            removed,
            promoted,
        }) = repair(s, &c, &r)
        else {
            panic!("expected a promotion");
        };
        assert_eq!(promoted, Some(NodeId(3)));
        assert_eq!(next.replicas, vec![NodeId(3), NodeId(2), NodeId(4)]);
        assert_eq!(next.epoch, 6);
        assert_eq!(removed, vec![NodeId(1)]);
    }

    #[test]
    fn ties_prefer_up_nodes_then_lower_ids() {
        let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 4, 3, 2], 2)], 4);
        set(&mut c, 1, NodeState::Removed);
        set(&mut c, 2, NodeState::Suspect);
        let mut r = Reports::default();
        for n in [2, 3, 4] {
            report(&mut r, n, vec![status(1, 2, Secondary, 7)]);
        }
        let promoted = |c: &Cluster, r: &Reports| match repair(&c.shards[&ShardId(1)], c, r) {
            Some(Repair::Reconfigure { promoted, .. }) => promoted,
            other => panic!("{other:?}"),
        };
        assert_eq!(promoted(&c, &r), Some(NodeId(3)));
        set(&mut c, 3, NodeState::Draining);
        assert_eq!(promoted(&c, &r), Some(NodeId(4)));
    }

    #[test]
    fn no_live_current_replica_means_stuck_and_nothing_written() {
        let mut c = cluster(&[1, 2, 3], vec![shard(1, &[1, 2, 3], 3)], 3);
        set(&mut c, 1, NodeState::Down);
        set(&mut c, 2, NodeState::Down);
        let mut r = Reports::default();
        // Node 3 is up but has not reported the shard's current epoch.
        report(&mut r, 3, vec![status(1, 2, Secondary, 7)]);
        assert_eq!(repair(&c.shards[&ShardId(1)], &c, &r), Some(Repair::Stuck));
        // Nor does a report from a dead node count.
        report(&mut r, 2, vec![status(1, 3, Secondary, 9)]);
        assert_eq!(repair(&c.shards[&ShardId(1)], &c, &r), Some(Repair::Stuck));
    }

    #[test]
    fn dead_secondaries_and_learners_leave_a_live_primary() {
        let mut s = shard(1, &[1, 2, 3], 3);
        s.learners = vec![NodeId(4)];
        let mut c = cluster(&[1, 2, 3, 4], vec![s], 3);
        set(&mut c, 3, NodeState::Down);
        set(&mut c, 4, NodeState::Down);
        c.nodes.remove(&NodeId(2));
        let Some(Repair::Reconfigure {
            shard: next,
            removed,
            promoted,
        }) = repair(&c.shards[&ShardId(1)], &c, &Reports::default())
        else {
            panic!()
        };
        assert_eq!(next.replicas, vec![NodeId(1)]);
        assert!(next.learners.is_empty());
        assert_eq!(promoted, None);
        assert_eq!(removed, vec![NodeId(2), NodeId(3), NodeId(4)]);
        let txn = reconfigure_txn(&c.shards[&ShardId(1)], next, &removed, &c);
        // The unregistered node must still be absent, the others unchanged.
        assert_eq!(txn.compares.len(), 4);
        assert_eq!(txn.compares[1].target, CompareTarget::Absent);
        // A healthy shard needs nothing.
        let c = cluster(&[1, 2], vec![shard(2, &[1, 2], 1)], 2);
        assert_eq!(
            repair(&c.shards[&ShardId(2)], &c, &Reports::default()),
            None
        );
    }

    #[tokio::test]
    async fn a_pass_promotes_and_a_node_that_came_back_stops_it() {
        let mut c = cluster(
            &[1, 2, 3],
            vec![shard(1, &[1, 2, 3], 3), shard(2, &[2, 1, 3], 3)],
            3,
        );
        set(&mut c, 1, NodeState::Down);
        let store = MemStore::with(&c);
        let mut r = Reports::default();
        report(
            &mut r,
            2,
            vec![status(1, 3, Secondary, 4), status(2, 3, Primary, 9)],
        );
        report(
            &mut r,
            3,
            vec![status(1, 3, Secondary, 5), status(2, 3, Secondary, 9)],
        );
        let control = Control::for_tests(ControlSettings::default());
        // Node 1 registers again between the read and the write: nothing is written.
        write_state(&store, &c, 1, NodeState::Up);
        assert_eq!(pass(&control, &store, &c, &r).await.reconfigured, 0);
        assert_eq!(store.read().shards[&ShardId(1)].replicas[0], NodeId(1));
        // With node 1 Down for real, shard 1 gets node 3 as primary, shard 2 drops node 1.
        write_state(&store, &store.read(), 1, NodeState::Down);
        let c = store.read();
        assert_eq!(pass(&control, &store, &c, &r).await.reconfigured, 2);
        let after = store.read();
        assert_eq!(
            after.shards[&ShardId(1)].replicas,
            vec![NodeId(3), NodeId(2)]
        );
        assert_eq!(after.shards[&ShardId(1)].epoch, 4);
        assert_eq!(
            after.shards[&ShardId(2)].replicas,
            vec![NodeId(2), NodeId(3)]
        );
        assert_eq!(
            control.lost_replica(ShardId(1)).map(|l| l.0),
            Some(NodeId(1))
        );
    }

    /// A promotion rests on the promoted node's record as read: if that node was declared
    /// Down meanwhile, nothing is written, and the next pass decides on fresh records.
    #[tokio::test]
    async fn a_promotion_is_not_written_once_the_promoted_node_changed() {
        let mut c = cluster(&[1, 2, 3], vec![shard(1, &[1, 2, 3], 3)], 3);
        set(&mut c, 1, NodeState::Down);
        let store = MemStore::with(&c);
        let mut r = Reports::default();
        report(&mut r, 2, vec![status(1, 3, Secondary, 4)]);
        report(&mut r, 3, vec![status(1, 3, Secondary, 5)]);
        let control = Control::for_tests(ControlSettings::default());
        // Node 3, the one to promote, is declared Down between the read and the write.
        write_state(&store, &c, 3, NodeState::Down);
        assert_eq!(pass(&control, &store, &c, &r).await.reconfigured, 0);
        assert_eq!(store.read().shards[&ShardId(1)].replicas[0], NodeId(1));
        // On fresh records node 2 is the live secondary left, and it is promoted.
        let c = store.read();
        assert_eq!(pass(&control, &store, &c, &r).await.reconfigured, 1);
        assert_eq!(store.read().shards[&ShardId(1)].replicas[0], NodeId(2));
    }
}
