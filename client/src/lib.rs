//! Async client for Augur: the metadata service and the data plane.
//!
//! [`Client`] finds and follows the Raft leader, retries only what cannot apply twice, and
//! reports a write whose outcome it cannot know as [`Error::Indeterminate`] instead of
//! guessing. [`WatchStream`] delivers every change once, in revision order, across
//! reconnects and leader changes. [`ShardCache`] answers shard and storage-node lookups from
//! memory and is kept fresh by a watch. [`DataClient`] reads and writes keys at the storage
//! nodes, routed by that cache, following redirects and resending writes under their request
//! ids.
//!
//! The crate depends on no storage engine: storage nodes, tools and tests link it freely.

pub mod admin_http;
pub mod cache;
pub mod client;
pub mod cluster_file;
pub mod control;
pub mod data;
pub mod error;
pub mod node_ops;
pub mod watch;

/// QUIC, TLS and pooling live in `augur-transport`; re-exported for the client's callers.
pub use augur_transport as transport;

pub use cache::ShardCache;
pub use client::{CasOutcome, Client, ClientConfig};
pub use cluster_file::ClusterFile;
pub use data::{DataClient, DataConfig, PrefixScan, ScanPage};
pub use error::Error;
pub use node_ops::{NodeCommand, NodeCommandError, NodeCommandOutcome};
pub use transport::{TlsFiles, Transport, TransportError};
pub use watch::WatchStream;
