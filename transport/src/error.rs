//! Transport errors, sorted by what they say about delivery.

use augur_proto::frame::FrameError;
use std::path::PathBuf;
use std::time::Duration;

/// Failures below the request level.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A certificate or key file is missing or unreadable.
    #[error("cannot read {path}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The TLS configuration is unusable (key does not match, no CA certificate...).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The address does not resolve.
    #[error("bad address {addr:?}: {detail}")]
    Address {
        /// The address given.
        addr: String,
        /// Why it is bad.
        detail: String,
    },
    /// The connection could not be made; the request was not sent.
    #[error("cannot connect to {addr}: {detail}")]
    Connect {
        /// The peer.
        addr: String,
        /// Why.
        detail: String,
    },
    /// The request's frame could not be written whole (the stream failed, or the peer gave
    /// no flow-control credit within the connect timeout): a peer acts only on whole frames,
    /// so it was not applied.
    #[error("request to {addr} not sent whole: {detail}")]
    NotSent {
        /// The peer.
        addr: String,
        /// Why.
        detail: String,
    },
    /// The connection or stream failed after the request may have been delivered.
    #[error("connection to {addr} lost: {detail}")]
    Lost {
        /// The peer.
        addr: String,
        /// Why.
        detail: String,
    },
    /// No answer within the deadline; the request may have been delivered.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The peer.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
    /// A frame could not be read or written.
    #[error("frame error with {addr}: {source}")]
    Frame {
        /// The peer.
        addr: String,
        /// The codec error.
        source: FrameError,
    },
    /// The request does not fit in one frame; it was not sent.
    #[error("request to {addr} not sent: {source}")]
    Oversized {
        /// The peer.
        addr: String,
        /// The codec's refusal.
        source: FrameError,
    },
    /// The local endpoint could not be created.
    #[error("cannot open QUIC endpoint: {0}")]
    Endpoint(String),
}

impl TransportError {
    /// Whether the request certainly never reached the peer, so resending cannot apply it
    /// twice.
    ///
    /// A request too large for a frame never left the process ([`TransportError::Oversized`]);
    /// a frame that could not be *read* came after the request was sent.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::NotSent { .. }
                | TransportError::Address { .. }
                | TransportError::Pem { .. }
                | TransportError::Tls(_)
                | TransportError::Endpoint(_)
                | TransportError::Oversized { .. }
        )
    }
}
