//! The next step of a migration, case by case: [`next_step`] over records and reports.

use super::*;
use crate::control::cluster::fixtures::*;
use augur_proto::data::ReplicaRole::{Learner, Primary};
use augur_proto::{MigrationId, ShardId};

fn migration(state: MigrationState) -> Migration {
    crate::control::cluster::fixtures::migration(9, MigrationKind::Restore, state)
}

/// Shard 1 on [1, 2] (rf 3) with node 4 learning under migration 9, at epoch 6.
fn moving() -> Cluster {
    let mut s = shard(1, &[1, 2], 6);
    s.learners = vec![NodeId(4)];
    s.state = ShardState::Moving(MigrationId(9));
    cluster(&[1, 2, 3, 4], vec![s], 3)
}

fn req(seq: u64) -> Requested {
    Requested {
        seq,
        primary: NodeId(1),
        epoch: 6,
    }
}

#[test]
fn a_planned_move_starts_only_when_it_still_makes_sense() {
    let c = cluster(&[1, 2, 3, 4], vec![shard(1, &[1, 2], 6)], 3);
    let r = Reports::default();
    let m = migration(MigrationState::Planned);
    assert_eq!(next_step(&m, &c, &r, None, false), Step::Start);
    assert_eq!(
        next_step(&m, &c, &r, None, true),
        Step::Abort(AbortReason::Stalled)
    );
    let mut x = c.clone();
    x.nodes.get_mut(&NodeId(4)).unwrap().state = NodeState::Draining;
    assert_eq!(
        next_step(&m, &x, &r, None, false),
        Step::Abort(AbortReason::Destination(NodeId(4)))
    );
    let mut x = c.clone();
    x.shards
        .get_mut(&ShardId(1))
        .unwrap()
        .replicas
        .push(NodeId(3));
    assert_eq!(
        next_step(&m, &x, &r, None, false),
        Step::Abort(AbortReason::NoLongerNeeded)
    );
    let mut x = c.clone();
    x.shards.get_mut(&ShardId(1)).unwrap().state = ShardState::Moving(MigrationId(2));
    assert_eq!(
        next_step(&m, &x, &r, None, false),
        Step::Abort(AbortReason::ShardBusy)
    );
    let mut x = c;
    x.nodes.get_mut(&NodeId(1)).unwrap().state = NodeState::Down;
    assert_eq!(
        next_step(&m, &x, &r, None, false),
        Step::Abort(AbortReason::PrimaryGone(NodeId(1)))
    );
}

#[test]
fn copying_waits_for_the_learner_and_aborts_when_it_goes() {
    let c = moving();
    let m = migration(MigrationState::Copying);
    let mut r = Reports::default();
    report(&mut r, 4, vec![status(1, 6, Learner, 3)]);
    assert_eq!(next_step(&m, &c, &r, None, false), Step::Wait(WAIT_COPYING));
    // Bytes received beyond what the record says: progress to record.
    let mut part = status(1, 6, Learner, 3);
    part.copy_bytes = 400;
    report(&mut r, 4, vec![part.clone()]);
    assert_eq!(
        next_step(&m, &c, &r, None, false),
        Step::Progress {
            bytes: 400,
            total: 0
        }
    );
    // With the primary's estimate of the shard's size as the total.
    let mut p = status(1, 6, Primary, 3);
    p.size_estimate = 1200;
    report(&mut r, 1, vec![p]);
    assert_eq!(
        next_step(&m, &c, &r, None, false),
        Step::Progress {
            bytes: 400,
            total: 1200
        }
    );
    let mut recorded = m.clone();
    recorded.bytes_copied = 400;
    assert_eq!(
        next_step(&recorded, &c, &r, None, false),
        Step::Wait(WAIT_COPYING),
        "nothing new"
    );
    // A report under an older epoch may be of an earlier copy: not progress.
    part.epoch = 5;
    report(&mut r, 4, vec![part]);
    assert_eq!(next_step(&m, &c, &r, None, false), Step::Wait(WAIT_COPYING));
    let mut done = status(1, 5, Learner, 3);
    done.copied = true;
    report(&mut r, 4, vec![done.clone()]);
    assert_eq!(
        next_step(&m, &c, &r, None, false),
        Step::Wait(WAIT_COPYING),
        "a copy reported under an older epoch"
    );
    done.epoch = 6;
    report(&mut r, 4, vec![done]);
    assert_eq!(next_step(&m, &c, &r, None, false), Step::Copied);
    let mut x = c.clone();
    x.shards.get_mut(&ShardId(1)).unwrap().learners.clear();
    assert_eq!(
        next_step(&m, &x, &r, None, false),
        Step::Abort(AbortReason::LearnerRemoved(NodeId(4)))
    );
    let mut x = c;
    x.nodes.get_mut(&NodeId(4)).unwrap().state = NodeState::Down;
    assert_eq!(
        next_step(&m, &x, &r, None, false),
        Step::Abort(AbortReason::Destination(NodeId(4)))
    );
}

/// With no replica left alive, a learner past its copy may hold the only copy of the
/// acknowledged writes: its move waits, stalled or not, instead of removing it.
/// A learner still copying holds part of the shard and is given up as before.
#[test]
fn a_learner_that_may_be_the_last_copy_is_kept() {
    let mut c = moving();
    for n in [1, 2] {
        c.nodes.get_mut(&NodeId(n)).unwrap().state = NodeState::Down;
    }
    let r = Reports::default();
    for state in [MigrationState::CatchingUp, MigrationState::Cutover] {
        let m = migration(state);
        assert_eq!(
            next_step(&m, &c, &r, None, false),
            Step::Wait(WAIT_LAST_COPY)
        );
        assert_eq!(
            next_step(&m, &c, &r, None, true),
            Step::Wait(WAIT_LAST_COPY)
        );
    }
    let copying = migration(MigrationState::Copying);
    assert_eq!(
        next_step(&copying, &c, &r, None, false),
        Step::Abort(AbortReason::PrimaryGone(NodeId(1)))
    );
    // One replica back: the move goes on (and gives up when it stalls) as usual.
    c.nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Up;
    assert_eq!(
        next_step(&migration(MigrationState::CatchingUp), &c, &r, None, true),
        Step::Abort(AbortReason::Stalled)
    );
    // Its primary (node 1) still Down with a live secondary at the shard's epoch: repair
    // is about to promote it, and the copy made so far is kept for the new primary.
    let mut current = Reports::default();
    report(
        &mut current,
        2,
        vec![status(1, 6, augur_proto::data::ReplicaRole::Secondary, 10)],
    );
    for state in [MigrationState::Copying, MigrationState::CatchingUp] {
        assert_eq!(
            next_step(&migration(state), &c, &current, None, false),
            Step::Wait(WAIT_PROMOTION)
        );
    }
    // A secondary heard from, but not at the shard's epoch, cannot be promoted: the move
    // is given up.
    let mut stale = Reports::default();
    report(
        &mut stale,
        2,
        vec![status(1, 5, augur_proto::data::ReplicaRole::Secondary, 10)],
    );
    for state in [MigrationState::Copying, MigrationState::CatchingUp] {
        assert_eq!(
            next_step(&migration(state), &c, &stale, None, false),
            Step::Abort(AbortReason::PrimaryGone(NodeId(1)))
        );
    }
    // Not heard from at all (a leader that took over moments ago): a copy still in progress
    // is given up, but a learner past its copy may be the last whole copy if that secondary
    // is dead too, so it waits for the secondary to report or to be declared Down.
    assert_eq!(
        next_step(&migration(MigrationState::Copying), &c, &r, None, false),
        Step::Abort(AbortReason::PrimaryGone(NodeId(1)))
    );
    assert_eq!(
        next_step(&migration(MigrationState::CatchingUp), &c, &r, None, false),
        Step::Wait(WAIT_PROMOTION)
    );
}

/// A drain whose source is the primary and whose shard has no other live replica
/// commits keeping the source (no hand-off could come: there is nobody to hand off to)
/// instead of waiting until it stalls on one replica.
#[test]
fn a_drain_that_keeps_its_primary_source_needs_no_hand_off() {
    let mut s = shard(1, &[1], 6);
    s.learners = vec![NodeId(4)];
    s.state = ShardState::Moving(MigrationId(9));
    let c = cluster(&[1, 2, 3, 4], vec![s.clone()], 2);
    let mut m = crate::control::cluster::fixtures::migration(
        9,
        MigrationKind::Drain,
        MigrationState::CatchingUp,
    );
    m.from = NodeId(1);
    let mut c = c;
    c.nodes.get_mut(&NodeId(1)).unwrap().state = NodeState::Draining;
    let same = with_checkpoints((12, 0xabc), (12, 0xabc), 6);
    assert!(!crate::control::mover::commit_drops_source(&m, &s, &c));
    assert_eq!(
        next_step(&m, &c, &same, Some(&req(12)), false),
        Step::Commit(checkpoint(12, 0xabc))
    );
    // With another live replica the source's role is handed off first.
    let mut two = c.clone();
    two.shards.get_mut(&ShardId(1)).unwrap().replicas = vec![NodeId(1), NodeId(2)];
    let mut both = same.clone();
    report(
        &mut both,
        2,
        vec![status(1, 6, augur_proto::data::ReplicaRole::Secondary, 20)],
    );
    assert!(matches!(
        next_step(&m, &two, &both, Some(&req(12)), false),
        Step::Wait(w) if w.contains("hand-off")
    ));
}

/// `c` with node `n` Suspect because its heartbeats are late.
fn late_with_heartbeats(c: &Cluster, n: u64) -> Cluster {
    let mut late = c.clone();
    let node = late.nodes.get_mut(&NodeId(n)).unwrap();
    node.state = NodeState::Suspect;
    node.cause.origin = augur_proto::StateOrigin::Liveness;
    late
}

fn with_checkpoints(p: (u64, u64), l: (u64, u64), learner_epoch: u64) -> Reports {
    let mut r = Reports::default();
    let mut ps = status(1, 6, Primary, 20);
    ps.checkpoint = Some(checkpoint(p.0, p.1));
    let mut ls = status(1, learner_epoch, Learner, 20);
    ls.copied = true;
    ls.checkpoint = Some(checkpoint(l.0, l.1));
    report(&mut r, 1, vec![ps]);
    report(&mut r, 4, vec![ls]);
    r
}

#[test]
fn verification_compares_both_sides_at_one_sequence() {
    let c = moving();
    let m = migration(MigrationState::CatchingUp);
    let ask = Step::Checkpoint {
        primary: NodeId(1),
        epoch: 6,
    };
    let same = with_checkpoints((12, 0xabc), (12, 0xabc), 6);
    assert_eq!(next_step(&m, &c, &same, None, false), ask);
    assert_eq!(
        next_step(&m, &c, &same, Some(&req(12)), false),
        Step::Commit(checkpoint(12, 0xabc))
    );
    // A destination late with its heartbeats, or a member on a node declared Down that
    // repair has not removed yet: the commit waits.
    let late = late_with_heartbeats(&c, 4);
    assert_eq!(
        next_step(&m, &late, &same, Some(&req(12)), false),
        Step::Wait(WAIT_DESTINATION_LATE)
    );
    let mut gone = c.clone();
    gone.nodes.get_mut(&NodeId(2)).unwrap().state = NodeState::Down;
    assert_eq!(
        next_step(&m, &gone, &same, Some(&req(12)), false),
        Step::Wait(WAIT_MEMBER_GONE)
    );
    // The learner has not applied it yet.
    let behind = with_checkpoints((12, 0xabc), (8, 0x111), 6);
    assert_eq!(
        next_step(&m, &c, &behind, Some(&req(12)), false),
        Step::Wait("checkpoint not applied yet")
    );
    // A later checkpoint replaced it: ask again.
    let later = with_checkpoints((15, 0xabc), (12, 0xabc), 6);
    assert_eq!(next_step(&m, &c, &later, Some(&req(12)), false), ask);
    // Different content at one sequence: abort.
    let bad = with_checkpoints((12, 0xabc), (12, 0xabd), 6);
    assert_eq!(
        next_step(&m, &c, &bad, Some(&req(12)), false),
        Step::Abort(AbortReason::ChecksumMismatch {
            seq: 12,
            primary: 0xabc,
            learner: 0xabd
        })
    );
    // The learner still acts under an older epoch: wait before making it a replica.
    let old = with_checkpoints((12, 0xabc), (12, 0xabc), 5);
    assert!(matches!(
        next_step(&m, &c, &old, Some(&req(12)), false),
        Step::Wait(_)
    ));
    // A drain's commit that would drop its source waits while another member it
    // counts on is late; a restore's (which drops nothing) does not.
    let mut drain = m.clone();
    drain.kind = MigrationKind::Drain;
    drain.from = NodeId(3);
    let mut three = c.clone();
    three.shards.get_mut(&ShardId(1)).unwrap().replicas = vec![NodeId(1), NodeId(2), NodeId(3)];
    three.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Draining;
    let late2 = late_with_heartbeats(&three, 2);
    assert_eq!(
        next_step(&drain, &three, &same, Some(&req(12)), false),
        Step::Commit(checkpoint(12, 0xabc))
    );
    assert_eq!(
        next_step(&drain, &late2, &same, Some(&req(12)), false),
        Step::Wait(WAIT_MEMBER_LATE)
    );
    let restore_late = late_with_heartbeats(&c, 2);
    assert_eq!(
        next_step(&m, &restore_late, &same, Some(&req(12)), false),
        Step::Commit(checkpoint(12, 0xabc))
    );
    // The primary changed since the checkpoint was asked for: ask the new one.
    let mut promoted = c.clone();
    promoted.shards.get_mut(&ShardId(1)).unwrap().replicas = vec![NodeId(2)];
    assert_eq!(
        next_step(&m, &promoted, &same, Some(&req(12)), false),
        Step::Checkpoint {
            primary: NodeId(2),
            epoch: 6
        }
    );
}
