//! Predictive capacity planning end to end: real `augur` processes, a small configured
//! capacity per storage node (`augur local up --storage-capacity`), and a capacity hook that
//! is a script starting a new local storage node (`augur local up --storage 4`).
//!
//! Three storage nodes at rf 3 are filled to about two thirds of their capacity: the
//! headroom is fine. An operator drains one: the data must then fit on two nodes, the
//! headroom after draining falls below the minimum (and two nodes are fewer than rf). The
//! leader raises the alarm (`/v1/control`, `/metrics`, `augurctl status`) and calls the
//! hook, whose JSON request the script saves; the node it starts registers and receives the
//! drained node's replicas, and the alarm clears.
//!
//! The script waits for the test's go-ahead before it starts the node, so the alarm is seen
//! while it is raised, not raced.

use augur_client::DataClient;
use augur_proto::NodeId;
use augur_tests::storage::{nodes, shards};
use augur_tests::{augur_bin, poll, LocalCluster};
use futures::stream::{self, StreamExt};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Capacity of each of the first three storage nodes.
const CAPACITY: u64 = 32 << 20;
/// The planner's minimum headroom (its default).
const MIN_HEADROOM: f64 = 0.2;
/// Fill the nodes until each holds this share of its capacity: 3 x 0.6 = 1.8 capacities of
/// data do not fit in the 2 x 0.8 a drain leaves, while 1.8 of 3 x 0.8 do.
const FILL: f64 = 0.6;
const VALUE_BYTES: usize = 16 * 1024;

fn augurctl(c: &LocalCluster, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(augur_bin().with_file_name("augurctl"))
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

/// The hook: saves its request (stdin and environment), waits for `go`, then starts storage
/// node 4 in the cluster directory named in `cluster-dir`.
///
/// `request.json`, which the test polls for, appears last and whole (renamed into place):
/// written in place and before the environment's copy, it let a loaded machine's test read
/// the copy before it existed.
fn write_hook(work: &Path) -> anyhow::Result<std::path::PathBuf> {
    let w = work.display();
    let script = format!(
        "#!/bin/sh\n\
         printf '%s' \"$AUGUR_CAPACITY_REQUEST\" > {w}/request-env.json\n\
         cat > {w}/request.tmp\n\
         mv {w}/request.tmp {w}/request.json\n\
         i=0\n\
         while [ ! -e {w}/go ]; do\n\
           i=$((i+1)); [ $i -gt 600 ] && {{ echo 'no go-ahead' >&2; exit 1; }}\n\
           sleep 0.1\n\
         done\n\
         exec {augur} local up --dir \"$(cat {w}/cluster-dir)\" --storage 4 --timeout 60 \
           >> {w}/hook.log 2>&1\n",
        augur = augur_bin().display()
    );
    let path = work.join("hook.sh");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The leader's `/v1/control`.
async fn control(c: &LocalCluster) -> anyhow::Result<Value> {
    let leader = c.leader(Duration::from_secs(30)).await?;
    let (code, body) = c.http_get(leader, "/v1/control").await?;
    anyhow::ensure!(code == 200, "/v1/control: {code} {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The value of one series in the leader's `/metrics` (0 when absent).
async fn metric(c: &LocalCluster, series: &str) -> anyhow::Result<f64> {
    let leader = c.leader(Duration::from_secs(30)).await?;
    let (_, text) = c.http_get(leader, "/metrics").await?;
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}

/// Incompressible bytes (the nodes compress what they flush).
fn value(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_short_of_capacity_calls_the_hook_and_the_new_node_takes_the_moves(
) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let hook = write_hook(work.path())?;
    let capacity = CAPACITY.to_string();
    let hook_setting = format!("capacity_hook=\"{}\"", hook.display());
    let c = LocalCluster::start_with(
        3,
        &[
            "--storage",
            "3",
            "--shards",
            "8",
            "--rf",
            "3",
            "--storage-capacity",
            &capacity,
            "--control",
            "capacity_interval_ms=1000",
            "--control",
            "capacity_min_history_ms=600000",
            "--control",
            &hook_setting,
            "--control",
            "capacity_hook_timeout_ms=90000",
            "--control",
            "capacity_hook_cooldown_ms=600000",
        ],
    )
    .await?;
    std::fs::write(
        work.path().join("cluster-dir"),
        c.dir().to_string_lossy().as_bytes(),
    )?;
    let client = c.new_client()?;
    let data = DataClient::new(c.new_client()?).await?;

    // Fill until every node holds FILL of its capacity, as the planner sees it.
    let mut written = 0u64;
    let used = |v: &Value| -> Vec<u64> {
        v["capacity"]["last_round"]["estimate"]["nodes"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["used_bytes"].as_u64()).collect())
            .unwrap_or_default()
    };
    loop {
        let v = control(&c).await?;
        let u = used(&v);
        if u.len() == 3 && u.iter().all(|b| *b as f64 >= FILL * CAPACITY as f64) {
            break;
        }
        anyhow::ensure!(
            written < 4_000,
            "nodes still at {u:?} after {written} writes"
        );
        let results: Vec<_> = stream::iter(written..written + 64)
            .map(|i| {
                let data = data.clone();
                async move { data.put(format!("cap-{i}"), value(i)).await }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for r in results {
            r?;
        }
        written += 64;
        // Heartbeats carry usage every second; rounds run every second.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Settled at the fill: a round after the last write shows headroom, no alarm.
    let before = poll(Duration::from_secs(20), "a round with the fill", || async {
        let v = control(&c).await?;
        let e = &v["capacity"]["last_round"]["estimate"];
        Ok(used(&v)
            .iter()
            .all(|b| *b as f64 >= FILL * CAPACITY as f64)
            .then(|| e.clone()))
    })
    .await?;
    assert_eq!(before["alarm"], false, "{before}");
    assert!(
        before["headroom"].as_f64().unwrap_or(0.0) >= MIN_HEADROOM,
        "{before}"
    );
    assert!(!work.path().join("request.json").exists());

    // Drain node 2: its data must fit on nodes 1 and 3.
    let victim = NodeId(2);
    augurctl(&c, &["node", "drain", "2", "--reason", "capacity test"])?;

    // The hook is called; the alarm shows meanwhile (the script waits for the go-ahead).
    let request_path = work.path().join("request.json");
    let request: Value = poll(Duration::from_secs(30), "the hook's request", || async {
        match std::fs::read_to_string(&request_path) {
            Ok(s) if !s.is_empty() => Ok(serde_json::from_str(&s).ok()),
            _ => Ok(None),
        }
    })
    .await?;
    assert!(
        request["nodes_wanted"].as_u64().unwrap_or(0) >= 1,
        "{request}"
    );
    assert!(
        request["headroom"].as_f64().unwrap_or(1.0) < MIN_HEADROOM,
        "{request}"
    );
    assert_eq!(request["horizon_days"], 30.0, "{request}");
    assert!(
        request["bytes_short"].as_u64().unwrap_or(0) > 0,
        "{request}"
    );
    let at_risk = request["at_risk"].as_array().cloned().unwrap_or_default();
    assert_eq!(at_risk.len(), 1, "{request}");
    assert_eq!(at_risk[0]["node"], 2, "{request}");
    assert_eq!(at_risk[0]["state"], "draining", "{request}");
    assert!(
        request["reason"].as_str().unwrap_or("").contains("node 2"),
        "{request}"
    );
    let env: Value = serde_json::from_str(&std::fs::read_to_string(
        work.path().join("request-env.json"),
    )?)?;
    assert_eq!(
        env, request,
        "the same request on stdin and in the environment"
    );

    let v = control(&c).await?;
    let cap = &v["capacity"];
    assert_eq!(cap["last_round"]["estimate"]["alarm"], true, "{cap}");
    assert_eq!(cap["recorded"]["alarm"], true, "{cap}");
    assert_eq!(cap["calling"], true, "{cap}");
    assert_eq!(metric(&c, "augur_control_capacity_alarm").await?, 1.0);
    assert_eq!(
        metric(&c, "augur_control_capacity_hook_calls_total").await?,
        1.0
    );
    assert!(metric(&c, "augur_control_capacity_headroom").await? < MIN_HEADROOM);
    let status = augurctl(&c, &["status"])?;
    assert!(status.contains("ALARM: capacity:"), "{status}");
    assert!(status.contains("capacity hook last called"), "{status}");

    // Go: node 4 starts, registers, and takes the drained node's replicas.
    std::fs::write(work.path().join("go"), b"")?;
    poll(
        Duration::from_secs(60),
        "node 4 registered and Up",
        || async {
            Ok(nodes(&client)
                .await?
                .get(&NodeId(4))
                .is_some_and(|n| n.state == augur_proto::NodeState::Up)
                .then_some(()))
        },
    )
    .await?;
    poll(
        Duration::from_secs(90),
        "node 2 emptied into node 4",
        || async {
            let all = shards(&client).await?;
            let on = |n: NodeId| {
                all.values()
                    .filter(|s| s.replicas.contains(&n) || s.learners.contains(&n))
                    .count()
            };
            Ok((on(victim) == 0 && on(NodeId(4)) > 0).then_some(()))
        },
    )
    .await?;
    let all = shards(&client).await?;
    assert!(all.values().all(|s| s.replicas.len() == 3), "{all:?}");
    assert_eq!(
        all.values()
            .filter(|s| s.replicas.contains(&NodeId(4)))
            .count(),
        all.len(),
        "every shard had a replica on node 2 (rf 3 on 3 nodes), so each moved to node 4"
    );

    // The hook succeeded; with node 4's capacity the alarm clears, and no second call came.
    poll(Duration::from_secs(30), "the alarm cleared", || async {
        let v = control(&c).await?;
        let cap = &v["capacity"];
        Ok(
            (cap["last_round"]["estimate"]["alarm"] == false && cap["calling"] == false)
                .then(|| cap.clone()),
        )
    })
    .await?;
    let v = control(&c).await?;
    assert_eq!(
        v["capacity"]["last_outcome"]["ok"], true,
        "{}",
        v["capacity"]
    );
    assert_eq!(metric(&c, "augur_control_capacity_alarm").await?, 0.0);
    assert_eq!(
        metric(&c, "augur_control_capacity_hook_calls_total").await?,
        1.0
    );
    assert_eq!(
        metric(&c, "augur_control_capacity_hook_failures_total").await?,
        0.0
    );
    let status = augurctl(&c, &["status"])?;
    assert!(!status.contains("ALARM: capacity"), "{status}");
    Ok(())
}
