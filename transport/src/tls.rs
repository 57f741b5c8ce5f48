//! Certificate files and the TLS configurations built from them.
//!
//! Servers are verified against a cluster-internal name for their kind, not their address:
//! metadata members carry [`META_SERVER_NAME`], storage nodes [`STORAGE_SERVER_NAME`]. An
//! address change never breaks verification, trust still ends at the cluster CA, and a storage
//! node's certificate cannot pass for a metadata member's. TLS 1.3 only (QUIC requires it);
//! 0-RTT is never enabled, so no request can be replayed.

use crate::error::TransportError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The name metadata members' certificates carry and clients verify.
pub const META_SERVER_NAME: &str = "augur-meta";
/// The name storage nodes' certificates carry and their peers verify.
pub const STORAGE_SERVER_NAME: &str = "augur-storage";

/// Paths of the PEM files an Augur process authenticates with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This process's certificate, signed by the CA.
    pub cert: PathBuf,
    /// This process's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Resolves relative paths against `base` (the directory of the file that named them).
    pub fn relative_to(&self, base: &Path) -> TlsFiles {
        TlsFiles {
            ca: base.join(&self.ca),
            cert: base.join(&self.cert),
            key: base.join(&self.key),
        }
    }

    fn load(&self) -> Result<Loaded, TransportError> {
        let pem_err = |path: &Path, e: &dyn std::fmt::Display| TransportError::Pem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).map_err(|e| pem_err(&self.ca, &e))? {
            let cert = cert.map_err(|e| pem_err(&self.ca, &e))?;
            roots
                .add(cert)
                .map_err(|e| TransportError::Tls(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(pem_err(&self.ca, &"no certificate in file"));
        }
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| pem_err(&self.cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(&self.cert, &e))?;
        if chain.is_empty() {
            return Err(pem_err(&self.cert, &"no certificate in file"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| pem_err(&self.key, &e))?;
        Ok(Loaded {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }
}

struct Loaded {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC transport settings shared by clients and servers.
fn transport_config(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Detect a dead peer within the idle timeout even when no request is in flight.
    t.keep_alive_interval(Some(idle_timeout / 3));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    // Snapshots and bulk copies stream megabytes; the defaults throttle them on fast links.
    t.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4096));
    // Nothing reads unidirectional streams: a peer may open none, so it cannot park data in
    // buffers nobody drains.
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // Ask the peer to acknowledge every ninth ack-eliciting packet rather than every second
    // (the QUIC ack-frequency extension; both ends are ours). Requests and answers carry the
    // pending acknowledgements anyway, so the pure ACK packets the default sends cost a
    // datagram each way for little: ~1.3 of the ~3.3 datagrams a get took were those.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(8));
    t.ack_frequency_config(Some(ack));
    Arc::new(t)
}

/// Builds the client side: trusts only the cluster CA, presents our certificate.
pub fn client_config(
    files: &TlsFiles,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, TransportError> {
    let l = files.load()?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_root_certificates(l.roots)
        .with_client_auth_cert(l.chain, l.key)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![augur_proto::wire::ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport_config(idle_timeout));
    Ok(cfg)
}

/// Builds the server side: requires a client certificate from the cluster CA.
pub fn server_config(
    files: &TlsFiles,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, TransportError> {
    let l = files.load()?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(l.roots, provider())
        .build()
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(l.chain, l.key)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![augur_proto::wire::ALPN.to_vec()];
    // Never accept 0-RTT: early data can be replayed.
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport_config(idle_timeout));
    Ok(cfg)
}
