//! Raft traffic between metadata nodes, over the same QUIC transport clients use.
//!
//! Each Raft RPC is one request on its own QUIC stream: openraft's message, postcard-encoded,
//! inside a [`Request::Raft`] frame with an envelope naming the cluster and both ends'
//! (id, incarnation); the answer is `Result<response, String>` the same way.
//! Errors on the remote side are always fatal there (shutting down), so the sender treats them
//! like an unreachable peer and retries later. A snapshot is a header frame followed by the
//! file in chunks and an empty end chunk, so it never has to fit in memory or in one frame.
//!
//! Append entries (and heartbeats) go through [`super::append_stream`]: one QUIC stream per
//! replication session, requests pipelined ahead of their answers.

use super::append_stream;
use super::MetaNode;
use augur_proto::wire::{MemberInfo, RaftEnvelope, RaftRpcKind};
use augur_proto::{ClusterId, MemberId, Request, Response};
use augur_raft_store::types::{SnapshotMeta, StoreSnapshot, Vote};
use augur_raft_store::{Identity, MemberNode, TypeConfig};
use augur_transport::{Transport, TransportError};
use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::raft::{StreamAppendResult, TransferLeaderRequest, TransferLeaderResponse};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::future::Future;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Bytes per snapshot chunk.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// What precedes a snapshot's bytes on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The sender's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
}

/// One piece of a snapshot; an empty chunk ends it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk(pub Vec<u8>);

/// Makes one [`PeerClient`] per peer, sharing the node's QUIC endpoint.
#[derive(Clone)]
pub struct Network {
    transport: Transport,
    identity: Identity,
    membership_index: Arc<AtomicU64>,
    min_rpc_timeout: Duration,
    append_window: usize,
}

impl Network {
    /// Peers are dialled from the node's own endpoint with its own certificate.
    ///
    /// openraft gives append entries and heartbeats a deadline of one heartbeat interval
    /// (50 ms by default). A follower's fsync on a loaded machine takes longer than that now
    /// and then; timing out would resend the entries and, worse, make the transport drop a
    /// healthy connection with every other RPC in flight on it. So no Raft RPC gets less than
    /// `min_rpc_timeout` (the shortest election timeout: a reply later than that is of no use
    /// anyway, and a dead peer is still noticed within it).
    ///
    /// `append_window` bounds the append-entries batches in flight to one follower.
    ///
    /// `membership_index` is kept by the node at the log index of the membership Raft acts
    /// under; it goes in every envelope.
    pub fn new(
        transport: Transport,
        identity: Identity,
        membership_index: Arc<AtomicU64>,
        min_rpc_timeout: Duration,
        append_window: usize,
    ) -> Self {
        Network {
            transport,
            identity,
            membership_index,
            min_rpc_timeout,
            append_window,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> PeerClient {
        PeerClient {
            target,
            target_incarnation: node.incarnation,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
            identity: self.identity.clone(),
            membership_index: self.membership_index.clone(),
            min_rpc_timeout: self.min_rpc_timeout,
            append_window: self.append_window,
        }
    }
}

/// Raft RPCs to one peer: one incarnation of one member.
pub struct PeerClient {
    target: u64,
    target_incarnation: u64,
    addr: String,
    transport: Transport,
    identity: Identity,
    membership_index: Arc<AtomicU64>,
    min_rpc_timeout: Duration,
    append_window: usize,
}

pub(super) fn rpc_err(e: TransportError) -> RPCError<TypeConfig> {
    if e.certainly_not_sent() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

impl PeerClient {
    /// Who this message is from and for. A member sends Raft messages only once it belongs to
    /// a cluster (a founder joins before it initialises Raft).
    fn envelope(&self) -> Result<RaftEnvelope, Unreachable<TypeConfig>> {
        let cluster = self.identity.cluster().ok_or_else(|| {
            Unreachable::from_string("this member belongs to no cluster yet".to_string())
        })?;
        Ok(RaftEnvelope {
            cluster: ClusterId(cluster),
            from: MemberId(self.identity.member()),
            from_incarnation: self.identity.incarnation(),
            to: MemberId(self.target),
            to_incarnation: self.target_incarnation,
            membership_index: self.membership_index.load(Ordering::Acquire),
        })
    }

    fn request(
        &self,
        kind: RaftRpcKind,
        payload: Vec<u8>,
    ) -> Result<Request, Unreachable<TypeConfig>> {
        Ok(Request::Raft {
            kind,
            envelope: self.envelope()?,
            payload,
        })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: RaftRpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let payload =
            postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = self.request(kind, payload).map_err(RPCError::Unreachable)?;
        let resp = self
            .transport
            .call(
                &self.addr,
                &request,
                option.hard_ttl().max(self.min_rpc_timeout),
            )
            .await
            .map_err(rpc_err)?;
        decode_reply(&self.addr, resp)
    }

    /// Asks `leader` for a read index: the log index a follower must have applied to serve a
    /// linearizable read. Same framing and error mapping as every Raft RPC.
    pub(crate) async fn read_index(
        node: &MetaNode,
        leader: &MemberInfo,
        timeout: Duration,
    ) -> Result<u64, RPCError<TypeConfig>> {
        let peer = PeerClient {
            target: leader.id.0,
            target_incarnation: leader.incarnation,
            addr: leader.addr.clone(),
            transport: node.peers.clone(),
            identity: node.identity.clone(),
            membership_index: node.membership_index.clone(),
            min_rpc_timeout: timeout,
            append_window: 1,
        };
        peer.call(RaftRpcKind::ReadIndex, &(), &RPCOption::new(timeout))
            .await
    }
}

pub(super) fn decode_reply<Resp: DeserializeOwned>(
    addr: &str,
    resp: Response,
) -> Result<Resp, RPCError<TypeConfig>> {
    match resp {
        Response::Raft(bytes) => {
            let r: Result<Resp, String> = postcard::from_bytes(&bytes)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            r.map_err(|remote| {
                RPCError::Unreachable(Unreachable::from_string(format!("{addr}: {remote}")))
            })
        }
        Response::Error(e) => Err(RPCError::Unreachable(Unreachable::from_string(format!(
            "{addr}: {e}"
        )))),
        other => Err(RPCError::Network(NetworkError::from_string(format!(
            "{addr}: unexpected response {other:?}"
        )))),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = std::fs::File;

    /// openraft sends every append through [`Self::stream_append`]; the trait still asks for
    /// a single-request form, which is a stream of one.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let input = futures::stream::iter([rpc]);
        let addr = self.addr.clone();
        let mut answers = self.stream_append(input, option).await?;
        match answers.next().await {
            Some(Ok(result)) => Ok(result.into()),
            Some(Err(e)) => Err(e),
            None => Err(RPCError::Network(NetworkError::from_string(format!(
                "{addr}: append stream ended without an answer"
            )))),
        }
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let header = match self.request(RaftRpcKind::AppendStream, Vec::new()) {
            Ok(h) => h,
            Err(e) => return Box::pin(async move { Err(RPCError::Unreachable(e)) }),
        };
        append_stream::open(
            self.transport.clone(),
            self.addr.clone(),
            header,
            input,
            option.soft_ttl().max(self.min_rpc_timeout),
            self.append_window,
        )
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpcKind::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpcKind::PreVote, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftRpcKind::TransferLeader, &req, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: StoreSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = self.send_snapshot(vote, snapshot);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(option.hard_ttl().max(std::time::Duration::from_secs(60)), send) => match r {
                Ok(r) => r,
                Err(_) => Err(StreamingError::Unreachable(Unreachable::from_string(format!(
                    "snapshot to {} timed out", self.addr
                )))),
            },
        }
    }
}

impl PeerClient {
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: StoreSnapshot,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let unreachable = |e: &dyn std::fmt::Display| {
            StreamingError::Unreachable(Unreachable::from_string(format!(
                "snapshot to {}: {e}",
                self.addr
            )))
        };
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
        };
        let payload = postcard::to_allocvec(&header).map_err(|e| unreachable(&e))?;
        let request = self
            .request(RaftRpcKind::Snapshot, payload)
            .map_err(StreamingError::Unreachable)?;
        let (mut send, mut recv) = self
            .transport
            .open(&self.addr, &request)
            .await
            .map_err(|e| unreachable(&e))?;
        let mut file = snapshot.snapshot;
        let max = self.transport.max_frame();
        loop {
            let (chunk, f) = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    match file.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => return (Err(e), file),
                    }
                }
                buf.truncate(filled);
                (Ok(buf), file)
            })
            .await
            .map_err(|e| unreachable(&e))?;
            file = f;
            let chunk = chunk.map_err(|e| unreachable(&e))?;
            let done = chunk.is_empty();
            augur_proto::frame::write_frame(&mut send, &SnapshotChunk(chunk), max)
                .await
                .map_err(|e| unreachable(&e))?;
            if done {
                break;
            }
        }
        send.flush().await.map_err(|e| unreachable(&e))?;
        let _ = send.finish();
        let resp = recv
            .next()
            .await
            .map_err(|e| unreachable(&e))?
            .ok_or_else(|| unreachable(&"no answer"))?;
        tracing::info!(target = self.target, "snapshot sent");
        decode_reply(&self.addr, resp).map_err(|e| unreachable(&e))
    }
}
