//! Replica balancing: the planner over records (shares, limits, racks, termination), the
//! steps of a `Balance` move, and how balancing stays out of the way of repairs, drains and
//! the storm guard.

use super::tests::{all_current, harness, lcg, none, pass, settings};
use super::*;
use crate::control::cluster::fixtures::*;
use crate::control::mover::drain::tests::ctx;
use crate::control::settings::ControlSettings;
use augur_proto::data::ReplicaRole;
use augur_proto::{Migration, MigrationKind, MigrationState, NodeState};
use std::time::Duration;

/// Six shards on nodes 1-3 (primaries rotating), and an empty node 4.
fn with_empty_node() -> Cluster {
    let shards = (1..=6u64)
        .map(|i| {
            let p = 1 + i % 3;
            let others: Vec<u64> = (1..=3).filter(|n| *n != p).collect();
            shard(i, &[p, others[0], others[1]], 2)
        })
        .collect();
    cluster(&[1, 2, 3, 4], shards, 3)
}

/// `c` with each move committed as the mover would: `to` replaces `from`.
fn commit(c: &mut Cluster, moves: &[Migration]) {
    for m in moves {
        let s = c.shards.get_mut(&m.shard).unwrap();
        assert_ne!(
            s.replicas[0], m.from,
            "a balancing move never removes the primary"
        );
        assert!(!s.replicas.contains(&m.to));
        for r in s.replicas.iter_mut() {
            if *r == m.from {
                *r = m.to;
            }
        }
    }
}

fn held(c: &Cluster, nodes: &[u64]) -> Vec<usize> {
    let h = replicas_held(c);
    nodes.iter().map(|n| h[&NodeId(*n)]).collect()
}

#[test]
fn an_empty_node_takes_its_share_of_secondaries_from_the_fullest() {
    let mut c = with_empty_node();
    let mem = crate::control::mover::MoverMemory::default();
    let s = ControlSettings::default();
    assert_eq!(held(&c, &[1, 2, 3, 4]), vec![6, 6, 6, 0]);
    // At most max_balance_moves (2) in flight, from different nodes' secondaries.
    let p = plan_moves(&ctx(&c, &s, &mem));
    assert_eq!(p.len(), 2, "{p:?}");
    for m in &p {
        assert_eq!(
            (m.kind, m.to, m.state),
            (MigrationKind::Balance, NodeId(4), MigrationState::Planned)
        );
        assert_eq!(m.deadline_ms, 1_000_000 + s.move_timeout_ms);
    }
    assert_eq!((p[0].from, p[1].from), (NodeId(1), NodeId(2)));
    // To the end, committing each batch: 18 replicas over 4 equal nodes.
    let wide = ControlSettings {
        max_balance_moves: 10,
        ..Default::default()
    };
    let mut rounds = 0;
    loop {
        let p = plan_moves(&ctx(&c, &wide, &mem));
        if p.is_empty() {
            break;
        }
        commit(&mut c, &p);
        rounds += 1;
        assert!(rounds < 10);
    }
    let mut after = held(&c, &[1, 2, 3, 4]);
    after.sort();
    assert_eq!(after, vec![4, 4, 5, 5]);
    assert!(c.shards.values().all(|s| s.replicas.len() == 3));
}

#[test]
fn nothing_is_balanced_while_anything_else_moves_or_the_guard_is_frozen() {
    let c = with_empty_node();
    let mem = crate::control::mover::MoverMemory::default();
    let s = ControlSettings::default();
    assert!(!plan_moves(&ctx(&c, &s, &mem)).is_empty());
    let off = ControlSettings {
        max_balance_moves: 0,
        ..Default::default()
    };
    assert!(plan_moves(&ctx(&c, &off, &mem)).is_empty(), "turned off");
    let mut frozen = c.clone();
    frozen.storm.frozen = true;
    assert!(
        plan_moves(&ctx(&frozen, &s, &mem)).is_empty(),
        "storm guard"
    );
    let mut draining = c.clone();
    draining.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Draining;
    assert!(plan_moves(&ctx(&draining, &s, &mem)).is_empty(), "a drain");
    let mut under = c.clone();
    under.shards.get_mut(&ShardId(1)).unwrap().replicas.pop();
    assert!(
        plan_moves(&ctx(&under, &s, &mem)).is_empty(),
        "a repair to come"
    );
    // A cordoned or Suspect empty node is not a destination.
    for state in [NodeState::Suspect, NodeState::Up] {
        let mut out = c.clone();
        let n4 = out.nodes.get_mut(&NodeId(4)).unwrap();
        n4.state = state;
        n4.cordoned = state == NodeState::Up;
        assert!(plan_moves(&ctx(&out, &s, &mem)).is_empty(), "{state:?}");
    }
}

#[test]
fn moves_in_flight_count_against_the_limit_and_the_shares() {
    let mut c = with_empty_node();
    let mem = crate::control::mover::MoverMemory::default();
    let s = ControlSettings::default();
    let first = plan_moves(&ctx(&c, &s, &mem));
    c.migrations.push(first[0].clone());
    assert_eq!(held(&c, &[1, 2, 3, 4]), vec![5, 6, 6, 1]);
    let more = plan_moves(&ctx(&c, &s, &mem));
    assert_eq!(more.len(), 1, "one of two in flight already: {more:?}");
    assert_ne!(more[0].shard, first[0].shard);
    assert!(more[0].id.0 > first[0].id.0);
    // Another kind of move in flight holds balancing back altogether.
    c.migrations[0].kind = MigrationKind::Drain;
    assert!(plan_moves(&ctx(&c, &s, &mem)).is_empty());
}

#[test]
fn shares_follow_capacity_and_racks_are_never_narrowed() {
    // Node 4 has twice the capacity: it takes a replica of every shard it can.
    let mut c = with_empty_node();
    c.nodes.get_mut(&NodeId(4)).unwrap().capacity_bytes = 2 << 40;
    let mem = crate::control::mover::MoverMemory::default();
    let wide = ControlSettings {
        max_balance_moves: 10,
        max_moves_in_per_node: 10,
        ..Default::default()
    };
    for _ in 0..10 {
        let p = plan_moves(&ctx(&c, &wide, &mem));
        commit(&mut c, &p);
    }
    assert_eq!(held(&c, &[1, 2, 3, 4]), vec![4, 4, 4, 6]);

    // Node 4 in node 1's rack: only node 1's replicas may move there (moving node 2's or
    // 3's would leave a shard in two racks instead of three).
    let mut c = with_empty_node();
    c.nodes.get_mut(&NodeId(4)).unwrap().rack = "r1".into();
    let p = plan_moves(&ctx(&c, &wide, &mem));
    assert!(!p.is_empty());
    assert!(p.iter().all(|m| m.from == NodeId(1)), "{p:?}");
}

/// `node`'s report of `shard` replaced by one in `role` at the shard's epoch, holding `cp`.
fn with_checkpoint(
    r: &mut Reports,
    node: NodeId,
    shard: &Shard,
    role: ReplicaRole,
    cp: augur_proto::data::Checkpoint,
) {
    let mut st = status(shard.id.0, shard.epoch, role, 10);
    st.checkpoint = Some(cp);
    let mut others: Vec<_> = r
        .by_node
        .get(&node)
        .map(|x| x.replicas.clone())
        .unwrap_or_default();
    others.retain(|x| x.shard != shard.id);
    others.push(st);
    report(r, node.0, others);
}

#[test]
fn a_balancing_move_never_removes_a_primary() {
    use crate::control::mover::steps::{next_step, AbortReason, Step};
    let c = with_empty_node();
    let mem = crate::control::mover::MoverMemory::default();
    let s = ControlSettings::default();
    let m = plan_moves(&ctx(&c, &s, &mem))[0].clone();
    let r = all_current(&c);
    assert_eq!(next_step(&m, &c, &r, None, false), Step::Start);
    // Under way, a destination being drained ends the move, one only late with its
    // heartbeat (Suspect) does not, and neither does either end a drain move.
    let mut started = c.clone();
    let sh = started.shards.get_mut(&m.shard).unwrap();
    sh.learners.push(m.to);
    sh.state = ShardState::Moving(m.id);
    started.nodes.get_mut(&m.to).unwrap().state = NodeState::Suspect;
    let mut copying = m.clone();
    copying.state = MigrationState::Copying;
    assert_eq!(
        next_step(&copying, &started, &r, None, false),
        Step::Wait(crate::control::mover::steps::WAIT_COPYING)
    );
    started.nodes.get_mut(&m.to).unwrap().state = NodeState::Draining;
    assert_eq!(
        next_step(&copying, &started, &r, None, false),
        Step::Abort(AbortReason::Destination(m.to))
    );
    started.nodes.get_mut(&m.to).unwrap().state = NodeState::Suspect;
    copying.kind = MigrationKind::Drain;
    started.nodes.get_mut(&m.from).unwrap().state = NodeState::Draining;
    assert_eq!(
        next_step(&copying, &started, &r, None, false),
        Step::Wait(crate::control::mover::steps::WAIT_COPYING)
    );
    // The source became the primary before the move started: not needed any more.
    let mut promoted = c.clone();
    let sh = promoted.shards.get_mut(&m.shard).unwrap();
    *sh = crate::control::mover::drain::handed_off(sh, m.from);
    assert_eq!(
        next_step(&m, &promoted, &r, None, false),
        Step::Abort(AbortReason::NoLongerNeeded)
    );
    // ... or after the copy was verified: aborted, not committed.
    let mut sh = c.shards[&m.shard].clone();
    sh.learners.push(m.to);
    sh.state = ShardState::Moving(m.id);
    sh = crate::control::mover::drain::handed_off(&sh, m.from);
    let mut c2 = c.clone();
    c2.shards.insert(sh.id, sh.clone());
    let mut r = all_current(&c2);
    let cp = checkpoint(7, 0xabc);
    with_checkpoint(&mut r, m.from, &sh, ReplicaRole::Primary, cp);
    with_checkpoint(&mut r, m.to, &sh, ReplicaRole::Learner, cp);
    let mut moving = m.clone();
    moving.state = MigrationState::CatchingUp;
    let req = crate::control::mover::Requested {
        seq: 7,
        primary: m.from,
        epoch: sh.epoch,
    };
    assert_eq!(
        next_step(&moving, &c2, &r, Some(&req), false),
        Step::Abort(AbortReason::SourcePrimary(m.from))
    );
    // The same move with its source a secondary commits, and the commit drops the source.
    let mut sh2 = c.shards[&m.shard].clone();
    sh2.learners.push(m.to);
    sh2.state = ShardState::Moving(m.id);
    let primary = sh2.replicas[0];
    let mut c3 = c.clone();
    c3.shards.insert(sh2.id, sh2.clone());
    let mut r3 = all_current(&c3);
    with_checkpoint(&mut r3, primary, &sh2, ReplicaRole::Primary, cp);
    with_checkpoint(&mut r3, m.to, &sh2, ReplicaRole::Learner, cp);
    let req = crate::control::mover::Requested {
        seq: 7,
        primary,
        epoch: sh2.epoch,
    };
    let step = next_step(&moving, &c3, &r3, Some(&req), false);
    assert_eq!(step, Step::Commit(cp));
    let txn = crate::control::mover::commit_txn(&moving, &sh2, &cp, &c3, 1_000_000);
    let Some(augur_proto::Op::Put(augur_proto::Record::Shard(next))) = txn.ops.first() else {
        panic!("{txn:?}");
    };
    assert!(!next.replicas.contains(&m.from) && next.replicas.contains(&m.to));
    assert_eq!(next.replicas.len(), 3);
}

#[test]
fn replica_rounds_end_and_each_move_narrows_the_spread() {
    for mut seed in 1..150u64 {
        let nodes = 3 + lcg(&mut seed) % 5;
        let rf = 2 + lcg(&mut seed) % 2;
        let n_shards = 1 + lcg(&mut seed) % 30;
        // Replicas only on the first rf + 1 nodes: the rest join empty.
        let shards: Vec<_> = (1..=n_shards)
            .map(|i| {
                let mut members: Vec<u64> = (1..=(rf + 1).min(nodes)).collect();
                let mut picked = Vec::new();
                for _ in 0..rf {
                    let k = (lcg(&mut seed) % members.len() as u64) as usize;
                    picked.push(members.remove(k));
                }
                shard(i, &picked, 1)
            })
            .collect();
        let all: Vec<u64> = (1..=nodes).collect();
        let mut c = cluster(&all, shards, rf as u32);
        for n in &all {
            // Capacities 1 to 3 units: shares by capacity.
            c.nodes.get_mut(&NodeId(*n)).unwrap().capacity_bytes = (1 + n % 3) << 40;
        }
        let mem = crate::control::mover::MoverMemory::default();
        let s = ControlSettings {
            max_balance_moves: 1,
            ..Default::default()
        };
        let spread = |c: &Cluster| {
            let h = replicas_held(c);
            let w: f64 = c.nodes.values().map(|n| n.capacity_bytes as f64).sum();
            let total: usize = h.values().sum();
            h.iter()
                .map(|(n, k)| {
                    let d = *k as f64 - total as f64 * c.nodes[n].capacity_bytes as f64 / w;
                    d * d
                })
                .sum::<f64>()
        };
        let mut moves = 0;
        loop {
            let p = plan_moves(&ctx(&c, &s, &mem));
            if p.is_empty() {
                break;
            }
            let before = spread(&c);
            commit(&mut c, &p);
            assert!(
                spread(&c) < before,
                "seed {seed}: {p:?} did not narrow the spread"
            );
            moves += 1;
            assert!(moves < 200, "seed {seed}: no end");
        }
    }
}

#[tokio::test]
async fn the_storm_guard_holds_balancing() {
    let mut c = with_empty_node();
    c.storm.frozen = true;
    for s in c.shards.values_mut() {
        s.replicas.sort();
    }
    let (store, storage, control) = harness(&c, settings());
    let t0 = Instant::now();
    pass(&control, &store, &storage, t0, 5).await;
    assert!(storage.hand_offs.lock().unwrap().is_empty());
    assert!(store.read().migrations.is_empty());
    // A balancing move planned before the freeze does not start during it.
    let mut thawed = c.clone();
    thawed.storm.frozen = false;
    let mem = crate::control::mover::MoverMemory::default();
    let m = plan_moves(&ctx(&thawed, &ControlSettings::default(), &mem))[0].clone();
    use crate::control::mover::steps::{next_step, Step};
    assert!(matches!(
        next_step(&m, &c, &all_current(&c), None, false),
        Step::Wait(_)
    ));
}

#[test]
fn shards_with_a_member_not_up_are_left_alone() {
    // Primaries: node 3 is Suspect (late): no hand-off of a shard it is a member of.
    let shards = vec![
        shard(1, &[1, 2, 3], 1),
        shard(2, &[1, 2, 4], 1),
        shard(3, &[1, 2, 4], 1),
    ];
    let mut c = cluster(&[1, 2, 3, 4], shards, 3);
    let r = all_current(&c);
    c.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Suspect;
    let p = plan(&c, &r, 10, &none());
    assert!(p.iter().all(|h| h.shard != ShardId(1)), "{p:?}");
    assert!(!p.is_empty());
    // Replicas: the empty node 4 gets nothing of a shard with a Suspect member.
    let mut c = with_empty_node();
    c.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Suspect;
    let mem = crate::control::mover::MoverMemory::default();
    assert!(plan_moves(&ctx(&c, &ControlSettings::default(), &mem)).is_empty());
}

#[test]
fn a_move_keeps_its_source_when_the_shard_lost_another_member() {
    let c = with_empty_node();
    let mem = crate::control::mover::MoverMemory::default();
    let m = plan_moves(&ctx(&c, &ControlSettings::default(), &mem))[0].clone();
    let mut sh = c.shards[&m.shard].clone();
    sh.learners.push(m.to);
    // Another secondary died and was removed: two replicas, one of them the source.
    let other = *sh.replicas[1..].iter().find(|n| **n != m.from).unwrap();
    sh.replicas.retain(|n| *n != other);
    let txn = crate::control::mover::commit_txn(&m, &sh, &checkpoint(5, 1), &c, 1_000_000);
    let Some(augur_proto::Op::Put(augur_proto::Record::Shard(next))) = txn.ops.first() else {
        panic!("{txn:?}");
    };
    assert_eq!(next.replicas.len(), 3, "{next:?}");
    assert!(next.replicas.contains(&m.from) && next.replicas.contains(&m.to));
    assert!(next.learners.is_empty());
}

#[test]
fn a_move_keeps_its_source_while_another_member_is_on_a_dead_node() {
    let mut c = with_empty_node();
    let mem = crate::control::mover::MoverMemory::default();
    let m = plan_moves(&ctx(&c, &ControlSettings::default(), &mem))[0].clone();
    let mut sh = c.shards[&m.shard].clone();
    sh.learners.push(m.to);
    // Another member's node was declared Down; repair has not removed it yet. Dropping the
    // source would leave two live replicas of three.
    let other = *sh.replicas.iter().find(|n| **n != m.from).unwrap();
    c.nodes.get_mut(&other).unwrap().state = NodeState::Down;
    let txn = crate::control::mover::commit_txn(&m, &sh, &checkpoint(5, 1), &c, 1_000_000);
    let Some(augur_proto::Op::Put(augur_proto::Record::Shard(next))) = txn.ops.first() else {
        panic!("{txn:?}");
    };
    assert!(next.replicas.contains(&m.from) && next.replicas.contains(&m.to));
    assert_eq!(next.replicas.len(), 4, "{next:?}");
    // Kept or not, the source's staying does not spare the destination's record a compare:
    // declared Down since the pass read it, it must not join.
    let to_version = augur_proto::CompareTarget::VersionEq(c.nodes[&m.to].version);
    assert!(
        txn.compares
            .iter()
            .any(|cmp| cmp.key == augur_proto::Key::Node(m.to) && cmp.target == to_version),
        "destination not compared: {txn:?}"
    );
    // With every other member live, the source leaves in the same write.
    c.nodes.get_mut(&other).unwrap().state = NodeState::Up;
    let txn = crate::control::mover::commit_txn(&m, &sh, &checkpoint(5, 1), &c, 1_000_000);
    let Some(augur_proto::Op::Put(augur_proto::Record::Shard(next))) = txn.ops.first() else {
        panic!("{txn:?}");
    };
    assert!(!next.replicas.contains(&m.from) && next.replicas.contains(&m.to));
    assert_eq!(next.replicas.len(), 3, "{next:?}");
    // That count was made on node records read earlier: the write compares their versions,
    // so a member or the destination declared Down since makes it fail instead of leaving
    // the shard short.
    let kept = sh.replicas.iter().filter(|n| **n != m.from);
    for n in kept.chain(std::iter::once(&m.to)) {
        let version = c.nodes[n].version;
        assert!(
            txn.compares
                .iter()
                .any(|cmp| cmp.key == augur_proto::Key::Node(*n)
                    && cmp.target == augur_proto::CompareTarget::VersionEq(version)),
            "node {n} not compared: {txn:?}"
        );
    }
}

#[test]
fn balancing_aborts_neither_delay_nor_steer_a_repair() {
    use crate::control::mover::plan::{backing_off, failed_attempts};
    let mut c = with_empty_node();
    let mem = crate::control::mover::MoverMemory::default();
    let mut m = plan_moves(&ctx(&c, &ControlSettings::default(), &mem))[0].clone();
    m.state = MigrationState::Aborted;
    m.attempts = 3;
    c.migrations.push(m.clone());
    let s = ControlSettings::default();
    // The leader that aborted it backs balancing off the shard, on its own clock.
    let mut mem = crate::control::mover::MoverMemory::default();
    mem.balance_backoff_until
        .insert(m.shard, Instant::now() + Duration::from_secs(3600));
    assert_eq!(failed_attempts(&c, m.shard), (0, vec![]));
    assert!(!backing_off(&ctx(&c, &s, &mem), m.shard));
    // ... while balancing itself waits before trying the shard again.
    let again = plan_moves(&ctx(&c, &s, &mem));
    assert!(again.iter().all(|n| n.shard != m.shard), "{again:?}");
    assert!(!again.is_empty());
}
