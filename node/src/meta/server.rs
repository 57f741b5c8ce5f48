//! Accepting connections and streams: one task per QUIC stream, one request per stream.
//!
//! The caller's role is read off its certificate once per connection; each request is checked
//! against it ([`super::auth`]) before anything else happens, then handed to the module that
//! serves it. Before that, the role bounds how large a request may be, and the connection's
//! [`RequestBudget`] how many request bytes it may have in flight: a certificate without a
//! role gets its refusal without a byte read. A frame that does not decode is answered with
//! `InvalidArgument` and changes nothing.

use super::auth::authorize;
use super::MetaNode;
use augur_proto::frame::{write_frame, FrameError};
use augur_proto::wire::{ApiError, RaftRpcKind};
use augur_proto::{Request, Response};
use augur_transport::roles::RoleError;
use augur_transport::{peer_role, AdmitError, RequestBudget, Role};
use std::time::Instant;

/// Largest request a client certificate may send: it may only read (gets, lists, watches,
/// status), and none of those comes near this.
const CLIENT_REQUEST_LIMIT: usize = 64 * 1024;

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
        let role = peer_role(&conn);
        if let Err(e) = &role {
            tracing::debug!(peer = %conn.remote_address(), error = %e, "peer certificate has no role");
        }
        let budget = RequestBudget::for_frames(self.max_frame());
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let node = self.clone();
            let role = role.clone();
            let budget = budget.clone();
            tokio::spawn(async move { node.serve_stream(send, recv, role, budget).await });
        }
    }

    async fn serve_stream(
        self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        role: Result<Role, RoleError>,
        budget: RequestBudget,
    ) {
        let max = self.max_frame();
        // A certificate without a role may do nothing: its request is not even read.
        let limit = match &role {
            Err(e) => {
                let e = ApiError::PermissionDenied(e.to_string());
                self.answer_once(&mut send, e).await;
                return;
            }
            Ok(Role::Client) => CLIENT_REQUEST_LIMIT.min(max),
            Ok(_) => max,
        };
        let req: Request = match budget.read(&mut recv, limit).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(AdmitError::Frame(FrameError::Io(_))) => return,
            Err(e @ AdmitError::Busy { .. }) => {
                // Stopping the stream drops its unread bytes and gives the credit back.
                drop(recv);
                self.answer_once(&mut send, ApiError::Unavailable(e.to_string()))
                    .await;
                return;
            }
            Err(e) => {
                self.answer_once(
                    &mut send,
                    ApiError::InvalidArgument(format!("bad request frame: {e}")),
                )
                .await;
                return;
            }
        };
        if let Err(e) = authorize(&role, &req) {
            // Not held while a peer that may never read its answer is answered.
            drop(req);
            self.answer_once(&mut send, e).await;
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
                kind: raft_kind,
                envelope,
                payload,
            } => {
                if let Err(e) = self.accept_envelope(&envelope).await {
                    self.answer_once(&mut send, e).await;
                    return;
                }
                match raft_kind {
                    RaftRpcKind::AppendStream => {
                        // Answers are written, and their latency observed, per request inside.
                        self.serve_append_stream(send, recv).await;
                        return;
                    }
                    RaftRpcKind::Snapshot => self.receive_snapshot(&payload, recv).await,
                    other => self.raft_rpc(other, &payload).await,
                }
            }
            other => self.handle(other, role.as_ref().ok().copied()).await,
        };
        if let Response::Error(e) = &resp {
            self.metrics.rpc_errors(error_kind(e));
        }
        self.metrics.observe_rpc(kind, started.elapsed());
        if write_frame(&mut send, &resp, max).await.is_ok() {
            // Dropping a finished stream does not lose its data: the connection keeps
            // retransmitting it. Waiting for the peer's acknowledgement here only held the
            // task for a round trip (the data plane's answers gained 13% without it).
            let _ = send.finish();
        }
    }

    /// Answers a request that will not be served with its error, and ends the stream.
    async fn answer_once(&self, send: &mut quinn::SendStream, e: ApiError) {
        self.metrics.rpc_errors(error_kind(&e));
        let _ = write_frame(send, &Response::Error(e), self.max_frame()).await;
        let _ = send.finish();
    }

    /// Serves one request; `caller` is the role its certificate carries (already authorized
    /// for the request), for handlers that depend on who asks.
    async fn handle(&self, req: Request, caller: Option<Role>) -> Response {
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
            Request::Identity => Response::Identity(self.member_identity()),
            Request::Bootstrap => self.bootstrap().await,
            Request::AddLearner { id, addr } => self.add_learner(id, addr).await,
            Request::Promote { id } => self.promote(id).await,
            Request::RemoveMember { id } => self.remove_member(id).await,
            Request::TransferLeader { to } => self.transfer_leader(to).await,
            Request::Register(node) => self.register(node).await,
            Request::Heartbeat(report) => self.heartbeat(report, None).await,
            Request::HealthHeartbeat { report, health } => {
                self.heartbeat(report, Some(health)).await
            }
            Request::HealthSamples { node, samples } => self.health_samples(node, samples),
            Request::InitDataPlane(layout) => self.init_data_plane(layout).await,
            Request::ReportReplica {
                shard,
                epoch,
                replica,
                reason,
            } => {
                self.report_replica(caller, shard, epoch, replica, reason)
                    .await
            }
            Request::ForcePrimary { shard, node } => self.force_primary(shard, node).await,
            Request::Watch { .. } | Request::Raft { .. } => {
                Response::Error(ApiError::Internal("routed to the wrong handler".into()))
            }
        }
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
        Request::Identity => "identity",
        Request::Bootstrap => "bootstrap",
        Request::AddLearner { .. } | Request::Promote { .. } | Request::RemoveMember { .. } => {
            "membership"
        }
        Request::TransferLeader { .. } => "transfer_leader",
        Request::Register(_) => "register",
        Request::Heartbeat(_) | Request::HealthHeartbeat { .. } => "heartbeat",
        Request::HealthSamples { .. } => "health_samples",
        Request::ReportReplica { .. } => "report_replica",
        Request::InitDataPlane(_) => "init_data_plane",
        Request::ForcePrimary { .. } => "force_primary",
        Request::Raft { kind, .. } => match kind {
            RaftRpcKind::AppendStream => "raft_append",
            RaftRpcKind::Vote | RaftRpcKind::PreVote => "raft_vote",
            RaftRpcKind::Snapshot => "raft_snapshot",
            RaftRpcKind::TransferLeader => "raft_transfer_leader",
            RaftRpcKind::ReadIndex => "raft_read_index",
        },
    }
}

/// A label for error metrics.
pub(crate) fn error_kind(e: &ApiError) -> &'static str {
    match e {
        ApiError::NotLeader { .. } => "not_leader",
        ApiError::InvalidArgument(_) => "invalid_argument",
        ApiError::Compacted { .. } => "compacted",
        ApiError::Indeterminate(_) => "indeterminate",
        ApiError::Unavailable(_) => "unavailable",
        ApiError::Membership(_) => "membership",
        ApiError::PermissionDenied(_) => "permission_denied",
        ApiError::WrongIdentity(_) => "wrong_identity",
        ApiError::Internal(_) => "internal",
    }
}
