//! One shard's replica on this node: a task that owns the replica's state and handles, in
//! order, everything that changes it: client writes (as primary), replication frames (as
//! secondary or learner), acknowledgements from peers, configuration changes from the
//! metadata, and a periodic tick.
//!
//! - this module: the task and its messages;
//! - [`roles`]: configuration changes and the roles they give;
//! - [`primary`]: ordering writes, commit, reconciliation of a new primary;
//! - [`follower`]: a secondary's or learner's log, and applying committed entries;
//! - [`tail`]: the shard's log as the task writes and reads it, its newest entries in memory.
//!
//! Reads do not go through the task: it publishes a [`View`] (role, epoch, whether it
//! serves) that the server checks before reading committed data from the engine.
//!
//! Roles follow the shard record only. A node acts on a new epoch only after it has synced
//! `(epoch, role)` to disk; a primary becomes one only at a new epoch and serves only after
//! it has reconciled every replica with its log (a `Noop` entry of its epoch committed by
//! all). A primary that restarts does not trust its old epoch (its unsynced tail may have
//! reached others): it asks the control plane to choose a primary again at a new epoch.

pub mod follower;
pub mod primary;
pub mod roles;
pub mod tail;

use super::copy::CopyJob;
use super::engine::{Engine, EngineError, ReplicaState};
use super::replicate::Sender;
use super::NodeCtx;
use augur_proto::data::{
    Checkpoint, DataError, Fence, LogEntry, ReplicaAck, ReplicaRole, ReplicaStatus, ReplicateFrame,
    RequestId, WriteOp, WriteOutcome,
};
use augur_proto::{NodeId, Shard, ShardId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// What the server needs to know to route a read without asking the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The epoch the replica acts under.
    pub epoch: u64,
    /// Its role.
    pub role: ReplicaRole,
    /// For a primary: reconciled and serving.
    pub serving: bool,
    /// The primary of the configuration it knows.
    pub primary: Option<NodeId>,
    /// Highest sequence applied.
    pub applied: u64,
}

/// Who waits for a hand-off to drain: answered with the last applied sequence.
pub(crate) type HandOffWaiter = oneshot::Sender<Result<u64, DataError>>;

/// A key's latest uncommitted write: its sequence, and the key's version once it applies
/// (`None`: deleted).
pub(crate) type Overlaid = (u64, Option<u64>);

/// A message to a replica's task.
pub enum Msg {
    /// A client write (primary only).
    Write {
        /// The epoch the client believes in.
        epoch: u64,
        /// The request id.
        id: RequestId,
        /// The write.
        op: WriteOp,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<WriteOutcome, DataError>>,
    },
    /// A replication frame from the primary.
    Frame {
        /// Its fence.
        fence: Fence,
        /// The frame.
        frame: ReplicateFrame,
        /// Where the acknowledgement goes (once the entries are durable).
        reply: oneshot::Sender<ReplicaAck>,
    },
    /// The shard record changed.
    Config(Arc<Shard>),
    /// The log is durable up to this sequence, as of sync generation `gen` (a truncation
    /// starts a new generation, so an older notice cannot vouch for rewritten entries).
    Synced {
        /// The generation the sync was asked in.
        gen: u64,
        /// The last sequence written when it was asked.
        upto: u64,
    },
    /// A peer acknowledged entries up to `seq` while this replica was primary at `epoch`.
    PeerAck {
        /// The peer.
        peer: NodeId,
        /// The epoch of the stream.
        epoch: u64,
        /// Its prepared sequence.
        seq: u64,
    },
    /// A peer's stream reported the peer's log disagreeing below what the primary has
    /// pruned: it can only be caught up by a copy.
    PeerLost {
        /// The peer.
        peer: NodeId,
        /// Why.
        why: String,
    },
    /// A learner's copy finished: data up to `at_seq` is durable.
    CopyDone {
        /// The applied sequence the copy was read at.
        at_seq: u64,
        /// Which copy: one the learner has since given up (a reset) does not count.
        job: Arc<CopyJob>,
    },
    /// A checksum of the shard computed at a checkpoint entry, off the task (see
    /// [`Replica::checksum_in_background`]).
    Checksummed {
        /// The replica's `checksum_gen` when it was asked: a learner reset since makes it void.
        gen: u64,
        /// The figure.
        checkpoint: Checkpoint,
    },
    /// Hand off the primary role: stop serving, let writes in flight commit, answer with the
    /// last applied sequence (primary).
    HandOff {
        /// The caller's epoch.
        epoch: u64,
        /// How long to stay handed off without a new configuration.
        timeout: Duration,
        /// The answer.
        reply: oneshot::Sender<Result<u64, DataError>>,
    },
    /// Write a checkpoint entry and answer with its sequence once committed (primary).
    Checkpoint {
        /// The caller's epoch.
        epoch: u64,
        /// The answer.
        reply: oneshot::Sender<Result<u64, DataError>>,
    },
    /// Report this replica's state.
    Status(oneshot::Sender<ReplicaStatus>),
    /// The node was declared Down: whatever it led is void until the control plane names a
    /// primary again at a new epoch. Answered once the replica has stepped down.
    NodeFenced(oneshot::Sender<()>),
    /// Periodic housekeeping.
    Tick,
}

/// A handle to a replica's task. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    /// The shard.
    pub shard: ShardId,
    tx: mpsc::Sender<Msg>,
    view: watch::Receiver<View>,
}

impl Handle {
    /// Sends a message; `Unavailable` if the task has stopped.
    pub async fn send(&self, msg: Msg) -> Result<(), DataError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| DataError::Unavailable(format!("shard {} is stopping", self.shard)))
    }

    /// Whether both handles reach the same task.
    pub fn same_task(&self, other: &Handle) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// The latest view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Waits until the replica has applied at least `seq`, or `timeout` passes.
    pub async fn applied_at_least(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.view.clone();
        tokio::time::timeout(timeout, rx.wait_for(|v| v.applied >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Tells the replica its node was declared Down, and waits until it has stepped down.
    pub async fn fence(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::NodeFenced(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Asks for the replica's status.
    pub async fn status(&self) -> Option<ReplicaStatus> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Status(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// A write waiting for its entry to commit.
pub(crate) struct Pending {
    pub(crate) entry: LogEntry,
    pub(crate) waiters: Vec<oneshot::Sender<Result<WriteOutcome, DataError>>>,
}

/// A replica's state, owned by its task.
pub struct Replica {
    pub(crate) shard: ShardId,
    pub(crate) ctx: Arc<NodeCtx>,
    pub(crate) engine: Engine,
    /// The latest shard record.
    pub(crate) config: Option<Arc<Shard>>,
    /// Durable state: epoch, role, applied, floor, copied.
    pub(crate) state: ReplicaState,
    /// Last sequence in the log (written, maybe not yet durable) and its epoch.
    pub(crate) last: (u64, u64),
    /// Highest sequence durable in the log.
    pub(crate) prepared: u64,
    /// Highest sequence known committed.
    pub(crate) committed: u64,
    /// For a follower: highest sequence known to agree with the current primary's log.
    pub(crate) matched: u64,
    /// For a follower: acknowledgements waiting for the log to be durable.
    pub(crate) awaiting_sync: Vec<(u64, oneshot::Sender<ReplicaAck>)>,
    /// Bumped by every truncation of the log (see [`Msg::Synced`]).
    pub(crate) sync_gen: u64,
    /// Primary: reconciled and serving.
    pub(crate) serving: bool,
    /// Primary: the sequence of its reconciling `Noop`.
    pub(crate) reconcile_at: u64,
    /// Primary: uncommitted entries and who waits for them.
    pub(crate) pending: BTreeMap<u64, Pending>,
    /// Primary: the latest uncommitted value of each key written (None: deleted).
    pub(crate) overlay: HashMap<Vec<u8>, Overlaid>,
    /// Primary: request ids in flight and their sequence.
    pub(crate) inflight: HashMap<RequestId, u64>,
    /// Primary: checkpoint callers waiting for a sequence to commit.
    pub(crate) checkpoint_waiters: Vec<(u64, oneshot::Sender<Result<u64, DataError>>)>,
    /// Primary: one replication stream per peer.
    pub(crate) senders: HashMap<NodeId, Sender>,
    /// Primary: each peer's acknowledged sequence, and since when it has owed an
    /// acknowledgement (its last one, or when it became behind after having everything).
    pub(crate) acked: HashMap<NodeId, (u64, Instant)>,
    /// Primary: peers reported to the control plane, at which epoch and when last (a
    /// report is sent again every [`primary::REPORT_AGAIN`] while the peer still holds up
    /// commits at that epoch: one lost with a leader change must not stall the shard).
    pub(crate) reported: HashMap<NodeId, (u64, Instant)>,
    /// The last checkpoint applied here.
    pub(crate) checkpoint: Option<Checkpoint>,
    /// Since when the replica has been a stray (out of the configuration).
    pub(crate) stray_since: Option<Instant>,
    /// Learner: a copy task is running.
    pub(crate) copying: bool,
    /// Learner: the running (or finished) copy; a new one per copy, so a copy given up
    /// cannot report into the next one.
    pub(crate) copy_job: Option<Arc<CopyJob>>,
    /// Bumped when a learner starts over: checksums asked before then are void.
    pub(crate) checksum_gen: u64,
    /// This task's own queue, for work finished off the task (checksums).
    pub(crate) me: mpsc::Sender<Msg>,
    /// Learner: the primary's stream has set where its log starts.
    pub(crate) stream_started: bool,
    /// After a restart as primary: the control plane was asked to choose again.
    pub(crate) asked_reelection: Option<Instant>,
    /// Primary handing off: until when it serves nothing, and who waits for the drain.
    pub(crate) handing_off: Option<(Instant, Vec<HandOffWaiter>)>,
    /// Tells senders the log grew or the commit moved.
    pub(crate) progress: watch::Sender<(u64, u64)>,
    /// The shard's log (its newest entries also in memory), shared with the senders.
    pub(crate) log: tail::ShardLog,
    view: watch::Sender<View>,
}

impl Replica {
    /// Starts the task of a shard's replica, from what the engine holds for it.
    pub fn spawn(ctx: Arc<NodeCtx>, shard: ShardId) -> Result<Handle, EngineError> {
        let engine = ctx.engine.clone();
        // Nothing recorded: this node holds nothing of the shard (never had it, or deleted
        // its copy), and says so (`copied` false) until a record makes it a founder.
        let recorded = engine.replica_state(shard)?;
        // A stray recorded before a restart was taken out of its shard: when is not recorded,
        // so its grace period starts again now. Without this the record that repeats its
        // epoch changes nothing (see `on_config`) and the copy would stay on disk for good.
        let stray_since = recorded
            .is_some_and(|s| s.role == ReplicaRole::Stray)
            .then(Instant::now);
        let state = recorded.unwrap_or(ReplicaState {
            copied: false,
            ..ReplicaState::empty(0, ReplicaRole::Stray)
        });
        let last = engine
            .last_entry(shard)?
            .map(|e| (e.seq, e.epoch))
            .unwrap_or((state.floor.saturating_sub(1), 0));
        let (view_tx, view_rx) = watch::channel(View {
            epoch: state.epoch,
            role: state.role,
            serving: false,
            primary: None,
            applied: state.applied,
        });
        let (progress, _) = watch::channel((last.0, state.applied));
        let (tx, rx) = mpsc::channel(1024);
        let replica = Replica {
            log: tail::ShardLog::new(engine.clone(), shard),
            shard,
            ctx,
            engine,
            config: None,
            state,
            last,
            // Whatever survived a restart is in the log; it is synced before anything is
            // acknowledged (see `run`).
            prepared: last.0,
            committed: state.applied,
            matched: 0,
            awaiting_sync: Vec::new(),
            sync_gen: 0,
            serving: false,
            reconcile_at: 0,
            pending: BTreeMap::new(),
            overlay: HashMap::new(),
            inflight: HashMap::new(),
            checkpoint_waiters: Vec::new(),
            senders: HashMap::new(),
            acked: HashMap::new(),
            reported: HashMap::new(),
            checkpoint: None,
            stray_since,
            copying: false,
            copy_job: None,
            checksum_gen: 0,
            me: tx.clone(),
            stream_started: false,
            asked_reelection: None,
            handing_off: None,
            progress,
            view: view_tx,
        };
        let handle = Handle {
            shard,
            tx: tx.clone(),
            view: view_rx,
        };
        tokio::spawn(replica.run(rx, tx));
        Ok(handle)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, tx: mpsc::Sender<Msg>) {
        // A restart may leave unsynced entries in the log: make them durable before any
        // acknowledgement refers to them.
        if let Err(e) = self.engine.synced().await {
            tracing::error!(shard = %self.shard, error = %e, "initial sync failed");
        }
        if self.state.role == ReplicaRole::Learner && !self.state.copied {
            // A copy interrupted by a restart starts over.
            self.reset_learner();
        }
        let restarted_primary = self.state.role == ReplicaRole::Primary;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if restarted_primary {
            tracing::info!(shard = %self.shard, epoch = self.state.epoch, "restarted as primary: asking for a new epoch before serving");
        }
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => break },
                _ = tick.tick() => Msg::Tick,
            };
            self.handle(msg, &tx);
            // Take whatever else is queued before flushing, so a burst shares one write and
            // one sync.
            let mut n = 0;
            while n < 256 {
                match rx.try_recv() {
                    Ok(m) => self.handle(m, &tx),
                    Err(_) => break,
                }
                n += 1;
            }
            self.flush(&tx);
            self.publish();
            if self.state.role == ReplicaRole::Stray && self.config.is_some() && self.gone() {
                break;
            }
        }
        for (_, s) in self.senders.drain() {
            s.stop();
        }
        // A record sent just before this stray forgot itself would be lost with the queue,
        // and nothing would send it again (the directory already holds it): hand it back to
        // the node, which starts a new task if it lists this node.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Config(shard) = msg {
                let ctx = self.ctx.clone();
                tokio::spawn(async move { ctx.on_shard(shard).await });
            }
        }
    }

    fn handle(&mut self, msg: Msg, tx: &mpsc::Sender<Msg>) {
        match msg {
            Msg::Write {
                epoch,
                id,
                op,
                reply,
            } => self.on_write(epoch, id, op, reply),
            Msg::Frame {
                fence,
                frame,
                reply,
            } => self.on_frame(fence, frame, reply, tx),
            Msg::Config(shard) => self.on_config(shard, tx),
            Msg::Synced { gen, upto } => {
                if gen == self.sync_gen {
                    self.on_synced(upto)
                }
            }
            Msg::PeerAck { peer, epoch, seq } => self.on_peer_ack(peer, epoch, seq),
            Msg::PeerLost { peer, why } => self.report_peer(peer, &why),
            Msg::CopyDone { at_seq, job } => self.on_copy_done(at_seq, &job),
            Msg::Checksummed { gen, checkpoint } => self.on_checksummed(gen, checkpoint),
            Msg::Checkpoint { epoch, reply } => self.on_checkpoint(epoch, reply),
            Msg::HandOff {
                epoch,
                timeout,
                reply,
            } => self.on_hand_off(epoch, timeout, reply),
            Msg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Msg::NodeFenced(reply) => {
                if self.state.role == ReplicaRole::Primary {
                    self.step_down("this node was declared Down");
                    // As after a restart: ask for a new epoch before serving again.
                    self.reconcile_at = 0;
                    self.asked_reelection = None;
                }
                // Reads are checked against the published view, not by this task: it must
                // say "not serving" before the node's registration (which waits for this
                // answer) makes its lease valid again, or a read at the old epoch could be
                // answered here while a promoted replica acknowledges newer writes.
                self.publish();
                let _ = reply.send(());
            }
            Msg::Tick => self.on_tick(tx),
        }
    }

    /// This replica's state, for heartbeats and probes.
    pub(crate) fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            shard: self.shard,
            epoch: self.state.epoch,
            role: self.state.role,
            prepared: self.prepared,
            committed: self.committed,
            applied: self.state.applied,
            serving: self.serving,
            copied: self.state.copied,
            copy_bytes: match &self.copy_job {
                Some(job) if !self.state.copied => job.bytes(),
                _ => 0,
            },
            // Filled in for all replicas at once by the node's report.
            size_estimate: 0,
            checkpoint: self.checkpoint,
        }
    }

    fn publish(&self) {
        let v = View {
            epoch: self.state.epoch,
            role: self.state.role,
            serving: self.serving && self.handing_off.is_none(),
            primary: self
                .config
                .as_ref()
                .and_then(|c| c.replicas.first().copied()),
            applied: self.state.applied,
        };
        self.view.send_if_modified(|old| {
            if *old != v {
                *old = v;
                true
            } else {
                false
            }
        });
        // Only a change wakes the streams: `send_replace` woke every one of them after each
        // message the task handled (a sync notice, an acknowledgement that moved nothing).
        let progress = (self.last.0, self.committed);
        self.progress.send_if_modified(|old| {
            let changed = *old != progress;
            *old = progress;
            changed
        });
    }

    fn on_tick(&mut self, tx: &mpsc::Sender<Msg>) {
        match self.state.role {
            ReplicaRole::Primary => self.primary_tick(tx),
            ReplicaRole::Learner => self.learner_tick(tx),
            _ => {}
        }
    }

    /// Writes what was queued this round, and asks for one sync for all of it.
    fn flush(&mut self, tx: &mpsc::Sender<Msg>) {
        let upto = self.last.0;
        if upto <= self.prepared {
            return;
        }
        let gen = self.sync_gen;
        let tx = tx.clone();
        // The callback runs on the engine's syncer thread, outside the runtime: a blocking
        // send is allowed there, and a sync notice must never be dropped.
        if let Err(e) = self.engine.sync(move |r| match r {
            Ok(()) => {
                let _ = tx.blocking_send(Msg::Synced { gen, upto });
            }
            Err(e) => tracing::error!(error = %e, "WAL sync failed; entries stay unacknowledged"),
        }) {
            tracing::error!(shard = %self.shard, error = %e, "cannot sync the log");
        }
    }

    fn on_synced(&mut self, upto: u64) {
        if upto <= self.prepared {
            return;
        }
        self.prepared = upto.min(self.last.0);
        match self.state.role {
            ReplicaRole::Primary => self.advance_commit(),
            _ => self.ack_synced(),
        }
    }
}
