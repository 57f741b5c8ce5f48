//! The `augur` server.
//!
//! - [`config`]: metadata-node configuration (TOML + flags);
//! - [`meta`]: the metadata role: Raft over QUIC, the metadata API, the admin HTTP surface;
//! - [`certs`]: the cluster CA and node / client certificates;
//! - [`local`]: loopback clusters of real processes;
//! - [`bench`]: `augur bench meta`.

pub mod bench;
pub mod certs;
pub mod config;
pub mod local;
pub mod meta;
