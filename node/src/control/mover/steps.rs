//! The next step of one migration in flight: a pure function of its record, the shard's
//! record, the node records and the latest reports.
//!
//! | state | step | recorded as |
//! |---|---|---|
//! | `Planned` | (a) add the destination to the shard's learners (epoch + 1, shard `Moving`) | `Copying` |
//! | `Copying` | (b) wait until the learner reports its copy complete (`copied`); meanwhile record the bytes it reports received, at most once a second | `CatchingUp` (meanwhile `bytes_copied`, `rate_bytes_per_s`) |
//! | `CatchingUp` | (c) have the primary write a checkpoint; wait until primary and learner report it at that sequence; compare CRC-64, bytes and keys | (in memory: the sequence) |
//! | `CatchingUp` | (d) one write: learner -> replica (epoch + 1), `size_bytes` / `crc64` from the checkpoint, shard `Stable` | `Committed` |
//!
//! A drain move ([`MigrationKind::Drain`]) runs the same steps; its commit also drops `from`
//! from the replicas in the same write (replicas - from + to), so the shard never has fewer
//! replicas than before, and the learner it adds was verified first. It starts only while
//! `from` is a replica on a Draining node, is cancelled (aborted, learner removed) when the
//! node is no longer Draining (undrained: Up or Suspect again), and does not commit while
//! `from` is the shard's primary: the primary's role is handed off first (see
//! [`super::drain`]), so the commit never removes the replica serving the clients. A sole
//! replica has nobody to hand its role to: its move commits by adding the learner beside it
//! (replicas + to), and the hand-off and the removal of the surplus replica follow. A source
//! that dies mid-move does not abort it: the repair drops it from the shard, and the commit
//! then simply adds the verified learner, which is what the shard needs anyway.
//!
//! A balancing move ([`MigrationKind::Balance`], see [`super::balance`]) commits as a drain
//! move does. It starts only while `from` is a secondary, and is aborted if `from` has become
//! the primary (nothing hands a healthy node's role off for it), or if its destination is
//! being drained or is cordoned; a planned one waits while the storm guard is frozen. Like a
//! drain move, it keeps its source at the commit if the shard has meanwhile lost another
//! member ([`super::commit_txn`]).
//!
//! Every step re-checks what it relies on, and anything that makes the move unsafe or
//! pointless aborts it: no progress for `move_timeout_ms`, the shard or its primary gone
//! (once copying: with no current secondary to promote), the destination no longer live
//! (or, before it starts, no longer eligible), the learner removed from the
//! shard (a `ReportReplica`, a repair), the shard taken by another move, the checksums
//! differing. Epoch changes that leave the learner in place (a secondary removed, a new
//! primary promoted) do not abort: the learner follows the new configuration; a checkpoint
//! requested from a primary that has since been replaced is requested again, and the commit
//! waits until the learner reports the shard's current epoch, so the replica it adds has
//! acknowledged the configuration it joins.

use super::Requested;
use crate::control::cluster::{Cluster, Reports};
use augur_proto::data::{Checkpoint, ReplicaRole};
use augur_proto::model::ShardState;
use augur_proto::{Migration, MigrationKind, MigrationState, NodeId, NodeState, StateOrigin};

/// Waiting for the learner's copy (which the mover may record the progress of).
pub const WAIT_COPYING: &str = "learner copying";
/// Waiting for the primary's and the learner's reports of the requested checkpoint.
pub const WAIT_CHECKPOINT_REPORT: &str = "checkpoint not reported yet";
/// Waiting for one side to apply the requested checkpoint.
pub const WAIT_CHECKPOINT_APPLIED: &str = "checkpoint not applied yet";
/// Waiting for the learner to act under the shard's current epoch.
pub const WAIT_LEARNER_EPOCH: &str = "learner has not acknowledged the current epoch";
/// [`Step::Wait`]: the destination is late with its heartbeats (Suspect by liveness).
pub const WAIT_DESTINATION_LATE: &str = "destination is late with its heartbeats";
/// [`Step::Wait`]: a replica of the shard is on a node declared Down (or removed) that
/// repair has yet to take out of the configuration.
pub const WAIT_MEMBER_GONE: &str = "a replica's node is gone: waiting for the repair";
/// [`Step::Wait`]: a replica the commit of a drain or balancing move would count on is late
/// with its heartbeats.
pub const WAIT_MEMBER_LATE: &str = "a replica's node is late with its heartbeats";
/// [`Step::Wait`]: no replica of the shard is live and the learner finished its copy: it
/// may hold the only copy of every acknowledged write, so it stays listed (however long it
/// stalls) until a replica returns or an operator forces a primary.
pub const WAIT_LAST_COPY: &str = "no live replica: the learner may hold the only copy \
     (augurctl shard force-primary)";

/// [`Step::Wait`]: the primary's node is gone and a live secondary is about to be promoted
/// by repair; the move goes on under the new primary.
pub const WAIT_PROMOTION: &str = "primary gone: waiting for repair to promote a secondary";

/// Why a move was given up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbortReason {
    /// No step and no copied byte for `move_timeout_ms`, on this leader's clock.
    #[error("no progress within move_timeout_ms")]
    Stalled,
    /// The shard record is gone.
    #[error("shard record gone")]
    ShardGone,
    /// The shard is being moved by another migration.
    #[error("shard busy with another move")]
    ShardBusy,
    /// The shard has its replicas again (or the destination is already in it).
    #[error("no longer needed")]
    NoLongerNeeded,
    /// The destination does not accept replicas (before the move started: not Up, or
    /// cordoned) or is not live (after); for a balancing move also being drained or
    /// cordoned after it started.
    #[error("destination {0} not eligible")]
    Destination(NodeId),
    /// The shard's primary is not live: nothing to copy from or commit with.
    #[error("primary {0} not live")]
    PrimaryGone(NodeId),
    /// The learner was removed from the shard.
    #[error("learner {0} removed from the shard")]
    LearnerRemoved(NodeId),
    /// A drain move's source is no longer a Draining node (undrained): the move is cancelled.
    #[error("source {0} is no longer draining")]
    SourceNotDraining(NodeId),
    /// A balancing move's source became the shard's primary (a promotion): its commit would
    /// remove the replica serving the clients.
    #[error("source {0} became the primary")]
    SourcePrimary(NodeId),
    /// The learner's checkpoint differs from the primary's.
    #[error("checksum mismatch at seq {seq}: primary {primary:016x}, learner {learner:016x}")]
    ChecksumMismatch {
        /// The checkpoint's sequence.
        seq: u64,
        /// The primary's CRC-64.
        primary: u64,
        /// The learner's CRC-64.
        learner: u64,
    },
}

/// What to do next for one migration.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing this round.
    Wait(&'static str),
    /// (a) Add the destination as a learner.
    Start,
    /// (b) under way: the learner reports more bytes received than recorded.
    Progress {
        /// Bytes the learner has received and checked.
        bytes: u64,
        /// The primary's estimate of the shard's size (0: none).
        total: u64,
    },
    /// (b) done: record that the learner has its copy.
    Copied,
    /// (c) Ask the primary for a checkpoint at the shard's current epoch.
    Checkpoint {
        /// The primary.
        primary: NodeId,
        /// The shard's epoch.
        epoch: u64,
    },
    /// (d) The copies match at this checkpoint: make the learner a replica.
    Commit(Checkpoint),
    /// Give up.
    Abort(AbortReason),
}

/// The next step of `m` (see the module documentation). `requested` is the checkpoint this
/// leader asked the primary for, if any.
pub fn next_step(
    m: &Migration,
    cluster: &Cluster,
    reports: &Reports,
    requested: Option<&Requested>,
    stalled: bool,
) -> Step {
    use AbortReason::*;
    let Some(shard) = cluster.shards.get(&m.shard) else {
        return Step::Abort(ShardGone);
    };
    // A learner past its copy holds every committed write (the primary commits only what
    // learners acknowledged too). Removing it while no replica lives would throw away what
    // may be the last copy; nothing else here may outrank that.
    let copied = matches!(
        m.state,
        MigrationState::CatchingUp | MigrationState::Cutover
    );
    if copied && shard.learners.contains(&m.to) && !shard.replicas.iter().any(|n| cluster.live(*n))
    {
        return Step::Wait(WAIT_LAST_COPY);
    }
    if stalled {
        return Step::Abort(Stalled);
    }
    let Some(&primary) = shard.replicas.first() else {
        return Step::Abort(ShardGone);
    };
    let ours = shard.state == ShardState::Moving(m.id);
    match m.state {
        MigrationState::Committed | MigrationState::Aborted => return Step::Wait("finished"),
        MigrationState::Planned => {
            if !ours && shard.state != ShardState::Stable {
                return Step::Abort(ShardBusy);
            }
            let rf = cluster.layout.map_or(0, |l| l.rf as usize);
            let needed = match m.kind {
                MigrationKind::Restore => shard.replicas.len() < rf,
                MigrationKind::Drain => shard.replicas.contains(&m.from),
                MigrationKind::Balance => shard.replicas[1..].contains(&m.from),
            };
            if !needed || shard.replicas.contains(&m.to) || shard.learners.contains(&m.to) {
                return Step::Abort(NoLongerNeeded);
            }
            if m.kind == MigrationKind::Balance && cluster.frozen() {
                return Step::Wait("storm guard: automated moves are frozen");
            }
            if m.kind == MigrationKind::Drain && !cluster.to_drain(m.from) {
                if cluster.state(m.from) == Some(NodeState::Draining) {
                    return Step::Wait("storm guard: automated drains are frozen");
                }
                return Step::Abort(SourceNotDraining(m.from));
            }
            if !cluster.live(primary) {
                return Step::Abort(PrimaryGone(primary));
            }
            if !cluster.accepts_replicas(m.to) {
                return Step::Abort(Destination(m.to));
            }
            return Step::Start;
        }
        MigrationState::Copying | MigrationState::CatchingUp | MigrationState::Cutover => {}
    }
    if !shard.learners.contains(&m.to) {
        return Step::Abort(LearnerRemoved(m.to));
    }
    if !ours {
        return Step::Abort(ShardBusy);
    }
    if !cluster.live(m.to) {
        return Step::Abort(Destination(m.to));
    }
    if m.kind == MigrationKind::Balance {
        // Balancing is optional: a destination being emptied or cordoned is not filled
        // further (a Suspect one, often only late with a heartbeat, is waited for by the
        // commit's own checks), and a source that became the primary (a promotion) could
        // not leave the shard at the commit.
        let emptied = cluster
            .nodes
            .get(&m.to)
            .is_some_and(|n| n.state == NodeState::Draining || n.cordoned);
        if emptied {
            return Step::Abort(Destination(m.to));
        }
        if primary == m.from {
            return Step::Abort(SourcePrimary(m.from));
        }
    }
    if undrained(m, cluster) {
        return Step::Abort(SourceNotDraining(m.from));
    }
    if !cluster.live(primary) {
        // Repair promotes a live secondary within a pass of the Down, and a move survives
        // promotions: throwing away the copy made so far would cost more than the wait.
        // Only while repair can promote: a live secondary at the shard's epoch.
        let promotable = shard.replicas[1..]
            .iter()
            .any(|n| reports.live_replica(cluster, *n, shard));
        // A learner past its copy may be the last whole copy if the secondaries are dead
        // too. A secondary this leader has not heard from yet (it took over moments ago) is
        // undecided, not unpromotable: wait for it to report or for liveness to declare it
        // Down, after which the last-copy rule above keeps the learner.
        let undecided = copied
            && shard.replicas[1..]
                .iter()
                .any(|n| cluster.live(*n) && !reports.heard_from(cluster, *n));
        if promotable || undecided {
            return Step::Wait(WAIT_PROMOTION);
        }
        return Step::Abort(PrimaryGone(primary));
    }
    let learner = reports.replica(cluster, m.to, shard.id);
    if m.state == MigrationState::Copying {
        return match learner {
            // Under the shard's epoch too: a report from an earlier attempt's learner on
            // this node may say copied while this one has started over.
            Some(r) if r.role == ReplicaRole::Learner && r.copied && r.epoch == shard.epoch => {
                Step::Copied
            }
            // Only a report under the shard's epoch: an older one may be of an earlier copy.
            Some(r)
                if r.role == ReplicaRole::Learner
                    && r.epoch == shard.epoch
                    && r.copy_bytes > m.bytes_copied =>
            {
                Step::Progress {
                    bytes: r.copy_bytes,
                    total: reports
                        .replica(cluster, primary, shard.id)
                        .map_or(0, |p| p.size_estimate),
                }
            }
            _ => Step::Wait(WAIT_COPYING),
        };
    }
    let ask = Step::Checkpoint {
        primary,
        epoch: shard.epoch,
    };
    let Some(req) = requested.filter(|r| r.primary == primary) else {
        return ask;
    };
    let at = |n: NodeId| {
        reports
            .replica(cluster, n, shard.id)
            .and_then(|r| r.checkpoint)
    };
    let (Some(p), Some(l)) = (at(primary), at(m.to)) else {
        return Step::Wait(WAIT_CHECKPOINT_REPORT);
    };
    if p.seq > req.seq || l.seq > req.seq {
        // A later checkpoint replaced the one asked for in the reports: ask again, so both
        // sides are compared at one sequence.
        return ask;
    }
    if p.seq < req.seq || l.seq < req.seq {
        return Step::Wait(WAIT_CHECKPOINT_APPLIED);
    }
    if (p.crc64, p.bytes, p.keys) != (l.crc64, l.bytes, l.keys) {
        return Step::Abort(ChecksumMismatch {
            seq: req.seq,
            primary: p.crc64,
            learner: l.crc64,
        });
    }
    // A destination late with its heartbeats may be dying: committing would trade the
    // source (a drain's, still serving) for it. It is heard again (Up) or declared Down
    // (aborted above) within the grace period.
    let late = |n: &NodeId| {
        cluster.nodes.get(n).is_some_and(|n| {
            n.state == NodeState::Suspect && n.cause.origin == StateOrigin::Liveness
        })
    };
    if late(&m.to) {
        return Step::Wait(WAIT_DESTINATION_LATE);
    }
    // Likewise a member a drain's or balance's commit counts on to drop its source: it may
    // be declared Down a moment after the commit left the shard one short.
    let drops_source = matches!(m.kind, MigrationKind::Drain | MigrationKind::Balance);
    if drops_source && shard.replicas.iter().any(|n| *n != m.from && late(n)) {
        return Step::Wait(WAIT_MEMBER_LATE);
    }
    // The commit counts the replicas it keeps: with a dead member still listed, dropping a
    // drain's source could leave too few live ones, and keeping it too many once the dead
    // node came back. Repair takes the member out within a pass.
    if shard.replicas.iter().any(|n| cluster.gone(*n)) {
        return Step::Wait(WAIT_MEMBER_GONE);
    }
    match reports.current(cluster, m.to, shard) {
        Some(r) if r.role == ReplicaRole::Learner => {
            if primary == m.from && super::commit_drops_source(m, shard, cluster) {
                match m.kind {
                    // A commit that keeps the source (the shard is short of live replicas)
                    // needs no hand-off, and may have none to wait for (no other replica).
                    MigrationKind::Drain => {
                        return Step::Wait("source is the primary: waiting for its hand-off")
                    }
                    // Nothing hands a healthy node's primary role off for a balancing move.
                    MigrationKind::Balance => return Step::Abort(SourcePrimary(m.from)),
                    MigrationKind::Restore => {}
                }
            }
            Step::Commit(p)
        }
        _ => Step::Wait(WAIT_LEARNER_EPOCH),
    }
}

/// Whether `m` is a drain move whose source node was taken out of draining while it is still
/// running (Up or Suspect again). A source that died (Down, removed) is not undrained: the
/// move still gives the shard the replica it needs.
pub fn undrained(m: &Migration, cluster: &Cluster) -> bool {
    m.kind == MigrationKind::Drain
        && matches!(
            cluster.state(m.from),
            Some(NodeState::Up | NodeState::Suspect)
        )
}

#[cfg(test)]
#[path = "steps_tests.rs"]
mod tests;
