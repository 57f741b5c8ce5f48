//! The primary's half: ordering writes, commit, reconciliation, and asking the control plane
//! to remove a replica that stopped acknowledging.
//!
//! A write is evaluated against the latest state, including writes prepared but not yet
//! committed (kept in an overlay), so compare-and-set sees every write ordered before it. Its
//! entry gets the next sequence; the entries of one round are written with one batch and one
//! WAL sync, and the replication streams pick them up from the log at once. An entry commits
//! when it is durable here and every replica and learner of the configuration has
//! acknowledged it; it is then applied and its writer answered.
//!
//! A new primary writes a `Noop` of its epoch first and serves only once that is committed:
//! by then every replica's log agrees with its own up to it (the streams truncate what
//! disagrees), so everything before it is committed too.

use super::{Msg, Pending, Replica};
use crate::storage::replicate::{Log, Sender};
use augur_proto::data::{
    DataError, Effect, LogEntry, Redirect, ReplicaRole, RequestId, WriteOp, WriteOutcome,
};
use augur_proto::NodeId;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How often a report the control plane has not acted on is sent again.
pub(crate) const REPORT_AGAIN: Duration = Duration::from_secs(3);

impl Replica {
    /// The peers whose acknowledgement a commit needs: every replica but this one, and every
    /// learner.
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        let me = self.ctx.node;
        self.config
            .as_ref()
            .map(|c| {
                c.replicas
                    .iter()
                    .chain(&c.learners)
                    .copied()
                    .filter(|n| *n != me)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn redirect(&self) -> DataError {
        DataError::Redirect(Redirect {
            shard: self.shard,
            epoch: self.state.epoch,
            primary: self
                .config
                .as_ref()
                .and_then(|c| c.replicas.first().copied()),
        })
    }

    /// Whether this replica may take a request naming `epoch` as primary now.
    pub(crate) fn check_primary(&self, epoch: u64) -> Result<(), DataError> {
        if epoch > self.state.epoch {
            return Err(DataError::Behind {
                shard: self.shard,
                epoch: self.state.epoch,
            });
        }
        if epoch < self.state.epoch {
            return Err(DataError::StaleEpoch {
                shard: self.shard,
                epoch: self.state.epoch,
            });
        }
        if self.state.role != ReplicaRole::Primary {
            return Err(self.redirect());
        }
        if !self.serving {
            return Err(DataError::Unavailable(format!(
                "shard {} is reconciling its replicas",
                self.shard
            )));
        }
        if self.handing_off.is_some() {
            return Err(DataError::Unavailable(format!(
                "shard {} is handing its primary role to another replica",
                self.shard
            )));
        }
        if !self.ctx.lease.valid() {
            return Err(DataError::Unavailable(
                "this node's lease has expired; it serves nothing until it is renewed".into(),
            ));
        }
        Ok(())
    }

    /// The version of `key` including writes not yet committed.
    fn current_version(&self, key: &[u8]) -> Result<Option<u64>, DataError> {
        if let Some((_, v)) = self.overlay.get(key) {
            return Ok(*v);
        }
        self.engine
            .get(self.shard, key)
            .map(|v| v.map(|v| v.version))
            .map_err(|e| DataError::Internal(e.to_string()))
    }

    pub(crate) fn on_write(
        &mut self,
        epoch: u64,
        id: RequestId,
        op: WriteOp,
        reply: oneshot::Sender<Result<WriteOutcome, DataError>>,
    ) {
        if let Err(e) = op.validate().and_then(|()| self.check_primary(epoch)) {
            let _ = reply.send(Err(e));
            return;
        }
        // A resent write: the same answer, once. The same id with another write is a caller's
        // bug, refused: telling it the first write's outcome would report a write that never
        // happened.
        let op_digest = op.digest();
        let reused = |first: u64| {
            DataError::InvalidArgument(format!(
                "request id {id} was already used for another write (digest {first:016x}, \
                 this one {op_digest:016x}); a resend must repeat the same write"
            ))
        };
        if let Some(seq) = self.inflight.get(&id) {
            if let Some(p) = self.pending.get_mut(seq) {
                if p.entry.op_digest != op_digest {
                    let _ = reply.send(Err(reused(p.entry.op_digest)));
                } else {
                    p.waiters.push(reply);
                }
                return;
            }
        }
        match self.engine.remembered(self.shard, &id) {
            Ok(Some(r)) if r.op_digest != op_digest => {
                let _ = reply.send(Err(reused(r.op_digest)));
                return;
            }
            Ok(Some(r)) => {
                let _ = reply.send(Ok(r.outcome));
                return;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = reply.send(Err(DataError::Internal(e.to_string())));
                return;
            }
        }
        if self.pending.len() >= self.ctx.cfg.replication.max_pending_writes {
            let _ = reply.send(Err(DataError::Unavailable(format!(
                "shard {} has {} writes in flight",
                self.shard,
                self.pending.len()
            ))));
            return;
        }
        let seq = self.last.0 + 1;
        // Only a compare-and-set needs the key's current version: a blind put or delete does
        // not pay for a lookup (which may read a file) on the shard's task.
        let current = match &op {
            WriteOp::Cas { key, .. } => match self.current_version(key) {
                Ok(v) => v,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            },
            WriteOp::Put { .. } | WriteOp::Delete { .. } => None,
        };
        let (effect, outcome) = match op {
            WriteOp::Put { key, value } => (
                Effect::Put { key, value },
                WriteOutcome::Applied { version: seq },
            ),
            WriteOp::Delete { key } => (
                Effect::Delete { key },
                WriteOutcome::Applied { version: seq },
            ),
            WriteOp::Cas {
                key,
                expected,
                value,
            } => {
                if current == expected {
                    let effect = match value {
                        Some(value) => Effect::Put { key, value },
                        None => Effect::Delete { key },
                    };
                    (effect, WriteOutcome::Applied { version: seq })
                } else {
                    (Effect::Noop, WriteOutcome::Conflict { current })
                }
            }
        };
        if let Some((key, pending)) = overlay_entry(&effect, seq) {
            self.overlay.insert(key.clone(), pending);
        }
        let entry = LogEntry {
            seq,
            epoch: self.state.epoch,
            request: Some(id),
            op_digest,
            effect,
            outcome,
            at_ms: crate::control::registry::now_ms(),
        };
        self.append_own(entry, Some(reply));
    }

    /// Appends an entry this primary wrote; it goes out with the round's flush.
    fn append_own(
        &mut self,
        entry: LogEntry,
        waiter: Option<oneshot::Sender<Result<WriteOutcome, DataError>>>,
    ) {
        if let Err(e) = self.log.append(vec![entry.clone()], false) {
            tracing::error!(shard = %self.shard, error = %e, "cannot append to the log");
            if let Some(w) = waiter {
                let _ = w.send(Err(DataError::Internal(e.to_string())));
            }
            if let Effect::Put { key, .. } | Effect::Delete { key } = &entry.effect {
                if self.overlay.get(key).is_some_and(|(s, _)| *s == entry.seq) {
                    // The key's latest write is again the latest one still pending, which
                    // the failed entry's overlay had replaced: a compare-and-set must see it.
                    let earlier = self.pending.values().rev().find_map(|p| {
                        overlay_entry(&p.entry.effect, p.entry.seq)
                            .filter(|(k, _)| *k == key)
                            .map(|(_, v)| v)
                    });
                    match earlier {
                        Some(v) => self.overlay.insert(key.clone(), v),
                        None => self.overlay.remove(key),
                    };
                }
            }
            return;
        }
        // A peer that had everything starts owing now: its ack timeout counts from here, not
        // from its last acknowledgement (which may be long ago on an idle shard).
        let now = Instant::now();
        for (seq, since) in self.acked.values_mut() {
            if *seq >= self.last.0 {
                *since = now;
            }
        }
        self.last = (entry.seq, entry.epoch);
        if let Some(id) = entry.request {
            self.inflight.insert(id, entry.seq);
        }
        self.pending.insert(
            entry.seq,
            Pending {
                entry,
                waiters: waiter.into_iter().collect(),
            },
        );
    }

    /// Becomes primary at a new epoch: writes its `Noop` and reconciles before serving.
    pub(crate) fn become_primary(&mut self, tx: &mpsc::Sender<Msg>) {
        self.serving = false;
        self.asked_reelection = None;
        self.reported.clear();
        self.acked.clear();
        let seq = self.last.0 + 1;
        self.reconcile_at = seq;
        self.append_own(
            LogEntry {
                seq,
                epoch: self.state.epoch,
                request: None,
                op_digest: 0,
                effect: Effect::Noop,
                outcome: WriteOutcome::Applied { version: seq },
                at_ms: crate::control::registry::now_ms(),
            },
            None,
        );
        if self.last.0 != seq {
            // The `Noop` was not written (logged above): reconciliation would wait for it
            // for ever. Ask for a new epoch instead (the tick does), as a restarted primary
            // does.
            self.reconcile_at = 0;
        } else {
            tracing::info!(shard = %self.shard, epoch = self.state.epoch, reconcile_at = seq, "primary: reconciling");
        }
        for (_, s) in self.senders.drain() {
            s.stop();
        }
        self.update_peers(tx);
    }

    /// Starts and stops replication streams to match the configuration.
    pub(crate) fn update_peers(&mut self, tx: &mpsc::Sender<Msg>) {
        if self.state.role != ReplicaRole::Primary {
            return;
        }
        let peers = self.peers();
        let epoch = self.state.epoch;
        self.senders.retain(|peer, s| {
            let keep = peers.contains(peer) && s.epoch == epoch;
            if !keep {
                s.stop();
            }
            keep
        });
        // A peer's acknowledgement counts only on the stream that got it: a stream restarted
        // at a new epoch probes the peer's log again, and until the probe is answered what
        // the peer acknowledged before is not counted. At the next epoch under the same
        // primary nobody else can have written to the peer (a primary that skipped an epoch
        // reconciles and starts from nothing, see `roles::keeps_its_log`), so this is a
        // guard, not a repair: whatever the configuration change did to a peer's log, the
        // commit point moves only on what the peer says now. The probe has twice the ack
        // timeout to be answered, so the peer's silence is judged (the tick's slow-peer
        // check) only from one ack timeout on: a caught-up peer on an idle shard is not
        // reported at once.
        let ack_timeout = Duration::from_millis(self.ctx.cfg.replication.ack_timeout_ms);
        let now = Instant::now();
        let judged_from = now.checked_add(ack_timeout).unwrap_or(now);
        let senders = &self.senders;
        self.acked.retain(|peer, a| {
            if !senders.contains_key(peer) {
                *a = (0, judged_from);
            }
            peers.contains(peer)
        });
        for peer in peers {
            if self.senders.contains_key(&peer) {
                continue;
            }
            self.acked.entry(peer).or_insert((0, now));
            let log = Log::new(self.ctx.clone(), self.log.clone());
            let s = Sender::start(
                log,
                epoch,
                peer,
                self.last,
                self.progress.subscribe(),
                tx.clone(),
            );
            self.senders.insert(peer, s);
        }
        self.advance_commit();
    }

    pub(crate) fn on_peer_ack(&mut self, peer: NodeId, epoch: u64, seq: u64) {
        if epoch != self.state.epoch || self.state.role != ReplicaRole::Primary {
            return;
        }
        if let Some(a) = self.acked.get_mut(&peer) {
            if seq > a.0 {
                *a = (seq, Instant::now());
            }
        }
        self.advance_commit();
    }

    /// Commits what every peer and this node hold, applies it and answers its writers.
    pub(crate) fn advance_commit(&mut self) {
        if self.state.role != ReplicaRole::Primary {
            return;
        }
        let mut c = self.prepared;
        for peer in self.peers() {
            c = c.min(self.acked.get(&peer).map(|a| a.0).unwrap_or(0));
        }
        if c > self.committed {
            self.committed = c;
        }
        self.apply_upto(self.committed);
        if !self.serving && self.reconcile_at > 0 && self.state.applied >= self.reconcile_at {
            self.serving = true;
            tracing::info!(shard = %self.shard, epoch = self.state.epoch, seq = self.reconcile_at, "primary: reconciled, serving");
        }
        self.finish_hand_off();
    }

    /// Answers the writers of entries now applied.
    pub(crate) fn resolve_applied(&mut self) {
        let applied = self.state.applied;
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > applied {
                break;
            }
            let p = entry.remove();
            if let Some(id) = p.entry.request {
                self.inflight.remove(&id);
            }
            if let Effect::Put { key, .. } | Effect::Delete { key } = &p.entry.effect {
                if self.overlay.get(key).is_some_and(|(s, _)| *s <= applied) {
                    self.overlay.remove(key);
                }
            }
            for w in p.waiters {
                let _ = w.send(Ok(p.entry.outcome));
            }
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.checkpoint_waiters)
            .into_iter()
            .partition(|(seq, _)| *seq <= applied);
        self.checkpoint_waiters = waiting;
        for (seq, w) in done {
            let _ = w.send(Ok(seq));
        }
    }

    /// Starts (or joins) a hand-off: no new writes from here; the answer comes once every
    /// write taken is applied (see [`Replica::finish_hand_off`]).
    pub(crate) fn on_hand_off(
        &mut self,
        epoch: u64,
        timeout: Duration,
        reply: oneshot::Sender<Result<u64, DataError>>,
    ) {
        if let Some((_, waiters)) = self.handing_off.as_mut() {
            waiters.push(reply);
        } else {
            if let Err(e) = self.check_primary(epoch) {
                let _ = reply.send(Err(e));
                return;
            }
            tracing::info!(shard = %self.shard, epoch, "primary: handing off");
            self.handing_off = Some((Instant::now() + timeout, vec![reply]));
        }
        self.finish_hand_off();
    }

    /// Answers hand-off callers once nothing is in flight.
    pub(crate) fn finish_hand_off(&mut self) {
        let Some((_, waiters)) = self.handing_off.as_mut() else {
            return;
        };
        if self.pending.is_empty() && self.state.applied >= self.last.0 {
            let seq = self.state.applied;
            for w in waiters.drain(..) {
                let _ = w.send(Ok(seq));
            }
        }
    }

    /// A hand-off with no new configuration in time: this primary does not serve again on
    /// its own. The time running out proves nothing: the hand-off's write may still commit
    /// (the control plane proposes it once answered, with no deadline), and the new primary
    /// could then remove this node while it, its lease valid, answered reads the new
    /// primary's writes had made stale. It asks instead, as after a restart, to be elected
    /// again at a new epoch ([`crate::control::failure::reelect`]): a write comparing the
    /// shard's version, so exactly one of it and a late hand-off lands, and the new
    /// configuration (this node primary or not) ends the hand-off. Asked again every few
    /// seconds until one comes.
    fn hand_off_expired(&mut self) {
        let Some((until, waiters)) = self.handing_off.as_mut() else {
            return;
        };
        if Instant::now() < *until {
            return;
        }
        for w in waiters.drain(..) {
            let _ = w.send(Err(DataError::Unavailable("the hand-off timed out".into())));
        }
        *until = Instant::now() + Duration::from_secs(3);
        tracing::warn!(shard = %self.shard, epoch = self.state.epoch, "hand-off not followed by a new configuration: asking to be elected again at a new epoch");
        let me = self.ctx.node;
        self.report(
            me,
            "a hand-off timed out; choose the primary again at a new epoch",
        );
    }

    pub(crate) fn on_checkpoint(
        &mut self,
        epoch: u64,
        reply: oneshot::Sender<Result<u64, DataError>>,
    ) {
        if let Err(e) = self.check_primary(epoch) {
            let _ = reply.send(Err(e));
            return;
        }
        // A checkpoint of this epoch still on its way to commit answers this caller too. The
        // leader's call gives up after a few seconds and asks again while a slow learner
        // holds the commit back; an entry per call would start a whole-shard checksum on
        // every replica per call.
        let epoch_now = self.state.epoch;
        let waiting = self
            .checkpoint_waiters
            .iter()
            .map(|(seq, _)| *seq)
            .find(|seq| {
                self.pending.get(seq).is_some_and(|p| {
                    p.entry.epoch == epoch_now && p.entry.effect == Effect::Checkpoint
                })
            });
        if let Some(seq) = waiting {
            self.checkpoint_waiters.push((seq, reply));
            return;
        }
        let seq = self.last.0 + 1;
        self.append_own(
            LogEntry {
                seq,
                epoch: self.state.epoch,
                request: None,
                op_digest: 0,
                effect: Effect::Checkpoint,
                outcome: WriteOutcome::Applied { version: seq },
                at_ms: crate::control::registry::now_ms(),
            },
            None,
        );
        if self.last.0 != seq {
            // Not appended (logged above): the next entry takes this sequence, and the caller
            // must not be told a write's sequence is a checkpoint's.
            let _ = reply.send(Err(DataError::Unavailable(
                "the checkpoint entry could not be written".into(),
            )));
            return;
        }
        self.checkpoint_waiters.push((seq, reply));
    }

    /// Reports peers that hold up commits, and asks for a new epoch after a restart.
    pub(crate) fn primary_tick(&mut self, _tx: &mpsc::Sender<Msg>) {
        if !self.serving && self.reconcile_at == 0 {
            // Restarted as primary: its unsynced tail may have reached others under this
            // epoch, so it must not write more under it. Ask the control plane to choose a
            // primary again, at a new epoch (see the module documentation of `replica`).
            let due = self
                .asked_reelection
                .is_none_or(|t| t.elapsed() >= REPORT_AGAIN);
            if due && self.config.is_some() {
                self.asked_reelection = Some(Instant::now());
                let me = self.ctx.node;
                self.report(me, "the primary restarted and must not reuse its epoch");
            }
            return;
        }
        self.finish_hand_off();
        self.hand_off_expired();
        let timeout = Duration::from_millis(self.ctx.cfg.replication.ack_timeout_ms);
        let owed = self.last.0;
        let slow: Vec<NodeId> = self
            .acked
            .iter()
            .filter(|(_, (seq, since))| *seq < owed && since.elapsed() >= timeout)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in slow {
            self.report_peer(peer, "no acknowledgement within the ack timeout");
        }
    }

    /// Asks the control plane to remove a peer; again every [`REPORT_AGAIN`] while the
    /// peer is still reported slow at this epoch (the control plane takes a repeat as done).
    /// A report is not acknowledged to the replica: one lost (the metadata leader changing
    /// for longer than the client's deadline) would otherwise leave every write waiting for
    /// the peer until something else changed the epoch.
    pub(crate) fn report_peer(&mut self, peer: NodeId, why: &str) {
        if self.state.role != ReplicaRole::Primary {
            return;
        }
        let epoch = self.state.epoch;
        let last = self.reported.get(&peer).filter(|(e, _)| *e == epoch);
        if last.is_some_and(|(_, at)| at.elapsed() < REPORT_AGAIN) {
            return;
        }
        let again = last.is_some();
        self.reported.insert(peer, (epoch, Instant::now()));
        tracing::warn!(shard = %self.shard, epoch, %peer, why, again, "asking the control plane to remove a replica");
        self.report(peer, why);
    }

    fn report(&self, replica: NodeId, why: &str) {
        let ctx = self.ctx.clone();
        let (shard, epoch, reason) = (self.shard, self.state.epoch, why.to_string());
        tokio::spawn(async move {
            if let Err(e) = ctx.meta.report_replica(shard, epoch, replica, reason).await {
                tracing::warn!(%shard, error = %e, "the control plane did not take the report");
            }
        });
    }
}

/// The overlay entry a pending write at `seq` makes (see [`Replica::overlay`]): its key, and
/// the key's version once it applies (`None`: deleted). Nothing for an entry touching no key.
fn overlay_entry(effect: &Effect, seq: u64) -> Option<(&Vec<u8>, super::Overlaid)> {
    match effect {
        Effect::Put { key, .. } => Some((key, (seq, Some(seq)))),
        Effect::Delete { key } => Some((key, (seq, None))),
        Effect::Noop | Effect::Checkpoint => None,
    }
}
