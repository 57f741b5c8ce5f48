//! Configuration changes: what a new shard record makes of this replica (primary,
//! secondary, learner or stray), and the transitions between them: stepping down, a learner
//! starting over empty, a stray deleting its data once its grace period is over.
//!
//! Apart from the task loop in the parent module, whose documentation states the rules
//! followed here, because these are the only paths that change the epoch and role: reading
//! them together is how one checks that a node acts on an epoch only once it is durable.

use super::{Msg, Replica};
use augur_proto::data::{DataError, ReplicaRole};
use augur_proto::{Shard, SHARD_CREATION_EPOCH};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

impl Replica {
    /// The role the shard record gives this node.
    fn role_in(&self, shard: &Shard) -> ReplicaRole {
        let me = self.ctx.node;
        if shard.replicas.first() == Some(&me) {
            ReplicaRole::Primary
        } else if shard.replicas.contains(&me) {
            ReplicaRole::Secondary
        } else if shard.learners.contains(&me) {
            ReplicaRole::Learner
        } else {
            ReplicaRole::Stray
        }
    }

    /// Applies a new shard record: see the module documentation.
    pub(super) fn on_config(&mut self, shard: Arc<Shard>, tx: &mpsc::Sender<Msg>) {
        if self
            .config
            .as_ref()
            .is_some_and(|c| c.version >= shard.version)
            || shard.epoch < self.state.epoch
        {
            return;
        }
        let role = self.role_in(&shard);
        let same_epoch = shard.epoch == self.state.epoch;
        let old_epoch = self.state.epoch;
        let was = self.state.role;
        let previous = self.config.replace(shard.clone());
        if was == ReplicaRole::Stray
            && !self.state.copied
            && matches!(role, ReplicaRole::Primary | ReplicaRole::Secondary)
            && !(shard.epoch == SHARD_CREATION_EPOCH && self.state.applied == 0)
        {
            // A replica joins a shard only as a learner, so the only stray named a replica
            // without having copied the shard is a founder at the shard's creation. Any
            // other holds part of the shard at best, or nothing: a removed replica whose
            // copy was deleted at the end of its grace while `augurctl shard force-primary`
            // named it from an older report. Serving would present it as the whole shard.
            // (A founder whose first record is a later epoch is refused too; the primary
            // then has it removed, and a learner copy replaces it.)
            tracing::error!(shard = %self.shard, epoch = shard.epoch, ?role, applied = self.state.applied,
                "named a replica of the shard without holding a copy of it: not taking the role. \
                 If it was forced, stop this node; once it is declared Down, force a node that \
                 holds a copy (`augurctl shard force-primary`)");
            self.config = previous;
            return;
        }
        if same_epoch && role == was {
            self.update_peers(tx);
            return;
        }
        if same_epoch && role != was && was != ReplicaRole::Stray {
            // Two records with one epoch and different roles cannot both be right: the
            // control plane bumps the epoch on every change. Wait for the next one.
            tracing::warn!(shard = %self.shard, epoch = shard.epoch, ?was, ?role, "same epoch, different role; waiting");
            return;
        }
        tracing::info!(shard = %self.shard, epoch = shard.epoch, from = ?was, to = ?role, "configuration changed");
        if was == ReplicaRole::Primary && role != ReplicaRole::Primary {
            self.step_down("the primary was replaced");
        }
        // A new configuration ends a hand-off, whichever way it went.
        if let Some((_, waiters)) = self.handing_off.take() {
            for w in waiters {
                let _ = w.send(Err(DataError::Unavailable(
                    "the configuration changed".into(),
                )));
            }
        }
        if role == ReplicaRole::Learner && was != ReplicaRole::Learner {
            // Whatever this node held of the shard before is not to be trusted: start empty.
            self.reset_learner();
        }
        let mut next = self.state;
        next.epoch = shard.epoch;
        next.role = role;
        if matches!(role, ReplicaRole::Primary | ReplicaRole::Secondary)
            && was == ReplicaRole::Stray
        {
            // Either it held a copy already or it is a founder at the shard's creation (see
            // above), which holds the whole, empty shard.
            next.copied = true;
        }
        // Durable before acting on it: the epoch and role in memory change only once saved.
        if let Err(e) = self.engine.save_replica_state(self.shard, &next) {
            tracing::error!(shard = %self.shard, error = %e, "cannot record the new epoch; not acting on it");
            // Not taken: the same record, sent again, is acted on then.
            self.config = previous;
            return;
        }
        self.state = next;
        if role != ReplicaRole::Learner {
            // A copy in progress is moot once this node is no longer a learner (a stray's
            // data is deleted after its grace period; nothing may be ingested after that).
            self.abandon_copy();
        }
        self.matched = 0;
        self.stray_since = (role == ReplicaRole::Stray).then(Instant::now);
        match role {
            ReplicaRole::Primary => {
                if keeps_its_log(was, self.serving, old_epoch, shard.epoch) {
                    // Still primary at the next epoch (a replica added or removed): the log
                    // is this node's own, nothing to reconcile.
                    self.reported.clear();
                    self.update_peers(tx);
                } else {
                    self.become_primary(tx);
                }
            }
            ReplicaRole::Stray => {
                for (_, s) in self.senders.drain() {
                    s.stop();
                }
            }
            ReplicaRole::Secondary | ReplicaRole::Learner => {}
        }
    }

    /// Gives up the primary role: stops streams and fails waiting writes as indeterminate
    /// (their entries may still commit under the next primary).
    pub(super) fn step_down(&mut self, why: &str) {
        self.serving = false;
        for (_, s) in self.senders.drain() {
            s.stop();
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            for w in p.waiters {
                let _ = w.send(Err(DataError::Indeterminate(format!(
                    "{why} with the write in flight; resend it with the same request id"
                ))));
            }
        }
        for (_, w) in self.checkpoint_waiters.drain(..) {
            let _ = w.send(Err(DataError::Unavailable(why.to_string())));
        }
        self.overlay.clear();
        self.inflight.clear();
        self.acked.clear();
    }

    /// Gives up the copy in progress, if any; once this returns nothing of it is ingested.
    pub(super) fn abandon_copy(&mut self) {
        if let Some(job) = self.copy_job.take() {
            job.cancel();
        }
        self.copying = false;
    }

    /// Empties the shard on this node so a learner copies it from scratch. The copy in
    /// progress is given up first: a file of it ingested after the delete would put older
    /// values under the new copy.
    pub(super) fn reset_learner(&mut self) {
        self.abandon_copy();
        if let Err(e) = self.log.delete_shard() {
            tracing::error!(shard = %self.shard, error = %e, "cannot clear the shard for a new copy");
        }
        self.state.applied = 0;
        self.state.floor = 1;
        self.state.copied = false;
        self.last = (0, 0);
        self.prepared = 0;
        self.committed = 0;
        self.matched = 0;
        self.checksum_gen += 1;
        // Syncs asked for the deleted log cannot vouch for the new one's entries, and
        // acknowledgements owed on it are void.
        self.sync_gen += 1;
        self.awaiting_sync.clear();
        self.stream_started = false;
        self.checkpoint = None;
    }

    /// Whether a stray's grace period is over and its data deleted.
    pub(super) fn gone(&mut self) -> bool {
        let grace = Duration::from_millis(self.ctx.cfg.replication.stray_grace_ms);
        if self.stray_since.is_none_or(|t| t.elapsed() < grace) {
            return false;
        }
        self.abandon_copy();
        match self.log.delete_shard() {
            Ok(()) => {
                tracing::info!(shard = %self.shard, "deleted the copy of a shard this node no longer holds");
                self.ctx.forget(self.shard);
                true
            }
            Err(e) => {
                tracing::error!(shard = %self.shard, error = %e, "cannot delete a stray shard");
                false
            }
        }
    }
}

/// Whether a serving primary named primary again at `new_epoch` may go on with its log as
/// it stands, without reconciling. Only at the very next epoch: then nobody else can have
/// been primary since this node last was. A node that skipped a configuration (its watch
/// lagged and a refresh jumped to the latest record) cannot know that another primary did
/// not serve in between, truncating the peers' tails to its own and writing over them; the
/// peers' acknowledgements it holds would then count entries they no longer have. It
/// reconciles as a newly promoted primary does: a `Noop` at the new epoch, committed by
/// every peer's fresh acknowledgement, before it serves.
fn keeps_its_log(was: ReplicaRole, serving: bool, old_epoch: u64, new_epoch: u64) -> bool {
    was == ReplicaRole::Primary && serving && old_epoch.checked_add(1) == Some(new_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_serving_primary_at_the_next_epoch_keeps_its_log() {
        assert!(keeps_its_log(ReplicaRole::Primary, true, 4, 5));
        // A configuration skipped: another primary may have served at epoch 5.
        assert!(!keeps_its_log(ReplicaRole::Primary, true, 4, 6));
        // Not yet reconciled, or not primary before.
        assert!(!keeps_its_log(ReplicaRole::Primary, false, 4, 5));
        assert!(!keeps_its_log(ReplicaRole::Secondary, true, 4, 5));
        assert!(!keeps_its_log(ReplicaRole::Primary, true, u64::MAX, 0));
    }
}
