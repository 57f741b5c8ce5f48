//! The openraft type configuration: the one place that names openraft's generic types.

use augur_proto::{Txn, TxnResult};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a log entry asks the state machine to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Apply a metadata transaction.
    Txn(Txn),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Txn(t) => write!(f, "txn({} compares, {} ops)", t.compares.len(), t.ops.len()),
        }
    }
}

/// A member as the membership records it: where to reach it and which incarnation of its
/// data directory was added. Messages go to (id, incarnation), so a member whose data was
/// wiped (a new incarnation) is not the member the membership means until it is added again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// QUIC address `host:port`.
    pub addr: String,
    /// The incarnation the member had when it was added.
    pub incarnation: u64,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (incarnation {:016x})", self.addr, self.incarnation)
    }
}

openraft::declare_raft_types!(
    /// Augur's Raft types: metadata members are `u64` ids with an address and incarnation.
    pub TypeConfig:
        D = Command,
        R = TxnResult,
        NodeId = u64,
        Node = MemberNode,
);

/// A log id.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Membership as stored with the log id that set it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A Raft handle over our state machine.
pub type Raft = openraft::Raft<TypeConfig, crate::StateMachine>;
/// A snapshot as the store hands it to openraft: metadata plus the open snapshot file.
pub type StoreSnapshot = openraft::alias::SnapshotOf<TypeConfig, std::fs::File>;
