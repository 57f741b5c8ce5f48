//! `augurctl`: inspect and change an Augur cluster's metadata.
//!
//! Tables for people by default, `--json` for scripts. Exit status 0 on success, 1 on any
//! error, 2 on usage errors; a CAS that lost its race exits 3 so scripts can tell.

use anyhow::{bail, Context};
use augur_client::{CasOutcome, Client, ClientConfig, TlsFiles};
use augur_proto::wire::{Change, WatchEvent};
use augur_proto::{
    Consistency, Key, MemberId, NodeId, Record, Setting, Shard, ShardId, ShardState, Table,
};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "augurctl",
    version,
    about = "Inspect and change an Augur cluster's metadata"
)]
struct Cli {
    /// Cluster file (as written by `augur local up`).
    #[arg(long, env = "AUGUR_CLUSTER", conflicts_with = "endpoints")]
    cluster: Option<PathBuf>,
    /// Metadata endpoints, comma-separated (with --ca, --cert, --key).
    #[arg(long, value_delimiter = ',', requires_all = ["ca", "cert", "key"])]
    endpoints: Vec<String>,
    /// Cluster CA certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every member's view of the cluster.
    Status,
    /// Raft membership.
    #[command(subcommand)]
    Members(MembersCmd),
    /// Shard records.
    #[command(subcommand)]
    Shard(ShardCmd),
    /// Storage-node records.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Cluster settings.
    #[command(subcommand)]
    Setting(SettingCmd),
    /// Print changes as they are applied.
    Watch {
        /// Tables to watch (default: all).
        #[arg(long = "table", value_enum)]
        tables: Vec<TableArg>,
        /// First revision to print (default: from now).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many revisions.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum MembersCmd {
    /// List members.
    List,
    /// Add a metadata node as a learner.
    Add {
        /// Member id.
        #[arg(long)]
        id: MemberId,
        /// Its QUIC address.
        #[arg(long)]
        addr: String,
    },
    /// Promote a learner to voter.
    Promote {
        /// Member id.
        #[arg(long)]
        id: MemberId,
    },
    /// Remove a member.
    Remove {
        /// Member id.
        #[arg(long)]
        id: MemberId,
    },
    /// Hand leadership to a voter.
    TransferLeader {
        /// Member id.
        #[arg(long)]
        to: MemberId,
    },
}

#[derive(Subcommand)]
enum ShardCmd {
    /// Read one shard.
    Get {
        /// Shard id.
        id: ShardId,
        /// Read from any node, possibly stale.
        #[arg(long)]
        serializable: bool,
    },
    /// List shards.
    List,
    /// Compare-and-set a shard's placement.
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
}

#[derive(Subcommand)]
enum NodeCmd {
    /// List storage nodes.
    List,
}

#[derive(Subcommand)]
enum SettingCmd {
    /// Read a setting.
    Get {
        /// Name.
        name: String,
    },
    /// Write a setting (compare-and-set).
    Put {
        /// Name.
        name: String,
        /// Value (UTF-8).
        value: String,
        /// Version it must be at; `absent` to create; `any` for a blind write.
        #[arg(long, default_value = "any")]
        expect: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TableArg {
    Shards,
    Nodes,
    Migrations,
    Settings,
}

impl From<TableArg> for Table {
    fn from(t: TableArg) -> Table {
        match t {
            TableArg::Shards => Table::Shards,
            TableArg::Nodes => Table::Nodes,
            TableArg::Migrations => Table::Migrations,
            TableArg::Settings => Table::Settings,
        }
    }
}

/// `absent` -> None, a number -> Some(version).
fn parse_expect(s: &str) -> anyhow::Result<Option<u64>> {
    match s {
        "absent" => Ok(None),
        v => Ok(Some(v.parse().with_context(|| {
            format!("--expect must be a version number or `absent`, got {v:?}")
        })?)),
    }
}

fn client(cli: &Cli) -> anyhow::Result<Client> {
    let cfg = match (&cli.cluster, cli.endpoints.is_empty()) {
        (Some(path), _) => ClientConfig::from_cluster_file(path)?,
        (None, false) => ClientConfig::new(
            cli.endpoints.clone(),
            TlsFiles {
                ca: cli.ca.clone().context("--ca")?,
                cert: cli.cert.clone().context("--cert")?,
                key: cli.key.clone().context("--key")?,
            },
        ),
        (None, true) => {
            bail!("give --cluster FILE (or AUGUR_CLUSTER) or --endpoints with --ca/--cert/--key")
        }
    };
    Ok(Client::new(cfg)?)
}

fn shard_row(s: &Shard) -> String {
    let replicas: Vec<String> = s.replicas.iter().map(|n| n.to_string()).collect();
    let state = match s.state {
        ShardState::Stable => "stable".to_string(),
        ShardState::Moving(m) => format!("moving({m})"),
    };
    format!(
        "{:<10} {:<20} {:>6} {:>9} {:<14} {:>12}",
        s.id,
        replicas.join(","),
        s.epoch,
        s.version,
        state,
        s.size_bytes
    )
}

const SHARD_HEADER: &str =
    "SHARD      REPLICAS              EPOCH   VERSION STATE                 BYTES";

fn print_event(ev: &WatchEvent, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(ev)?);
        return Ok(());
    }
    for c in &ev.changes {
        match c {
            Change::Put(r) => println!(
                "rev {:<8} PUT    {} (version {})",
                ev.revision,
                r.key(),
                r.version()
            ),
            Change::Delete(k) => println!("rev {:<8} DELETE {}", ev.revision, k),
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let c = client(&cli)?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Status => {
            let mut rows = Vec::new();
            for ep in c.endpoints() {
                rows.push((ep.clone(), c.status(Some(ep)).await));
            }
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(ep, s)| match s {
                        Ok(s) => serde_json::json!({"endpoint": ep, "status": s}),
                        Err(e) => serde_json::json!({"endpoint": ep, "error": e.to_string()}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<22} {:<7} {:<10} {:>5} {:>7} {:>10} {:>10}",
                    "ENDPOINT", "MEMBER", "ROLE", "TERM", "LEADER", "COMMITTED", "APPLIED"
                );
                for (ep, s) in rows {
                    match s {
                        Ok(s) => println!(
                            "{:<22} {:<7} {:<10} {:>5} {:>7} {:>10} {:>10}",
                            ep,
                            s.id,
                            s.role,
                            s.term,
                            s.leader
                                .map(|l| l.id.to_string())
                                .unwrap_or_else(|| "-".into()),
                            s.committed,
                            s.applied
                        ),
                        Err(e) => println!("{ep:<22} unreachable: {e}"),
                    }
                }
            }
        }
        Cmd::Members(m) => match m {
            MembersCmd::List => {
                let members = c.members().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&members)?);
                } else {
                    println!("{:<7} {:<22} ROLE", "MEMBER", "ADDRESS");
                    for m in members {
                        println!(
                            "{:<7} {:<22} {}",
                            m.id,
                            m.addr,
                            if m.voter { "voter" } else { "learner" }
                        );
                    }
                }
            }
            MembersCmd::Add { id, addr } => {
                c.add_learner(id, addr).await?;
                println!("added {id} as a learner");
            }
            MembersCmd::Promote { id } => {
                c.promote(id).await?;
                println!("promoted {id} to voter");
            }
            MembersCmd::Remove { id } => {
                c.remove_member(id).await?;
                println!("removed {id}");
            }
            MembersCmd::TransferLeader { to } => {
                c.transfer_leader(to).await?;
                println!("asked the leader to hand leadership to {to}");
            }
        },
        Cmd::Shard(s) => match s {
            ShardCmd::Get { id, serializable } => {
                let consistency = if serializable {
                    Consistency::Serializable
                } else {
                    Consistency::Linearizable
                };
                let (record, revision) = c.get_with(&Key::Shard(id), consistency).await?;
                match record {
                    Some(Record::Shard(s)) if json => {
                        println!("{}", serde_json::to_string_pretty(&s)?)
                    }
                    Some(Record::Shard(s)) => {
                        println!("{SHARD_HEADER}");
                        println!("{}", shard_row(&s));
                        println!("(read at revision {revision})");
                    }
                    _ => {
                        eprintln!("shard {id} does not exist");
                        return Ok(1);
                    }
                }
            }
            ShardCmd::List => {
                let (records, revision) = c.list(Table::Shards, Consistency::Linearizable).await?;
                let shards: Vec<Shard> = records
                    .into_iter()
                    .filter_map(|r| match r {
                        Record::Shard(s) => Some(s),
                        _ => None,
                    })
                    .collect();
                if json {
                    println!("{}", serde_json::to_string_pretty(&shards)?);
                } else {
                    println!("{SHARD_HEADER}");
                    for s in &shards {
                        println!("{}", shard_row(s));
                    }
                    println!("({} shards, revision {revision})", shards.len());
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
                let epoch =
                    epoch.unwrap_or_else(|| current.as_ref().map(|s| s.epoch + 1).unwrap_or(1));
                let shard = Shard {
                    id,
                    replicas,
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
        },
        Cmd::Node(NodeCmd::List) => {
            let nodes = c.list_nodes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                println!(
                    "{:<6} {:<10} {:>6} {:>14} {:>14} {:<22}",
                    "NODE", "STATE", "RISK", "USED", "CAPACITY", "ADDRESS"
                );
                for n in nodes {
                    println!(
                        "{:<6} {:<10} {:>6.3} {:>14} {:>14} {:<22}",
                        n.id,
                        format!("{:?}", n.state),
                        n.risk.score,
                        n.used_bytes,
                        n.capacity_bytes,
                        n.addrs.join(",")
                    );
                }
            }
        }
        Cmd::Setting(s) => match s {
            SettingCmd::Get { name } => match c.get(&Key::Setting(name.clone())).await? {
                Some(Record::Setting(s)) if json => {
                    println!("{}", serde_json::to_string_pretty(&s)?)
                }
                Some(Record::Setting(s)) => {
                    println!(
                        "{} = {} (version {})",
                        s.name,
                        String::from_utf8_lossy(&s.value),
                        s.version
                    )
                }
                _ => {
                    eprintln!("setting {name} does not exist");
                    return Ok(1);
                }
            },
            SettingCmd::Put {
                name,
                value,
                expect,
            } => {
                let record = Record::Setting(Setting {
                    name,
                    value: value.into_bytes(),
                    version: 0,
                });
                if expect == "any" {
                    let r = c
                        .txn(augur_proto::Txn {
                            compares: vec![],
                            ops: vec![augur_proto::Op::Put(record)],
                        })
                        .await?;
                    println!("written at version {}", r.revision);
                } else {
                    return cas_report(c.cas(record, parse_expect(&expect)?).await, json);
                }
            }
        },
        Cmd::Watch {
            tables,
            from,
            count,
        } => {
            let tables: Vec<Table> = tables.into_iter().map(Into::into).collect();
            let mut stream = c.watch(tables, from);
            let mut seen = 0;
            while let Some(ev) = stream.next().await {
                print_event(&ev?, json)?;
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    break;
                }
            }
        }
    }
    Ok(0)
}

fn cas_report(r: Result<CasOutcome, augur_client::Error>, json: bool) -> anyhow::Result<i32> {
    match r? {
        CasOutcome::Committed { version } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"committed": true, "version": version})
                );
            } else {
                println!("committed at version {version}");
            }
            Ok(0)
        }
        CasOutcome::Conflict { current } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"committed": false, "current_version": current})
                );
            } else {
                println!("conflict: the record is at version {current}");
            }
            Ok(3)
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        match run(cli).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}
