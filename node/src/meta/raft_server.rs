//! Raft messages from peers: who may send them, and handing them to Raft.
//!
//! Every Raft message carries an envelope naming the cluster, the sender's (id, incarnation)
//! and the addressee's. Before anything reaches Raft, [`MetaNode::accept_envelope`] checks that
//! the message is for this incarnation of this member, from this member's cluster, and from
//! the incarnation of the sender that this member's membership knows. A member that lost its
//! data is thereby cut off in both directions until it is added again, and two clusters that
//! share a CA never mix. A member that belongs to no cluster yet (a founder, or one being
//! added) joins the cluster of the first message addressed to its incarnation: only a
//! membership that names this incarnation can produce such a message.

use super::network::{SnapshotChunk, SnapshotHeader};
use super::MetaNode;
use augur_proto::frame::read_frame;
use augur_proto::wire::{ApiError, RaftEnvelope, RaftRpcKind};
use augur_proto::Response;
use openraft::async_runtime::WatchReceiver;
use serde::{de::DeserializeOwned, Serialize};
use std::io::{Seek, SeekFrom, Write};

impl MetaNode {
    /// Accepts a Raft message's envelope or says why not; see the module documentation.
    pub(crate) async fn accept_envelope(&self, env: &RaftEnvelope) -> Result<(), ApiError> {
        if env.to.0 != self.id {
            return Err(ApiError::WrongIdentity(format!(
                "message for member {}, this is member {}",
                env.to, self.id
            )));
        }
        let incarnation = self.identity.incarnation();
        if env.to_incarnation != incarnation {
            return Err(ApiError::WrongIdentity(format!(
                "message for incarnation {:016x} of member {}; this data directory is \
                 incarnation {incarnation:016x} (the member lost its data): remove it and add \
                 it again",
                env.to_incarnation, self.id
            )));
        }
        match self.identity.cluster() {
            Some(c) if c != env.cluster.0 => {
                return Err(ApiError::WrongIdentity(format!(
                    "message from cluster {}, this member belongs to cluster {c:032x}",
                    env.cluster
                )))
            }
            Some(_) => {}
            None => {
                let identity = self.identity.clone();
                let cluster = env.cluster.0;
                tokio::task::spawn_blocking(move || identity.join_cluster(cluster))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .map_err(|e| ApiError::WrongIdentity(e.to_string()))?;
            }
        }
        let (known, membership_index, no_members) = self.known_incarnation(env.from.0);
        // Only a membership at least as new as the sender's can judge who the sender is: a
        // learner replaying the log holds memberships older than its leader's, which may name
        // the leader under an incarnation it has since replaced.
        let judged = membership_index >= env.membership_index;
        match known {
            Some(incarnation) if incarnation != env.from_incarnation && judged => {
                Err(ApiError::WrongIdentity(format!(
                    "member {} is incarnation {:016x} in this member's membership, the message \
                     comes from incarnation {:016x}",
                    env.from, incarnation, env.from_incarnation
                )))
            }
            Some(_) => Ok(()),
            // Joining: nothing in the log yet to check the sender against.
            None if no_members || !judged => Ok(()),
            None => Err(ApiError::WrongIdentity(format!(
                "member {} is not in this member's membership",
                env.from
            ))),
        }
    }

    pub(crate) async fn raft_rpc(&self, kind: RaftRpcKind, payload: &[u8]) -> Response {
        match kind {
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
    pub(crate) async fn receive_snapshot(
        &self,
        header: &[u8],
        mut recv: quinn::RecvStream,
    ) -> Response {
        let header: SnapshotHeader = match postcard::from_bytes(header) {
            Ok(h) => h,
            Err(e) => {
                return Response::Error(ApiError::InvalidArgument(format!("snapshot header: {e}")))
            }
        };
        let (path, file) = match self.sm.incoming_snapshot() {
            Ok(f) => f,
            Err(e) => return Response::Error(e.into()),
        };
        let result = receive_chunks(
            &mut recv,
            file,
            self.max_frame(),
            self.cfg.limits.max_snapshot_bytes,
        )
        .await;
        let resp = match result {
            Err(e) => Response::Error(ApiError::InvalidArgument(format!("snapshot transfer: {e}"))),
            Ok(file) => {
                let committed = self.raft.metrics().borrow_watched().local_committed;
                if let Err(why) = snapshot_fits(&header, &committed) {
                    let _ = std::fs::remove_file(&path);
                    let why = format!("snapshot refused: {why}");
                    return Response::Error(ApiError::InvalidArgument(why));
                }
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

/// Writes a snapshot's chunks from `recv` into `file` until the empty chunk that ends it,
/// then syncs the file and rewinds it for installation. A stream that ends early, a frame
/// that does not decode or is larger than `max_frame`, or more than `max_total` bytes in all
/// (`limits.max_snapshot_bytes`: a sender that never stops would otherwise fill the disk
/// the member's own log lives on) is an error; the caller removes the file.
async fn receive_chunks<R: tokio::io::AsyncRead + Unpin>(
    recv: &mut R,
    mut file: std::fs::File,
    max_frame: usize,
    max_total: u64,
) -> Result<std::fs::File, String> {
    let mut total: u64 = 0;
    loop {
        let chunk: SnapshotChunk = read_frame(recv, max_frame)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("stream ended before the last chunk")?;
        if chunk.0.is_empty() {
            break;
        }
        total = total.saturating_add(chunk.0.len() as u64);
        if total > max_total {
            return Err(format!(
                "more than {max_total} bytes (limits.max_snapshot_bytes)"
            ));
        }
        // Writing a megabyte blocks: off the async workers.
        file = tokio::task::spawn_blocking(move || file.write_all(&chunk.0).map(|()| file))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    tokio::task::spawn_blocking(move || {
        file.sync_all()?;
        file.seek(SeekFrom::Start(0))?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
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

/// A Raft answer: the library's result, postcard-encoded; `Err` is the receiver's fatal error.
pub(crate) fn encode_reply<T: Serialize>(r: Result<T, String>) -> Response {
    match postcard::to_allocvec(&r) {
        Ok(bytes) => Response::Raft(bytes),
        Err(e) => Response::Error(ApiError::Internal(e.to_string())),
    }
}

/// Whether a snapshot announced by `header` could have come from a cluster following the
/// protocol, given what this member has committed: Raft asserts both (a panic that would
/// stop this member's Raft), so a damaged or foreign header is refused here instead. Best
/// effort: `committed` comes from Raft's metrics, which may trail its own state by a moment,
/// so a damaged header racing a commit could still pass. Only a member certificate can send
/// one.
fn snapshot_fits(
    header: &SnapshotHeader,
    committed: &Option<openraft::alias::LogIdOf<augur_raft_store::TypeConfig>>,
) -> Result<(), String> {
    use openraft::vote::RaftLeaderId;
    let Some(last) = &header.meta.last_log_id else {
        return Ok(());
    };
    if last.leader_id > header.vote.leader_id.to_committed() {
        return Err(format!(
            "its last log id {last} is beyond the sender's vote {}",
            header.vote
        ));
    }
    if let Some(c) = committed {
        if last > c && last.index <= c.index {
            return Err(format!(
                "its last log id {last} contradicts the committed log id {c} here"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_raft_store::types::{SnapshotMeta, Vote};
    use augur_raft_store::TypeConfig;
    use openraft::testing::log_id;

    fn header(vote_term: u64, last_term: u64, last_index: u64) -> SnapshotHeader {
        SnapshotHeader {
            vote: Vote::new_committed(vote_term, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id::<TypeConfig>(last_term, 1, last_index)),
                last_membership: Default::default(),
            },
        }
    }

    /// The two conditions Raft asserts when it installs a snapshot are answered with an
    /// error instead: a log id beyond the sender's vote, and one that contradicts what this
    /// member committed (newer, at no greater index).
    #[test]
    fn a_snapshot_raft_would_panic_on_is_refused() {
        let committed = Some(log_id::<TypeConfig>(3, 1, 100));
        assert!(snapshot_fits(&header(5, 5, 200), &committed).is_ok());
        assert!(
            snapshot_fits(&header(5, 2, 50), &committed).is_ok(),
            "older: Raft skips it"
        );
        assert!(snapshot_fits(&header(5, 5, 200), &None).is_ok());
        let beyond = snapshot_fits(&header(4, 5, 200), &committed).unwrap_err();
        assert!(beyond.contains("beyond the sender's vote"), "{beyond}");
        let contradicts = snapshot_fits(&header(5, 4, 90), &committed).unwrap_err();
        assert!(contradicts.contains("contradicts"), "{contradicts}");
    }
    /// A snapshot stream is written whole when it stays within the byte limit, and refused
    /// once it passes it, however the bytes are cut into chunks.
    #[tokio::test]
    async fn a_snapshot_larger_than_the_limit_is_refused() {
        use augur_proto::frame::write_frame;
        use std::io::Read;
        async fn send(chunks: &[usize], limit: u64) -> Result<Vec<u8>, String> {
            let (mut tx, mut rx) = tokio::io::duplex(1 << 20);
            let chunks = chunks.to_vec();
            let writer = tokio::spawn(async move {
                for (i, n) in chunks.into_iter().chain([0]).enumerate() {
                    let chunk = SnapshotChunk(vec![i as u8; n]);
                    if write_frame(&mut tx, &chunk, 1 << 20).await.is_err() {
                        return; // the receiver gave up
                    }
                }
            });
            let file = tempfile::tempfile().map_err(|e| e.to_string())?;
            let got = receive_chunks(&mut rx, file, 1 << 20, limit).await;
            drop(rx);
            let _ = writer.await;
            let mut bytes = Vec::new();
            got?.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
            Ok(bytes)
        }
        let whole = send(&[1000, 24], 1024).await.unwrap();
        assert_eq!(whole.len(), 1024);
        assert!(whole[..1000].iter().all(|b| *b == 0) && whole[1000..].iter().all(|b| *b == 1));
        let over = send(&[1000, 25], 1024).await.unwrap_err();
        assert!(over.contains("limits.max_snapshot_bytes"), "{over}");
        let early = {
            let (tx, mut rx) = tokio::io::duplex(64);
            drop(tx);
            receive_chunks(&mut rx, tempfile::tempfile().unwrap(), 1 << 20, 1024)
                .await
                .unwrap_err()
        };
        assert!(early.contains("ended before the last chunk"), "{early}");
    }
}
