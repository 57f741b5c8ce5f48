//! Pooled QUIC connections and framed request streams over them.
//!
//! One bidirectional stream carries one request and its response(s). Connections are pooled
//! per address and shared by every call to that address, so a failure must be scoped to what
//! failed: a call that times out or loses its stream gives up that stream only. The pooled
//! connection is replaced once QUIC itself has closed it (the peer went away, the idle timeout
//! expired), or when a call timed out without a single datagram arriving on the connection
//! while it waited: a live peer acknowledges a request within a round trip even when it is
//! slow to answer it, so that silence means the process behind the address is gone (killed and
//! perhaps restarted, which QUIC alone notices only at the idle timeout). Concurrent callers
//! that find no connection share one dial instead of racing their own.

use crate::error::TransportError;
use crate::tls::{client_config, TlsFiles, META_SERVER_NAME};
use augur_proto::frame::{FrameError, FrameReader};
use augur_proto::{Request, Response, MAX_FRAME_DEFAULT};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Dial = Shared<BoxFuture<'static, Result<quinn::Connection, String>>>;

/// What the pool holds for one address.
enum Slot {
    /// A connection, open when last looked at.
    Ready(quinn::Connection),
    /// A dial in progress that every caller for this address waits on.
    Dialing(Dial),
}

/// A QUIC endpoint with pooled connections to servers of one kind.
#[derive(Clone)]
pub struct Transport {
    endpoint: quinn::Endpoint,
    conns: Arc<Mutex<HashMap<SocketAddr, Slot>>>,
    connect_timeout: Duration,
    max_frame: usize,
    server_name: &'static str,
}

impl Transport {
    /// A client-only endpoint on an ephemeral port, talking to metadata members.
    pub fn client(files: &TlsFiles, connect_timeout: Duration) -> Result<Self, TransportError> {
        let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
        let (mut endpoint, _) = crate::socket::bind_endpoint(bind, None)?;
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
            server_name: META_SERVER_NAME,
        }
    }

    /// The same endpoint with its own pool, verifying servers against `name` (for example
    /// [`crate::STORAGE_SERVER_NAME`] to talk to storage nodes).
    pub fn for_servers(&self, name: &'static str) -> Transport {
        Transport {
            endpoint: self.endpoint.clone(),
            conns: Arc::new(Mutex::new(HashMap::new())),
            connect_timeout: self.connect_timeout,
            max_frame: self.max_frame,
            server_name: name,
        }
    }

    /// Sets the largest frame sent or accepted, on both directions of every stream.
    pub fn with_max_frame(mut self, max_frame: usize) -> Transport {
        self.max_frame = max_frame;
        self
    }

    /// The largest frame this transport sends or accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The local endpoint.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
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

    /// A live connection to `addr`, dialling if there is none (or joining a dial under way).
    pub async fn connection(&self, addr: &str) -> Result<quinn::Connection, TransportError> {
        let sa = Self::resolve(addr).await?;
        let dial = {
            let mut conns = self
                .conns
                .lock()
                .map_err(|_| TransportError::Endpoint("connection pool poisoned".into()))?;
            match conns.get(&sa) {
                Some(Slot::Ready(c)) if c.close_reason().is_none() => return Ok(c.clone()),
                Some(Slot::Dialing(d)) => d.clone(),
                _ => {
                    let d = self.dial(sa);
                    conns.insert(sa, Slot::Dialing(d.clone()));
                    d
                }
            }
        };
        let result = dial.clone().await;
        if let Ok(mut conns) = self.conns.lock() {
            // Only the dial this caller waited on is settled here: a newer slot stays.
            if matches!(conns.get(&sa), Some(Slot::Dialing(d)) if d.ptr_eq(&dial)) {
                match &result {
                    Ok(c) => conns.insert(sa, Slot::Ready(c.clone())),
                    Err(_) => conns.remove(&sa),
                };
            }
        }
        result.map_err(|detail| TransportError::Connect {
            addr: addr.to_string(),
            detail,
        })
    }

    fn dial(&self, sa: SocketAddr) -> Dial {
        let endpoint = self.endpoint.clone();
        let timeout = self.connect_timeout;
        let name = self.server_name;
        async move {
            let connecting = endpoint.connect(sa, name).map_err(|e| e.to_string())?;
            tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| format!("timed out after {timeout:?}"))?
                .map_err(|e| e.to_string())
        }
        .boxed()
        .shared()
    }

    /// Dials every address at once and returns the first that answers, so that one dead
    /// server at the head of a list does not cost a connect timeout before each request.
    /// The others keep dialling in the background and join the pool when they answer.
    pub async fn connect_any(&self, addrs: &[String]) -> Result<String, TransportError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut dials: FuturesUnordered<_> = addrs
            .iter()
            .map(|a| {
                let t = self.clone();
                let a = a.clone();
                // Spawned, so a dial goes on when this returns early and lands in the pool.
                tokio::spawn(async move { (t.connection(&a).await.map(|_| ()), a) })
            })
            .collect();
        let mut last = None;
        while let Some(joined) = dials.next().await {
            match joined {
                Ok((Ok(()), a)) => return Ok(a),
                Ok((Err(e), _)) => last = Some(e),
                Err(e) => last = Some(TransportError::Endpoint(e.to_string())),
            }
        }
        Err(last.unwrap_or_else(|| TransportError::Connect {
            addr: String::new(),
            detail: "no addresses given".into(),
        }))
    }

    /// Whether a connection to `addr` is pooled and open, without dialling.
    pub fn is_connected(&self, addr: &str) -> bool {
        let Ok(sa) = addr.parse::<SocketAddr>() else {
            return false;
        };
        self.conns
            .lock()
            .is_ok_and(|c| matches!(c.get(&sa), Some(Slot::Ready(c)) if c.close_reason().is_none()))
    }

    /// Opens a stream to `addr` and sends `req` on it; the caller reads the response(s).
    pub async fn open(
        &self,
        addr: &str,
        req: &Request,
    ) -> Result<(quinn::SendStream, FramedRecv), TransportError> {
        self.open_as(addr, req).await
    }

    /// [`Transport::open`] for any request type (a storage node's streams: replication,
    /// shard copies).
    pub async fn open_as<Q: serde::Serialize>(
        &self,
        addr: &str,
        req: &Q,
    ) -> Result<(quinn::SendStream, FramedRecv), TransportError> {
        let conn = self.connection(addr).await?;
        self.open_on(&conn, addr, req).await
    }

    /// [`Transport::open`] on a connection already made to `addr`, for any message type (the
    /// metadata [`Request`] or a storage node's own requests).
    async fn open_on<Q: serde::Serialize>(
        &self,
        conn: &quinn::Connection,
        addr: &str,
        req: &Q,
    ) -> Result<(quinn::SendStream, FramedRecv), TransportError> {
        // Encoded before a stream exists: a request too large to send was certainly not sent.
        let bytes = augur_proto::frame::encode(req, self.max_frame).map_err(|source| {
            TransportError::Oversized {
                addr: addr.to_string(),
                source,
            }
        })?;
        // Opening a stream sends nothing: the request was not delivered. It waits for stream
        // credit from the peer, which a peer with every stream busy may not give: bounded
        // like a connection, so a call never hangs here.
        let opened = tokio::time::timeout(self.connect_timeout, conn.open_bi()).await;
        let (mut send, recv) = match opened {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => {
                return Err(TransportError::Connect {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                })
            }
            Err(_) => {
                return Err(TransportError::Connect {
                    addr: addr.to_string(),
                    detail: format!("no stream opened within {:?}", self.connect_timeout),
                })
            }
        };
        let rx_mark = received(conn);
        // A frame not written whole cannot be acted on (a peer decodes whole frames only). A
        // peer that grants no credit (its buffers full of other streams' requests) must not
        // hold the call for ever: the stream is reset and the request reported not sent.
        let not_sent = |detail: String| TransportError::NotSent {
            addr: addr.to_string(),
            detail,
        };
        match tokio::time::timeout(self.connect_timeout, send.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(not_sent(e.to_string())),
            Err(_) => {
                let _ = send.reset(0u32.into());
                return Err(not_sent(format!(
                    "no flow-control credit within {:?}",
                    self.connect_timeout
                )));
            }
        }
        Ok((
            send,
            FramedRecv {
                recv,
                conn: conn.clone(),
                rx_mark,
                addr: addr.to_string(),
                reader: FrameReader::new(self.max_frame),
            },
        ))
    }

    /// Drops the pooled connection behind `recv` if nothing at all has arrived on it since
    /// the request went out (see the module documentation): its peer is gone. Call it when an
    /// answer is overdue. A connection that is receiving is left alone, and a newer pooled
    /// connection to the same address is never touched.
    pub fn discard_if_silent(&self, recv: &FramedRecv) {
        if received(&recv.conn) != recv.rx_mark {
            return;
        }
        let id = recv.conn.stable_id();
        if let Ok(mut conns) = self.conns.lock() {
            let remote = recv.conn.remote_address();
            if matches!(conns.get(&remote), Some(Slot::Ready(c)) if c.stable_id() == id) {
                conns.remove(&remote);
            }
        }
        tracing::debug!(peer = %recv.addr, "no datagram while an answer was owed: dropping the connection");
        recv.conn.close(0u32.into(), b"peer silent");
    }

    /// One request, one response, within `timeout` counted from when the request can be sent.
    ///
    /// The connection is made first, under the connect timeout alone: a peer that cannot be
    /// reached fails with [`TransportError::Connect`], which says the request was never sent.
    /// Counting the handshake against `timeout` would turn an unreachable peer into a
    /// timeout, and a write to it into an unknown outcome. A timeout abandons this call's
    /// stream only; the connection stays for the other calls using it.
    pub async fn call(
        &self,
        addr: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        self.call_as(addr, req, timeout).await
    }

    /// [`Transport::call`] for any request and response types: storage nodes speak their own
    /// messages (`augur_proto::data`) over the same pooled connections, framing and failure
    /// rules, so a timed-out data request is as scoped, and as honestly reported, as a
    /// metadata one.
    pub async fn call_as<Q, R>(
        &self,
        addr: &str,
        req: &Q,
        timeout: Duration,
    ) -> Result<R, TransportError>
    where
        Q: serde::Serialize,
        R: serde::de::DeserializeOwned,
    {
        let conn = self.connection(addr).await?;
        let (mut send, mut recv) = self.open_on(&conn, addr, req).await?;
        let _ = send.finish();
        let exchange = async {
            recv.next_as::<R>()
                .await?
                .ok_or_else(|| TransportError::Lost {
                    addr: addr.to_string(),
                    detail: "stream closed without a response".into(),
                })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => {
                self.discard_if_silent(&recv);
                Err(TransportError::Timeout {
                    addr: addr.to_string(),
                    timeout,
                })
            }
        }
    }

    /// Closes every connection and waits for the peers to be told.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}

/// Datagrams received on a connection so far.
fn received(conn: &quinn::Connection) -> u64 {
    conn.stats().udp_rx.datagrams
}

/// The receiving half of a request stream: yields response frames.
pub struct FramedRecv {
    recv: quinn::RecvStream,
    /// The connection the stream is on, to tell a silent peer from a slow one.
    conn: quinn::Connection,
    /// Datagrams received on it when the request was sent.
    rx_mark: u64,
    addr: String,
    /// Keeps a partly received frame across cancelled reads.
    reader: FrameReader,
}

impl FramedRecv {
    /// The next response; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Response>, TransportError> {
        self.next_as().await
    }

    /// The next frame as any message type, for protocols with their own frames (append
    /// streams, snapshot and shard copies). Each frame read restarts the silence check of
    /// [`Transport::discard_if_silent`]. Cancel-safe: a read cut off in a `select!` loses no
    /// bytes (see [`FrameReader`]).
    pub async fn next_as<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<Option<T>, TransportError> {
        self.rx_mark = received(&self.conn);
        self.reader.next(&mut self.recv).await.map_err(|e| match e {
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

    /// The raw stream.
    pub fn into_inner(self) -> quinn::RecvStream {
        self.recv
    }
}

#[cfg(test)]
mod tests {
    //! The pool against a scripted server on a real QUIC endpoint.
    use super::*;
    use crate::tls::server_config;
    use augur_proto::frame::{read_frame, write_frame};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Certs {
        tls: TlsFiles,
        _dir: tempfile::TempDir,
    }

    /// A CA and one leaf for both ends (the pool does not look at roles).
    fn certs() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(vec![META_SERVER_NAME.to_string()]).unwrap();
        leaf_params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("ca.pem"), ca.pem()).unwrap();
        std::fs::write(p("leaf.pem"), leaf.pem()).unwrap();
        std::fs::write(p("leaf.key"), leaf_key.serialize_pem()).unwrap();
        Certs {
            tls: TlsFiles {
                ca: p("ca.pem"),
                cert: p("leaf.pem"),
                key: p("leaf.key"),
            },
            _dir: dir,
        }
    }

    /// A server that answers every request with `Done`, except `Status`, which it never
    /// answers (a stalled RPC). Counts the connections it accepted.
    fn scripted_server(tls: &TlsFiles) -> (String, Arc<AtomicUsize>) {
        let ep = quinn::Endpoint::server(
            server_config(tls, Duration::from_secs(10)).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = ep.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    count.fetch_add(1, Ordering::SeqCst);
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let req: Option<Request> = read_frame(&mut recv, MAX_FRAME_DEFAULT)
                                .await
                                .unwrap_or(None);
                            match req {
                                Some(Request::Status) => {
                                    // Stalled: hold the stream open and never answer.
                                    let _ = send.stopped().await;
                                }
                                Some(_) => {
                                    let _ =
                                        write_frame(&mut send, &Response::Done, MAX_FRAME_DEFAULT)
                                            .await;
                                    let _ = send.finish();
                                    let _ = send.stopped().await;
                                }
                                None => {}
                            }
                        });
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_stalled_call_fails_alone_and_keeps_the_connection() {
        let c = certs();
        let (addr, accepted) = scripted_server(&c.tls);
        let t = Transport::client(&c.tls, Duration::from_secs(5)).unwrap();
        let first = t.connection(&addr).await.unwrap().stable_id();
        let stalled = {
            let t = t.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                t.call(&addr, &Request::Status, Duration::from_millis(300))
                    .await
            })
        };
        // Calls that share the connection before, while and after the stalled one times out.
        let mut others = Vec::new();
        for _ in 0..40 {
            let t = t.clone();
            let addr = addr.clone();
            others.push(tokio::spawn(async move {
                t.call(&addr, &Request::Members, Duration::from_secs(20))
                    .await
            }));
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        assert!(matches!(
            stalled.await.unwrap(),
            Err(TransportError::Timeout { .. })
        ));
        for o in others {
            assert!(matches!(o.await.unwrap(), Ok(Response::Done)));
        }
        assert_eq!(t.connection(&addr).await.unwrap().stable_id(), first);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection, never re-dialled"
        );
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_dial_and_a_dead_address_does_not_delay_others() {
        let c = certs();
        let (addr, _) = scripted_server(&c.tls);
        let t = Transport::client(&c.tls, Duration::from_secs(5)).unwrap();
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let t = t.clone();
                let addr = addr.clone();
                tokio::spawn(async move { t.connection(&addr).await.map(|c| c.stable_id()) })
            })
            .collect();
        let mut ids = Vec::new();
        for c in calls {
            ids.push(c.await.unwrap().unwrap());
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "every caller got the one connection");

        // Nothing listens on the first address: its dial runs into the 5 s connect timeout,
        // but connect_any returns with the live one long before.
        let dead = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().to_string()
        };
        let fresh = Transport::client(&c.tls, Duration::from_secs(5)).unwrap();
        let started = tokio::time::Instant::now();
        let got = fresh
            .connect_any(&[dead.clone(), addr.clone()])
            .await
            .unwrap();
        assert_eq!(got, addr);
        assert!(fresh.is_connected(&addr));
        assert!(!fresh.is_connected(&dead));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_before_it_is_sent() {
        let c = certs();
        let (addr, _) = scripted_server(&c.tls);
        let t = Transport::client(&c.tls, Duration::from_secs(5))
            .unwrap()
            .with_max_frame(64 * 1024);
        let big = Request::AddLearner {
            id: augur_proto::MemberId(9),
            addr: "x".repeat(100 * 1024),
        };
        let e = t
            .call(&addr, &big, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, TransportError::Oversized { .. }), "{e}");
        assert!(e.certainly_not_sent());
    }
}
