//! Augur's shared vocabulary: the metadata model, transactions, wire messages and the framing
//! codec.
//!
//! Everything that crosses a process boundary is defined here, once, so that the metadata
//! server, the client library and the test harness cannot disagree about a byte. The crate has
//! no I/O of its own (the optional `io` feature adds async frame helpers over tokio streams) and
//! no heavy dependencies, so the client library stays small.

pub mod data;
pub mod frame;
pub mod ids;
pub mod model;
pub mod txn;
pub mod wire;

pub use frame::{FrameError, MAX_FRAME_DEFAULT};
pub use ids::{ClusterId, IdError, MemberId, MigrationId, NodeId, ShardId};
pub use model::{
    CapacityAlarm, CapacityHookCall, Migration, MigrationKind, MigrationState, Node, NodeState,
    Record, Risk, Setting, Shard, ShardState, StateCause, StateOrigin, StormGuard,
    CAPACITY_SETTING, SHARD_CREATION_EPOCH, STORM_GUARD_SETTING,
};
pub use txn::{Compare, CompareTarget, Key, Op, Table, Txn, TxnError, TxnResult};
pub use wire::{ApiError, Consistency, Request, Response};
