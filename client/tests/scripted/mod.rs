//! Scripted servers for the data client's tests: a metadata member serving a layout and the
//! shard and node tables from a state the test changes, and storage nodes that record every
//! request and answer as their script says. Every one is a real QUIC server with mutual TLS.

use augur_client::transport::{server_config, TlsFiles, META_SERVER_NAME, STORAGE_SERVER_NAME};
use augur_client::{Client, ClientConfig, DataClient, DataConfig};
use augur_proto::data::{
    DataCluster, DataError, DataRequest, DataResponse, RequestId, Versioned, WriteOutcome,
    DATA_CLUSTER_SETTING,
};
use augur_proto::frame::{read_frame, write_frame};
use augur_proto::{
    Key, Node, NodeId, NodeState, Record, Request, Response, Setting, Shard, ShardId, ShardState,
    Table, MAX_FRAME_DEFAULT,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ATTEMPT: Duration = Duration::from_millis(300);
pub const REQUEST: Duration = Duration::from_secs(3);
pub const CONNECT: Duration = Duration::from_secs(1);

/// A CA and one leaf that every server and the client present; it carries both server
/// names, and the scripted servers check nothing beyond the CA.
pub struct Certs {
    pub tls: TlsFiles,
    _dir: tempfile::TempDir,
}

pub fn certs() -> Certs {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let names = vec![
        META_SERVER_NAME.to_string(),
        STORAGE_SERVER_NAME.to_string(),
    ];
    let mut leaf_params = rcgen::CertificateParams::new(names).expect("leaf params");
    leaf_params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf certificate");
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca.pem()).expect("write CA");
    std::fs::write(path("leaf.pem"), leaf.pem()).expect("write leaf");
    std::fs::write(path("leaf.key"), leaf_key.serialize_pem()).expect("write key");
    Certs {
        tls: TlsFiles {
            ca: path("ca.pem"),
            cert: path("leaf.pem"),
            key: path("leaf.key"),
        },
        _dir: dir,
    }
}

/// Serves every stream of every connection on a loopback QUIC endpoint: `serve` gets the
/// stream's halves.
fn serve<F, Fut>(tls: &TlsFiles, serve: F) -> String
where
    F: Fn(quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let endpoint = quinn::Endpoint::server(
        server_config(tls, Duration::from_secs(10)).expect("server config"),
        "127.0.0.1:0".parse().expect("loopback"),
    )
    .expect("server endpoint");
    let addr = endpoint.local_addr().expect("bound").to_string();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let serve = serve.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(serve(send, recv));
                }
            });
        }
    });
    addr
}

/// What the scripted metadata member holds.
#[derive(Default)]
pub struct MetaState {
    shards: BTreeMap<u64, Shard>,
    nodes: BTreeMap<u64, Node>,
    revision: u64,
    layout: Option<DataCluster>,
    /// Linearizable reads of single shard records, by shard.
    pub shard_reads: HashMap<u64, usize>,
}

impl MetaState {
    /// Writes a shard record as the store would: a new revision, stamped as its version.
    pub fn put_shard(&mut self, id: u64, replicas: &[u64], epoch: u64) {
        self.revision += 1;
        self.shards.insert(
            id,
            Shard {
                id: ShardId(id),
                replicas: replicas.iter().map(|n| NodeId(*n)).collect(),
                learners: vec![],
                epoch,
                version: self.revision,
                state: ShardState::Stable,
                size_bytes: 0,
                crc64: 0,
            },
        );
    }

    fn put_node(&mut self, id: u64, addr: &str) {
        self.revision += 1;
        self.nodes.insert(
            id,
            Node {
                id: NodeId(id),
                incarnation: 1,
                addrs: vec![addr.to_string()],
                admin: String::new(),
                rack: String::new(),
                zone: String::new(),
                capacity_bytes: 1 << 30,
                used_bytes: 0,
                state: NodeState::Up,
                state_since_ms: 0,
                risk: Default::default(),
                epoch: 1,
                last_heartbeat_ms: 0,
                version: self.revision,
                cordoned: false,
                drain_when_back: None,
                undrain_when_back: None,
                cause: Default::default(),
            },
        );
    }

    fn answer(&mut self, req: &Request) -> Option<Response> {
        let revision = self.revision;
        Some(match req {
            Request::Get { key, .. } => {
                let record = match key {
                    Key::Setting(name) if name == DATA_CLUSTER_SETTING => self.layout.map(|l| {
                        Record::Setting(Setting {
                            name: name.clone(),
                            value: serde_json::to_vec(&l).expect("layout json"),
                            version: 1,
                        })
                    }),
                    Key::Shard(id) => {
                        *self.shard_reads.entry(id.0).or_default() += 1;
                        self.shards.get(&id.0).cloned().map(Record::Shard)
                    }
                    Key::Node(id) => self.nodes.get(&id.0).cloned().map(Record::Node),
                    _ => None,
                };
                Response::Get { record, revision }
            }
            Request::List { table, .. } => {
                let records = match table {
                    Table::Shards => self.shards.values().cloned().map(Record::Shard).collect(),
                    Table::Nodes => self.nodes.values().cloned().map(Record::Node).collect(),
                    _ => vec![],
                };
                Response::List {
                    records,
                    more: false,
                    revision,
                }
            }
            Request::Watch { .. } => Response::WatchStarted { revision },
            _ => return None,
        })
    }
}

/// A scripted metadata member; returns its address.
fn meta(tls: &TlsFiles, state: Arc<Mutex<MetaState>>) -> String {
    serve(tls, move |mut send, mut recv| {
        let state = state.clone();
        async move {
            let Ok(Some(req)) = read_frame::<_, Request>(&mut recv, MAX_FRAME_DEFAULT).await else {
                return;
            };
            let resp = state.lock().expect("meta state").answer(&req);
            let Some(resp) = resp else { return };
            let watching = matches!(resp, Response::WatchStarted { .. });
            let _ = write_frame(&mut send, &resp, MAX_FRAME_DEFAULT).await;
            if !watching {
                let _ = send.finish();
            }
            // A watch stays open with no events; anything else waits for its answer to land.
            let _ = send.stopped().await;
        }
    })
}

/// What a scripted storage node does with one request.
pub enum Reply {
    Now(DataResponse),
    /// Read the request and never answer: the client cannot know whether it applied.
    Stall,
}

/// A scripted storage node.
pub struct Storage {
    pub addr: String,
    log: Arc<Mutex<Vec<DataRequest>>>,
}

impl Storage {
    /// `script` gets each request and how many this node had received before it.
    pub fn start(
        tls: &TlsFiles,
        script: impl Fn(&DataRequest, usize) -> Reply + Send + Sync + 'static,
    ) -> Storage {
        let log: Arc<Mutex<Vec<DataRequest>>> = Arc::default();
        let script = Arc::new(script);
        let recorded = log.clone();
        let addr = serve(tls, move |mut send, mut recv| {
            let (script, log) = (script.clone(), recorded.clone());
            async move {
                let Ok(Some(req)) =
                    read_frame::<_, DataRequest>(&mut recv, MAX_FRAME_DEFAULT).await
                else {
                    return;
                };
                let seen = {
                    let mut log = log.lock().expect("log");
                    log.push(req.clone());
                    log.len() - 1
                };
                match script(&req, seen) {
                    Reply::Now(resp) => {
                        let _ = write_frame(&mut send, &resp, MAX_FRAME_DEFAULT).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    }
                    Reply::Stall => {
                        let _ = send.stopped().await;
                    }
                }
            }
        });
        Storage { addr, log }
    }

    pub fn requests(&self) -> Vec<DataRequest> {
        self.log.lock().expect("log").clone()
    }

    /// The request id and epoch of every write received, in order.
    pub fn writes(&self) -> Vec<(RequestId, u64)> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                DataRequest::Write { id, epoch, .. } => Some((id, epoch)),
                _ => None,
            })
            .collect()
    }

    /// The epoch of every read received, in order.
    pub fn gets(&self) -> Vec<u64> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                DataRequest::Get { epoch, .. } => Some(epoch),
                _ => None,
            })
            .collect()
    }
}

pub fn value(v: &[u8], version: u64) -> DataResponse {
    DataResponse::Value(Some(Versioned {
        value: v.to_vec(),
        version,
    }))
}

pub fn applied(version: u64) -> Reply {
    Reply::Now(DataResponse::Written(WriteOutcome::Applied { version }))
}

pub fn refuse(e: DataError) -> Reply {
    Reply::Now(DataResponse::Error(e))
}

/// A metadata member with a layout of `shards` shards, every one on `replicas` at epoch 1,
/// and the nodes at the addresses given (node ids from 1).
pub fn cluster(tls: &TlsFiles, shards: u32, replicas: &[u64], addrs: &[&str]) -> Meta {
    let mut s = MetaState {
        layout: Some(DataCluster { shards, rf: 1 }),
        ..Default::default()
    };
    for (i, a) in addrs.iter().enumerate() {
        s.put_node(i as u64 + 1, a);
    }
    for id in 1..=u64::from(shards) {
        s.put_shard(id, replicas, 1);
    }
    let state = Arc::new(Mutex::new(s));
    Meta {
        addr: meta(tls, state.clone()),
        state,
    }
}

pub struct Meta {
    addr: String,
    state: Arc<Mutex<MetaState>>,
}

impl Meta {
    pub fn with<T>(&self, f: impl FnOnce(&mut MetaState) -> T) -> T {
        f(&mut self.state.lock().expect("meta state"))
    }
}

pub async fn data_client(meta: &Meta, tls: &TlsFiles, request: Duration) -> DataClient {
    let mut cfg = ClientConfig::new(vec![meta.addr.clone()], tls.clone());
    cfg.attempt_timeout = ATTEMPT;
    cfg.request_timeout = REQUEST;
    cfg.connect_timeout = CONNECT;
    let client = Client::new(cfg).expect("client");
    DataClient::with_config(
        client,
        DataConfig {
            request_timeout: request,
            attempt_timeout: ATTEMPT,
            ..DataConfig::default()
        },
    )
    .await
    .expect("data client")
}

/// An address with nothing listening.
pub fn nothing_listening() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    s.local_addr().expect("bound").to_string()
}
