//! Crashes and restarts: leader loss, follower catch-up (also by snapshot), whole-cluster
//! SIGKILL, and membership changes.

use augur_client::{CasOutcome, Error};
use augur_proto::{Key, MemberId, Record, Setting};
use augur_tests::{poll, LocalCluster};
use std::collections::BTreeMap;
use std::time::Duration;

fn setting(name: &str, v: u64) -> Record {
    Record::Setting(Setting {
        name: name.into(),
        value: v.to_be_bytes().to_vec(),
        version: 0,
    })
}

fn value(r: &Record) -> u64 {
    match r {
        Record::Setting(s) => u64::from_be_bytes(s.value.as_slice().try_into().expect("8 bytes")),
        other => panic!("not a setting: {other:?}"),
    }
}

/// Blind-writes `name = v`. Resending a blind put of the same value cannot change the
/// outcome, so an unknown outcome is resent until it is known (or 30 s pass: `Ok(false)`).
async fn put(c: &augur_client::Client, name: &str, v: u64) -> Result<bool, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = augur_proto::Txn {
            compares: vec![],
            ops: vec![augur_proto::Op::Put(setting(name, v))],
        };
        match c.txn(t).await {
            Ok(r) => return Ok(r.succeeded),
            Err(Error::Indeterminate(_) | Error::Unavailable(_))
                if tokio::time::Instant::now() < deadline =>
            {
                continue
            }
            Err(Error::Indeterminate(_) | Error::Unavailable(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_then_new_leader_and_writes_resume() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let c = &cluster.client;
    assert!(put(c, "before", 1).await?);
    let old = cluster.leader(Duration::from_secs(10)).await?;
    cluster.stop(old, true)?;
    let new = poll(Duration::from_secs(30), "a new leader", || async {
        for id in (1..=3).filter(|i| *i != old) {
            if let Ok(s) = cluster.status(id).await {
                if s.role == "leader" {
                    return Ok(Some(id));
                }
            }
        }
        Ok(None)
    })
    .await?;
    assert_ne!(new, old);
    poll(Duration::from_secs(30), "a write to succeed", || async {
        Ok(put(c, "after", 2).await.ok().filter(|ok| *ok))
    })
    .await?;
    assert_eq!(
        c.get(&Key::Setting("before".into()))
            .await?
            .map(|r| value(&r)),
        Some(1)
    );
    // The old leader comes back as a follower and catches up.
    cluster.start_member(old)?;
    let target = cluster.status(new).await?.applied;
    let s = cluster
        .wait_applied(old, target, Duration::from_secs(30))
        .await?;
    assert_ne!(s.role, "leader");
    Ok(())
}

/// A client that starts while the first member in its list is dead (no process, so no
/// refusal either) must find the others and write, and must not report the write's outcome as
/// unknown: the request never left, because no connection was ever made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_client_writes_while_its_first_endpoint_is_dead() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    cluster.stop(1, true)?;
    let mut n = 0u64;
    poll(Duration::from_secs(60), "a write by a new client", || {
        n += 1;
        let cluster = &cluster;
        let attempt = n;
        async move {
            // A fresh client each time, so its first attempt always goes to member 1.
            let c = cluster.new_client()?;
            let create = augur_proto::Txn {
                compares: vec![],
                ops: vec![augur_proto::Op::Put(setting("fresh", attempt))],
            };
            match c.txn(create).await {
                Ok(r) => Ok(r.succeeded.then_some(())),
                // An election after member 1 died can outlast one request deadline.
                Err(Error::Unavailable(_)) => Ok(None),
                Err(e) => Err(anyhow::anyhow!("write through a new client: {e}")),
            }
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_restart_catches_up_through_a_snapshot() -> anyhow::Result<()> {
    // Snapshot every 50 entries and keep only 10 behind it, so a follower that misses a few
    // hundred entries can only catch up by installing a snapshot.
    let cluster =
        LocalCluster::start_with(3, &["--snapshot-logs", "50", "--keep-logs", "10"]).await?;
    let c = &cluster.client;
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    let stopped_at = cluster.status(follower).await?.last_log;
    cluster.stop(follower, false)?;
    for i in 0..300u64 {
        assert!(put(c, &format!("k{}", i % 40), i).await?);
    }
    let target = cluster.status(leader).await?.applied;
    // openraft purges only log no replication stream is using, so the leader purges between
    // its attempts to reach the stopped follower. Restart the follower only once the entries
    // it lacks are gone, or it could catch up from the log after all.
    poll(
        Duration::from_secs(30),
        "the leader to purge past the follower",
        || async {
            let (_, body) = cluster.http_get(leader, "/metrics").await?;
            let purged = body
                .lines()
                .find_map(|l| l.strip_prefix("augur_raft_purged_index "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            Ok((purged > stopped_at).then_some(()))
        },
    )
    .await?;
    cluster.start_member(follower)?;
    let s = cluster
        .wait_applied(follower, target, Duration::from_secs(60))
        .await?;
    assert!(
        s.compacted_revision > 0,
        "the follower caught up by snapshot (history compacted at {})",
        s.compacted_revision
    );
    // Its state matches the leader's exactly.
    let digest = |id| {
        let cluster = &cluster;
        async move {
            let (code, body) = cluster.http_get(id, "/v1/digest").await?;
            anyhow::ensure!(code == 200, "digest: {code} {body}");
            let v: serde_json::Value = serde_json::from_str(&body)?;
            anyhow::Ok((
                v["revision"].as_u64(),
                v["crc64"].as_str().map(String::from),
            ))
        }
    };
    let want = digest(leader).await?;
    poll(Duration::from_secs(30), "equal digests", || async {
        Ok((digest(follower).await? == want).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_sigkill_keeps_every_acknowledged_write() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    // Writers CAS their own keys upward; every acknowledged value is recorded.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let client = cluster.new_client()?;
        tasks.push(tokio::spawn(async move {
            let name = format!("w{w}");
            let mut acked: Option<u64> = None;
            let mut version = None;
            for v in 1..=1_000_000u64 {
                match client.cas(setting(&name, v), version).await {
                    Ok(CasOutcome::Committed { version: nv }) => {
                        acked = Some(v);
                        version = Some(nv);
                    }
                    Ok(CasOutcome::Conflict { current }) => version = Some(current),
                    Err(_) => break, // the cluster is being killed
                }
            }
            acked
        }));
    }
    // Kill while writes are flowing: wait until a good number have been applied.
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let start = cluster.status(leader).await?.applied;
    cluster
        .wait_applied(leader, start + 200, Duration::from_secs(60))
        .await?;
    for id in 1..=3 {
        cluster.stop(id, true)?;
    }
    let mut acked = BTreeMap::new();
    for (w, t) in tasks.into_iter().enumerate() {
        if let Some(v) = t.await? {
            acked.insert(format!("w{w}"), v);
        }
    }
    assert!(
        !acked.is_empty(),
        "some writes were acknowledged before the kill"
    );
    for id in 1..=3 {
        cluster.start_member(id)?;
    }
    cluster.leader(Duration::from_secs(30)).await?;
    let c = cluster.new_client()?;
    for (name, v) in &acked {
        let got = poll(Duration::from_secs(30), "a read", || async {
            Ok(c.get(&Key::Setting(name.clone())).await.ok())
        })
        .await?;
        let got = got.map(|r| value(&r));
        // The last acknowledged value, or a later one whose acknowledgement was lost in the kill.
        assert!(
            got.is_some_and(|g| g >= *v),
            "{name}: acknowledged {v}, found {got:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_promote_and_remove_a_member() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let c = &cluster.client;
    assert!(put(c, "x", 1).await?);
    let (id, addr) = cluster.add_member()?;
    c.add_learner(MemberId(id), addr.clone()).await?;
    // Adding again is a no-op.
    c.add_learner(MemberId(id), addr.clone()).await?;
    let target = cluster
        .status(cluster.leader(Duration::from_secs(10)).await?)
        .await?
        .applied;
    cluster
        .wait_applied(id, target, Duration::from_secs(30))
        .await?;
    c.promote(MemberId(id)).await?;
    let members = c.members().await?;
    assert!(
        members.iter().any(|m| m.id == MemberId(id) && m.voter),
        "{members:?}"
    );
    assert_eq!(members.iter().filter(|m| m.voter).count(), 4);
    // The new voter serves as a follower and sees the data.
    let s = cluster.status(id).await?;
    assert!(s.role == "follower" || s.role == "leader", "{s:?}");
    // Remove it again; the group shrinks to three and keeps working.
    c.remove_member(MemberId(id)).await?;
    poll(Duration::from_secs(30), "membership of three", || async {
        let m = c.members().await?;
        Ok((m.len() == 3 && !m.iter().any(|m| m.id == MemberId(id))).then_some(()))
    })
    .await?;
    assert!(put(c, "y", 2).await?);
    // Removing an absent member is a no-op.
    c.remove_member(MemberId(id)).await?;
    assert_eq!(c.members().await?.len(), 3);
    // Leadership transfer moves the leader.
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let to = (1..=3).find(|i| *i != leader).expect("another voter");
    c.transfer_leader(MemberId(to)).await?;
    poll(Duration::from_secs(30), "leadership to move", || async {
        Ok(cluster
            .status(to)
            .await
            .ok()
            .filter(|s| s.role == "leader")
            .map(|_| ()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_voter_cannot_be_removed() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(1).await?;
    let c = &cluster.client;
    match c.remove_member(MemberId(1)).await {
        Err(augur_client::Error::Api(augur_proto::wire::ApiError::Membership(why))) => {
            assert!(why.contains("last voter"), "{why}")
        }
        other => panic!("removing the last voter: {other:?}"),
    }
    let members = c.members().await?;
    assert_eq!(members.len(), 1);
    assert!(members[0].voter);
    assert!(put(c, "still", 1).await?);
    Ok(())
}
