//! Draining a shard's only replica (rf 1), and surplus replicas leaving without a copy: the
//! planner and [`surplus_replica`] over records, and the mover driven end to end against an
//! in-memory metadata store and scripted storage nodes.

use super::tests::{addr, ctx, report_all, verified_at_12};
use super::*;
use crate::control::cluster::fixtures::*;
use crate::control::mover::balance::tests::all_current as reported;
use crate::control::mover::steps::{next_step, Step};
use crate::control::mover::{commit_txn, MoverMemory};
use crate::control::settings::ControlSettings;
use crate::control::store::fake::{MemStore, Scripted};
use augur_proto::{MigrationId, Record, ShardId, StateOrigin};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn drained(nodes: &[u64], shards: Vec<Shard>, rf: u32, node: u64) -> Cluster {
    let mut c = cluster(nodes, shards, rf);
    c.nodes.get_mut(&NodeId(node)).unwrap().state = NodeState::Draining;
    c
}

#[test]
fn a_sole_replica_on_a_draining_node_gets_a_move_and_a_surplus_one_does_not() {
    let c = drained(
        &[1, 2, 3],
        vec![shard(1, &[2], 4), shard(2, &[1], 4), shard(3, &[3, 2], 5)],
        1,
        2,
    );
    let s = ControlSettings::default();
    let mem = MoverMemory::default();
    let p = plan(&ctx(&c, &s, &mem), &[]);
    // Shard 1's only replica moves; shard 3 keeps its count on node 3 without node 2's.
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].shard, p[0].from, p[0].kind),
        (ShardId(1), NodeId(2), MigrationKind::Drain)
    );
    assert_ne!(p[0].to, NodeId(2));
    assert_eq!(
        surplus_replica(&c.shards[&ShardId(3)], &c, &reported(&c), &ALL),
        Some(NodeId(2))
    );
    // Nobody to hand shard 1's role to yet.
    let led = BTreeMap::new();
    assert_eq!(
        hand_off_target(&c.shards[&ShardId(1)], &c, &reported(&c), &led),
        None
    );
}

/// Every node heard from lately.
const ALL: fn(NodeId) -> bool = |_| true;

#[test]
fn a_surplus_replica_leaves_only_while_rf_others_are_sound_and_current() {
    // rf 3 with four replicas, node 2 draining: it may leave.
    let c = drained(&[1, 2, 3, 4], vec![shard(1, &[1, 3, 4, 2], 6)], 3, 2);
    let sh = c.shards[&ShardId(1)].clone();
    let r = reported(&c);
    assert_eq!(surplus_replica(&sh, &c, &r, &ALL), Some(NodeId(2)));
    // Not without the others' reports under the current epoch.
    assert_eq!(surplus_replica(&sh, &c, &Reports::default(), &ALL), None);
    let mut old = c.clone();
    old.shards.get_mut(&ShardId(1)).unwrap().epoch = 7;
    assert_eq!(
        surplus_replica(&old.shards[&ShardId(1)], &old, &r, &ALL),
        None,
        "reports of epoch 6 say nothing of epoch 7"
    );
    // Not while another member has not been heard from lately, whatever its record says.
    assert_eq!(surplus_replica(&sh, &c, &r, &|n| n != NodeId(4)), None);
    // Nor while it is Suspect, late or at risk (liveness marks only Up nodes late: a silent
    // at-risk node keeps its state until declared Down), Draining itself, or Down.
    for (state, origin) in [
        (NodeState::Suspect, StateOrigin::Liveness),
        (NodeState::Suspect, StateOrigin::Policy),
        (NodeState::Draining, StateOrigin::Operator),
        (NodeState::Down, StateOrigin::Liveness),
    ] {
        let mut x = c.clone();
        let n4 = x.nodes.get_mut(&NodeId(4)).unwrap();
        n4.state = state;
        n4.cause.origin = origin;
        assert_eq!(surplus_replica(&sh, &x, &r, &ALL), None, "{state:?}");
    }
    // Nor while the primary is not serving under the current epoch (reconciling).
    let mut unserved = r.clone();
    for st in &mut unserved.by_node.get_mut(&NodeId(1)).unwrap().replicas {
        st.serving = false;
    }
    assert_eq!(surplus_replica(&sh, &c, &unserved, &ALL), None);
    // Not while the shard is being moved.
    let mut moving = sh.clone();
    moving.state = ShardState::Moving(MigrationId(3));
    assert_eq!(surplus_replica(&moving, &c, &r, &ALL), None);
    // Not at the count: three replicas at rf 3 need a copy first.
    let at_rf = drained(&[1, 2, 3, 4], vec![shard(1, &[1, 3, 2], 6)], 3, 2);
    assert_eq!(
        surplus_replica(&at_rf.shards[&ShardId(1)], &at_rf, &reported(&at_rf), &ALL),
        None
    );
    // Never the primary, which is handed off first; and the copy beside a draining primary
    // stays (the primary, Draining, is not counted).
    let primary = drained(&[1, 2, 3], vec![shard(1, &[2, 3], 6)], 1, 2);
    assert_eq!(
        surplus_replica(
            &primary.shards[&ShardId(1)],
            &primary,
            &reported(&primary),
            &ALL
        ),
        None
    );
    // A replica on a draining node goes before a later one.
    let first = drained(&[1, 2, 3], vec![shard(1, &[1, 2, 3], 6)], 1, 2);
    assert_eq!(
        surplus_replica(&first.shards[&ShardId(1)], &first, &reported(&first), &ALL),
        Some(NodeId(2))
    );
    // A shard above its count with nobody draining (a sole replica's drain called off after
    // its copy joined) loses its newest secondary.
    let undrained = cluster(&[1, 2, 3], vec![shard(1, &[3, 1, 2], 6)], 1);
    assert_eq!(
        surplus_replica(
            &undrained.shards[&ShardId(1)],
            &undrained,
            &reported(&undrained),
            &ALL
        ),
        Some(NodeId(2))
    );
}

#[test]
fn a_sole_replicas_move_commits_beside_its_source() {
    let mut sh = shard(1, &[2], 6);
    sh.learners = vec![NodeId(4)];
    sh.state = ShardState::Moving(MigrationId(9));
    let c = drained(&[1, 2, 3, 4], vec![sh.clone()], 1, 2);
    let mut m = migration(9, MigrationKind::Drain, MigrationState::CatchingUp);
    m.from = NodeId(2);
    m.to = NodeId(4);
    let (r, req) = verified_at_12();
    // The source is the primary, yet the commit does not wait for a hand-off it cannot have.
    let Step::Commit(cp) = next_step(&m, &c, &r, Some(&req), false) else {
        panic!("{:?}", next_step(&m, &c, &r, Some(&req), false));
    };
    assert!(!crate::control::mover::commit_drops_source(&m, &sh, &c));
    let txn = commit_txn(&m, &sh, &cp, &c, NOW_MS);
    let next = txn
        .ops
        .iter()
        .find_map(|op| match op {
            augur_proto::Op::Put(Record::Shard(s)) => Some(s.clone()),
            _ => None,
        })
        .expect("the shard's write");
    assert_eq!(next.replicas, vec![NodeId(2), NodeId(4)]);
    assert_eq!((next.epoch, next.learners.len()), (7, 0));
}

const NOW_MS: u64 = super::tests::NOW_MS;

#[tokio::test]
async fn a_draining_node_holding_sole_replicas_is_emptied_never_leaving_a_shard_without_one() {
    let c = drained(
        &[1, 2, 3],
        vec![shard(1, &[2], 3), shard(2, &[1], 3), shard(3, &[2], 3)],
        1,
        2,
    );
    let store = MemStore::with(&c);
    let storage = Scripted::default();
    let control = Control::for_tests(ControlSettings::default());
    let mut passes = 0;
    loop {
        // Every node reports what it holds, with a checkpoint at the sequence its primary
        // was last asked for.
        let seqs: BTreeMap<ShardId, u64> = storage
            .checkpoints
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, (_, shard, _))| (*shard, i as u64 + 1))
            .collect();
        report_all(&store, &storage, &control, &seqs);
        for n in 1..=3 {
            control.grants.note(NodeId(n), Instant::now());
        }
        let now = Instant::now();
        control
            .mover_tick(
                &store,
                &storage,
                now - Duration::from_secs(3600),
                now,
                NOW_MS,
            )
            .await
            .unwrap();
        let c = store.read();
        for sh in c.shards.values() {
            assert!(!sh.replicas.is_empty(), "{sh:?}");
        }
        let on_2 = c
            .shards
            .values()
            .filter(|s| s.replicas.contains(&NodeId(2)) || s.learners.contains(&NodeId(2)))
            .count();
        if on_2 == 0 {
            break;
        }
        passes += 1;
        assert!(
            passes < 20,
            "node 2 still holds {on_2} replicas: {:?}",
            c.shards
        );
    }
    let c = store.read();
    // One committed move per replica node 2 held, each followed by a hand-off and the
    // removal of the surplus replica; every shard back at one replica.
    let drains: Vec<_> = c
        .migrations
        .iter()
        .filter(|m| m.kind == MigrationKind::Drain)
        .collect();
    assert_eq!(drains.len(), 2, "{drains:?}");
    assert!(drains.iter().all(|m| m.state == MigrationState::Committed));
    for m in &drains {
        assert_eq!(c.shards[&m.shard].replicas, vec![m.to]);
    }
    assert_eq!(c.shards[&ShardId(2)].replicas, vec![NodeId(1)]);
    let handed: Vec<_> = storage.hand_offs.lock().unwrap().clone();
    assert_eq!(handed.len(), 2, "{handed:?}");
    assert!(handed.iter().all(|(a, _, _)| *a == addr(NodeId(2))));
    assert_eq!(control.metrics.hand_offs.get(), 2);
    assert_eq!(control.metrics.surplus_removed.get(), 2);
}
