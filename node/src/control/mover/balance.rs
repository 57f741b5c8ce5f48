//! Evening out, once failovers, drains, restarts and new nodes have made them uneven, how
//! many shards each healthy node leads and how many replicas it holds.
//!
//! ## Primaries
//!
//! A primary serves every request of its shard, reads included, so the node leading the most
//! shards takes the most client load. Initial placement spreads primaries evenly
//! ([`crate::control::placement`]), but every promotion and every drain hand-off moves
//! leadership, and without balancing nothing moves it back: after a few drains one node may
//! lead every shard (the jepsen-like `migrate` runs showed it) and the cluster serves at the
//! speed of that one node. TiKV's balance-leader scheduler does the same job; here the tool
//! is the drain's hand-off (the primary stops taking requests and lets every write in
//! flight commit, then one write makes the chosen secondary primary at epoch + 1), so clients
//! see a short `Unavailable` and a redirect, and retry.
//!
//! **When.** Only while the cluster is [`quiet`] (no move in flight, no learner, no shard
//! below its replica count, no replica on a node being drained) and the storm guard is not
//! frozen: re-replication and drains come first and would move primaries again anyway. Then
//! at most once every `balance_interval_ms` (0 turns primary balancing off), counted from
//! this member's leadership too, so a new leader hears every node's report before it judges.
//! The round reads the records afresh.
//!
//! **Which.** Only Up, uncordoned nodes take part, as sources and as targets: a Suspect or
//! Draining node is the risk policy's business, and a cordoned one is being emptied by hand.
//! Only shards whose members are all Up: a late secondary would stall the hand-off. Each
//! round plans at most `max_balance_handoffs` hand-offs, greedily: the shard whose primary
//! leads the most shards goes to its secondary leading the fewest, provided that secondary
//! reports the shard at its current epoch (so it holds every committed write) and leads at
//! least two fewer. A hand-off across a gap of two or more lowers the sum of the squared
//! counts, so balancing never moves a primary back and forth, and it stops where no single
//! hand-off helps: every pair of nodes sharing a shard within one primary of each other.
//!
//! **Failures.** A hand-off whose metadata write fails leaves the old primary paused until
//! `handoff_timeout_ms`, long enough for client requests with a short deadline to fail, so a
//! shard whose balancing hand-off failed is left alone for [`HANDOFF_COOLING`].
//!
//! ## Replicas
//!
//! A node that joins (a replacement the capacity hook asked for, a wiped disk back under a
//! new incarnation) or that was drained and then undrained holds nothing, and nothing but
//! failures and drains would ever give it data: its disk and its share of the client load
//! stay idle while the others fill. [`plan_moves`] (PD's balance-region in spirit) plans
//! [`MigrationKind::Balance`] moves, at most `max_balance_moves` in flight (0 turns replica
//! balancing off), while nothing but balancing moves is under way ([`settled`]) and the storm
//! guard is not frozen. Each replaces a secondary on a node above its share (shares by
//! capacity, over Up, uncordoned nodes) with a verified copy on a node below it, the furthest
//! pair first, if the move narrows their distance by more than one replica (so, for a fixed
//! set of nodes, the sum of squares falls and balancing ends), never lowers the shard's rack
//! spread, touches only shards whose members are all Up, fits the destination's capacity and
//! respects the move limits. The steps and the commit are a drain move's
//! ([`super::steps`]): the shard keeps its replica count throughout, and the source deletes
//! its copy after `stray_grace_ms`. Aborts back off on their own clock
//! (`MoverMemory::balance_backoff_until`), so optional work never delays a repair.

use super::plan::{
    add_bytes, backing_off, backoff, copy_source, has_room, history, Occupancy, PlanContext,
};
use crate::control::cluster::{accepts_replicas, Cluster, Reports};
use crate::control::store::{MetaStore, StorageCalls};
use crate::control::Control;
use augur_proto::model::ShardState;
use augur_proto::wire::ApiError;
use augur_proto::{
    Migration, MigrationId, MigrationKind, MigrationState, NodeId, NodeState, Shard, ShardId,
};
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

/// Whether nothing else is moving data or leadership: no migration in flight and the
/// cluster [`settled`].
pub fn quiet(cluster: &Cluster) -> bool {
    cluster.active_migrations().next().is_none() && settled(cluster)
}

/// Whether only balancing moves are under way: every migration in flight is a
/// [`MigrationKind::Balance`] move; every other shard is stable, without learners; every
/// shard is at its replica count; and no node being drained still holds a replica (an
/// emptied Draining node, say one waiting to be decommissioned, holds nothing up).
pub fn settled(cluster: &Cluster) -> bool {
    let Some(layout) = cluster.layout else {
        return false;
    };
    let mut balancing: HashSet<ShardId> = HashSet::new();
    for m in cluster.active_migrations() {
        if m.kind != MigrationKind::Balance {
            return false;
        }
        balancing.insert(m.shard);
    }
    cluster.shards.values().all(|s| {
        s.replicas.len() >= layout.rf as usize
            && !s.replicas.iter().any(|n| cluster.to_drain(*n))
            && (balancing.contains(&s.id)
                || (s.state == ShardState::Stable && s.learners.is_empty()))
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

/// The hand-offs of one balancing round, at most `limit` (see the module documentation),
/// leaving out the shards in `cooling` (a hand-off of theirs failed lately) and shards with
/// a member that is not Up (a late secondary would stall the hand-off). Pure: the caller
/// checks [`quiet`] and the interval.
pub fn plan(
    cluster: &Cluster,
    reports: &Reports,
    limit: usize,
    cooling: &HashSet<ShardId>,
) -> Vec<Rebalance> {
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
            if taken.contains(&s.id) || cooling.contains(&s.id) || !all_up(cluster, s) {
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

/// Whether every replica of `shard` is on an Up node.
fn all_up(cluster: &Cluster, shard: &Shard) -> bool {
    shard
        .replicas
        .iter()
        .all(|n| cluster.state(*n) == Some(NodeState::Up))
}

/// Whether `node` reports `shard` at the shard's current epoch: then it prepared every write
/// its primary committed and may take over without loss.
fn holds_current(cluster: &Cluster, reports: &Reports, node: NodeId, shard: &Shard) -> bool {
    reports.current(cluster, node, shard).is_some()
}

/// The replicas each node taking part in balancing (Up, uncordoned, with an address) will
/// hold once the balancing moves in flight commit.
pub fn replicas_held(cluster: &Cluster) -> BTreeMap<NodeId, usize> {
    let mut held: BTreeMap<NodeId, usize> = cluster
        .nodes
        .values()
        .filter(|n| accepts_replicas(n) && !n.addrs.is_empty())
        .map(|n| (n.id, 0))
        .collect();
    for s in cluster.shards.values() {
        for n in &s.replicas {
            if let Some(c) = held.get_mut(n) {
                *c += 1;
            }
        }
    }
    for m in cluster.active_migrations() {
        let Some(s) = cluster.shards.get(&m.shard) else {
            continue;
        };
        if m.kind != MigrationKind::Balance {
            continue;
        }
        if !s.replicas.contains(&m.to) {
            if let Some(c) = held.get_mut(&m.to) {
                *c += 1;
            }
        }
        if s.replicas.contains(&m.from) {
            if let Some(c) = held.get_mut(&m.from) {
                *c = c.saturating_sub(1);
            }
        }
    }
    held
}

/// The balancing moves to record now (see the module documentation), `Planned` with fresh
/// ids, ready for [`super::plan::create_txn`]. Pure: `ctx` says everything.
pub fn plan_moves(ctx: &PlanContext<'_>) -> Vec<Migration> {
    let (cluster, s) = (ctx.cluster, ctx.settings);
    let Some(layout) = cluster.layout else {
        return vec![];
    };
    if s.max_balance_moves == 0 || cluster.frozen() || !settled(cluster) {
        return vec![];
    }
    let in_flight = cluster
        .active_migrations()
        .filter(|m| m.kind == MigrationKind::Balance)
        .count();
    let mut room = s.max_balance_moves.saturating_sub(in_flight);
    let Occupancy {
        mut total,
        mut moves_in,
        mut moves_out,
        mut incoming,
        moving,
        ..
    } = Occupancy::of(cluster, layout.rf as usize, cluster.active_migrations());
    let mut held = replicas_held(cluster);
    let weight = |n: &NodeId| cluster.nodes.get(n).map_or(1, |r| r.capacity_bytes.max(1)) as f64;
    let all_weight: f64 = held.keys().map(weight).sum();
    let mut next_id = cluster.migrations.iter().map(|m| m.id.0).max().unwrap_or(0) + 1;
    let mut planned: Vec<Migration> = Vec::new();
    while room > 0 && total < s.max_moves {
        let all_held: usize = held.values().sum();
        // How far above its capacity share each node is, in replicas.
        let surplus = |n: &NodeId| held[n] as f64 - all_held as f64 * weight(n) / all_weight;
        let mut order: Vec<NodeId> = held.keys().copied().collect();
        order.sort_by(|a, b| surplus(b).total_cmp(&surplus(a)).then(a.cmp(b)));
        let mut found: Option<(&Shard, NodeId, NodeId, NodeId)> = None;
        'pairs: for from in &order {
            for to in order.iter().rev() {
                // Only a move that narrows the pair's distance by more than one replica.
                if surplus(from) - surplus(to) <= 1.0 + 1e-9 {
                    break;
                }
                if moves_in.get(to).copied().unwrap_or(0) >= s.max_moves_in_per_node {
                    continue;
                }
                for sh in cluster.shards.values() {
                    if !sh.replicas[1..].contains(from)
                        || sh.replicas.contains(to)
                        || sh.learners.contains(to)
                        || sh.state != ShardState::Stable
                        || moving.contains(&sh.id)
                        || planned.iter().any(|m| m.shard == sh.id)
                        || !all_up(cluster, sh)
                        || backing_off(ctx, sh.id)
                        || balance_backing_off(ctx, sh.id)
                        || !rack_spread_kept(cluster, sh, *from, *to)
                    {
                        continue;
                    }
                    let fits = cluster
                        .nodes
                        .get(to)
                        .is_some_and(|n| has_room(n, &incoming, sh));
                    let source = copy_source(cluster, sh, *to).unwrap_or(*from);
                    if !fits
                        || moves_out.get(&source).copied().unwrap_or(0) >= s.max_moves_out_per_node
                    {
                        continue;
                    }
                    found = Some((sh, *from, *to, source));
                    break 'pairs;
                }
            }
        }
        let Some((sh, from, to, source)) = found else {
            break;
        };
        let attempts = balance_attempts(cluster, sh.id);
        planned.push(Migration {
            id: MigrationId(next_id),
            shard: sh.id,
            from,
            to,
            state: MigrationState::Planned,
            reason: format!(
                "balance replicas: node {from} holds {}, node {to} holds {} (shares by capacity)",
                held[&from], held[&to]
            ),
            priority: 0,
            deadline_ms: ctx.now_ms.saturating_add(s.move_timeout_ms),
            bytes_copied: 0,
            bytes_total: sh.size_bytes,
            attempts: attempts + 1,
            kind: MigrationKind::Balance,
            started_ms: 0,
            rate_bytes_per_s: 0,
            version: 0,
        });
        next_id += 1;
        room -= 1;
        total += 1;
        *moves_in.entry(to).or_default() += 1;
        *moves_out.entry(source).or_default() += 1;
        add_bytes(&mut incoming, to, sh.size_bytes);
        *held.get_mut(&from).expect("source counted") -= 1;
        *held.get_mut(&to).expect("destination counted") += 1;
    }
    planned
}

/// Whether the shard waits out a balancing back-off: the one this leader set when a
/// balancing move or hand-off of it failed, or, when the shard's latest balancing move was
/// aborted under another leader, one counted from this leadership's start.
fn balance_backing_off(ctx: &PlanContext<'_>, shard: ShardId) -> bool {
    let until = ctx
        .memory
        .balance_backoff_until
        .get(&shard)
        .copied()
        .or_else(|| {
            let latest = history(ctx.cluster, shard).find(|m| m.kind == MigrationKind::Balance)?;
            (latest.state == MigrationState::Aborted)
                .then(|| ctx.leader_since + backoff(latest.attempts, ctx.settings))
        });
    until.is_some_and(|u| ctx.now < u)
}

/// Balancing moves of `shard` aborted in a row, newest first (other kinds aside).
fn balance_attempts(cluster: &Cluster, shard: ShardId) -> u32 {
    history(cluster, shard)
        .filter(|m| m.kind == MigrationKind::Balance)
        .take_while(|m| m.state == MigrationState::Aborted)
        .map(|m| m.attempts)
        .max()
        .unwrap_or(0)
}

/// Whether replacing `from` by `to` in `shard` keeps at least as many distinct racks among
/// its members.
fn rack_spread_kept(cluster: &Cluster, shard: &Shard, from: NodeId, to: NodeId) -> bool {
    let rack = |n: &NodeId| cluster.nodes.get(n).map(|r| r.rack.as_str());
    let staying: Vec<Option<&str>> = shard
        .replicas
        .iter()
        .chain(&shard.learners)
        .filter(|n| **n != from)
        .map(rack)
        .collect();
    let distinct = |extra: Option<&str>| {
        let mut all = staying.clone();
        all.push(extra);
        all.sort();
        all.dedup();
        all.len()
    };
    distinct(rack(&to)) >= distinct(rack(&from))
}

/// How long a shard is left alone after a balancing hand-off of it failed: each failed
/// hand-off pauses the shard's requests for `handoff_timeout_ms`, so balancing must not
/// repeat one every round.
pub const HANDOFF_COOLING: std::time::Duration = std::time::Duration::from_secs(60);

impl Control {
    /// One balancing round if one is due (see the module documentation): the number of
    /// primaries handed off. `pass` is the mover pass's view of the records; a round that is
    /// due plans from records read afresh, and none runs while the storm guard is frozen.
    pub(crate) async fn balance_primaries(
        &self,
        pass: &Cluster,
        meta: &dyn MetaStore,
        storage: &dyn StorageCalls,
        leader_since: Instant,
        now: Instant,
    ) -> Result<usize, ApiError> {
        let interval = std::time::Duration::from_millis(self.settings.balance_interval_ms);
        // The pass's own records rule out most passes (a drain, a repair) without a read.
        if interval.is_zero() || !quiet(pass) || pass.frozen() {
            return Ok(0);
        }
        let due = self.with_memory(|mem| {
            let since = mem.balanced_at.unwrap_or(leader_since).max(leader_since);
            now.saturating_duration_since(since) >= interval
        });
        if !due {
            return Ok(0);
        }
        let cluster = meta.cluster().await?;
        if !quiet(&cluster) || cluster.frozen() {
            return Ok(0);
        }
        let cooling: HashSet<ShardId> = self.with_memory(|mem| {
            mem.balanced_at = Some(now);
            mem.balance_backoff_until.retain(|_, until| now < *until);
            mem.balance_backoff_until.keys().copied().collect()
        });
        let reports = self.reports();
        let mut moved = 0;
        for r in plan(
            &cluster,
            &reports,
            self.settings.max_balance_handoffs,
            &cooling,
        ) {
            let Some(shard) = cluster.shards.get(&r.shard) else {
                continue;
            };
            match self.hand_off(shard, r.to, &cluster, meta, storage).await? {
                Some((epoch, seq)) => {
                    moved += 1;
                    self.metrics.primaries_balanced.inc();
                    tracing::info!(shard = %r.shard, from = %r.from, to = %r.to, epoch, seq, "primary handed off to balance leadership");
                }
                None => self.with_memory(|mem| {
                    mem.balance_backoff_until
                        .insert(r.shard, now + HANDOFF_COOLING);
                }),
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
#[path = "balance_tests.rs"]
pub(super) mod tests;

#[cfg(test)]
#[path = "balance_replica_tests.rs"]
mod replica_tests;
