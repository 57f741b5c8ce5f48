//! The data plane's records: creating it, shards, storage nodes.
//!
//! What is flagged follows the control plane's own view (`/v1/control` on the metadata
//! leader), so both tell the same story: a node is live when Up, Suspect or Draining; a shard
//! is under-replicated when fewer of its replicas are live than the layout's replication
//! factor, has no primary when its primary's node is not live, and has no live replica when
//! none is: it then waits for a replica to return or for `shard force-primary`. Flags need
//! the layout, so a metadata-only cluster (no data plane) shows none.

use crate::output::{age, bytes, now_ms};
use crate::{cas_report, parse_expect};
use augur_client::{Client, NodeCommand, NodeCommandError, NodeCommandOutcome};
use augur_proto::data::DataCluster;
use augur_proto::{
    Consistency, Key, Node, NodeId, NodeState, Record, Shard, ShardId, ShardState, StateOrigin,
    Table,
};
use clap::Subcommand;
use std::collections::BTreeMap;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Create the data plane: its layout and every shard's placement over the Up storage
    /// nodes (once; asking again with the same layout completes an interrupted creation).
    Init {
        /// Shards keys hash to (fixed forever).
        #[arg(long, default_value_t = 256)]
        shards: u32,
        /// Replicas per shard (1..=5).
        #[arg(long, default_value_t = 3)]
        rf: u32,
        /// Seconds (at most a day) to wait for the leader to write every shard record.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout: u64,
    },
}

#[derive(Subcommand)]
pub enum ShardCmd {
    /// Read one shard: replicas with their nodes' states, learners, epoch, flags.
    Get {
        /// Shard id.
        id: ShardId,
        /// Read from any node, possibly stale.
        #[arg(long)]
        serializable: bool,
    },
    /// List shards, flagging under-replicated ones and those without a primary.
    List {
        /// Only shards with a flag.
        #[arg(long)]
        problems: bool,
    },
    /// Compare-and-set a shard's placement (by hand; the control plane normally does this).
    Cas {
        /// Shard id.
        #[arg(long)]
        id: ShardId,
        /// Replicas, primary first, comma-separated node ids.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<NodeId>,
        /// Epoch to write (default: current + 1, or 1 for a new shard).
        #[arg(long)]
        epoch: Option<u64>,
        /// Version the shard must be at; `absent` to create.
        #[arg(long)]
        expect: String,
    },
    /// Make a replica the primary of a shard none of whose replicas is alive. Writes that
    /// only the dead replicas acknowledged may be lost: an operator's explicit choice.
    ForcePrimary {
        /// Shard id.
        #[arg(long)]
        id: ShardId,
        /// The replica's node.
        #[arg(long)]
        node: NodeId,
    },
}

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

/// Whether a node in this state serves its replicas.
fn is_live(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Up | NodeState::Suspect | NodeState::Draining
    )
}

/// The records the flags are computed from.
struct View {
    layout: Option<DataCluster>,
    nodes: BTreeMap<NodeId, Node>,
}

impl View {
    async fn read(c: &Client) -> anyhow::Result<View> {
        let layout = c.data_layout().await?;
        let nodes = c
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| (n.id, n))
            .collect();
        Ok(View { layout, nodes })
    }

    fn live(&self, n: NodeId) -> bool {
        self.nodes.get(&n).is_some_and(|n| is_live(n.state))
    }

    fn flags(&self, s: &Shard) -> Vec<&'static str> {
        let Some(layout) = self.layout else {
            return vec![];
        };
        let live = s.replicas.iter().filter(|n| self.live(**n)).count();
        let mut flags = Vec::new();
        if live < layout.rf as usize {
            flags.push("under-replicated");
        }
        if s.replicas.first().is_none_or(|p| !self.live(*p)) {
            flags.push("no-primary");
        }
        if live == 0 {
            flags.push("no-live-replica");
        }
        flags
    }

    fn state(&self, n: NodeId) -> String {
        self.nodes
            .get(&n)
            .map(|n| format!("{:?}", n.state))
            .unwrap_or_else(|| "unregistered".into())
    }
}

fn ids(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "-".into();
    }
    let v: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    v.join(",")
}

fn state_name(s: ShardState) -> String {
    match s {
        ShardState::Stable => "stable".to_string(),
        ShardState::Moving(m) => format!("moving({m})"),
    }
}

const SHARD_HEADER: &str =
    "SHARD    PRIMARY REPLICAS         LEARNERS     EPOCH   VERSION STATE            BYTES  FLAGS";

fn shard_row(s: &Shard, flags: &[&str]) -> String {
    format!(
        "{:<8} {:>7} {:<16} {:<12} {:>5} {:>9} {:<10} {:>11}  {}",
        s.id,
        s.replicas
            .first()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into()),
        ids(&s.replicas),
        ids(&s.learners),
        s.epoch,
        s.version,
        state_name(s.state),
        bytes(s.size_bytes),
        flags.join(",")
    )
}

/// A shard as JSON: the record's fields and its flags.
fn shard_json(s: &Shard, flags: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(s)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("flags".into(), flags.into());
    }
    Ok(v)
}

/// `augurctl cluster ...`.
pub async fn cluster(c: &Client, cmd: ClusterCmd, json: bool) -> anyhow::Result<i32> {
    let ClusterCmd::Init {
        shards,
        rf,
        timeout,
    } = cmd;
    let layout = DataCluster { shards, rf };
    c.init_data_plane(layout, std::time::Duration::from_secs(timeout))
        .await?;
    if json {
        println!("{}", serde_json::json!({ "shards": shards, "rf": rf }));
    } else {
        println!("data plane created: {shards} shards, replication factor {rf}");
    }
    Ok(0)
}

/// `augurctl shard ...`.
pub async fn shard(c: &Client, cmd: ShardCmd, json: bool) -> anyhow::Result<i32> {
    match cmd {
        ShardCmd::Get { id, serializable } => {
            let consistency = if serializable {
                Consistency::Serializable
            } else {
                Consistency::Linearizable
            };
            let (record, revision) = c.get_with(&Key::Shard(id), consistency).await?;
            let Some(Record::Shard(s)) = record else {
                eprintln!("shard {id} does not exist");
                return Ok(1);
            };
            let view = View::read(c).await?;
            let flags = view.flags(&s);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&shard_json(&s, &flags)?)?
                );
                return Ok(0);
            }
            println!("{SHARD_HEADER}");
            println!("{}", shard_row(&s, &flags));
            let describe = |nodes: &[NodeId]| -> String {
                let v: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("{n} ({})", view.state(*n)))
                    .collect();
                if v.is_empty() {
                    "-".into()
                } else {
                    v.join(", ")
                }
            };
            println!("replicas: {}", describe(&s.replicas));
            println!("learners: {}", describe(&s.learners));
            println!("(read at revision {revision})");
        }
        ShardCmd::List { problems } => {
            let (records, revision) = c.list(Table::Shards, Consistency::Linearizable).await?;
            let view = View::read(c).await?;
            let shards: Vec<(Shard, Vec<&str>)> = records
                .into_iter()
                .filter_map(|r| match r {
                    Record::Shard(s) => Some(s),
                    _ => None,
                })
                .map(|s| {
                    let f = view.flags(&s);
                    (s, f)
                })
                .collect();
            let count = |flag: &str| shards.iter().filter(|(_, f)| f.contains(&flag)).count();
            let (under, headless, stuck) = (
                count("under-replicated"),
                count("no-primary"),
                count("no-live-replica"),
            );
            let shown = shards.iter().filter(|(_, f)| !problems || !f.is_empty());
            if json {
                let v = shown
                    .map(|(s, f)| shard_json(s, f))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            println!("{SHARD_HEADER}");
            for (s, f) in shown {
                println!("{}", shard_row(s, f));
            }
            match view.layout {
                Some(l) => println!(
                    "({} shards at rf {}: {under} under-replicated, {headless} without a \
                     primary, {stuck} without a live replica; revision {revision})",
                    shards.len(),
                    l.rf
                ),
                None => println!(
                    "({} shards, no data plane created; revision {revision})",
                    shards.len()
                ),
            }
            if stuck > 0 {
                println!(
                    "shards without a live replica wait for one to return, or for \
                     `augurctl shard force-primary --id S --node N` (may lose writes)"
                );
            }
        }
        ShardCmd::Cas {
            id,
            replicas,
            epoch,
            expect,
        } => {
            let expected = parse_expect(&expect)?;
            let current = c.get_shard(id).await?;
            let epoch = epoch.unwrap_or_else(|| current.as_ref().map(|s| s.epoch + 1).unwrap_or(1));
            let shard = Shard {
                id,
                replicas,
                learners: current
                    .as_ref()
                    .map(|s| s.learners.clone())
                    .unwrap_or_default(),
                epoch,
                version: 0,
                state: current
                    .as_ref()
                    .map(|s| s.state)
                    .unwrap_or(ShardState::Stable),
                size_bytes: current.as_ref().map(|s| s.size_bytes).unwrap_or(0),
                crc64: current.as_ref().map(|s| s.crc64).unwrap_or(0),
            };
            return cas_report(c.cas(Record::Shard(shard), expected).await, json);
        }
        ShardCmd::ForcePrimary { id, node } => {
            c.force_primary(id, node).await?;
            if json {
                println!("{}", serde_json::json!({"shard": id, "primary": node}));
            } else {
                println!("shard {id}: node {node} is its primary now (forced)");
            }
        }
    }
    Ok(0)
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
    }
    if let Ok(storm) = c.storm_guard().await {
        if storm.frozen {
            println!(
                "ALARM: {}",
                storm
                    .alarm
                    .as_deref()
                    .unwrap_or("storm guard: automated moves frozen")
            );
        }
    }
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
