//! Bad input over the wire and in configuration gets a typed error, never a crash, and
//! changes nothing; peers without a cluster certificate are refused.

use augur_client::transport::{client_config, SERVER_NAME};
use augur_client::TlsFiles;
use augur_proto::wire::{ApiError, RaftEnvelope};
use augur_proto::{Request, Response};
use augur_tests::{augur, augur_bin, LocalCluster};
use std::time::Duration;

/// Sends raw bytes on one stream to member 1 as the cluster's client; returns the first frame.
async fn raw_exchange(cluster: &LocalCluster, bytes: &[u8]) -> anyhow::Result<Option<Response>> {
    raw_exchange_as(cluster, &cluster.cluster_file()?.tls, bytes).await
}

/// The same, presenting the certificate in `tls`.
async fn raw_exchange_as(
    cluster: &LocalCluster,
    tls: &TlsFiles,
    bytes: &[u8],
) -> anyhow::Result<Option<Response>> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(client_config(tls, Duration::from_secs(5))?);
    let conn = ep
        .connect(cluster.endpoint(1)?.parse()?, SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    send.finish()?;
    let resp = augur_proto::frame::read_frame::<_, Response>(&mut recv, 1 << 20)
        .await
        .ok()
        .flatten();
    conn.close(0u32.into(), b"");
    Ok(resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_frames_and_strangers_are_refused() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let before = cluster.status(1).await?;
    // Garbage body, unknown message kind, oversized length, a frame cut short by the sender.
    let garbage = [0, 0, 0, 3, 0xff, 0xff, 0xff];
    let unknown_kind = [0, 0, 0, 2, 200, 1];
    let truncated = [0, 0, 0, 9, 1, 2];
    let oversized = [0xff, 0xff, 0xff, 0xff, 0];
    for bytes in [&garbage[..], &unknown_kind, &oversized, &truncated] {
        match raw_exchange(&cluster, bytes).await? {
            Some(Response::Error(ApiError::InvalidArgument(_))) => {}
            other => panic!("{bytes:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    // A well-addressed envelope: from member 2 to member 1, as the membership knows them.
    let incarnation = |id: u64| {
        before
            .members
            .iter()
            .find(|m| m.id.0 == id)
            .map(|m| m.incarnation)
            .unwrap_or(0)
    };
    let envelope = RaftEnvelope {
        cluster: before
            .cluster
            .expect("a bootstrapped member knows its cluster"),
        from: augur_proto::MemberId(2),
        from_incarnation: incarnation(2),
        to: augur_proto::MemberId(1),
        to_incarnation: incarnation(1),
        membership_index: 0,
    };
    // Raft messages from an operator's certificate are refused, whatever they carry.
    let raft = augur_proto::frame::encode(
        &Request::Raft {
            kind: augur_proto::wire::RaftRpcKind::Vote,
            envelope,
            payload: vec![9, 9, 9],
        },
        1 << 20,
    )?;
    assert!(matches!(
        raw_exchange(&cluster, &raft).await?,
        Some(Response::Error(ApiError::PermissionDenied(_)))
    ));

    // A peer (node certificate) whose append stream carries a request that does not decode
    // gets a typed error on that stream, and nothing is appended.
    let certs = cluster.dir().join("certs");
    let peer = TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join("meta-2.pem"),
        key: certs.join("meta-2.key"),
    };
    let mut stream = augur_proto::frame::encode(
        &Request::Raft {
            kind: augur_proto::wire::RaftRpcKind::AppendStream,
            envelope,
            payload: vec![],
        },
        1 << 20,
    )?;
    stream.extend_from_slice(&garbage);
    match raw_exchange_as(&cluster, &peer, &stream).await? {
        Some(Response::Error(ApiError::InvalidArgument(why))) => {
            assert!(why.contains("append stream"), "{why}")
        }
        other => panic!("bad append stream: expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(cluster.status(1).await?.last_log, before.last_log);

    // A client certificate may only read: a request announced larger than any read is
    // refused from its length alone (only the header is sent), before a byte is buffered.
    let c = certs.to_string_lossy().into_owned();
    augur(&[
        "cert", "client", "--ca-dir", &c, "--name", "app", "--out", &c,
    ])?;
    let app = TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join("app.pem"),
        key: certs.join("app.key"),
    };
    let announced = (100 * 1024u32).to_be_bytes();
    match raw_exchange_as(&cluster, &app, &announced).await? {
        Some(Response::Error(ApiError::InvalidArgument(why))) => {
            assert!(why.contains("exceeds the limit of 65536"), "{why}")
        }
        other => panic!("large client request: expected InvalidArgument, got {other:?}"),
    }

    // A client whose certificate comes from another CA cannot connect.
    let other = tempfile::tempdir()?;
    let od = other.path().to_string_lossy().into_owned();
    augur(&["cert", "ca", "--out", &od])?;
    augur(&[
        "cert", "operator", "--ca-dir", &od, "--name", "stranger", "--out", &od,
    ])?;
    let f = cluster.cluster_file()?;
    let stranger = TlsFiles {
        ca: f.tls.ca.clone(),
        cert: other.path().join("stranger.pem"),
        key: other.path().join("stranger.key"),
    };
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(client_config(&stranger, Duration::from_secs(5))?);
    let refused = async {
        let conn = ep
            .connect(cluster.endpoint(1)?.parse()?, SERVER_NAME)?
            .await?;
        let (mut s, mut r) = conn.open_bi().await?;
        s.write_all(&augur_proto::frame::encode(&Request::Status, 1 << 20)?)
            .await?;
        s.finish()?;
        let resp = augur_proto::frame::read_frame::<_, Response>(&mut r, 1 << 20).await?;
        anyhow::Ok(resp)
    };
    if let Ok(Ok(Some(resp))) = tokio::time::timeout(Duration::from_secs(10), refused).await {
        panic!("a stranger got an answer: {resp:?}");
    }

    // Nothing changed and every node still serves.
    let after = cluster.status(1).await?;
    assert_eq!(after.members, before.members);
    for id in 1..=3 {
        cluster.status(id).await?;
    }
    Ok(())
}

#[test]
fn bad_config_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: [(&str, &str); 4] = [
        ("id = 1\nlisten = \"127.0.0.1:1\"\nbogus = 3\n", "bogus"),
        ("id = 0\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n", "id"),
        ("id = 1\nlisten = \"not an address\"\n", "listen"),
        ("id = [\n", "config file"),
    ];
    for (text, mentions) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text)?;
        let out = std::process::Command::new(augur_bin())
            .args(["meta", "--config"])
            .arg(&path)
            .output()?;
        assert!(!out.status.success(), "{text:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(mentions),
            "{text:?}: error does not mention {mentions:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // A bad flag value is a usage error, not a crash.
    let out = std::process::Command::new(augur_bin())
        .args(["meta", "--id", "x"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_endpoints_report_health_metrics_and_status() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let (code, body) = cluster.http_get(1, "/health").await?;
    assert_eq!(code, 200, "{body}");
    let (code, body) = cluster.http_get(1, "/metrics").await?;
    assert_eq!(code, 200);
    for metric in [
        "augur_raft_term",
        "augur_raft_commit_index",
        "augur_raft_applied_index",
        "augur_rocksdb_size_bytes",
        "augur_apply_seconds_bucket",
    ] {
        assert!(body.contains(metric), "/metrics lacks {metric}:\n{body}");
    }
    let (code, body) = cluster.http_get(1, "/v1/status").await?;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["members"].as_array().map(|m| m.len()), Some(3));
    Ok(())
}
