//! The health agent and predictor on every storage node, end to end: real `augur storage`
//! processes with the simulated health source (`augur local`'s default), faults injected with
//! `augurctl node inject`, risk and health summaries carried by heartbeats to the metadata
//! leader's `/v1/control` and `/metrics`.
//!
//! When the shipped node model loads, the node with an injected fail-slow disk must come to
//! carry the highest risk at the leader. When it does not (another schema version while the
//! model is being retrained, or a missing file), every node must report the typed `no_model`
//! state, and the rest (samples, faults in the heartbeat's summary) must still work.

use augur_tests::{poll, LocalCluster};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn augurctl_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AUGURCTL_BIN") {
        return PathBuf::from(p);
    }
    let bin = augur_tests::augur_bin().with_file_name("augurctl");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release -p augur-client) or set AUGURCTL_BIN",
        bin.display()
    );
    bin
}

/// Runs `augurctl --cluster FILE ARGS`: (exit status, stdout, stderr).
fn augurctl(c: &LocalCluster, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(augurctl_bin())
        .arg("--cluster")
        .arg(c.dir().join("cluster.toml"))
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The leader's `/v1/control` nodes, by id, once it leads.
async fn control_nodes(c: &LocalCluster) -> anyhow::Result<Option<Vec<Value>>> {
    let leader = c.leader(Duration::from_secs(20)).await?;
    let Ok((200, body)) = c.http_get(leader, "/v1/control").await else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&body)?;
    if v["leading"] != Value::Bool(true) {
        return Ok(None);
    }
    Ok(v["nodes"].as_array().cloned())
}

fn risk_state(node: &Value) -> Option<&str> {
    let risk = &node["health"]["risk"];
    if let Some(s) = risk.as_str() {
        return Some(s);
    }
    risk.as_object()
        .and_then(|o| o.keys().next())
        .map(String::as_str)
}

fn score(node: &Value) -> Option<f64> {
    node["health"]["risk"]["scored"]["score"].as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_fail_slow_raises_that_nodes_risk_at_the_leader_or_no_model_is_reported(
) -> anyhow::Result<()> {
    let c = LocalCluster::start_with(3, &["--storage", "3", "--shards", "8", "--rf", "3"]).await?;

    // Every node's health reaches the leader with a decided risk state.
    let nodes = poll(
        Duration::from_secs(60),
        "every node's risk state at the leader",
        || async {
            let Some(nodes) = control_nodes(&c).await? else {
                return Ok(None);
            };
            let decided = nodes.len() == 3
                && nodes.iter().all(|n| {
                    n["health"]["source"] == "simulated"
                        && matches!(risk_state(n), Some("no_model" | "pending" | "scored"))
                });
            Ok(decided.then_some(nodes))
        },
    )
    .await?;
    let model_loaded = nodes.iter().all(|n| risk_state(n) != Some("no_model"));

    // A bad fault name is a typed refusal that changes nothing.
    let (code, _, err) = augurctl(&c, &["node", "inject", "2", "melt"])?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown fault"), "{err}");
    let (code, out, err) = augurctl(&c, &["--json", "node", "health", "2"])?;
    assert_eq!(code, 0, "{err}");
    let h: Value = serde_json::from_str(&out)?;
    assert_eq!(h["summary"]["faults"], serde_json::json!([]), "{h}");
    assert!(!h["samples"].as_array().is_none_or(Vec::is_empty), "{h}");
    assert!(!h["timeline"].as_array().is_none_or(Vec::is_empty), "{h}");

    // Fail-slow on node 2, at full severity at once.
    let (code, out, err) = augurctl(&c, &["node", "inject", "2", "fail-slow", "--ramp-ms", "0"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("fail-slow"), "{out}");

    // The heartbeat's summary carries the fault to the leader.
    poll(
        Duration::from_secs(30),
        "node 2's fault in the leader's view",
        || async {
            let Some(nodes) = control_nodes(&c).await? else {
                return Ok(None);
            };
            let has = nodes.iter().any(|n| {
                n["id"] == 2
                    && n["health"]["summary"]["faults"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == "fail-slow"))
            });
            Ok(has.then_some(()))
        },
    )
    .await?;

    let leader = c.leader(Duration::from_secs(20)).await?;
    if model_loaded {
        // The faulty node's risk rises above every other node's.
        poll(
            Duration::from_secs(180),
            "node 2's risk above the others'",
            || async {
                let Some(nodes) = control_nodes(&c).await? else {
                    return Ok(None);
                };
                let s = |id: u64| nodes.iter().find(|n| n["id"] == id).and_then(score);
                let (Some(s2), Some(s1), Some(s3)) = (s(2), s(1), s(3)) else {
                    return Ok(None);
                };
                Ok((s2 > s1 && s2 > s3).then_some(()))
            },
        )
        .await?;
        let (_, metrics) = c.http_get(leader, "/metrics").await?;
        assert!(metrics.contains("augur_node_risk{node=\"2\"}"), "{metrics}");
    } else {
        // No model: every node says so, typed, with the reason; no risk series is exported.
        let nodes = control_nodes(&c).await?.unwrap_or_default();
        assert_eq!(nodes.len(), 3);
        for n in &nodes {
            assert_eq!(risk_state(n), Some("no_model"), "{n}");
            let reason = n["health"]["risk"]["no_model"]["reason"]
                .as_str()
                .unwrap_or("");
            assert!(reason.contains("node model"), "{reason}");
        }
        let (_, metrics) = c.http_get(leader, "/metrics").await?;
        assert!(!metrics.contains("augur_node_risk{"), "{metrics}");
        let (code, out, err) = augurctl(&c, &["node", "list"])?;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("TOP REASON"), "{out}");
    }

    // Sample batches (every 30 s) reach the leader, which keeps them bounded.
    poll(
        Duration::from_secs(90),
        "health samples held by the leader",
        || async {
            let Some(nodes) = control_nodes(&c).await? else {
                return Ok(None);
            };
            let all = nodes.len() == 3
                && nodes
                    .iter()
                    .all(|n| n["samples_held"].as_u64().is_some_and(|k| k > 0));
            Ok(all.then_some(()))
        },
    )
    .await?;

    // Clearing removes the fault.
    let (code, out, err) = augurctl(&c, &["node", "inject", "2", "clear"])?;
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = augurctl(&c, &["--json", "node", "health", "2"])?;
    let h: Value = serde_json::from_str(&out)?;
    assert_eq!(h["summary"]["faults"], serde_json::json!([]), "{h}");
    Ok(())
}
