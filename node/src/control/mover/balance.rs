//! Spreading primaries over the healthy nodes again after failovers, drains and restarts.
//!
//! A primary serves every request of its shard, reads included, so the node leading the most
//! shards takes the most client load. Initial placement spreads primaries evenly
//! ([`crate::control::placement`]), but every promotion and every drain hand-off moves
//! leadership, and without balancing nothing moves it back: after a few drains one node may
//! lead every shard (the jepsen-like `migrate` runs showed it) and the cluster serves at the
//! speed of that one node. TiKV's balance-leader scheduler does the same job; here the tool
//! is the drain's hand-off (the primary stops taking requests and lets every write in
//! flight commit, then one write makes the chosen secondary primary at epoch + 1), so clients
//! see a short `Unavailable` and a redirect, and nothing fails.
//!
//! **When.** Only while the cluster is [`quiet`] (no move in flight, no learner, no shard
//! below its replica count, no replica on a node being drained): re-replication and drains
//! come first and would move primaries again anyway. Then at most once every `balance_interval_ms`
//! (0 turns balancing off), counted from this member's leadership too, so a new leader hears
//! every node's report before it judges.
//!
//! **Which.** Only Up, uncordoned nodes take part, as sources and as targets: a Suspect or
//! Draining node is the risk policy's business, and a cordoned one is being emptied by hand.
//! Each round plans at most `max_balance_handoffs` hand-offs, greedily: the shard whose
//! primary leads the most shards goes to its secondary leading the fewest, provided that
//! secondary reports the shard at its current epoch (so it holds every committed write) and
//! leads at least two fewer. A hand-off across a gap of two or more lowers the sum of the
//! squared counts, so balancing never moves a primary back and forth, and it stops where no
//! single hand-off helps: every pair of nodes sharing a shard within one primary of each
//! other.

use crate::control::cluster::{accepts_replicas, Cluster, Reports};
use crate::control::store::{MetaStore, StorageCalls};
use crate::control::Control;
use augur_proto::model::ShardState;
use augur_proto::wire::ApiError;
use augur_proto::{NodeId, Shard, ShardId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// How good a hand-off is: the gap in shards led it closes, then the lowest shard and target.
type Rank = (usize, Reverse<(ShardId, NodeId)>);

/// One planned hand-off of a shard's primary role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebalance {
    /// The shard.
    pub shard: ShardId,
    /// Its primary now.
    pub from: NodeId,
    /// The secondary that takes over.
    pub to: NodeId,
}

/// Whether nothing else is moving data or leadership: no migration in flight, no node being
/// drained that still holds a replica (an emptied Draining node, say one waiting to be
/// decommissioned, holds nothing up), and every shard stable, without learners, at its
/// replica count.
pub fn quiet(cluster: &Cluster) -> bool {
    let Some(layout) = cluster.layout else {
        return false;
    };
    cluster.active_migrations().next().is_none()
        && cluster.shards.values().all(|s| {
            s.state == ShardState::Stable
                && s.learners.is_empty()
                && s.replicas.len() >= layout.rf as usize
                && !s.replicas.iter().any(|n| cluster.to_drain(*n))
        })
}

/// How many shards each node leads, for every registered node (0 for nodes leading none).
pub fn primaries_led(cluster: &Cluster) -> BTreeMap<NodeId, usize> {
    let mut led: BTreeMap<NodeId, usize> = cluster.nodes.keys().map(|n| (*n, 0)).collect();
    for s in cluster.shards.values() {
        if let Some(p) = s.replicas.first() {
            *led.entry(*p).or_default() += 1;
        }
    }
    led
}

/// The hand-offs of one balancing round, at most `limit` (see the module documentation).
/// Pure: the caller checks [`quiet`] and the interval.
pub fn plan(cluster: &Cluster, reports: &Reports, limit: usize) -> Vec<Rebalance> {
    let mut led: BTreeMap<NodeId, usize> = primaries_led(cluster)
        .into_iter()
        .filter(|(n, _)| cluster.nodes.get(n).is_some_and(accepts_replicas))
        .collect();
    let mut planned: Vec<Rebalance> = Vec::new();
    let mut taken: HashSet<ShardId> = HashSet::new();
    while planned.len() < limit {
        // The widest gap first; among equals the lowest shard, then the lowest target.
        let mut best: Option<(Rank, Rebalance)> = None;
        for s in cluster.shards.values() {
            let Some(&from) = s.replicas.first() else {
                continue;
            };
            let Some(&from_led) = led.get(&from) else {
                continue;
            };
            if taken.contains(&s.id) {
                continue;
            }
            for &to in &s.replicas[1..] {
                let Some(&to_led) = led.get(&to) else {
                    continue;
                };
                if from_led < to_led + 2 || !holds_current(cluster, reports, to, s) {
                    continue;
                }
                let rank = (from_led - to_led, Reverse((s.id, to)));
                if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                    let shard = s.id;
                    best = Some((rank, Rebalance { shard, from, to }));
                }
            }
        }
        let Some((_, r)) = best else {
            break;
        };
        *led.get_mut(&r.from).expect("source counted") -= 1;
        *led.get_mut(&r.to).expect("target counted") += 1;
        taken.insert(r.shard);
        planned.push(r);
    }
    planned
}

/// Whether `node` reports `shard` at the shard's current epoch: then it prepared every write
/// its primary committed and may take over without loss.
fn holds_current(cluster: &Cluster, reports: &Reports, node: NodeId, shard: &Shard) -> bool {
    reports.current(cluster, node, shard).is_some()
}

impl Control {
    /// One balancing round if one is due (see the module documentation): the number of
    /// primaries handed off.
    pub(crate) async fn balance_primaries(
        &self,
        cluster: &Cluster,
        meta: &dyn MetaStore,
        storage: &dyn StorageCalls,
        leader_since: Instant,
        now: Instant,
    ) -> Result<usize, ApiError> {
        let interval = std::time::Duration::from_millis(self.settings.balance_interval_ms);
        if interval.is_zero() || !quiet(cluster) {
            return Ok(0);
        }
        let due = self.with_memory(|mem| {
            let since = mem.balanced_at.unwrap_or(leader_since).max(leader_since);
            if now.saturating_duration_since(since) < interval {
                return false;
            }
            mem.balanced_at = Some(now);
            true
        });
        if !due {
            return Ok(0);
        }
        let reports = self.reports();
        let mut moved = 0;
        for r in plan(cluster, &reports, self.settings.max_balance_handoffs) {
            let Some(shard) = cluster.shards.get(&r.shard) else {
                continue;
            };
            if let Some((epoch, seq)) = self.hand_off(shard, r.to, cluster, meta, storage).await? {
                moved += 1;
                self.metrics.primaries_balanced.inc();
                tracing::info!(shard = %r.shard, from = %r.from, to = %r.to, epoch, seq, "primary handed off to balance leadership");
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
