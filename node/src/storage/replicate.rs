//! The primary's replication stream to one peer (secondary or learner) of one shard.
//!
//! The stream reads entries from the primary's log (the newest from memory, see
//! [`ShardLog`]), so a peer that fell behind, reconnected or restarted is caught up the same
//! way as one that kept pace. A session
//! first probes: an empty frame naming the entry before what it means to send next. `Mismatch`
//! moves that point back until the peer's log agrees; from then on frames are sent ahead of
//! their acknowledgements (up to a window) and the acknowledgements, which QUIC keeps in order,
//! are handed to the replica's task. A frame also carries the primary's committed sequence. When
//! only the commit moved, an empty frame tells it [`COMMIT_NOTICE`] later unless an entry took it
//! first, and an idle stream sends one every [`KEEPALIVE`], so followers apply soon and a silent
//! peer shows.
//!
//! A peer whose log disagrees below what the primary still holds can only be repaired by a
//! copy: the stream reports it and stops, and the primary asks the control plane to replace
//! the replica.

use super::replica::tail::ShardLog;
use super::replica::Msg;
use super::NodeCtx;
use augur_proto::data::{DataRequest, Fence, LogEntry, ReplicaAck, ReplicateFrame};
use augur_proto::frame::write_frame;
use augur_proto::NodeId;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Frames sent ahead of their acknowledgements.
const WINDOW: usize = 16;
/// An idle stream sends an empty frame this often.
const KEEPALIVE: Duration = Duration::from_millis(500);
/// How long a commit waits for a frame of entries to carry it before an empty frame does.
///
/// Under a write load each shard typically has one write in flight: told at once, every
/// commit cost a second frame and acknowledgement per peer and per write, and a wake-up of
/// each follower's task (a profile of a put run: about half of the replication streams'
/// frames). A follower applies a little later instead; nothing waits on that but a
/// checkpoint's checksum, and nothing reads from a follower.
const COMMIT_NOTICE: Duration = Duration::from_millis(10);

/// A running stream; stopped when dropped from the primary's map (see [`Sender::stop`]).
pub struct Sender {
    /// The epoch its fence carries.
    pub epoch: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    /// Starts streaming `log`'s shard to `peer`, assuming at first that the peer holds what
    /// this primary holds up to `last` (the probe corrects it).
    pub fn start(
        log: Log,
        epoch: u64,
        peer: NodeId,
        last: (u64, u64),
        progress: watch::Receiver<(u64, u64)>,
        tx: mpsc::Sender<Msg>,
    ) -> Sender {
        let task = tokio::spawn(run(log, epoch, peer, last, progress, tx));
        Sender { epoch, task }
    }

    /// Stops the stream.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a session ended.
enum End {
    /// Reconnect after a pause.
    Retry(String),
    /// The peer cannot be caught up from the log.
    Lost(String),
    /// The replica's task is gone.
    Stop,
}

async fn run(
    log: Log,
    epoch: u64,
    peer: NodeId,
    last: (u64, u64),
    mut progress: watch::Receiver<(u64, u64)>,
    tx: mpsc::Sender<Msg>,
) {
    // The entry before the next one to send, as (seq, epoch).
    let mut base = last;
    let first_backoff = Duration::from_millis(50);
    let mut backoff = first_backoff;
    let (ctx, shard) = (&log.ctx, log.log.shard());
    loop {
        let started_at = base;
        let end = match ctx.node_addr(peer) {
            Some(addr) => session(&log, epoch, peer, &addr, &mut base, &mut progress, &tx).await,
            None => {
                // Registered while this node listed, and the watch has not brought it yet.
                super::directory::refresh_node(ctx, peer).await;
                End::Retry(format!("no address known for node {peer}"))
            }
        };
        match end {
            End::Stop => return,
            End::Lost(why) => {
                let _ = tx.send(Msg::PeerLost { peer, why }).await;
                return;
            }
            End::Retry(why) => {
                if base != started_at {
                    // The session streamed entries: this is a new failure, not the next
                    // attempt at an old one, so it waits the first pause again.
                    backoff = first_backoff;
                }
                tracing::debug!(%shard, %peer, %why, "replication stream: reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The primary's log of one shard, as its streams read it.
pub struct Log {
    ctx: Arc<NodeCtx>,
    log: ShardLog,
}

impl Log {
    /// `log`'s shard on this node, streamed with what `ctx` gives.
    pub fn new(ctx: Arc<NodeCtx>, log: ShardLog) -> Log {
        Log { ctx, log }
    }

    /// The epoch of the entry at `seq` (0 for the start of the log).
    fn epoch_at(&self, seq: u64) -> Result<u64, End> {
        if seq == 0 {
            return Ok(0);
        }
        match self.log.epoch_at(seq) {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(End::Lost(format!(
                "entry {seq} is no longer in the primary's log"
            ))),
            Err(e) => Err(End::Retry(e.to_string())),
        }
    }

    /// Entries from `from` up to `to` (about `max_bytes` of them); starting exactly at
    /// `from`, or the stream cannot go on from the log.
    fn entries(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<LogEntry>, End> {
        let entries = self
            .log
            .entries(from, to, max_bytes)
            .map_err(|e| End::Retry(e.to_string()))?;
        if entries.first().map(|e| e.seq) != Some(from) {
            return Err(End::Lost(format!(
                "entry {from} is no longer in the primary's log"
            )));
        }
        Ok(entries)
    }
}

async fn session(
    log: &Log,
    epoch: u64,
    peer: NodeId,
    addr: &str,
    base: &mut (u64, u64),
    progress: &mut watch::Receiver<(u64, u64)>,
    tx: &mpsc::Sender<Msg>,
) -> End {
    let (ctx, shard) = (&*log.ctx, log.log.shard());
    let fence = Fence {
        shard,
        epoch,
        from: ctx.node,
        from_incarnation: ctx.incarnation,
        to: peer,
    };
    let (mut send, mut recv) = match ctx
        .peers
        .open_as(addr, &DataRequest::Replicate(fence))
        .await
    {
        Ok(s) => s,
        Err(e) => return End::Retry(e.to_string()),
    };
    let max_frame = ctx.peers.max_frame();
    let max_batch = ctx.cfg.replication.max_batch_bytes;
    let ack_timeout = Duration::from_millis(ctx.cfg.replication.ack_timeout_ms.saturating_mul(2));
    // Probe until the peer's log agrees at `base`.
    loop {
        let committed = progress.borrow().1;
        let probe = ReplicateFrame {
            prev: *base,
            entries: Vec::new(),
            committed,
        };
        if let Err(e) = write_frame(&mut send, &probe, max_frame).await {
            return End::Retry(e.to_string());
        }
        let ack = match tokio::time::timeout(ack_timeout, recv.next_as::<ReplicaAck>()).await {
            Err(_) => {
                ctx.peers.discard_if_silent(&recv);
                return End::Retry("no answer to the probe".into());
            }
            Ok(Err(e)) => return End::Retry(e.to_string()),
            Ok(Ok(None)) => return End::Retry("the peer ended the stream".into()),
            Ok(Ok(Some(a))) => a,
        };
        match ack {
            ReplicaAck::Prepared { seq } => {
                // A peer vouches only for what it was sent: never past the probe's `prev`.
                let seq = seq.min(base.0);
                if tx.send(Msg::PeerAck { peer, epoch, seq }).await.is_err() {
                    return End::Stop;
                }
                break;
            }
            ReplicaAck::Mismatch { prepared } => {
                let back = prepared.min(base.0.saturating_sub(1));
                match log.epoch_at(back) {
                    Ok(e) => *base = (back, e),
                    Err(end) => return end,
                }
            }
            ReplicaAck::Refused(e) => return End::Retry(format!("refused: {e}")),
        }
    }
    // In step: stream entries ahead of their acknowledgements.
    let mut owed: VecDeque<u64> = VecDeque::new();
    let mut told_committed = 0;
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = false;
    // When an empty frame is due to tell a commit that no entry has carried.
    let mut notice: Option<tokio::time::Instant> = None;
    loop {
        let (last, committed) = *progress.borrow_and_update();
        if committed > told_committed && notice.is_none() {
            notice = Some(tokio::time::Instant::now() + COMMIT_NOTICE);
        }
        let notice_due = notice.is_some_and(|t| t <= tokio::time::Instant::now());
        let tell_commit = |told: u64| notice_due && committed > told;
        while owed.len() < WINDOW && (base.0 < last || tell_commit(told_committed) || idle) {
            idle = false;
            notice = None;
            let entries = if base.0 < last {
                match log.entries(base.0 + 1, last, max_batch) {
                    Ok(e) => e,
                    Err(end) => return end,
                }
            } else {
                Vec::new()
            };
            let frame = ReplicateFrame {
                prev: *base,
                committed,
                entries,
            };
            if let Some(e) = frame.entries.last() {
                *base = (e.seq, e.epoch);
            }
            owed.push_back(base.0);
            told_committed = committed;
            if let Err(e) = write_frame(&mut send, &frame, max_frame).await {
                return End::Retry(e.to_string());
            }
        }
        tokio::select! {
            ack = tokio::time::timeout(ack_timeout, recv.next_as::<ReplicaAck>()), if !owed.is_empty() => {
                let ack = match ack {
                    Err(_) => {
                        ctx.peers.discard_if_silent(&recv);
                        return End::Retry("acknowledgements stopped".into());
                    }
                    Ok(Err(e)) => return End::Retry(e.to_string()),
                    Ok(Ok(None)) => return End::Retry("the peer ended the stream".into()),
                    Ok(Ok(Some(a))) => a,
                };
                // The frame this answers (answers come in order); a peer vouches only for
                // the entries it was sent, however high a number it names.
                let sent = owed.pop_front().unwrap_or(0);
                match ack {
                    ReplicaAck::Prepared { seq } => {
                        let seq = seq.min(sent);
                        if tx.send(Msg::PeerAck { peer, epoch, seq }).await.is_err() {
                            return End::Stop;
                        }
                    }
                    ReplicaAck::Mismatch { prepared } => {
                        // The peer lost entries it had acknowledged (a wiped disk under the
                        // same incarnation cannot happen; a bug or corruption can): probe again.
                        let back = prepared.min(base.0);
                        return match log.epoch_at(back) {
                            Ok(e) => {
                                *base = (back, e);
                                End::Retry(format!("the peer's log disagrees after {back}"))
                            }
                            Err(end) => end,
                        };
                    }
                    ReplicaAck::Refused(e) => return End::Retry(format!("refused: {e}")),
                }
            }
            changed = progress.changed() => if changed.is_err() { return End::Stop },
            _ = keepalive.tick() => idle = owed.is_empty(),
            _ = sleep_until(notice), if owed.len() < WINDOW => {}
        }
    }
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
