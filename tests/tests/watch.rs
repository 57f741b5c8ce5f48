//! Watch delivers every change once, in order, across a leader change and reconnects; a
//! member cut off from the leader ends its watches instead of leaving them silent.

use augur_client::transport::{client_config, SERVER_NAME};
use augur_proto::frame::{read_frame, write_frame};
use augur_proto::wire::{ApiError, Change};
use augur_proto::{Op, Record, Request, Response, Setting, Table, Txn};
use augur_tests::{poll, LocalCluster};
use futures::StreamExt;
use std::time::Duration;

fn put(name: &str, v: u64) -> Txn {
    Txn {
        compares: vec![],
        ops: vec![Op::Put(Record::Setting(Setting {
            name: name.into(),
            value: v.to_be_bytes().to_vec(),
            version: 0,
        }))],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_delivers_every_change_once_in_order_across_leader_change() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let c = &cluster.client;
    let first = c.txn(put("w0", 0)).await?.revision;
    let mut stream = c.watch(vec![Table::Settings], first);
    let mut shards_stream = c.watch(vec![Table::Shards], first);
    let mut committed = vec![first];
    for i in 1..50u64 {
        committed.push(c.txn(put(&format!("w{}", i % 7), i)).await?.revision);
    }
    // A write to another table: filtered out of this watch, delivered to a watch of that
    // table (and nothing else is).
    let shard_rev = c
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put(Record::Shard(augur_proto::Shard {
                id: augur_proto::ShardId(1),
                replicas: vec![augur_proto::NodeId(1)],
                learners: vec![],
                epoch: 1,
                version: 0,
                state: augur_proto::ShardState::Stable,
                size_bytes: 0,
                crc64: 0,
            }))],
        })
        .await?
        .revision;
    let shard_ev = tokio::time::timeout(Duration::from_secs(30), shards_stream.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("shard watch ended"))??;
    assert_eq!(shard_ev.revision, shard_rev);
    assert!(matches!(
        shard_ev.changes.as_slice(),
        [Change::Put(Record::Shard(s))] if s.id == augur_proto::ShardId(1)
    ));
    // Kill the leader mid-stream; the watch moves to another node.
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    cluster.stop(leader, true)?;
    poll(Duration::from_secs(30), "writes to resume", || async {
        match c.txn(put("w-after", 1000)).await {
            Ok(r) => Ok(Some(r.revision)),
            Err(_) => Ok(None),
        }
    })
    .await
    .map(|r| committed.push(r))?;
    for i in 50..100u64 {
        match c.txn(put(&format!("w{}", i % 7), i)).await {
            Ok(r) => committed.push(r.revision),
            Err(e) => panic!("write after failover: {e}"),
        }
    }
    // Every committed revision arrives exactly once, in order. The only other events allowed
    // are writes of "w-after" whose outcome the client could not know during the failover.
    let last = *committed.last().expect("writes");
    let mut seen = Vec::new();
    while seen.last().is_none_or(|r| *r < last) {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "watch stalled after {} of {} events",
                    seen.len(),
                    committed.len()
                )
            })?
            .ok_or_else(|| anyhow::anyhow!("watch ended"))??;
        assert!(ev
            .changes
            .iter()
            .all(|ch| matches!(ch, Change::Put(Record::Setting(_)))));
        if !committed.contains(&ev.revision) {
            let unknown_write = ev
                .changes
                .iter()
                .all(|ch| matches!(ch, Change::Put(Record::Setting(s)) if s.name == "w-after"));
            assert!(unknown_write, "unexpected event {ev:?}");
        }
        seen.push(ev.revision);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {seen:?}"
    );
    let missing: Vec<u64> = committed
        .iter()
        .filter(|r| !seen.contains(r))
        .copied()
        .collect();
    assert!(missing.is_empty(), "revisions never delivered: {missing:?}");
    assert!(
        !seen.contains(&shard_rev),
        "the settings watch saw a shard write"
    );
    Ok(())
}

/// A member left alone (the two others stopped) applies nothing more. Its watches must not
/// wait in silence for changes that the rest of the cluster would be making: they end
/// `Unavailable`, and a client resumes on another member. A follower left alone keeps naming
/// its old leader (pre-vote), and a leader left alone stays leader: both must notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_a_follower_cut_off_from_the_leader_ends_unavailable() -> anyhow::Result<()> {
    cut_off_watch_ends(false).await
}

/// The same on the leader, cut off from its quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_a_leader_cut_off_from_its_quorum_ends_unavailable() -> anyhow::Result<()> {
    cut_off_watch_ends(true).await
}

/// Five members, and the watched one is left with one other: a minority of two still
/// hears a peer (a follower its fellow follower's pre-votes, a leader one follower's
/// acknowledgements), which must not pass for being in touch with a quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_a_follower_in_a_minority_of_two_ends_unavailable() -> anyhow::Result<()> {
    cut_off_watch_ends_in(5, false).await
}

/// The same with the leader in the minority of two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_a_leader_in_a_minority_of_two_ends_unavailable() -> anyhow::Result<()> {
    cut_off_watch_ends_in(5, true).await
}

async fn cut_off_watch_ends(on_leader: bool) -> anyhow::Result<()> {
    cut_off_watch_ends_in(3, on_leader).await
}

/// Watches a member of a `members`-member cluster (its leader or a follower), then stops
/// every member but the watched one and, when that leaves a quorum's worth, the fewest
/// others so that what remains is a minority; the watch must end `Unavailable`.
async fn cut_off_watch_ends_in(members: u64, on_leader: bool) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(members).await?;
    let c = &cluster.client;
    c.txn(put("cut", 1)).await?;
    let leader = cluster.leader(Duration::from_secs(30)).await?;
    let watched = if on_leader {
        leader
    } else {
        (1..=members).find(|m| *m != leader).expect("a follower")
    };
    // The minority left running: the watched member and, of five, one other follower.
    let minority = (members - 1) / 2;
    let kept: Vec<u64> = std::iter::once(watched)
        .chain(
            (1..=members)
                .filter(|m| *m != watched && *m != leader)
                .take(minority as usize - 1),
        )
        .collect();
    // A watch on that member, on a connection of its own (the client library would move on
    // by itself; this sees what the member says).
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(client_config(
        &cluster.cluster_file()?.tls,
        Duration::from_secs(5),
    )?);
    let conn = ep
        .connect(cluster.endpoint(watched)?.parse()?, SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let max = 1 << 20;
    write_frame(
        &mut send,
        &Request::Watch {
            tables: vec![Table::Settings],
            from_revision: 0,
        },
        max,
    )
    .await?;
    let started = read_frame::<_, Response>(&mut recv, max).await?;
    assert!(
        matches!(started, Some(Response::WatchStarted { .. })),
        "{started:?}"
    );
    // While all is well the watch delivers.
    let rev = c.txn(put("cut", 2)).await?.revision;
    let ev = tokio::time::timeout(
        Duration::from_secs(30),
        read_frame::<_, Response>(&mut recv, max),
    )
    .await??;
    assert!(
        matches!(&ev, Some(Response::Watch(e)) if e.revision == rev),
        "{ev:?}"
    );
    for m in (1..=members).filter(|m| !kept.contains(m)) {
        cluster.stop(m, true)?;
    }
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match read_frame::<_, Response>(&mut recv, max).await? {
                Some(Response::Watch(_)) => continue,
                other => return anyhow::Ok(other),
            }
        }
    })
    .await??;
    assert!(
        matches!(&end, Some(Response::Error(ApiError::Unavailable(why))) if why.contains("out of touch")),
        "{end:?}"
    );
    conn.close(0u32.into(), b"");
    Ok(())
}
