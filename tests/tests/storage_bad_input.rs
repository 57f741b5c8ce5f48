//! Bad input to storage nodes: malformed and oversized requests, unknown shards, stale
//! epochs, a certificate asking for what its role may not, and forged replication frames
//! sent with a primary's own certificate and fence. Each gets a typed answer, and the
//! node's log, commit and data stay exactly as they were.

use augur_client::{DataClient, TlsFiles, Transport};
use augur_proto::data::{
    DataError, DataRequest, DataResponse, Effect, Fence, LogEntry, ReplicaAck, ReplicaStatus,
    ReplicateFrame, WriteOutcome,
};
use augur_proto::frame::{read_frame, write_frame};
use augur_tests::storage::{nodes, shards};
use augur_tests::{poll, LocalCluster};
use std::time::Duration;

/// 3 members and 3 storage nodes, 8 shards at rf 3.
async fn cluster() -> anyhow::Result<LocalCluster> {
    LocalCluster::start_with(3, &["--storage", "3", "--shards", "8", "--rf", "3"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_to_a_storage_node_get_typed_errors_and_change_nothing() -> anyhow::Result<()>
{
    let c = cluster().await?;
    let data = DataClient::new(c.new_client()?).await?;
    data.put("stays", b"same".to_vec()).await?;
    let shard = data.shard_of(b"stays");
    let record = shards(&c.client).await?[&shard].clone();
    let node = nodes(&c.client).await?[&record.replicas[0]].clone();
    let addr = node.addrs[0].clone();
    let files = c.cluster_file()?;
    let raw = Transport::client(&files.tls, Duration::from_secs(2))?
        .for_servers(augur_transport::STORAGE_SERVER_NAME);
    let call = |req: DataRequest| {
        let raw = raw.clone();
        let addr = addr.clone();
        async move {
            raw.call_as::<_, DataResponse>(&addr, &req, Duration::from_secs(5))
                .await
        }
    };
    let id = data.next_request_id();
    // A key of another shard: stored under this one it would break this shard's scans.
    let foreign = (0..)
        .map(|i| format!("foreign-{i}").into_bytes())
        .find(|k| data.shard_of(k) != shard)
        .expect("a key of another shard");
    type Expect = fn(&DataError) -> bool;
    let cases: Vec<(DataRequest, Expect)> = vec![
        (
            DataRequest::Write {
                shard,
                epoch: record.epoch,
                id,
                op: augur_proto::data::WriteOp::Put {
                    key: foreign.clone(),
                    value: b"misrouted".to_vec(),
                },
            },
            |e| matches!(e, DataError::InvalidArgument(_)),
        ),
        (
            DataRequest::Get {
                shard,
                epoch: record.epoch,
                key: foreign.clone(),
            },
            |e| matches!(e, DataError::InvalidArgument(_)),
        ),
        (
            DataRequest::Write {
                shard,
                epoch: record.epoch,
                id,
                op: augur_proto::data::WriteOp::Put {
                    key: b"stays".to_vec(),
                    value: vec![0; augur_proto::data::MAX_VALUE + 1],
                },
            },
            |e| matches!(e, DataError::InvalidArgument(_)),
        ),
        (
            DataRequest::Get {
                shard,
                epoch: record.epoch,
                key: Vec::new(),
            },
            |e| matches!(e, DataError::InvalidArgument(_)),
        ),
        (
            DataRequest::Get {
                shard: augur_proto::ShardId(9999),
                epoch: 1,
                key: b"x".to_vec(),
            },
            |e| matches!(e, DataError::UnknownShard(_)),
        ),
        (
            DataRequest::Write {
                shard,
                epoch: record.epoch.saturating_sub(1),
                id,
                op: augur_proto::data::WriteOp::Put {
                    key: b"stays".to_vec(),
                    value: b"changed".to_vec(),
                },
            },
            |e| matches!(e, DataError::StaleEpoch { .. }),
        ),
        (
            DataRequest::Scan {
                shard,
                epoch: record.epoch,
                prefix: Vec::new(),
                start_after: None,
                limit: 0,
            },
            |e| matches!(e, DataError::InvalidArgument(_)),
        ),
        // Replication is not for an operator's certificate.
        (
            DataRequest::Replicate(augur_proto::data::Fence {
                shard,
                epoch: record.epoch,
                from: record.replicas[0],
                from_incarnation: 1,
                to: record.replicas[0],
            }),
            |e| matches!(e, DataError::PermissionDenied(_)),
        ),
    ];
    for (req, expected) in cases {
        let what = format!("{req:?}").chars().take(80).collect::<String>();
        match call(req).await? {
            DataResponse::Error(e) if expected(&e) => {}
            other => panic!("{what}: unexpected answer {other:?}"),
        }
    }
    // A frame that does not decode.
    let conn = raw.connection(&addr).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await?;
    send.finish()?;
    let resp: Option<DataResponse> = augur_proto::frame::read_frame(&mut recv, 1 << 20).await?;
    assert!(matches!(
        resp,
        Some(DataResponse::Error(DataError::InvalidArgument(_)))
    ));
    // Nothing changed.
    let v = data.get(b"stays").await?.expect("still there");
    assert_eq!(v.value, b"same");
    assert_eq!(data.get(&foreign).await?, None);
    let page = data.scan_shard(shard, b"", None, 1000).await?;
    assert_eq!(
        page.items
            .iter()
            .map(|(k, _)| k.as_slice())
            .collect::<Vec<_>>(),
        vec![b"stays".as_slice()]
    );
    Ok(())
}

/// What a test sends on a forged replication stream after its request.
enum Forged {
    Frame(ReplicateFrame),
    Bytes(Vec<u8>),
}

/// Opens a replication stream to `addr` under `fence` (on `raw`, which holds the sender's
/// own storage certificate), sends `what`, and returns the first answer.
async fn forge_stream(
    raw: &Transport,
    addr: &str,
    fence: Fence,
    what: Forged,
) -> anyhow::Result<Option<ReplicaAck>> {
    let conn = raw.connection(addr).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &DataRequest::Replicate(fence), 1 << 20).await?;
    // A node that refuses the opening request answers and stops reading at once, so what
    // follows may meet a stopped stream: only the answer matters.
    let _ = match what {
        Forged::Frame(f) => write_frame(&mut send, &f, 1 << 20).await.is_ok(),
        Forged::Bytes(b) => send.write_all(&b).await.is_ok(),
    };
    let _ = send.finish();
    let ack =
        tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv, 1 << 20)).await??;
    Ok(ack)
}

/// A log entry that puts `value` under `key` at `seq`.
fn forged_entry(seq: u64, epoch: u64, value: &[u8]) -> LogEntry {
    LogEntry {
        seq,
        epoch,
        request: None,
        op_digest: 0,
        effect: Effect::Put {
            key: b"frames".to_vec(),
            value: value.to_vec(),
        },
        outcome: WriteOutcome::Applied { version: seq },
        at_ms: 0,
    }
}

/// The replica of `shard` that `node` reports.
async fn replica_status(
    raw: &Transport,
    node: &augur_proto::Node,
    shard: augur_proto::ShardId,
) -> anyhow::Result<ReplicaStatus> {
    augur_tests::storage::probe(raw, node)
        .await?
        .replicas
        .into_iter()
        .find(|r| r.shard == shard)
        .ok_or_else(|| anyhow::anyhow!("node {} reports no replica of shard {shard}", node.id))
}

/// A replication stream is only as trustworthy as its frames: even with the primary's own
/// certificate and fence, frames whose entries skip or wrap a sequence, rewrite a committed
/// entry, name another epoch or incarnation, or do not decode are refused with a typed
/// answer, and the secondary's log, commit and data stay exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_replication_frames_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let c = cluster().await?;
    let data = DataClient::new(c.new_client()?).await?;
    for i in 0..5 {
        data.put("frames", format!("v{i}").into_bytes()).await?;
    }
    let shard = data.shard_of(b"frames");
    let record = shards(&c.client).await?[&shard].clone();
    let registry = nodes(&c.client).await?;
    let (primary, secondary) = (record.replicas[0], record.replicas[1]);
    let target = registry[&secondary].clone();
    let addr = target.addrs[0].clone();
    let operator = augur_tests::storage::storage_transport(&c)?;
    // Everything written is committed on the secondary (the primary's commit notice follows
    // its last write within 10 ms).
    let before = poll(
        Duration::from_secs(20),
        "the secondary's commit",
        || async {
            let st = replica_status(&operator, &target, shard).await?;
            Ok(
                (st.committed >= st.prepared && st.applied == st.committed && st.prepared >= 5)
                    .then_some(st),
            )
        },
    )
    .await?;
    let certs = c.dir().join("certs");
    let as_primary = Transport::client(
        &TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join(format!("storage-{}.pem", primary.0)),
            key: certs.join(format!("storage-{}.key", primary.0)),
        },
        Duration::from_secs(2),
    )?
    .for_servers(augur_transport::STORAGE_SERVER_NAME);
    let fence = Fence {
        shard,
        epoch: record.epoch,
        from: primary,
        from_incarnation: registry[&primary].incarnation,
        to: secondary,
    };
    let (last, epoch) = (before.prepared, record.epoch);
    let frame = |prev: (u64, u64), entries: Vec<LogEntry>| {
        Forged::Frame(ReplicateFrame {
            prev,
            entries,
            committed: last + 2,
        })
    };
    type Expect = fn(&ReplicaAck) -> bool;
    let invalid: Expect = |a| matches!(a, ReplicaAck::Refused(DataError::InvalidArgument(_)));
    let cases: Vec<(&str, Fence, Forged, Expect)> = vec![
        (
            "a gap after prev",
            fence,
            frame(
                (last, epoch),
                vec![
                    forged_entry(last + 1, epoch, b"a"),
                    forged_entry(last + 3, epoch, b"b"),
                ],
            ),
            invalid,
        ),
        (
            "entries before prev",
            fence,
            frame((last, epoch), vec![forged_entry(last, epoch, b"c")]),
            invalid,
        ),
        (
            "a sequence past the last",
            fence,
            frame(
                (u64::MAX - 1, epoch),
                vec![forged_entry(u64::MAX, epoch, b"d")],
            ),
            invalid,
        ),
        (
            "prev at the last sequence",
            fence,
            frame((u64::MAX, epoch), vec![forged_entry(0, epoch, b"e")]),
            invalid,
        ),
        (
            "a committed entry rewritten",
            fence,
            frame((0, 0), vec![forged_entry(1, epoch + 7, b"f")]),
            |a| matches!(a, ReplicaAck::Refused(DataError::Internal(m)) if m.contains("committed")),
        ),
        (
            "a newer epoch than the secondary's",
            Fence {
                epoch: epoch + 1,
                ..fence
            },
            frame(
                (last, epoch + 1),
                vec![forged_entry(last + 1, epoch + 1, b"g")],
            ),
            |a| matches!(a, ReplicaAck::Refused(DataError::Behind { .. })),
        ),
        (
            "another incarnation of the primary",
            Fence {
                from_incarnation: fence.from_incarnation ^ 1,
                ..fence
            },
            frame((last, epoch), vec![forged_entry(last + 1, epoch, b"h")]),
            |a| matches!(a, ReplicaAck::Refused(DataError::Fenced(_))),
        ),
        (
            "a frame that does not decode",
            fence,
            Forged::Bytes(vec![0, 0, 0, 3, 0xff, 0xff, 0xff]),
            invalid,
        ),
    ];
    for (what, fence, forged, expected) in cases {
        match forge_stream(&as_primary, &addr, fence, forged).await? {
            Some(ack) if expected(&ack) => {}
            other => panic!("{what}: unexpected answer {other:?}"),
        }
    }
    let after = replica_status(&operator, &target, shard).await?;
    assert_eq!(
        (
            after.epoch,
            after.role,
            after.prepared,
            after.committed,
            after.applied
        ),
        (
            before.epoch,
            before.role,
            before.prepared,
            before.committed,
            before.applied
        ),
        "the secondary's log moved"
    );
    assert_eq!(shards(&c.client).await?[&shard].epoch, record.epoch);
    // The shard still replicates, and every replica holds the same content.
    data.put("frames", b"after".to_vec()).await?;
    let crcs = augur_tests::storage::replica_checksums(&c, &c.client, shard).await?;
    assert_eq!(crcs.len(), 3, "{crcs:?}");
    assert!(
        crcs.windows(2)
            .all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2)),
        "{crcs:?}"
    );
    assert_eq!(
        data.get(b"frames").await?.map(|v| v.value),
        Some(b"after".to_vec())
    );
    Ok(())
}
