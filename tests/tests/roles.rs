//! Certificate roles: each role gets what it needs and every refusal is typed and changes
//! nothing. Raft messages must also be addressed to the right cluster and incarnation.

use augur_client::transport::{client_config, SERVER_NAME};
use augur_client::{Client, ClientConfig, TlsFiles};
use augur_proto::wire::{ApiError, RaftEnvelope, RaftRpcKind};
use augur_proto::{
    ClusterId, Key, MemberId, Node, NodeId, NodeState, Op, Record, Request, Response, Risk,
    Setting, Txn,
};
use augur_tests::{augur, LocalCluster};
use std::time::Duration;

fn node_record(id: u64) -> Record {
    Record::Node(Node {
        id: NodeId(id),
        incarnation: 1,
        addrs: vec!["127.0.0.1:9".into()],
        admin: String::new(),
        rack: "r1".into(),
        zone: "z1".into(),
        capacity_bytes: 1 << 30,
        used_bytes: 0,
        state: NodeState::Up,
        state_since_ms: 0,
        risk: Risk::default(),
        epoch: 1,
        last_heartbeat_ms: 0,
        version: 0,
        cordoned: false,
        drain_when_back: None,
        undrain_when_back: None,
        cause: Default::default(),
    })
}

fn put(record: Record) -> Txn {
    Txn {
        compares: vec![],
        ops: vec![Op::Put(record)],
    }
}

fn setting() -> Record {
    Record::Setting(Setting {
        name: "roles".into(),
        value: b"x".to_vec(),
        version: 0,
    })
}

/// Issues a certificate with `augur cert KIND` into the cluster's certs directory.
fn issue(
    cluster: &LocalCluster,
    kind: &str,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<TlsFiles> {
    let certs = cluster.dir().join("certs");
    let c = certs.to_string_lossy().into_owned();
    let mut args = vec!["cert", kind, "--ca-dir", &c, "--name", name, "--out", &c];
    args.extend_from_slice(extra);
    augur(&args)?;
    Ok(TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{name}.pem")),
        key: certs.join(format!("{name}.key")),
    })
}

fn client_with(cluster: &LocalCluster, tls: TlsFiles) -> anyhow::Result<Client> {
    let endpoints = cluster.cluster_file()?.endpoints;
    Ok(Client::new(ClientConfig::new(endpoints, tls))?)
}

fn denied<T: std::fmt::Debug>(r: Result<T, augur_client::Error>) -> bool {
    matches!(
        r,
        Err(augur_client::Error::Api(ApiError::PermissionDenied(_)))
    )
}

/// Sends one raw request to member `id` with the certificate in `tls`; returns the answer.
async fn raw(
    cluster: &LocalCluster,
    id: u64,
    tls: &TlsFiles,
    req: &Request,
) -> anyhow::Result<Option<Response>> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(client_config(tls, Duration::from_secs(5))?);
    let conn = ep
        .connect(cluster.endpoint(id)?.parse()?, SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&augur_proto::frame::encode(req, 1 << 20)?)
        .await?;
    send.finish()?;
    let resp = augur_proto::frame::read_frame::<_, Response>(&mut recv, 1 << 20)
        .await
        .ok()
        .flatten();
    conn.close(0u32.into(), b"");
    Ok(resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_is_held_to_its_permissions() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let operator = cluster.client.clone();
    let app = client_with(&cluster, issue(&cluster, "client", "app", &[])?)?;
    let storage = client_with(
        &cluster,
        issue(&cluster, "storage", "storage-5", &["--node-id", "5"])?,
    )?;
    let before = operator.status(None).await?.applied;

    // A client reads, and nothing else.
    assert!(app.get(&Key::Setting("roles".into())).await?.is_none());
    assert!(
        denied(app.txn(put(setting())).await),
        "client wrote metadata"
    );
    assert!(
        denied(app.add_learner(MemberId(9), "127.0.0.1:1".into()).await),
        "client changed the membership"
    );
    assert!(denied(app.transfer_leader(MemberId(1)).await));

    // A storage node writes its own node record only.
    assert!(storage.txn(put(node_record(5))).await?.succeeded);
    assert!(
        denied(storage.txn(put(node_record(6))).await),
        "wrote another node's record"
    );
    assert!(
        denied(storage.txn(put(setting())).await),
        "storage node wrote a setting"
    );
    assert!(denied(storage.remove_member(MemberId(3)).await));
    assert!(storage.get(&Key::Node(NodeId(5))).await?.is_some());

    // Only the storage node's own write went through.
    let after = operator.status(None).await?;
    assert!(operator.get(&Key::Node(NodeId(6))).await?.is_none());
    assert!(operator.get(&Key::Setting("roles".into())).await?.is_none());
    assert_eq!(after.members.len(), 3);
    assert!(after.applied > before);

    // An operator may do all of it.
    assert!(operator.txn(put(setting())).await?.succeeded);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_messages_must_be_addressed_to_this_cluster_and_incarnation() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let status = cluster.status(1).await?;
    let inc = |id: u64| {
        status
            .members
            .iter()
            .find(|m| m.id.0 == id)
            .map(|m| m.incarnation)
            .unwrap_or(0)
    };
    let good = RaftEnvelope {
        cluster: status.cluster.expect("member 1 belongs to a cluster"),
        from: MemberId(2),
        from_incarnation: inc(2),
        to: MemberId(1),
        to_incarnation: inc(1),
        membership_index: 0,
    };
    let certs = cluster.dir().join("certs");
    let member = TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join("meta-2.pem"),
        key: certs.join("meta-2.key"),
    };
    let wrong = [
        RaftEnvelope {
            to_incarnation: inc(1) ^ 1,
            ..good
        },
        RaftEnvelope {
            cluster: ClusterId(good.cluster.0 ^ 1),
            ..good
        },
        RaftEnvelope {
            from_incarnation: inc(2) ^ 1,
            ..good
        },
        RaftEnvelope {
            from: MemberId(9),
            ..good
        },
        RaftEnvelope {
            to: MemberId(2),
            ..good
        },
    ];
    let term = status.term;
    for envelope in wrong {
        // A pre-vote from a higher term: were it accepted, it could disturb the leader.
        let req = Request::Raft {
            kind: RaftRpcKind::PreVote,
            envelope,
            payload: vec![0],
        };
        match raw(&cluster, 1, &member, &req).await? {
            Some(Response::Error(ApiError::WrongIdentity(_))) => {}
            other => panic!("{envelope:?}: expected WrongIdentity, got {other:?}"),
        }
    }
    // The well-addressed envelope gets past the check (its payload is junk, so it is refused
    // as such, not for who sent it).
    let req = Request::Raft {
        kind: RaftRpcKind::PreVote,
        envelope: good,
        payload: vec![0],
    };
    assert!(matches!(
        raw(&cluster, 1, &member, &req).await?,
        Some(Response::Error(ApiError::InvalidArgument(_)))
    ));
    let after = cluster.status(1).await?;
    assert_eq!(after.term, term, "a refused message moved the term");
    assert_eq!(after.members, status.members);
    Ok(())
}
