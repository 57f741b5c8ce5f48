//! The `augur` server.
//!
//! - [`config`]: metadata-node configuration (TOML + flags);
//! - [`meta`]: the metadata role: Raft over QUIC, the metadata API, the admin HTTP surface;
//! - [`control`]: the control plane on the metadata leader: storage nodes, placement,
//!   failure handling;
//! - [`storage`]: the storage role: replicated shards, the data API;
//! - [`certs`]: the cluster CA and node / client certificates;
//! - [`local`]: loopback clusters of real processes;
//! - [`bench`]: `augur bench meta`.

pub mod bench;
pub mod certs;
pub mod config;
pub mod control;
pub mod local;
pub mod meta;
pub mod storage;
mod test_hooks;
