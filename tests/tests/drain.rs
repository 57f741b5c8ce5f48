//! Draining a storage node with real processes while clients write and read: its primaries
//! are handed off, each of its replicas is replaced by a verified copy elsewhere, and the
//! node ends up empty, with no failed or `Indeterminate` client request, nothing
//! acknowledged lost, and every shard at its replication factor at every sample. Crashed
//! after that and declared Down, it comes back still drained, and deletes the copies it no
//! longer holds. At rf 1, where the drained
//! node holds the only copy of its shards, each copy joins beside its source, takes the
//! primary role and the source leaves.

use augur_client::DataClient;
use augur_proto::{Migration, MigrationState, NodeId, NodeState, StateOrigin};
use augur_tests::moves::{augurctl, drain, drain_moves, emptied, Workload};
use augur_tests::storage::{busiest_primary, nodes, probe, shards, storage_transport};
use augur_tests::{poll, LocalCluster};
use std::time::Duration;

const RF: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_is_emptied_with_no_failed_request_and_every_shard_at_rf(
) -> anyhow::Result<()> {
    let c = LocalCluster::start_with(3, &["--storage", "4", "--shards", "8", "--rf", "3"]).await?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;
    let load = Workload::start(&data, c.new_client()?, "drain", 3, 2, RF);
    poll(Duration::from_secs(60), "writes under way", || async {
        Ok((load.writes_ok() > 200).then_some(()))
    })
    .await?;

    // Drain the node holding the most replicas (primaries among them, so hand-offs are
    // exercised too).
    let before = shards(&client).await?;
    let count = |n: NodeId, primary: bool| {
        before
            .values()
            .filter(|s| {
                if primary {
                    s.replicas.first() == Some(&n)
                } else {
                    s.replicas.contains(&n)
                }
            })
            .count()
    };
    let victim = nodes(&client)
        .await?
        .keys()
        .copied()
        .max_by_key(|n| (count(*n, false), count(*n, true)))
        .expect("storage nodes");
    let held = count(victim, false);
    let led = count(victim, true);
    assert!(led > 0, "node {victim} leads no shard: {before:?}");
    assert!(held > 0);
    drain(&c, &client, victim).await?;
    emptied(&client, victim, Duration::from_secs(240)).await?;
    // Keep the workload going a little after the last move.
    load.more_writes(50, Duration::from_secs(30)).await?;
    let done = load.finish().await?;
    // The sampler must have seen the drain, not a set number of samples: a drain of this
    // size now takes about a second.
    done.assert_clean(3);
    let (l, samples) = (&done.ledger, done.samples);

    // One committed move per replica the node held, each replacing it.
    let moves = drain_moves(&client, victim).await?;
    let committed = moves
        .iter()
        .filter(|m| m.state == MigrationState::Committed)
        .count();
    assert_eq!(committed, held, "{moves:?}");
    assert!(moves
        .iter()
        .all(|m| matches!(m.state, MigrationState::Committed | MigrationState::Aborted)));

    // Every acknowledged write reads back.
    done.assert_acked_readable(&data).await?;

    // `augurctl migrations` shows the moves.
    let out = augurctl(&c, &["--json", "migrations", "--all"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let listed = v["migrations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|m| m["kind"] == "drain" && m["state"] == "committed")
                .count()
        })
        .unwrap_or(0);
    assert_eq!(listed, held, "{v}");

    // The drained node crashes and is declared Down; when it comes back it is still the
    // operator's drained node, not an empty Up node ready for new replicas.
    c.kill_storage(victim.0)?;
    poll(
        Duration::from_secs(60),
        "the drained node declared Down",
        || async {
            let n = nodes(&client).await?[&victim].clone();
            Ok((n.state == NodeState::Down).then_some(n))
        },
    )
    .await?;
    // It was killed within its stray grace (60 s by default), so the copies it no longer
    // holds are still on its disk; restarted with a short grace it must delete them all.
    let config = c.dir().join(format!("storage-{}/config.toml", victim.0));
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str("\n[replication]\nstray_grace_ms = 2000\n");
    std::fs::write(&config, text)?;
    c.start_storage(victim.0)?;
    let back = poll(Duration::from_secs(60), "the drained node back", || async {
        let n = nodes(&client).await?[&victim].clone();
        Ok((n.state != NodeState::Down).then_some(n))
    })
    .await?;
    assert_eq!(
        (back.state, back.cause.origin, back.cause.reason.as_str()),
        (NodeState::Draining, StateOrigin::Operator, "drain test"),
        "{back:?}"
    );
    assert_eq!(back.drain_when_back, None, "{back:?}");
    let raw = storage_transport(&c)?;
    poll(
        Duration::from_secs(60),
        "the restarted node deletes the copies it no longer holds",
        || async {
            let report = probe(&raw, &back).await?;
            Ok(report.replicas.is_empty().then_some(()))
        },
    )
    .await?;
    println!(
        "drained node {victim}: {held} moves, {led} hand-offs; {} writes and {} reads, none \
         failed; {samples} samples of the shard map, all at rf {RF}; back from Down still \
         draining",
        l.writes_ok, l.reads_ok
    );
    Ok(())
}

/// rf 1: the node holds the only replica of its shards, so nothing can take over its
/// primaries until their copies exist. Each copy is verified, joins beside its source, is
/// handed the primary role, and the source leaves the shard; clients see no failure, and no
/// shard is ever without a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_holding_the_only_replicas_at_rf_1_is_emptied_with_no_failed_request(
) -> anyhow::Result<()> {
    let c = LocalCluster::start_with(3, &["--storage", "3", "--shards", "8", "--rf", "1"]).await?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;
    let load = Workload::start_at_least(&data, c.new_client()?, "sole", 3, 2, 1);
    poll(Duration::from_secs(60), "writes under way", || async {
        Ok((load.writes_ok() > 200).then_some(()))
    })
    .await?;
    let before = shards(&client).await?;
    let held_by = |n: NodeId| before.values().filter(|s| s.replicas.contains(&n)).count();
    let victim = nodes(&client)
        .await?
        .keys()
        .copied()
        .max_by_key(|n| held_by(*n))
        .expect("storage nodes");
    let held = held_by(victim);
    assert!(held > 0, "{before:?}");
    drain(&c, &client, victim).await?;
    emptied(&client, victim, Duration::from_secs(240)).await?;
    load.more_writes(50, Duration::from_secs(30)).await?;
    let done = load.finish().await?;
    done.assert_clean(3);
    done.assert_acked_readable(&data).await?;

    // One committed move per replica, and every shard back at one replica, off the node.
    let moves = drain_moves(&client, victim).await?;
    let committed: Vec<&Migration> = moves
        .iter()
        .filter(|m| m.state == MigrationState::Committed)
        .collect();
    assert_eq!(committed.len(), held, "{moves:?}");
    let after = poll(
        Duration::from_secs(30),
        "every shard at one replica",
        || async {
            let all = shards(&client).await?;
            Ok(all.values().all(|s| s.replicas.len() == 1).then_some(all))
        },
    )
    .await?;
    for m in committed {
        assert_eq!(after[&m.shard].replicas, vec![m.to], "{m:?}");
    }
    println!(
        "rf 1: drained node {victim} of {held} sole replicas; {} writes and {} reads, none \
         failed; {} samples of the shard map, none below rf",
        done.ledger.writes_ok, done.ledger.reads_ok, done.samples
    );
    Ok(())
}

/// A destination killed while it copies: the move aborts (the learner leaves the shard) and
/// is retried on another node, and the drain completes with every value intact. Copies are
/// throttled to 64 KiB/s per node, in 16 KiB chunks, so the kill lands mid-copy, after the
/// copy's progress has shown in its migration record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_killed_mid_copy_is_replaced_by_another() -> anyhow::Result<()> {
    let c = LocalCluster::start_with(3, &["--storage", "5", "--shards", "4", "--rf", "3"]).await?;
    c.restart_with_copy(65_536, Some(16 * 1024))?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;
    let mut written = Vec::new();
    for i in 0..600 {
        let key = format!("kill-{i:04}");
        let value = vec![(i % 251) as u8; 2048];
        let version = poll(Duration::from_secs(30), "a write", || async {
            Ok(data.put(key.clone(), value.clone()).await.ok())
        })
        .await?;
        written.push((key, value, version));
    }
    let victim = busiest_primary(&client).await?;
    drain(&c, &client, victim).await?;
    // The first move seen part-way through its copy loses its destination. Its record shows
    // the copy advancing (bytes received so far, a rate), not only its end.
    let (shard, killed) = poll(Duration::from_secs(120), "a drain move copying", || async {
        Ok(drain_moves(&client, victim)
            .await?
            .into_iter()
            .find(|m| {
                m.state == MigrationState::Copying && m.bytes_copied > 0 && m.rate_bytes_per_s > 0
            })
            .map(|m| (m.shard, m.to)))
    })
    .await?;
    c.kill_storage(killed.0)?;
    emptied(&client, victim, Duration::from_secs(300)).await?;
    let moves = drain_moves(&client, victim).await?;
    let of_shard: Vec<&Migration> = moves.iter().filter(|m| m.shard == shard).collect();
    assert!(
        of_shard
            .iter()
            .any(|m| m.to == killed && m.state == MigrationState::Aborted),
        "{of_shard:?}"
    );
    let done = of_shard
        .iter()
        .find(|m| m.state == MigrationState::Committed)
        .unwrap_or_else(|| panic!("no committed move of shard {shard}: {of_shard:?}"));
    assert_ne!(done.to, killed);
    assert!(done.attempts >= 2, "{done:?}");
    let record = shards(&client).await?[&shard].clone();
    assert!(record.replicas.contains(&done.to) && !record.learners.contains(&killed));
    for (key, value, version) in &written {
        let got = poll(Duration::from_secs(30), "a final read", || async {
            Ok(data.get(key.as_bytes()).await.ok())
        })
        .await?
        .unwrap_or_else(|| panic!("{key}: acknowledged at version {version}, now absent"));
        assert_eq!(&got.value, value, "{key}");
    }
    Ok(())
}
