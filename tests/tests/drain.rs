//! Draining a storage node with real processes while clients write and read: its primaries
//! are handed off, each of its replicas is replaced by a verified copy elsewhere, and the
//! node ends up empty, with no failed or `Indeterminate` client request, nothing
//! acknowledged lost, and every shard at its replication factor at every sample.

use augur_client::{Client, DataClient, Error};
use augur_proto::{
    Consistency, Migration, MigrationKind, MigrationState, NodeId, NodeState, Record, Table,
};
use augur_tests::storage::{busiest_primary, nodes, shards};
use augur_tests::{augur, augur_bin, poll, LocalCluster};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const RF: usize = 3;

/// What clients were told.
#[derive(Default)]
struct Ledger {
    /// The latest acknowledged write per key: (value, version).
    acked: HashMap<String, (String, u64)>,
    writes_ok: u64,
    reads_ok: u64,
    /// Requests that returned an error (a drain must cause none).
    failed: Vec<String>,
    /// Writes whose outcome was unknown.
    indeterminate: u64,
    /// Reads older than a write acknowledged before they began.
    stale: Vec<String>,
}

async fn writer(data: DataClient, w: usize, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!("drain-{w}-{}", n % 32);
        let value = format!("{w}-{n}-{}", "x".repeat(200));
        let r = data.put(key.clone(), value.clone().into_bytes()).await;
        let mut l = ledger.lock().unwrap();
        match r {
            Ok(version) => {
                l.writes_ok += 1;
                let e = l.acked.entry(key).or_insert((value.clone(), version));
                if version >= e.1 {
                    *e = (value, version);
                }
            }
            Err(Error::Indeterminate(e)) => {
                l.indeterminate += 1;
                l.failed.push(format!("write {key}: indeterminate: {e}"));
            }
            Err(e) => l.failed.push(format!("write {key}: {e}")),
        }
    }
}

async fn reader(data: DataClient, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!("drain-{}-{}", n % 3, n % 32);
        let floor = ledger.lock().unwrap().acked.get(&key).map(|a| a.1);
        let r = data.get(key.as_bytes()).await;
        let mut l = ledger.lock().unwrap();
        match r {
            Ok(got) => {
                l.reads_ok += 1;
                let version = got.map(|v| v.version);
                if let Some(floor) = floor {
                    if version.is_none_or(|v| v < floor) {
                        l.stale
                            .push(format!("{key}: read {version:?} after {floor} was acked"));
                    }
                }
            }
            Err(e) => l.failed.push(format!("read {key}: {e}")),
        }
    }
}

/// Samples the shard map until stopped: every shard whose replica count differs from `RF`,
/// and how many samples were taken.
async fn sampler(client: Client, stop: Arc<AtomicBool>) -> (Vec<String>, usize) {
    let mut bad = Vec::new();
    let mut samples = 0;
    while !stop.load(Ordering::Acquire) {
        if let Ok(all) = shards(&client).await {
            samples += 1;
            for s in all.values() {
                if s.replicas.len() != RF {
                    bad.push(format!("{s:?}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (bad, samples)
}

/// Runs `augurctl --cluster FILE ARGS` against `c`, failing with its output if it fails.
fn augurctl(c: &LocalCluster, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(augur_bin().with_file_name("augurctl"))
        .arg("--cluster")
        .arg(c.dir().join("cluster.toml"))
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "augurctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Drains `node` as an operator does (`augurctl node drain`), and checks its record says so.
async fn drain(c: &LocalCluster, client: &Client, node: NodeId) -> anyhow::Result<()> {
    let id = node.0.to_string();
    augurctl(c, &["node", "drain", &id, "--reason", "drain test"])?;
    let n = nodes(client).await?[&node].clone();
    assert_eq!(n.state, NodeState::Draining, "{n:?}");
    Ok(())
}

/// The drain moves off `node` recorded so far.
async fn drain_moves(client: &Client, node: NodeId) -> anyhow::Result<Vec<Migration>> {
    let (records, _) = client
        .list(Table::Migrations, Consistency::Linearizable)
        .await?;
    Ok(records
        .into_iter()
        .filter_map(|r| match r {
            Record::Migration(m) if m.kind == MigrationKind::Drain && m.from == node => Some(m),
            _ => None,
        })
        .collect())
}

/// Polls until no shard lists `node` as a replica or learner.
async fn emptied(client: &Client, node: NodeId, timeout: Duration) -> anyhow::Result<()> {
    poll(timeout, "the drained node emptied", || async {
        let all = shards(client).await?;
        let left = all
            .values()
            .filter(|s| s.replicas.contains(&node) || s.learners.contains(&node))
            .count();
        Ok((left == 0).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_is_emptied_with_no_failed_request_and_every_shard_at_rf(
) -> anyhow::Result<()> {
    let c = LocalCluster::start_with(3, &["--storage", "4", "--shards", "8", "--rf", "3"]).await?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..3 {
        tasks.push(tokio::spawn(writer(
            data.clone(),
            w,
            ledger.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..2 {
        tasks.push(tokio::spawn(reader(
            data.clone(),
            ledger.clone(),
            stop.clone(),
        )));
    }
    let sampling = tokio::spawn(sampler(c.new_client()?, stop.clone()));
    poll(Duration::from_secs(60), "writes under way", || async {
        Ok((ledger.lock().unwrap().writes_ok > 200).then_some(()))
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
    let after = ledger.lock().unwrap().writes_ok;
    poll(
        Duration::from_secs(30),
        "writes after the drain",
        || async { Ok((ledger.lock().unwrap().writes_ok > after + 50).then_some(())) },
    )
    .await?;
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await?;
    }
    let (bad, samples) = sampling.await?;

    let l = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        l.failed.is_empty(),
        "{} failed requests (of {} writes, {} reads): {:?}",
        l.failed.len(),
        l.writes_ok,
        l.reads_ok,
        &l.failed[..l.failed.len().min(10)]
    );
    assert_eq!(l.indeterminate, 0);
    assert!(l.stale.is_empty(), "{:?}", l.stale);
    assert!(samples > 10, "only {samples} samples of the shard map");
    assert!(
        bad.is_empty(),
        "shards not at rf {RF}: {:?}",
        &bad[..bad.len().min(5)]
    );

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
    for (key, (value, version)) in &l.acked {
        let got = poll(Duration::from_secs(30), "a final read", || async {
            Ok(data.get(key.as_bytes()).await.ok())
        })
        .await?
        .unwrap_or_else(|| panic!("{key}: acknowledged at version {version}, now absent"));
        assert!(
            got.version >= *version,
            "{key}: acknowledged {value:?} at {version}, read version {}",
            got.version
        );
    }

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
    println!(
        "drained node {victim}: {held} moves, {led} hand-offs; {} writes and {} reads, none \
         failed; {samples} samples of the shard map, all at rf {RF}",
        l.writes_ok, l.reads_ok
    );
    Ok(())
}

/// A destination killed while it copies: the move aborts (the learner leaves the shard) and
/// is retried on another node, and the drain completes with every value intact. Copies are
/// throttled to 64 KiB/s per node so the kill lands mid-copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_killed_mid_copy_is_replaced_by_another() -> anyhow::Result<()> {
    let c = LocalCluster::start_with(3, &["--storage", "5", "--shards", "4", "--rf", "3"]).await?;
    let d = c.dir().to_string_lossy().into_owned();
    augur(&["local", "down", "--dir", &d])?;
    for id in 1..=5 {
        let path = c.dir().join(format!("storage-{id}")).join("config.toml");
        let mut config = std::fs::read_to_string(&path)?;
        config.push_str("\n[copy]\nbytes_per_sec = 65536\n");
        std::fs::write(&path, config)?;
    }
    augur(&["local", "up", "--dir", &d, "--timeout", "120"])?;
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
    // The first move to reach its copy loses its destination.
    let (shard, killed) = poll(Duration::from_secs(120), "a drain move copying", || async {
        Ok(drain_moves(&client, victim)
            .await?
            .into_iter()
            .find(|m| m.state == MigrationState::Copying)
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
