//! What learner copies carry, with real processes:
//!
//! - re-replication with corrupted chunks on the wire: a chunk that fails its CRC-64 is
//!   retried and never written, and the shard returns to its replication factor with every
//!   replica's checksum equal. Needs the test build (`AUGUR_UNSAFE_BIN`, with
//!   `unsafe-test-hooks`), whose storage nodes corrupt the first chunks they serve when told;
//! - the request ids the shard remembers: a write resent once every replica is a copy still
//!   applies once.

use augur_client::DataClient;
use augur_proto::NodeId;
use augur_tests::storage::{nodes, replica_checksums, shards, storage_metric_sum};
use augur_tests::{poll, Launcher, LocalCluster, ParentDir};
use std::collections::BTreeMap;
use std::time::Duration;

/// Members re-replicate 2 s after a node is declared Down.
const CONTROL: &str = "\n[control]\ndown_delay_ms = 2000\nmover_interval_ms = 500\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_chunks_are_retried_and_replicas_end_equal() -> anyhow::Result<()> {
    let Some(bin) = std::env::var_os("AUGUR_UNSAFE_BIN") else {
        println!("SKIPPED corrupted_chunks: needs AUGUR_UNSAFE_BIN (an augur built with unsafe-test-hooks)");
        return Ok(());
    };
    let launcher = Launcher {
        bin: Some(bin.into()),
        env: vec![("AUGUR_UNSAFE_CORRUPT_COPY_CHUNKS".into(), "3".into())],
    };
    let parent = ParentDir::new()?;
    let c = LocalCluster::start_in(parent.path(), 3, &[], &launcher).await?;
    let d = c.dir().to_string_lossy().into_owned();
    launcher.run(&["local", "down", "--dir", &d])?;
    for m in 1..=3 {
        let path = c.dir().join(format!("meta-{m}")).join("config.toml");
        let mut config = std::fs::read_to_string(&path)?;
        config.push_str(CONTROL);
        std::fs::write(&path, config)?;
    }
    launcher.run(&[
        "local",
        "up",
        "--dir",
        &d,
        "--storage",
        "4",
        "--shards",
        "4",
        "--rf",
        "3",
        "--timeout",
        "120",
    ])?;
    let client = c.new_client()?;
    let data = DataClient::new(client.clone()).await?;
    let mut written = BTreeMap::new();
    for i in 0..400 {
        let key = format!("copy-{i:04}");
        let value = vec![(i % 251) as u8; 2048];
        data.put(key.clone(), value.clone()).await?;
        written.insert(key, value);
    }
    // Kill a node that holds three of the four shards: each needs a new replica, and only
    // the fourth node can take it.
    let before = shards(&client).await?;
    let held = |n: NodeId| before.values().filter(|s| s.replicas.contains(&n)).count();
    let victim = nodes(&client)
        .await?
        .keys()
        .copied()
        .find(|n| held(*n) == 3)
        .expect("a node with three shards");
    c.kill_storage(victim.0)?;
    poll(
        Duration::from_secs(120),
        "every shard back at rf 3",
        || async {
            let s = shards(&client).await?;
            Ok(s.values()
                .all(|s| {
                    s.replicas.len() == 3 && s.learners.is_empty() && !s.replicas.contains(&victim)
                })
                .then_some(()))
        },
    )
    .await?;
    // The corrupted chunks were caught by the learner, which retried them.
    let failures = storage_metric_sum(&client, "augur_storage_copy_crc_failures_total").await?;
    assert!(failures >= 1.0, "no corrupted chunk was detected");
    // Every value is intact, and every replica of every shard has the same content.
    for (key, value) in &written {
        let got = data.get(key.as_bytes()).await?.expect("written");
        assert_eq!(&got.value, value, "{key}");
    }
    for id in shards(&client).await?.keys() {
        let crcs = replica_checksums(&c, &client, *id).await?;
        assert!(
            crcs.iter().all(|c| (c.1, c.2) == (crcs[0].1, crcs[0].2)),
            "shard {id}: replicas differ: {crcs:?}"
        );
    }
    Ok(())
}

/// A write whose answer was lost, resent after every replica of its shard was replaced by a
/// copy (each holder drained in turn), applies once: the copies carried the request ids the
/// shard remembers with its data. Before, a copy held the data only, and the resent write
/// applied a second time on the new primary, undoing the write made after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_resent_after_its_shard_moved_by_copy_applies_once() -> anyhow::Result<()> {
    use augur_proto::data::{DataRequest, DataResponse, WriteOp, WriteOutcome};
    use augur_tests::moves::{drain, emptied};
    use augur_tests::storage::storage_transport;

    let c = LocalCluster::start_with(3, &["--storage", "6", "--shards", "2", "--rf", "3"]).await?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;
    data.put("resent", b"first".to_vec()).await?;
    let shard = data.shard_of(b"resent");
    let raw = storage_transport(&c)?;
    let id = data.next_request_id();
    // The write, sent to the shard's primary as the client library would, with its id.
    let send = || async {
        let record = shards(&client).await?[&shard].clone();
        let primary = nodes(&client).await?[&record.replicas[0]].clone();
        let req = DataRequest::Write {
            shard,
            epoch: record.epoch,
            id,
            op: WriteOp::Put {
                key: b"resent".to_vec(),
                value: b"once".to_vec(),
            },
        };
        match raw
            .call_as::<_, DataResponse>(&primary.addrs[0], &req, Duration::from_secs(5))
            .await?
        {
            DataResponse::Written(outcome) => Ok::<_, anyhow::Error>(outcome),
            other => anyhow::bail!("write answered {other:?}"),
        }
    };
    let first = send().await?;
    assert!(matches!(first, WriteOutcome::Applied { .. }), "{first:?}");
    // A later write, which a second application of the first would undo.
    data.put("resent", b"later".to_vec()).await?;

    let holders = shards(&client).await?[&shard].replicas.clone();
    for n in &holders {
        drain(&c, &client, *n).await?;
    }
    for n in &holders {
        emptied(&client, *n, Duration::from_secs(240)).await?;
    }
    let now = shards(&client).await?[&shard].clone();
    assert!(
        now.replicas.iter().all(|n| !holders.contains(n)),
        "{holders:?} -> {now:?}"
    );

    // The resend reaches a primary that joined by copy: the first answer again, and nothing
    // applied.
    let again = poll(Duration::from_secs(60), "the resend answered", || async {
        Ok(send().await.ok())
    })
    .await?;
    assert_eq!(again, first);
    let v = data.get(b"resent").await?.expect("the key is there");
    assert_eq!(v.value, b"later");
    Ok(())
}
