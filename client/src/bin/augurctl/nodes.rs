//! Storage nodes: the registry as operators read it (`node list`), the operator's state
//! changes (drain, cordon and their undoing), and the health agent's samples and faults.
//! Liveness is judged as for shards ([`crate::shards`]): Up, Suspect and Draining serve.

use crate::cas_report;
use crate::output::{age, bytes, now_ms};
use crate::shards::is_live;
use augur_client::{Client, NodeCommand, NodeCommandError, NodeCommandOutcome};
use augur_proto::{Consistency, Key, Node, NodeId, NodeState, Record, Shard, StateOrigin, Table};
use clap::Subcommand;
use std::collections::BTreeMap;

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List storage nodes: state (and who set it), cordon, risk and its top reasons,
    /// capacity, use, shards and primaries held, heartbeat age; then why each node not
    /// plainly Up is in its state.
    List,
    /// Empty a node: its replicas move elsewhere (sticky: the risk policy never undrains an
    /// operator's drain).
    Drain {
        /// Node id.
        id: NodeId,
        /// Why, recorded on the node.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop emptying a node (drained by an operator or by the risk policy): back to Up; its
    /// unfinished moves are cancelled.
    Undrain {
        /// Node id.
        id: NodeId,
        /// Why, recorded on the node.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Place no new replicas on a node (nothing is moved off it).
    Cordon {
        /// Node id.
        id: NodeId,
    },
    /// Let replicas be placed on a cordoned node again.
    Uncordon {
        /// Node id.
        id: NodeId,
    },
    /// Mark a node Removed (for a node whose data is gone, so it can join again as new).
    /// Refused for a live node (Up, Suspect, Draining) that still holds replicas.
    Remove {
        /// Node id.
        #[arg(long)]
        id: NodeId,
    },
    /// Inject a fault into a node's simulated health source (`--health-source simulated`),
    /// through its admin endpoint (accepted only from the node's own host), or clear them.
    Inject {
        /// Node id.
        id: NodeId,
        /// fail-slow, error-burst, thermal, psu-flap, packet-loss, sudden-death or clear.
        fault: String,
        /// Milliseconds over which the fault ramps to full severity (default: the node's
        /// `[health] inject_ramp_ms`).
        #[arg(long)]
        ramp_ms: Option<u64>,
    },
    /// A node's health from its admin endpoint: the latest risk (or why there is none),
    /// recent samples and the risk timeline.
    Health {
        /// Node id.
        id: NodeId,
        /// Recent samples to show.
        #[arg(long, default_value_t = 12)]
        samples: usize,
        /// Scoring rounds to show.
        #[arg(long, default_value_t = 12)]
        rounds: usize,
    },
}

/// `augurctl node ...`.
pub async fn node(c: &Client, cmd: NodeCmd, json: bool) -> anyhow::Result<i32> {
    match cmd {
        NodeCmd::List => node_list(c, json).await,
        NodeCmd::Remove { id } => {
            let Some(Record::Node(mut n)) = c.get(&Key::Node(id)).await? else {
                eprintln!("node {id} is not registered");
                return Ok(1);
            };
            if is_live(n.state) {
                let held = c
                    .list_shards()
                    .await?
                    .values()
                    .filter(|s| s.replicas.contains(&id) || s.learners.contains(&id))
                    .count();
                if held > 0 {
                    // The control plane treats a Removed node as gone at once: removing one
                    // that may still serve under its lease would put a second primary beside it.
                    eprintln!(
                        "node {id} is {:?} and holds {held} replica(s); a live node may still be serving them. \
                         Drain it first (`augurctl node drain {id}`), or stop it and wait until it is declared Down",
                        n.state
                    );
                    return Ok(1);
                }
            }
            let version = n.version;
            n.state = NodeState::Removed;
            n.state_since_ms = now_ms();
            n.drain_when_back = None;
            n.undrain_when_back = None;
            cas_report(c.cas(Record::Node(n), Some(version)).await, json)
        }
        NodeCmd::Drain { id, reason } => {
            node_command(c, id, NodeCommand::Drain, reason.as_deref(), json).await
        }
        NodeCmd::Undrain { id, reason } => {
            node_command(c, id, NodeCommand::Undrain, reason.as_deref(), json).await
        }
        NodeCmd::Cordon { id } => node_command(c, id, NodeCommand::Cordon, None, json).await,
        NodeCmd::Uncordon { id } => node_command(c, id, NodeCommand::Uncordon, None, json).await,
        NodeCmd::Inject { id, fault, ramp_ms } => {
            crate::health::inject(c, id, &fault, ramp_ms, json).await
        }
        NodeCmd::Health {
            id,
            samples,
            rounds,
        } => crate::health::show(c, id, samples, rounds, json).await,
    }
}

/// `augurctl node drain|undrain|cordon|uncordon ID`: prints the node's state afterwards. A
/// refusal (unknown node, a Down or Removed node, undrain of a node not draining) is an error
/// naming why; a write whose outcome is unknown exits 4 like any other.
async fn node_command(
    c: &Client,
    id: NodeId,
    cmd: NodeCommand,
    reason: Option<&str>,
    json: bool,
) -> anyhow::Result<i32> {
    let outcome = match c.node_command(id, cmd, reason).await {
        Ok(o) => o,
        Err(NodeCommandError::Client(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    };
    let (n, changed) = match &outcome {
        NodeCommandOutcome::Changed(n) => (n, true),
        NodeCommandOutcome::Unchanged(n) => (n, false),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "node": n.id,
                "command": cmd.name(),
                "changed": changed,
                "state": format!("{:?}", n.state),
                "origin": format!("{:?}", n.cause.origin),
                "cordoned": n.cordoned,
                "version": n.version,
            })
        );
    } else {
        println!(
            "node {}: {:?}{} ({}){}",
            n.id,
            n.state,
            if n.cordoned { ", cordoned" } else { "" },
            origin_name(n.cause.origin),
            if changed { "" } else { " (unchanged)" }
        );
    }
    Ok(0)
}

/// Who set a node's state, for tables.
fn origin_name(o: StateOrigin) -> &'static str {
    match o {
        StateOrigin::Registered => "registered",
        StateOrigin::Liveness => "liveness",
        StateOrigin::Policy => "policy",
        StateOrigin::Operator => "operator",
    }
}

/// Per node: replicas held, primaries held, learner copies in progress.
fn holdings(shards: &[Shard]) -> BTreeMap<NodeId, (usize, usize, usize)> {
    let mut m: BTreeMap<NodeId, (usize, usize, usize)> = BTreeMap::new();
    for s in shards {
        for (i, n) in s.replicas.iter().enumerate() {
            let e = m.entry(*n).or_default();
            e.0 += 1;
            if i == 0 {
                e.1 += 1;
            }
        }
        for n in &s.learners {
            m.entry(*n).or_default().2 += 1;
        }
    }
    m
}

/// A node's top reasons (at most three), `feature (+contribution)`.
fn top_reasons(n: &Node) -> String {
    if n.risk.top_features.is_empty() {
        return "-".into();
    }
    n.risk
        .top_features
        .iter()
        .take(3)
        .map(|(f, c)| format!("{f} ({c:+.2})"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn node_list(c: &Client, json: bool) -> anyhow::Result<i32> {
    let nodes = c.list_nodes().await?;
    let (records, _) = c.list(Table::Shards, Consistency::Linearizable).await?;
    let shards: Vec<Shard> = records
        .into_iter()
        .filter_map(|r| match r {
            Record::Shard(s) => Some(s),
            _ => None,
        })
        .collect();
    let held = holdings(&shards);
    let now = now_ms();
    // The record's heartbeat time is written by the metadata leader when the node registers
    // and when its usage changes, not on every heartbeat: an age is an upper bound.
    let heartbeat_age =
        |n: &Node| (n.last_heartbeat_ms > 0).then(|| now.saturating_sub(n.last_heartbeat_ms));
    if json {
        let v = nodes
            .iter()
            .map(|n| {
                let (replicas, primaries, learning) = held.get(&n.id).copied().unwrap_or_default();
                let mut v = serde_json::to_value(n)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("shards".into(), replicas.into());
                    o.insert("primaries".into(), primaries.into());
                    o.insert("learning".into(), learning.into());
                    o.insert("heartbeat_age_ms".into(), heartbeat_age(n).into());
                }
                Ok(v)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:<6} {:<9} {:<10} {:<6} {:>11} {:>11} {:>6} {:>9} {:>8} {:>9} {:<6} {:>6} {:<44} {:<22}",
        "NODE",
        "STATE",
        "BY",
        "CORDON",
        "CAPACITY",
        "USED",
        "SHARDS",
        "PRIMARIES",
        "LEARNING",
        "HEARTBEAT",
        "RACK",
        "RISK",
        "TOP REASONS",
        "ADDRESS"
    );
    for n in &nodes {
        let (replicas, primaries, learning) = held.get(&n.id).copied().unwrap_or_default();
        println!(
            "{:<6} {:<9} {:<10} {:<6} {:>11} {:>11} {:>6} {:>9} {:>8} {:>9} {:<6} {:>6} {:<44} {:<22}",
            n.id,
            format!("{:?}", n.state),
            origin_name(n.cause.origin),
            if n.cordoned { "yes" } else { "-" },
            bytes(n.capacity_bytes),
            bytes(n.used_bytes),
            replicas,
            primaries,
            learning,
            heartbeat_age(n).map(age).unwrap_or_else(|| "-".into()),
            if n.rack.is_empty() { "-" } else { &n.rack },
            if n.risk.model.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3}", n.risk.score)
            },
            top_reasons(n),
            n.addrs.join(",")
        );
    }
    for n in &nodes {
        let plain = n.state == NodeState::Up
            && matches!(
                n.cause.origin,
                StateOrigin::Registered | StateOrigin::Liveness
            );
        if !plain && !n.cause.reason.is_empty() {
            println!(
                "node {}: {:?} by {} (risk {:.3}): {}",
                n.id,
                n.state,
                origin_name(n.cause.origin),
                n.cause.risk,
                n.cause.reason
            );
        }
        if let Some(drain) = &n.drain_when_back {
            println!(
                "node {}: drains again when it returns ({} drain: {}); `augurctl node undrain {}` drops that",
                n.id,
                origin_name(drain.origin),
                drain.reason,
                n.id
            );
        }
        if let Some(undrain) = &n.undrain_when_back {
            println!(
                "node {}: the operator's undrain holds again when its heartbeats resume ({})",
                n.id, undrain.reason
            );
        }
    }
    crate::output::storm_alarm(c).await;
    let unknown: Vec<String> = held
        .keys()
        .filter(|id| !nodes.iter().any(|n| n.id == **id))
        .map(|id| id.to_string())
        .collect();
    if !unknown.is_empty() {
        println!("shards name unregistered node(s): {}", unknown.join(","));
    }
    Ok(0)
}
