//! The `ReportReplica` and `ForcePrimary` decisions over fixture clusters, and their
//! handlers writing once against an in-memory metadata store.
//!
//! Kept apart from `failure.rs` because the scenarios outweigh the rules they check.

use super::*;
use crate::control::cluster::fixtures::*;
use crate::control::settings::ControlSettings;
use crate::control::store::fake::MemStore;
use augur_proto::data::ReplicaRole::{self, Learner, Primary, Secondary, Stray};
use augur_proto::NodeState;

fn c3() -> Cluster {
    let mut s = shard(1, &[1, 2, 3], 4);
    s.learners = vec![NodeId(4)];
    cluster(&[1, 2, 3, 4], vec![s], 3)
}

#[test]
fn only_the_primary_at_that_epoch_may_remove_a_replica() {
    let c = c3();
    let s = &c.shards[&ShardId(1)];
    let next = report_replica(s, &c, NodeId(1), 4, NodeId(3))
        .unwrap()
        .unwrap();
    assert_eq!(next.replicas, vec![NodeId(1), NodeId(2)]);
    assert_eq!(next.epoch, 5);
    let learner = report_replica(s, &c, NodeId(1), 4, NodeId(4))
        .unwrap()
        .unwrap();
    assert!(learner.learners.is_empty());
    assert!(matches!(
        report_replica(s, &c, NodeId(2), 4, NodeId(3)),
        Err(ReconfigError::NotPrimary { .. })
    ));
    assert!(matches!(
        report_replica(s, &c, NodeId(1), 3, NodeId(3)),
        Err(ReconfigError::WrongEpoch { .. })
    ));
    assert!(matches!(
        report_replica(s, &c, NodeId(1), 5, NodeId(3)),
        Err(ReconfigError::WrongEpoch { .. })
    ));
    assert!(matches!(
        report_replica(s, &c, NodeId(1), 4, NodeId(9)),
        Err(ReconfigError::NotInShard { .. })
    ));
    assert!(matches!(
        report_replica(s, &c, NodeId(1), 4, NodeId(1)),
        Err(ReconfigError::LastReplica { .. })
    ));
    let mut down = c.clone();
    down.nodes.get_mut(&NodeId(1)).unwrap().state = NodeState::Down;
    assert!(matches!(
        report_replica(s, &down, NodeId(1), 4, NodeId(3)),
        Err(ReconfigError::CallerNotLive(_))
    ));
    // The errors reach the caller typed.
    assert!(matches!(
        ApiError::from(ReconfigError::NotStorage),
        ApiError::PermissionDenied(_)
    ));
}

#[test]
fn a_retry_after_the_removal_is_done() {
    let mut c = c3();
    let s = c.shards[&ShardId(1)].clone();
    let next = report_replica(&s, &c, NodeId(1), 4, NodeId(3))
        .unwrap()
        .unwrap();
    c.shards.insert(ShardId(1), next.clone());
    assert_eq!(report_replica(&next, &c, NodeId(1), 4, NodeId(3)), Ok(None));
    // Not for someone who is no longer primary.
    let mut moved = next.clone();
    moved.replicas = vec![NodeId(2), NodeId(1)];
    assert!(report_replica(&moved, &c, NodeId(1), 4, NodeId(3)).is_err());
}

#[test]
fn a_restarted_primary_hands_over_to_the_most_advanced_live_replica() {
    let sh = shard(1, &[1, 2, 3], 4);
    let cl = cluster(&[1, 2, 3], vec![sh.clone()], 3);
    let mut reports = Reports::default();
    report(
        &mut reports,
        1,
        vec![status(1, 4, ReplicaRole::Primary, 10)],
    );
    report(&mut reports, 2, vec![status(1, 4, Secondary, 12)]);
    report(&mut reports, 3, vec![status(1, 4, Secondary, 11)]);
    let next = reelect(&sh, &cl, &reports, NodeId(1), 4).unwrap().unwrap();
    assert_eq!(next.replicas, vec![NodeId(2), NodeId(1), NodeId(3)]);
    assert_eq!(next.epoch, 5);
    // Already moved on: nothing to do. Not the primary: refused.
    assert_eq!(reelect(&sh, &cl, &reports, NodeId(1), 3), Ok(None));
    assert!(matches!(
        reelect(&sh, &cl, &reports, NodeId(2), 4),
        Err(ReconfigError::NotPrimary { .. })
    ));
    // With no reports at this epoch, the caller stays primary at a new epoch.
    let none = Reports::default();
    let next = reelect(&sh, &cl, &none, NodeId(1), 4).unwrap().unwrap();
    assert_eq!((next.replicas[0], next.epoch), (NodeId(1), 5));
}

/// The shard's down delay runs from its first loss: the learner of its restore failing, or
/// a second replica lost, does not start it again.
#[tokio::test]
async fn the_first_loss_is_remembered_and_a_failed_learner_is_none() {
    let store = MemStore::with(&c3());
    let control = Control::for_tests(ControlSettings::default());
    let me = Some(Role::Storage(NodeId(1)));
    // Node 1, the primary, asks at `epoch` for `replica` to be removed.
    let report = |epoch: u64, replica: u64, reason: &'static str| {
        control.handle_report_replica(&store, me, ShardId(1), epoch, NodeId(replica), reason)
    };
    report(4, 4, "learner silent").await.unwrap();
    assert_eq!(
        control.lost_replica(ShardId(1)),
        None,
        "a learner is not lost"
    );
    report(5, 2, "timeout").await.unwrap();
    let (node, at) = control.lost_replica(ShardId(1)).unwrap();
    assert_eq!(node, NodeId(2));
    report(6, 3, "timeout").await.unwrap();
    assert_eq!(control.lost_replica(ShardId(1)), Some((NodeId(2), at)));
}

#[tokio::test]
async fn report_replica_writes_once_and_refuses_non_storage_callers() {
    let store = MemStore::with(&c3());
    let control = Control::for_tests(ControlSettings::default());
    let me = Some(Role::Storage(NodeId(1)));
    control
        .handle_report_replica(&store, me, ShardId(1), 4, NodeId(2), "timeout")
        .await
        .unwrap();
    let s = store.read().shards[&ShardId(1)].clone();
    assert_eq!(
        (s.replicas.clone(), s.epoch),
        (vec![NodeId(1), NodeId(3)], 5)
    );
    // Retried: answered done, nothing more written.
    control
        .handle_report_replica(&store, me, ShardId(1), 4, NodeId(2), "timeout")
        .await
        .unwrap();
    assert_eq!(store.read().shards[&ShardId(1)], s);
    for who in [None, Some(Role::Operator), Some(Role::Client)] {
        assert_eq!(
            control
                .handle_report_replica(&store, who, ShardId(1), 5, NodeId(3), "x")
                .await,
            Err(ReconfigError::NotStorage)
        );
    }
    assert_eq!(
        control
            .handle_report_replica(&store, me, ShardId(9), 5, NodeId(3), "x")
            .await,
        Err(ReconfigError::UnknownShard(ShardId(9)))
    );
    let zero = control
        .handle_report_replica(&store, me, ShardId(1), 5, NodeId(0), "x")
        .await;
    assert!(matches!(zero, Err(ReconfigError::InvalidId(_))));
    assert!(matches!(
        ApiError::from(zero.unwrap_err()),
        ApiError::InvalidArgument(_)
    ));
    // Nothing was written by any refusal.
    assert_eq!(store.read().shards[&ShardId(1)], s);
}

#[tokio::test]
async fn force_primary_writes_the_sole_replica_from_reports() {
    let mut c = c3();
    for n in [1, 2, 3] {
        c.nodes.get_mut(&NodeId(n)).unwrap().state = NodeState::Down;
    }
    let store = MemStore::with(&c);
    let control = Control::for_tests(ControlSettings::default());
    // No report yet (a new leader): refused until the node's heartbeat says what it holds.
    assert!(matches!(
        control
            .handle_force_primary(&store, ShardId(1), NodeId(4))
            .await,
        Err(ReconfigError::NoCopy { .. })
    ));
    let mut done = status(1, 4, Learner, 30);
    done.copied = true;
    let mut r = Reports::default();
    report(&mut r, 4, vec![done]);
    control.record_probe(NodeId(4), Instant::now(), Ok(r.by_node[&NodeId(4)].clone()));
    control
        .handle_force_primary(&store, ShardId(1), NodeId(4))
        .await
        .unwrap();
    let s = store.read().shards[&ShardId(1)].clone();
    assert_eq!(
        (s.replicas, s.learners, s.epoch),
        (vec![NodeId(4)], vec![], 5)
    );
    assert_eq!(
        control
            .handle_force_primary(&store, ShardId(2), NodeId(4))
            .await,
        Err(ReconfigError::UnknownShard(ShardId(2)))
    );
}

#[test]
fn force_primary_needs_every_replica_dead_and_a_copy_on_the_node() {
    let mut c = c3();
    for n in [1, 2, 3] {
        c.nodes.get_mut(&NodeId(n)).unwrap().state = NodeState::Down;
    }
    c.nodes.insert(NodeId(5), node(5, NodeState::Up));
    let s = c.shards[&ShardId(1)].clone();
    let mut r = Reports::default();
    // Node 5 holds a stray copy from an earlier configuration.
    report(&mut r, 5, vec![status(1, 2, Stray, 40)]);
    // Node 4 is a learner that has not finished copying.
    report(&mut r, 4, vec![status(1, 4, Learner, 41)]);
    let (next, displaced) = force_primary(&s, &c, &r, NodeId(5)).unwrap();
    assert_eq!((next.replicas, next.epoch), (vec![NodeId(5)], 5));
    assert!(next.learners.is_empty());
    assert_eq!(displaced, vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)]);
    assert!(matches!(
        force_primary(&s, &c, &r, NodeId(4)),
        Err(ReconfigError::NoCopy { .. })
    ));
    // A stray that was such a learner holds part of the shard, whatever its role says now.
    let mut partial = status(1, 4, Stray, 41);
    partial.copied = false;
    let mut r2 = r.clone();
    report(&mut r2, 4, vec![partial]);
    assert!(matches!(
        force_primary(&s, &c, &r2, NodeId(4)),
        Err(ReconfigError::NoCopy { .. })
    ));
    assert!(matches!(
        force_primary(&s, &c, &r, NodeId(1)),
        Err(ReconfigError::NodeNotLive(_))
    ));
    // One replica back and reporting the current epoch: promotion's job, not force's.
    c.nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Up;
    report(&mut r, 2, vec![status(1, 4, Secondary, 42)]);
    assert!(matches!(
        force_primary(&s, &c, &r, NodeId(5)),
        Err(ReconfigError::ReplicaAlive { .. })
    ));
    // Back but at an older epoch: it cannot be promoted, so forcing it is allowed.
    report(&mut r, 2, vec![status(1, 3, Secondary, 42)]);
    let (next, _) = force_primary(&s, &c, &r, NodeId(2)).unwrap();
    assert_eq!(next.replicas, vec![NodeId(2)]);

    // A secondary on a live node this leader has not heard from: it may be promotable.
    c.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Up;
    assert_eq!(
        force_primary(&s, &c, &r, NodeId(2)),
        Err(ReconfigError::NotHeardFrom {
            shard: ShardId(1),
            node: NodeId(3)
        })
    );
    report(&mut r, 3, vec![]);
    assert!(force_primary(&s, &c, &r, NodeId(2)).is_ok());
    // The primary's node is live, its report an epoch behind (a learner was just added):
    // it may be serving under its lease, so nothing is forced beside it.
    c.nodes.get_mut(&NodeId(1)).unwrap().state = NodeState::Up;
    report(&mut r, 1, vec![status(1, 3, Primary, 50)]);
    assert_eq!(
        force_primary(&s, &c, &r, NodeId(2)),
        Err(ReconfigError::PrimaryLive {
            shard: ShardId(1),
            node: NodeId(1)
        })
    );
}
