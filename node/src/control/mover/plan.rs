//! Which shards get a new replica now, and where: pure functions over the records.
//!
//! A shard is a candidate when it has fewer replicas than the layout's `rf`, a live primary
//! to copy from, no move in flight and no retry wait pending. It is *due* once its loss is
//! `down_delay_ms` old:
//!
//! - if this leader removed the replica itself (it remembers which node and when), the age
//!   is the longer of the time since the removal and the time the node's record has been
//!   Down (`state_since_ms`, which survives leader changes);
//! - otherwise (a new leader: the loss happened under its predecessor) the shard is due at
//!   once when no node has been Down for less than `down_delay_ms` (whatever it lost, the
//!   delay has passed), and else `down_delay_ms` after this leader first saw it
//!   under-replicated: never early, at most one delay late.
//!
//! The destination is [`placement::pick`] over Up nodes with room for the shard, excluding
//! its replicas and learners, under the bounded-load cap, preferring nodes other than the
//! lost one and those a previous attempt failed on (each taken when nothing else is left). Moves respect `max_moves` (cluster), and per node
//! `max_moves_in_per_node` (destination) and `max_moves_out_per_node` (the shard's primary,
//! which the learner usually copies from). Most urgent first: fewest replicas, then shard id.

use super::MoverMemory;
use crate::control::cluster::Cluster;
use crate::control::placement::{self, Candidate, LOAD_FACTOR};
use crate::control::settings::ControlSettings;
use augur_proto::model::ShardState;
use augur_proto::{
    Compare, CompareTarget, Key, Migration, MigrationId, MigrationKind, MigrationState, NodeId,
    NodeState, Op, Record, Shard, ShardId, Txn,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the moves in flight already claim, and where replicas sit: every new move, of
/// either kind, is checked against the same limits.
pub(crate) struct Occupancy<'a> {
    /// Moves in flight.
    pub total: usize,
    /// Moves into each node.
    pub moves_in: HashMap<NodeId, usize>,
    /// Moves copying out of each node: the replica each move's learner copies from
    /// ([`copy_source`]).
    pub moves_out: HashMap<NodeId, usize>,
    /// Bytes on their way into each node.
    pub incoming: HashMap<NodeId, u64>,
    /// Shards with a move in flight.
    pub moving: Vec<ShardId>,
    /// Replicas and learners per node.
    pub load: HashMap<NodeId, usize>,
    /// Nodes that may receive a replica.
    pub eligible: Vec<&'a augur_proto::Node>,
    /// The bounded-load cap over the eligible nodes.
    pub cap: usize,
}

impl<'a> Occupancy<'a> {
    /// The occupancy of `cluster` with the moves `in_flight`.
    pub fn of<'m>(
        cluster: &'a Cluster,
        rf: usize,
        in_flight: impl Iterator<Item = &'m Migration>,
    ) -> Occupancy<'a> {
        let mut o = Occupancy {
            total: 0,
            moves_in: HashMap::new(),
            moves_out: HashMap::new(),
            incoming: HashMap::new(),
            moving: Vec::new(),
            load: HashMap::new(),
            eligible: Vec::new(),
            cap: 0,
        };
        for m in in_flight {
            o.total += 1;
            o.moving.push(m.shard);
            *o.moves_in.entry(m.to).or_default() += 1;
            add_bytes(&mut o.incoming, m.to, m.bytes_total);
            let source = cluster
                .shards
                .get(&m.shard)
                .and_then(|sh| copy_source(cluster, sh, m.to))
                .or(match m.kind {
                    MigrationKind::Drain | MigrationKind::Balance => Some(m.from),
                    MigrationKind::Restore => None,
                });
            if let Some(n) = source {
                *o.moves_out.entry(n).or_default() += 1;
            }
        }
        for sh in cluster.shards.values() {
            for n in sh.replicas.iter().chain(&sh.learners) {
                *o.load.entry(*n).or_default() += 1;
            }
        }
        o.eligible = cluster
            .nodes
            .values()
            .filter(|n| crate::control::cluster::accepts_replicas(n) && !n.addrs.is_empty())
            .collect();
        o.cap = placement::load_cap(cluster.shards.len(), rf, o.eligible.len(), LOAD_FACTOR);
        o
    }
}

/// Whether `node` has room for `shard` after the bytes already moving into it (`incoming`):
/// a capacity of 0 means unknown, and everything fits.
pub(crate) fn has_room(
    node: &augur_proto::Node,
    incoming: &HashMap<NodeId, u64>,
    shard: &Shard,
) -> bool {
    let after = node
        .used_bytes
        .saturating_add(incoming.get(&node.id).copied().unwrap_or(0))
        .saturating_add(shard.size_bytes);
    node.capacity_bytes == 0 || after <= node.capacity_bytes
}

/// The racks of `nodes` as their records name them, whatever their state.
pub(crate) fn racks_of<'a>(cluster: &'a Cluster, nodes: &[NodeId]) -> Vec<&'a str> {
    nodes
        .iter()
        .filter_map(|n| cluster.nodes.get(n))
        .map(|n| n.rack.as_str())
        .collect()
}

/// Adds `bytes` to `node`'s count of incoming bytes. The sizes come from storage nodes'
/// reports, so the sum saturates rather than wrap.
pub(crate) fn add_bytes(incoming: &mut HashMap<NodeId, u64>, node: NodeId, bytes: u64) {
    let n = incoming.entry(node).or_default();
    *n = n.saturating_add(bytes);
}

/// What planning reads besides the records.
pub struct PlanContext<'a> {
    /// The records.
    pub cluster: &'a Cluster,
    /// Delays and limits.
    pub settings: &'a ControlSettings,
    /// What this leader remembers of losses and aborts.
    pub memory: &'a MoverMemory,
    /// This leader's monotonic clock.
    pub now: Instant,
    /// Its wall clock (compared with records' `state_since_ms` and deadlines).
    pub now_ms: u64,
    /// When this member became leader.
    pub leader_since: Instant,
}

/// The wait before a shard's next attempt after `attempts` aborted ones: `move_backoff_ms`
/// doubled per further abort, at most `move_backoff_max_ms`.
pub fn backoff(attempts: u32, s: &ControlSettings) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    let ms = s.move_backoff_ms.saturating_mul(1 << doublings);
    Duration::from_millis(ms.min(s.move_backoff_max_ms))
}

/// The shard's migrations, newest first.
pub(crate) fn history(cluster: &Cluster, shard: ShardId) -> impl Iterator<Item = &Migration> {
    cluster
        .migrations
        .iter()
        .rev()
        .filter(move |m| m.shard == shard)
}

/// The shard's migrations newest first, without balancing moves: a balancing move is
/// optional, so its aborts neither delay a repair or a drain nor steer their destinations
/// (balancing keeps its own back-off, [`super::balance`]).
fn needed_history(cluster: &Cluster, shard: ShardId) -> impl Iterator<Item = &Migration> {
    history(cluster, shard).filter(|m| m.kind != MigrationKind::Balance)
}

/// Attempts since the shard's last committed move (the aborted ones after it), balancing
/// moves aside.
pub(crate) fn failed_attempts(cluster: &Cluster, shard: ShardId) -> (u32, Vec<NodeId>) {
    let mut attempts = 0;
    let mut tried = Vec::new();
    for m in needed_history(cluster, shard) {
        if m.state != MigrationState::Aborted {
            break;
        }
        attempts = attempts.max(m.attempts);
        tried.push(m.to);
    }
    (attempts, tried)
}

/// Whether the shard's loss is old enough to re-create it (see the module documentation).
pub fn due(ctx: &PlanContext<'_>, shard: ShardId) -> bool {
    let delay = Duration::from_millis(ctx.settings.down_delay_ms);
    let down_for = |n: NodeId| {
        ctx.cluster
            .nodes
            .get(&n)
            .filter(|r| r.state == NodeState::Down)
            .map(|r| Duration::from_millis(ctx.now_ms.saturating_sub(r.state_since_ms)))
    };
    if let Some((node, at)) = ctx.memory.lost.get(&shard) {
        let removed_for = ctx.now.saturating_duration_since(*at);
        return removed_for.max(down_for(*node).unwrap_or_default()) >= delay;
    }
    let recently_down = ctx
        .cluster
        .nodes
        .values()
        .any(|n| down_for(n.id).is_some_and(|d| d < delay));
    if !recently_down {
        return true;
    }
    let first_seen = ctx
        .memory
        .under_since
        .get(&shard)
        .copied()
        .unwrap_or(ctx.now);
    ctx.now.saturating_duration_since(first_seen) >= delay
}

/// Whether the shard waits out a retry delay: the one this leader set when it aborted a
/// move, or, for a move aborted under another leader, one counted from this leadership's
/// start.
pub(crate) fn backing_off(ctx: &PlanContext<'_>, shard: ShardId) -> bool {
    let until = ctx.memory.backoff_until.get(&shard).copied().or_else(|| {
        let latest = needed_history(ctx.cluster, shard).next()?;
        (latest.state == MigrationState::Aborted)
            .then(|| ctx.leader_since + backoff(latest.attempts, ctx.settings))
    });
    until.is_some_and(|u| ctx.now < u)
}

/// The shards that need a replica, most urgent first: fewer replicas than `rf`, a live
/// primary, no move in flight.
pub fn under_replicated(cluster: &Cluster) -> Vec<&Shard> {
    let Some(layout) = cluster.layout else {
        return vec![];
    };
    let mut out: Vec<&Shard> = cluster
        .shards
        .values()
        .filter(|s| s.replicas.len() < layout.rf as usize)
        .collect();
    out.sort_by_key(|s| (s.replicas.len(), s.id));
    out
}

/// Shards marked `Moving` by a migration that is not in flight (finished, or its record
/// gone): nothing else would clear the mark, and a marked shard gets no new move.
pub fn orphaned(cluster: &Cluster) -> Vec<&Shard> {
    let active: Vec<MigrationId> = cluster.active_migrations().map(|m| m.id).collect();
    cluster
        .shards
        .values()
        .filter(|s| matches!(s.state, ShardState::Moving(m) if !active.contains(&m)))
        .collect()
}

/// The replica a new learner `to` of `shard` copies from, as the learner itself picks it
/// (`storage::copy::pick_source`, first attempt): a secondary before the primary, an Up node
/// before any other. A draining node is therefore the source only when no healthy replica
/// is left, and the per-node limit on moves out (`max_moves_out_per_node`) falls on the
/// nodes whose disks and links the copies actually load.
pub(crate) fn copy_source(cluster: &Cluster, shard: &Shard, to: NodeId) -> Option<NodeId> {
    let order = shard
        .replicas
        .iter()
        .skip(1)
        .chain(shard.replicas.first())
        .copied()
        .filter(|n| *n != to);
    let up = |n: &NodeId| {
        cluster
            .nodes
            .get(n)
            .is_some_and(|r| r.state == augur_proto::NodeState::Up)
    };
    order.clone().find(up).or_else(|| order.clone().next())
}

/// The moves to start now. Each comes back `Planned`, with a fresh id, ready for
/// [`create_txn`].
pub fn plan(ctx: &PlanContext<'_>) -> Vec<Migration> {
    let cluster = ctx.cluster;
    let s = ctx.settings;
    let Some(layout) = cluster.layout else {
        return vec![];
    };
    let Occupancy {
        mut total,
        mut moves_in,
        mut moves_out,
        mut incoming,
        moving,
        mut load,
        eligible,
        cap,
    } = Occupancy::of(cluster, layout.rf as usize, cluster.active_migrations());
    let mut next_id = cluster.migrations.iter().map(|m| m.id.0).max().unwrap_or(0) + 1;
    let mut planned = Vec::new();
    for shard in under_replicated(cluster) {
        if total >= s.max_moves {
            break;
        }
        let Some(&primary) = shard.replicas.first() else {
            continue;
        };
        if !cluster.live(primary)
            || shard.state != ShardState::Stable
            || moving.contains(&shard.id)
            || backing_off(ctx, shard.id)
            || !due(ctx, shard.id)
        {
            continue;
        }
        let lost = ctx.memory.lost.get(&shard.id).map(|(n, _)| *n);
        let exclude: Vec<NodeId> = shard
            .replicas
            .iter()
            .chain(&shard.learners)
            .copied()
            .collect();
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
        let (attempts, tried) = failed_attempts(cluster, shard.id);
        // The node that lost the replica is avoided, not excluded: back Up, it may be the
        // only eligible destination (three nodes at rf 3, one restarted past the grace
        // period), and excluding it left the shard below rf for as long as this leader
        // led. Named a learner again, it clears its stale copy and copies afresh.
        let mut avoid = exclude.clone();
        avoid.extend(lost);
        avoid.extend(&tried);
        // The racks of the members that hold the shard, candidates or not (the lost
        // replica's is free again).
        let members: Vec<NodeId> = shard
            .replicas
            .iter()
            .chain(&shard.learners)
            .copied()
            .collect();
        let racks = racks_of(cluster, &members);
        let to = placement::pick_beside(shard.id, &candidates, &avoid, &racks, 1, &load, cap)
            .first()
            .copied()
            .or_else(|| {
                placement::pick_beside(shard.id, &candidates, &exclude, &racks, 1, &load, cap)
                    .first()
                    .copied()
            });
        let Some(to) = to else {
            continue;
        };
        let source = copy_source(cluster, shard, to).unwrap_or(primary);
        if moves_out.get(&source).copied().unwrap_or(0) >= s.max_moves_out_per_node {
            continue;
        }
        let (from, why) = match lost {
            Some(n) if n != to => (
                n,
                format!("restore rf {}: replica on node {n} lost", layout.rf),
            ),
            _ => (
                primary,
                format!(
                    "restore rf {}: lost replica unknown; copy source {primary}",
                    layout.rf
                ),
            ),
        };
        planned.push(Migration {
            id: MigrationId(next_id),
            shard: shard.id,
            from,
            to,
            state: MigrationState::Planned,
            reason: why,
            priority: layout.rf.saturating_sub(shard.replicas.len() as u32),
            deadline_ms: ctx.now_ms.saturating_add(s.move_timeout_ms),
            bytes_copied: 0,
            bytes_total: shard.size_bytes,
            attempts: attempts + 1,
            kind: MigrationKind::Restore,
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

/// The transaction that records `m` before anything starts: the id must be free and the
/// shard as planned; the shard's oldest finished migrations beyond `keep - 1` are deleted in
/// the same write, so the table stays bounded.
pub fn create_txn(m: &Migration, shard: &Shard, cluster: &Cluster, keep: usize) -> Txn {
    let mut ops = vec![Op::Put(Record::Migration(m.clone()))];
    let finished: Vec<&Migration> = history(cluster, m.shard)
        .filter(|old| !crate::control::cluster::is_active(old))
        .collect();
    for old in finished.iter().skip(keep.saturating_sub(1)) {
        ops.push(Op::Delete(Key::Migration(old.id)));
    }
    Txn {
        compares: vec![
            Compare {
                key: Key::Migration(m.id),
                target: CompareTarget::Absent,
            },
            Compare {
                key: Key::Shard(shard.id),
                target: CompareTarget::VersionEq(shard.version),
            },
        ],
        ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cluster::fixtures::*;

    fn ctx<'a>(
        cluster: &'a Cluster,
        settings: &'a ControlSettings,
        memory: &'a MoverMemory,
        now: Instant,
    ) -> PlanContext<'a> {
        PlanContext {
            cluster,
            settings,
            memory,
            now,
            now_ms: 1_000_000,
            leader_since: now - Duration::from_secs(3600),
        }
    }

    fn down(c: &mut Cluster, n: u64, since_ms: u64) {
        let r = c.nodes.get_mut(&NodeId(n)).unwrap();
        r.state = NodeState::Down;
        r.state_since_ms = since_ms;
    }

    fn settings() -> ControlSettings {
        ControlSettings {
            down_delay_ms: 60_000,
            ..Default::default()
        }
    }

    #[test]
    fn a_loss_is_repaired_only_after_the_down_delay() {
        let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2], 3)], 3);
        down(&mut c, 3, 1_000_000 - 10_000);
        let s = settings();
        let now = Instant::now();
        let mut mem = MoverMemory::default();
        mem.lost
            .insert(ShardId(1), (NodeId(3), now - Duration::from_secs(5)));
        assert!(plan(&ctx(&c, &s, &mem, now)).is_empty());
        // Down for 61 s by its record: due even though this leader removed it recently.
        down(&mut c, 3, 1_000_000 - 61_000);
        let p = plan(&ctx(&c, &s, &mem, now));
        assert_eq!(p.len(), 1);
        let m = &p[0];
        assert_eq!(
            (m.from, m.to, m.state),
            (NodeId(3), NodeId(4), MigrationState::Planned)
        );
        assert_eq!((m.attempts, m.priority, m.id), (1, 1, MigrationId(1)));
        assert_eq!(m.deadline_ms, 1_000_000 + s.move_timeout_ms);
    }

    #[test]
    fn a_new_leader_waits_unless_every_down_node_is_past_the_delay() {
        let mut c = cluster(&[1, 2, 4], vec![shard(1, &[1, 2], 3)], 3);
        c.nodes.insert(NodeId(3), node(3, NodeState::Up));
        down(&mut c, 3, 1_000_000 - 10_000);
        let s = settings();
        let now = Instant::now();
        let mut mem = MoverMemory::default();
        assert!(!due(&ctx(&c, &s, &mem, now), ShardId(1)));
        mem.under_since
            .insert(ShardId(1), now - Duration::from_secs(61));
        assert!(due(&ctx(&c, &s, &mem, now), ShardId(1)));
        mem.under_since.clear();
        down(&mut c, 3, 1_000_000 - 70_000);
        assert!(due(&ctx(&c, &s, &mem, now), ShardId(1)));
        // No Down node at all (a replica removed at its primary's request): due at once.
        c.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Up;
        assert!(due(&ctx(&c, &s, &mem, now), ShardId(1)));
    }

    #[test]
    fn destinations_skip_members_and_ineligible_nodes_and_limits_hold() {
        let shards = (1..=6).map(|i| shard(i, &[1], 1)).collect();
        let mut c = cluster(&[1, 2, 3, 4, 5], shards, 2);
        c.nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Draining;
        c.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Suspect;
        c.nodes.get_mut(&NodeId(4)).unwrap().used_bytes = c.nodes[&NodeId(4)].capacity_bytes;
        c.shards.get_mut(&ShardId(1)).unwrap().size_bytes = 1;
        let s = ControlSettings {
            down_delay_ms: 0,
            max_moves: 3,
            max_moves_in_per_node: 1,
            max_moves_out_per_node: 5,
            ..Default::default()
        };
        let mem = MoverMemory::default();
        let p = plan(&ctx(&c, &s, &mem, Instant::now()));
        // Only node 5 is eligible (4 is full for shard 1, and for the others takes one move);
        // one move in per node.
        let tos: Vec<u64> = p.iter().map(|m| m.to.0).collect();
        assert!(tos.iter().all(|t| *t == 4 || *t == 5), "{tos:?}");
        assert!(p.len() <= 2, "{p:?}");
        assert!(p.iter().all(|m| m.shard != ShardId(1) || m.to == NodeId(5)));
        let ids: Vec<u64> = p.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, (1..=p.len() as u64).collect::<Vec<_>>());
        // The cluster-wide cap counts moves already in flight.
        let mut busy = c.clone();
        let mut m = p[0].clone();
        m.shard = ShardId(6);
        busy.migrations = vec![m.clone(), m.clone(), m];
        assert!(plan(&ctx(&busy, &s, &mem, Instant::now())).is_empty());
    }

    /// Three nodes at rf 3: node 3 restarted past the grace period and lost its replica.
    /// Back Up, it is the only possible destination, and gets the restore.
    #[test]
    fn the_node_that_lost_the_replica_takes_it_back_when_no_other_can() {
        let c = cluster(&[1, 2, 3], vec![shard(1, &[1, 2], 3)], 3);
        let s = ControlSettings {
            down_delay_ms: 0,
            ..Default::default()
        };
        let now = Instant::now();
        let mut mem = MoverMemory::default();
        mem.lost.insert(ShardId(1), (NodeId(3), now));
        let p = plan(&ctx(&c, &s, &mem, now));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].to, NodeId(3));
        // With another node free, that one is preferred.
        let c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2], 3)], 3);
        let p = plan(&ctx(&c, &s, &mem, now));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].to, NodeId(4));
    }

    #[test]
    fn retries_back_off_and_prefer_another_destination() {
        let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2], 3)], 3);
        let s = ControlSettings {
            down_delay_ms: 0,
            ..Default::default()
        };
        let now = Instant::now();
        let mut mem = MoverMemory::default();
        let first = plan(&ctx(&c, &s, &mem, now)).remove(0);
        let mut aborted = first.clone();
        aborted.state = MigrationState::Aborted;
        c.migrations.push(aborted);
        mem.backoff_until.insert(ShardId(1), now + backoff(1, &s));
        assert!(plan(&ctx(&c, &s, &mem, now)).is_empty());
        let later = now + backoff(1, &s) + Duration::from_millis(1);
        let second = plan(&ctx(&c, &s, &mem, later)).remove(0);
        assert_ne!(second.to, first.to);
        assert_eq!(second.attempts, 2);
        assert_eq!(second.id, MigrationId(first.id.0 + 1));
        // Under a new leader with no memory, the wait counts from its start.
        mem.backoff_until.clear();
        let mut fresh = ctx(&c, &s, &mem, later);
        fresh.leader_since = later;
        assert!(plan(&fresh).is_empty());
        assert_eq!(backoff(1, &s), Duration::from_millis(5_000));
        assert_eq!(backoff(3, &s), Duration::from_millis(20_000));
        assert_eq!(backoff(30, &s), Duration::from_millis(300_000));
    }

    #[test]
    fn creation_prunes_old_history_and_compares_the_shard() {
        let mut c = cluster(&[1, 2, 3], vec![shard(1, &[1, 2], 3)], 3);
        for i in 1..=5 {
            let mut m = plan(&ctx(
                &c,
                &ControlSettings {
                    down_delay_ms: 0,
                    ..Default::default()
                },
                &MoverMemory::default(),
                Instant::now(),
            ))
            .remove(0);
            m.id = MigrationId(i);
            m.state = MigrationState::Aborted;
            c.migrations.push(m);
        }
        let mut m = c.migrations[4].clone();
        m.id = MigrationId(6);
        let txn = create_txn(&m, &c.shards[&ShardId(1)], &c, 4);
        // Keeps the 3 newest finished plus the new one.
        let deleted: Vec<&Op> = txn
            .ops
            .iter()
            .filter(|o| matches!(o, Op::Delete(_)))
            .collect();
        assert_eq!(deleted.len(), 2);
        assert!(txn
            .ops
            .contains(&Op::Delete(Key::Migration(MigrationId(1)))));
        assert_eq!(txn.compares.len(), 2);
    }
}
