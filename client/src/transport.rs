//! QUIC with mutual TLS, and framed request/response over it.
//!
//! Every Augur process, server or client, presents a certificate signed by the cluster CA and
//! accepts only peers that do the same. Servers are verified against one cluster-internal name
//! ([`SERVER_NAME`]) that every metadata certificate carries, so an address change never
//! breaks verification while trust still ends at the cluster CA. TLS 1.3 only (QUIC requires
//! it); 0-RTT is never enabled, so no request can be replayed.
//!
//! One bidirectional stream carries one request and its response(s). Connections are pooled
//! per address and re-dialled when they close.

use augur_proto::frame::{read_frame, write_frame, FrameError};
use augur_proto::{Request, Response, MAX_FRAME_DEFAULT};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The name servers are verified against; every metadata node certificate carries it.
pub const SERVER_NAME: &str = "augur-meta";

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
    /// The local endpoint could not be created.
    #[error("cannot open QUIC endpoint: {0}")]
    Endpoint(String),
}

impl TransportError {
    /// Whether the request certainly never reached the peer, so resending cannot apply it
    /// twice.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::Address { .. }
                | TransportError::Pem { .. }
                | TransportError::Tls(_)
                | TransportError::Endpoint(_)
        )
    }
}

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

/// A QUIC endpoint with pooled connections to metadata nodes.
#[derive(Clone)]
pub struct Transport {
    endpoint: quinn::Endpoint,
    conns: Arc<Mutex<HashMap<SocketAddr, quinn::Connection>>>,
    connect_timeout: Duration,
    max_frame: usize,
}

impl Transport {
    /// A client-only endpoint on an ephemeral port.
    pub fn client(files: &TlsFiles, connect_timeout: Duration) -> Result<Self, TransportError> {
        let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| TransportError::Endpoint(e.to_string()))?;
        endpoint.set_default_client_config(client_config(files, Duration::from_secs(10))?);
        Ok(Self::from_endpoint(endpoint, connect_timeout))
    }

    /// Wraps an endpoint that already has a default client config (a server dialling peers).
    pub fn from_endpoint(endpoint: quinn::Endpoint, connect_timeout: Duration) -> Self {
        Transport {
            endpoint,
            conns: Arc::new(Mutex::new(HashMap::new())),
            connect_timeout,
            max_frame: MAX_FRAME_DEFAULT,
        }
    }

    /// The largest frame this transport sends or accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    async fn resolve(addr: &str) -> Result<SocketAddr, TransportError> {
        if let Ok(sa) = addr.parse::<SocketAddr>() {
            return Ok(sa);
        }
        let bad = |detail: String| TransportError::Address {
            addr: addr.to_string(),
            detail,
        };
        tokio::net::lookup_host(addr)
            .await
            .map_err(|e| bad(e.to_string()))?
            .next()
            .ok_or_else(|| bad("resolves to nothing".into()))
    }

    /// A live connection to `addr`, dialling if there is none.
    pub async fn connection(&self, addr: &str) -> Result<quinn::Connection, TransportError> {
        let sa = Self::resolve(addr).await?;
        if let Ok(conns) = self.conns.lock() {
            if let Some(c) = conns.get(&sa) {
                if c.close_reason().is_none() {
                    return Ok(c.clone());
                }
            }
        }
        let connect_err = |detail: String| TransportError::Connect {
            addr: addr.to_string(),
            detail,
        };
        let connecting = self
            .endpoint
            .connect(sa, SERVER_NAME)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| connect_err(format!("timed out after {:?}", self.connect_timeout)))?
            .map_err(|e| connect_err(e.to_string()))?;
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(sa, conn.clone());
        }
        Ok(conn)
    }

    /// Forgets a pooled connection (after an error) so the next call re-dials.
    pub async fn forget(&self, addr: &str) {
        if let Ok(sa) = Self::resolve(addr).await {
            if let Ok(mut conns) = self.conns.lock() {
                if let Some(c) = conns.remove(&sa) {
                    c.close(0u32.into(), b"reset");
                }
            }
        }
    }

    /// Opens a stream to `addr` and sends `req` on it; the caller reads the response(s).
    pub async fn open(
        &self,
        addr: &str,
        req: &Request,
    ) -> Result<(quinn::SendStream, FramedRecv), TransportError> {
        let conn = self.connection(addr).await?;
        self.open_on(&conn, addr, req).await
    }

    /// [`Transport::open`] on a connection already made to `addr`.
    async fn open_on(
        &self,
        conn: &quinn::Connection,
        addr: &str,
        req: &Request,
    ) -> Result<(quinn::SendStream, FramedRecv), TransportError> {
        let lost = |detail: String| TransportError::Lost {
            addr: addr.to_string(),
            detail,
        };
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.forget(addr).await;
                // Opening a stream sends nothing: the request was not delivered.
                return Err(TransportError::Connect {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                });
            }
        };
        write_frame(&mut send, req, self.max_frame)
            .await
            .map_err(|e| match e {
                FrameError::Io(io) => lost(io.to_string()),
                other => TransportError::Frame {
                    addr: addr.to_string(),
                    source: other,
                },
            })?;
        Ok((
            send,
            FramedRecv {
                recv,
                addr: addr.to_string(),
                max_frame: self.max_frame,
            },
        ))
    }

    /// One request, one response, within `timeout` counted from when the request can be sent.
    ///
    /// The connection is made first, under the connect timeout alone: a peer that cannot be
    /// reached fails with [`TransportError::Connect`], which says the request was never sent.
    /// Counting the handshake against `timeout` would turn an unreachable peer into a
    /// timeout, and a write to it into an unknown outcome.
    pub async fn call(
        &self,
        addr: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let conn = self.connection(addr).await?;
        let exchange = async {
            let (mut send, mut recv) = self.open_on(&conn, addr, req).await?;
            let _ = send.finish();
            recv.next().await?.ok_or_else(|| TransportError::Lost {
                addr: addr.to_string(),
                detail: "stream closed without a response".into(),
            })
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout {
                addr: addr.to_string(),
                timeout,
            }),
        };
        // A silent peer may be dead: re-dial next time instead of waiting out the idle timeout
        // on a connection that only looks open.
        if matches!(
            result,
            Err(TransportError::Timeout { .. } | TransportError::Lost { .. })
        ) {
            self.forget(addr).await;
        }
        result
    }

    /// Closes every connection and waits for the peers to be told.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}

/// The receiving half of a request stream: yields response frames.
pub struct FramedRecv {
    recv: quinn::RecvStream,
    addr: String,
    max_frame: usize,
}

impl FramedRecv {
    /// The next response; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Response>, TransportError> {
        read_frame(&mut self.recv, self.max_frame)
            .await
            .map_err(|e| match e {
                FrameError::Io(io) => TransportError::Lost {
                    addr: self.addr.clone(),
                    detail: io.to_string(),
                },
                other => TransportError::Frame {
                    addr: self.addr.clone(),
                    source: other,
                },
            })
    }

    /// The raw stream, for protocols that read their own frame types (snapshots).
    pub fn into_inner(self) -> quinn::RecvStream {
        self.recv
    }
}
