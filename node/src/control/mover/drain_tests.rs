//! Draining: the planner over records, and the mover driven end to end against an in-memory
//! metadata store and scripted storage nodes (hand-off, moves, commit at RF, cancellation).

use super::*;
use crate::control::cluster::fixtures::*;
use crate::control::mover::plan::PlanContext;
use crate::control::mover::steps::{self, next_step, AbortReason, Step};
use crate::control::mover::MoverMemory;
use crate::control::settings::ControlSettings;
use crate::control::store::fake::{MemStore, Scripted};
use augur_proto::data::{NodeReport, ReplicaRole, ReplicaStatus};
use augur_proto::{Record, ShardId, ShardState, StateOrigin};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub(in crate::control::mover) const NOW_MS: u64 = 1_000_000;

/// A planning context at `NOW_MS` (1,000,000), an hour into this member's leadership.
pub(in crate::control::mover) fn ctx<'a>(
    cluster: &'a Cluster,
    settings: &'a ControlSettings,
    memory: &'a MoverMemory,
) -> PlanContext<'a> {
    let now = Instant::now();
    PlanContext {
        cluster,
        settings,
        memory,
        now,
        now_ms: NOW_MS,
        leader_since: now - Duration::from_secs(3600),
    }
}

fn set_state(c: &mut Cluster, n: u64, s: NodeState) {
    c.nodes.get_mut(&NodeId(n)).unwrap().state = s;
}

fn shards_of(p: &[Migration]) -> Vec<u64> {
    p.iter().map(|m| m.shard.0).collect()
}

#[test]
fn only_the_draining_nodes_secondaries_move_and_primaries_wait_for_hand_off() {
    let shards = vec![
        shard(1, &[1, 2, 3], 1), // 2 secondary: moves
        shard(2, &[2, 1, 3], 1), // 2 primary: handed off first, no move yet
        shard(3, &[1, 3, 4], 1), // not on 2: untouched
        shard(4, &[3, 4, 2], 1), // 2 secondary: moves
    ];
    let mut c = cluster(&[1, 2, 3, 4, 5, 6], shards, 3);
    set_state(&mut c, 2, NodeState::Draining);
    let s = ControlSettings {
        max_moves_out_per_node: 10,
        ..Default::default()
    };
    let mem = MoverMemory::default();
    let p = plan(&ctx(&c, &s, &mem), &[]);
    assert_eq!(shards_of(&p), vec![1, 4]);
    for m in &p {
        assert_eq!(
            (m.from, m.kind, m.state),
            (NodeId(2), MigrationKind::Drain, MigrationState::Planned)
        );
        let sh = &c.shards[&m.shard];
        assert!(!sh.replicas.contains(&m.to), "{m:?}");
        assert_eq!(c.state(m.to), Some(NodeState::Up));
        assert_eq!(m.deadline_ms, NOW_MS + s.move_timeout_ms);
    }
    assert_eq!(
        primaries_to_hand_off(&c)
            .iter()
            .map(|s| s.id.0)
            .collect::<Vec<_>>(),
        vec![2]
    );
    // Nothing drains when no node is Draining.
    set_state(&mut c, 2, NodeState::Up);
    assert!(plan(&ctx(&c, &s, &mem), &[]).is_empty());
    assert!(primaries_to_hand_off(&c).is_empty());
}

#[test]
fn the_storm_guard_holds_policy_drains_but_not_operator_drains() {
    let mut c = cluster(
        &[1, 2, 3, 4, 5],
        vec![shard(1, &[1, 2, 3], 1), shard(2, &[2, 1, 3], 1)],
        3,
    );
    set_state(&mut c, 2, NodeState::Draining);
    c.nodes.get_mut(&NodeId(2)).unwrap().cause.origin = StateOrigin::Policy;
    c.storm.frozen = true;
    let s = ControlSettings::default();
    let mem = MoverMemory::default();
    assert!(plan(&ctx(&c, &s, &mem), &[]).is_empty());
    assert!(primaries_to_hand_off(&c).is_empty());
    // A move planned before the freeze waits instead of starting.
    let mut open = c.clone();
    open.storm.frozen = false;
    let m = plan(&ctx(&open, &s, &mem), &[]).remove(0);
    let r = Reports::default();
    assert!(matches!(next_step(&m, &c, &r, None, false), Step::Wait(_)));
    assert_eq!(next_step(&m, &open, &r, None, false), Step::Start);
    // An operator's drain goes on.
    c.nodes.get_mut(&NodeId(2)).unwrap().cause.origin = StateOrigin::Operator;
    assert_eq!(shards_of(&plan(&ctx(&c, &s, &mem), &[])), vec![1]);
    assert_eq!(primaries_to_hand_off(&c).len(), 1);
}

#[test]
fn destinations_are_up_with_headroom_and_avoid_failed_attempts() {
    let mut c = cluster(&[1, 2, 3, 4, 5, 6, 7], vec![shard(1, &[1, 2, 3], 1)], 3);
    set_state(&mut c, 2, NodeState::Draining);
    set_state(&mut c, 4, NodeState::Suspect);
    c.nodes.get_mut(&NodeId(7)).unwrap().cordoned = true;
    c.shards.get_mut(&ShardId(1)).unwrap().size_bytes = 100;
    // Node 5 has no room for the shard after the move.
    let n5 = c.nodes.get_mut(&NodeId(5)).unwrap();
    n5.used_bytes = n5.capacity_bytes - 50;
    let s = ControlSettings::default();
    let mem = MoverMemory::default();
    let p = plan(&ctx(&c, &s, &mem), &[]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].to, NodeId(6));
    // Node 5 has room again, and 6 failed an earlier attempt: 5 is preferred.
    c.nodes.get_mut(&NodeId(5)).unwrap().used_bytes = 0;
    let mut failed = p[0].clone();
    failed.state = MigrationState::Aborted;
    c.migrations.push(failed);
    let p = plan(&ctx(&c, &s, &mem), &[]);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].to, p[0].attempts, p[0].id),
        (NodeId(5), 2, MigrationId(2))
    );
}

#[test]
fn limits_count_moves_in_flight_and_planned_this_pass() {
    let shards = (1..=6).map(|i| shard(i, &[1, 2], 1)).collect();
    let mut c = cluster(&[1, 2, 3, 4, 5, 6, 7], shards, 2);
    set_state(&mut c, 2, NodeState::Draining);
    let mem = MoverMemory::default();
    // Out of the draining node: the default limit at a time.
    let s = ControlSettings::default();
    let p = plan(&ctx(&c, &s, &mem), &[]);
    assert_eq!(p.len(), s.max_moves_out_per_node);
    // Cluster-wide cap, counting moves planned this pass (re-replication goes first).
    let s = ControlSettings {
        max_moves: 3,
        max_moves_out_per_node: 10,
        ..Default::default()
    };
    let p = plan(&ctx(&c, &s, &mem), &[]);
    assert_eq!(p.len(), 3);
    let first = plan(&ctx(&c, &s, &mem), &[]).remove(0);
    let p = plan(&ctx(&c, &s, &mem), std::slice::from_ref(&first));
    assert_eq!(p.len(), 2);
    assert!(p
        .iter()
        .all(|m| m.shard != first.shard && m.id.0 > first.id.0));
    // Into one node: 1 at a time, over the 5 destinations.
    let s = ControlSettings {
        max_moves_in_per_node: 1,
        max_moves_out_per_node: 10,
        ..Default::default()
    };
    let p = plan(&ctx(&c, &s, &mem), &[]);
    let mut tos: Vec<NodeId> = p.iter().map(|m| m.to).collect();
    tos.sort();
    tos.dedup();
    assert_eq!((p.len(), tos.len()), (5, 5));
    // Moves in flight count too.
    let mut busy = c.clone();
    let mut m = p[0].clone();
    m.state = MigrationState::Copying;
    busy.migrations.push(m);
    let s = ControlSettings::default();
    assert_eq!(
        plan(&ctx(&busy, &s, &mem), &[]).len(),
        s.max_moves_out_per_node - 1
    );
}

#[test]
fn moves_are_ordered_by_risk_times_data_at_risk() {
    let mut shards = vec![
        shard(1, &[1, 3], 1),
        shard(2, &[1, 2], 1),
        shard(3, &[4, 2], 1),
    ];
    shards[0].size_bytes = 1000;
    shards[1].size_bytes = 100;
    let mut c = cluster(&[1, 2, 3, 4, 5, 6], shards, 2);
    set_state(&mut c, 2, NodeState::Draining);
    set_state(&mut c, 3, NodeState::Draining);
    c.nodes.get_mut(&NodeId(2)).unwrap().risk.score = 0.9;
    c.nodes.get_mut(&NodeId(3)).unwrap().risk.score = 0.5;
    let s = ControlSettings {
        max_moves: 2,
        ..Default::default()
    };
    let mem = MoverMemory::default();
    // 0.5 x 1000 before 0.9 x 100 before 0.9 x 0.
    assert_eq!(shards_of(&plan(&ctx(&c, &s, &mem), &[])), vec![1, 2]);
    let s = ControlSettings::default();
    assert_eq!(shards_of(&plan(&ctx(&c, &s, &mem), &[])), vec![1, 2, 3]);
}

#[test]
fn the_hand_off_target_is_a_live_up_secondary_at_the_current_epoch() {
    let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[2, 3, 4], 5)], 3);
    set_state(&mut c, 2, NodeState::Draining);
    let sh = c.shards[&ShardId(1)].clone();
    let mut r = Reports::default();
    let none = BTreeMap::new();
    // No report at the current epoch: nobody.
    report(&mut r, 3, vec![status(1, 4, ReplicaRole::Secondary, 9)]);
    assert_eq!(hand_off_target(&sh, &c, &r, &none), None);
    report(&mut r, 3, vec![status(1, 5, ReplicaRole::Secondary, 9)]);
    report(&mut r, 4, vec![status(1, 5, ReplicaRole::Secondary, 9)]);
    assert_eq!(hand_off_target(&sh, &c, &r, &none), Some(NodeId(3)));
    // Among Up nodes, the one leading fewer shards, whatever its id or sequence.
    let led = BTreeMap::from([(NodeId(3), 5), (NodeId(4), 2)]);
    assert_eq!(hand_off_target(&sh, &c, &r, &led), Some(NodeId(4)));
    report(&mut r, 4, vec![status(1, 5, ReplicaRole::Secondary, 8)]);
    assert_eq!(hand_off_target(&sh, &c, &r, &led), Some(NodeId(4)));
    report(&mut r, 4, vec![status(1, 5, ReplicaRole::Secondary, 9)]);
    // An Up node before a Suspect one.
    set_state(&mut c, 3, NodeState::Suspect);
    assert_eq!(hand_off_target(&sh, &c, &r, &none), Some(NodeId(4)));
    let led = BTreeMap::from([(NodeId(3), 0), (NodeId(4), 9)]);
    assert_eq!(hand_off_target(&sh, &c, &r, &led), Some(NodeId(4)));
    // Never another draining node.
    let mut both = c.clone();
    set_state(&mut both, 4, NodeState::Draining);
    assert_eq!(hand_off_target(&sh, &both, &r, &none), Some(NodeId(3)));
    set_state(&mut both, 3, NodeState::Draining);
    assert_eq!(hand_off_target(&sh, &both, &r, &none), None);
    let next = handed_off(&sh, NodeId(4));
    assert_eq!(next.replicas, vec![NodeId(4), NodeId(2), NodeId(3)]);
    assert_eq!(next.epoch, 6);
}

#[test]
fn a_drain_move_never_commits_while_its_source_is_primary_and_stops_when_undrained() {
    let mut sh = shard(1, &[2, 1, 3], 6);
    sh.learners = vec![NodeId(4)];
    sh.state = ShardState::Moving(MigrationId(9));
    let mut c = cluster(&[1, 2, 3, 4], vec![sh], 3);
    set_state(&mut c, 2, NodeState::Draining);
    let m = Migration {
        id: MigrationId(9),
        shard: ShardId(1),
        from: NodeId(2),
        to: NodeId(4),
        state: MigrationState::CatchingUp,
        reason: String::new(),
        priority: 0,
        deadline_ms: NOW_MS * 2,
        bytes_copied: 0,
        bytes_total: 0,
        attempts: 1,
        kind: MigrationKind::Drain,
        started_ms: 0,
        rate_bytes_per_s: 0,
        version: 50,
    };
    let (r, req) = verified_at_12();
    assert!(matches!(
        next_step(&m, &c, &r, Some(&req), false),
        Step::Wait(_)
    ));
    set_state(&mut c, 2, NodeState::Up);
    assert_eq!(
        next_step(&m, &c, &r, Some(&req), false),
        Step::Abort(AbortReason::SourceNotDraining(NodeId(2)))
    );
    // A source that died is not undrained: the move goes on.
    set_state(&mut c, 2, NodeState::Down);
    assert!(!steps::undrained(&m, &c));
}

/// Shard 1's primary on node 2 and learner on node 4 report the same checkpoint at
/// sequence 12 under epoch 6, the checkpoint the mover asked node 2 for.
pub(in crate::control::mover) fn verified_at_12() -> (Reports, super::super::Requested) {
    let mut r = Reports::default();
    let mut p = status(1, 6, ReplicaRole::Primary, 20);
    p.checkpoint = Some(checkpoint(12, 0xabc));
    let mut l = status(1, 6, ReplicaRole::Learner, 20);
    l.checkpoint = Some(checkpoint(12, 0xabc));
    report(&mut r, 2, vec![p]);
    report(&mut r, 4, vec![l]);
    let req = super::super::Requested {
        seq: 12,
        primary: NodeId(2),
        epoch: 6,
    };
    (r, req)
}

// ---- end to end over the in-memory store ----

pub(in crate::control::mover) fn addr(n: NodeId) -> String {
    format!("127.0.0.1:{}", 9000 + n.0)
}

/// Every node reports every shard it holds at the shard's epoch (learners with their copy
/// complete), to the control plane and to the scripted probes, and has a heartbeat
/// acknowledged; with `seqs`, each shard's replicas and learners report a matching checkpoint
/// at its sequence.
pub(in crate::control::mover) fn report_all(
    store: &MemStore,
    storage: &Scripted,
    control: &Control,
    seqs: &BTreeMap<ShardId, u64>,
) {
    let c = store.read();
    let mut by_node: BTreeMap<NodeId, Vec<ReplicaStatus>> = BTreeMap::new();
    for sh in c.shards.values() {
        let members = sh.replicas.iter().enumerate().map(|(i, n)| {
            let role = if i == 0 {
                ReplicaRole::Primary
            } else {
                ReplicaRole::Secondary
            };
            (*n, role)
        });
        let learners = sh.learners.iter().map(|n| (*n, ReplicaRole::Learner));
        for (n, role) in members.chain(learners) {
            let mut st = status(sh.id.0, sh.epoch, role, 10);
            st.copied = true;
            st.checkpoint = seqs.get(&sh.id).map(|seq| checkpoint(*seq, 0xfeed));
            by_node.entry(n).or_default().push(st);
        }
    }
    for n in c.nodes.keys() {
        let rep = NodeReport {
            node: *n,
            incarnation: 7,
            node_epoch: 1,
            used_bytes: 0,
            capacity_bytes: 1 << 40,
            replicas: by_node.remove(n).unwrap_or_default(),
        };
        storage
            .reports
            .lock()
            .unwrap()
            .insert(addr(*n), rep.clone());
        control.record_probe(*n, Instant::now(), Ok(rep));
        // And acknowledged a heartbeat of each (commits count on members heard from lately).
        control.grants.note(*n, Instant::now());
    }
}

/// The sequence the scripted primaries gave each shard's latest checkpoint (they count 1, 2..).
fn checkpoint_seqs(storage: &Scripted) -> BTreeMap<ShardId, u64> {
    let asked = storage.checkpoints.lock().unwrap();
    asked
        .iter()
        .enumerate()
        .map(|(i, (_, shard, _))| (*shard, i as u64 + 1))
        .collect()
}

async fn tick(control: &Control, store: &MemStore, storage: &Scripted) {
    let now = Instant::now();
    control
        .mover_tick(store, storage, now - Duration::from_secs(3600), now, NOW_MS)
        .await
        .unwrap();
    // The shard never has fewer replicas than it had (3), whatever the step.
    for sh in store.read().shards.values() {
        assert_eq!(sh.replicas.len(), 3, "{sh:?}");
    }
}

#[tokio::test]
async fn a_draining_node_is_emptied_primaries_first_without_dropping_below_rf() {
    let mut c = cluster(
        &[1, 2, 3, 4, 5],
        vec![shard(1, &[2, 1, 3], 3), shard(2, &[1, 2, 3], 3)],
        3,
    );
    set_state(&mut c, 2, NodeState::Draining);
    let store = MemStore::with(&c);
    let storage = Scripted::default();
    let control = Control::for_tests(ControlSettings::default());
    report_all(&store, &storage, &control, &BTreeMap::new());

    // The primary on node 2 is handed off (asked at its epoch); node 3 takes over (node 1
    // already leads shard 2); then one move per replica of node 2 is recorded.
    tick(&control, &store, &storage).await;
    assert_eq!(
        storage.hand_offs.lock().unwrap().clone(),
        vec![(addr(NodeId(2)), ShardId(1), 3)]
    );
    let s1 = store.read().shards[&ShardId(1)].clone();
    assert_eq!(
        (s1.replicas.clone(), s1.epoch),
        (vec![NodeId(3), NodeId(2), NodeId(1)], 4)
    );
    assert_eq!(control.metrics.hand_offs.get(), 1);
    let ms = store.read().migrations;
    assert_eq!(ms.len(), 2);
    assert!(ms
        .iter()
        .all(|m| m.from == NodeId(2) && m.kind == MigrationKind::Drain));
    assert!(ms.iter().all(|m| m.state == MigrationState::Planned));

    // Learners join; then their copies complete; then both sides are checkpointed.
    tick(&control, &store, &storage).await;
    assert!(store
        .read()
        .migrations
        .iter()
        .all(|m| m.state == MigrationState::Copying && m.started_ms == NOW_MS));
    report_all(&store, &storage, &control, &BTreeMap::new());
    tick(&control, &store, &storage).await;
    assert!(store
        .read()
        .migrations
        .iter()
        .all(|m| m.state == MigrationState::CatchingUp));
    tick(&control, &store, &storage).await;
    assert_eq!(storage.checkpoints.lock().unwrap().len(), 2);
    report_all(&store, &storage, &control, &checkpoint_seqs(&storage));
    tick(&control, &store, &storage).await;

    // Committed: node 2 holds nothing, every shard has 3 replicas, its learner among them.
    let c = store.read();
    for m in &c.migrations {
        assert_eq!(m.state, MigrationState::Committed, "{m:?}");
        let sh = &c.shards[&m.shard];
        assert!(sh.replicas.contains(&m.to) && sh.learners.is_empty());
        assert_eq!(sh.state, ShardState::Stable);
        assert_eq!(m.bytes_copied, 1000);
    }
    assert!(c.shards.values().all(|s| !s.replicas.contains(&NodeId(2))));
    assert_eq!(control.metrics.moves_committed.get(), 2);
    assert_eq!(control.metrics.bytes_moved.get(), 2000);

    // Nothing more for the drain to do (balancing may now even out nodes 1, 3, 4 and 5).
    tick(&control, &store, &storage).await;
    let ms = store.read().migrations;
    assert_eq!(
        ms.iter().filter(|m| m.kind == MigrationKind::Drain).count(),
        2
    );
    assert!(ms
        .iter()
        .all(|m| m.kind == MigrationKind::Drain || m.kind == MigrationKind::Balance));
    assert_eq!(storage.hand_offs.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn undraining_cancels_unfinished_moves_and_removes_their_learners() {
    let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2, 3], 3)], 3);
    set_state(&mut c, 2, NodeState::Draining);
    let store = MemStore::with(&c);
    let storage = Scripted::default();
    let control = Control::for_tests(ControlSettings::default());
    tick(&control, &store, &storage).await;
    tick(&control, &store, &storage).await;
    let s = store.read().shards[&ShardId(1)].clone();
    assert_eq!((s.learners.clone(), s.epoch), (vec![NodeId(4)], 4));

    // The operator (or the policy) undrains node 2.
    let mut n2 = store.read().nodes[&NodeId(2)].clone();
    n2.state = NodeState::Up;
    store.put(Record::Node(n2));
    tick(&control, &store, &storage).await;
    let c = store.read();
    let s = &c.shards[&ShardId(1)];
    assert_eq!(s.replicas, vec![NodeId(1), NodeId(2), NodeId(3)]);
    assert!(s.learners.is_empty());
    assert_eq!((s.epoch, s.state), (5, ShardState::Stable));
    assert_eq!(c.migrations.len(), 1);
    assert_eq!(c.migrations[0].state, MigrationState::Aborted);
    assert_eq!(control.metrics.moves_aborted.get(), 1);
    // Nothing new is planned for an Up node.
    tick(&control, &store, &storage).await;
    assert_eq!(store.read().migrations.len(), 1);
}

#[tokio::test]
async fn a_refused_hand_off_changes_nothing_and_is_retried() {
    let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[2, 1, 3], 3)], 3);
    set_state(&mut c, 2, NodeState::Draining);
    let store = MemStore::with(&c);
    let storage = Scripted::default();
    storage
        .refuse_hand_off
        .lock()
        .unwrap()
        .push(addr(NodeId(2)));
    let control = Control::for_tests(ControlSettings::default());
    report_all(&store, &storage, &control, &BTreeMap::new());
    tick(&control, &store, &storage).await;
    let s = store.read().shards[&ShardId(1)].clone();
    assert_eq!((s.replicas[0], s.epoch), (NodeId(2), 3));
    // The primary's replica is not moved while it is primary.
    assert!(store.read().migrations.is_empty());
    storage.refuse_hand_off.lock().unwrap().clear();
    tick(&control, &store, &storage).await;
    let s = store.read().shards[&ShardId(1)].clone();
    assert_eq!((s.replicas[0], s.epoch), (NodeId(1), 4));
    assert_eq!(store.read().migrations.len(), 1);
}

/// A commit that would drop its source waits until every member it counts on has been heard
/// from lately: node 3 here may be Up in its record and still have fallen silent.
#[tokio::test]
async fn a_commit_dropping_its_source_waits_for_members_heard_from_lately() {
    let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2, 3], 3)], 3);
    set_state(&mut c, 2, NodeState::Draining);
    let store = MemStore::with(&c);
    let storage = Scripted::default();
    let control = Control::for_tests(ControlSettings::default());
    report_all(&store, &storage, &control, &BTreeMap::new());
    tick(&control, &store, &storage).await; // planned
    tick(&control, &store, &storage).await; // learner added
    report_all(&store, &storage, &control, &BTreeMap::new());
    tick(&control, &store, &storage).await; // copied
    tick(&control, &store, &storage).await; // checkpoint asked
    report_all(&store, &storage, &control, &checkpoint_seqs(&storage));
    control.grants.clear();
    for n in [1, 2, 4] {
        control.grants.note(NodeId(n), Instant::now());
    }
    tick(&control, &store, &storage).await;
    let state = |store: &MemStore| store.read().migrations[0].state;
    assert_eq!(state(&store), MigrationState::CatchingUp);
    assert!(store.read().shards[&ShardId(1)]
        .replicas
        .contains(&NodeId(2)));
    control.grants.note(NodeId(3), Instant::now());
    tick(&control, &store, &storage).await;
    assert_eq!(state(&store), MigrationState::Committed);
    assert!(!store.read().shards[&ShardId(1)]
        .replicas
        .contains(&NodeId(2)));
}

/// A member silent since a mover pass began does not pass for one heard lately because the
/// pass took its `now` before seconds of storage calls: freshness is judged by the clock at
/// the moment the write is decided.
#[test]
fn heard_lately_is_judged_by_the_clock_not_by_when_the_pass_began() {
    let settings = ControlSettings::default();
    let control = Control::for_tests(settings.clone());
    let silent = Duration::from_millis(settings.suspect_after_ms + 1_000);
    let Some(then) = Instant::now().checked_sub(silent) else {
        return; // a clock too young to look back that far
    };
    control.grants.note(NodeId(1), then);
    let pass_began = then + Duration::from_millis(1);
    assert!(!control.heard_lately(NodeId(1), pass_began));
    control.grants.note(NodeId(1), Instant::now());
    assert!(control.heard_lately(NodeId(1), pass_began));
}

/// Rack spread outranks the move limit: with every node in a rack new to the shard busy, a
/// drain waits for one rather than put the replica beside the member that stays.
#[test]
fn a_drain_waits_for_a_busy_node_in_a_new_rack_rather_than_share_one() {
    let shards = vec![
        shard(1, &[1, 2], 1),
        shard(2, &[3, 4], 1),
        shard(3, &[5, 4], 1),
    ];
    let mut c = cluster(&[1, 2, 3, 4, 5], shards, 2);
    for (n, rack) in [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b")] {
        c.nodes.get_mut(&NodeId(n)).unwrap().rack = rack.into();
    }
    set_state(&mut c, 2, NodeState::Draining);
    let mem = MoverMemory::default();
    let s = ControlSettings {
        max_moves_in_per_node: 1,
        ..Default::default()
    };
    // Shard 1 keeps node 1 (rack a): nodes 3 and 5 (racks c and b) are free, one is chosen.
    let p = plan(&ctx(&c, &s, &mem), &[]);
    assert_eq!(shards_of(&p), [1]);
    assert!(matches!(p[0].to, NodeId(3) | NodeId(5)), "{:?}", p[0].to);
    // Both busy with a move each: node 4 is free but shares rack a, so the drain waits.
    let mut busy = c.clone();
    for (sh, to) in [(2, 5), (3, 3)] {
        let mut m = p[0].clone();
        m.id = MigrationId(100 + sh);
        m.shard = ShardId(sh);
        m.from = NodeId(4);
        m.to = NodeId(to);
        m.state = MigrationState::Copying;
        busy.migrations.push(m);
    }
    assert!(plan(&ctx(&busy, &s, &mem), &[]).is_empty());
    // Without racks node 4 is as good as any, and the drain goes on.
    for n in busy.nodes.values_mut() {
        n.rack.clear();
    }
    let p = plan(&ctx(&busy, &s, &mem), &[]);
    assert_eq!((shards_of(&p), p[0].to), (vec![1], NodeId(4)));
}
