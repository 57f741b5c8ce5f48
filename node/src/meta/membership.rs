//! Who is in the metadata group: founding it, adding and removing members, handing over
//! leadership, and this member's view of it all.
//!
//! A cluster is founded once, by an explicit bootstrap sent to one of its founding members
//! (`augurctl bootstrap`, as `cockroach init`). That member asks every other founding member
//! for its identity, refuses if any already belongs to a cluster, picks a random cluster id
//! and initialises Raft with every founder's (id, address, incarnation). The others join the
//! cluster when the first Raft message addressed to their incarnation arrives.
//!
//! Adding a member works the same way: the leader asks the address for its identity and adds
//! it as a learner under the incarnation it reports. A member that lost its data reports a new
//! incarnation, so it cannot slip back in under its old entry: the operator removes the old
//! entry and adds it again, and it catches up as a learner before it is promoted.

use super::network::PeerClient;
use super::MetaNode;
use augur_proto::wire::{ApiError, ClusterStatus, MemberIdentity, MemberInfo};
use augur_proto::{ClusterId, MemberId, Request, Response};
use augur_raft_store::{MemberNode, TypeConfig};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Instant as _, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often a follower has its leader confirm leadership for [`MetaNode::in_touch`].
const CONFIRM_EVERY: Duration = Duration::from_secs(1);

impl MetaNode {
    pub(crate) fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Whether this member is in touch with a working leader, within `limit`: leading with
    /// a quorum's acknowledgement that recent (a single voter acknowledges itself; a leader
    /// not yet acknowledged was just elected by a quorum), or, following, having had the
    /// leader it knows confirm its leadership with a quorum (a read index) that recently.
    /// A follower asks again at most every [`CONFIRM_EVERY`], one call for all its callers.
    /// Neither Raft's view nor the leader's heartbeats can tell: with pre-vote, a follower
    /// left alone keeps naming its old leader, and a leader cut off in a minority keeps
    /// leading (openraft does not step down) and sending heartbeats to the followers there.
    pub(crate) async fn in_touch(&self, limit: Duration) -> bool {
        {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            if m.current_leader == Some(self.id) {
                return m.membership_config.membership().voter_ids().count() <= 1
                    || m.last_quorum_acked
                        .as_ref()
                        .is_none_or(|t| t.elapsed() < limit);
            }
        }
        let mut confirmed = self.confirmed.lock().await;
        if confirmed.elapsed() < CONFIRM_EVERY {
            return true;
        }
        if let Some(leader) = self.leader_info() {
            let timeout = limit.min(CONFIRM_EVERY * 2);
            if PeerClient::read_index(self, &leader, timeout).await.is_ok() {
                *confirmed = std::time::Instant::now();
                return true;
            }
        }
        confirmed.elapsed() < limit
    }

    /// The leader this node knows of, with its address. Every read a follower serves asks,
    /// so it borrows Raft's metrics rather than building a whole [`Self::status`] (which
    /// cloned them three times and took a third of a follower's CPU per read).
    pub(crate) fn leader_info(&self) -> Option<MemberInfo> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let membership = m.membership_config.membership();
        let info = m.current_leader.and_then(|leader| {
            membership.get_node(&leader).map(|node| MemberInfo {
                id: MemberId(leader),
                addr: node.addr.clone(),
                voter: membership.voter_ids().any(|v| v == leader),
                incarnation: node.incarnation,
            })
        });
        info
    }

    /// The incarnation under which the membership this member acts under knows `member`
    /// (`None`: not a member), and that membership's log index (0: none yet): what
    /// [`Self::accept_envelope`] judges a sender by, read without copying the metrics.
    pub(crate) fn known_incarnation(&self, member: u64) -> (Option<u64>, u64, bool) {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let membership = m.membership_config.membership();
        let index = m.membership_config.log_id().as_ref().map_or(0, |l| l.index);
        let empty = membership.nodes().next().is_none();
        let known = membership.get_node(&member).map(|n| n.incarnation);
        (known, index, empty)
    }

    pub(crate) fn require_leader(&self) -> Result<(), ApiError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(ApiError::NotLeader {
                leader: self.leader_info(),
            })
        }
    }

    /// What this data directory says about itself.
    pub(crate) fn member_identity(&self) -> MemberIdentity {
        MemberIdentity {
            id: MemberId(self.id),
            incarnation: self.identity.incarnation(),
            cluster: self.identity.cluster().map(ClusterId),
        }
    }

    /// The membership this member's log holds: id -> (address, incarnation, voter).
    pub(crate) fn membership_nodes(&self) -> BTreeMap<u64, (MemberNode, bool)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (*id, (node.clone(), voters.contains(id))))
            .collect()
    }

    /// Why this member takes no part in Raft, if it does not.
    pub(crate) fn waiting_reason(&self) -> Option<String> {
        let members = self.membership_nodes();
        let incarnation = self.identity.incarnation();
        if members.is_empty() {
            return Some(match self.identity.cluster() {
                None => format!(
                    "member {id} (incarnation {incarnation:016x}) holds no data and belongs to no \
                     cluster: it takes no part in Raft until a new cluster is bootstrapped \
                     (`augurctl bootstrap`) or an operator adds it to the existing one \
                     (`augurctl members add --id {id} --addr {addr}`; if it lost its data, \
                     `augurctl members remove --id {id}` first)",
                    id = self.id,
                    addr = self.cfg.listen,
                ),
                Some(c) => format!(
                    "member {id} joined cluster {c:032x} and waits for the leader's log",
                    id = self.id
                ),
            });
        }
        match members.get(&self.id) {
            None => Some(format!(
                "member {} is not in the membership of its cluster (removed)",
                self.id
            )),
            Some((node, _)) if node.incarnation != incarnation => Some(format!(
                "the membership knows member {} as incarnation {:016x}, this data directory \
                 is incarnation {incarnation:016x}",
                self.id, node.incarnation
            )),
            Some(_) => None,
        }
    }

    /// This node's view of the cluster, from Raft's metrics.
    pub(crate) fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let members: Vec<MemberInfo> = self
            .membership_nodes()
            .into_iter()
            .map(|(id, (node, voter))| MemberInfo {
                id: MemberId(id),
                addr: node.addr,
                voter,
                incarnation: node.incarnation,
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
            incarnation: self.identity.incarnation(),
            cluster: self.identity.cluster().map(ClusterId),
            waiting: self.waiting_reason(),
        }
    }

    /// Asks the member at `addr` who it is.
    async fn identity_of(&self, addr: &str) -> Result<MemberIdentity, ApiError> {
        let timeout = Duration::from_millis(self.cfg.limits.follower_read_timeout_ms.max(1000));
        match self.peers.call(addr, &Request::Identity, timeout).await {
            Ok(Response::Identity(i)) => Ok(i),
            Ok(Response::Error(e)) => Err(ApiError::Unavailable(format!("{addr}: {e}"))),
            Ok(other) => Err(ApiError::Internal(format!(
                "{addr} answered an identity request with {other:?}"
            ))),
            Err(e) => Err(ApiError::Unavailable(format!(
                "{addr} did not say who it is: {e}"
            ))),
        }
    }

    /// Founds a new cluster from `initial_members`; see the module documentation.
    pub(crate) async fn bootstrap(&self) -> Response {
        let _one_at_a_time = self.bootstrapping.lock().await;
        let initial = self.cfg.initial_members.clone();
        if initial.is_empty() {
            return Response::Error(ApiError::InvalidArgument(format!(
                "member {} has no initial_members: it cannot found a cluster (add it to an \
                 existing one with `augurctl members add`)",
                self.id
            )));
        }
        let wanted: BTreeSet<u64> = initial.iter().map(|m| m.id).collect();
        let have: BTreeSet<u64> = self.membership_nodes().into_keys().collect();
        // A founder that crashed between choosing the cluster id and initialising Raft has the
        // id but no log: it founds again under the same id.
        let resumed = self.identity.cluster();
        if let Some(c) = resumed {
            // A retried bootstrap of the cluster this member founded is done already.
            if have == wanted {
                return Response::Done;
            }
            if !have.is_empty() {
                return Response::Error(ApiError::Membership(format!(
                    "member {} already belongs to cluster {c:032x}: a cluster is founded once",
                    self.id
                )));
            }
        }
        let mut nodes = BTreeMap::new();
        for m in &initial {
            if m.id == self.id {
                nodes.insert(
                    m.id,
                    MemberNode {
                        addr: m.addr.clone(),
                        incarnation: self.identity.incarnation(),
                    },
                );
                continue;
            }
            let ident = match self.identity_of(&m.addr).await {
                Ok(i) => i,
                Err(e) => {
                    return Response::Error(ApiError::Unavailable(format!(
                        "founding member {} did not answer ({e}); every founding member must be \
                         running to bootstrap",
                        m.id
                    )))
                }
            };
            if ident.id.0 != m.id {
                return Response::Error(ApiError::InvalidArgument(format!(
                    "{} answers as member {}, but initial_members says member {}",
                    m.addr, ident.id, m.id
                )));
            }
            if let Some(c) = ident.cluster {
                if Some(c.0) != resumed {
                    return Response::Error(ApiError::Membership(format!(
                        "founding member {} already belongs to cluster {c}: a cluster is founded \
                         once",
                        m.id
                    )));
                }
            }
            nodes.insert(
                m.id,
                MemberNode {
                    addr: m.addr.clone(),
                    incarnation: ident.incarnation,
                },
            );
        }
        let cluster = resumed.unwrap_or_else(|| loop {
            let c: u128 = rand::random();
            if c != 0 {
                break c;
            }
        });
        let identity = self.identity.clone();
        match tokio::task::spawn_blocking(move || identity.join_cluster(cluster)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Response::Error(ApiError::Internal(e.to_string())),
            Err(e) => return Response::Error(ApiError::Internal(e.to_string())),
        }
        match self.raft.initialize(nodes).await {
            Ok(()) => {
                tracing::info!(
                    id = self.id,
                    cluster = format_args!("{cluster:032x}"),
                    members = ?wanted,
                    "bootstrapped a new cluster"
                );
                Response::Done
            }
            Err(e) => Response::Error(ApiError::Internal(format!("initialising Raft: {e}"))),
        }
    }

    pub(crate) async fn add_learner(&self, id: MemberId, addr: String) -> Response {
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
        let ident = match self.identity_of(&addr).await {
            Ok(i) => i,
            Err(e) => return Response::Error(e),
        };
        if ident.id != id {
            return Response::Error(ApiError::InvalidArgument(format!(
                "{addr} answers as member {}, not {id}",
                ident.id
            )));
        }
        if let Some(c) = ident.cluster {
            if Some(c.0) != self.identity.cluster() {
                return Response::Error(ApiError::Membership(format!(
                    "member {id} at {addr} belongs to another cluster ({c})"
                )));
            }
        }
        if let Some((node, _)) = self.membership_nodes().get(&id.0) {
            if node.addr == addr && node.incarnation == ident.incarnation {
                return Response::Done;
            }
            return Response::Error(ApiError::Membership(
                if node.incarnation != ident.incarnation {
                    format!(
                    "member {id} is in the membership as incarnation {:016x}, but {addr} answers \
                     as incarnation {:016x}: it lost or replaced its data. Remove it first \
                     (`augurctl members remove --id {id}`), then add it again",
                    node.incarnation, ident.incarnation
                )
                } else {
                    format!("member {id} is in the membership at {}", node.addr)
                },
            ));
        }
        membership_result(
            self.raft
                .add_learner(
                    id.0,
                    MemberNode {
                        addr,
                        incarnation: ident.incarnation,
                    },
                    false,
                )
                .await,
            self,
        )
    }

    pub(crate) async fn promote(&self, id: MemberId) -> Response {
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        match self.membership_nodes().get(&id.0) {
            None => Response::Error(ApiError::Membership(format!(
                "{id} is not a member; add it as a learner first"
            ))),
            Some((_, true)) => Response::Done,
            Some((_, false)) => membership_result(
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id.0])), false)
                    .await,
                self,
            ),
        }
    }

    pub(crate) async fn remove_member(&self, id: MemberId) -> Response {
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        let members = self.membership_nodes();
        let change = match members.get(&id.0) {
            None => return Response::Done,
            Some((_, true)) => {
                if members.values().filter(|(_, voter)| *voter).count() == 1 {
                    return Response::Error(ApiError::Membership(
                        "cannot remove the last voter".into(),
                    ));
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([id.0]))
            }
            Some((_, false)) => ChangeMembers::RemoveNodes(BTreeSet::from([id.0])),
        };
        membership_result(self.raft.change_membership(change, false).await, self)
    }

    pub(crate) async fn transfer_leader(&self, to: MemberId) -> Response {
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        if to.0 == self.id {
            return Response::Done;
        }
        if !matches!(self.membership_nodes().get(&to.0), Some((_, true))) {
            return Response::Error(ApiError::Membership(format!("{to} is not a voter")));
        }
        match self.raft.trigger().transfer_leader(to.0).await {
            Ok(()) => Response::Done,
            Err(e) => Response::Error(ApiError::Unavailable(e.to_string())),
        }
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
