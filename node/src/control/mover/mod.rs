//! Re-replication and draining: the move machinery of the control plane.
//!
//! - [`plan`]: which under-replicated shards get a new replica now, and where;
//! - [`drain`]: emptying Draining nodes: primaries handed off first, then one move per
//!   replica, each replacing the draining node's replica with a verified new one;
//! - [`balance`]: once nothing else moves, replicas moved and primaries handed off to even
//!   out how many replicas each healthy node holds and how many shards it leads;
//! - [`steps`]: the next step of one migration in flight;
//! - this module: the leader's loop that records each plan as a `Migration` before anything
//!   starts, then drives each migration one step per pass, every step one transaction that
//!   compares the shard's and the migration's versions.
//!
//! All progress lives in the records (migration state, attempts, bytes; the shard's learners
//! and `Moving` state), so a new leader resumes every move where the records say it is. The
//! only thing kept in memory is the checkpoint sequence being verified: a new leader asks for
//! a fresh checkpoint, which costs one log entry on the shard.

pub mod balance;
pub mod drain;
pub mod plan;
pub mod steps;

use super::cluster::{Cluster, Reports};
use super::store::{MetaStore, StorageCalls};
use super::Control;
use augur_proto::data::Checkpoint;
use augur_proto::model::limits::MAX_STRING;
use augur_proto::model::ShardState;
use augur_proto::wire::ApiError;
use augur_proto::{
    Compare, CompareTarget, Key, Migration, MigrationId, MigrationKind, MigrationState, NodeId, Op,
    Record, Shard, ShardId, Txn,
};
use futures::future::join_all;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use steps::{next_step, AbortReason, Step};

/// How soon the mover's next pass should run; a pass reports the most urgent of its moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pace {
    /// Nothing is ready before the next tick (or a heartbeat's wake-up).
    Idle,
    /// A move waits on something that takes milliseconds: a checkpoint being applied, a
    /// learner taking the configuration it was just given.
    Soon,
    /// A step was taken: the next one is often ready at once.
    Now,
}

impl Pace {
    /// The pause before the next pass, `None` for the regular interval. `Now` still pauses
    /// briefly, so the records written settle and a pass that keeps finding work cannot spin.
    pub fn delay(self) -> Option<std::time::Duration> {
        match self {
            Pace::Idle => None,
            Pace::Soon => Some(std::time::Duration::from_millis(100)),
            Pace::Now => Some(std::time::Duration::from_millis(20)),
        }
    }

    fn of_wait(why: &str) -> Pace {
        match why {
            steps::WAIT_CHECKPOINT_REPORT
            | steps::WAIT_CHECKPOINT_APPLIED
            | steps::WAIT_LEARNER_EPOCH => Pace::Soon,
            _ => Pace::Idle,
        }
    }
}

/// A checkpoint this leader asked a primary for, to verify a learner against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested {
    /// The checkpoint entry's sequence.
    pub seq: u64,
    /// The primary asked.
    pub primary: NodeId,
    /// The shard epoch it was asked at.
    pub epoch: u64,
}

/// What the leader remembers between passes (lost when leadership moves; see [`plan`] for
/// how a new leader does without it).
#[derive(Debug, Default)]
pub struct MoverMemory {
    /// The replica this leader last removed from each shard, and when.
    pub lost: HashMap<ShardId, (NodeId, Instant)>,
    /// When this leader first saw each shard with fewer replicas than `rf`.
    pub under_since: HashMap<ShardId, Instant>,
    /// Until when each shard's next move waits, after an abort.
    pub backoff_until: HashMap<ShardId, Instant>,
    /// Checkpoints asked for, by migration.
    pub checkpoints: HashMap<MigrationId, Requested>,
    /// When this leader last recorded each copy's progress.
    pub progress_at: HashMap<MigrationId, Instant>,
    /// When this leader last ran a round of primary balancing ([`balance`]).
    pub balanced_at: Option<Instant>,
    /// Until when each shard waits before another balancing move or balancing hand-off,
    /// after one failed (kept apart from `backoff_until`: balancing never delays a repair).
    pub balance_backoff_until: HashMap<ShardId, Instant>,
    /// Each move's last progress seen by this leader (its state and bytes copied) and when
    /// on this leader's clock: a move is given up after `move_timeout_ms` without any. A
    /// record's wall-clock deadline, written by whichever leader planned it, would abort
    /// early or late by the clocks' skew after a failover; a new leader starts the wait
    /// afresh (one timeout late after a failover, never early).
    pub progress_seen: HashMap<MigrationId, (MigrationState, u64, Instant)>,
}

impl MoverMemory {
    /// Notes which shards are under-replicated now, and forgets shards that are not.
    pub fn note_under_replicated(&mut self, cluster: &Cluster, now: Instant) {
        let under: Vec<ShardId> = plan::under_replicated(cluster)
            .iter()
            .map(|s| s.id)
            .collect();
        self.under_since.retain(|s, _| under.contains(s));
        self.lost.retain(|s, _| under.contains(s));
        for s in under {
            self.under_since.entry(s).or_insert(now);
        }
        let active: Vec<MigrationId> = cluster.active_migrations().map(|m| m.id).collect();
        self.checkpoints.retain(|m, _| active.contains(m));
        self.progress_at.retain(|m, _| active.contains(m));
        self.progress_seen.retain(|m, _| active.contains(m));
    }

    /// Whether `m` has made no progress (no step, no copied byte) for `timeout` as this
    /// leader saw it; notes what it has now.
    pub fn stalled(&mut self, m: &Migration, now: Instant, timeout: Duration) -> bool {
        let at = (m.state, m.bytes_copied);
        match self.progress_seen.get(&m.id) {
            Some((state, bytes, since)) if (*state, *bytes) == at => {
                now.saturating_duration_since(*since) >= timeout
            }
            _ => {
                self.progress_seen.insert(m.id, (at.0, at.1, now));
                false
            }
        }
    }

    /// Whether `m`'s copy progress may be recorded at `now` (and if so, notes that it is):
    /// at most once per [`PROGRESS_EVERY`], so a copy costs a log entry a second, not one
    /// per pass.
    pub fn progress_due(&mut self, m: MigrationId, now: Instant) -> bool {
        match self.progress_at.get(&m) {
            Some(t) if now.saturating_duration_since(*t) < PROGRESS_EVERY => false,
            _ => {
                self.progress_at.insert(m, now);
                true
            }
        }
    }
}

/// How often a copy's progress is written to its migration record.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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
    if drops {
        // The count was made on records read before this pass's probes: a member declared
        // Down since would leave the shard one short, and so would the destination. Their
        // records' versions say so.
        let kept = shard.replicas.iter().filter(|n| **n != m.from);
        for n in kept.chain(std::iter::once(&m.to)) {
            if let Some(rec) = cluster.nodes.get(n) {
                txn.compares.push(compare(Key::Node(*n), rec.version));
            }
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

impl Control {
    /// One mover pass as leader: hands off the primaries of draining nodes and takes their
    /// surplus replicas out ([`drain`]), advances every migration in flight by one step,
    /// then plans new moves (re-replication first, then drains, then replica balancing)
    /// within the limits; a pass with nothing of that to do may balance primaries. Says how
    /// soon the next pass is worth running.
    pub(crate) async fn mover_tick(
        &self,
        meta: &dyn MetaStore,
        storage: &dyn StorageCalls,
        leader_since: Instant,
        now: Instant,
        now_ms: u64,
    ) -> Result<Pace, ApiError> {
        let mut pace = Pace::Idle;
        let mut cluster = meta.cluster().await?;
        // Primaries leave draining nodes before anything else moves (see [`drain`]).
        if self
            .hand_off_primaries(&cluster, &self.reports(), meta, storage)
            .await?
            > 0
        {
            pace = Pace::Now;
            cluster = meta.cluster().await?;
        }
        if self
            .trim_surplus(&cluster, &self.reports(), meta, now)
            .await?
            > 0
        {
            pace = Pace::Now;
            cluster = meta.cluster().await?;
        }
        self.with_memory(|mem| mem.note_under_replicated(&cluster, now));
        let mut active: Vec<&Migration> = cluster.active_migrations().collect();
        active.sort_by_key(|m| (std::cmp::Reverse(m.priority), m.id));
        self.refresh_verifying(&cluster, &active, storage).await;
        let reports = self.reports();
        let results = join_all(
            active
                .iter()
                .map(|m| self.advance(m, &cluster, &reports, meta, storage, now, now_ms)),
        )
        .await;
        for r in results {
            pace = pace.max(r?);
        }
        for shard in plan::orphaned(&cluster) {
            let mut s = shard.clone();
            s.state = ShardState::Stable;
            let txn = Txn::cas(Record::Shard(s), Some(shard.version));
            if meta.propose(txn).await?.succeeded {
                tracing::warn!(shard = %shard.id, state = ?shard.state, "cleared the moving mark of a migration no longer in flight");
            }
        }
        let planned = self.with_memory(|mem| {
            let ctx = plan::PlanContext {
                cluster: &cluster,
                settings: &self.settings,
                memory: mem,
                now,
                now_ms,
                leader_since,
            };
            let mut planned = plan::plan(&ctx);
            let drains = drain::plan(&ctx, &planned);
            planned.extend(drains);
            if planned.is_empty() {
                planned = balance::plan_moves(&ctx);
            }
            planned
        });
        for m in planned {
            let Some(shard) = cluster.shards.get(&m.shard) else {
                continue;
            };
            let txn = plan::create_txn(
                &m,
                shard,
                &cluster,
                self.settings.migration_history_per_shard,
            );
            if meta.propose(txn).await?.succeeded {
                pace = Pace::Now;
                tracing::info!(migration = %m.id, shard = %m.shard, from = %m.from, to = %m.to, attempt = m.attempts, reason = %m.reason, "move planned");
            }
        }
        // Leadership is evened out only when this pass found nothing else to do.
        if pace == Pace::Idle {
            self.balance_primaries(&cluster, meta, storage, leader_since, now)
                .await?;
        }
        Ok(pace)
    }

    /// Probes the primary and learner of every move being verified, so the comparison works
    /// from fresh reports instead of waiting for the periodic probe.
    async fn refresh_verifying(
        &self,
        cluster: &Cluster,
        active: &[&Migration],
        storage: &dyn StorageCalls,
    ) {
        let mut nodes: Vec<NodeId> = Vec::new();
        for m in active {
            let verifying = m.state == MigrationState::CatchingUp
                && self.with_memory(|mem| mem.checkpoints.contains_key(&m.id));
            if let (true, Some(shard)) = (verifying, cluster.shards.get(&m.shard)) {
                nodes.extend(shard.replicas.first());
                nodes.push(m.to);
            }
        }
        nodes.sort();
        nodes.dedup();
        self.probe_nodes(cluster, &nodes, storage).await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn advance(
        &self,
        m: &Migration,
        cluster: &Cluster,
        reports: &Reports,
        meta: &dyn MetaStore,
        storage: &dyn StorageCalls,
        now: Instant,
        now_ms: u64,
    ) -> Result<Pace, ApiError> {
        let requested = self.with_memory(|mem| mem.checkpoints.get(&m.id).copied());
        let timeout = Duration::from_millis(self.settings.move_timeout_ms);
        let stalled = self.with_memory(|mem| mem.stalled(m, now, timeout));
        let mut step = next_step(m, cluster, reports, requested.as_ref(), stalled);
        let shard = cluster.shards.get(&m.shard);
        if matches!(step, Step::Commit(_)) && !self.commit_members_heard(m, shard, cluster, now) {
            step = Step::Wait(steps::WAIT_MEMBER_LATE);
        }
        let txn = match (&step, shard) {
            (Step::Wait(why), _) => {
                tracing::trace!(migration = %m.id, shard = %m.shard, why, "move waits");
                return Ok(Pace::of_wait(why));
            }
            (Step::Checkpoint { primary, epoch }, Some(_)) => {
                return self
                    .request_checkpoint(m, cluster, storage, *primary, *epoch)
                    .await;
            }
            (Step::Progress { bytes, total }, Some(_)) => {
                if !self.with_memory(|mem| mem.progress_due(m.id, now)) {
                    return Ok(Pace::Idle);
                }
                progress_txn(m, *bytes, *total, now_ms)
            }
            (Step::Start, Some(s)) => start_txn(m, s, now_ms),
            (Step::Copied, Some(_)) => copied_txn(m, now_ms),
            (Step::Commit(cp), Some(s)) => commit_txn(m, s, cp, cluster, now_ms),
            (Step::Abort(why), s) => abort_txn(m, s, why),
            (_, None) => abort_txn(m, None, &AbortReason::ShardGone),
        };
        if !meta.propose(txn).await?.succeeded {
            tracing::debug!(migration = %m.id, shard = %m.shard, "records changed under a move step; next pass decides again");
            return Ok(Pace::Soon);
        }
        match step {
            Step::Start => {
                tracing::info!(migration = %m.id, shard = %m.shard, to = %m.to, "move started: learner added")
            }
            Step::Copied => {
                tracing::info!(migration = %m.id, shard = %m.shard, to = %m.to, "learner copied the shard; verifying")
            }
            Step::Commit(cp) => {
                self.metrics.moves_committed.inc();
                self.metrics.bytes_moved.inc_by(cp.bytes);
                self.with_memory(|mem| {
                    mem.checkpoints.remove(&m.id);
                    mem.lost.remove(&m.shard);
                    mem.backoff_until.remove(&m.shard);
                    mem.balance_backoff_until.remove(&m.shard);
                });
                tracing::info!(migration = %m.id, shard = %m.shard, to = %m.to, seq = cp.seq, crc64 = format_args!("{:016x}", cp.crc64), bytes = cp.bytes, "move committed: learner is a replica");
            }
            Step::Abort(reason) => self.aborted(m, &reason, now),
            // Progress needs no quick follow-up: the copy's end comes with its own report.
            Step::Progress { .. } => return Ok(Pace::Idle),
            _ => {}
        }
        Ok(Pace::Now)
    }

    /// Whether the members a commit that drops its source counts on (the replicas it keeps
    /// and the destination) have all been heard from within `suspect_after_ms`. Their records
    /// cannot say: liveness marks only Up nodes late, so a Draining or at-risk Suspect node
    /// that fell silent keeps its state until it is declared Down, and dropping the source
    /// meanwhile would leave the shard a live replica short (at rf 1 with the only copy on
    /// the silent node). A commit that keeps its source only adds a replica, and goes on.
    fn commit_members_heard(
        &self,
        m: &Migration,
        shard: Option<&Shard>,
        cluster: &Cluster,
        now: Instant,
    ) -> bool {
        let Some(shard) = shard.filter(|s| commit_drops_source(m, s, cluster)) else {
            return true;
        };
        let kept = shard.replicas.iter().filter(|n| **n != m.from);
        kept.chain(std::iter::once(&m.to))
            .all(|n| self.heard_lately(*n, now))
    }

    fn aborted(&self, m: &Migration, reason: &AbortReason, now: Instant) {
        self.metrics.moves_aborted.inc();
        let wait = plan::backoff(m.attempts, &self.settings);
        self.with_memory(|mem| {
            mem.checkpoints.remove(&m.id);
            let backoff = match m.kind {
                MigrationKind::Balance => &mut mem.balance_backoff_until,
                MigrationKind::Restore | MigrationKind::Drain => &mut mem.backoff_until,
            };
            backoff.insert(m.shard, now + wait);
        });
        tracing::warn!(migration = %m.id, shard = %m.shard, to = %m.to, attempt = m.attempts, %reason, retry_in_ms = wait.as_millis() as u64, "move aborted");
    }

    async fn request_checkpoint(
        &self,
        m: &Migration,
        cluster: &Cluster,
        storage: &dyn StorageCalls,
        primary: NodeId,
        epoch: u64,
    ) -> Result<Pace, ApiError> {
        let Some(addr) = cluster.nodes.get(&primary).and_then(|n| n.addrs.first()) else {
            return Ok(Pace::Idle);
        };
        match storage.checkpoint(addr, m.shard, epoch).await {
            Ok(seq) => {
                self.with_memory(|mem| {
                    mem.checkpoints.insert(
                        m.id,
                        Requested {
                            seq,
                            primary,
                            epoch,
                        },
                    );
                });
                tracing::info!(migration = %m.id, shard = %m.shard, %primary, epoch, seq, "checkpoint written for verification");
                Ok(Pace::Soon)
            }
            // Retried next tick, until the move's deadline.
            Err(e) => {
                tracing::info!(migration = %m.id, shard = %m.shard, %primary, error = %e, "checkpoint not written");
                Ok(Pace::Idle)
            }
        }
    }
}

#[cfg(test)]
mod tests;
