//! The metadata store: openraft's log and state machine on one RocksDB.
//!
//! One database holds the Raft log, the vote and the metadata state, each in its own column
//! family, so that a single write-ahead log orders every write: a vote can never be durable
//! while the log entries written before it are not. See DESIGN.md "Durability rules".
//!
//! - [`types`]: the openraft type configuration and the command carried in log entries;
//! - [`db`]: opening the database and the layout of its column families;
//! - [`identity`]: the member, incarnation and cluster a data directory belongs to;
//! - [`log_store`]: [`openraft::RaftLogStorage`] with a group-commit WAL syncer;
//! - [`state_machine`]: [`openraft::RaftStateMachine`]: transactions, reads, watch history;
//! - [`snapshot`]: snapshot files, built from one RocksDB snapshot and installed atomically.

pub mod db;
pub mod error;
pub mod identity;
pub mod log_store;
pub mod snapshot;
pub mod state_machine;
pub mod types;

pub use db::{open, StoreConfig, Stores};
pub use error::StoreError;
pub use identity::Identity;
pub use log_store::LogStore;
pub use state_machine::StateMachine;
pub use types::{Command, MemberNode, TypeConfig};
