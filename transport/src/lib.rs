//! QUIC with mutual TLS, as every Augur process speaks it.
//!
//! Every process, server or client, presents a certificate signed by the cluster CA and
//! accepts only peers that do the same. A certificate names what its holder may do (its
//! [`Role`]); servers look the role up on every connection and refuse what the role does not
//! allow. One bidirectional stream carries one request and its response(s), in length-prefixed
//! frames (see `augur_proto::frame`); connections are pooled per address.
//!
//! - [`tls`]: certificate files and the rustls / quinn configurations built from them;
//! - [`roles`]: the role a certificate carries, and reading it off a connection;
//! - [`pool`]: [`Transport`], pooled connections and framed calls;
//! - [`admit`]: reading a request frame within a connection's byte budget and a role's limit;
//! - [`socket`]: the UDP socket under each endpoint, with buffers sized for bulk copies;
//! - [`error`]: [`TransportError`], by whether a request may have been delivered.
//!
//! The metadata server, storage nodes, the client library and the test tools all use this
//! crate, so there is one place where TLS is set up and one place to read how.

pub mod admit;
pub mod error;
pub mod pool;
pub mod roles;
pub mod socket;
pub mod tls;

pub use admit::{AdmitError, RequestBudget};
pub use error::TransportError;
pub use pool::{FramedRecv, Transport};
pub use roles::{peer_role, Role};
pub use socket::{bind_endpoint, UdpBuffers, UDP_BUFFER_BYTES};
pub use tls::{client_config, server_config, TlsFiles, META_SERVER_NAME, STORAGE_SERVER_NAME};

/// The name metadata servers are verified against (kept for callers of the old name).
pub const SERVER_NAME: &str = META_SERVER_NAME;
