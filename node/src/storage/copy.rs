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
//! version again, so the result is the state at the end of the log either way. Each snapshot
//! also sends, before its data, the request ids the shard remembers (with their own CRC-64):
//! a learner may lead the shard one day, and a write resent to it must apply once.
//!
//! Copies share a per-node byte budget (`copy.bytes_per_sec`, both directions) and a limit on
//! concurrent copies (`copy.max_concurrent`), so they yield to client traffic.

use super::engine::{Item, LoadChunk, LoadGate};
use super::replica::{Msg, View};
use super::NodeCtx;
use augur_proto::data::{
    crc_items, CopiedRequest, CopyChunk, CopyFrame, DataError, DataRequest, Fence, ReplicaRole,
    RequestsChunk,
};
use augur_proto::frame::write_frame;
use augur_proto::{NodeState, Shard, StateOrigin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex, Semaphore};

/// A token bucket shared by every copy of the node, whose rate yields to client traffic: the
/// full `bytes_per_sec` while no client request arrived within the busy window, the lower busy
/// rate while one did. The node's client path notes each request ([`Throttle::note_client`]).
pub struct Throttle {
    idle_rate: f64,
    busy_rate: f64,
    window: Duration,
    epoch: Instant,
    /// When the last client request arrived, in ms since `epoch` (+1; 0: never).
    last_client: AtomicU64,
    state: Mutex<(f64, Instant)>,
    /// Copies in and out at once.
    pub slots: Semaphore,
}

impl Throttle {
    /// `bytes_per_sec` for all copies together when no client is served, `busy_bytes_per_sec`
    /// (at most `bytes_per_sec`) while one was within `busy_window`; at most `concurrent`
    /// copies at once.
    pub fn new(
        bytes_per_sec: u64,
        busy_bytes_per_sec: u64,
        busy_window: Duration,
        concurrent: usize,
    ) -> Throttle {
        let idle = bytes_per_sec.max(1) as f64;
        Throttle {
            idle_rate: idle,
            busy_rate: (busy_bytes_per_sec.max(1) as f64).min(idle),
            window: busy_window,
            epoch: Instant::now(),
            last_client: AtomicU64::new(0),
            state: Mutex::new((idle, Instant::now())),
            slots: Semaphore::new(concurrent.max(1)),
        }
    }

    /// Notes a client request: copies slow to the busy rate for the busy window.
    pub fn note_client(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last_client.store(ms, Ordering::Relaxed);
    }

    /// The rate in force now for a copy that yields, in bytes per second.
    pub fn rate(&self) -> u64 {
        let last = self.last_client.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let busy = last > 0 && now.saturating_sub(last) <= self.window.as_millis() as u64;
        (if busy { self.busy_rate } else { self.idle_rate }) as u64
    }

    /// Waits until `bytes` may be sent at the rate in force. An `urgent` copy (its shard has
    /// fewer replicas than the replication factor: every second counts against a second
    /// failure) never yields to clients; a move of a healthy shard does.
    pub async fn take(&self, bytes: usize, urgent: bool) {
        let rate = if urgent {
            self.idle_rate
        } else {
            self.rate() as f64
        };
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * rate;
            // At most a quarter second of burst, so a busy spell takes effect at once.
            s.0 = (s.0 + refill).min(rate / 4.0);
            s.1 = now;
            s.0 -= bytes as f64;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// How large an SST file of copied data grows before it is ingested: the memtable's size,
/// so a typical shard goes in as one file, and an interrupted copy keeps what it ingested.
const INGEST_FILE_BYTES: u64 = 64 << 20;

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
        let chunk_bytes = ctx.cfg.copy.chunk_bytes;
        ctx.metrics.copies_out(1);
        let _guard = CopyGuard(&ctx.metrics, false);
        // A blocking thread reads the snapshot ahead, at most two chunks, while this task
        // sends: reading, checksumming and sending overlap.
        let (tx, mut rx) = mpsc::channel::<Result<Read, String>>(2);
        let engine = ctx.engine.clone();
        let shard = fence.shard;
        tokio::task::spawn_blocking(move || {
            let read = engine.scan_snapshot(
                shard,
                resume_after.as_deref(),
                chunk_bytes,
                |ids| tx.blocking_send(Ok(Read::Requests(ids))).is_ok(),
                |at_seq, items, done| {
                    tx.blocking_send(Ok(Read::Data(at_seq, items, done)))
                        .is_ok()
                },
            );
            if let Err(e) = read {
                let _ = tx.blocking_send(Err(e.to_string()));
            }
        });
        loop {
            let read = rx
                .recv()
                .await
                .ok_or_else(|| refuse(DataError::Internal("the snapshot reader stopped".into())))?
                .map_err(|e| refuse(DataError::Internal(e)))?;
            let (at_seq, mut items, done) = match read {
                Read::Data(at_seq, items, done) => (at_seq, items, done),
                Read::Requests(ids) => {
                    let frame = CopyFrame::Requests(RequestsChunk::new(ids));
                    write_frame(&mut send, &frame, max_frame)
                        .await
                        .map_err(|e| refuse(DataError::Unavailable(e.to_string())))?;
                    continue;
                }
            };
            let bytes: usize = items.iter().map(|(k, v)| k.len() + v.value.len()).sum();
            ctx.throttle
                .take(bytes, urgent_now(&ctx, fence.shard))
                .await;
            let mut digest = crc64fast::Digest::new();
            crc_items(&mut digest, items.iter().map(|(k, v)| (k.as_slice(), v)));
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
                done,
            });
            write_frame(&mut send, &chunk, max_frame)
                .await
                .map_err(|e| refuse(DataError::Unavailable(e.to_string())))?;
            ctx.metrics.copied_bytes(bytes as u64);
            if done {
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

/// What a copy's snapshot reader hands the sending task.
enum Read {
    /// Request ids, sent before the data.
    Requests(Vec<CopiedRequest>),
    /// A chunk of data: the snapshot's applied sequence, the items, whether it is the last.
    Data(u64, Vec<Item>, bool),
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

/// One learner copy, shared by the copy task and the replica: how far it got (the replica
/// reports it to the leader as the move's progress), and whether the replica gave it up.
#[derive(Debug, Default)]
pub struct CopyJob {
    bytes: AtomicU64,
    /// Closed when the replica gives the copy up: nothing of it is ingested afterwards.
    gate: LoadGate,
}

impl CopyJob {
    /// Bytes of keys and values received and checked so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The replica gave the copy up (it starts over, or is no longer a learner): the copy
    /// stops at its next chunk and its end is not reported. When this returns, no file of
    /// the copy will be ingested any more (it waits for one being ingested), so the caller
    /// may delete the shard's data.
    pub fn cancel(&self) {
        self.gate.close();
    }

    fn cancelled(&self) -> bool {
        self.gate.is_closed()
    }
}

/// Starts the learner's side: copies the shard, then tells the replica task (naming `job`,
/// so a copy given up meanwhile does not count).
///
/// The copy outlives epoch changes that keep this node a learner (a dead source or
/// secondary removed, a new primary): each attempt fences itself with the shard record as
/// the node knows it then, and picks its source among that record's replicas. Before, the
/// copy stopped at the first epoch change without a word, and the move waited for a copy
/// nobody was making until its deadline.
pub fn start_fetch(
    ctx: Arc<NodeCtx>,
    config: Arc<Shard>,
    job: Arc<CopyJob>,
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
        let mut config = config;
        loop {
            // Still wanted, and still a learner? Otherwise the copy is moot.
            if job.cancelled() {
                return;
            }
            match ctx.replica(shard).map(|h| h.view()) {
                Some(v) if v.role == ReplicaRole::Learner => {}
                _ => return,
            }
            if let Some(now) = ctx.directory.shard(shard) {
                if !now.learners.contains(&ctx.node) {
                    return;
                }
                config = now;
            }
            let epoch = config.epoch;
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
                &job,
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
        let _ = tx.send(Msg::CopyDone { at_seq, job }).await;
    });
}

/// Whether a copy of `config` must not yield to clients: the shard has fewer replicas than
/// the data plane's replication factor (a repair), or none of them is on a healthy node (Up,
/// or drained by an operator, whose maintenance predicts no failure): every copy is on a node
/// the risk policy is draining or that is suspected, as a drain's only copy at rf 1 is.
fn urgent_copy(ctx: &NodeCtx, config: &Shard) -> bool {
    let rf = ctx.directory.layout().map(|l| l.rf as usize);
    urgent(rf, config, |n| {
        ctx.directory.node(n).is_some_and(|r| {
            r.state == NodeState::Up
                || (r.state == NodeState::Draining && r.cause.origin == StateOrigin::Operator)
        })
    })
}

/// [`urgent_copy`] for the shard's configuration as the directory holds it now: asked again
/// for every chunk, so a copy that started in a moment of late heartbeats does not keep the
/// full budget for hours, nor one whose replicas' nodes failed meanwhile keep yielding.
pub(crate) fn urgent_now(ctx: &NodeCtx, shard: augur_proto::ShardId) -> bool {
    ctx.directory
        .shard(shard)
        .is_some_and(|c| urgent_copy(ctx, &c))
}

/// [`urgent_copy`] over the replication factor (if known) and whether a node is healthy.
fn urgent(rf: Option<usize>, config: &Shard, up: impl Fn(augur_proto::NodeId) -> bool) -> bool {
    rf.is_some_and(|rf| config.replicas.len() < rf) || !config.replicas.iter().any(|n| up(*n))
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
    job: &Arc<CopyJob>,
) -> Result<(), String> {
    let progress = &job.bytes;
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
    // A blocking thread writes verified chunks into SST files and ingests them while this
    // task receives and checks the next ones. The resume point (`after`, `bytes`, `at_seq`)
    // moves only to what was ingested, and the loader is always awaited before returning: a
    // resumed copy reads a newer snapshot, and an older chunk landing after it would put
    // older values back.
    let (tx, mut rx) = mpsc::channel::<LoadChunk>(2);
    let engine = ctx.engine.clone();
    let shard = config.id;
    let loading = job.clone();
    let load = tokio::task::spawn_blocking(move || {
        engine.bulk_load(
            shard,
            INGEST_FILE_BYTES,
            &loading.gate,
            std::iter::from_fn(|| rx.blocking_recv()),
        )
    });
    let mut last_received = after.clone();
    let mut stream_at_seq = None;
    let mut streamed = 0u64;
    let received: Result<(), String> = async {
        loop {
            // A chunk, or the source's refusal (a `DataResponse::Error`).
            let frame = tokio::time::timeout(Duration::from_secs(60), recv.next_as::<CopyFrame>())
                .await
                .map_err(|_| "no chunk within 60 s".to_string())?
                .map_err(|e| e.to_string())?
                .ok_or("the source ended the copy early")?;
            if job.cancelled() {
                return Err("the copy was given up".into());
            }
            let chunk = match frame {
                CopyFrame::Chunk(c) => c,
                CopyFrame::Refused(e) => return Err(format!("the source refused: {e}")),
                CopyFrame::Requests(ids) => {
                    if !ids.intact() {
                        ctx.metrics.copy_crc_failures(1);
                        return Err("request ids failed their CRC-64 check".into());
                    }
                    // Under the copy's gate, like its files: nothing of a copy given up lands.
                    job.gate
                        .while_open(|| ctx.engine.remember_copied(shard, &ids.items))
                        .map_err(|e| format!("keeping the copied request ids: {e}"))?;
                    continue;
                }
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
            if let (Some(first), Some(prev)) = (chunk.items.first(), last_received.as_ref()) {
                if first.0 <= *prev {
                    return Err("a chunk out of key order".into());
                }
            }
            let n: u64 = chunk
                .items
                .iter()
                .map(|(k, v)| (k.len() + v.value.len()) as u64)
                .sum();
            ctx.throttle
                .take(n as usize, urgent_now(ctx, config.id))
                .await;
            ctx.metrics.copied_bytes(n);
            streamed += n;
            progress.store(*bytes + streamed, Ordering::Relaxed);
            if let Some((k, _)) = chunk.items.last() {
                last_received = Some(k.clone());
            }
            stream_at_seq = Some(chunk.at_seq);
            let done = chunk.done;
            let load = LoadChunk {
                items: chunk.items,
                at_seq: chunk.at_seq,
                bytes: n,
            };
            if tx.send(load).await.is_err() {
                // The loader stopped early; its own error says why.
                return Err("the bulk load stopped".into());
            }
            if done {
                return Ok(());
            }
        }
    }
    .await;
    drop(tx);
    let (loaded, load_result) = load.await.map_err(|e| e.to_string())?;
    *bytes += loaded.bytes;
    // A resumed stream starts again after what was ingested.
    progress.store(*bytes, Ordering::Relaxed);
    if loaded.last.is_some() {
        *after = loaded.last;
    }
    // Every chunk of a finished stream was ingested, the empty ones included.
    let read_at = if received.is_ok() {
        loaded.at_seq.into_iter().chain(stream_at_seq).min()
    } else {
        loaded.at_seq
    };
    if let Some(s) = read_at {
        *at_seq = Some(at_seq.map_or(s, |a| a.min(s)));
    }
    load_result.map_err(|e| format!("bulk load: {e}"))?;
    received
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
