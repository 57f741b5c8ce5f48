//! Messages between clients and metadata nodes, and between metadata nodes.
//!
//! One QUIC bidirectional stream carries one request and its response(s); a watch stream
//! carries one request and then a response per applied revision. Raft traffic rides the same
//! connections as [`Request::Raft`] with an opaque payload: the Raft message types belong to the
//! Raft library, and keeping them out of this crate keeps the client free of it.

use crate::data::{DataCluster, NodeReport};
use crate::ids::{ClusterId, MemberId, NodeId, ShardId};
use crate::model::Record;
use crate::model::{Node, NodeState};
use crate::txn::{Key, Table, Txn, TxnResult};
use serde::{Deserialize, Serialize};

/// Protocol name negotiated by ALPN; bumped on any incompatible change to these messages.
pub const ALPN: &[u8] = b"augur/2";

/// Most records one list page may return.
pub const MAX_LIST_LIMIT: u32 = 10_000;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began. The leader confirms it is
    /// still leader with a quorum (ReadIndex); a follower asks the leader for that index and
    /// serves the read once it has applied that far.
    #[default]
    Linearizable,
    /// Whatever the serving node has applied: possibly stale, never torn, served anywhere.
    Serializable,
}

/// The Raft RPCs carried between metadata nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpcKind {
    /// A pipelined stream of append entries (and heartbeats) on one QUIC stream.
    AppendStream,
    /// Request vote.
    Vote,
    /// Pre-vote.
    PreVote,
    /// A full snapshot, sent in chunks.
    Snapshot,
    /// Leader transfer notice.
    TransferLeader,
    /// A follower asks the leader for a read index, to serve a linearizable read itself.
    ReadIndex,
}

/// Who a Raft message is from and for.
///
/// A member is not just an id: it is an id with an *incarnation*, a random number its data
/// directory was given when it was created and that the membership records. A member whose
/// disk was wiped comes back with a new incarnation, so messages still addressed to the old
/// one (and any it might send) are refused instead of letting an empty log vote as if it
/// remembered its promises. The cluster id keeps two clusters that share a CA apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftEnvelope {
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The sender.
    pub from: MemberId,
    /// The sender's incarnation.
    pub from_incarnation: u64,
    /// The member the sender means to reach.
    pub to: MemberId,
    /// The incarnation of that member the sender's membership knows.
    pub to_incarnation: u64,
    /// The log index of the membership the sender acts under: a receiver whose own
    /// membership is older (a learner still replaying the log) cannot judge the sender's
    /// incarnation and leaves that to Raft's term and log checks.
    pub membership_index: u64,
}

/// Who a member is: what its data directory says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIdentity {
    /// Its member id.
    pub id: MemberId,
    /// The incarnation of its data directory.
    pub incarnation: u64,
    /// The cluster it belongs to; `None` until it is bootstrapped or added.
    pub cluster: Option<ClusterId>,
}

/// A request to a metadata node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Apply a transaction (leader only).
    Txn(Txn),
    /// Read one record.
    Get {
        /// The key.
        key: Key,
        /// Freshness required.
        consistency: Consistency,
    },
    /// Read a page of one table in key order.
    List {
        /// The table.
        table: Table,
        /// Resume after this key (exclusive); None starts at the beginning.
        start_after: Option<Key>,
        /// Page size, at most [`MAX_LIST_LIMIT`].
        limit: u32,
        /// Freshness required.
        consistency: Consistency,
    },
    /// Stream every change to the given tables (empty: all) from a revision on.
    Watch {
        /// Tables of interest; empty means all.
        tables: Vec<Table>,
        /// First revision to deliver (inclusive).
        from_revision: u64,
    },
    /// The node's view of the cluster.
    Status,
    /// The current Raft membership.
    Members,
    /// Add a metadata node as a non-voting learner (leader only).
    AddLearner {
        /// Its member id.
        id: MemberId,
        /// Its QUIC address `host:port`.
        addr: String,
    },
    /// Turn a caught-up learner into a voter (leader only).
    Promote {
        /// The learner.
        id: MemberId,
    },
    /// Remove a member (voter or learner) from the group (leader only).
    RemoveMember {
        /// The member.
        id: MemberId,
    },
    /// Hand leadership to another voter (leader only).
    TransferLeader {
        /// The voter to hand it to.
        to: MemberId,
    },
    /// The answering member's identity (id, incarnation, cluster).
    Identity,
    /// Found a new cluster from the answering member's `initial_members`: the one-time act
    /// that creates a cluster. Refused by a member that already belongs to one.
    Bootstrap,
    /// A storage node registers (or re-registers after a restart) its record; the leader's
    /// control plane checks its incarnation and sets its state. Storage certificates only,
    /// for their own node.
    Register(Node),
    /// A storage node's heartbeat to the leader: its usage and every replica's state. Its
    /// lease runs from when it sent the heartbeat, once acknowledged.
    Heartbeat(NodeReport),
    /// A shard's primary asks the control plane to remove a replica that stopped
    /// acknowledging (PacificA's "remove secondary"). Storage certificates only.
    ReportReplica {
        /// The shard.
        shard: ShardId,
        /// The epoch the primary acts under.
        epoch: u64,
        /// The replica (or learner) that stopped acknowledging.
        replica: NodeId,
        /// What the primary saw.
        reason: String,
    },
    /// Creates the data plane: its layout and every shard's initial placement. Operators only;
    /// refused once created.
    InitDataPlane(DataCluster),
    /// Makes `node` the primary of a shard none of whose replicas is alive: it may lose writes
    /// acknowledged by the dead replicas, so only an operator may ask.
    ForcePrimary {
        /// The shard.
        shard: ShardId,
        /// The replica to serve it.
        node: NodeId,
    },
    /// A Raft message from a peer; only accepted from member certificates.
    Raft {
        /// Which RPC.
        kind: RaftRpcKind,
        /// Sender and addressee.
        envelope: RaftEnvelope,
        /// The Raft library's message, postcard-encoded.
        payload: Vec<u8>,
    },
}

/// A member of the metadata group as seen in membership listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Member id.
    pub id: MemberId,
    /// QUIC address.
    pub addr: String,
    /// Voter (true) or learner (false).
    pub voter: bool,
    /// The incarnation of its data directory the membership knows.
    pub incarnation: u64,
}

/// A node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering member.
    pub id: MemberId,
    /// Its role: "leader", "follower", "candidate", "learner", "shutdown".
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<MemberInfo>,
    /// Highest log index known committed.
    pub committed: u64,
    /// Highest log index applied: the store's revision.
    pub applied: u64,
    /// Last log index.
    pub last_log: u64,
    /// Oldest revision a watch may start from.
    pub compacted_revision: u64,
    /// Members.
    pub members: Vec<MemberInfo>,
    /// The answering member's incarnation.
    pub incarnation: u64,
    /// The cluster it belongs to; `None` until bootstrapped or added.
    pub cluster: Option<ClusterId>,
    /// Why it takes no part in Raft, if it does not (e.g. it lost its data and waits to be
    /// added again under its new incarnation).
    pub waiting: Option<String>,
}

/// One applied revision's changes, delivered to a watcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The revision (log index) that made the changes.
    pub revision: u64,
    /// The changes in that revision that match the watch, in op order.
    pub changes: Vec<Change>,
}

/// One change to one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// The record as written, with its new version.
    Put(Record),
    /// The record was removed.
    Delete(Key),
}

/// A response from a metadata node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Outcome of a transaction.
    Txn(TxnResult),
    /// One record (None: absent) and the revision the read observed.
    Get {
        /// The record.
        record: Option<Record>,
        /// Revision the read was served at.
        revision: u64,
    },
    /// A page of records.
    List {
        /// Records in key order.
        records: Vec<Record>,
        /// Whether more records follow the last one.
        more: bool,
        /// Revision the read was served at.
        revision: u64,
    },
    /// The watch is registered; events up to and including `revision` will follow or have
    /// been sent as history.
    WatchStarted {
        /// The serving node's applied revision when the watch began.
        revision: u64,
    },
    /// One revision's matching changes.
    Watch(WatchEvent),
    /// Cluster status.
    Status(ClusterStatus),
    /// Membership.
    Members(Vec<MemberInfo>),
    /// A member's identity.
    Identity(MemberIdentity),
    /// A heartbeat was recorded by a leader that confirmed its leadership.
    HeartbeatAck {
        /// The node's epoch as the registry holds it: a node that finds it higher than its
        /// own was declared Down meanwhile and must stop acting on its old roles.
        node_epoch: u64,
        /// The node's state in the registry.
        state: NodeState,
        /// How long the node's lease lasts from when it sent this heartbeat, in milliseconds:
        /// the leader's setting, so node and leader cannot disagree about it.
        lease_ms: u64,
        /// How often the leader expects heartbeats, in milliseconds.
        heartbeat_interval_ms: u64,
    },
    /// An admin request succeeded.
    Done,
    /// A Raft response, postcard-encoded.
    Raft(Vec<u8>),
    /// The request failed.
    Error(ApiError),
}

/// Every way a request can fail, as the caller needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// This node is not the leader; retry at the leader if one is known. Nothing was applied.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<MemberInfo>,
    },
    /// The request is malformed; retrying it unchanged will fail again. Nothing was applied.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A watch asked for history that has been compacted away; re-list and watch from
    /// `compacted_revision` or later.
    #[error("revision {requested} is compacted; oldest available is {compacted_revision}")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still available.
        compacted_revision: u64,
    },
    /// The request may or may not have been applied (leadership lost mid-flight, node shutting
    /// down after proposing). The caller must read to find out.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The node cannot serve now (no quorum, shutting down, catching up). Nothing was applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A membership change is already in progress or the target is not a member.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The caller's certificate does not allow this request.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A Raft message for another cluster or another incarnation of this member, or from a
    /// sender whose incarnation the membership does not know. Nothing was done.
    #[error("wrong identity: {0}")]
    WrongIdentity(String),
    /// A bug or storage failure on the node.
    #[error("internal error: {0}")]
    Internal(String),
}
