//! The writes that carry a migration from step to step. Each is one transaction comparing
//! the shard's and the migration's versions as the step read them, so a step taken on a stale
//! view (another leader's, or a record changed meanwhile) changes nothing.

use super::steps::AbortReason;
use crate::control::cluster::Cluster;
use augur_proto::data::Checkpoint;
use augur_proto::model::limits::MAX_STRING;
use augur_proto::model::ShardState;
use augur_proto::{
    Compare, CompareTarget, Key, Migration, MigrationKind, MigrationState, Op, Record, Shard, Txn,
};

fn compare(key: Key, version: u64) -> Compare {
    Compare {
        key,
        target: CompareTarget::VersionEq(version),
    }
}

fn write(shard: (&Shard, Shard), m: (&Migration, Migration)) -> Txn {
    Txn {
        compares: vec![
            compare(Key::Shard(shard.0.id), shard.0.version),
            compare(Key::Migration(m.0.id), m.0.version),
        ],
        ops: vec![
            Op::Put(Record::Shard(shard.1)),
            Op::Put(Record::Migration(m.1)),
        ],
    }
}

/// Bytes per second for `bytes` moved since `m` started, 0 when unknown.
fn rate(m: &Migration, bytes: u64, now_ms: u64) -> u64 {
    let ms = now_ms.saturating_sub(m.started_ms);
    if m.started_ms == 0 || ms == 0 {
        return 0;
    }
    bytes.saturating_mul(1000) / ms
}

/// Step (a): the destination joins the shard as a learner (epoch + 1), the shard is marked
/// as moving under `m`, and `m` is `Copying`, started at `now_ms`.
pub fn start_txn(m: &Migration, shard: &Shard, now_ms: u64) -> Txn {
    let mut s = shard.clone();
    s.learners.push(m.to);
    s.epoch += 1;
    s.state = ShardState::Moving(m.id);
    let mut next = m.clone();
    next.state = MigrationState::Copying;
    next.started_ms = now_ms;
    next.bytes_copied = 0;
    next.rate_bytes_per_s = 0;
    write((shard, s), (m, next))
}

/// Step (b) under way: the learner has `bytes` of the shard; the record's progress and rate
/// follow. The total becomes the primary's current estimate of the shard's size (`total`, 0
/// if it has none: the planned figure stays), and never less than what has arrived; a total
/// nobody knows stays 0 (unknown) rather than pretending the copy is complete.
pub fn progress_txn(m: &Migration, bytes: u64, total: u64, now_ms: u64) -> Txn {
    let mut next = m.clone();
    next.bytes_copied = bytes;
    next.bytes_total = match (total, m.bytes_total) {
        (0, 0) => 0,
        (0, planned) => planned.max(bytes),
        (estimate, _) => estimate.max(bytes),
    };
    next.rate_bytes_per_s = rate(m, bytes, now_ms);
    Txn {
        compares: vec![compare(Key::Migration(m.id), m.version)],
        ops: vec![Op::Put(Record::Migration(next))],
    }
}

/// Step (b) done: `m` is `CatchingUp` (verification). The learner holds the whole shard, so
/// the bytes planned count as copied (the exact count comes with the verified checkpoint).
pub fn copied_txn(m: &Migration, now_ms: u64) -> Txn {
    let mut next = m.clone();
    next.state = MigrationState::CatchingUp;
    next.bytes_copied = m.bytes_total;
    next.rate_bytes_per_s = rate(m, m.bytes_total, now_ms);
    Txn {
        compares: vec![compare(Key::Migration(m.id), m.version)],
        ops: vec![Op::Put(Record::Migration(next))],
    }
}

/// Step (d): the learner becomes a replica (epoch + 1) with the verified size and checksum,
/// the shard is stable again and `m` is `Committed`. A drain move's source leaves the
/// replicas in the same write (replicas - from + to): the shard keeps its replica count, and
/// the source, no longer in the configuration, stops serving the shard and deletes its copy
/// after the storage nodes' `stray_grace_ms`. A balancing move commits the same way. Either
/// keeps its source unless the other replicas on live nodes and the new one make `rf`: a
/// shard that lost another member meanwhile (removed, or on a node declared Down that
/// repair has not reached yet) has its count restored instead of left short, and a drain
/// plans the source's replacement again. A sole replica is kept too: it is the primary,
/// with nobody to hand its role to until this commit adds one ([`super::drain`], step 3).
pub fn commit_txn(
    m: &Migration,
    shard: &Shard,
    cp: &Checkpoint,
    cluster: &Cluster,
    now_ms: u64,
) -> Txn {
    let mut s = shard.clone();
    s.learners.retain(|n| *n != m.to);
    let drops = commit_drops_source(m, shard, cluster);
    if drops {
        s.replicas.retain(|n| *n != m.from);
    }
    s.replicas.push(m.to);
    s.epoch += 1;
    s.size_bytes = cp.bytes;
    s.crc64 = cp.crc64;
    s.state = ShardState::Stable;
    let mut next = m.clone();
    next.state = MigrationState::Committed;
    next.bytes_copied = cp.bytes;
    next.bytes_total = cp.bytes;
    next.rate_bytes_per_s = rate(m, cp.bytes, now_ms);
    let mut txn = write((shard, s), (m, next));
    // The destination was judged live on records read before this pass's probes: declared
    // Down since, it would join as a replica its primary then waits on until repair takes
    // it out again. When the source leaves, the count of the members kept was made on those
    // records too, and a member declared Down since would leave the shard one short. Their
    // records' versions say so; a write that fails is decided again next pass.
    let kept = shard.replicas.iter().filter(|n| drops && **n != m.from);
    for n in std::iter::once(&m.to).chain(kept) {
        if let Some(rec) = cluster.nodes.get(n) {
            txn.compares.push(compare(Key::Node(*n), rec.version));
        }
    }
    txn
}

/// Whether the commit of `m` takes its source out of the shard: a drain or balancing move
/// whose other replicas on live nodes and the new one make `rf`, and whose source is not the
/// shard's only replica. Otherwise the source stays and the shard's count is restored
/// instead of left short (or, for a sole replica, the copy joins it before the hand-off).
pub fn commit_drops_source(m: &Migration, shard: &Shard, cluster: &Cluster) -> bool {
    if shard.replicas == [m.from] {
        return false;
    }
    let rf = cluster.layout.map_or(0, |l| l.rf as usize);
    let others_live = shard
        .replicas
        .iter()
        .filter(|n| **n != m.from && cluster.live(**n))
        .count();
    matches!(m.kind, MigrationKind::Drain | MigrationKind::Balance) && others_live + 1 >= rf
}

/// Abort: the learner leaves the shard (epoch + 1) if it is still there, the shard is stable
/// again if `m` held it, and `m` is `Aborted`. The old replica set stays as it was. The
/// record's reason gains why (`...; aborted: source 2 is no longer draining`): the leader's
/// log is gone with the leader, and operators and a new leader read the records.
pub fn abort_txn(m: &Migration, shard: Option<&Shard>, why: &AbortReason) -> Txn {
    let mut next = m.clone();
    next.state = MigrationState::Aborted;
    next.reason = aborted_reason(&m.reason, why);
    if let Some(shard) = shard {
        let learning = shard.learners.contains(&m.to);
        let held = shard.state == ShardState::Moving(m.id);
        if learning || held {
            let mut s = shard.clone();
            if learning {
                s.learners.retain(|n| *n != m.to);
                s.epoch += 1;
            }
            if held {
                s.state = ShardState::Stable;
            }
            return write((shard, s), (m, next));
        }
    }
    Txn {
        compares: vec![compare(Key::Migration(m.id), m.version)],
        ops: vec![Op::Put(Record::Migration(next))],
    }
}

/// `planned` (why the move was planned) with why it was aborted, within the record's
/// string bound: the end of the planned reason gives way, never the abort's.
fn aborted_reason(planned: &str, why: &AbortReason) -> String {
    let suffix = format!("; aborted: {why}");
    let room = MAX_STRING.saturating_sub(suffix.len());
    let mut cut = planned.len().min(room);
    while !planned.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut reason = format!("{}{suffix}", &planned[..cut]);
    if reason.len() > MAX_STRING {
        let mut end = MAX_STRING;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}
