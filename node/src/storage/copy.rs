//! Copying a shard to a learner, the machinery every new replica and every move uses.
//!
//! The learner asks a healthy replica for the shard's content read at an applied sequence of
//! at least `at_least` (the entry before the first one it logged from the primary). The source
//! waits until it has applied that far, reads one RocksDB snapshot and streams the shard's items
//! in key order, in chunks of about `copy.chunk_bytes`, each with the CRC-64 of its items; the
//! learner checks each chunk before writing it. A broken stream resumes after the last key the
//! learner holds, from a new snapshot (possibly on another replica). The learner then counts its
//! copy as read at the *smallest* applied sequence of the snapshots it used and replays its log
//! from there: replaying an entry on a key that already reflects it sets the same value and
//! version again, so the result is the state at the end of the log either way.
//!
//! Copies share a per-node byte budget (`copy.bytes_per_sec`, both directions) and a limit on
//! concurrent copies (`copy.max_concurrent`), so they yield to client traffic.

use super::replica::{Msg, View};
use super::NodeCtx;
use augur_proto::data::{
    crc_items, CopyChunk, CopyFrame, DataError, DataRequest, Fence, ReplicaRole,
};
use augur_proto::frame::write_frame;
use augur_proto::{NodeState, Shard};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex, Semaphore};

/// A token bucket shared by every copy of the node.
pub struct Throttle {
    rate: f64,
    state: Mutex<(f64, Instant)>,
    /// Copies in and out at once.
    pub slots: Semaphore,
}

impl Throttle {
    /// `bytes_per_sec` for all copies together, at most `concurrent` of them at once.
    pub fn new(bytes_per_sec: u64, concurrent: usize) -> Throttle {
        Throttle {
            rate: bytes_per_sec.max(1) as f64,
            state: Mutex::new((bytes_per_sec as f64, Instant::now())),
            slots: Semaphore::new(concurrent.max(1)),
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: usize) {
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.rate);
            s.1 = now;
            s.0 -= bytes as f64;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Serves a copy of `fence.shard` to the learner `fence.from`, on an open stream.
pub async fn serve(
    ctx: Arc<NodeCtx>,
    fence: Fence,
    at_least: u64,
    resume_after: Option<Vec<u8>>,
    mut send: quinn::SendStream,
) {
    let max_frame = ctx.peers.max_frame();
    let refuse = CopyFrame::Refused;
    let result: Result<(), CopyFrame> = async {
        let handle = ctx
            .replica(fence.shard)
            .ok_or_else(|| refuse(DataError::UnknownShard(fence.shard)))?;
        let view: View = handle.view();
        let config = ctx.directory.shard(fence.shard);
        let learner_ok = config
            .as_ref()
            .is_some_and(|c| c.epoch == view.epoch && c.learners.contains(&fence.from));
        if view.epoch != fence.epoch || !learner_ok {
            return Err(refuse(DataError::Fenced(format!(
                "node {} is not a learner of shard {} at epoch {}",
                fence.from, fence.shard, view.epoch
            ))));
        }
        if !matches!(view.role, ReplicaRole::Primary | ReplicaRole::Secondary) {
            return Err(refuse(DataError::Fenced(format!(
                "this node is {:?} of shard {}: not a source",
                view.role, fence.shard
            ))));
        }
        if !handle
            .applied_at_least(at_least, Duration::from_secs(30))
            .await
        {
            return Err(refuse(DataError::Unavailable(format!(
                "not applied up to {at_least} yet"
            ))));
        }
        let _slot = ctx
            .throttle
            .slots
            .acquire()
            .await
            .map_err(|_| refuse(DataError::Unavailable("shutting down".into())))?;
        let engine = ctx.engine.clone();
        let snap = engine.snapshot();
        let at_seq = engine
            .snapshot_replica_state(&snap, fence.shard)
            .map_err(|e| refuse(DataError::Internal(e.to_string())))?
            .map(|s| s.applied)
            .unwrap_or(0);
        let chunk_bytes = ctx.cfg.copy.chunk_bytes;
        let mut after = resume_after;
        ctx.metrics.copies_out(1);
        let _guard = CopyGuard(&ctx.metrics, false);
        loop {
            let (items, more) = tokio::task::block_in_place(|| {
                engine.snapshot_items(&snap, fence.shard, after.as_deref(), chunk_bytes)
            })
            .map_err(|e| refuse(DataError::Internal(e.to_string())))?;
            let bytes: usize = items.iter().map(|(k, v)| k.len() + v.value.len()).sum();
            ctx.throttle.take(bytes).await;
            let mut digest = crc64fast::Digest::new();
            crc_items(&mut digest, items.iter().map(|(k, v)| (k.as_slice(), v)));
            after = items.last().map(|(k, _)| k.clone()).or(after);
            let mut items = items;
            if crate::test_hooks::corrupt_copy_chunk() {
                // A flipped bit after the checksum was taken, as a bad NIC or disk would.
                if let Some((_, v)) = items.first_mut() {
                    v.version ^= 1;
                }
            }
            let chunk = CopyFrame::Chunk(CopyChunk {
                items,
                crc64: digest.sum64(),
                at_seq,
                done: !more,
            });
            write_frame(&mut send, &chunk, max_frame)
                .await
                .map_err(|e| refuse(DataError::Unavailable(e.to_string())))?;
            ctx.metrics.copied_bytes(bytes as u64);
            if !more {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(resp) = result {
        let _ = write_frame(&mut send, &resp, max_frame).await;
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

struct CopyGuard<'a>(&'a super::metrics::Metrics, bool);

impl Drop for CopyGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.copies_in(-1);
        } else {
            self.0.copies_out(-1);
        }
    }
}

/// Starts the learner's side: copies the shard, then tells the replica task.
pub fn start_fetch(
    ctx: Arc<NodeCtx>,
    config: Arc<Shard>,
    epoch: u64,
    at_least: u64,
    tx: mpsc::Sender<Msg>,
) {
    tokio::spawn(async move {
        let shard = config.id;
        let Ok(_slot) = ctx.throttle.slots.acquire().await else {
            return;
        };
        ctx.metrics.copies_in(1);
        let _guard = CopyGuard(&ctx.metrics, true);
        let started = Instant::now();
        let mut after: Option<Vec<u8>> = None;
        let mut at_seq: Option<u64> = None;
        let mut bytes = 0u64;
        let mut attempt = 0u32;
        loop {
            // Still a learner at this epoch? Otherwise the copy is moot.
            match ctx.replica(shard).map(|h| h.view()) {
                Some(v) if v.role == ReplicaRole::Learner && v.epoch == epoch => {}
                _ => return,
            }
            let Some(source) = pick_source(&ctx, &config, attempt) else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                attempt += 1;
                continue;
            };
            match fetch_from(
                &ctx,
                &config,
                epoch,
                at_least,
                source,
                &mut after,
                &mut at_seq,
                &mut bytes,
            )
            .await
            {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(%shard, %source, attempt, error = %e, "copy interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis((100 * u64::from(attempt)).min(2000)))
                        .await;
                }
            }
        }
        if let Err(e) = ctx.engine.synced().await {
            tracing::error!(%shard, error = %e, "cannot sync the copied data");
            return;
        }
        let at_seq = at_seq.unwrap_or(at_least);
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(%shard, bytes, at_seq, seconds = secs, mb_per_s = bytes as f64 / 1e6 / secs.max(1e-9), "copy finished");
        let _ = tx.send(Msg::CopyDone { at_seq }).await;
    });
}

/// A source for the copy: a secondary that is Up before the primary, never a node the
/// registry marks as failing when another exists; rotates with `attempt`.
fn pick_source(ctx: &NodeCtx, config: &Shard, attempt: u32) -> Option<augur_proto::NodeId> {
    let healthy = |n: &augur_proto::NodeId| {
        ctx.directory
            .node(*n)
            .is_some_and(|r| r.state == NodeState::Up)
    };
    let mut order: Vec<augur_proto::NodeId> = config.replicas.iter().skip(1).copied().collect();
    order.extend(config.replicas.first().copied());
    order.retain(|n| *n != ctx.node);
    let good: Vec<_> = order.iter().copied().filter(healthy).collect();
    let pool = if good.is_empty() { order } else { good };
    if pool.is_empty() {
        return None;
    }
    Some(pool[attempt as usize % pool.len()])
}

#[allow(clippy::too_many_arguments)]
async fn fetch_from(
    ctx: &NodeCtx,
    config: &Shard,
    epoch: u64,
    at_least: u64,
    source: augur_proto::NodeId,
    after: &mut Option<Vec<u8>>,
    at_seq: &mut Option<u64>,
    bytes: &mut u64,
) -> Result<(), String> {
    let addr = ctx
        .node_addr(source)
        .ok_or_else(|| format!("no address for node {source}"))?;
    let req = DataRequest::Copy {
        fence: Fence {
            shard: config.id,
            epoch,
            from: ctx.node,
            from_incarnation: ctx.incarnation,
            to: source,
        },
        at_least,
        resume_after: after.clone(),
    };
    let (_send, mut recv) = ctx
        .peers
        .open_as(&addr, &req)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        // A chunk, or the source's refusal (a `DataResponse::Error`).
        let frame = tokio::time::timeout(Duration::from_secs(60), recv.next_as::<CopyFrame>())
            .await
            .map_err(|_| "no chunk within 60 s".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("the source ended the copy early")?;
        let chunk = match frame {
            CopyFrame::Chunk(c) => c,
            CopyFrame::Refused(e) => return Err(format!("the source refused: {e}")),
        };
        let mut digest = crc64fast::Digest::new();
        crc_items(
            &mut digest,
            chunk.items.iter().map(|(k, v)| (k.as_slice(), v)),
        );
        if digest.sum64() != chunk.crc64 {
            ctx.metrics.copy_crc_failures(1);
            return Err("a chunk failed its CRC-64 check".into());
        }
        if chunk.at_seq < at_least {
            return Err(format!("the source read at {} < {at_least}", chunk.at_seq));
        }
        if let (Some(first), Some(prev)) = (chunk.items.first(), after.as_ref()) {
            if first.0 <= *prev {
                return Err("a chunk out of key order".into());
            }
        }
        let n: u64 = chunk
            .items
            .iter()
            .map(|(k, v)| (k.len() + v.value.len()) as u64)
            .sum();
        ctx.throttle.take(n as usize).await;
        let engine = ctx.engine.clone();
        let shard = config.id;
        tokio::task::block_in_place(|| engine.put_items(shard, &chunk.items))
            .map_err(|e| e.to_string())?;
        *bytes += n;
        ctx.metrics.copied_bytes(n);
        if let Some((k, _)) = chunk.items.last() {
            *after = Some(k.clone());
        }
        *at_seq = Some(at_seq.map_or(chunk.at_seq, |s| s.min(chunk.at_seq)));
        if chunk.done {
            return Ok(());
        }
    }
}
