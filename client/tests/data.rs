//! The data client's routing and retry rules, against a scripted metadata member and
//! scripted storage nodes in this process.
//!
//! Every scripted server is a real QUIC server with mutual TLS. The metadata member serves
//! the layout, the shard and node tables from a state the test changes as it goes, and
//! holds watches open without events, so the client learns of a change only by reading
//! again: each test checks that it does so when the storage node's answer calls for it.
//! Storage nodes record every request and answer as their script says (or never answer).
//! Tests check what the caller got *and* what each node received: the rules are about
//! deliveries (a write is resent only under its request id), so an outcome alone proves
//! little.

use augur_client::transport::{server_config, TlsFiles, META_SERVER_NAME, STORAGE_SERVER_NAME};
use augur_client::{Client, ClientConfig, DataClient, DataConfig, Error};
use augur_proto::data::{
    shard_of, DataCluster, DataError, DataRequest, DataResponse, Redirect, RequestId, Versioned,
    WriteOp, WriteOutcome, DATA_CLUSTER_SETTING, MAX_VALUE,
};
use augur_proto::frame::{read_frame, write_frame};
use augur_proto::{
    Key, Node, NodeId, NodeState, Record, Request, Response, Setting, Shard, ShardId, ShardState,
    Table, MAX_FRAME_DEFAULT,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ATTEMPT: Duration = Duration::from_millis(300);
const REQUEST: Duration = Duration::from_secs(3);
const CONNECT: Duration = Duration::from_secs(1);

/// A CA and one leaf that every server and the client present; it carries both server
/// names, and the scripted servers check nothing beyond the CA.
struct Certs {
    tls: TlsFiles,
    _dir: tempfile::TempDir,
}

fn certs() -> Certs {
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
struct MetaState {
    shards: BTreeMap<u64, Shard>,
    nodes: BTreeMap<u64, Node>,
    revision: u64,
    layout: Option<DataCluster>,
    /// Linearizable reads of single shard records, by shard.
    shard_reads: HashMap<u64, usize>,
}

impl MetaState {
    /// Writes a shard record as the store would: a new revision, stamped as its version.
    fn put_shard(&mut self, id: u64, replicas: &[u64], epoch: u64) {
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
enum Reply {
    Now(DataResponse),
    /// Read the request and never answer: the client cannot know whether it applied.
    Stall,
}

/// A scripted storage node.
struct Storage {
    addr: String,
    log: Arc<Mutex<Vec<DataRequest>>>,
}

impl Storage {
    /// `script` gets each request and how many this node had received before it.
    fn start(
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

    fn requests(&self) -> Vec<DataRequest> {
        self.log.lock().expect("log").clone()
    }

    /// The request id and epoch of every write received, in order.
    fn writes(&self) -> Vec<(RequestId, u64)> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                DataRequest::Write { id, epoch, .. } => Some((id, epoch)),
                _ => None,
            })
            .collect()
    }

    /// The epoch of every read received, in order.
    fn gets(&self) -> Vec<u64> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                DataRequest::Get { epoch, .. } => Some(epoch),
                _ => None,
            })
            .collect()
    }
}

fn value(v: &[u8], version: u64) -> DataResponse {
    DataResponse::Value(Some(Versioned {
        value: v.to_vec(),
        version,
    }))
}

fn applied(version: u64) -> Reply {
    Reply::Now(DataResponse::Written(WriteOutcome::Applied { version }))
}

fn refuse(e: DataError) -> Reply {
    Reply::Now(DataResponse::Error(e))
}

/// A metadata member with a layout of `shards` shards, every one on `replicas` at epoch 1,
/// and the nodes at the addresses given (node ids from 1).
fn cluster(tls: &TlsFiles, shards: u32, replicas: &[u64], addrs: &[&str]) -> Meta {
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

struct Meta {
    addr: String,
    state: Arc<Mutex<MetaState>>,
}

impl Meta {
    fn with<T>(&self, f: impl FnOnce(&mut MetaState) -> T) -> T {
        f(&mut self.state.lock().expect("meta state"))
    }
}

async fn data_client(meta: &Meta, tls: &TlsFiles, request: Duration) -> DataClient {
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
fn nothing_listening() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    s.local_addr().expect("bound").to_string()
}

#[tokio::test]
async fn a_redirect_is_followed_to_the_new_primary() {
    let c = certs();
    let old = Storage::start(&c.tls, |_, _| {
        refuse(DataError::Redirect(Redirect {
            shard: ShardId(1),
            epoch: 2,
            primary: Some(NodeId(2)),
        }))
    });
    let new = Storage::start(&c.tls, |req, _| match req {
        DataRequest::Get { epoch: 2, .. } => Reply::Now(value(b"v", 4)),
        _ => refuse(DataError::Internal("not scripted".into())),
    });
    let meta = cluster(&c.tls, 1, &[1, 2], &[&old.addr, &new.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;
    // The hand-off happens after the client cached epoch 1; its watch brings no news.
    meta.with(|s| s.put_shard(1, &[2, 1], 2));

    let r = client.get(b"k").await;

    assert!(
        matches!(&r, Ok(Some(v)) if v.value == b"v" && v.version == 4),
        "{r:?}"
    );
    assert_eq!(old.gets(), vec![1]);
    assert_eq!(
        new.gets(),
        vec![2],
        "sent to the new primary with its epoch"
    );
}

#[tokio::test]
async fn a_stale_epoch_refreshes_the_shard_and_resends_with_the_new_epoch() {
    let c = certs();
    let node = Storage::start(&c.tls, |req, _| match req {
        DataRequest::Write { epoch, .. } if *epoch < 3 => refuse(DataError::StaleEpoch {
            shard: ShardId(1),
            epoch: 3,
        }),
        DataRequest::Write { .. } => applied(11),
        _ => refuse(DataError::Internal("not scripted".into())),
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;
    meta.with(|s| s.put_shard(1, &[1], 3));

    let r = client.put(b"k".to_vec(), b"v".to_vec()).await;

    assert!(matches!(r, Ok(11)), "{r:?}");
    let writes = node.writes();
    assert_eq!(writes.iter().map(|w| w.1).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(writes[0].0, writes[1].0, "one write, one request id");
    assert_eq!(meta.with(|s| s.shard_reads.get(&1).copied()), Some(1));
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_resent_with_the_same_request_id() {
    let c = certs();
    let node = Storage::start(&c.tls, |req, seen| match req {
        DataRequest::Write { .. } if seen == 0 => Reply::Stall,
        DataRequest::Write { .. } => applied(7),
        _ => refuse(DataError::Internal("not scripted".into())),
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;

    let r = client.cas(b"k".to_vec(), None, Some(b"v".to_vec())).await;
    let next = client.delete(b"k".to_vec()).await;

    assert!(
        matches!(r, Ok(WriteOutcome::Applied { version: 7 })),
        "{r:?}"
    );
    assert!(matches!(next, Ok(7)), "{next:?}");
    let writes = node.writes();
    assert_eq!(writes.len(), 3);
    assert_eq!(writes[0].0, writes[1].0, "the resend keeps its id");
    assert_eq!(writes[0].0.client, client.client_id());
    assert_eq!(writes[2].0.client, writes[0].0.client);
    assert!(
        writes[2].0.seq > writes[0].0.seq,
        "the next write has a new id"
    );
}

#[tokio::test]
async fn a_write_never_answered_by_the_deadline_is_indeterminate() {
    let c = certs();
    let node = Storage::start(&c.tls, |req, _| match req {
        DataRequest::Get { .. } => Reply::Now(DataResponse::Value(None)),
        _ => Reply::Stall,
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, Duration::from_millis(1500)).await;
    // Connected first, so that the deadline is spent on write attempts alone, however slow
    // a handshake is on a loaded machine.
    assert!(matches!(client.get(b"k").await, Ok(None)));

    let r = client.put(b"k".to_vec(), b"v".to_vec()).await;

    assert!(matches!(r, Err(Error::Indeterminate(_))), "{r:?}");
    let writes = node.writes();
    assert!(writes.len() >= 2, "resent until the deadline: {writes:?}");
    assert!(
        writes.iter().all(|w| w.0 == writes[0].0),
        "every resend under the same id: {writes:?}"
    );
}

#[tokio::test]
async fn a_write_that_could_not_be_sent_is_unavailable_not_indeterminate() {
    let c = certs();
    let dead = nothing_listening();
    let meta = cluster(&c.tls, 1, &[1], &[&dead]);
    let client = data_client(&meta, &c.tls, Duration::from_millis(1500)).await;

    let r = client.put(b"k".to_vec(), b"v".to_vec()).await;

    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
}

#[tokio::test]
async fn unavailable_and_behind_are_retried_and_other_refusals_are_not() {
    let c = certs();
    let node = Storage::start(&c.tls, |req, seen| match (req, seen) {
        (DataRequest::Get { .. }, 0) => refuse(DataError::Unavailable("reconciling".into())),
        (DataRequest::Get { .. }, 1) => refuse(DataError::Behind {
            shard: ShardId(1),
            epoch: 0,
        }),
        (DataRequest::Get { .. }, _) => Reply::Now(DataResponse::Value(None)),
        _ => refuse(DataError::PermissionDenied("clients only".into())),
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;

    let r = client.get(b"k").await;
    let w = client.put(b"k".to_vec(), b"v".to_vec()).await;

    assert!(matches!(r, Ok(None)), "{r:?}");
    assert_eq!(node.gets().len(), 3);
    assert!(
        matches!(w, Err(Error::Data(DataError::PermissionDenied(_)))),
        "{w:?}"
    );
    assert_eq!(node.writes().len(), 1, "a refusal is final");
}

#[tokio::test]
async fn oversized_keys_and_values_are_refused_before_anything_is_sent() {
    let c = certs();
    let node = Storage::start(&c.tls, |_, _| applied(1));
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;

    let big = client.put(b"k".to_vec(), vec![0u8; MAX_VALUE + 1]).await;
    let empty = client.get(b"").await;
    let bad_scan = client.scan_shard(ShardId(2), b"", None, 10).await;
    let bad_op = client
        .write(WriteOp::Delete {
            key: vec![1u8; 2000],
        })
        .await;

    for r in [
        big.map(|_| ()),
        empty.map(|_| ()),
        bad_scan.map(|_| ()),
        bad_op.map(|_| ()),
    ] {
        assert!(
            matches!(r, Err(Error::Data(DataError::InvalidArgument(_)))),
            "{r:?}"
        );
    }
    assert!(node.requests().is_empty());
}

/// A storage node serving every shard of a 4-shard layout from a map, as scans see it.
fn scan_node(tls: &TlsFiles, keys: Vec<Vec<u8>>, shards: u32) -> Storage {
    let data: BTreeMap<Vec<u8>, u64> = keys.into_iter().zip(1..).collect();
    Storage::start(tls, move |req, _| match req {
        DataRequest::Scan {
            shard,
            prefix,
            start_after,
            limit,
            ..
        } => {
            let mut items: Vec<(Vec<u8>, Versioned)> = data
                .iter()
                .filter(|(k, _)| shard_of(k, shards) == *shard && k.starts_with(prefix))
                .filter(|(k, _)| {
                    start_after
                        .as_ref()
                        .is_none_or(|a| k.as_slice() > a.as_slice())
                })
                .map(|(k, v)| {
                    let value = Versioned {
                        value: k.clone(),
                        version: *v,
                    };
                    (k.clone(), value)
                })
                .collect();
            let more = items.len() > *limit as usize;
            items.truncate(*limit as usize);
            Reply::Now(DataResponse::Page { items, more })
        }
        _ => refuse(DataError::Internal("not scripted".into())),
    })
}

#[tokio::test]
async fn a_prefix_scan_merges_every_shard_in_key_order_page_by_page() {
    let c = certs();
    let mut keys: Vec<Vec<u8>> = (0..60)
        .map(|i| format!("user:{i:03}").into_bytes())
        .collect();
    keys.extend((0..20).map(|i| format!("other:{i}").into_bytes()));
    let node = scan_node(&c.tls, keys.clone(), 4);
    let meta = cluster(&c.tls, 4, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;
    let mut expected: Vec<Vec<u8>> = keys
        .into_iter()
        .filter(|k| k.starts_with(b"user:"))
        .collect();
    expected.sort();

    // Stateless pages, resumed after the last key.
    let mut got = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = client
            .scan_prefix(b"user:", after.as_deref(), 7)
            .await
            .expect("page");
        assert!(page.items.len() <= 7);
        got.extend(page.items.iter().map(|(k, _)| k.clone()));
        after = page.items.last().map(|(k, _)| k.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(got, expected);

    // One scan, read a page at a time.
    let mut scan = client.scan(b"user:");
    let mut got = Vec::new();
    while !scan.is_done() {
        let page = scan.next_page(9).await.expect("page");
        got.extend(page.into_iter().map(|(k, _)| k));
    }
    assert_eq!(got, expected);
}
