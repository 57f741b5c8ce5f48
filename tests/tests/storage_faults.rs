//! Storage nodes under failure: real processes killed and frozen while clients write and read.
//! Nothing acknowledged may be lost, no read may go back in time, and a frozen primary must
//! stop serving before another replica is promoted.

use augur_client::{DataClient, Error, Transport};
use augur_proto::data::{DataError, DataRequest, DataResponse};
use augur_proto::NodeId;
use augur_tests::storage::{busiest_primary, nodes, shards};
use augur_tests::{poll, LocalCluster};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 3 members and 3 storage nodes, 8 shards at rf 3, default control timing (lease 6 s,
/// grace 8 s, ack timeout 2 s).
async fn cluster() -> anyhow::Result<LocalCluster> {
    LocalCluster::start_with(3, &["--storage", "3", "--shards", "8", "--rf", "3"]).await
}

/// What clients were told about each key.
#[derive(Default)]
struct Ledger {
    /// The latest acknowledged write per key: (value, version).
    acked: HashMap<String, (String, u64)>,
    /// Values whose writes ended with an unknown outcome, per key.
    maybe: HashMap<String, Vec<String>>,
    /// Reads that returned an older version than one acknowledged before they began.
    stale: Vec<String>,
    writes_ok: u64,
}

/// Writes `key-{w}-{i}` keys in a loop, recording what was acknowledged.
async fn writer(data: DataClient, w: usize, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!("key-{w}-{}", n % 16);
        let value = format!("{w}-{n}");
        match data.put(key.clone(), value.clone().into_bytes()).await {
            Ok(version) => {
                let mut l = ledger.lock().unwrap();
                l.writes_ok += 1;
                let e = l.acked.entry(key).or_insert((value.clone(), version));
                if version >= e.1 {
                    *e = (value, version);
                }
            }
            Err(Error::Indeterminate(_)) => {
                ledger
                    .lock()
                    .unwrap()
                    .maybe
                    .entry(key)
                    .or_default()
                    .push(value);
            }
            // Certainly not applied (no primary yet, deadline): try again.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Reads keys in a loop; a read must not return a version older than the one acknowledged
/// before it began.
async fn reader(
    data: DataClient,
    writers: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!("key-{}-{}", n as usize % writers, n % 16);
        let floor = ledger.lock().unwrap().acked.get(&key).map(|a| a.1);
        match data.get(key.as_bytes()).await {
            Ok(got) => {
                let version = got.map(|v| v.version);
                if let Some(floor) = floor {
                    if version.is_none_or(|v| v < floor) {
                        ledger.lock().unwrap().stale.push(format!(
                            "{key}: read version {version:?} after version {floor} was acknowledged"
                        ));
                    }
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Checks every key reads back as its last acknowledged value, or a later write whose outcome
/// was unknown.
async fn check_nothing_lost(data: &DataClient, ledger: &Ledger) -> anyhow::Result<()> {
    for (key, (value, version)) in &ledger.acked {
        let got = poll(Duration::from_secs(30), "a final read", || async {
            Ok(data.get(key.as_bytes()).await.ok())
        })
        .await?
        .unwrap_or_else(|| panic!("{key}: acknowledged at version {version}, now absent"));
        let got_value = String::from_utf8_lossy(&got.value).into_owned();
        let later_unknown = ledger
            .maybe
            .get(key)
            .is_some_and(|m| m.contains(&got_value));
        assert!(
            got.version >= *version && (got_value == *value || later_unknown),
            "{key}: acknowledged {value:?} at {version}, read {got_value:?} at {}",
            got.version
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_loses_nothing_and_no_read_goes_back_in_time() -> anyhow::Result<()> {
    let c = cluster().await?;
    let data = DataClient::new(c.new_client()?).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
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
            4,
            ledger.clone(),
            stop.clone(),
        )));
    }
    poll(Duration::from_secs(30), "writes under way", || async {
        Ok((ledger.lock().unwrap().writes_ok > 100).then_some(()))
    })
    .await?;
    let victim = busiest_primary(&c.client).await?;
    c.kill_storage(victim.0)?;
    // Writes resume on every shard once the control plane has promoted new primaries.
    let before = ledger.lock().unwrap().writes_ok;
    poll(
        Duration::from_secs(60),
        "every shard to have a live primary",
        || async {
            let s = shards(&c.client).await?;
            Ok(s.values()
                .all(|s| s.replicas.first() != Some(&victim))
                .then_some(()))
        },
    )
    .await?;
    poll(Duration::from_secs(30), "writes to go on", || async {
        Ok((ledger.lock().unwrap().writes_ok > before + 200).then_some(()))
    })
    .await?;
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await?;
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.stale.is_empty(), "stale reads: {:?}", ledger.stale);
    check_nothing_lost(&data, &ledger).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_secondary_is_removed_and_writes_go_on_before_it_is_declared_down(
) -> anyhow::Result<()> {
    let c = cluster().await?;
    let data = DataClient::new(c.new_client()?).await?;
    for i in 0..64 {
        data.put(format!("k{i}"), b"v1".to_vec()).await?;
    }
    // The node that is a secondary (not the primary) of the most shards.
    let before = shards(&c.client).await?;
    let mut secondary_of: BTreeMap<NodeId, usize> = BTreeMap::new();
    for s in before.values() {
        for n in s.replicas.iter().skip(1) {
            *secondary_of.entry(*n).or_default() += 1;
        }
    }
    let (victim, _) = secondary_of.into_iter().max_by_key(|(_, n)| *n).unwrap();
    c.kill_storage(victim.0)?;
    // Writes to every key succeed again: its primaries stop waiting for it.
    for i in 0..64 {
        data.put(format!("k{i}"), b"v2".to_vec()).await?;
    }
    let after = shards(&c.client).await?;
    for (id, s) in &after {
        let old = &before[id];
        if old.replicas.iter().skip(1).any(|n| *n == victim) {
            assert!(
                !s.replicas.contains(&victim),
                "shard {id} still lists node {victim}: {s:?}"
            );
            assert!(s.epoch > old.epoch);
        }
    }
    for i in 0..64 {
        let v = data
            .get(format!("k{i}").as_bytes())
            .await?
            .expect("written");
        assert_eq!(v.value, b"v2");
    }
    Ok(())
}

/// A request id reused for another write while its first write is still in flight (waiting
/// for a frozen secondary's acknowledgement) is refused at once, and the first write still
/// commits under it: the primary compares the resend with the pending entry's digest, not
/// only with the outcomes it remembers once applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_reused_while_its_first_write_is_in_flight_is_refused() -> anyhow::Result<()> {
    let c = cluster().await?;
    let data = DataClient::new(c.new_client()?).await?;
    data.put("inflight", b"before".to_vec()).await?;
    let shard = data.shard_of(b"inflight");
    let record = shards(&c.client).await?[&shard].clone();
    let all = nodes(&c.client).await?;
    let primary_admin: std::net::SocketAddr = all[&record.replicas[0]].admin.parse()?;
    let secondary = record.replicas[1];
    let put = |v: &str| augur_proto::data::WriteOp::Put {
        key: b"inflight".to_vec(),
        value: v.as_bytes().to_vec(),
    };
    // The primary cannot commit while a secondary says nothing: the first write waits (for
    // `ack_timeout_ms`, 4 s, then the secondary's removal).
    c.pause_storage(secondary.0)?;
    let id = data.next_request_id();
    let first = tokio::spawn({
        let (data, op) = (data.clone(), put("first"));
        async move { data.write_as(id, op).await }
    });
    poll(
        Duration::from_secs(30),
        "the first write prepared on the primary and not committed",
        || async move {
            let r =
                augur_client::admin_http::get(primary_admin, "/metrics", Duration::from_secs(5))
                    .await?;
            let lag =
                augur_client::admin_http::metric_sum(&r.body, "augur_storage_replication_lag");
            Ok((lag > 0.0).then_some(()))
        },
    )
    .await?;
    // Sent now, the second write finds the first pending (it cannot commit before the ack
    // timeout); on a machine stalled that long it would meet the remembered outcome
    // instead, which is refused the same way.
    match data.write_as(id, put("second")).await {
        Err(Error::Data(DataError::InvalidArgument(why))) => {
            assert!(why.contains("already used"), "{why}")
        }
        other => panic!("a request id reused while in flight: {other:?}"),
    }
    let outcome = first.await??;
    c.resume_storage(secondary.0)?;
    let augur_proto::data::WriteOutcome::Applied { version } = outcome else {
        panic!("the first write applies: {outcome:?}");
    };
    assert_eq!(
        data.get(b"inflight").await?.map(|v| (v.value, v.version)),
        Some((b"first".to_vec(), version))
    );
    // The resend of the first write, now applied, is answered with its outcome.
    assert_eq!(data.write_as(id, put("first")).await?, outcome);
    Ok(())
}

/// Reads a key from node `addr` directly, for shard `shard` at `epoch`: what the node itself
/// answers, with no client routing in between.
async fn direct_get(
    t: &Transport,
    addr: &str,
    shard: augur_proto::ShardId,
    epoch: u64,
    key: &[u8],
) -> Option<DataResponse> {
    t.call_as::<_, DataResponse>(
        addr,
        &DataRequest::Get {
            shard,
            epoch,
            key: key.to_vec(),
        },
        Duration::from_millis(500),
    )
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_primary_stops_serving_before_another_is_promoted() -> anyhow::Result<()> {
    let c = cluster().await?;
    let data = DataClient::new(c.new_client()?).await?;
    data.put("frozen", b"old".to_vec()).await?;
    let shard = data.shard_of(b"frozen");
    let record = shards(&c.client).await?[&shard].clone();
    let primary = record.replicas[0];
    let addr = nodes(&c.client).await?[&primary].addrs[0].clone();
    let files = c.cluster_file()?;
    let raw = Transport::client(&files.tls, Duration::from_secs(2))?
        .for_servers(augur_transport::STORAGE_SERVER_NAME);
    assert!(matches!(
        direct_get(&raw, &addr, shard, record.epoch, b"frozen").await,
        Some(DataResponse::Value(Some(_)))
    ));
    // Freeze it past the grace period: the control plane promotes another replica, and a
    // write goes through the new primary.
    c.pause_storage(primary.0)?;
    let promoted = poll(Duration::from_secs(60), "another primary", || async {
        let s = shards(&c.client).await?;
        Ok(s.get(&shard).filter(|s| s.replicas[0] != primary).cloned())
    })
    .await?;
    data.put("frozen", b"new".to_vec()).await?;
    // Thawed, the old primary must not serve the old value: its lease expired while it was
    // frozen, and by the time it renews it, it has stepped down.
    c.resume_storage(primary.0)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut answers = Vec::new();
    while tokio::time::Instant::now() < deadline {
        if let Some(resp) = direct_get(&raw, &addr, shard, record.epoch, b"frozen").await {
            if let DataResponse::Value(v) = &resp {
                panic!("the deposed primary served a read: {v:?}");
            }
            answers.push(resp);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!answers.is_empty(), "the thawed node never answered");
    assert!(
        answers.iter().all(|a| matches!(
            a,
            DataResponse::Error(
                DataError::Unavailable(_)
                    | DataError::StaleEpoch { .. }
                    | DataError::Redirect(_)
                    | DataError::UnknownShard(_)
            )
        )),
        "{answers:?}"
    );
    assert_eq!(
        data.get(b"frozen").await?.map(|v| v.value),
        Some(b"new".to_vec())
    );
    assert!(promoted.epoch > record.epoch);
    Ok(())
}

/// A primary that handed off and then heard of no new configuration (the control plane's
/// move was lost with its leader, say) neither serves again on its own clock nor stays
/// silent for good: it asks to be elected again, the shard gets a new epoch, and clients
/// read and write it there with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hand_off_that_nobody_follows_ends_at_a_new_epoch() -> anyhow::Result<()> {
    let c = cluster().await?;
    let data = DataClient::new(c.new_client()?).await?;
    data.put("handed", b"before".to_vec()).await?;
    let shard = data.shard_of(b"handed");
    let record = shards(&c.client).await?[&shard].clone();
    let primary = nodes(&c.client).await?[&record.replicas[0]].clone();
    let addr = primary.addrs[0].clone();
    let operator = augur_tests::storage::storage_transport(&c)?;
    let answer = operator
        .call_as::<_, DataResponse>(
            &addr,
            &DataRequest::HandOff {
                shard,
                epoch: record.epoch,
                timeout_ms: 300,
            },
            Duration::from_secs(10),
        )
        .await?;
    assert!(
        matches!(answer, DataResponse::HandedOff { .. }),
        "{answer:?}"
    );
    // From the hand-off on, the old epoch is never served again: first the primary is
    // handing off, then it waits to be elected, then the epoch is stale.
    let reelected = poll(
        Duration::from_secs(30),
        "a new epoch for the shard",
        || async {
            let read = direct_get(&operator, &addr, shard, record.epoch, b"handed").await;
            if let Some(DataResponse::Value(v)) = read {
                panic!("the old epoch served a read: {v:?}");
            }
            let now = shards(&c.client).await?[&shard].clone();
            Ok((now.epoch > record.epoch).then_some(now))
        },
    )
    .await?;
    assert_eq!(reelected.replicas.len(), 3, "{reelected:?}");
    assert_eq!(
        data.get(b"handed").await?.map(|v| v.value),
        Some(b"before".to_vec())
    );
    data.put("handed", b"after".to_vec()).await?;
    assert_eq!(
        data.get(b"handed").await?.map(|v| v.value),
        Some(b"after".to_vec())
    );
    Ok(())
}
