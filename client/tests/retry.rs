//! The client's retry rules, against scripted members in this process.
//!
//! Each scripted member is a real QUIC server with mutual TLS that records every request it
//! reads and answers as its script says (or never answers). A test checks what the caller got
//! *and* where, and how many times, the request went: the rules are about deliveries (a
//! write that may have arrived is never resent; one that certainly did not may go
//! elsewhere; reads go anywhere, again and again), so an outcome alone proves little.
//!
//! Timeouts are short so that the file runs in a few seconds. Counts are read once the
//! client has returned: every request it sent was sent by then, and the few that were not
//! answered are waited for with a deadline instead of a sleep. Only the last test measures
//! time, with a margin of half the connect timeout.

use augur_client::transport::{server_config, TlsFiles, META_SERVER_NAME};
use augur_client::{Client, ClientConfig, Error};
use augur_proto::frame::{read_frame, write_frame};
use augur_proto::wire::{ApiError, MemberIdentity, MemberInfo};
use augur_proto::{
    Consistency, Key, MemberId, Op, Record, Request, Response, Setting, Txn, TxnResult,
    MAX_FRAME_DEFAULT,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const ATTEMPT: Duration = Duration::from_millis(300);
const REQUEST: Duration = Duration::from_secs(3);
const CONNECT: Duration = Duration::from_secs(2);
/// How long a test waits for a request it knows was sent to be recorded by its server.
const SETTLE: Duration = Duration::from_secs(5);

/// A CA and one leaf that both sides present. The client checks the server name, not the
/// role, and the scripted servers check nothing beyond the CA, so one leaf will do.
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
    let mut leaf_params =
        rcgen::CertificateParams::new(vec![META_SERVER_NAME.to_string()]).expect("leaf params");
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

/// What a scripted member does with one request.
enum Reply {
    /// Answer at once.
    Now(Response),
    /// Answer after a pause (a member that is slow, not dead).
    After(Duration, Response),
    /// Read the request and never answer, keeping the stream open: a member that hangs
    /// after the request arrived, so the client cannot know whether it was applied.
    Stall,
}

/// A scripted metadata member.
struct Member {
    addr: String,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Member {
    /// Starts a member on a loopback port. `script` gets each request and how many this
    /// member had received before it. `Identity` is answered without asking the script, so
    /// a test can connect the client to chosen members before the request under test.
    fn start(
        tls: &TlsFiles,
        script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
    ) -> Member {
        let endpoint = quinn::Endpoint::server(
            server_config(tls, Duration::from_secs(10)).expect("server config"),
            "127.0.0.1:0".parse().expect("loopback"),
        )
        .expect("server endpoint");
        let addr = endpoint.local_addr().expect("bound").to_string();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let script = Arc::new(script);
        let recorded = log.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (script, log) = (script.clone(), recorded.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let (script, log) = (script.clone(), log.clone());
                        tokio::spawn(async move {
                            let Ok(Some(req)) =
                                read_frame::<_, Request>(&mut recv, MAX_FRAME_DEFAULT).await
                            else {
                                return;
                            };
                            let seen = {
                                let mut log = log.lock().expect("log");
                                log.push(req.clone());
                                log.len() - 1
                            };
                            let reply = match req {
                                Request::Identity => Reply::Now(identity()),
                                _ => script(&req, seen),
                            };
                            let resp = match reply {
                                Reply::Now(r) => r,
                                Reply::After(pause, r) => {
                                    tokio::time::sleep(pause).await;
                                    r
                                }
                                Reply::Stall => {
                                    // Resolves when the client gives up and stops reading.
                                    let _ = send.stopped().await;
                                    return;
                                }
                            };
                            let _ = write_frame(&mut send, &resp, MAX_FRAME_DEFAULT).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        });
                    }
                });
            }
        });
        Member { addr, log }
    }

    fn count(&self, what: fn(&Request) -> bool) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|r| what(r))
            .count()
    }

    fn txns(&self) -> usize {
        self.count(|r| matches!(r, Request::Txn(_)))
    }

    fn gets(&self) -> usize {
        self.count(|r| matches!(r, Request::Get { .. }))
    }

    /// This member as a `NotLeader` answer names it.
    fn info(&self) -> MemberInfo {
        MemberInfo {
            id: MemberId(2),
            addr: self.addr.clone(),
            voter: true,
            incarnation: 1,
        }
    }
}

/// Waits until `done` holds, failing the test after [`SETTLE`].
async fn settle(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn client(endpoints: &[&str], tls: &TlsFiles) -> Client {
    let mut cfg = ClientConfig::new(
        endpoints.iter().map(|e| e.to_string()).collect(),
        tls.clone(),
    );
    cfg.attempt_timeout = ATTEMPT;
    cfg.request_timeout = REQUEST;
    cfg.connect_timeout = CONNECT;
    Client::new(cfg).expect("client")
}

fn setting() -> Record {
    Record::Setting(Setting {
        name: "retry".into(),
        value: b"1".to_vec(),
        version: 0,
    })
}

/// A blind put: the write whose resending could overwrite a newer one.
fn put() -> Txn {
    Txn {
        compares: vec![],
        ops: vec![Op::Put(setting())],
    }
}

fn key() -> Key {
    setting().key()
}

fn applied(revision: u64) -> Response {
    Response::Txn(TxnResult {
        succeeded: true,
        revision,
        current: vec![],
    })
}

fn found() -> Response {
    let mut record = setting();
    record.set_version(5);
    Response::Get {
        record: Some(record),
        revision: 5,
    }
}

fn identity() -> Response {
    Response::Identity(MemberIdentity {
        id: MemberId(1),
        incarnation: 1,
        cluster: None,
    })
}

fn refused(e: ApiError) -> Reply {
    Reply::Now(Response::Error(e))
}

fn unscripted(req: &Request) -> Reply {
    refused(ApiError::Internal(format!("not scripted: {req:?}")))
}

/// An address with nothing listening: the socket that reserved the port is gone.
fn nothing_listening() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    s.local_addr().expect("bound").to_string()
}

#[tokio::test]
async fn a_write_refused_by_a_follower_is_resent_to_the_leader_it_names() {
    let c = certs();
    let leader = Member::start(&c.tls, |req, _| match req {
        Request::Txn(_) => Reply::Now(applied(7)),
        other => unscripted(other),
    });
    let hint = leader.info();
    let follower = Member::start(&c.tls, move |req, _| match req {
        Request::Txn(_) => refused(ApiError::NotLeader {
            leader: Some(hint.clone()),
        }),
        other => unscripted(other),
    });
    // Only the follower is configured: the leader can be reached through its hint alone.
    let client = client(&[&follower.addr], &c.tls);

    let r = client.txn(put()).await;

    assert!(
        matches!(&r, Ok(t) if t.succeeded && t.revision == 7),
        "{r:?}"
    );
    assert_eq!(follower.txns(), 1);
    assert_eq!(leader.txns(), 1);
}

#[tokio::test]
async fn a_write_refused_by_a_member_that_knows_no_leader_goes_to_another_member() {
    let c = certs();
    let lost = Member::start(&c.tls, |req, _| match req {
        Request::Txn(_) => refused(ApiError::NotLeader { leader: None }),
        other => unscripted(other),
    });
    let leader = Member::start(&c.tls, |req, _| match req {
        Request::Txn(_) => Reply::Now(applied(8)),
        other => unscripted(other),
    });
    let client = client(&[&lost.addr, &leader.addr], &c.tls);
    // Connected to the first member only, so the write goes there first.
    client.identity(&lost.addr).await.expect("identity");

    let r = client.txn(put()).await;

    assert!(matches!(&r, Ok(t) if t.revision == 8), "{r:?}");
    assert_eq!(
        lost.txns(),
        1,
        "not asked again while another member answers"
    );
    assert_eq!(leader.txns(), 1);
}

#[tokio::test]
async fn a_write_that_gets_no_answer_is_indeterminate_and_never_resent() {
    let c = certs();
    let a = Member::start(&c.tls, |_, _| Reply::Stall);
    let b = Member::start(&c.tls, |_, _| Reply::Stall);
    let client = client(&[&a.addr, &b.addr], &c.tls);

    let r = client.txn(put()).await;

    assert!(matches!(r, Err(Error::Indeterminate(_))), "{r:?}");
    settle("the write reached a member", || a.txns() + b.txns() >= 1).await;
    assert_eq!(
        a.txns() + b.txns(),
        1,
        "a write that may have arrived is never resent"
    );
}

#[tokio::test]
async fn a_write_answered_indeterminate_is_not_resent() {
    let c = certs();
    let script = |req: &Request, _| match req {
        Request::Txn(_) => refused(ApiError::Indeterminate("leadership lost".into())),
        other => unscripted(other),
    };
    let a = Member::start(&c.tls, script);
    let b = Member::start(&c.tls, script);
    let client = client(&[&a.addr, &b.addr], &c.tls);

    let r = client.txn(put()).await;

    assert!(matches!(r, Err(Error::Indeterminate(_))), "{r:?}");
    assert_eq!(a.txns() + b.txns(), 1);
}

#[tokio::test]
async fn a_write_whose_first_endpoint_cannot_be_reached_goes_to_the_next() {
    let c = certs();
    let live = Member::start(&c.tls, |req, _| match req {
        Request::Txn(_) => Reply::Now(applied(9)),
        other => unscripted(other),
    });
    let dead = nothing_listening();
    let client = client(&[&dead, &live.addr], &c.tls);

    let r = client.txn(put()).await;

    assert!(matches!(&r, Ok(t) if t.revision == 9), "{r:?}");
    assert_eq!(live.txns(), 1);
}

#[tokio::test]
async fn a_write_to_an_unreachable_named_leader_is_certainly_not_sent_and_goes_elsewhere() {
    let c = certs();
    let leader = Member::start(&c.tls, |req, _| match req {
        Request::Txn(_) => Reply::Now(applied(10)),
        other => unscripted(other),
    });
    let (dead, live) = (nothing_listening(), leader.info());
    // First names a leader that has just died, then the new one.
    let follower = Member::start(&c.tls, move |req, seen| match req {
        Request::Txn(_) if seen == 0 => refused(ApiError::NotLeader {
            leader: Some(MemberInfo {
                addr: dead.clone(),
                ..live.clone()
            }),
        }),
        Request::Txn(_) => refused(ApiError::NotLeader {
            leader: Some(live.clone()),
        }),
        other => unscripted(other),
    });
    // The follower alone is configured, so nothing but the rule can send the write on. QUIC
    // ignores the ICMP refusal: the dial to the dead leader lasts the whole connect timeout,
    // which leaves a second of the request deadline for the rest.
    let client = client(&[&follower.addr], &c.tls);

    let r = client.txn(put()).await;

    assert!(matches!(&r, Ok(t) if t.revision == 10), "{r:?}");
    assert_eq!(
        follower.txns(),
        2,
        "asked again once the named leader could not be dialled"
    );
    assert_eq!(leader.txns(), 1);
}

#[tokio::test]
async fn a_read_whose_member_stalls_is_retried_on_another_member() {
    for consistency in [Consistency::Linearizable, Consistency::Serializable] {
        let c = certs();
        let stalled = Member::start(&c.tls, |req, _| match req {
            Request::Get { .. } => Reply::Stall,
            other => unscripted(other),
        });
        let healthy = Member::start(&c.tls, |req, _| match req {
            Request::Get { .. } => Reply::Now(found()),
            other => unscripted(other),
        });
        let client = client(&[&stalled.addr, &healthy.addr], &c.tls);
        // Connected to the stalling member only, so the read goes there first.
        client.identity(&stalled.addr).await.expect("identity");

        let r = client.get_with(&key(), consistency).await;

        assert!(matches!(&r, Ok((Some(_), 5))), "{consistency:?}: {r:?}");
        assert_eq!(stalled.gets(), 1, "{consistency:?}: not asked twice");
        assert_eq!(healthy.gets(), 1, "{consistency:?}");
    }
}

#[tokio::test]
async fn unavailable_answers_are_retried_until_the_deadline() {
    let c = certs();
    let script = |req: &Request, _| match req {
        Request::Txn(_) => refused(ApiError::Unavailable("no quorum".into())),
        other => unscripted(other),
    };
    let a = Member::start(&c.tls, script);
    let b = Member::start(&c.tls, script);
    let client = client(&[&a.addr, &b.addr], &c.tls);

    let r = client.txn(put()).await;

    // Unavailable means nothing was applied, so even a write is resent, to every member.
    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
    assert!(
        a.txns() >= 2 && b.txns() >= 2,
        "{} and {}",
        a.txns(),
        b.txns()
    );
}

#[tokio::test]
async fn a_write_sent_just_before_the_deadline_is_given_its_whole_attempt() {
    // Every answer is Unavailable (nothing applied) and takes 100 ms. The request deadline
    // of 400 ms falls during an attempt started with little time left; the cluster still
    // answers within that attempt's 300 ms, so the caller must hear Unavailable, not an
    // unknown outcome for a write that was refused every time.
    let c = certs();
    let slow = Member::start(&c.tls, |req, _| match req {
        Request::Txn(_) => Reply::After(
            Duration::from_millis(100),
            Response::Error(ApiError::Unavailable("no quorum".into())),
        ),
        other => unscripted(other),
    });
    let mut cfg = ClientConfig::new(vec![slow.addr.clone()], c.tls.clone());
    cfg.attempt_timeout = ATTEMPT;
    cfg.request_timeout = Duration::from_millis(400);
    cfg.connect_timeout = CONNECT;
    let client = Client::new(cfg).expect("client");

    let r = client.txn(put()).await;

    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
    assert!(slow.txns() >= 2, "retried: {}", slow.txns());
}

#[tokio::test]
async fn a_read_answered_by_a_follower_does_not_make_it_the_leader() {
    let c = certs();
    let leader = Member::start(&c.tls, |req, _| match req {
        Request::Txn(_) => Reply::Now(applied(11)),
        Request::Get { .. } => Reply::Now(found()),
        other => unscripted(other),
    });
    let hint = leader.info();
    let follower = Member::start(&c.tls, move |req, _| match req {
        Request::Get { .. } => Reply::Now(found()),
        Request::Txn(_) => refused(ApiError::NotLeader {
            leader: Some(hint.clone()),
        }),
        other => unscripted(other),
    });
    let client = client(&[&follower.addr, &leader.addr], &c.tls);
    // Both connected, so with no leader known the client takes the endpoints in turn:
    // the read goes to the follower, the write after it to the leader.
    client.identity(&follower.addr).await.expect("identity");
    client.identity(&leader.addr).await.expect("identity");

    let read = client.get(&key()).await;
    assert!(matches!(&read, Ok(Some(_))), "{read:?}");
    assert_eq!(follower.gets(), 1);

    let first = client.txn(put()).await;
    assert!(matches!(&first, Ok(t) if t.revision == 11), "{first:?}");
    assert_eq!(
        follower.txns(),
        0,
        "the follower's read answer was taken as leadership"
    );
    assert_eq!(leader.txns(), 1);

    // A write answer does come only from the leader: the next write goes straight there,
    // although the turn would now be the follower's.
    let second = client.txn(put()).await;
    assert!(second.is_ok(), "{second:?}");
    assert_eq!(follower.txns(), 0);
    assert_eq!(leader.txns(), 2);
}

#[tokio::test]
async fn a_dead_first_endpoint_does_not_cost_a_fresh_client_its_connect_timeout() {
    let c = certs();
    let live = Member::start(&c.tls, |req, _| match req {
        Request::Txn(_) => Reply::Now(applied(12)),
        other => unscripted(other),
    });
    // Bound and silent: a handshake to it hangs until the connect timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    let dead = silent.local_addr().expect("bound").to_string();
    let client = client(&[&dead, &live.addr], &c.tls);

    let started = Instant::now();
    let r = client.txn(put()).await;
    let took = started.elapsed();

    assert!(matches!(&r, Ok(t) if t.revision == 12), "{r:?}");
    assert_eq!(live.txns(), 1);
    assert!(
        took < CONNECT / 2,
        "took {took:?} with a {CONNECT:?} connect timeout"
    );
}
