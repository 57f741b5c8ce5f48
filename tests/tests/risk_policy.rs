//! The risk policy on the metadata leader, end to end: real `augur` processes with the
//! simulated health source, faults injected with `augurctl node inject`, decisions read back
//! from the node records (`augurctl node list --json`), `/v1/control`, `/metrics` and
//! `augurctl status`.
//!
//! - a node with an injected fail-slow disk is drained by the policy, with its reason;
//! - an operator's undrain holds while the fault lasts; cordon and uncordon round-trip; an
//!   operator's drain and undrain; typed refusals;
//! - faults on two more nodes trip the storm guard: no new automated drain, the alarm in
//!   status and metrics.
//!
//! The policy's rounds run every second here (`--control risk_interval_ms=1000`) over scoring
//! rounds of 5 s (`augur local`'s nodes), so k = 2 of n = 3 rounds take about 10 s. When the
//! shipped model does not load (it is being retrained, say), no risk is scored: the operator
//! commands are still checked, the policy's part is skipped with a note.

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

/// `augurctl ARGS`, which must succeed: its stdout.
fn ok(c: &LocalCluster, args: &[&str]) -> anyhow::Result<String> {
    let (code, out, err) = augurctl(c, args)?;
    anyhow::ensure!(code == 0, "augurctl {args:?} exited {code}: {out}{err}");
    Ok(out)
}

/// Every node record, by id, as `augurctl --json node list` prints it.
fn nodes(c: &LocalCluster) -> anyhow::Result<Vec<Value>> {
    let v: Value = serde_json::from_str(&ok(c, &["--json", "node", "list"])?)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn node(all: &[Value], id: u64) -> Value {
    all.iter()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// (state, origin) of a node record.
fn state(n: &Value) -> (String, String) {
    (
        n["state"].as_str().unwrap_or("").to_string(),
        n["cause"]["origin"].as_str().unwrap_or("").to_string(),
    )
}

/// The value of one series in a Prometheus text exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// The leader's `/v1/control`, once it leads.
async fn control(c: &LocalCluster) -> anyhow::Result<Option<Value>> {
    let leader = c.leader(Duration::from_secs(20)).await?;
    let Ok((200, body)) = c.http_get(leader, "/v1/control").await else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&body)?;
    Ok((v["leading"] == Value::Bool(true)).then_some(v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_drains_a_failing_node_operators_override_and_a_storm_freezes_moves(
) -> anyhow::Result<()> {
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
            // Any node at risk is drained (the simulated fail-slow scores ~0.8).
            "--control",
            "policy.drain=0.5",
            // Two nodes at risk at once are a storm.
            "--control",
            "policy.storm_min_nodes=1",
        ],
    )
    .await?;

    // Every node's risk reaches the leader in a decided state.
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
    let model_loaded = view["nodes"].as_array().is_some_and(|ns| {
        ns.iter()
            .all(|n| n["health"]["risk"].get("scored").is_some())
    });
    assert_eq!(view["risk"]["predict"], true, "{}", view["risk"]);

    if model_loaded {
        // Fail-slow on node 2: watched, then drained by the policy, with its reason.
        ok(&c, &["node", "inject", "2", "fail-slow", "--ramp-ms", "0"])?;
        let n2 = poll(
            Duration::from_secs(90),
            "node 2 drained by the policy",
            || async {
                let n = node(&nodes(&c)?, 2);
                Ok((state(&n) == ("Draining".into(), "Policy".into())).then_some(n))
            },
        )
        .await?;
        let reason = n2["cause"]["reason"].as_str().unwrap_or("");
        assert!(reason.contains("at risk"), "{n2}");
        assert!(n2["cause"]["risk"].as_f64().unwrap_or(0.0) >= 0.5, "{n2}");
        assert_eq!(n2["cause"]["at_risk"], true, "{n2}");
        for id in [1, 3, 4] {
            assert_eq!(state(&node(&nodes(&c)?, id)).0, "Up", "node {id}");
        }
        let leader = c.leader(Duration::from_secs(20)).await?;
        let (_, metrics) = c.http_get(leader, "/metrics").await?;
        assert!(
            metric(
                &metrics,
                "augur_control_risk_decisions_total{decision=\"drain\"}"
            ) >= 1.0,
            "{metrics}"
        );
        assert!(
            metrics.contains("augur_control_storm_frozen 0"),
            "{metrics}"
        );
        assert!(metrics.contains("augur_node_risk{node=\"2\"}"), "{metrics}");
        let (_, table, _) = augurctl(&c, &["node", "list"])?;
        assert!(table.contains("node 2: Draining by policy"), "{table}");

        // The operator undrains it: Up, and the policy leaves it so while the fault lasts.
        let out = ok(&c, &["node", "undrain", "2", "--reason", "known slow disk"])?;
        assert!(out.contains("Up"), "{out}");
        let undrained_at = control(&c).await?.map_or(0, |v| {
            v["risk"]["last_round"]["at_ms"].as_u64().unwrap_or(0)
        });
        poll(
            Duration::from_secs(30),
            "three policy rounds after the undrain",
            || async {
                let Some(v) = control(&c).await? else {
                    return Ok(None);
                };
                let at = v["risk"]["last_round"]["at_ms"].as_u64().unwrap_or(0);
                Ok((at > undrained_at + 3_000).then_some(()))
            },
        )
        .await?;
        let n2 = node(&nodes(&c)?, 2);
        assert_eq!(state(&n2), ("Up".into(), "Operator".into()), "{n2}");
        assert_eq!(n2["cause"]["reason"], "known slow disk");
    } else {
        eprintln!("no model loads: the risk policy's part is skipped (operator commands only)");
    }

    // Cordon and uncordon round-trip, idempotently; the state is not touched.
    let out = ok(&c, &["node", "cordon", "1"])?;
    assert!(out.contains("cordoned"), "{out}");
    let out = ok(&c, &["node", "cordon", "1"])?;
    assert!(out.contains("unchanged"), "{out}");
    let n1 = node(&nodes(&c)?, 1);
    assert_eq!(
        (n1["cordoned"].clone(), state(&n1).0),
        (Value::Bool(true), "Up".into())
    );
    let (_, table, _) = augurctl(&c, &["node", "list"])?;
    assert!(table.contains("CORDON"), "{table}");
    ok(&c, &["node", "uncordon", "1"])?;
    assert_eq!(node(&nodes(&c)?, 1)["cordoned"], false);

    // An operator's drain and undrain.
    ok(&c, &["node", "drain", "3", "--reason", "disk swap"])?;
    let n3 = node(&nodes(&c)?, 3);
    assert_eq!(state(&n3), ("Draining".into(), "Operator".into()), "{n3}");
    assert_eq!(n3["cause"]["reason"], "disk swap");
    ok(&c, &["node", "undrain", "3"])?;
    assert_eq!(state(&node(&nodes(&c)?, 3)).0, "Up");

    // Typed refusals change nothing.
    let (code, _, err) = augurctl(&c, &["node", "drain", "99"])?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not registered"), "{err}");
    let (code, _, err) = augurctl(&c, &["node", "cordon", "0"])?;
    assert_ne!(code, 0, "{err}");

    if model_loaded {
        // Fail-slow on two more nodes: with node 2 still at risk that is three at once, over
        // the guard's limit of one. Neither new node may be drained; the guard's alarm shows.
        ok(&c, &["node", "inject", "3", "fail-slow", "--ramp-ms", "0"])?;
        ok(&c, &["node", "inject", "4", "fail-slow", "--ramp-ms", "0"])?;
        let v = poll(
            Duration::from_secs(90),
            "the storm guard to trip",
            || async {
                let all = nodes(&c)?;
                for id in [3, 4] {
                    let n = node(&all, id);
                    anyhow::ensure!(state(&n).0 != "Draining", "node {id} drained: {n}");
                }
                let Some(v) = control(&c).await? else {
                    return Ok(None);
                };
                Ok((v["storm"]["frozen"] == true).then_some(v))
            },
        )
        .await?;
        let alarm = v["storm"]["alarm"].as_str().unwrap_or("");
        assert!(alarm.contains("storm guard"), "{v}");
        let flagged = v["storm"]["flagged"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(flagged.len() >= 2, "{v}");
        let (code, out, err) = augurctl(&c, &["status"])?;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("ALARM: storm guard"), "{out}");
        let leader = c.leader(Duration::from_secs(20)).await?;
        let (_, metrics) = c.http_get(leader, "/metrics").await?;
        assert!(
            metrics.contains("augur_control_storm_frozen 1"),
            "{metrics}"
        );
        for id in [3, 4] {
            assert_ne!(state(&node(&nodes(&c)?, id)).0, "Draining", "node {id}");
        }
    }
    Ok(())
}
