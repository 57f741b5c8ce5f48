//! Emptying Draining nodes: pure planning over the records, and the leader's hand-offs.
//!
//! A node whose record is `Draining` (set by the risk policy or an operator) must end up
//! holding no replica, without a failed client request and without any shard dropping below
//! its replica count:
//!
//! 1. **Primaries first.** A shard whose primary is on a Draining node is handed off: the
//!    primary is asked to stop taking requests and let every write in flight commit
//!    (`DataRequest::HandOff`), then one transaction makes the best live secondary primary
//!    (epoch + 1), keeping the old primary as a secondary. Clients meanwhile get
//!    `Unavailable`, then a redirect, and retry: nothing fails. Every secondary of the
//!    configuration prepared every committed write (a primary commits only what all of them
//!    prepared), so any of them may take over; an Up one is preferred, then the one leading
//!    the fewest shards, then the highest prepared. If the write fails (the shard changed
//!    meanwhile), the old primary asks to be elected again at a new epoch after
//!    `handoff_timeout_ms` (`storage::replica`), and serves under that. Once the cluster
//!    is quiet, [`super::balance`] evens out what hand-offs and promotions left uneven.
//! 2. **One move per replica.** Each secondary replica on a Draining node gets a
//!    [`MigrationKind::Drain`] migration (from = the draining node), recorded before anything
//!    starts. Its commit replaces the source with the verified learner in one write (see
//!    [`super::steps`]), so moves per drain = replicas on the node, and no other replica
//!    moves.
//! 3. **A sole replica** (rf 1, or a shard down to its primary) has nobody to hand its role
//!    to, and at rf 1 a drain is the only thing between its data and the node's failure. Its
//!    move copies from the primary and commits by adding the verified copy beside it
//!    (replicas + to, the source kept); the hand-off of step 1 then makes the copy primary,
//!    and the source is left a secondary beyond the shard's count.
//! 4. **Surplus replicas leave without a copy.** A secondary of a shard above its count
//!    that keeps `rf` other replicas on Up nodes, heard from lately and acting under the
//!    shard's current epoch, is simply taken out of the configuration (epoch + 1,
//!    [`surplus_replica`]), one on a Draining node first: every replica holds every
//!    committed write, and the count never drops below `rf`. This ends step 3, a drain whose
//!    shard regained its count elsewhere meanwhile, and a sole replica's drain called off
//!    after its copy joined (the copy leaves again).
//!
//! Nodes drained by the risk policy wait while the storm guard is frozen
//! ([`Cluster::to_drain`]); an operator's drain goes on.
//!
//! The order is by risk × data at risk (the node's latest risk score times the shard's
//! size), then by risk alone (sizes are unknown until a shard's first verified copy), then by
//! shard id. Destinations are [`placement::pick`] (weighted rendezvous hashing by capacity,
//! rack spread, bounded-load cap) over nodes that accept replicas (Up, not cordoned) with room for the shard after the moves
//! already planned to them, excluding the shard's other members and, where possible, the
//! nodes earlier attempts failed on.
//!
//! **Copy source.** The learner chooses where it copies from (`storage::copy`): a secondary
//! whose node is Up before the primary, never a node that is not Up (Draining, Suspect) when
//! another replica exists. Since primaries are handed off first, the draining node is never
//! the primary when its move starts, so the copy comes from a healthy replica whenever the
//! shard has one.
//!
//! **Limits.** Shared with re-replication: `max_moves` in flight cluster-wide,
//! `max_moves_in_per_node` per destination, `max_moves_out_per_node` per copy source (the
//! healthy replica the learner copies from, [`super::plan::copy_source`]), and
//! the retry back-off after an abort. Bytes are throttled where they flow: every storage node
//! shares `copy.bytes_per_sec` (default 100 MiB/s, both directions) among at most
//! `copy.max_concurrent` copies, so one destination receives at most
//! `min(max_moves_in_per_node, copy.max_concurrent)` copies sharing that rate, and client
//! traffic is never queued behind them.

use super::balance::primaries_led;
use super::plan::{
    add_bytes, backing_off, copy_source, failed_attempts, has_room, racks_of, Occupancy,
    PlanContext,
};
use crate::control::cluster::{Cluster, Reports};
use crate::control::placement::{self, Candidate};
use crate::control::repair::reconfigure_txn;
use crate::control::store::{MetaStore, StorageCalls};
use crate::control::Control;
use augur_proto::data::ReplicaRole;
use augur_proto::model::ShardState;
use augur_proto::wire::ApiError;
use augur_proto::{
    Migration, MigrationId, MigrationKind, MigrationState, NodeId, NodeState, Shard,
};
use std::collections::BTreeMap;
use std::time::Instant;

/// The shards whose primary is on a node to empty now ([`Cluster::to_drain`]: Draining, and
/// not an automated drain held by the storm guard), in shard order.
pub fn primaries_to_hand_off(cluster: &Cluster) -> Vec<&Shard> {
    cluster
        .shards
        .values()
        .filter(|s| s.replicas.first().is_some_and(|p| cluster.to_drain(*p)))
        .collect()
}

/// The secondary that takes over `shard`'s primary role: live, not being drained itself
/// (two draining nodes would hand the role back and forth) and reporting the shard's current
/// epoch; an Up node before any other, then the one leading the fewest shards (`led`, see
/// [`super::balance::primaries_led`]: a drain spreads its primaries instead of piling them
/// on the lowest id), then the highest prepared sequence, then the lowest id. `None` when no
/// secondary qualifies: the shard keeps its primary until a drain move has replaced a
/// draining secondary with a node that can take over (or, for a sole replica, has added
/// one).
pub fn hand_off_target(
    shard: &Shard,
    cluster: &Cluster,
    reports: &Reports,
    led: &BTreeMap<NodeId, usize>,
) -> Option<NodeId> {
    shard
        .replicas
        .iter()
        .skip(1)
        .filter(|n| cluster.live(**n) && !cluster.to_drain(**n))
        .filter_map(|n| {
            let status = reports.current(cluster, *n, shard)?;
            let up = cluster.state(*n) == Some(NodeState::Up);
            let fewest = std::cmp::Reverse(led.get(n).copied().unwrap_or(0));
            Some(((up, fewest, status.prepared, std::cmp::Reverse(*n)), *n))
        })
        .max()
        .map(|(_, n)| n)
}

/// `shard` with `target` as primary at the next epoch; the other replicas, the old primary
/// included, stay as secondaries in their order.
pub fn handed_off(shard: &Shard, target: NodeId) -> Shard {
    let mut next = shard.clone();
    next.replicas = std::iter::once(target)
        .chain(shard.replicas.iter().copied().filter(|n| *n != target))
        .collect();
    next.epoch = shard.epoch + 1;
    next
}

/// A replica of `shard` that may leave without a copy (step 4 of the module documentation):
/// a secondary of a shard that is not being moved and has more than `rf` replicas, at least
/// `rf` of the others sound. Sound means on an Up node (a Draining or Suspect one may be
/// dying unseen: liveness only marks Up nodes late, so a silent one keeps its state until
/// declared Down), heard from within the leader's suspect period (`heard`), and reporting
/// the shard's current epoch; the primary, serving under it too. Secondaries on nodes to
/// empty go first (replica order); then, for a shard left above its count some other way
/// (a drain called off after its copy joined), the most recently added secondary.
pub fn surplus_replica(
    shard: &Shard,
    cluster: &Cluster,
    reports: &Reports,
    heard: &dyn Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let rf = cluster.layout.map(|l| l.rf as usize)?;
    if shard.state != ShardState::Stable || !shard.learners.is_empty() || shard.replicas.len() <= rf
    {
        return None;
    }
    let primary = shard.replicas[0];
    let sound = |n: NodeId| {
        cluster.state(n) == Some(NodeState::Up)
            && heard(n)
            && reports
                .current(cluster, n, shard)
                .is_some_and(|st| n != primary || (st.role == ReplicaRole::Primary && st.serving))
    };
    let secondaries = &shard.replicas[1..];
    let draining = secondaries.iter().filter(|n| cluster.to_drain(**n));
    let others = secondaries.iter().rev().filter(|n| !cluster.to_drain(**n));
    draining.chain(others).copied().find(|n| {
        shard
            .replicas
            .iter()
            .filter(|o| **o != *n && sound(**o))
            .count()
            >= rf
    })
}

/// Whether a drain of `node`'s replica of `shard` needs no copy: the shard is above its
/// count and keeps `rf` other replicas on Up nodes, so [`surplus_replica`] takes it out once
/// their reports say so (the records' view: a copy planned while a report is a pass late
/// would be wasted).
fn leaves_without_copy(shard: &Shard, node: NodeId, cluster: &Cluster, rf: usize) -> bool {
    shard.replicas.first() != Some(&node)
        && shard.replicas.len() > rf
        && shard
            .replicas
            .iter()
            .filter(|o| **o != node && cluster.state(**o) == Some(NodeState::Up))
            .count()
            >= rf
}

/// The key a move is ordered by, most urgent first: risk × data at risk, then risk.
fn urgency(cluster: &Cluster, node: NodeId, shard: &Shard) -> (f64, f64) {
    let risk = cluster.nodes.get(&node).map_or(0.0, |n| n.risk.score);
    (risk * shard.size_bytes as f64, risk)
}

/// The drain moves to record now, after the re-replication moves `already` planned in this
/// pass (they count against the same limits). Each comes back `Planned` with a fresh id,
/// ready for [`super::plan::create_txn`].
pub fn plan(ctx: &PlanContext<'_>, already: &[Migration]) -> Vec<Migration> {
    let cluster = ctx.cluster;
    let s = ctx.settings;
    let Some(layout) = cluster.layout else {
        return vec![];
    };
    let draining: Vec<NodeId> = cluster.draining().map(|n| n.id).collect();
    if draining.is_empty() {
        return vec![];
    }
    let Occupancy {
        mut total,
        mut moves_in,
        mut moves_out,
        mut incoming,
        moving,
        mut load,
        eligible,
        cap,
    } = Occupancy::of(
        cluster,
        layout.rf as usize,
        cluster.active_migrations().chain(already),
    );
    // Secondary replicas on draining nodes; primaries wait for their hand-off, except a
    // sole replica, which has nobody to hand its role to until its copy joins. Surplus
    // secondaries leave without a copy ([`surplus_replica`]).
    let mut wanted: Vec<(NodeId, &Shard)> = Vec::new();
    for sh in cluster.shards.values() {
        let first = if sh.replicas.len() == 1 { 0 } else { 1 };
        for n in sh.replicas.iter().skip(first) {
            if draining.contains(n) && !leaves_without_copy(sh, *n, cluster, layout.rf as usize) {
                wanted.push((*n, sh));
            }
        }
    }
    wanted.sort_by(|(na, a), (nb, b)| {
        let (ua, ub) = (urgency(cluster, *na, a), urgency(cluster, *nb, b));
        ub.0.total_cmp(&ua.0)
            .then(ub.1.total_cmp(&ua.1))
            .then(a.id.cmp(&b.id))
    });
    let mut next_id = cluster
        .migrations
        .iter()
        .chain(already)
        .map(|m| m.id.0)
        .max()
        .unwrap_or(0)
        + 1;
    let mut planned: Vec<Migration> = Vec::new();
    for (from, shard) in wanted {
        if total >= s.max_moves {
            break;
        }
        if shard.state != ShardState::Stable
            || moving.contains(&shard.id)
            || planned.iter().any(|m| m.shard == shard.id)
            || backing_off(ctx, shard.id)
        {
            continue;
        }
        let candidates: Vec<Candidate> = eligible
            .iter()
            .filter(|n| moves_in.get(&n.id).copied().unwrap_or(0) < s.max_moves_in_per_node)
            .filter(|n| has_room(n, &incoming, shard))
            .map(|n| Candidate {
                id: n.id,
                weight: n.capacity_bytes.max(1) as f64,
                rack: n.rack.clone(),
            })
            .collect();
        // The members that stay decide the racks to avoid; the source leaves.
        let staying: Vec<NodeId> = shard
            .replicas
            .iter()
            .chain(&shard.learners)
            .copied()
            .filter(|n| *n != from)
            .collect();
        let (attempts, tried) = failed_attempts(cluster, shard.id);
        let mut avoid = staying.clone();
        avoid.extend(&tried);
        let racks = racks_of(cluster, &staying);
        let to = placement::pick_beside(shard.id, &candidates, &avoid, &racks, 1, &load, cap)
            .first()
            .copied()
            .or_else(|| {
                placement::pick_beside(shard.id, &candidates, &staying, &racks, 1, &load, cap)
                    .first()
                    .copied()
            });
        let Some(to) = to.filter(|t| *t != from) else {
            continue;
        };
        // Rack spread outranks the per-node move limit: a drain is planned hours ahead, so
        // rather than put the replica in a rack the shard already uses for good, it waits
        // for a node in a new rack to finish a move, one placement would choose once free
        // (under the load cap). Re-replication does not wait.
        let shares_rack =
            |n: &augur_proto::Node| !n.rack.is_empty() && racks.contains(&n.rack.as_str());
        let to_shares_rack = eligible.iter().any(|n| n.id == to && shares_rack(n));
        if to_shares_rack
            && eligible.iter().any(|n| {
                !shares_rack(n)
                    && !avoid.contains(&n.id)
                    && n.id != from
                    && moves_in.get(&n.id).copied().unwrap_or(0) >= s.max_moves_in_per_node
                    && load.get(&n.id).copied().unwrap_or(0) < cap
                    && has_room(n, &incoming, shard)
            })
        {
            continue;
        }
        let source = copy_source(cluster, shard, to).unwrap_or(from);
        if moves_out.get(&source).copied().unwrap_or(0) >= s.max_moves_out_per_node {
            continue;
        }
        let risk = cluster.nodes.get(&from).map_or(0.0, |n| n.risk.score);
        planned.push(Migration {
            id: MigrationId(next_id),
            shard: shard.id,
            from,
            to,
            state: MigrationState::Planned,
            reason: format!("drain node {from} (risk {risk:.3}): replace its replica"),
            priority: 0,
            deadline_ms: ctx.now_ms.saturating_add(s.move_timeout_ms),
            bytes_copied: 0,
            bytes_total: shard.size_bytes,
            attempts: attempts + 1,
            kind: MigrationKind::Drain,
            started_ms: 0,
            rate_bytes_per_s: 0,
            version: 0,
        });
        next_id += 1;
        total += 1;
        *moves_in.entry(to).or_default() += 1;
        *moves_out.entry(source).or_default() += 1;
        add_bytes(&mut incoming, to, shard.size_bytes);
        *load.entry(to).or_default() += 1;
    }
    planned
}

impl Control {
    /// Hands off up to `max_handoffs_per_pass` primaries on Draining nodes (see the module
    /// documentation); the number of shards whose primary moved.
    pub(crate) async fn hand_off_primaries(
        &self,
        cluster: &Cluster,
        reports: &Reports,
        meta: &dyn MetaStore,
        storage: &dyn StorageCalls,
    ) -> Result<usize, ApiError> {
        let mut moved = 0;
        let mut led = primaries_led(cluster);
        let mut tried = 0;
        for shard in primaries_to_hand_off(cluster) {
            let old = shard.replicas[0];
            let Some(target) = hand_off_target(shard, cluster, reports, &led) else {
                tracing::debug!(shard = %shard.id, primary = %old, "no live secondary at the current epoch to hand the primary role to");
                continue;
            };
            // The pass's limit counts hand-offs tried, not shards without a target: those
            // would otherwise keep the shards after them waiting for ever.
            if tried == self.settings.max_handoffs_per_pass {
                break;
            }
            tried += 1;
            if let Some((epoch, seq)) = self.hand_off(shard, target, cluster, meta, storage).await?
            {
                moved += 1;
                *led.entry(target).or_default() += 1;
                self.metrics.hand_offs.inc();
                tracing::info!(shard = %shard.id, from = %old, to = %target, epoch, seq, "primary handed off from a draining node");
            }
        }
        Ok(moved)
    }

    /// Takes surplus replicas out of their shards (see [`surplus_replica`]), one per shard
    /// and up to `max_handoffs_per_pass` in a pass; the number of shards written. Each write
    /// compares the shard's record and those of the replicas it keeps, so a member declared
    /// Down (or Suspect) meanwhile makes it fail.
    pub(crate) async fn trim_surplus(
        &self,
        cluster: &Cluster,
        reports: &Reports,
        meta: &dyn MetaStore,
        now: Instant,
    ) -> Result<usize, ApiError> {
        let heard = |n: NodeId| self.heard_lately(n, now);
        let mut trimmed = 0;
        for shard in cluster.shards.values() {
            if trimmed == self.settings.max_handoffs_per_pass {
                break;
            }
            let Some(leaving) = surplus_replica(shard, cluster, reports, &heard) else {
                continue;
            };
            let mut next = shard.clone();
            next.replicas.retain(|n| *n != leaving);
            next.epoch = shard.epoch + 1;
            let kept = next.replicas.clone();
            let epoch = next.epoch;
            if meta
                .propose(reconfigure_txn(shard, next, &kept, cluster))
                .await?
                .succeeded
            {
                trimmed += 1;
                self.metrics.surplus_removed.inc();
                tracing::info!(shard = %shard.id, node = %leaving, epoch, draining = cluster.to_drain(leaving), "surplus replica taken out");
            }
        }
        Ok(trimmed)
    }

    /// Hands `shard`'s primary role to its secondary `target`: the primary is asked to stop
    /// taking requests and let every write in flight commit, then one write (comparing the
    /// shard's and `target`'s records) makes `target` primary at epoch + 1. The new epoch and
    /// the primary's last sequence, or `None` when the primary refused or the records
    /// changed meanwhile (after `handoff_timeout_ms` the old primary asks to be elected
    /// again at a new epoch).
    pub(crate) async fn hand_off(
        &self,
        shard: &Shard,
        target: NodeId,
        cluster: &Cluster,
        meta: &dyn MetaStore,
        storage: &dyn StorageCalls,
    ) -> Result<Option<(u64, u64)>, ApiError> {
        let Some(&old) = shard.replicas.first() else {
            return Ok(None);
        };
        let Some(addr) = cluster.nodes.get(&old).and_then(|n| n.addrs.first()) else {
            return Ok(None);
        };
        let seq = match storage
            .hand_off(
                addr,
                shard.id,
                shard.epoch,
                self.settings.handoff_timeout_ms,
            )
            .await
        {
            Ok(seq) => seq,
            Err(e) => {
                tracing::info!(shard = %shard.id, primary = %old, error = %e, "hand-off refused; retried next pass");
                return Ok(None);
            }
        };
        let next = handed_off(shard, target);
        let epoch = next.epoch;
        let txn = reconfigure_txn(shard, next, &[target], cluster);
        if meta.propose(txn).await?.succeeded {
            Ok(Some((epoch, seq)))
        } else {
            tracing::info!(shard = %shard.id, primary = %old, "records changed under a hand-off; after its timeout the primary asks to be elected again");
            Ok(None)
        }
    }
}

#[cfg(test)]
#[path = "drain_tests.rs"]
pub(super) mod tests;

#[cfg(test)]
#[path = "drain_surplus_tests.rs"]
mod surplus_tests;
