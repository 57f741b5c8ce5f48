//! Async client for Augur's metadata service.
//!
//! [`Client`] finds and follows the Raft leader, retries only what cannot apply twice, and
//! reports a write whose outcome it cannot know as [`Error::Indeterminate`] instead of
//! guessing. [`WatchStream`](watch::WatchStream) delivers every change once, in revision
//! order, across reconnects and leader changes. [`ShardCache`](cache::ShardCache) answers
//! shard-location lookups from memory and is kept fresh by a watch.
//!
//! The crate depends on no storage engine: storage nodes, tools and tests link it freely.

pub mod admin_http;
pub mod cache;
pub mod client;
pub mod cluster_file;
pub mod error;
pub mod transport;
pub mod watch;

pub use cache::ShardCache;
pub use client::{CasOutcome, Client, ClientConfig};
pub use cluster_file::ClusterFile;
pub use error::Error;
pub use transport::{TlsFiles, Transport, TransportError};
pub use watch::WatchStream;
