//! The follower's half (secondaries and learners): keeping the log equal to the primary's,
//! acknowledging what is durable, applying what is committed; and, for every role, applying
//! committed entries to the data with checkpoints computed at exactly their sequence.
//!
//! Each frame names the entry before its own (`prev`); a follower whose log disagrees there
//! answers `Mismatch` and the primary's stream backs up. Otherwise entries it already holds
//! with the same epoch are skipped, the first that differs truncates the rest of its log, and
//! the new ones are appended in the same atomic write. Two entries with the same sequence and
//! epoch are the same entry, because one epoch has one primary and a primary never reuses its
//! epoch after a restart.
//!
//! A learner's log starts where the primary's stream found it: its first frame sets the
//! floor, the copy brings the data up to at least the entry before it, and only then does it
//! apply.

use super::{Msg, Replica};
use crate::storage::copy;
use augur_proto::data::{
    Checkpoint, DataError, Effect, Fence, ReplicaAck, ReplicaRole, ReplicateFrame,
};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

impl Replica {
    /// Whether this replica's log agrees with the primary's at `(seq, epoch)`.
    fn agrees_at(&self, seq: u64, epoch: u64) -> bool {
        if seq == 0 || seq < self.state.floor || seq <= self.committed.min(self.state.applied) {
            // Nothing before the log's start, or applied (and so committed and identical).
            return true;
        }
        matches!(self.log.epoch_at(seq), Ok(Some(e)) if e == epoch)
    }

    pub(crate) fn on_frame(
        &mut self,
        fence: Fence,
        frame: ReplicateFrame,
        reply: oneshot::Sender<ReplicaAck>,
        _tx: &mpsc::Sender<Msg>,
    ) {
        let refuse = |e: DataError| ReplicaAck::Refused(e);
        let Some(config) = self.config.clone() else {
            let _ = reply.send(refuse(DataError::Unavailable(
                "no configuration for the shard yet".into(),
            )));
            return;
        };
        if fence.epoch < self.state.epoch {
            let _ = reply.send(refuse(DataError::StaleEpoch {
                shard: self.shard,
                epoch: self.state.epoch,
            }));
            return;
        }
        if fence.epoch > self.state.epoch {
            let _ = reply.send(refuse(DataError::Behind {
                shard: self.shard,
                epoch: self.state.epoch,
            }));
            return;
        }
        if config.replicas.first() != Some(&fence.from) {
            let _ = reply.send(refuse(DataError::Fenced(format!(
                "node {} is not the primary of shard {} at epoch {}",
                fence.from, self.shard, self.state.epoch
            ))));
            return;
        }
        if !matches!(
            self.state.role,
            ReplicaRole::Secondary | ReplicaRole::Learner
        ) {
            let _ = reply.send(refuse(DataError::Fenced(format!(
                "this node is {:?} of shard {} at epoch {}",
                self.state.role, self.shard, self.state.epoch
            ))));
            return;
        }
        let (p_seq, p_epoch) = frame.prev;
        // A primary sends the entries after `prev` in order; anything else would leave a
        // hole in the log (applying would stop for good at the missing entry) or overflow
        // a sequence.
        let next = |i: usize| p_seq.checked_add(1)?.checked_add(i as u64);
        let in_order = next(0).is_some()
            && frame
                .entries
                .iter()
                .enumerate()
                .all(|(i, e)| next(i) == Some(e.seq) && e.seq < u64::MAX);
        if !in_order {
            let _ = reply.send(refuse(DataError::InvalidArgument(format!(
                "shard {}: a frame's entries must follow {p_seq} one by one",
                self.shard
            ))));
            return;
        }
        if self.state.role == ReplicaRole::Learner && !self.state.copied && !self.stream_started {
            // A learner that holds nothing: its log starts after the primary's `prev`, and
            // the copy will cover everything up to it.
            self.state.floor = p_seq + 1;
            self.last = (p_seq, p_epoch);
            self.prepared = p_seq;
            self.stream_started = true;
            if let Err(e) = self.engine.save_replica_state(self.shard, &self.state) {
                let _ = reply.send(refuse(DataError::Internal(e.to_string())));
                return;
            }
        }
        if !self.agrees_at(p_seq, p_epoch) {
            let _ = reply.send(ReplicaAck::Mismatch {
                prepared: self.last.0.min(p_seq.saturating_sub(1)),
            });
            return;
        }
        // Entries this log lacks, from the first that differs.
        let mut fresh = Vec::new();
        let mut truncate = false;
        let end = frame.entries.last().map(|e| e.seq).unwrap_or(p_seq);
        for e in frame.entries {
            if e.seq < self.state.floor {
                continue;
            }
            if fresh.is_empty() && e.seq <= self.last.0 {
                match self.log.epoch_at(e.seq) {
                    Ok(Some(mine)) if mine == e.epoch => continue,
                    Ok(_) => truncate = true,
                    Err(err) => {
                        let _ = reply.send(refuse(DataError::Internal(err.to_string())));
                        return;
                    }
                }
            }
            fresh.push(e);
        }
        if let Some(first) = fresh.first() {
            if !truncate && first.seq != self.last.0 + 1 {
                // A gap: the primary must back up.
                let _ = reply.send(ReplicaAck::Mismatch {
                    prepared: self.last.0,
                });
                return;
            }
            if truncate && first.seq <= self.committed {
                let _ = reply.send(refuse(DataError::Internal(format!(
                    "shard {}: the primary disagrees with committed entry {}",
                    self.shard, first.seq
                ))));
                return;
            }
            let (first_seq, last) = (first.seq, fresh.last().map(|e| (e.seq, e.epoch)));
            if let Err(e) = self.log.append(fresh, truncate) {
                let _ = reply.send(refuse(DataError::Internal(e.to_string())));
                return;
            }
            if truncate {
                // Syncs asked before cannot vouch for the rewritten entries.
                self.sync_gen += 1;
                self.prepared = self.prepared.min(first_seq - 1);
                self.awaiting_sync.clear();
            }
            if let Some(last) = last {
                self.last = last;
            }
        }
        self.matched = end;
        self.committed = self.committed.max(frame.committed.min(end));
        if end <= self.prepared {
            let _ = reply.send(ReplicaAck::Prepared { seq: end });
        } else {
            self.awaiting_sync.push((end, reply));
        }
        self.follower_apply();
    }

    /// Answers frames whose entries are now durable, and applies what may be.
    pub(crate) fn ack_synced(&mut self) {
        let prepared = self.prepared;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting_sync)
            .into_iter()
            .partition(|(seq, _)| *seq <= prepared);
        self.awaiting_sync = waiting;
        for (seq, reply) in done {
            let _ = reply.send(ReplicaAck::Prepared { seq });
        }
        self.follower_apply();
    }

    fn follower_apply(&mut self) {
        if self.state.role == ReplicaRole::Learner && !self.state.copied {
            return;
        }
        let limit = self.committed.min(self.prepared).min(self.matched);
        self.apply_upto(limit);
    }

    /// Applies log entries up to `limit`, splitting batches at checkpoints so each checksum
    /// sees exactly the data up to its entry; prunes the log behind.
    pub(crate) fn apply_upto(&mut self, limit: u64) {
        while self.state.applied < limit {
            let from = self.state.applied + 1;
            let mut entries = match self.log.entries(from, limit, 4 << 20) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(shard = %self.shard, error = %e, "cannot read the log to apply");
                    return;
                }
            };
            if entries.first().map(|e| e.seq) != Some(from) {
                tracing::error!(shard = %self.shard, from, limit, "a committed entry is missing from the log");
                return;
            }
            if let Some(i) = entries.iter().position(|e| e.effect == Effect::Checkpoint) {
                entries.truncate(i + 1);
            }
            let Some(last) = entries
                .last()
                .map(|e| (e.seq, e.effect == Effect::Checkpoint))
            else {
                return;
            };
            let mut next = self.state;
            next.applied = last.0;
            if let Err(e) = self.engine.apply(self.shard, &entries, &next) {
                tracing::error!(shard = %self.shard, error = %e, "cannot apply committed entries");
                return;
            }
            self.state = next;
            if last.1 {
                self.checksum_in_background(last.0);
            }
            if self.state.role == ReplicaRole::Primary {
                self.resolve_applied();
            }
        }
        self.prune();
    }

    /// Checksums the shard as it is now, just after applying the checkpoint entry `seq`,
    /// without holding this task for the whole-shard read: a blocking thread takes a RocksDB
    /// snapshot, the task waits only until it exists (anything applied after would otherwise
    /// leak into the figure), and the figure comes back as [`Msg::Checksummed`]. On a primary
    /// the read took the shard's writes hostage for as long as it ran (100 ms for 35 MB);
    /// now they go on while it runs.
    ///
    /// The read shares the node's copy budget ([`copy::Throttle`]), as the copies it verifies
    /// do: while clients are served it goes at the busy rate, unless the shard is short of
    /// replicas. Every replica reads the whole shard for each move's checkpoint, so unpaced
    /// these reads were more bytes than the copies themselves.
    fn checksum_in_background(&self, seq: u64) {
        let (engine, shard, gen, me) = (
            self.engine.clone(),
            self.shard,
            self.checksum_gen,
            self.me.clone(),
        );
        let ctx = self.ctx.clone();
        let rt = tokio::runtime::Handle::current();
        let (taken_tx, taken_rx) = std::sync::mpsc::sync_channel::<()>(1);
        tokio::task::spawn_blocking(move || {
            let snap = engine.snapshot();
            let _ = taken_tx.send(());
            let pace = |n: u64| {
                let urgent = copy::urgent_now(&ctx, shard);
                rt.block_on(ctx.throttle.take(n as usize, urgent))
            };
            match engine.checksum_paced(&snap, shard, seq, pace) {
                Ok(checkpoint) => {
                    // The task may have ended (the shard left this node): nothing to tell.
                    let _ = me.blocking_send(Msg::Checksummed { gen, checkpoint });
                }
                Err(e) => tracing::error!(%shard, seq, error = %e, "checkpoint checksum failed"),
            }
        });
        if tokio::task::block_in_place(|| taken_rx.recv()).is_err() {
            tracing::error!(shard = %self.shard, seq, "the checksum thread ended before taking its snapshot");
        }
    }

    /// A checksum computed off the task: kept unless a learner reset or a later checkpoint
    /// came in between.
    pub(crate) fn on_checksummed(&mut self, gen: u64, c: Checkpoint) {
        if gen != self.checksum_gen || self.checkpoint.is_some_and(|old| old.seq >= c.seq) {
            return;
        }
        tracing::info!(shard = %self.shard, seq = c.seq, crc64 = format_args!("{:016x}", c.crc64), keys = c.keys, bytes = c.bytes, "checkpoint");
        self.checkpoint = Some(c);
        // A move's verification waits for this figure: report it now.
        self.ctx.report_now.notify_one();
    }

    /// Drops applied entries beyond the retention, keeping what a lagging peer may need.
    fn prune(&mut self) {
        let keep = self.ctx.cfg.replication.log_retention;
        let applied = self.state.applied;
        // Saturating: the floor comes from a primary's frame and may be anything.
        if applied
            <= self
                .state
                .floor
                .saturating_add(keep)
                .saturating_add(keep / 4)
        {
            return;
        }
        let before = applied - keep;
        if let Err(e) = self.engine.prune_log(self.shard, before) {
            tracing::warn!(shard = %self.shard, error = %e, "cannot prune the log");
            return;
        }
        self.state.floor = before;
    }

    /// A learner starts its copy once its log has a floor.
    pub(crate) fn learner_tick(&mut self, tx: &mpsc::Sender<Msg>) {
        // Nothing to copy until the primary's stream has set where the log starts.
        if self.state.copied || self.copying || !self.stream_started {
            return;
        }
        let Some(config) = self.config.clone() else {
            return;
        };
        self.copying = true;
        let job = Arc::new(copy::CopyJob::default());
        self.copy_job = Some(job.clone());
        copy::start_fetch(
            self.ctx.clone(),
            config,
            job,
            self.state.floor.saturating_sub(1),
            tx.clone(),
        );
    }

    pub(crate) fn on_copy_done(&mut self, at_seq: u64, job: &Arc<copy::CopyJob>) {
        if !self.copy_job.as_ref().is_some_and(|j| Arc::ptr_eq(j, job)) {
            // A copy this learner gave up when it started over: its data is gone with it.
            return;
        }
        self.copying = false;
        if self.state.role != ReplicaRole::Learner || self.state.copied {
            return;
        }
        if at_seq.saturating_add(1) < self.state.floor {
            tracing::error!(shard = %self.shard, at_seq, floor = self.state.floor, "a copy older than the log's start; copying again");
            return;
        }
        self.state.applied = at_seq;
        self.state.copied = true;
        self.committed = self.committed.max(at_seq);
        if let Err(e) = self.engine.save_replica_state(self.shard, &self.state) {
            tracing::error!(shard = %self.shard, error = %e, "cannot record the finished copy");
            self.state.copied = false;
            return;
        }
        tracing::info!(shard = %self.shard, at_seq, "learner: copy complete");
        self.follower_apply();
        // The leader's move waits for this report; it need not wait for the next beat.
        self.ctx.report_now.notify_one();
    }
}
