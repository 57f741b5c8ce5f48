//! Messages between clients and metadata nodes, and between metadata nodes.
//!
//! One QUIC bidirectional stream carries one request and its response(s); a watch stream
//! carries one request and then a response per applied revision. Raft traffic rides the same
//! connections as [`Request::Raft`] with an opaque payload: the Raft message types belong to the
//! Raft library, and keeping them out of this crate keeps the client free of it.

use crate::ids::MemberId;
use crate::model::Record;
use crate::txn::{Key, Table, Txn, TxnResult};
use serde::{Deserialize, Serialize};

/// Protocol name negotiated by ALPN; bumped on any incompatible change to these messages.
pub const ALPN: &[u8] = b"augur/1";

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
    /// Append entries (also heartbeats).
    Append,
    /// A pipelined stream of append entries on one QUIC stream.
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
    /// A Raft message from a peer; only accepted from peers' certificates.
    Raft {
        /// Which RPC.
        kind: RaftRpcKind,
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
    /// A bug or storage failure on the node.
    #[error("internal error: {0}")]
    Internal(String),
}
