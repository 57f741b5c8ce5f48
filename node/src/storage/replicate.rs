//! The primary's replication stream to one peer (secondary or learner) of one shard.
//!
//! The stream reads entries from the primary's log, not from memory, so a peer that fell
//! behind, reconnected or restarted is caught up the same way as one that kept pace. A session
//! first probes: an empty frame naming the entry before what it means to send next. `Mismatch`
//! moves that point back until the peer's log agrees; from then on frames are sent ahead of
//! their acknowledgements (up to a window) and the acknowledgements, which QUIC keeps in order,
//! are handed to the replica's task. A frame also carries the primary's committed sequence, and
//! an empty frame goes out when only the commit moved or the stream was idle for a while, so
//! followers apply promptly and a silent peer shows.
//!
//! A peer whose log disagrees below what the primary still holds can only be repaired by a
//! copy: the stream reports it and stops, and the primary asks the control plane to replace
//! the replica.

use super::replica::Msg;
use super::NodeCtx;
use augur_proto::data::{DataRequest, Fence, ReplicaAck, ReplicateFrame};
use augur_proto::frame::write_frame;
use augur_proto::{NodeId, ShardId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Frames sent ahead of their acknowledgements.
const WINDOW: usize = 16;
/// An idle stream sends an empty frame this often.
const KEEPALIVE: Duration = Duration::from_millis(500);

/// A running stream; stopped when dropped from the primary's map (see [`Sender::stop`]).
pub struct Sender {
    /// The epoch its fence carries.
    pub epoch: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    /// Starts streaming shard `shard` to `peer`, assuming at first that the peer holds what
    /// this primary holds up to `last` (the probe corrects it).
    pub fn start(
        ctx: Arc<NodeCtx>,
        shard: ShardId,
        epoch: u64,
        peer: NodeId,
        last: (u64, u64),
        progress: watch::Receiver<(u64, u64)>,
        tx: mpsc::Sender<Msg>,
    ) -> Sender {
        let task = tokio::spawn(run(ctx, shard, epoch, peer, last, progress, tx));
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
    ctx: Arc<NodeCtx>,
    shard: ShardId,
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
    loop {
        let started_at = base;
        let end = match ctx.node_addr(peer) {
            Some(addr) => {
                session(
                    &ctx,
                    shard,
                    epoch,
                    peer,
                    &addr,
                    &mut base,
                    &mut progress,
                    &tx,
                )
                .await
            }
            None => {
                // Registered while this node listed, and the watch has not brought it yet.
                super::directory::refresh_node(&ctx, peer).await;
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

/// The epoch of the entry at `seq` in this primary's log (0 for the start of the log).
fn epoch_at(ctx: &NodeCtx, shard: ShardId, seq: u64) -> Result<u64, End> {
    if seq == 0 {
        return Ok(0);
    }
    match ctx.engine.entry(shard, seq) {
        Ok(Some(e)) => Ok(e.epoch),
        Ok(None) => Err(End::Lost(format!(
            "entry {seq} is no longer in the primary's log"
        ))),
        Err(e) => Err(End::Retry(e.to_string())),
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    ctx: &NodeCtx,
    shard: ShardId,
    epoch: u64,
    peer: NodeId,
    addr: &str,
    base: &mut (u64, u64),
    progress: &mut watch::Receiver<(u64, u64)>,
    tx: &mpsc::Sender<Msg>,
) -> End {
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
    let ack_timeout = Duration::from_millis(ctx.cfg.replication.ack_timeout_ms * 2);
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
                if tx.send(Msg::PeerAck { peer, epoch, seq }).await.is_err() {
                    return End::Stop;
                }
                break;
            }
            ReplicaAck::Mismatch { prepared } => {
                let back = prepared.min(base.0.saturating_sub(1));
                match epoch_at(ctx, shard, back) {
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
    loop {
        let (last, committed) = *progress.borrow_and_update();
        while owed.len() < WINDOW && (base.0 < last || committed > told_committed || idle) {
            idle = false;
            let entries = if base.0 < last {
                match ctx.engine.entries(shard, base.0 + 1, last, max_batch) {
                    Ok(e) if e.first().map(|e| e.seq) == Some(base.0 + 1) => e,
                    Ok(_) => {
                        return End::Lost(format!(
                            "entry {} is no longer in the primary's log",
                            base.0 + 1
                        ))
                    }
                    Err(e) => return End::Retry(e.to_string()),
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
                owed.pop_front();
                match ack {
                    ReplicaAck::Prepared { seq } => {
                        if tx.send(Msg::PeerAck { peer, epoch, seq }).await.is_err() {
                            return End::Stop;
                        }
                    }
                    ReplicaAck::Mismatch { prepared } => {
                        // The peer lost entries it had acknowledged (a wiped disk under the
                        // same incarnation cannot happen; a bug or corruption can): probe again.
                        let back = prepared.min(base.0);
                        return match epoch_at(ctx, shard, back) {
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
        }
    }
}
