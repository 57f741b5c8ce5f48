//! Storage nodes end to end: real `augur storage` processes replicating shards with PacificA,
//! the metadata quorum as configuration manager, reached through the client's data API.

use augur_client::data::DataClient;
use augur_client::Error;
use augur_proto::data::{DataError, WriteOp, WriteOutcome};
use augur_tests::{poll, LocalCluster};
use std::collections::BTreeMap;
use std::time::Duration;

/// A cluster of 3 members and `storage` storage nodes holding 8 shards at RF 3.
async fn cluster(storage: u64) -> anyhow::Result<LocalCluster> {
    let n = storage.to_string();
    LocalCluster::start_with(3, &["--storage", &n, "--shards", "8", "--rf", "3"]).await
}

/// Every storage node's `/v1/status` JSON, by node id.
async fn storage_status(c: &LocalCluster) -> anyhow::Result<BTreeMap<u64, serde_json::Value>> {
    let nodes = c.client.list_nodes().await?;
    let mut out = BTreeMap::new();
    for n in nodes {
        let addr = n.admin.parse()?;
        let r = augur_client::admin_http::get(addr, "/v1/status", Duration::from_secs(5)).await?;
        out.insert(n.id.0, serde_json::from_str(&r.body)?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_replicate_to_every_replica_and_read_back_from_primaries() -> anyhow::Result<()> {
    let c = cluster(3).await?;
    let data = DataClient::new(c.client.clone()).await?;
    // Keys over every shard.
    let mut versions = BTreeMap::new();
    let mut values = BTreeMap::new();
    for i in 0..200u32 {
        let key = format!("key-{i:03}");
        let value = format!("value-{i}").into_bytes();
        let v = data.put(key.clone(), value.clone()).await?;
        versions.insert(key.clone(), v);
        values.insert(key, value);
    }
    for (key, version) in &versions {
        let got = data.get(key.as_bytes()).await?.expect("written");
        assert_eq!(got.version, *version);
        assert_eq!(&got.value, &values[key]);
    }
    // Compare-and-set on the version read; a stale version loses and changes nothing.
    let (key, version) = versions
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), *v))
        .expect("keys");
    assert_eq!(
        data.cas(
            key.clone(),
            Some(version + 1_000_000),
            Some(b"nope".to_vec())
        )
        .await?,
        WriteOutcome::Conflict {
            current: Some(version)
        }
    );
    let WriteOutcome::Applied { version: v2 } = data
        .cas(key.clone(), Some(version), Some(b"new".to_vec()))
        .await?
    else {
        panic!("a CAS on the current version must apply");
    };
    assert!(v2 > version);
    assert_eq!(
        data.get(key.as_bytes()).await?.map(|v| v.value),
        Some(b"new".to_vec())
    );
    // Create-if-absent, then delete.
    assert!(matches!(
        data.cas("fresh", None, Some(b"1".to_vec())).await?,
        WriteOutcome::Applied { .. }
    ));
    assert!(matches!(
        data.cas("fresh", None, Some(b"2".to_vec())).await?,
        WriteOutcome::Conflict { current: Some(_) }
    ));
    data.delete("fresh").await?;
    assert!(data.get(b"fresh").await?.is_none());
    // A resend under one request id applies once and repeats its answer; the same id with
    // another write is refused and changes nothing.
    let id = data.next_request_id();
    let put = |v: &str| WriteOp::Put {
        key: b"once".to_vec(),
        value: v.as_bytes().to_vec(),
    };
    let first = data.write_as(id, put("a")).await?;
    assert_eq!(data.write_as(id, put("a")).await?, first);
    match data.write_as(id, put("b")).await {
        Err(Error::Data(DataError::InvalidArgument(why))) => {
            assert!(why.contains("already used"), "{why}")
        }
        other => panic!("a request id reused for another write: {other:?}"),
    }
    let WriteOutcome::Applied { version } = first else {
        panic!("a put applies: {first:?}");
    };
    assert_eq!(
        data.get(b"once").await?.map(|v| (v.value, v.version)),
        Some((b"a".to_vec(), version))
    );
    // A prefix scan sees every key once, in order, across shards.
    let mut seen = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = data.scan_prefix(b"key-", after.as_deref(), 37).await?;
        seen.extend(
            page.items
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned()),
        );
        after = page.items.last().map(|(k, _)| k.clone());
        if !page.more {
            break;
        }
    }
    let expected: Vec<String> = versions.keys().cloned().collect();
    assert_eq!(seen, expected);

    // Every replica of every shard applied the same entries: wait until each shard's
    // replicas report the same applied sequence as its primary.
    poll(
        Duration::from_secs(30),
        "replicas to apply everything",
        || async {
            let status = storage_status(&c).await?;
            let mut per_shard: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
            for s in status.values() {
                for r in s["replicas"].as_array().into_iter().flatten() {
                    per_shard
                        .entry(r["shard"].as_u64().unwrap_or(0))
                        .or_default()
                        .push((
                            r["role"].as_str().unwrap_or("").to_string(),
                            r["applied"].as_u64().unwrap_or(0),
                        ));
                }
            }
            let converged = per_shard.len() == 8
                && per_shard.values().all(|rs| {
                    rs.len() == 3
                        && rs.iter().all(|(_, a)| *a == rs[0].1)
                        && rs.iter().filter(|(role, _)| role == "Primary").count() == 1
                });
            Ok(converged.then_some(()))
        },
    )
    .await?;

    // `bench meta` writes shard records 1..=--keys: on a cluster with a data plane it refuses
    // before writing anything, and the shard map is unchanged.
    let before = c.client.list_shards().await?;
    let dir = c.dir().display().to_string();
    let refused = augur_tests::augur(&[
        "bench",
        "meta",
        "--cluster",
        &dir,
        "--mode",
        "cas",
        "--keys",
        "8",
        "--clients",
        "1",
        "--duration",
        "1s",
    ])
    .expect_err("bench meta must refuse a cluster with a data plane");
    assert!(
        refused.to_string().contains("has a data plane"),
        "{refused}"
    );
    assert_eq!(c.client.list_shards().await?, before);
    Ok(())
}

/// More maximal puts at once on one connection to one primary than a connection's request
/// budget holds: the node refuses the excess as busy instead of parking it (parked bodies
/// would fill the connection's flow-control window and wedge every stream on it), and the
/// client retries them. Every put completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_large_puts_at_once_than_a_connection_admits_all_complete() -> anyhow::Result<()> {
    use augur_proto::data::{shard_of, MAX_VALUE};
    let c = cluster(3).await?;
    let cfg = augur_client::data::DataConfig {
        request_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let data = DataClient::with_config(c.client.clone(), cfg).await?;
    // 120 keys of one shard: one primary, one pooled connection.
    let keys: Vec<String> = (0..)
        .map(|i| format!("big-{i}"))
        .filter(|k| shard_of(k.as_bytes(), 8).0 == 1)
        .take(120)
        .collect();
    let puts = keys.iter().map(|k| {
        let data = data.clone();
        let k = k.clone();
        async move { data.put(k, vec![7u8; MAX_VALUE]).await }
    });
    let all = futures::future::join_all(puts);
    let results = tokio::time::timeout(Duration::from_secs(300), all)
        .await
        .map_err(|_| anyhow::anyhow!("puts still waiting after 300 s: a wedged connection"))?;
    for (k, r) in keys.iter().zip(results) {
        r.map_err(|e| anyhow::anyhow!("{k}: {e}"))?;
    }
    let got = data.get(keys[0].as_bytes()).await?.expect("written");
    assert_eq!(got.value.len(), MAX_VALUE);
    Ok(())
}
