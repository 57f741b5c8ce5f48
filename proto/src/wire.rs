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
/// 3: the node record's `cordoned` and `cause`, the migration's `kind`, `started_ms` and
/// `rate_bytes_per_s` (postcard is positional, so an older peer would misread them).
/// 5: the node record's `drain_when_back`. 6: its `undrain_when_back`, and the write digest
/// remembered with a request id (`LogEntry::op_digest`, `CopiedRequest::op_digest`).
pub const ALPN: &[u8] = b"augur/6";

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
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A heartbeat that also carries the node's health: its latest risk and a summary of its
    /// latest health sample. Appended last so older members still decode every variant they
    /// know (postcard is positional: a field added to `Heartbeat` would break both directions
    /// of a rolling upgrade). A node whose leader refuses this variant falls back to
    /// [`Request::Heartbeat`]. Same permission as `Heartbeat`.
    HealthHeartbeat {
        /// What `Heartbeat` carries.
        report: NodeReport,
        /// The node's health.
        health: NodeHealth,
    },
    /// A batch of a storage node's health samples (every `batch_interval_ms`, 30 s), each one
    /// JSON object in the predictor's sample format (this crate does not know its type). The
    /// leader keeps a bounded window per node in memory. Storage certificates, own node only.
    HealthSamples {
        /// The node.
        node: NodeId,
        /// Samples, oldest first: at most [`MAX_HEALTH_BATCH`], each at most
        /// [`MAX_HEALTH_SAMPLE_BYTES`].
        samples: Vec<String>,
    },
}

/// Most samples in one `HealthSamples` batch (a 30 s batch at 5 s sampling holds 6).
pub const MAX_HEALTH_BATCH: usize = 256;

/// Most bytes of one sample's JSON in a `HealthSamples` batch.
pub const MAX_HEALTH_SAMPLE_BYTES: usize = 8 * 1024;

/// Most reasons reported with one risk.
pub const MAX_RISK_REASONS: usize = crate::model::limits::MAX_FEATURES;

/// A storage node's health as it reports it with its heartbeats (and on its admin endpoint).
///
/// Every field has a serde default so JSON written by an older or newer node still reads.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeHealth {
    /// Where the samples come from: `linux`, `simulated`, or `off`.
    pub source: String,
    /// The node's latest risk, or why there is none.
    pub risk: RiskState,
    /// The latest health sample, summarised.
    pub summary: HealthSummary,
}

/// A node's latest risk, or why it has none: typed, so the leader and operators can tell "no
/// model is deployed" from "healthy". Externally tagged (postcard cannot read an internally
/// tagged enum): JSON `"unknown"`, `{"no_model":{"reason":…}}`, `{"scored":{…}}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskState {
    /// Not known yet (the node has not reported, or the agent has not started).
    #[default]
    Unknown,
    /// No model that can score this node is loaded (missing, wrong schema, corrupt, or only a
    /// disk model on a node without SMART). The node runs without risk.
    NoModel {
        /// Why, per model.
        reason: String,
    },
    /// A model is loaded but could not score yet (not enough history since start).
    Pending {
        /// Why.
        reason: String,
    },
    /// The latest score.
    Scored(RiskReport),
}

impl RiskState {
    /// The score, when scored.
    pub fn score(&self) -> Option<f64> {
        match self {
            RiskState::Scored(r) => Some(r.score),
            _ => None,
        }
    }

    /// The state's name (`unknown`, `no_model`, `pending`, `scored`).
    pub fn name(&self) -> &'static str {
        match self {
            RiskState::Unknown => "unknown",
            RiskState::NoModel { .. } => "no_model",
            RiskState::Pending { .. } => "pending",
            RiskState::Scored(_) => "scored",
        }
    }
}

/// One scoring round's result.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RiskReport {
    /// Risk on the policy's scale (the node model's alert threshold is where it alerts), 0..=1.
    pub score: f64,
    /// Which model(s) produced it (e.g. `node:schema3`, `node+disk`).
    pub model: String,
    /// Wall-clock milliseconds of the newest sample scored.
    pub at_ms: i64,
    /// The strongest reasons, `node:` / `disk:` prefixed feature and its contribution.
    pub reasons: Vec<(String, f64)>,
}

/// The latest health sample, summarised (absent: not measured).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthSummary {
    /// Wall-clock milliseconds of the latest sample.
    pub at_ms: Option<i64>,
    /// Samples collected since the node started.
    pub samples: u64,
    /// Collections that failed since the node started.
    pub collect_errors: u64,
    /// CPU utilisation 0..1.
    pub cpu_util: Option<f64>,
    /// Data-device read latency, ms.
    pub disk_read_lat_ms: Option<f64>,
    /// Data-device write latency, ms.
    pub disk_write_lat_ms: Option<f64>,
    /// Data-device utilisation 0..1.
    pub disk_util: Option<f64>,
    /// Packet loss to peers, percent.
    pub net_loss_pct: Option<f64>,
    /// Kernel error-log lines in the sample interval.
    pub err_log_count: Option<u64>,
    /// Temperature, degrees C.
    pub temp_c: Option<f64>,
    /// Power supply healthy.
    pub psu_ok: Option<bool>,
    /// Faults injected into a simulated source (empty otherwise).
    pub faults: Vec<String>,
}

/// Why a [`NodeHealth`] is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HealthError {
    /// A string longer than the record limit.
    #[error("health field `{0}` is too long")]
    TooLong(&'static str),
    /// Too many reasons or faults.
    #[error("health field `{0}` has too many entries")]
    TooMany(&'static str),
    /// A score outside 0..=1 or not a number.
    #[error("risk score {0} is not a probability")]
    BadScore(f64),
}

impl NodeHealth {
    /// Checks the bounds a leader enforces before keeping a node's health in memory.
    pub fn validate(&self) -> Result<(), HealthError> {
        use crate::model::limits::MAX_STRING;
        let long = |s: &str, f: &'static str| {
            if s.len() > MAX_STRING {
                Err(HealthError::TooLong(f))
            } else {
                Ok(())
            }
        };
        long(&self.source, "source")?;
        match &self.risk {
            RiskState::Unknown => {}
            RiskState::NoModel { reason } | RiskState::Pending { reason } => {
                long(reason, "risk.reason")?
            }
            RiskState::Scored(r) => {
                if !(0.0..=1.0).contains(&r.score) {
                    return Err(HealthError::BadScore(r.score));
                }
                long(&r.model, "risk.model")?;
                if r.reasons.len() > MAX_RISK_REASONS {
                    return Err(HealthError::TooMany("risk.reasons"));
                }
                for (name, _) in &r.reasons {
                    long(name, "risk.reasons")?;
                }
            }
        }
        if self.summary.faults.len() > MAX_RISK_REASONS {
            return Err(HealthError::TooMany("summary.faults"));
        }
        for f in &self.summary.faults {
            long(f, "summary.faults")?;
        }
        Ok(())
    }
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
// A record is a few hundred bytes and lives as briefly as the op that carries it: boxing
// it would add an allocation per op for nothing.
#[allow(clippy::large_enum_variant)]
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
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
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

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
