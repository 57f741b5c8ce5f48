//! A storage node's health, read from and injected through its admin endpoint (the address in
//! its node record): `node health ID` and `node inject ID FAULT`.
//!
//! Fault injection is accepted only from the node's own host (its admin port has no
//! authentication), so `inject` is for local clusters, demos and tests.

use crate::output::{age, now_ms};
use augur_client::{admin_http, Client};
use augur_proto::{Key, NodeId, Record};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The node's admin address from its record.
async fn admin_addr(c: &Client, id: NodeId) -> anyhow::Result<SocketAddr> {
    let Some(Record::Node(n)) = c.get(&Key::Node(id)).await? else {
        anyhow::bail!("node {id} is not registered");
    };
    if n.admin.is_empty() {
        anyhow::bail!("node {id} registered no admin address");
    }
    n.admin
        .parse()
        .map_err(|e| anyhow::anyhow!("node {id}'s admin address {:?}: {e}", n.admin))
}

/// `augurctl node inject ID FAULT [--ramp-ms MS]`.
pub async fn inject(
    c: &Client,
    id: NodeId,
    fault: &str,
    ramp_ms: Option<u64>,
    json: bool,
) -> anyhow::Result<i32> {
    let addr = admin_addr(c, id).await?;
    let mut body = serde_json::json!({ "fault": fault });
    if let Some(r) = ramp_ms {
        body["ramp_ms"] = r.into();
    }
    let r = admin_http::post_json(addr, "/v1/health/inject", &body, TIMEOUT).await?;
    let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    if r.status != 200 {
        if !json {
            let msg = v["message"].as_str().unwrap_or(&r.body);
            eprintln!("node {id} refused: {msg}");
        }
        return Ok(1);
    }
    if !json {
        let faults: Vec<&str> = v["faults"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "node {id}: {fault}; active faults: {}",
            if faults.is_empty() {
                "none".to_string()
            } else {
                faults.join(", ")
            }
        );
    }
    Ok(0)
}

fn num(v: &Value, prec: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

/// A risk state as one line: `0.812 node  node:disk_write_lat_z (+1.20)` or `no_model: why`.
fn risk_line(risk: &Value) -> (String, String, String, String) {
    if let Some(s) = risk.get("scored") {
        let reason = s["reasons"].as_array().and_then(|a| a.first()).map_or_else(
            || "-".to_string(),
            |r| {
                format!(
                    "{} ({:+.2})",
                    r[0].as_str().unwrap_or("?"),
                    r[1].as_f64().unwrap_or(0.0)
                )
            },
        );
        return (
            "scored".into(),
            num(&s["score"], 3),
            s["model"].as_str().unwrap_or("-").to_string(),
            reason,
        );
    }
    for state in ["no_model", "pending"] {
        if let Some(s) = risk.get(state) {
            return (
                state.into(),
                "-".into(),
                "-".into(),
                s["reason"].as_str().unwrap_or("").to_string(),
            );
        }
    }
    (
        risk.as_str().unwrap_or("unknown").to_string(),
        "-".into(),
        "-".into(),
        "-".into(),
    )
}

/// `augurctl node health ID`.
pub async fn show(
    c: &Client,
    id: NodeId,
    samples: usize,
    rounds: usize,
    json: bool,
) -> anyhow::Result<i32> {
    let addr = admin_addr(c, id).await?;
    let path = format!("/v1/health?samples={samples}&rounds={rounds}");
    let r = admin_http::get(addr, &path, TIMEOUT).await?;
    if r.status != 200 {
        eprintln!("node {id} answered {}: {}", r.status, r.body);
        return Ok(1);
    }
    let v: Value = serde_json::from_str(&r.body)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let (state, score, model, reason) = risk_line(&v["risk"]);
    println!(
        "node {id}  source {}  risk {state} {score} {model}  {reason}",
        v["source"].as_str().unwrap_or("?")
    );
    println!(
        "models: node: {}; disk: {}",
        v["models"]["node"].as_str().unwrap_or("-"),
        v["models"]["disk"].as_str().unwrap_or("-")
    );
    let faults: Vec<&str> = v["summary"]["faults"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "samples: {} ({} failed collections); injected faults: {}",
        v["summary"]["samples"],
        v["summary"]["collect_errors"],
        if faults.is_empty() {
            "none".to_string()
        } else {
            faults.join(", ")
        }
    );
    let now = now_ms() as i64;
    let ago = |t: &Value| {
        t.as_i64().map_or_else(
            || "-".to_string(),
            |t| age(now.saturating_sub(t).max(0) as u64),
        )
    };
    println!();
    println!(
        "{:>8} {:>5} {:>8} {:>8} {:>5} {:>6} {:>5} {:>6} {:>4}",
        "AGO", "CPU", "READ_MS", "WRITE_MS", "UTIL", "LOSS%", "ERRS", "TEMP_C", "PSU"
    );
    for s in v["samples"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        println!(
            "{:>8} {:>5} {:>8} {:>8} {:>5} {:>6} {:>5} {:>6} {:>4}",
            ago(&s["ts_ms"]),
            num(&s["cpu_util"], 2),
            num(&s["disk_read_lat_ms"], 2),
            num(&s["disk_write_lat_ms"], 2),
            num(&s["disk_util"], 2),
            num(&s["net_loss_pct"], 2),
            s["err_log_count"]
                .as_u64()
                .map_or_else(|| "-".to_string(), |x| x.to_string()),
            num(&s["temp_c"], 1),
            s["psu_ok"]
                .as_bool()
                .map_or("-", |b| if b { "ok" } else { "FAIL" }),
        );
    }
    println!();
    println!(
        "{:>8} {:<9} {:>6} {:<10} REASON",
        "AGO", "STATE", "RISK", "MODEL"
    );
    for p in v["timeline"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let (state, score, model, reason) = risk_line(&p["risk"]);
        println!(
            "{:>8} {:<9} {:>6} {:<10} {reason}",
            ago(&p["at_ms"]),
            state,
            score,
            model
        );
    }
    Ok(0)
}
