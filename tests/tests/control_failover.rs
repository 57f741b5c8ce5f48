//! The control plane against real storage nodes: a killed primary's shards get a new primary
//! within lease + grace + a margin, with nothing acknowledged lost; and once the dead node has
//! been Down for `down_delay_ms`, each of its shards gets a new replica, verified by CRC-64,
//! until every shard is back at its replication factor with equal checksums on every replica.
//!
//! One cluster (3 members, 5 storage nodes, 16 shards at rf 3) runs both phases in order,
//! since the second starts where the first leaves off.

use anyhow::{bail, Context};
use augur_client::{Client, ClusterFile, DataClient, Transport};
use augur_proto::data::{DataRequest, DataResponse, NodeReport};
use augur_proto::{Migration, MigrationKind, MigrationState, Node, NodeId, NodeState, Shard};
use augur_tests::{augur, poll, LocalCluster};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// The control settings the members run with: defaults, except a short re-replication delay.
/// Short delays; no balancing moves, so every checkpoint the test reads is the one the
/// re-replication verified (a balancing move would ask the primary for a later one).
const CONTROL: &str =
    "\n[control]\ndown_delay_ms = 3000\nmover_interval_ms = 500\nmax_balance_moves = 0\n";
/// Defaults of `[control]`: a storage node's lease and the grace before it is declared Down.
const LEASE: Duration = Duration::from_millis(6_000);
const GRACE: Duration = Duration::from_millis(8_000);
/// Room for a loaded two-core machine: election of nothing (the metadata quorum is
/// untouched), one liveness tick, the promotion, the new primary's reconciliation, the
/// client's retry.
const MARGIN: Duration = Duration::from_millis(6_000);
const KEYS: usize = 400;

/// Stops every process of the cluster (storage nodes too) when dropped.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let d = self.0.to_string_lossy().into_owned();
        let _ = augur(&["local", "down", "--dir", &d]);
    }
}

async fn shards(client: &Client) -> anyhow::Result<BTreeMap<u64, Shard>> {
    Ok(client
        .list_shards()
        .await?
        .into_iter()
        .map(|(id, s)| (id.0, s))
        .collect())
}

async fn migrations(client: &Client) -> anyhow::Result<Vec<Migration>> {
    Ok(client.list_migrations().await?)
}

async fn probe(transport: &Transport, node: &Node) -> anyhow::Result<NodeReport> {
    let addr = node.addrs.first().context("node without address")?;
    match transport
        .call_as::<_, DataResponse>(addr, &DataRequest::Probe, Duration::from_secs(5))
        .await?
    {
        DataResponse::Probe(r) => Ok(r),
        other => bail!("probe of node {} answered {other:?}", node.id),
    }
}

#[tokio::test]
async fn a_dead_primary_is_replaced_and_its_shards_return_to_rf_with_equal_crcs(
) -> anyhow::Result<()> {
    // Members first, then their control settings, then the data plane.
    let cluster = LocalCluster::start(3).await?;
    let dir = cluster.dir().to_path_buf();
    let _down = Down(&dir);
    let d = dir.to_string_lossy().into_owned();
    augur(&["local", "down", "--dir", &d])?;
    for m in 1..=3 {
        let path = dir.join(format!("meta-{m}")).join("config.toml");
        let mut config = std::fs::read_to_string(&path)?;
        config.push_str(CONTROL);
        std::fs::write(&path, config)?;
    }
    augur(&[
        "local",
        "up",
        "--dir",
        &d,
        "--storage",
        "5",
        "--shards",
        "16",
        "--rf",
        "3",
        "--timeout",
        "120",
    ])?;
    let client = cluster.new_client()?;
    let data = DataClient::new(client.clone()).await?;

    // Acknowledged writes on every shard.
    let mut written = BTreeMap::new();
    for i in 0..KEYS {
        let key = format!("key-{i:04}").into_bytes();
        let value = format!("value-{i}").into_bytes();
        data.put(key.clone(), value.clone()).await?;
        written.insert(key, value);
    }

    // Phase 1: kill the node that is primary of the most shards.
    let before = shards(&client).await?;
    let mut primaries: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
    for s in before.values() {
        primaries.entry(s.replicas[0]).or_default().push(s.id.0);
    }
    let (victim, led) = primaries
        .iter()
        .max_by_key(|(_, v)| v.len())
        .map(|(n, v)| (*n, v.clone()))
        .context("no primaries")?;
    let probe_key = written
        .keys()
        .find(|k| data.shard_of(k).0 == led[0])
        .cloned()
        .context("no key on the victim's first shard")?;
    let killed = Instant::now();
    augur(&[
        "local",
        "kill",
        "--dir",
        &d,
        "--storage",
        &victim.0.to_string(),
    ])?;

    // A write to one of its shards succeeds again, under another primary, within bound.
    let bound = LEASE + GRACE + MARGIN;
    poll(bound, "a new primary taking writes", || {
        let (client, data, key) = (client.clone(), data.clone(), probe_key.clone());
        async move {
            let shard = client.get_shard(data.shard_of(&key)).await?;
            if shard.is_none_or(|s| s.replicas.first() == Some(&victim)) {
                return Ok(None);
            }
            Ok(data.put(key, b"after".to_vec()).await.ok())
        }
    })
    .await?;
    let took = killed.elapsed();
    assert!(took <= bound, "failover took {took:?}");
    eprintln!("node {victim} killed: its shards took writes again after {took:?}");
    written.insert(probe_key, b"after".to_vec());
    // Every other shard it led moves too; the leader promotes them one transaction each, so
    // on a loaded machine the last may follow the first by a moment.
    let after = poll(Duration::from_secs(10), "every shard it led re-led", || {
        let client = client.clone();
        let led = led.clone();
        async move {
            let all = shards(&client).await?;
            let moved = led
                .iter()
                .all(|id| all.get(id).is_some_and(|s| s.replicas[0] != victim));
            Ok(moved.then_some(all))
        }
    })
    .await?;
    eprintln!(
        "all {} shards it led re-led after {:?}",
        led.len(),
        killed.elapsed()
    );
    for id in &led {
        assert!(after[id].epoch > before[id].epoch);
    }
    let nodes = client.list_nodes().await?;
    let dead = nodes
        .iter()
        .find(|n| n.id == victim)
        .context("victim record")?;
    assert_eq!(dead.state, NodeState::Down);

    // Phase 2: after down_delay every shard is back at rf 3, without the dead node.
    let restored = poll(Duration::from_secs(120), "every shard back at rf 3", || {
        let client = client.clone();
        async move {
            let all = shards(&client).await?;
            let moving = migrations(&client)
                .await?
                .iter()
                .any(|m| !matches!(m.state, MigrationState::Committed | MigrationState::Aborted));
            let whole = all.values().all(|s| {
                s.replicas.len() == 3 && s.learners.is_empty() && !s.replicas.contains(&victim)
            });
            Ok((whole && !moving).then_some(all))
        }
    })
    .await?;
    let committed: Vec<Migration> = migrations(&client)
        .await?
        .into_iter()
        .filter(|m| m.state == MigrationState::Committed && m.kind == MigrationKind::Restore)
        .collect();
    assert!(!committed.is_empty(), "no move was committed");

    // Every replica of every re-replicated shard reports the same checksum at the
    // verification checkpoint, and the record holds it.
    let tls = ClusterFile::load(&dir.join("cluster.toml"))?.tls;
    let transport = Transport::client(&tls, Duration::from_secs(2))?
        .for_servers(augur_client::transport::STORAGE_SERVER_NAME);
    let nodes: BTreeMap<NodeId, Node> = client
        .list_nodes()
        .await?
        .into_iter()
        .map(|n| (n.id, n))
        .collect();
    for m in &committed {
        let shard = &restored[&m.shard.0];
        let mut seen = Vec::new();
        for r in &shard.replicas {
            let report = probe(&transport, &nodes[r]).await?;
            let status = report
                .replicas
                .iter()
                .find(|x| x.shard == shard.id)
                .with_context(|| format!("node {r} does not report shard {}", shard.id))?;
            seen.push((*r, status.checkpoint));
        }
        let first = seen[0].1.context("no checkpoint on the primary")?;
        for (node, cp) in &seen {
            let cp = cp.with_context(|| format!("node {node}: no checkpoint"))?;
            assert_eq!(
                (cp.seq, cp.crc64, cp.keys),
                (first.seq, first.crc64, first.keys),
                "shard {}: replicas differ: {seen:?}",
                shard.id
            );
        }
        // The last checkpoint is the one the move verified, so the record holds its CRC.
        assert_eq!(shard.crc64, first.crc64, "shard {} record", shard.id);
    }

    // Nothing acknowledged was lost.
    for (key, value) in &written {
        let got = data.get(key).await?.context("a written key is gone")?;
        assert_eq!(&got.value, value);
    }
    Ok(())
}
