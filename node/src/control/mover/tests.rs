//! The mover driven end to end against an in-memory metadata store and scripted storage
//! nodes: every step, a leader change in the middle, and an abort with its retry.

use super::*;
use crate::control::cluster::fixtures::*;
use crate::control::settings::ControlSettings;
use crate::control::store::fake::{MemStore, Scripted};
use augur_proto::data::{NodeReport, ReplicaRole, ReplicaStatus};
use augur_proto::NodeState;
use std::time::Duration;

const NOW_MS: u64 = 1_000_000;

fn settings() -> ControlSettings {
    ControlSettings {
        down_delay_ms: 0,
        ..Default::default()
    }
}

/// Shard 1 on [1, 2] at epoch 3, rf 3; node 3 Down long ago; nodes 4.. Up.
fn setup(nodes: &[u64]) -> MemStore {
    let mut c = cluster(nodes, vec![shard(1, &[1, 2], 3)], 3);
    let n3 = c.nodes.get_mut(&NodeId(3)).unwrap();
    n3.state = NodeState::Down;
    n3.state_since_ms = 0;
    MemStore::with(&c)
}

fn addr(n: u64) -> String {
    format!("127.0.0.1:{}", 9000 + n)
}

fn node_report(n: u64, replicas: Vec<ReplicaStatus>) -> NodeReport {
    NodeReport {
        node: NodeId(n),
        incarnation: 7,
        node_epoch: 1,
        used_bytes: 0,
        capacity_bytes: 1 << 40,
        replicas,
    }
}

/// The learner `n` reports shard 1 at `epoch` with its copy complete.
fn learner_copied(control: &Control, n: u64, epoch: u64) {
    let mut s = status(1, epoch, ReplicaRole::Learner, 10);
    s.copied = true;
    control.record_probe(NodeId(n), Instant::now(), Ok(node_report(n, vec![s])));
}

/// Primary 1 and learner `learner` answer probes with a checkpoint at `seq`.
fn script_checkpoints(storage: &Scripted, learner: u64, epoch: u64, seq: u64, crcs: (u64, u64)) {
    let mut p = status(1, epoch, ReplicaRole::Primary, seq);
    p.checkpoint = Some(checkpoint(seq, crcs.0));
    let mut l = status(1, epoch, ReplicaRole::Learner, seq);
    l.copied = true;
    l.checkpoint = Some(checkpoint(seq, crcs.1));
    let mut r = storage.reports.lock().unwrap();
    r.insert(addr(1), node_report(1, vec![p]));
    r.insert(addr(learner), node_report(learner, vec![l]));
}

async fn tick(control: &Control, store: &MemStore, storage: &Scripted, now: Instant) -> Pace {
    control
        .mover_tick(store, storage, now - Duration::from_secs(3600), now, NOW_MS)
        .await
        .unwrap()
}

fn only_migration(store: &MemStore) -> Migration {
    let c = store.read();
    assert_eq!(c.migrations.len(), 1, "{:?}", c.migrations);
    c.migrations[0].clone()
}

#[tokio::test]
async fn a_lost_replica_is_recreated_step_by_step_and_survives_a_leader_change() {
    let store = setup(&[1, 2, 3, 4]);
    let storage = Scripted::default();
    let control = Control::for_tests(settings());
    let now = Instant::now();

    // Plan: recorded before anything starts; the next pass need not wait for a tick.
    assert_eq!(tick(&control, &store, &storage, now).await, Pace::Now);
    let m = only_migration(&store);
    assert_eq!(
        (m.state, m.to, m.attempts),
        (MigrationState::Planned, NodeId(4), 1)
    );
    assert_eq!(store.read().shards[&ShardId(1)].learners, vec![]);

    // (a) The destination joins as a learner.
    assert_eq!(tick(&control, &store, &storage, now).await, Pace::Now);
    let s = store.read().shards[&ShardId(1)].clone();
    assert_eq!((s.learners.clone(), s.epoch), (vec![NodeId(4)], 4));
    assert_eq!(s.state, ShardState::Moving(m.id));
    assert_eq!(only_migration(&store).state, MigrationState::Copying);

    // (b) Nothing until the learner reports its copy complete: the pass idles until the
    // tick (or a heartbeat with the news wakes it).
    assert_eq!(tick(&control, &store, &storage, now).await, Pace::Idle);
    assert_eq!(only_migration(&store).state, MigrationState::Copying);
    learner_copied(&control, 4, 4);
    assert_eq!(tick(&control, &store, &storage, now).await, Pace::Now);
    assert_eq!(only_migration(&store).state, MigrationState::CatchingUp);

    // The leader changes: the new one knows only the records.
    let control = Control::for_tests(settings());
    learner_copied(&control, 4, 4);

    // (c) A checkpoint is asked of the primary at the shard's epoch...
    tick(&control, &store, &storage, now).await;
    assert_eq!(
        storage.checkpoints.lock().unwrap().clone(),
        vec![(addr(1), ShardId(1), 4)]
    );
    // ...and compared once both sides report it, soon (a checkpoint applies in ms).
    assert_eq!(tick(&control, &store, &storage, now).await, Pace::Soon);
    assert_eq!(only_migration(&store).state, MigrationState::CatchingUp);
    script_checkpoints(&storage, 4, 4, 1, (0xfeed, 0xfeed));

    // (d) Committed: the learner is a replica, the checksum recorded.
    tick(&control, &store, &storage, now).await;
    let s = store.read().shards[&ShardId(1)].clone();
    assert_eq!(s.replicas, vec![NodeId(1), NodeId(2), NodeId(4)]);
    assert!(s.learners.is_empty());
    assert_eq!((s.epoch, s.crc64, s.size_bytes), (5, 0xfeed, 1000));
    assert_eq!(s.state, ShardState::Stable);
    let m = only_migration(&store);
    assert_eq!((m.state, m.bytes_copied), (MigrationState::Committed, 1000));
    assert_eq!(control.metrics.moves_committed.get(), 1);

    // At rf again: nothing more is planned.
    tick(&control, &store, &storage, now).await;
    assert_eq!(store.read().migrations.len(), 1);
}

#[tokio::test]
async fn a_copy_in_progress_is_recorded_at_most_once_a_second_with_its_rate() {
    let mut c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2], 3)], 3);
    c.shards.get_mut(&ShardId(1)).unwrap().size_bytes = 1000;
    c.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Down;
    let store = MemStore::with(&c);
    let storage = Scripted::default();
    let control = Control::for_tests(settings());
    let now = Instant::now();
    tick(&control, &store, &storage, now).await; // planned
    tick(&control, &store, &storage, now).await; // started
    let m = only_migration(&store);
    assert_eq!((m.state, m.bytes_total), (MigrationState::Copying, 1000));
    let copying = |bytes: u64| {
        let mut s = status(1, 4, ReplicaRole::Learner, 10);
        s.copy_bytes = bytes;
        control.record_probe(NodeId(4), Instant::now(), Ok(node_report(4, vec![s])));
    };
    // A pass `ms` after the copy started.
    let at = |ms: u64| {
        control.mover_tick(
            &store,
            &storage,
            now - Duration::from_secs(3600),
            now + Duration::from_millis(ms),
            m.started_ms + ms,
        )
    };

    copying(250);
    assert_eq!(
        at(500).await.unwrap(),
        Pace::Idle,
        "progress needs no quick pass"
    );
    let m1 = only_migration(&store);
    assert_eq!((m1.bytes_copied, m1.rate_bytes_per_s), (250, 500));
    // More bytes within the second: not written yet (a log entry a second at most).
    copying(600);
    at(900).await.unwrap();
    assert_eq!(only_migration(&store).bytes_copied, 250);
    at(1600).await.unwrap();
    let m2 = only_migration(&store);
    assert_eq!((m2.bytes_copied, m2.rate_bytes_per_s), (600, 375));
    // A shard larger than planned: the total follows what arrives...
    copying(1500);
    at(2700).await.unwrap();
    let m3 = only_migration(&store);
    assert_eq!((m3.bytes_copied, m3.bytes_total), (1500, 1500));
    assert_eq!(m3.state, MigrationState::Copying);
    // ...and the primary's estimate of the shard's size, once it reports one.
    let mut p = status(1, 4, ReplicaRole::Primary, 10);
    p.size_estimate = 4000;
    control.record_probe(NodeId(1), Instant::now(), Ok(node_report(1, vec![p])));
    copying(1800);
    at(3800).await.unwrap();
    let m4 = only_migration(&store);
    assert_eq!((m4.bytes_copied, m4.bytes_total), (1800, 4000));
}

#[tokio::test]
async fn a_checksum_mismatch_aborts_cleanly_and_retries_elsewhere_after_backoff() {
    let store = setup(&[1, 2, 3, 4, 5]);
    let storage = Scripted::default();
    let control = Control::for_tests(settings());
    let now = Instant::now();
    tick(&control, &store, &storage, now).await;
    tick(&control, &store, &storage, now).await;
    let first = only_migration(&store);
    learner_copied(&control, first.to.0, 4);
    tick(&control, &store, &storage, now).await;
    tick(&control, &store, &storage, now).await;
    script_checkpoints(&storage, first.to.0, 4, 1, (0xaaaa, 0xbbbb));
    tick(&control, &store, &storage, now).await;

    // The learner is gone, the old replica set untouched, the move Aborted.
    let c = store.read();
    let s = &c.shards[&ShardId(1)];
    assert_eq!(s.replicas, vec![NodeId(1), NodeId(2)]);
    assert!(s.learners.is_empty());
    assert_eq!((s.epoch, s.state), (5, ShardState::Stable));
    let aborted = only_migration(&store);
    assert_eq!(aborted.state, MigrationState::Aborted);
    // The record says why, after why it was planned.
    assert!(
        aborted
            .reason
            .starts_with(&format!("{}; aborted: checksum mismatch", first.reason))
            && aborted
                .reason
                .ends_with("primary 000000000000aaaa, learner 000000000000bbbb"),
        "{}",
        aborted.reason
    );
    assert_eq!(control.metrics.moves_aborted.get(), 1);

    // Within the backoff nothing is planned; after it, another destination.
    tick(&control, &store, &storage, now + Duration::from_millis(100)).await;
    assert_eq!(store.read().migrations.len(), 1);
    let later = now + plan::backoff(1, &control.settings) + Duration::from_millis(1);
    tick(&control, &store, &storage, later).await;
    let c = store.read();
    assert_eq!(c.migrations.len(), 2);
    let second = &c.migrations[1];
    assert_eq!(second.state, MigrationState::Planned);
    assert_eq!(second.attempts, 2);
    assert_ne!(second.to, first.to);
}

#[tokio::test]
async fn a_learner_that_dies_or_is_removed_aborts_the_move() {
    let store = setup(&[1, 2, 3, 4]);
    let storage = Scripted::default();
    let control = Control::for_tests(settings());
    let now = Instant::now();
    tick(&control, &store, &storage, now).await;
    tick(&control, &store, &storage, now).await;
    // The learner's node is declared Down mid-copy.
    let mut n4 = store.read().nodes[&NodeId(4)].clone();
    n4.state = NodeState::Down;
    store.put(Record::Node(n4));
    tick(&control, &store, &storage, now).await;
    let c = store.read();
    assert!(c.shards[&ShardId(1)].learners.is_empty());
    assert_eq!(c.migrations[0].state, MigrationState::Aborted);
    // No eligible destination is left: nothing planned, the shard stays under rf.
    let later = now + Duration::from_secs(3600);
    tick(&control, &store, &storage, later).await;
    assert_eq!(store.read().migrations.len(), 1);
}

/// A move is given up after `move_timeout_ms` without progress on the leader's own clock,
/// whatever the wall clock says: the record's deadline, written by the leader that planned
/// it, neither cuts it short nor keeps it alive.
#[tokio::test]
async fn a_move_without_progress_for_the_timeout_is_aborted() {
    let store = setup(&[1, 2, 3, 4]);
    let storage = Scripted::default();
    let control = Control::for_tests(settings());
    let timeout = Duration::from_millis(settings().move_timeout_ms);
    let now = Instant::now();
    tick(&control, &store, &storage, now).await;
    tick(&control, &store, &storage, now).await;
    let m = only_migration(&store);
    let since = now - Duration::from_secs(3600);
    // Long past the wall-clock deadline (another leader's clock ahead), but not stalled on
    // this leader's: the move goes on.
    let late_ms = m.deadline_ms + 1;
    control
        .mover_tick(&store, &storage, since, now, late_ms)
        .await
        .unwrap();
    assert_ne!(only_migration(&store).state, MigrationState::Aborted);
    // Its wall-clock deadline still ahead (a clock behind), but stalled for the timeout.
    control
        .mover_tick(&store, &storage, since, now + timeout, NOW_MS)
        .await
        .unwrap();
    let c = store.read();
    assert_eq!(c.migrations[0].state, MigrationState::Aborted);
    assert!(
        c.migrations[0].reason.contains("no progress"),
        "{:?}",
        c.migrations[0]
    );
    assert!(c.shards[&ShardId(1)].learners.is_empty());
}

#[tokio::test]
async fn a_moving_mark_without_a_migration_in_flight_is_cleared() {
    let store = setup(&[1, 2, 3, 4]);
    let mut s = store.read().shards[&ShardId(1)].clone();
    s.state = ShardState::Moving(MigrationId(77));
    store.put(Record::Shard(s));
    let control = Control::for_tests(settings());
    let storage = Scripted::default();
    let now = Instant::now();
    tick(&control, &store, &storage, now).await;
    assert_eq!(store.read().shards[&ShardId(1)].state, ShardState::Stable);
    // And the shard, unmarked, gets its move on the next pass.
    tick(&control, &store, &storage, now).await;
    assert_eq!(only_migration(&store).state, MigrationState::Planned);
}
