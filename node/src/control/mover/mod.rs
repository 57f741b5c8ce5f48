//! Re-replication and draining: the move machinery of the control plane.
//!
//! - [`plan`]: which under-replicated shards get a new replica now, and where;
//! - [`drain`]: emptying Draining nodes: primaries handed off first, then one move per
//!   replica, each replacing the draining node's replica with a verified new one;
//! - [`balance`]: once nothing else moves, replicas moved and primaries handed off to even
//!   out how many replicas each healthy node holds and how many shards it leads;
//! - [`steps`]: the next step of one migration in flight;
//! - [`txns`]: the one transaction each step writes;
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
pub mod txns;

use super::cluster::{Cluster, Reports};
use super::store::{MetaStore, StorageCalls};
use super::Control;
use augur_proto::model::ShardState;
use augur_proto::wire::ApiError;
use augur_proto::{
    Migration, MigrationId, MigrationKind, MigrationState, NodeId, Record, Shard, ShardId, Txn,
};
use futures::future::join_all;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use steps::{next_step, AbortReason, Step};
pub use txns::{abort_txn, commit_drops_source, commit_txn, copied_txn, progress_txn, start_txn};

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
        // Primaries leave draining nodes before anything else moves, and surplus replicas
        // leave their shards (see [`drain`]); each step that wrote reads the records again.
        let handed = self
            .hand_off_primaries(&cluster, &self.reports(), meta, storage)
            .await?;
        if handed > 0 {
            cluster = meta.cluster().await?;
        }
        let trimmed = self
            .trim_surplus(&cluster, &self.reports(), meta, now)
            .await?;
        if trimmed > 0 {
            cluster = meta.cluster().await?;
        }
        if handed + trimmed > 0 {
            pace = Pace::Now;
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
