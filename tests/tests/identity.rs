//! A member that lost its data never takes part in Raft under its old identity: it waits,
//! visibly, until an operator adds it again, and it cannot help elect a leader that lacks
//! committed entries.

use augur_client::Client;
use augur_proto::{Key, MemberId, Op, Record, Setting, Txn};
use augur_tests::{poll, LocalCluster};
use std::time::Duration;

async fn put(c: &Client, name: &str, value: &str) -> anyhow::Result<u64> {
    let r = c
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put(Record::Setting(Setting {
                name: name.into(),
                value: value.as_bytes().to_vec(),
                version: 0,
            }))],
        })
        .await?;
    Ok(r.revision)
}

async fn value(c: &Client, name: &str) -> anyhow::Result<Option<String>> {
    Ok(match c.get(&Key::Setting(name.into())).await? {
        Some(Record::Setting(s)) => Some(String::from_utf8_lossy(&s.value).into_owned()),
        _ => None,
    })
}

/// Kills member `id`, deletes its data directory, and starts it again: a disk that died.
fn lose_disk(cluster: &LocalCluster, id: u64) -> anyhow::Result<()> {
    cluster.stop(id, true)?;
    std::fs::remove_dir_all(cluster.dir().join(format!("meta-{id}")).join("data"))?;
    cluster.start_member(id)
}

/// The `wrong_identity` refusals member `id` has counted (from `/metrics`).
async fn refusals(cluster: &LocalCluster, id: u64) -> anyhow::Result<u64> {
    let (_, body) = cluster.http_get(id, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("augur_rpc_errors_total{kind=\"wrong_identity\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_waits_to_be_added_again_and_then_catches_up() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let c = &cluster.client;
    for i in 0..20 {
        put(c, &format!("k{i}"), "before").await?;
    }
    let old = cluster.status(1).await?;
    let old_incarnation = old
        .members
        .iter()
        .find(|m| m.id.0 == 3)
        .map(|m| m.incarnation);

    lose_disk(&cluster, 3)?;
    let waiting = poll(
        Duration::from_secs(30),
        "member 3 to say it waits",
        || async { Ok(cluster.status(3).await.ok().filter(|s| s.waiting.is_some())) },
    )
    .await?;
    assert!(waiting.cluster.is_none(), "{waiting:?}");
    assert_ne!(Some(waiting.incarnation), old_incarnation);
    let (code, body) = cluster.http_get(3, "/health").await?;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("waiting") && body.contains("no data"),
        "{body}"
    );

    // The others go on; the leader's messages to the old incarnation are refused by the new
    // one, which therefore learns nothing and votes for nobody.
    let mut last = 0;
    for i in 0..20 {
        last = put(c, &format!("k{i}"), "after").await?;
    }
    poll(
        Duration::from_secs(30),
        "member 3 to refuse the leader",
        || async { Ok(refusals(&cluster, 3).await.ok().filter(|n| *n > 0)) },
    )
    .await?;
    let s3 = cluster.status(3).await?;
    assert_eq!(
        (s3.last_log, s3.applied, s3.cluster),
        (0, 0, None),
        "{s3:?}"
    );

    // Adding it back under its old entry is refused with a message that says what to do.
    let e = c
        .add_learner(MemberId(3), cluster.endpoint(3)?)
        .await
        .expect_err("the old entry must go first");
    assert!(
        e.to_string().to_lowercase().contains("remove it first"),
        "{e}"
    );

    // The operator's path: remove, add as a learner, catch up, promote.
    let d = cluster.dir().to_string_lossy().into_owned();
    augur_tests::augur(&["local", "readd", "--dir", &d, "--member", "3"])?;
    let s3 = cluster
        .wait_applied(3, last, Duration::from_secs(60))
        .await?;
    assert!(s3.waiting.is_none(), "{s3:?}");
    let members = c.members().await?;
    let m3 = members
        .iter()
        .find(|m| m.id.0 == 3)
        .expect("member 3 is back");
    assert!(m3.voter);
    assert_eq!(m3.incarnation, waiting.incarnation);
    // It serves linearizable reads with everything, old and new.
    let (rec, _) = c
        .get_on(
            &cluster.endpoint(3)?,
            &Key::Setting("k19".into()),
            augur_proto::Consistency::Linearizable,
        )
        .await?;
    assert!(matches!(rec, Some(Record::Setting(s)) if s.value == b"after"));
    Ok(())
}

/// The unsafe vote the identity check prevents. Write W while member 3 is down, so only 1 and
/// 2 have it. Then 2's disk dies and 1 goes down. Member 3 (without W) and the wiped 2 are a
/// majority: if 2 voted as if it still were itself, 3 would be elected and W, acknowledged,
/// would be lost. With incarnations, 2 refuses, nobody is elected, and W survives until 1 is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_cannot_elect_a_leader_that_lacks_committed_writes() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let c = &cluster.client;
    put(c, "w", "old").await?;
    cluster.stop(3, true)?;
    put(c, "w", "acknowledged").await?;
    cluster.stop(1, true)?;
    lose_disk(&cluster, 2)?;
    cluster.start_member(3)?;

    // Member 3 campaigns; the new incarnation of 2 refuses its votes.
    poll(
        Duration::from_secs(30),
        "member 2 to refuse member 3",
        || async { Ok(refusals(&cluster, 2).await.ok().filter(|n| *n >= 3)) },
    )
    .await?;
    for id in [2, 3] {
        // The test's client may still hold a connection to the killed process: poll.
        let s = poll(Duration::from_secs(30), "a status answer", || async {
            Ok(cluster.status(id).await.ok())
        })
        .await?;
        assert_ne!(s.role, "leader", "member {id} was elected: {s:?}");
        if id == 2 {
            assert!(s.cluster.is_none(), "{s:?}");
        }
    }

    // Member 1 returns: 1 and 3 elect a leader, which has W.
    cluster.start_member(1)?;
    let fresh = cluster.new_client()?;
    let got = poll(Duration::from_secs(30), "w to be readable", || async {
        Ok(value(&fresh, "w").await.ok().flatten())
    })
    .await?;
    assert_eq!(got, "acknowledged");
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    assert_ne!(leader, 2, "the wiped member leads");
    Ok(())
}
