//! The data plane's records: creating it, and its shards (storage nodes are [`crate::nodes`]).
//!
//! What is flagged follows the control plane's own view (`/v1/control` on the metadata
//! leader), so both tell the same story: a node is live when Up, Suspect or Draining; a shard
//! is under-replicated when fewer of its replicas are live than the layout's replication
//! factor, has no primary when its primary's node is not live, and has no live replica when
//! none is: it then waits for a replica to return or for `shard force-primary`. Flags need
//! the layout, so a metadata-only cluster (no data plane) shows none.

use crate::output::bytes;
use crate::{cas_report, parse_expect};
use augur_client::Client;
use augur_proto::data::DataCluster;
use augur_proto::{
    Consistency, Key, Node, NodeId, NodeState, Record, Shard, ShardId, ShardState, Table,
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

/// Whether a node in this state serves its replicas.
pub(crate) fn is_live(state: NodeState) -> bool {
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
            let epoch = match (epoch, &current) {
                (Some(e), _) => e,
                (None, Some(s)) => s.epoch.checked_add(1).ok_or_else(|| {
                    anyhow::anyhow!("shard {id} is at epoch {}: give --epoch", s.epoch)
                })?,
                (None, None) => 1,
            };
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
