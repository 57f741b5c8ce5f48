//! Transactions and reads.
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
//!
//! RocksDB reads block, so they run on tokio's blocking pool, never on the async workers that
//! carry Raft's heartbeats.

use super::network::PeerClient;
use super::MetaNode;
use augur_proto::frame::payload_budget;
use augur_proto::wire::{ApiError, MAX_LIST_LIMIT};
use augur_proto::{Consistency, Key, Response, Table, Txn};
use augur_raft_store::{Command, StateMachine, StoreError};
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::ReadPolicy;

impl MetaNode {
    /// Runs a blocking state-machine read off the async workers. For the control plane's
    /// own reads (a heartbeat's, a pass's listing): they must not queue behind requests.
    pub(crate) async fn read_sm<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&StateMachine) -> Result<T, StoreError> + Send + 'static,
    {
        let sm = self.sm.clone();
        match tokio::task::spawn_blocking(move || f(&sm)).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(e) => Err(ApiError::Internal(format!("read task failed: {e}"))),
        }
    }

    /// [`MetaNode::read_sm`] for a peer's request (a get, a list page, a watch's history),
    /// within the node's read slots (see [`MetaNode::read_slots`]).
    pub(crate) async fn read_sm_for_request<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&StateMachine) -> Result<T, StoreError> + Send + 'static,
    {
        let Ok(slot) = self.read_slots.clone().acquire_owned().await else {
            return Err(ApiError::Unavailable("shutting down".into()));
        };
        // The slot goes with the read: a caller that gives up does not free it early.
        self.read_sm(move |sm| {
            let _slot = slot;
            f(sm)
        })
        .await
    }

    pub(crate) async fn txn(&self, txn: Txn) -> Response {
        if let Err(e) = txn.validate() {
            return Response::Error(ApiError::InvalidArgument(e.to_string()));
        }
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        if self.is_shutting_down() {
            return Response::Error(ApiError::Unavailable("shutting down".into()));
        }
        let wakes_mover = wakes_mover(&txn);
        match self.raft.client_write(Command::Txn(txn)).await {
            Ok(r) => {
                if wakes_mover && r.data.succeeded {
                    self.control.wake_mover();
                }
                Response::Txn(r.data)
            }
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
        if consistency == Consistency::Serializable || crate::test_hooks::skip_read_index() {
            return Ok(());
        }
        if self.is_leader() {
            return self.leader_read_index(true).await.map(|_| ());
        }
        let leader = self.leader_info().ok_or_else(|| {
            ApiError::Unavailable("no leader known to confirm the read with".into())
        })?;
        let deadline = std::time::Duration::from_millis(self.cfg.limits.follower_read_timeout_ms);
        let index = PeerClient::read_index(self, &leader, deadline)
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
    pub(crate) async fn leader_read_index(&self, wait_apply: bool) -> Result<u64, ApiError> {
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

    pub(crate) async fn get(&self, key: Key, consistency: Consistency) -> Response {
        if let Err(e) = key.validate() {
            return Response::Error(ApiError::InvalidArgument(e.to_string()));
        }
        if let Err(e) = self.read_barrier(consistency).await {
            return Response::Error(e);
        }
        // Served from memory on this worker when it can be; a read that would touch the
        // disk goes to the blocking pool.
        let read = match self.sm.get_cached(&key) {
            Ok(Some(hit)) => Ok(hit),
            Ok(None) => self.read_sm_for_request(move |sm| sm.get(&key)).await,
            Err(e) => Err(ApiError::from(e)),
        };
        match read {
            Ok((record, revision)) => Response::Get { record, revision },
            Err(e) => Response::Error(e),
        }
    }

    pub(crate) async fn list(
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
        // A page is one frame: records stop where the next would not fit.
        let budget = payload_budget(self.max_frame());
        match self
            .read_sm_for_request(move |sm| {
                sm.list(table, start_after.as_ref(), limit as usize, budget)
            })
            .await
        {
            Ok((records, more, revision)) => Response::List {
                records,
                more,
                revision,
            },
            Err(e) => Response::Error(e),
        }
    }
}

/// Whether a transaction, once applied, is work for the mover: a changed node record (an
/// operator's drain or cordon, a registration, a state change). The mover then starts at
/// once rather than at its next tick, which was up to a second of every drain.
fn wakes_mover(txn: &Txn) -> bool {
    txn.ops.iter().any(|op| matches!(op.key(), Key::Node(_)))
}

#[cfg(test)]
mod wake_tests {
    use super::wakes_mover;
    use augur_proto::{Key, NodeId, Op, Txn};

    #[test]
    fn node_records_wake_the_mover_and_other_writes_do_not() {
        let txn = |ops| Txn {
            compares: vec![],
            ops,
        };
        assert!(wakes_mover(&txn(vec![Op::Delete(Key::Node(NodeId(3)))])));
        assert!(wakes_mover(&txn(vec![
            Op::Delete(Key::Setting("policy.drain".into())),
            Op::Delete(Key::Node(NodeId(1))),
        ])));
        assert!(!wakes_mover(&txn(vec![Op::Delete(Key::Setting(
            "policy.drain".into()
        ))])));
        assert!(!wakes_mover(&txn(vec![Op::Delete(Key::Shard(
            augur_proto::ShardId(7)
        ))])));
    }
}
