//! The data plane's vocabulary: keys and shards, the storage nodes' client API, replication
//! between storage nodes, and what storage nodes and the metadata leader's control plane tell
//! each other. See `docs/data-plane.md` for the protocol these messages carry.
//!
//! A storage node serves [`DataRequest`]s on the same QUIC endpoint kind as metadata members,
//! one request per stream; replication and shard copies are long-lived streams of their own
//! frame types after an opening request.

use crate::ids::{NodeId, ShardId};
use serde::{Deserialize, Serialize};
use std::fmt;

mod copy;
pub use copy::{
    crc_item, crc_items, crc_requests, CopiedRequest, CopyChunk, CopyFrame, RequestsChunk,
};

/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Most items one scan page may return.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// Most replicas a shard may have.
pub const MAX_RF: u32 = 5;
/// Most shards a data plane may have.
pub const MAX_SHARDS: u32 = 65_536;
/// The setting that holds the data plane's layout ([`DataCluster`], as JSON).
pub const DATA_CLUSTER_SETTING: &str = "data.cluster";

/// The data plane's layout, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCluster {
    /// Number of shards keys hash to.
    pub shards: u32,
    /// Replicas per shard.
    pub rf: u32,
}

impl DataCluster {
    /// Checks the layout's bounds.
    pub fn validate(&self) -> Result<(), DataError> {
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(DataError::InvalidArgument(format!(
                "shards must be 1..={MAX_SHARDS}, got {}",
                self.shards
            )));
        }
        if !(1..=MAX_RF).contains(&self.rf) {
            return Err(DataError::InvalidArgument(format!(
                "rf must be 1..={MAX_RF}, got {}",
                self.rf
            )));
        }
        Ok(())
    }

    /// The shard `key` belongs to.
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        shard_of(key, self.shards)
    }
}

/// The shard a key belongs to among `shards` (ids 1..=shards). The hash is part of the wire
/// contract: every client and server must agree on it, forever.
pub fn shard_of(key: &[u8], shards: u32) -> ShardId {
    ShardId(xxhash_rust::xxh3::xxh3_64(key) % u64::from(shards.max(1)) + 1)
}

/// Checks a key's length.
pub fn check_key(key: &[u8]) -> Result<(), DataError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(DataError::InvalidArgument(format!(
            "a key is 1..={MAX_KEY} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), DataError> {
    if value.len() > MAX_VALUE {
        return Err(DataError::InvalidArgument(format!(
            "a value is at most {MAX_VALUE} bytes, got {}",
            value.len()
        )));
    }
    Ok(())
}

/// Names one write, so that resending it applies it once. A client picks a random `client`
/// when it starts and numbers its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// The writing client, random.
    pub client: u128,
    /// Its write number.
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}/{}", self.client, self.seq)
    }
}

/// A write to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Sets the value.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Removes the key (applied, with a new version, even if it was absent).
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Sets (or, with `value: None`, deletes) the key if its version is `expected`
    /// (`None`: only if it is absent).
    Cas {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The version it must be at.
        expected: Option<u64>,
        /// The new value; `None` deletes.
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    },
}

impl WriteOp {
    /// A CRC-64 of the whole write (kind, key, expected version, value), remembered with its
    /// request id: a resend under an id must be the same write, and one that is not is
    /// refused instead of being told the first write's outcome as its own. Each part is
    /// length- or presence-prefixed, so no two writes encode alike.
    pub fn digest(&self) -> u64 {
        let mut d = crc64fast::Digest::new();
        let mut bytes = |b: &[u8]| {
            d.write(&(b.len() as u64).to_be_bytes());
            d.write(b);
        };
        match self {
            WriteOp::Put { key, value } => {
                bytes(&[0]);
                bytes(key);
                bytes(value);
            }
            WriteOp::Delete { key } => {
                bytes(&[1]);
                bytes(key);
            }
            WriteOp::Cas {
                key,
                expected,
                value,
            } => {
                bytes(&[2]);
                bytes(key);
                match expected {
                    Some(v) => bytes(&v.to_be_bytes()),
                    None => bytes(&[]),
                }
                match value {
                    Some(v) => {
                        bytes(&[1]);
                        bytes(v);
                    }
                    None => bytes(&[0]),
                }
            }
        }
        d.sum64()
    }

    /// The key written.
    pub fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } | WriteOp::Cas { key, .. } => key,
        }
    }

    /// Checks sizes before the write costs anything.
    pub fn validate(&self) -> Result<(), DataError> {
        check_key(self.key())?;
        match self {
            WriteOp::Put { value, .. }
            | WriteOp::Cas {
                value: Some(value), ..
            } => check_value(value),
            _ => Ok(()),
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Applied; the key's new version (the write's sequence number in its shard).
    Applied {
        /// The new version.
        version: u64,
    },
    /// A compare-and-set found another version; nothing changed.
    Conflict {
        /// The key's current version (`None`: absent).
        current: Option<u64>,
    },
}

/// A value with the version that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The sequence number of the write that set it.
    pub version: u64,
}

/// Who serves a shard now, as the answering node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// The shard.
    pub shard: ShardId,
    /// The epoch the answering node knows.
    pub epoch: u64,
    /// The primary at that epoch, if any.
    pub primary: Option<NodeId>,
}

/// Every way a data request can fail, as the caller needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DataError {
    /// This node does not serve the shard (not its primary, or a newer epoch moved it):
    /// resend to the primary named, after refreshing the shard record. Nothing was applied.
    #[error("shard {} is served elsewhere: epoch {}, primary {:?}", .0.shard, .0.epoch, .0.primary)]
    Redirect(Redirect),
    /// The request named an epoch older than the node's: refresh the shard record. Nothing
    /// was applied.
    #[error("shard {shard}: epoch {epoch} is stale")]
    StaleEpoch {
        /// The shard.
        shard: ShardId,
        /// The node's epoch for it.
        epoch: u64,
    },
    /// The node has not learnt the epoch the request names yet: retry shortly. Nothing was
    /// applied.
    #[error("shard {shard}: this node is still at epoch {epoch}")]
    Behind {
        /// The shard.
        shard: ShardId,
        /// The node's epoch for it.
        epoch: u64,
    },
    /// The node does not hold the shard at all.
    #[error("shard {0} is not on this node")]
    UnknownShard(ShardId),
    /// The primary cannot serve now (lease expired, reconciling, waiting for a replica to be
    /// removed): retry. Nothing was applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not commit (the primary lost its lease or role with it in
    /// flight): resend it with the same request id to find out.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// Malformed or out of bounds; retrying unchanged fails again. Nothing was applied.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The caller's certificate does not allow this request.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A replication message from the wrong shard epoch, node or incarnation.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A bug or a storage failure on the node.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Who a replication message is from and for: refused unless the epoch is current and both
/// ends are the incarnations the receiver expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The shard.
    pub shard: ShardId,
    /// The sender's epoch for it.
    pub epoch: u64,
    /// The sending node.
    pub from: NodeId,
    /// Its incarnation.
    pub from_incarnation: u64,
    /// The receiving node.
    pub to: NodeId,
}

/// What a log entry does to the shard's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Sets a key.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Removes a key.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Changes nothing (a compare-and-set that failed still takes a sequence number, so its
    /// request id is remembered; a new primary's first entry).
    Noop,
    /// Every replica computes the CRC-64 of the shard's content when it applies this entry,
    /// so that copies can be compared at exactly one sequence.
    Checkpoint,
}

/// One entry of a shard's replication log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Its sequence number in the shard, from 1, without gaps.
    pub seq: u64,
    /// The epoch of the primary that wrote it.
    pub epoch: u64,
    /// The client's request id, for writes that came from one.
    pub request: Option<RequestId>,
    /// [`WriteOp::digest`] of the write that carried `request` (0 without one).
    pub op_digest: u64,
    /// What applying it does.
    pub effect: Effect,
    /// What the client is told.
    pub outcome: WriteOutcome,
    /// The primary's wall clock when it wrote the entry (for expiring request ids).
    pub at_ms: u64,
}

/// One batch of entries on a replication stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateFrame {
    /// The sequence and epoch of the entry just before `entries` (0, 0 at the start): the
    /// receiver appends only if its log agrees there.
    pub prev: (u64, u64),
    /// Consecutive entries after `prev`; may be empty (a commit notice or keep-alive).
    pub entries: Vec<LogEntry>,
    /// The primary's committed sequence.
    pub committed: u64,
}

/// A replica's answer to one [`ReplicateFrame`], in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaAck {
    /// Everything up to `seq` is durable in the replica's log.
    Prepared {
        /// The highest sequence fsynced.
        seq: u64,
    },
    /// The replica's log does not agree at `prev`: the sender resends from `prepared + 1`
    /// (at most), after which the replica truncates whatever disagrees.
    Mismatch {
        /// The replica's highest prepared sequence.
        prepared: u64,
    },
    /// The stream is refused (fenced, unknown shard); it ends.
    Refused(DataError),
}

/// A replica's role, as the node holding it sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRole {
    /// Orders and commits writes, serves reads.
    Primary,
    /// Follows the primary's log.
    Secondary,
    /// Copies the shard and follows the log; serves nothing.
    Learner,
    /// Held by the node but no longer in the shard's configuration; deleted after a grace
    /// period.
    Stray,
}

/// One replica's state, reported in heartbeats and probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The shard.
    pub shard: ShardId,
    /// The epoch the node acts under.
    pub epoch: u64,
    /// Its role at that epoch.
    pub role: ReplicaRole,
    /// Highest sequence durable in its log.
    pub prepared: u64,
    /// Highest sequence it knows committed.
    pub committed: u64,
    /// Highest sequence applied to its data.
    pub applied: u64,
    /// For a primary: whether it has reconciled its replicas and may serve.
    pub serving: bool,
    /// For a learner: whether its copy is complete (it has the data up to its log).
    pub copied: bool,
    /// For a learner copying: bytes of keys and values received and CRC-checked so far (0
    /// otherwise). The leader records it in the move's `bytes_copied`, so an operator sees a
    /// long copy advance instead of jumping to done.
    pub copy_bytes: u64,
    /// Approximate bytes of keys and values this replica holds (from the sizes of its data
    /// files; what is still in memory is left out): a move's total before it is measured.
    pub size_estimate: u64,
    /// The last checkpoint it applied: (sequence, CRC-64, bytes, keys).
    pub checkpoint: Option<Checkpoint>,
}

/// A shard's content summarised at one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The sequence of the checkpoint entry.
    pub seq: u64,
    /// CRC-64/XZ of the shard's items in key order ([`crc_items`]).
    pub crc64: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
    /// Keys.
    pub keys: u64,
}

/// A request to a storage node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataRequest {
    /// Reads one key at the shard's primary.
    Get {
        /// The shard.
        shard: ShardId,
        /// The epoch the client believes in.
        epoch: u64,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Writes one key through the shard's primary.
    Write {
        /// The shard.
        shard: ShardId,
        /// The epoch the client believes in.
        epoch: u64,
        /// Names the write, so a resend applies once.
        id: RequestId,
        /// What to write.
        op: WriteOp,
    },
    /// Reads a page of a shard's keys (all, or those with `prefix`) in key order.
    Scan {
        /// The shard.
        shard: ShardId,
        /// The epoch the client believes in.
        epoch: u64,
        /// Only keys that start with it (empty: all).
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        /// Resume after this key.
        start_after: Option<Vec<u8>>,
        /// Most items, at most [`MAX_SCAN_LIMIT`].
        limit: u32,
    },
    /// Opens a replication stream for one shard (primary to replica); [`ReplicateFrame`]s
    /// follow and [`ReplicaAck`]s come back, one per frame.
    Replicate(Fence),
    /// Streams a shard's content to a learner in [`CopyChunk`]s, read at one applied
    /// sequence of at least `at_least`, resuming after `resume_after`.
    Copy {
        /// Sender is the learner, receiver the source.
        fence: Fence,
        /// The lowest applied sequence the copy may be read at.
        at_least: u64,
        /// The last key the learner already holds.
        resume_after: Option<Vec<u8>>,
    },
    /// The state of every replica on the node (the control plane's probe).
    Probe,
    /// Asks a shard's primary to hand off (a planned move of its primary role): it stops
    /// taking writes and reads, lets every write in flight commit, and answers with its last
    /// applied sequence; the control plane then makes a secondary that has it the primary at
    /// a new epoch. Clients meanwhile get `Unavailable` and retry: no request fails. A primary
    /// that sees no new configuration within `timeout_ms` serves again.
    HandOff {
        /// The shard.
        shard: ShardId,
        /// The epoch the caller believes in.
        epoch: u64,
        /// How long to wait for the new configuration before serving again.
        timeout_ms: u64,
    },
    /// Asks a shard's primary to write a checkpoint entry; answered with its sequence once
    /// it is committed.
    Checkpoint {
        /// The shard.
        shard: ShardId,
        /// The epoch the caller believes in.
        epoch: u64,
    },
}

/// A storage node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataResponse {
    /// A read's result (`None`: absent).
    Value(Option<Versioned>),
    /// A write's result.
    Written(WriteOutcome),
    /// A scan page.
    Page {
        /// Items in key order.
        items: Vec<(Vec<u8>, Versioned)>,
        /// Whether more follow the last one.
        more: bool,
    },
    /// The node's replicas.
    Probe(NodeReport),
    /// The primary handed off: every write it took is committed and applied up to `seq`.
    HandedOff {
        /// Its last applied sequence.
        seq: u64,
    },
    /// A checkpoint entry was committed at this sequence.
    Checkpointed {
        /// Its sequence.
        seq: u64,
    },
    /// The request failed.
    Error(DataError),
}

/// What a storage node says about itself in heartbeats and probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node.
    pub node: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// The node epoch it acts under.
    pub node_epoch: u64,
    /// Bytes of shard data it holds.
    pub used_bytes: u64,
    /// Bytes it may hold.
    pub capacity_bytes: u64,
    /// Every replica it holds.
    pub replicas: Vec<ReplicaStatus>,
}

impl NodeReport {
    /// Checks what the metadata leader indexes and compares: at most one status per shard,
    /// and no more shards than a cluster can have. A report is read on every heartbeat and
    /// probe, under the liveness table's lock; a node that listed millions of statuses, or
    /// one shard twice, would make every comparison slow or ambiguous.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.replicas.len() > MAX_SHARDS as usize {
            return Err(DataError::InvalidArgument(format!(
                "a report lists {} replicas; a cluster has at most {MAX_SHARDS} shards",
                self.replicas.len()
            )));
        }
        let mut shards: Vec<ShardId> = self.replicas.iter().map(|r| r.shard).collect();
        shards.sort_unstable();
        if let Some(w) = shards.windows(2).find(|w| w[0] == w[1]) {
            return Err(DataError::InvalidArgument(format!(
                "a report lists shard {} twice",
                w[0]
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "data_tests.rs"]
mod tests;
