//! Balancing with real processes while clients write and read (`control::mover::balance`):
//! leadership returns to a node whose drain was called off, and a storage node added to a
//! running cluster takes its share of replicas and then of primaries, with no failed or
//! `Indeterminate` client request, nothing acknowledged lost, every shard at its replication
//! factor at every sample, and equal checksums on every replica afterwards.

use augur_client::{Client, DataClient};
use augur_proto::{MigrationKind, MigrationState, NodeId, Shard, ShardId};
use augur_tests::moves::{augurctl, drain, migrations, replicas_held, Workload};
use augur_tests::storage::{busiest_primary, nodes, replica_checksums, shards};
use augur_tests::{augur, poll, LocalCluster};
use std::collections::BTreeMap;
use std::time::Duration;

const RF: usize = 3;

/// How many shards `n` leads.
fn led(all: &BTreeMap<ShardId, Shard>, n: NodeId) -> usize {
    all.values()
        .filter(|s| s.replicas.first() == Some(&n))
        .count()
}

/// Polls until no hand-off would help: for every shard, its primary leads fewer than two
/// shards more than any of its secondaries (what the leader's balancing aims at; nodes that
/// share no shard may differ more). Returns the counts by node.
async fn primaries_settled(client: &Client, timeout: Duration) -> anyhow::Result<Vec<usize>> {
    let ids: Vec<NodeId> = nodes(client).await?.keys().copied().collect();
    poll(timeout, "primaries balanced", || async {
        let all = shards(client).await?;
        let count = |n: &NodeId| led(&all, *n);
        let settled = all.values().all(|s| {
            s.replicas[1..]
                .iter()
                .all(|t| count(&s.replicas[0]) < count(t) + 2)
        });
        Ok(settled.then(|| ids.iter().map(count).collect()))
    })
    .await
}

/// With 3 storage nodes at RF 3 a drain has nowhere to move replicas, so it only hands the
/// node's primaries off; the operator's undrain (a false alarm) leaves the node leading
/// nothing, and the leader's balancing rounds hand primaries back until no node leads two
/// more shards than another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primaries_are_balanced_again_after_an_undrain() -> anyhow::Result<()> {
    let c = LocalCluster::start_with(3, &["--storage", "3", "--shards", "9", "--rf", "3"]).await?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;
    let load = Workload::start(&data, c.new_client()?, "balance", 3, 2, RF);
    poll(Duration::from_secs(60), "writes under way", || async {
        Ok((load.writes_ok() > 100).then_some(()))
    })
    .await?;
    let victim = busiest_primary(&client).await?;
    drain(&c, &client, victim).await?;
    poll(
        Duration::from_secs(60),
        "the drained node's primaries handed off",
        || async { Ok((led(&shards(&client).await?, victim) == 0).then_some(())) },
    )
    .await?;
    augurctl(&c, &["node", "undrain", &victim.0.to_string()])?;
    let spread = primaries_settled(&client, Duration::from_secs(90)).await?;
    assert!(spread.iter().all(|n| *n == 3), "{spread:?}");
    load.more_writes(50, Duration::from_secs(30)).await?;
    let done = load.finish().await?;
    done.assert_clean(3);
    done.assert_acked_readable(&data).await?;
    println!(
        "primaries per node after the undrain: {spread:?}; {} writes and {} reads, none failed",
        done.ledger.writes_ok, done.ledger.reads_ok
    );
    Ok(())
}

/// A fourth storage node joins a cluster of three at RF 3 (every node holding every shard).
/// Local racks are round-robin over three, so the new node shares rack `r1` with node 1, and
/// every shard must keep one replica per rack: balancing moves half of node 1's replicas
/// (8 shards: 4) to the new node, each a verified copy replacing a secondary, and nothing of
/// nodes 2 and 3, whose replicas could only move into a rack the shard already uses. Then
/// the new node gets its share of primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_storage_node_takes_its_share_of_replicas_then_of_primaries() -> anyhow::Result<()> {
    let c = LocalCluster::start_with(3, &["--storage", "3", "--shards", "8", "--rf", "3"]).await?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;
    let load = Workload::start(&data, c.new_client()?, "grow", 3, 2, RF);
    poll(Duration::from_secs(60), "writes under way", || async {
        Ok((load.writes_ok() > 200).then_some(()))
    })
    .await?;
    let dir = c.dir().to_string_lossy().into_owned();
    augur(&[
        "local",
        "up",
        "--dir",
        &dir,
        "--storage",
        "4",
        "--timeout",
        "60",
    ])?;
    let new = NodeId(4);
    let racks: BTreeMap<NodeId, String> = nodes(&client)
        .await?
        .into_iter()
        .map(|(id, n)| (id, n.rack))
        .collect();
    assert_eq!(
        (racks[&NodeId(1)].as_str(), racks[&new].as_str()),
        ("r1", "r1")
    );
    let held = poll(
        Duration::from_secs(180),
        "replicas spread over four nodes",
        || async {
            let held = replicas_held(&client).await?;
            let moving = migrations(&client)
                .await?
                .iter()
                .any(|m| !matches!(m.state, MigrationState::Committed | MigrationState::Aborted));
            let get = |n: u64| held.get(&NodeId(n)).copied().unwrap_or(0);
            let even = (get(1), get(2), get(3), get(4)) == (4, 8, 8, 4);
            Ok((even && !moving).then_some(held))
        },
    )
    .await?;
    for s in shards(&client).await?.values() {
        let mut in_racks: Vec<&str> = s.replicas.iter().map(|n| racks[n].as_str()).collect();
        in_racks.sort();
        assert_eq!(in_racks, vec!["r1", "r2", "r3"], "{s:?}");
    }
    let spread = primaries_settled(&client, Duration::from_secs(90)).await?;
    assert!(led(&shards(&client).await?, new) >= 1, "{spread:?}");
    load.more_writes(50, Duration::from_secs(30)).await?;
    let done = load.finish().await?;
    done.assert_clean(3);
    done.assert_acked_readable(&data).await?;

    // Four committed balancing moves, from node 1 into the new node, and nothing else moved.
    let moves = migrations(&client).await?;
    let committed: Vec<_> = moves
        .iter()
        .filter(|m| m.state == MigrationState::Committed)
        .collect();
    assert_eq!(committed.len(), 4, "{moves:?}");
    assert!(
        committed
            .iter()
            .all(|m| m.kind == MigrationKind::Balance && m.from == NodeId(1) && m.to == new),
        "{moves:?}"
    );
    // Every replica of every shard has the same content.
    for shard in shards(&client).await?.keys() {
        let crcs = replica_checksums(&c, &client, *shard).await?;
        assert_eq!(crcs.len(), RF, "{shard}: {crcs:?}");
        assert!(
            crcs.windows(2)
                .all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2)),
            "{shard}: {crcs:?}"
        );
    }
    println!(
        "replicas per node after the join: {held:?}; primaries {spread:?}; {} writes and {} \
         reads, none failed",
        done.ledger.writes_ok, done.ledger.reads_ok
    );
    Ok(())
}
