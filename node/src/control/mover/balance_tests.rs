//! Primary balancing: the planner over records, and rounds driven through the mover against
//! an in-memory metadata store and scripted storage nodes; the helpers the replica tests
//! (`balance_replica_tests.rs`) share.

use super::*;
use crate::control::cluster::fixtures::*;
use crate::control::mover::drain::tests::{addr, report_all};
use crate::control::settings::ControlSettings;
use crate::control::store::fake::{MemStore, Scripted};
use augur_proto::data::ReplicaRole;
use augur_proto::{Migration, MigrationId, MigrationKind, MigrationState, NodeState};
use std::collections::BTreeMap;
use std::time::Duration;

/// Every replica of every shard reports it at the shard's epoch.
pub(in crate::control::mover) fn all_current(c: &Cluster) -> Reports {
    let mut by_node: BTreeMap<u64, Vec<_>> = BTreeMap::new();
    for s in c.shards.values() {
        for (i, n) in s.replicas.iter().enumerate() {
            let role = if i == 0 {
                ReplicaRole::Primary
            } else {
                ReplicaRole::Secondary
            };
            by_node
                .entry(n.0)
                .or_default()
                .push(status(s.id.0, s.epoch, role, 10));
        }
    }
    let mut r = Reports::default();
    for (n, replicas) in by_node {
        report(&mut r, n, replicas);
    }
    r
}

/// `c` with the hand-offs applied (primary and secondary swap roles, epoch + 1).
fn apply(c: &mut Cluster, plan: &[Rebalance]) {
    for r in plan {
        let s = c.shards.get_mut(&r.shard).unwrap();
        assert_eq!(s.replicas[0], r.from);
        assert!(s.replicas[1..].contains(&r.to));
        *s = crate::control::mover::drain::handed_off(s, r.to);
    }
}

/// Three nodes holding six shards at epoch 4, all led by node 1.
fn all_led_by_node_1() -> Cluster {
    cluster(
        &[1, 2, 3],
        (1..=6).map(|i| shard(i, &[1, 2, 3], 4)).collect(),
        3,
    )
}

/// No shard cooling off.
pub(super) fn none() -> std::collections::HashSet<ShardId> {
    Default::default()
}

pub(super) fn led(c: &Cluster, nodes: &[u64]) -> Vec<usize> {
    let led = primaries_led(c);
    nodes.iter().map(|n| led[&NodeId(*n)]).collect()
}

#[test]
fn quiet_only_when_nothing_else_moves() {
    let base = cluster(&[1, 2, 3], vec![shard(1, &[1, 2, 3], 1)], 3);
    assert!(quiet(&base));
    let mut c = base.clone();
    c.layout = None;
    assert!(!quiet(&c), "no data plane yet");
    let mut c = base.clone();
    c.shards.get_mut(&ShardId(1)).unwrap().replicas.pop();
    assert!(!quiet(&c), "a shard below its replica count");
    let mut c = base.clone();
    c.shards
        .get_mut(&ShardId(1))
        .unwrap()
        .learners
        .push(NodeId(4));
    assert!(!quiet(&c), "a learner");
    let mut c = base.clone();
    c.shards.get_mut(&ShardId(1)).unwrap().state = ShardState::Moving(MigrationId(1));
    assert!(!quiet(&c), "a moving shard");
    let mut c = base.clone();
    c.nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Draining;
    assert!(!quiet(&c), "a node being drained");
    let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2, 3], 1)], 3);
    c.nodes.get_mut(&NodeId(4)).unwrap().state = NodeState::Draining;
    assert!(quiet(&c), "an emptied Draining node holds nothing up");
    let mut c = base.clone();
    c.migrations.push(Migration {
        id: MigrationId(1),
        shard: ShardId(1),
        from: NodeId(1),
        to: NodeId(2),
        state: MigrationState::Planned,
        reason: String::new(),
        priority: 0,
        deadline_ms: 0,
        bytes_copied: 0,
        bytes_total: 0,
        attempts: 1,
        kind: MigrationKind::Drain,
        started_ms: 0,
        rate_bytes_per_s: 0,
        version: 0,
    });
    assert!(!quiet(&c), "a migration in flight");
    c.migrations[0].state = MigrationState::Committed;
    assert!(quiet(&c), "a finished migration is history");
}

#[test]
fn a_round_spreads_the_primaries_of_the_busiest_node_evenly() {
    // Node 1 leads all six shards, each on all three nodes.
    let mut c = all_led_by_node_1();
    let r = all_current(&c);
    // One at a time: the widest gap, the lowest shard, the lowest target.
    assert_eq!(
        plan(&c, &r, 1, &none()),
        vec![Rebalance {
            shard: ShardId(1),
            from: NodeId(1),
            to: NodeId(2)
        }]
    );
    let p = plan(&c, &r, 10, &none());
    assert_eq!(p.len(), 4, "{p:?}");
    assert!(p.iter().all(|h| h.from == NodeId(1)));
    apply(&mut c, &p);
    assert_eq!(led(&c, &[1, 2, 3]), vec![2, 2, 2]);
    // Balanced: the next round plans nothing.
    assert!(plan(&c, &all_current(&c), 10, &none()).is_empty());
}

#[test]
fn one_primary_apart_is_balanced() {
    let shards = vec![
        shard(1, &[1, 2, 3], 1),
        shard(2, &[1, 2, 3], 1),
        shard(3, &[2, 1, 3], 1),
        shard(4, &[3, 1, 2], 1),
    ];
    let c = cluster(&[1, 2, 3], shards, 3);
    assert_eq!(led(&c, &[1, 2, 3]), vec![2, 1, 1]);
    assert!(plan(&c, &all_current(&c), 10, &none()).is_empty());
}

#[test]
fn only_up_uncordoned_nodes_with_the_current_epoch_take_part() {
    let shards = (1..=4).map(|i| shard(i, &[1, 3, 4], 2)).collect();
    let mut c = cluster(&[1, 3, 4], shards, 3);
    let mut r = all_current(&c);
    // Node 3 is cordoned: it takes no primary (a Suspect node neither: see below and
    // `shards_with_a_member_not_up_are_left_alone`).
    c.nodes.get_mut(&NodeId(3)).unwrap().cordoned = true;
    let p = plan(&c, &r, 10, &none());
    assert!(p.iter().all(|h| h.to == NodeId(4)), "{p:?}");
    assert_eq!(p.len(), 2, "4 / 0 -> 2 / 2 between nodes 1 and 4: {p:?}");
    // Node 4 reports the shards at an older epoch: it may lack committed writes.
    let stale: Vec<_> = (1..=4)
        .map(|i| status(i, 1, ReplicaRole::Secondary, 10))
        .collect();
    report(&mut r, 4, stale);
    assert!(plan(&c, &r, 10, &none()).is_empty());
    // A Suspect primary is not a source either: the risk policy decides about that node.
    let shards = (1..=4).map(|i| shard(i, &[2, 1, 3], 2)).collect();
    let mut c = cluster(&[1, 2, 3], shards, 3);
    let r = all_current(&c);
    c.nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Suspect;
    assert!(plan(&c, &r, 10, &none()).is_empty());
}

/// A small deterministic generator, so the property test below needs no dependency.
pub(super) fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn rounds_end_never_hand_a_primary_back_and_leave_no_improving_hand_off() {
    for mut seed in 1..200u64 {
        let nodes = 3 + lcg(&mut seed) % 5;
        let rf = 2 + lcg(&mut seed) % 2;
        let shards: Vec<_> = (1..=1 + lcg(&mut seed) % 40)
            .map(|i| {
                let mut members: Vec<u64> = (1..=nodes).collect();
                let mut picked = Vec::new();
                for _ in 0..rf {
                    let k = (lcg(&mut seed) % members.len() as u64) as usize;
                    picked.push(members.remove(k));
                }
                // Skew: most shards led by node 1 when it holds them.
                if let Some(pos) = picked.iter().position(|n| *n == 1) {
                    if !lcg(&mut seed).is_multiple_of(4) {
                        picked.swap(0, pos);
                    }
                }
                shard(i, &picked, 1)
            })
            .collect();
        let all: Vec<u64> = (1..=nodes).collect();
        let mut c = cluster(&all, shards, rf as u32);
        let squares = |c: &Cluster| primaries_led(c).values().map(|n| n * n).sum::<usize>();
        let mut rounds = 0;
        loop {
            let p = plan(&c, &all_current(&c), 3, &none());
            if p.is_empty() {
                break;
            }
            for h in &p {
                let before = squares(&c);
                apply(&mut c, std::slice::from_ref(h));
                assert!(squares(&c) < before, "seed {seed}: {h:?} did not help");
            }
            rounds += 1;
            assert!(rounds < 100, "seed {seed}: no end");
        }
        // Nothing left that one hand-off would improve.
        let l = primaries_led(&c);
        for s in c.shards.values() {
            for t in &s.replicas[1..] {
                assert!(
                    l[&s.replicas[0]] < l[t] + 2,
                    "seed {seed}: shard {} could still move to {t}",
                    s.id
                );
            }
        }
    }
}

// ---- through the mover ----

pub(super) fn settings() -> ControlSettings {
    ControlSettings {
        balance_interval_ms: 1_000,
        max_balance_handoffs: 2,
        ..Default::default()
    }
}

/// An in-memory store holding `c`, scripted storage nodes, and a control plane with
/// `settings` that has heard every replica report the shard's epoch.
pub(super) fn harness(c: &Cluster, settings: ControlSettings) -> (MemStore, Scripted, Control) {
    let store = MemStore::with(c);
    let storage = Scripted::default();
    let control = Control::for_tests(settings);
    report_all(&store, &storage, &control, &BTreeMap::new());
    (store, storage, control)
}

/// One mover pass `at_s` seconds into a leadership that began at `t0`.
pub(super) async fn pass(
    control: &Control,
    store: &MemStore,
    storage: &Scripted,
    t0: Instant,
    at_s: u64,
) {
    control
        .mover_tick(
            store,
            storage,
            t0,
            t0 + Duration::from_secs(at_s),
            1_000_000,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_mover_balances_a_quiet_cluster_a_few_primaries_per_interval() {
    let c = all_led_by_node_1();
    let (store, storage, control) = harness(&c, settings());
    let t0 = Instant::now();

    // A new leader waits one interval before judging.
    pass(&control, &store, &storage, t0, 0).await;
    assert!(storage.hand_offs.lock().unwrap().is_empty());
    pass(&control, &store, &storage, t0, 1).await;
    assert_eq!(
        storage.hand_offs.lock().unwrap().clone(),
        vec![
            (addr(NodeId(1)), ShardId(1), 4),
            (addr(NodeId(1)), ShardId(2), 4)
        ]
    );
    let now = store.read();
    assert_eq!(now.shards[&ShardId(1)].replicas[0], NodeId(2));
    assert_eq!(now.shards[&ShardId(1)].epoch, 5);
    assert_eq!(now.shards[&ShardId(2)].replicas[0], NodeId(3));
    assert_eq!(control.metrics.primaries_balanced.get(), 2);
    assert_eq!(control.metrics.hand_offs.get(), 0, "not a drain's hand-off");

    // Within the interval nothing more; after it, the rest.
    report_all(&store, &storage, &control, &BTreeMap::new());
    pass(&control, &store, &storage, t0, 1).await;
    assert_eq!(storage.hand_offs.lock().unwrap().len(), 2);
    pass(&control, &store, &storage, t0, 2).await;
    report_all(&store, &storage, &control, &BTreeMap::new());
    pass(&control, &store, &storage, t0, 3).await;
    assert_eq!(led(&store.read(), &[1, 2, 3]), vec![2, 2, 2]);
    assert_eq!(control.metrics.primaries_balanced.get(), 4);
    report_all(&store, &storage, &control, &BTreeMap::new());
    pass(&control, &store, &storage, t0, 10).await;
    assert_eq!(storage.hand_offs.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn balancing_waits_for_drains_and_off_means_off() {
    // Node 3 is being drained: its primaries leave by the drain, not by balancing.
    let shards = (1..=6).map(|i| shard(i, &[1, 2, 3], 4)).collect();
    let mut c = cluster(&[1, 2, 3, 4], shards, 3);
    c.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Draining;
    c.shards.get_mut(&ShardId(1)).unwrap().replicas = vec![NodeId(3), NodeId(1), NodeId(2)];
    let (store, storage, control) = harness(&c, settings());
    let t0 = Instant::now();
    pass(&control, &store, &storage, t0, 5).await;
    // Only the drain's hand-off (shard 1, led by node 3); shards 2..6 stay led by node 1.
    assert_eq!(
        storage.hand_offs.lock().unwrap().clone(),
        vec![(addr(NodeId(3)), ShardId(1), 4)]
    );
    assert_eq!(control.metrics.primaries_balanced.get(), 0);

    let c = all_led_by_node_1();
    let (store, storage, control) = harness(
        &c,
        ControlSettings {
            balance_interval_ms: 0,
            ..settings()
        },
    );
    pass(&control, &store, &storage, t0, 60).await;
    assert!(storage.hand_offs.lock().unwrap().is_empty());
    assert_eq!(store.read(), c);
}

#[tokio::test]
async fn a_failed_balancing_hand_off_leaves_its_shard_alone_for_a_while() {
    let c = all_led_by_node_1();
    let (store, storage, control) = harness(
        &c,
        ControlSettings {
            max_balance_handoffs: 1,
            ..settings()
        },
    );
    let t0 = Instant::now();
    // Shard 1's hand-off is refused: nothing changes, and the shard cools off.
    storage
        .refuse_hand_off
        .lock()
        .unwrap()
        .push(addr(NodeId(1)));
    pass(&control, &store, &storage, t0, 1).await;
    assert_eq!(store.read(), c);
    assert!(control.with_memory(|m| m.balance_backoff_until.contains_key(&ShardId(1))));
    // The next rounds take other shards.
    storage.refuse_hand_off.lock().unwrap().clear();
    for at in [2, 3] {
        pass(&control, &store, &storage, t0, at).await;
        report_all(&store, &storage, &control, &BTreeMap::new());
    }
    let asked: Vec<ShardId> = storage
        .hand_offs
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.1)
        .collect();
    assert_eq!(
        asked,
        vec![ShardId(2), ShardId(3)],
        "shard 1 is cooling off"
    );
    // Once the cooling is over it may be chosen again.
    let later = 3 + HANDOFF_COOLING.as_secs();
    for at in later..later + 3 {
        pass(&control, &store, &storage, t0, at).await;
        report_all(&store, &storage, &control, &BTreeMap::new());
    }
    assert_eq!(led(&store.read(), &[1, 2, 3]), vec![2, 2, 2]);
    assert!(storage
        .hand_offs
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.1 == ShardId(1)));
}
