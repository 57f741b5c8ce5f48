//! Faults during drain moves, with real processes and a client workload running throughout
//! (every request recorded in a ledger, the shard map sampled):
//!
//! - a corrupted shard-copy chunk: the learner catches it by its CRC-64 and fetches it
//!   again, the move commits, and every replica of every moved shard ends equal;
//! - the metadata leader killed while moves copy: a new leader takes every migration from
//!   its record to Committed or Aborted, the node is still emptied, and no client request
//!   fails, the data plane serving on while the metadata quorum elects;
//! - a false alarm: a node the risk policy drains because of an injected fail-slow disk
//!   recovers; only once its risk is below the policy's `leave` threshold (hysteresis) is
//!   it undrained, and its unfinished moves are cancelled: aborted with that reason, their
//!   learners gone, every shard at its replication factor.

use augur_client::{Client, DataClient};
use augur_proto::model::ShardState;
use augur_proto::{Migration, MigrationState, NodeId, NodeState, ShardId, StateOrigin};
use augur_tests::moves::{
    augurctl, drain, drain_moves, emptied, finished, replicas_held, Workload,
};
use augur_tests::storage::{nodes, replica_checksums, shards, storage_metric_sum};
use augur_tests::{poll, Launcher, LocalCluster, ParentDir};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const RF: usize = 3;

/// Acknowledged writes of `n` keys of 2 KiB each, so every shard has something to copy.
async fn preload(data: &DataClient, prefix: &str, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let key = format!("{prefix}-{i:04}");
        let value = vec![(i % 251) as u8; 2048];
        poll(Duration::from_secs(30), "a preload write", || async {
            Ok(data.put(key.clone(), value.clone()).await.ok())
        })
        .await?;
    }
    Ok(())
}

/// The node holding the most replicas (primaries among them, so hand-offs are exercised
/// too), and how many it holds.
async fn fullest(client: &Client) -> anyhow::Result<(NodeId, usize)> {
    let before = shards(client).await?;
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
    let node = nodes(client)
        .await?
        .keys()
        .copied()
        .max_by_key(|n| (count(*n, false), count(*n, true)))
        .expect("storage nodes");
    anyhow::ensure!(count(node, true) > 0, "node {node} leads no shard");
    Ok((node, count(node, false)))
}

/// Exactly one committed drain move per replica `node` held, every move finished.
fn one_commit_per_replica(moves: &[Migration], held: usize) {
    let committed = moves
        .iter()
        .filter(|m| m.state == MigrationState::Committed)
        .count();
    assert_eq!(committed, held, "{moves:?}");
    assert!(moves.iter().all(finished), "{moves:?}");
}

/// Corrupted chunks on the wire during a drain: each is caught by its CRC-64 before it is
/// written and fetched again, every move commits, the node is emptied with no failed client
/// request, and every replica of every moved shard has the same content. Needs the test
/// build (`AUGUR_UNSAFE_BIN`, with `unsafe-test-hooks`), whose storage nodes corrupt the
/// first chunks they serve when told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_chunks_in_drain_moves_are_fetched_again_and_the_moves_commit(
) -> anyhow::Result<()> {
    let started = Instant::now();
    let Some(bin) = std::env::var_os("AUGUR_UNSAFE_BIN") else {
        println!(
            "SKIPPED corrupted_chunks_in_drain_moves: needs AUGUR_UNSAFE_BIN (an augur built \
             with unsafe-test-hooks)"
        );
        return Ok(());
    };
    // Every storage node corrupts the first two chunks it serves; all copies come from the
    // nodes that stay, so the first moves out of each get corrupted chunks.
    let launcher = Launcher {
        bin: Some(bin.into()),
        env: vec![("AUGUR_UNSAFE_CORRUPT_COPY_CHUNKS".into(), "2".into())],
    };
    let parent = ParentDir::new()?;
    let c = LocalCluster::start_in(
        parent.path(),
        3,
        &[
            "--storage",
            "4",
            "--shards",
            "8",
            "--rf",
            "3",
            "--control",
            "mover_interval_ms=500",
        ],
        &launcher,
    )
    .await?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;
    preload(&data, "corrupt", 200).await?;
    let load = Workload::start(&data, c.new_client()?, "corrupt-load", 2, 1, RF);
    load.more_writes(50, Duration::from_secs(60)).await?;

    let (victim, held) = fullest(&client).await?;
    let before = shards(&client).await?;
    drain(&c, &client, victim).await?;
    emptied(&client, victim, Duration::from_secs(120)).await?;
    load.more_writes(30, Duration::from_secs(30)).await?;
    let done = load.finish().await?;
    // A sanity floor on the sampler, not a duration: faster moves mean fewer samples.
    done.assert_clean(3);
    let moves = drain_moves(&client, victim).await?;
    one_commit_per_replica(&moves, held);

    // The corrupted chunks were caught by the learners, which fetched them again.
    let failures = storage_metric_sum(&client, "augur_storage_copy_crc_failures_total").await?;
    assert!(failures >= 1.0, "no corrupted chunk was detected");

    // Every replica of every moved shard has the same content, and everything acknowledged
    // reads back.
    let moved: BTreeSet<ShardId> = before
        .values()
        .filter(|s| s.replicas.contains(&victim))
        .map(|s| s.id)
        .collect();
    for shard in &moved {
        let crcs = replica_checksums(&c, &client, *shard).await?;
        assert_eq!(crcs.len(), RF, "shard {shard}: {crcs:?}");
        assert!(
            crcs.iter().all(|x| (x.1, x.2) == (crcs[0].1, crcs[0].2)),
            "shard {shard}: replicas differ: {crcs:?}"
        );
    }
    done.assert_acked_readable(&data).await?;
    println!(
        "drained node {victim}: {held} moves committed, {failures} corrupted chunks caught; \
         {} writes, {} reads, none failed; {} shard-map samples at rf {RF}; {:?}",
        done.ledger.writes_ok,
        done.ledger.reads_ok,
        done.samples,
        started.elapsed()
    );
    Ok(())
}

/// The metadata leader SIGKILLed while drain moves copy: a new leader resumes every move
/// from its record or aborts it cleanly (and plans it again), the node is emptied, no shard
/// ever leaves its replication factor, and no client request fails or is `Indeterminate`:
/// storage nodes serve without the metadata leader, their leases outlasting an election.
/// Copies are throttled (32 KiB/s per node) so the kill lands while moves are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metadata_leader_killed_mid_migration_leaves_every_move_committed_or_aborted(
) -> anyhow::Result<()> {
    let started = Instant::now();
    let c = LocalCluster::start_with(3, &["--storage", "4", "--shards", "8", "--rf", "3"]).await?;
    c.restart_with_copy(32 * 1024, Some(16 * 1024))?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;
    preload(&data, "leader", 600).await?;
    let load = Workload::start(&data, c.new_client()?, "leader-load", 3, 2, RF);
    load.more_writes(100, Duration::from_secs(60)).await?;

    let (victim, held) = fullest(&client).await?;
    drain(&c, &client, victim).await?;
    let in_flight = poll(
        Duration::from_secs(60),
        "a drain move copying or verifying",
        || async {
            let moving: Vec<Migration> = drain_moves(&client, victim)
                .await?
                .into_iter()
                .filter(|m| {
                    matches!(
                        m.state,
                        MigrationState::Copying | MigrationState::CatchingUp
                    )
                })
                .collect();
            Ok((!moving.is_empty()).then_some(moving))
        },
    )
    .await?;
    let old = c.leader(Duration::from_secs(20)).await?;
    c.stop(old, true)?;
    let new = poll(Duration::from_secs(30), "a new metadata leader", || async {
        Ok(c.leader(Duration::from_secs(5))
            .await
            .ok()
            .filter(|l| *l != old))
    })
    .await?;

    // Every move ends, the node empties.
    emptied(&client, victim, Duration::from_secs(150)).await?;
    let moves = poll(
        Duration::from_secs(60),
        "every drain move finished",
        || async {
            let moves = drain_moves(&client, victim).await?;
            Ok(moves.iter().all(finished).then_some(moves))
        },
    )
    .await?;
    one_commit_per_replica(&moves, held);
    for m in &in_flight {
        let now = moves
            .iter()
            .find(|x| x.id == m.id)
            .unwrap_or_else(|| panic!("migration {} in flight at the kill is gone", m.id));
        match now.state {
            MigrationState::Committed => {}
            MigrationState::Aborted => {
                assert!(now.reason.contains("aborted: "), "{now:?}");
                assert!(
                    moves.iter().any(|x| x.shard == m.shard
                        && x.id > m.id
                        && x.state == MigrationState::Committed),
                    "shard {} never moved after its move aborted: {moves:?}",
                    m.shard
                );
            }
            _ => panic!("still in flight: {now:?}"),
        }
    }
    let held_now = replicas_held(&client).await?;
    assert_eq!(held_now.get(&victim), None, "{held_now:?}");

    load.more_writes(50, Duration::from_secs(30)).await?;
    let done = load.finish().await?;
    done.assert_clean(10);
    done.assert_acked_readable(&data).await?;
    let resumed: Vec<String> = in_flight
        .iter()
        .map(|m| {
            let end = moves.iter().find(|x| x.id == m.id).map(|x| x.state);
            format!("{} {:?} -> {:?}", m.id, m.state, end)
        })
        .collect();
    println!(
        "leader {old} killed with moves in flight ({}); leader {new} took over; node {victim} \
         emptied in {} moves ({held} committed); {} writes, {} reads, none failed; {} \
         shard-map samples at rf {RF}; {:?}",
        resumed.join(", "),
        moves.len(),
        done.ledger.writes_ok,
        done.ledger.reads_ok,
        done.samples,
        started.elapsed()
    );
    Ok(())
}

/// The leader's `/v1/control`, once it leads.
async fn control(c: &LocalCluster) -> anyhow::Result<Option<Value>> {
    let Ok(leader) = c.leader(Duration::from_secs(20)).await else {
        return Ok(None);
    };
    let Ok((200, body)) = c.http_get(leader, "/v1/control").await else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&body)?;
    Ok((v["leading"] == Value::Bool(true)).then_some(v))
}

/// One node's view in `/v1/control`.
fn node_view(v: &Value, id: NodeId) -> Value {
    v["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["id"] == id.0))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The number after `word ` in `text` (`"... below leave 0.250; ..."` -> 0.25).
fn number_after(text: &str, word: &str) -> Option<f64> {
    let rest = &text[text.find(&format!("{word} "))? + word.len() + 1..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The policy's thresholds in the false-alarm test. The shipped model scores a node with an
/// injected fail-slow disk about 0.8 and a healthy one a few hundredths; once the fault is
/// cleared, the score stays near 0.8 for one to three and a half minutes (measured: 60 s to
/// 205 s), then falls to about 0.57, where its 1-hour features hold it for an hour. With the
/// default thresholds (enter 0.5, leave 0.25) a real false alarm is undrained only that
/// late; thresholds between those levels make the same hysteresis play out within minutes:
/// at risk from 0.75, out of it only below 0.65.
const ENTER: f64 = 0.75;
const LEAVE: f64 = 0.65;

/// A false alarm: fail-slow injected into one node until the risk policy drains it, then
/// cleared while its moves copy (throttled to 2 KiB/s per node, so most are unfinished
/// when the node is undrained minutes later). The
/// node stays Draining until its risk falls below `leave`, however far below `enter` it
/// has come (hysteresis), and the record that undrains it carries that risk; its unfinished
/// moves are aborted as cancelled, no learner is left on any shard, every shard stays at
/// its replication factor and no client request fails. Skipped (with a note) when the
/// shipped node model does not load: without risk scores there is no policy to test.
///
/// About 5 minutes (the shipped model's risk takes minutes to fall after the fault clears),
/// so CI leaves it out: `scripts/test.sh --soak` runs it. The policy's hysteresis and the
/// cancellation of a false alarm's moves are unit-tested in `control::risk` and
/// `control::mover` on every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "about 5 minutes: scripts/test.sh --soak runs it"]
async fn a_false_alarm_is_undrained_below_leave_and_its_unfinished_moves_are_cancelled(
) -> anyhow::Result<()> {
    let started = Instant::now();
    let c = LocalCluster::start_with(
        3,
        &[
            "--storage",
            "4",
            "--shards",
            "8",
            "--rf",
            "3",
            "--control",
            "risk_interval_ms=1000",
            "--control",
            &format!("policy.enter={ENTER}"),
            "--control",
            &format!("policy.drain={ENTER}"),
            "--control",
            &format!("policy.leave={LEAVE}"),
            // Fixed thresholds: the moves' backlog would otherwise raise them.
            "--control",
            "policy.load_weight=0.0",
            "--control",
            "policy.backlog_weight=0.0",
            // One round at risk drains: the fault lasts only until the moves start.
            "--control",
            "policy.k=1",
            "--control",
            "policy.n=1",
            // The node keeps what it held when undrained: no balancing moves refill it
            // while the cancellation is checked.
            "--control",
            "max_balance_moves=0",
        ],
    )
    .await?;
    c.restart_with_copy(2048, Some(4096))?;
    let client = c.new_client()?;
    let (victim, held) = fullest(&client).await?;
    let data = DataClient::new(c.new_client()?).await?;
    preload(&data, "alarm", 400).await?;
    let load = Workload::start(&data, c.new_client()?, "alarm-load", 2, 1, RF);
    load.more_writes(50, Duration::from_secs(60)).await?;
    let view = poll(
        Duration::from_secs(60),
        "every node's risk state at the leader",
        || async {
            let Some(v) = control(&c).await? else {
                return Ok(None);
            };
            let decided = v["nodes"].as_array().is_some_and(|ns| {
                ns.len() == 4
                    && ns.iter().all(|n| {
                        let r = &n["health"]["risk"];
                        r.get("scored").is_some() || r.get("no_model").is_some()
                    })
            });
            Ok(decided.then_some(v))
        },
    )
    .await?;
    let scored = view["nodes"].as_array().is_some_and(|ns| {
        ns.iter()
            .all(|n| n["health"]["risk"].get("scored").is_some())
    });
    if !scored {
        load.finish().await?.assert_clean(0);
        println!("SKIPPED false alarm: the shipped node model does not load, no risk is scored");
        return Ok(());
    }

    let id = victim.0.to_string();
    augurctl(&c, &["node", "inject", &id, "fail-slow", "--ramp-ms", "0"])?;
    poll(
        Duration::from_secs(90),
        "the node drained by the policy",
        || async {
            let n = nodes(&client).await?[&victim].clone();
            Ok(
                (n.state == NodeState::Draining && n.cause.origin == StateOrigin::Policy)
                    .then_some(()),
            )
        },
    )
    .await?;
    // Its moves start (after its primaries are handed off), and copy slowly.
    poll(Duration::from_secs(60), "a drain move copying", || async {
        Ok(drain_moves(&client, victim)
            .await?
            .iter()
            .any(|m| m.state == MigrationState::Copying)
            .then_some(()))
    })
    .await?;
    augurctl(&c, &["node", "inject", &id, "clear"])?;
    let cleared = Instant::now();

    // Watch the node's record until it is no longer Draining, and meanwhile the risk the
    // leader hears from it (`/v1/control`, updated by every heartbeat): the lowest heard
    // while the record still said Draining, and one between `leave` and `enter`, where the
    // policy keeps the node draining although its risk is below `enter` (not always
    // sampled: the risk may fall past that band between two scoring rounds).
    let lowest = std::cell::Cell::new(f64::INFINITY);
    let held_below_enter = std::cell::Cell::new(None::<f64>);
    let undrained = poll(
        Duration::from_secs(300),
        "the node undrained by the policy",
        || async {
            let n = nodes(&client).await?[&victim].clone();
            if n.state != NodeState::Draining {
                return Ok(Some(n));
            }
            if let Some(v) = control(&c).await? {
                let heard = &node_view(&v, victim)["health"]["risk"]["scored"]["score"];
                if let Some(r) = heard.as_f64() {
                    if r < lowest.get() {
                        eprintln!("{:?} after the clear: risk {r:.3}", cleared.elapsed());
                    }
                    lowest.set(lowest.get().min(r));
                    if (LEAVE..ENTER).contains(&r) {
                        held_below_enter.set(Some(r));
                    }
                }
            }
            Ok(None)
        },
    )
    .await?;
    let state = undrained.state;
    assert!(
        matches!(state, NodeState::Up | NodeState::Suspect),
        "{undrained:?}"
    );
    let cause = &undrained.cause;
    assert_eq!(cause.origin, StateOrigin::Policy, "{undrained:?}");
    assert!(cause.reason.contains("false alarm"), "{undrained:?}");
    let leave = number_after(&cause.reason, "leave").expect("the leave threshold in the reason");
    let risk = cause.risk;
    assert!(
        risk < leave,
        "undrained at risk {risk} not below leave {leave}: {undrained:?}"
    );
    assert!(
        (leave - LEAVE).abs() < 1e-3,
        "thresholds not as configured: {undrained:?}"
    );
    let lowest_while_draining = lowest.get();
    let held_below_enter = match held_below_enter.get() {
        Some(r) => format!("still Draining at risk {r:.3}, below enter {ENTER}"),
        None => format!("not sampled between leave {LEAVE} and enter {ENTER}"),
    };
    println!(
        "node {victim} undrained ({state:?}) at risk {risk:.3} < leave {leave:.3}, {:?} after \
         the fault was cleared ({held_below_enter}); lowest risk heard while the record said \
         Draining: {lowest_while_draining:.3}",
        cleared.elapsed()
    );

    // Its unfinished moves end cancelled, cleanly.
    let moves = poll(
        Duration::from_secs(30),
        "every drain move finished",
        || async {
            let moves = drain_moves(&client, victim).await?;
            Ok(moves.iter().all(finished).then_some(moves))
        },
    )
    .await?;
    let cancelled = format!("aborted: source {victim} is no longer draining");
    let aborted: Vec<&Migration> = moves
        .iter()
        .filter(|m| m.state == MigrationState::Aborted)
        .collect();
    assert!(!aborted.is_empty(), "no move was cancelled: {moves:?}");
    assert!(
        aborted.iter().all(|m| m.reason.contains(&cancelled)),
        "{aborted:?}"
    );
    let committed = moves
        .iter()
        .filter(|m| m.state == MigrationState::Committed)
        .count();
    let clean = poll(
        Duration::from_secs(30),
        "every shard stable without learners",
        || async {
            let all = shards(&client).await?;
            Ok(all
                .values()
                .all(|s| s.learners.is_empty() && s.state == ShardState::Stable)
                .then_some(all))
        },
    )
    .await?;
    for s in clean.values() {
        assert_eq!(s.replicas.len(), RF, "{s:?}");
    }
    let still = clean
        .values()
        .filter(|s| s.replicas.contains(&victim))
        .count();
    assert_eq!(still, held - committed, "{moves:?}");

    load.more_writes(30, Duration::from_secs(30)).await?;
    let done = load.finish().await?;
    done.assert_clean(10);
    println!(
        "{} drain moves cancelled, {committed} committed; node {victim} keeps {still} of its \
         {held} replicas; {} writes, {} reads, none failed; {:?}",
        aborted.len(),
        done.ledger.writes_ok,
        done.ledger.reads_ok,
        started.elapsed()
    );
    Ok(())
}
