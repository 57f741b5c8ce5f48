//! The storage node's QUIC server: one request per stream, checked against the caller's
//! certificate role.
//!
//! | request | who may ask |
//! |---|---|
//! | `Get`, `Write`, `Scan` | clients and operators |
//! | `Replicate`, `Copy` | storage nodes, as the node their certificate names |
//! | `Probe`, `Checkpoint`, `HandOff` | metadata members (the control plane) and operators |
//!
//! Reads are served by the shard's primary only, from committed data, while its lease holds
//! and once it has reconciled; writes go through the shard's replica task. A replication
//! stream's frames are handed to the task in order, and its acknowledgements written back in
//! the same order as they come (QUIC keeps both in order).
//!
//! Before a request is read, its size is bounded by the caller's role and the connection's
//! [`RequestBudget`]; a certificate without a role is refused without a byte read.

use super::directory::{refresh_node, refresh_shard};
use super::replica::{Handle, Msg};
use super::{copy, NodeCtx};
use augur_proto::data::{
    DataError, DataRequest, DataResponse, Fence, NodeReport, ReplicaAck, ReplicaRole,
    ReplicateFrame, MAX_KEY, MAX_SCAN_LIMIT, MAX_VALUE,
};
use augur_proto::frame::{payload_budget, write_frame, FrameError, FrameReader};
use augur_proto::ShardId;
use augur_transport::roles::RoleError;
use augur_transport::{peer_role, AdmitError, RequestBudget, Role};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Largest request a client certificate may send: one key, one value and their wrapping.
const CLIENT_REQUEST_LIMIT: usize = MAX_KEY + MAX_VALUE + 4096;

/// Serves every stream of one connection.
pub async fn serve_connection(ctx: Arc<NodeCtx>, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    let role = peer_role(&conn);
    let budget = RequestBudget::for_frames(ctx.peers.max_frame());
    while let Ok((send, recv)) = conn.accept_bi().await {
        let ctx = ctx.clone();
        let role = role.clone();
        let budget = budget.clone();
        tokio::spawn(async move { serve_stream(ctx, send, recv, role, budget).await });
    }
}

fn authorize(role: &Result<Role, RoleError>, req: &DataRequest) -> Result<(), DataError> {
    let role = role
        .as_ref()
        .map_err(|e| DataError::PermissionDenied(e.to_string()))?;
    let denied = |what: &str| {
        Err(DataError::PermissionDenied(format!(
            "{what} is not for a {role} certificate"
        )))
    };
    match (req, role) {
        (
            DataRequest::Get { .. } | DataRequest::Write { .. } | DataRequest::Scan { .. },
            Role::Client | Role::Operator,
        ) => Ok(()),
        (DataRequest::Get { .. } | DataRequest::Write { .. } | DataRequest::Scan { .. }, _) => {
            denied("the data API")
        }
        (DataRequest::Replicate(f) | DataRequest::Copy { fence: f, .. }, Role::Storage(id))
            if f.from == *id =>
        {
            Ok(())
        }
        (DataRequest::Replicate(_) | DataRequest::Copy { .. }, _) => {
            denied("replication as another node")
        }
        (DataRequest::Probe, Role::Member | Role::Operator) => Ok(()),
        (DataRequest::Probe, _) => denied("probing"),
        (
            DataRequest::Checkpoint { .. } | DataRequest::HandOff { .. },
            Role::Member | Role::Operator,
        ) => Ok(()),
        (DataRequest::Checkpoint { .. } | DataRequest::HandOff { .. }, _) => {
            denied("checkpoints and hand-offs")
        }
    }
}

async fn serve_stream(
    ctx: Arc<NodeCtx>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    role: Result<Role, RoleError>,
    budget: RequestBudget,
) {
    let max = ctx.peers.max_frame();
    // A certificate without a role may do nothing: its request is not even read. A client's
    // requests carry at most one key and one value.
    let limit = match &role {
        Err(e) => {
            ctx.metrics.request("refused", Duration::ZERO);
            let e = DataError::PermissionDenied(e.to_string());
            answer(&mut send, DataResponse::Error(e), max).await;
            return;
        }
        Ok(Role::Client) => CLIENT_REQUEST_LIMIT.min(max),
        Ok(_) => max,
    };
    let req: DataRequest = match budget.read(&mut recv, limit).await {
        Ok(Some(r)) => r,
        Ok(None) | Err(AdmitError::Frame(FrameError::Io(_))) => return,
        Err(e @ AdmitError::Busy { .. }) => {
            ctx.metrics.request("refused", Duration::ZERO);
            // Stopping the stream drops its unread bytes and gives the credit back.
            drop(recv);
            let e = DataError::Unavailable(e.to_string());
            answer(&mut send, DataResponse::Error(e), max).await;
            return;
        }
        Err(e) => {
            answer(
                &mut send,
                DataResponse::Error(DataError::InvalidArgument(format!(
                    "bad request frame: {e}"
                ))),
                max,
            )
            .await;
            return;
        }
    };
    if let Err(e) = authorize(&role, &req) {
        ctx.metrics.request("refused", Duration::ZERO);
        // Not held while a peer that may never read its answer is answered.
        drop(req);
        answer(&mut send, DataResponse::Error(e), max).await;
        return;
    }
    let started = Instant::now();
    if matches!(
        req,
        DataRequest::Get { .. } | DataRequest::Write { .. } | DataRequest::Scan { .. }
    ) {
        // Shard copies yield to clients while they are being served.
        ctx.throttle.note_client();
    }
    let (kind, resp) = match req {
        DataRequest::Get { shard, epoch, key } => ("get", get(&ctx, shard, epoch, key).await),
        DataRequest::Write {
            shard,
            epoch,
            id,
            op,
        } => ("write", write(&ctx, shard, epoch, id, op).await),
        DataRequest::Scan {
            shard,
            epoch,
            prefix,
            start_after,
            limit,
        } => (
            "scan",
            scan(&ctx, shard, epoch, prefix, start_after, limit).await,
        ),
        DataRequest::Replicate(fence) => {
            follow_stream(&ctx, fence, send, recv).await;
            return;
        }
        DataRequest::Copy {
            fence,
            at_least,
            resume_after,
        } => {
            copy::serve(ctx.clone(), fence, at_least, resume_after, send).await;
            return;
        }
        DataRequest::Probe => ("probe", DataResponse::Probe(ctx.report().await)),
        DataRequest::Checkpoint { shard, epoch } => {
            ("checkpoint", checkpoint(&ctx, shard, epoch).await)
        }
        DataRequest::HandOff {
            shard,
            epoch,
            timeout_ms,
        } => ("hand_off", hand_off(&ctx, shard, epoch, timeout_ms).await),
    };
    ctx.metrics.request(kind, started.elapsed());
    answer(&mut send, resp, max).await;
}

/// Writes the answer and finishes the stream. It does not wait for the peer to acknowledge
/// it: the connection keeps retransmitting a finished stream's data after the handle is
/// dropped, and waiting kept a task and a waker alive per request for a round trip.
async fn answer(send: &mut quinn::SendStream, resp: DataResponse, max: usize) {
    if write_frame(send, &resp, max).await.is_ok() {
        let _ = send.finish();
    }
}

/// The replica of `shard` if this node has one, else what to tell the caller.
fn replica(ctx: &NodeCtx, shard: ShardId, epoch: u64) -> Result<Handle, DataError> {
    match ctx.replica(shard) {
        Some(h) => Ok(h),
        None => match ctx.directory.shard(shard) {
            // The record moved the shard elsewhere.
            Some(s) if s.epoch > epoch => Err(DataError::StaleEpoch {
                shard,
                epoch: s.epoch,
            }),
            // The client's record is newer and names this node: it has not learnt of its
            // replica yet. A redirect would send the client to re-read a record it has.
            Some(s) if s.epoch < epoch => Err(DataError::Behind {
                shard,
                epoch: s.epoch,
            }),
            Some(s) => Err(DataError::Redirect(augur_proto::data::Redirect {
                shard,
                epoch: s.epoch,
                primary: s.replicas.first().copied(),
            })),
            None => Err(DataError::UnknownShard(shard)),
        },
    }
}

/// Whether the replica may serve a read naming `epoch` now.
///
/// A read that goes to a blocking thread is checked again once it returns. The first check
/// ran on the async worker, and the read may have waited in the blocking pool's queue
/// (behind copies, checksums, slow disk reads) long enough for a planned hand-off to finish
/// elsewhere: the new primary may then have acknowledged a write this node has not applied,
/// which the read would miss. A hand-off stops this node serving before any new epoch
/// exists, so a check that still passes after the read shows the read was taken while this
/// node was the serving primary under its lease.
fn check_read(ctx: &NodeCtx, h: &Handle, epoch: u64) -> Result<(), DataError> {
    let v = h.view();
    if epoch > v.epoch {
        return Err(DataError::Behind {
            shard: h.shard,
            epoch: v.epoch,
        });
    }
    if epoch < v.epoch {
        // The client routes by an old configuration: it refreshes and comes back.
        return Err(DataError::StaleEpoch {
            shard: h.shard,
            epoch: v.epoch,
        });
    }
    if v.role != ReplicaRole::Primary {
        return Err(DataError::Redirect(augur_proto::data::Redirect {
            shard: h.shard,
            epoch: v.epoch,
            primary: v.primary,
        }));
    }
    if !v.serving {
        return Err(DataError::Unavailable(format!(
            "shard {} is reconciling",
            h.shard
        )));
    }
    if !ctx.lease_valid() && !crate::test_hooks::skip_lease_check() {
        return Err(DataError::Unavailable(
            "this node's lease has expired; it serves nothing until it is renewed".into(),
        ));
    }
    Ok(())
}

/// The replica task of `shard` ([`replica`]), refusing a key that is not the shard's. A
/// write under the wrong shard would be stored where no correctly routed request finds it
/// (a get or delete goes to the key's own shard) and would break every scan of the shard
/// it landed in (clients check that a page's keys are the shard's), for good: copies carry
/// it along. A get is refused alike, rather than answered "not found" from the wrong shard.
fn replica_of_key(
    ctx: &NodeCtx,
    shard: ShardId,
    epoch: u64,
    key: &[u8],
) -> Result<Handle, DataError> {
    let h = replica(ctx, shard, epoch)?;
    owned(ctx, shard, key)?;
    Ok(h)
}

/// Whether `key` is `shard`'s (see [`replica_of_key`]).
fn owned(ctx: &NodeCtx, shard: ShardId, key: &[u8]) -> Result<(), DataError> {
    let Some(layout) = ctx.directory.layout() else {
        return Err(DataError::Unavailable(
            "this node has not read the cluster's layout yet".into(),
        ));
    };
    let own = layout.shard_of(key);
    if own != shard {
        return Err(DataError::InvalidArgument(format!(
            "the key belongs to shard {own}, not shard {shard}"
        )));
    }
    Ok(())
}

async fn get(ctx: &Arc<NodeCtx>, shard: ShardId, epoch: u64, key: Vec<u8>) -> DataResponse {
    if let Err(e) = augur_proto::data::check_key(&key) {
        return DataResponse::Error(e);
    }
    let h = match replica_of_key(ctx, shard, epoch, &key) {
        Ok(h) => h,
        Err(e) => return DataResponse::Error(e),
    };
    if let Err(e) = check_read(ctx, &h, epoch) {
        return DataResponse::Error(e);
    }
    match ctx.engine.get_cached(shard, &key) {
        Ok(Some(v)) => return DataResponse::Value(v),
        Ok(None) => {} // not in memory: read the files off the async workers
        Err(e) => return DataResponse::Error(DataError::Internal(e.to_string())),
    }
    let engine = ctx.engine.clone();
    let read = tokio::task::spawn_blocking(move || engine.get(shard, &key)).await;
    if let Err(e) = check_read(ctx, &h, epoch) {
        // Checked again after a read on a blocking thread: see `check_read`.
        return DataResponse::Error(e);
    }
    match read {
        Ok(Ok(v)) => DataResponse::Value(v),
        Ok(Err(e)) => DataResponse::Error(DataError::Internal(e.to_string())),
        Err(e) => DataResponse::Error(DataError::Internal(e.to_string())),
    }
}

async fn scan(
    ctx: &Arc<NodeCtx>,
    shard: ShardId,
    epoch: u64,
    prefix: Vec<u8>,
    start_after: Option<Vec<u8>>,
    limit: u32,
) -> DataResponse {
    if limit == 0 || limit > MAX_SCAN_LIMIT {
        return DataResponse::Error(DataError::InvalidArgument(format!(
            "limit must be 1..={MAX_SCAN_LIMIT}, got {limit}"
        )));
    }
    if prefix.len() > augur_proto::data::MAX_KEY
        || start_after
            .as_ref()
            .is_some_and(|k| k.len() > augur_proto::data::MAX_KEY)
    {
        return DataResponse::Error(DataError::InvalidArgument("key too long".into()));
    }
    let h = match replica(ctx, shard, epoch) {
        Ok(h) => h,
        Err(e) => return DataResponse::Error(e),
    };
    if let Err(e) = check_read(ctx, &h, epoch) {
        return DataResponse::Error(e);
    }
    let engine = ctx.engine.clone();
    // The page must fit the client's frames as well as this node's: a client reads at most
    // the default frame size, and a node configured above it would build pages its clients
    // refuse, the same page again on every retry.
    let budget = payload_budget(ctx.peers.max_frame().min(augur_proto::MAX_FRAME_DEFAULT));
    let read = tokio::task::spawn_blocking(move || {
        engine.scan(
            shard,
            &prefix,
            start_after.as_deref(),
            limit as usize,
            budget,
        )
    })
    .await;
    if let Err(e) = check_read(ctx, &h, epoch) {
        // Checked again after a read on a blocking thread: see `check_read`.
        return DataResponse::Error(e);
    }
    match read {
        Ok(Ok((items, more))) => DataResponse::Page { items, more },
        Ok(Err(e)) => DataResponse::Error(DataError::Internal(e.to_string())),
        Err(e) => DataResponse::Error(DataError::Internal(e.to_string())),
    }
}

async fn write(
    ctx: &Arc<NodeCtx>,
    shard: ShardId,
    epoch: u64,
    id: augur_proto::data::RequestId,
    op: augur_proto::data::WriteOp,
) -> DataResponse {
    if let Err(e) = op.validate() {
        return DataResponse::Error(e);
    }
    let h = match replica_of_key(ctx, shard, epoch, op.key()) {
        Ok(h) => h,
        Err(e) => return DataResponse::Error(e),
    };
    let (tx, rx) = oneshot::channel();
    if let Err(e) = h
        .send(Msg::Write {
            epoch,
            id,
            op,
            reply: tx,
        })
        .await
    {
        return DataResponse::Error(e);
    }
    match rx.await {
        Ok(Ok(outcome)) => DataResponse::Written(outcome),
        Ok(Err(e)) => DataResponse::Error(e),
        Err(_) => DataResponse::Error(DataError::Indeterminate(
            "the shard's replica stopped with the write in flight".into(),
        )),
    }
}

async fn checkpoint(ctx: &Arc<NodeCtx>, shard: ShardId, epoch: u64) -> DataResponse {
    let h = match replica(ctx, shard, epoch) {
        Ok(h) => h,
        Err(e) => return DataResponse::Error(e),
    };
    let (tx, rx) = oneshot::channel();
    if let Err(e) = h.send(Msg::Checkpoint { epoch, reply: tx }).await {
        return DataResponse::Error(e);
    }
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(seq))) => DataResponse::Checkpointed { seq },
        Ok(Ok(Err(e))) => DataResponse::Error(e),
        _ => DataResponse::Error(DataError::Unavailable(
            "the checkpoint did not commit in time".into(),
        )),
    }
}

async fn hand_off(ctx: &Arc<NodeCtx>, shard: ShardId, epoch: u64, timeout_ms: u64) -> DataResponse {
    let h = match replica(ctx, shard, epoch) {
        Ok(h) => h,
        Err(e) => return DataResponse::Error(e),
    };
    // Bounded: a hand-off that no configuration follows ends by itself.
    let timeout = Duration::from_millis(timeout_ms.clamp(100, 60_000));
    let (tx, rx) = oneshot::channel();
    if let Err(e) = h
        .send(Msg::HandOff {
            epoch,
            timeout,
            reply: tx,
        })
        .await
    {
        return DataResponse::Error(e);
    }
    match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
        Ok(Ok(Ok(seq))) => DataResponse::HandedOff { seq },
        Ok(Ok(Err(e))) => DataResponse::Error(e),
        _ => DataResponse::Error(DataError::Unavailable(
            "the hand-off did not drain in time".into(),
        )),
    }
}

/// A follower's end of a replication stream: frames go to the replica task in order; its
/// acknowledgements come back in the same order.
async fn follow_stream(
    ctx: &Arc<NodeCtx>,
    fence: Fence,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = ctx.peers.max_frame();
    // The sender must be the incarnation the registry knows; a sender this node has not
    // heard of yet (it registered while this node listed) is looked up before it is refused.
    let known = |ctx: &NodeCtx| {
        ctx.directory
            .node(fence.from)
            .is_some_and(|n| n.incarnation == fence.from_incarnation)
    };
    let mut sender_ok = known(ctx);
    if !sender_ok && fence.to == ctx.node {
        refresh_node(ctx, fence.from).await;
        sender_ok = known(ctx);
    }
    let refused = |e: DataError| ReplicaAck::Refused(e);
    if fence.to != ctx.node || !sender_ok {
        let _ = write_frame(
            &mut send,
            &refused(DataError::Fenced(format!(
                "stream from node {} (incarnation {:016x}) to node {}",
                fence.from, fence.from_incarnation, fence.to
            ))),
            max,
        )
        .await;
        let _ = send.finish();
        return;
    }
    // A stream naming a newer epoch than this node knows: catch up with the metadata first.
    let known = ctx
        .directory
        .shard(fence.shard)
        .map(|s| s.epoch)
        .unwrap_or(0);
    if fence.epoch > known {
        refresh_shard(ctx, fence.shard).await;
    }
    let Some(h) = ctx.replica(fence.shard) else {
        let _ = write_frame(
            &mut send,
            &refused(DataError::UnknownShard(fence.shard)),
            max,
        )
        .await;
        let _ = send.finish();
        return;
    };
    let mut acks: FuturesOrdered<oneshot::Receiver<ReplicaAck>> = FuturesOrdered::new();
    let mut reading = true;
    // Frames are read across the loop's turns: an acknowledgement going out must not cut
    // a frame in half (see `FrameReader`).
    let mut frames = FrameReader::new(max);
    loop {
        tokio::select! {
            frame = frames.next::<_, ReplicateFrame>(&mut recv), if reading && acks.len() < 64 => {
                match frame {
                    Ok(Some(frame)) => {
                        let (tx, rx) = oneshot::channel();
                        if h.send(Msg::Frame { fence, frame, reply: tx }).await.is_err() {
                            break;
                        }
                        acks.push_back(rx);
                    }
                    Ok(None) | Err(FrameError::Io(_)) => reading = false,
                    Err(e) => {
                        let _ = write_frame(&mut send, &refused(DataError::InvalidArgument(e.to_string())), max).await;
                        break;
                    }
                }
            }
            ack = acks.next(), if !acks.is_empty() => {
                let Some(Ok(ack)) = ack else { break };
                let end = matches!(ack, ReplicaAck::Refused(_));
                if write_frame(&mut send, &ack, max).await.is_err() || end {
                    break;
                }
            }
            else => break,
        }
    }
    let _ = send.finish();
}

/// The node's report for probes.
pub(crate) fn empty_report(ctx: &NodeCtx) -> NodeReport {
    NodeReport {
        node: ctx.node,
        incarnation: ctx.incarnation,
        node_epoch: ctx
            .lease
            .node_epoch
            .load(std::sync::atomic::Ordering::Acquire),
        used_bytes: ctx.engine.used_bytes(),
        capacity_bytes: ctx.capacity(),
        replicas: Vec::new(),
    }
}
