//! Serving requests: one task per QUIC stream, one request per stream.
//!
//! Writes are accepted only by the leader. A follower answers `NotLeader` with the leader it
//! knows, before anything is proposed, so the client knows nothing was applied and can resend
//! to the leader; forwarding would add a hop and blur who knows what about the outcome. Once a
//! write is proposed, any failure (leadership lost, shutdown) is reported as `Indeterminate`:
//! the entry may still commit under the next leader.
//!
//! Linearizable reads are served by any voter or learner. The leader confirms its leadership
//! with a quorum (ReadIndex) and reads once it has applied up to the read index; a follower
//! asks the leader for that index over the peer channel and reads once its own state machine
//! has caught up to it. Both are linearizable: the index covers every write acknowledged
//! before the read began, and applied entries are committed, so they are the same on every
//! node. Serializable reads are served from whatever the node has applied.

use super::network::{PeerClient, SnapshotChunk, SnapshotHeader};
use super::MetaNode;
use augur_proto::frame::{read_frame, write_frame, FrameError};
use augur_proto::wire::{ApiError, ClusterStatus, MemberInfo, RaftRpcKind, MAX_LIST_LIMIT};
use augur_proto::{Consistency, Key, MemberId, Request, Response, Table, Txn};
use augur_raft_store::state_machine::HISTORY_PAGE;
use augur_raft_store::{Command, StoreError, TypeConfig};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{BasicNode, ChangeMembers, ReadPolicy, ServerState};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::time::Instant;

impl MetaNode {
    /// Serves every stream of one connection until it closes.
    pub(crate) async fn serve_connection(self, incoming: quinn::Incoming) {
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "handshake failed");
                return;
            }
        };
        let peer = is_peer_certificate(&conn);
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let node = self.clone();
            tokio::spawn(async move { node.serve_stream(send, recv, peer).await });
        }
    }

    async fn serve_stream(
        self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        peer: bool,
    ) {
        let max = self.max_frame();
        let req: Request = match read_frame(&mut recv, max).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(FrameError::Io(_)) => return,
            Err(e) => {
                self.metrics.rpc_errors("malformed");
                let resp =
                    Response::Error(ApiError::InvalidArgument(format!("bad request frame: {e}")));
                let _ = write_frame(&mut send, &resp, max).await;
                let _ = send.finish();
                return;
            }
        };
        if matches!(req, Request::Raft { .. }) && !peer {
            // Only metadata nodes may speak Raft: a client certificate must not be able to
            // cast votes or append entries.
            self.metrics.rpc_errors("permission_denied");
            let resp = Response::Error(ApiError::PermissionDenied(
                "raft messages are accepted only from metadata-node certificates".into(),
            ));
            let _ = write_frame(&mut send, &resp, max).await;
            let _ = send.finish();
            return;
        }
        let kind = request_kind(&req);
        let started = Instant::now();
        let resp = match req {
            Request::Watch {
                tables,
                from_revision,
            } => {
                self.serve_watch(tables, from_revision, send).await;
                return;
            }
            Request::Raft {
                kind: RaftRpcKind::Snapshot,
                payload,
            } => self.receive_snapshot(&payload, recv).await,
            Request::Raft {
                kind: RaftRpcKind::AppendStream,
                ..
            } => {
                // Answers are written, and their latency observed, per request inside.
                self.serve_append_stream(send, recv).await;
                return;
            }
            Request::Raft { kind, payload } => self.raft_rpc(kind, &payload).await,
            other => self.handle(other).await,
        };
        if let Response::Error(e) = &resp {
            self.metrics.rpc_errors(error_kind(e));
        }
        self.metrics.observe_rpc(kind, started.elapsed());
        if write_frame(&mut send, &resp, max).await.is_ok() {
            let _ = send.finish();
            // Wait until the peer has the answer before the stream is dropped.
            let _ = send.stopped().await;
        }
    }

    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Txn(txn) => self.txn(txn).await,
            Request::Get { key, consistency } => self.get(key, consistency).await,
            Request::List {
                table,
                start_after,
                limit,
                consistency,
            } => self.list(table, start_after, limit, consistency).await,
            Request::Status => Response::Status(self.status()),
            Request::Members => match self.require_leader() {
                Ok(()) => Response::Members(self.status().members),
                Err(e) => Response::Error(e),
            },
            Request::AddLearner { id, addr } => self.add_learner(id, addr).await,
            Request::Promote { id } => self.promote(id).await,
            Request::RemoveMember { id } => self.remove_member(id).await,
            Request::TransferLeader { to } => self.transfer_leader(to).await,
            Request::Watch { .. } | Request::Raft { .. } => {
                Response::Error(ApiError::Internal("routed to the wrong handler".into()))
            }
        }
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The leader this node knows of, with its address.
    pub(crate) fn leader_info(&self) -> Option<MemberInfo> {
        self.status().leader
    }

    fn require_leader(&self) -> Result<(), ApiError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(ApiError::NotLeader {
                leader: self.leader_info(),
            })
        }
    }

    async fn txn(&self, txn: Txn) -> Response {
        if let Err(e) = txn.validate() {
            return Response::Error(ApiError::InvalidArgument(e.to_string()));
        }
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        if self.is_shutting_down() {
            return Response::Error(ApiError::Unavailable("shutting down".into()));
        }
        match self.raft.client_write(Command::Txn(txn)).await {
            Ok(r) => Response::Txn(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Response::Error(
                ApiError::Indeterminate("leadership changed while the write was in flight".into()),
            ),
            Err(e) => Response::Error(ApiError::Indeterminate(e.to_string())),
        }
    }

    /// Makes a read linearizable: on the leader, confirms leadership with a quorum (ReadIndex)
    /// and waits until the state machine has applied everything committed before the read
    /// began; on a follower, gets that index from the leader and waits for its own apply.
    async fn read_barrier(&self, consistency: Consistency) -> Result<(), ApiError> {
        if consistency == Consistency::Serializable || cfg!(feature = "unsafe-local-reads") {
            return Ok(());
        }
        if self.is_leader() {
            return self.leader_read_index(true).await.map(|_| ());
        }
        let leader = self.leader_info().ok_or_else(|| {
            ApiError::Unavailable("no leader known to confirm the read with".into())
        })?;
        let deadline = std::time::Duration::from_millis(self.cfg.limits.follower_read_timeout_ms);
        let index = PeerClient::read_index(self.peers.clone(), leader.id.0, leader.addr, deadline)
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!(
                    "leader {} did not confirm the read: {e}",
                    leader.id
                ))
            })?;
        self.raft
            .wait(Some(deadline))
            .applied_index_at_least(Some(index), "follower read")
            .await
            .map(|_| ())
            .map_err(|e| ApiError::Unavailable(format!("not caught up to read index {index}: {e}")))
    }

    /// The leader's half of a linearizable read: confirms leadership with a quorum and returns
    /// the index a state machine must have applied to serve it. `wait_apply` also waits for
    /// the leader's own state machine, for a read served here; a follower's read does not
    /// need the leader to have applied.
    async fn leader_read_index(&self, wait_apply: bool) -> Result<u64, ApiError> {
        match self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(l) if wait_apply => {
                let index = l.read_log_id().index();
                l.await_ready(&self.raft)
                    .await
                    .map(|_| index)
                    .map_err(|e| ApiError::Unavailable(e.to_string()))
            }
            Ok(l) => Ok(l.read_log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                Err(ApiError::NotLeader {
                    leader: self.leader_info(),
                })
            }
            Err(RaftError::APIError(e)) => Err(ApiError::Unavailable(e.to_string())),
            Err(e) => Err(ApiError::Unavailable(e.to_string())),
        }
    }

    async fn get(&self, key: Key, consistency: Consistency) -> Response {
        if let Err(e) = key.validate() {
            return Response::Error(ApiError::InvalidArgument(e.to_string()));
        }
        if let Err(e) = self.read_barrier(consistency).await {
            return Response::Error(e);
        }
        match self.sm.get(&key) {
            Ok((record, revision)) => Response::Get { record, revision },
            Err(e) => Response::Error(e.into()),
        }
    }

    async fn list(
        &self,
        table: Table,
        start_after: Option<Key>,
        limit: u32,
        consistency: Consistency,
    ) -> Response {
        if limit == 0 || limit > MAX_LIST_LIMIT {
            return Response::Error(ApiError::InvalidArgument(format!(
                "limit must be 1..={MAX_LIST_LIMIT}, got {limit}"
            )));
        }
        if let Some(k) = &start_after {
            if let Err(e) = k.validate() {
                return Response::Error(ApiError::InvalidArgument(e.to_string()));
            }
        }
        if let Err(e) = self.read_barrier(consistency).await {
            return Response::Error(e);
        }
        match self.sm.list(table, start_after.as_ref(), limit as usize) {
            Ok((records, more, revision)) => Response::List {
                records,
                more,
                revision,
            },
            Err(e) => Response::Error(e.into()),
        }
    }

    /// Streams history from `from_revision` and then live changes until the client goes away.
    async fn serve_watch(
        &self,
        tables: Vec<Table>,
        from_revision: u64,
        mut send: quinn::SendStream,
    ) {
        let max = self.max_frame();
        let mut applied_rx = self.sm.subscribe();
        let current = *applied_rx.borrow_and_update();
        let mut next = if from_revision == 0 {
            current + 1
        } else {
            from_revision
        };
        self.metrics.watchers(1);
        let _guard = WatcherGuard(&self.metrics);
        if write_frame(
            &mut send,
            &Response::WatchStarted { revision: current },
            max,
        )
        .await
        .is_err()
        {
            return;
        }
        let mut shutdown = self.shutdown_signal();
        loop {
            let applied = *applied_rx.borrow_and_update();
            while next <= applied {
                let events = match self.sm.history(next, applied, &tables) {
                    Ok(ev) => ev,
                    Err(e @ StoreError::Compacted { .. }) => {
                        let _ = write_frame(&mut send, &Response::Error(e.into()), max).await;
                        let _ = send.finish();
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "watch history read failed");
                        let _ = write_frame(&mut send, &Response::Error(e.into()), max).await;
                        return;
                    }
                };
                let full = events.len() == HISTORY_PAGE;
                let last = events.last().map(|e| e.revision);
                for ev in events {
                    if write_frame(&mut send, &Response::Watch(ev), max)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                next = match (full, last) {
                    (true, Some(last)) => last + 1,
                    _ => applied + 1,
                };
            }
            tokio::select! {
                changed = applied_rx.changed() => if changed.is_err() { return },
                _ = send.stopped() => return,
                _ = shutdown.changed() => {
                    let _ = write_frame(&mut send, &Response::Error(ApiError::Unavailable("node shutting down".into())), max).await;
                    let _ = send.finish();
                    return;
                }
            }
        }
    }

    /// This node's view of the cluster, from Raft's metrics.
    pub(crate) fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members: Vec<MemberInfo> = membership
            .nodes()
            .map(|(id, node)| MemberInfo {
                id: MemberId(*id),
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader = m
            .current_leader
            .and_then(|l| members.iter().find(|mi| mi.id.0 == l).cloned());
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        ClusterStatus {
            id: MemberId(self.id),
            role: role.to_string(),
            term: m.current_term,
            leader,
            committed: m.local_committed.map(|l| l.index).unwrap_or(0),
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log: m.last_log_index.unwrap_or(0),
            compacted_revision: self.sm.compacted_revision(),
            members,
        }
    }

    async fn add_learner(&self, id: MemberId, addr: String) -> Response {
        if let Err(e) = id.validate() {
            return Response::Error(ApiError::InvalidArgument(e.to_string()));
        }
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Response::Error(ApiError::InvalidArgument(format!(
                "address {addr:?} is not host:port"
            )));
        }
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        if self
            .status()
            .members
            .iter()
            .any(|m| m.id == id && m.addr == addr)
        {
            return Response::Done;
        }
        membership_result(
            self.raft.add_learner(id.0, BasicNode { addr }, false).await,
            self,
        )
    }

    async fn promote(&self, id: MemberId) -> Response {
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        let status = self.status();
        match status.members.iter().find(|m| m.id == id) {
            None => Response::Error(ApiError::Membership(format!(
                "{id} is not a member; add it as a learner first"
            ))),
            Some(m) if m.voter => Response::Done,
            Some(_) => membership_result(
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id.0])), false)
                    .await,
                self,
            ),
        }
    }

    async fn remove_member(&self, id: MemberId) -> Response {
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        let status = self.status();
        let change = match status.members.iter().find(|m| m.id == id) {
            None => return Response::Done,
            Some(m) if m.voter => {
                if status.members.iter().filter(|m| m.voter).count() == 1 {
                    return Response::Error(ApiError::Membership(
                        "cannot remove the last voter".into(),
                    ));
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([id.0]))
            }
            Some(_) => ChangeMembers::RemoveNodes(BTreeSet::from([id.0])),
        };
        membership_result(self.raft.change_membership(change, false).await, self)
    }

    async fn transfer_leader(&self, to: MemberId) -> Response {
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        if to.0 == self.id {
            return Response::Done;
        }
        if !self.status().members.iter().any(|m| m.id == to && m.voter) {
            return Response::Error(ApiError::Membership(format!("{to} is not a voter")));
        }
        match self.raft.trigger().transfer_leader(to.0).await {
            Ok(()) => Response::Done,
            Err(e) => Response::Error(ApiError::Unavailable(e.to_string())),
        }
    }

    async fn raft_rpc(&self, kind: RaftRpcKind, payload: &[u8]) -> Response {
        match kind {
            RaftRpcKind::Append => {
                relay(payload, |req| async move {
                    self.raft
                        .append_entries(req)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
            }
            RaftRpcKind::Vote => {
                relay(payload, |req| async move {
                    self.raft.vote(req).await.map_err(|e| e.to_string())
                })
                .await
            }
            RaftRpcKind::PreVote => {
                relay(payload, |req| async move {
                    self.raft.pre_vote(req).await.map_err(|e| e.to_string())
                })
                .await
            }
            RaftRpcKind::TransferLeader => {
                relay(payload, |req| async move {
                    self.raft
                        .handle_transfer_leader(req)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
            }
            RaftRpcKind::ReadIndex => {
                relay(payload, |()| async move {
                    self.leader_read_index(false)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
            }
            RaftRpcKind::AppendStream | RaftRpcKind::Snapshot => {
                Response::Error(ApiError::InvalidArgument(format!(
                    "raft rpc {kind:?} is not served on a plain stream"
                )))
            }
        }
    }

    /// Receives a snapshot into a file, then hands it to Raft to install.
    async fn receive_snapshot(&self, header: &[u8], mut recv: quinn::RecvStream) -> Response {
        let header: SnapshotHeader = match postcard::from_bytes(header) {
            Ok(h) => h,
            Err(e) => {
                return Response::Error(ApiError::InvalidArgument(format!("snapshot header: {e}")))
            }
        };
        let (path, mut file) = match self.sm.incoming_snapshot() {
            Ok(f) => f,
            Err(e) => return Response::Error(e.into()),
        };
        let max = self.max_frame();
        let result: Result<(), String> = async {
            loop {
                let chunk: SnapshotChunk = read_frame(&mut recv, max)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("stream ended before the last chunk")?;
                if chunk.0.is_empty() {
                    break;
                }
                file.write_all(&chunk.0).map_err(|e| e.to_string())?;
            }
            file.sync_all().map_err(|e| e.to_string())?;
            file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            Ok(())
        }
        .await;
        let resp = match result {
            Err(e) => Response::Error(ApiError::InvalidArgument(format!("snapshot transfer: {e}"))),
            Ok(()) => {
                let snapshot = openraft::storage::Snapshot {
                    meta: header.meta,
                    snapshot: file,
                };
                let r = self.raft.install_full_snapshot(header.vote, snapshot).await;
                encode_reply(r.map_err(|e| e.to_string()))
            }
        };
        let _ = std::fs::remove_file(&path);
        resp
    }
}

/// Whether the connection's client certificate is a metadata node's: node certificates are
/// issued for server authentication too (`augur cert node`), client certificates are not.
fn is_peer_certificate(conn: &quinn::Connection) -> bool {
    let Some(identity) = conn.peer_identity() else {
        return false;
    };
    let Ok(chain) = identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>() else {
        return false;
    };
    let Some(leaf) = chain.first() else {
        return false;
    };
    match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, cert)) => {
            matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.server_auth)
        }
        Err(_) => false,
    }
}

async fn relay<Req, Resp, F, Fut>(payload: &[u8], f: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, String>>,
{
    match postcard::from_bytes::<Req>(payload) {
        Ok(req) => encode_reply(f(req).await),
        Err(e) => Response::Error(ApiError::InvalidArgument(format!("raft message: {e}"))),
    }
}

pub(super) fn encode_reply<T: Serialize>(r: Result<T, String>) -> Response {
    match postcard::to_allocvec(&r) {
        Ok(bytes) => Response::Raft(bytes),
        Err(e) => Response::Error(ApiError::Internal(e.to_string())),
    }
}

fn membership_result(
    r: Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    >,
    node: &MetaNode,
) -> Response {
    match r {
        Ok(_) => Response::Done,
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Response::Error(ApiError::NotLeader {
                leader: node.leader_info(),
            })
        }
        Err(RaftError::APIError(e)) => Response::Error(ApiError::Membership(e.to_string())),
        Err(e) => Response::Error(ApiError::Unavailable(e.to_string())),
    }
}

struct WatcherGuard<'a>(&'a super::metrics::Metrics);

impl Drop for WatcherGuard<'_> {
    fn drop(&mut self) {
        self.0.watchers(-1);
    }
}

/// A label for latency metrics.
pub(crate) fn request_kind(req: &Request) -> &'static str {
    match req {
        Request::Txn(_) => "txn",
        Request::Get { .. } => "get",
        Request::List { .. } => "list",
        Request::Watch { .. } => "watch",
        Request::Status => "status",
        Request::Members => "members",
        Request::AddLearner { .. } | Request::Promote { .. } | Request::RemoveMember { .. } => {
            "membership"
        }
        Request::TransferLeader { .. } => "transfer_leader",
        Request::Raft { kind, .. } => match kind {
            RaftRpcKind::Append | RaftRpcKind::AppendStream => "raft_append",
            RaftRpcKind::Vote | RaftRpcKind::PreVote => "raft_vote",
            RaftRpcKind::Snapshot => "raft_snapshot",
            RaftRpcKind::TransferLeader => "raft_transfer_leader",
            RaftRpcKind::ReadIndex => "raft_read_index",
        },
    }
}

fn error_kind(e: &ApiError) -> &'static str {
    match e {
        ApiError::NotLeader { .. } => "not_leader",
        ApiError::InvalidArgument(_) => "invalid_argument",
        ApiError::Compacted { .. } => "compacted",
        ApiError::Indeterminate(_) => "indeterminate",
        ApiError::Unavailable(_) => "unavailable",
        ApiError::Membership(_) => "membership",
        ApiError::PermissionDenied(_) => "permission_denied",
        ApiError::Internal(_) => "internal",
    }
}
