//! Metadata commands: status, bootstrap, membership, settings, watch.

use crate::{cas_report, parse_expect};
use augur_client::Client;
use augur_proto::wire::{Change, ClusterStatus, WatchEvent};
use augur_proto::{Key, MemberId, Record, Setting, Table};
use clap::{Subcommand, ValueEnum};
use futures::StreamExt;

#[derive(Subcommand)]
pub enum MembersCmd {
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
pub enum SettingCmd {
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
pub enum TableArg {
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

/// One member in `augurctl status --json`.
#[derive(serde::Serialize)]
struct StatusRow<'a> {
    endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a ClusterStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `augurctl status`: every configured member's view.
pub async fn status(c: &Client, json: bool) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for ep in c.endpoints() {
        rows.push((ep.clone(), c.status(Some(ep)).await));
    }
    if json {
        // Serialized directly, not through `serde_json::Value`: a cluster id is a u128,
        // which a `Value` cannot hold.
        let v: Vec<StatusRow> = rows
            .iter()
            .map(|(ep, s)| StatusRow {
                endpoint: ep,
                status: s.as_ref().ok(),
                error: s.as_ref().err().map(|e| e.to_string()),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:<22} {:<7} {:<10} {:>5} {:>7} {:>10} {:>10}  INCARNATION",
        "ENDPOINT", "MEMBER", "ROLE", "TERM", "LEADER", "COMMITTED", "APPLIED"
    );
    let mut notes = Vec::new();
    for (ep, s) in rows {
        match s {
            Ok(s) => {
                let role = if s.waiting.is_some() && s.cluster.is_none() {
                    "waiting".to_string()
                } else {
                    s.role.clone()
                };
                println!(
                    "{:<22} {:<7} {:<10} {:>5} {:>7} {:>10} {:>10}  {:016x}",
                    ep,
                    s.id,
                    role,
                    s.term,
                    s.leader
                        .map(|l| l.id.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.committed,
                    s.applied,
                    s.incarnation
                );
                if let Some(w) = s.waiting {
                    notes.push(format!("member {}: {w}", s.id));
                }
            }
            Err(e) => println!("{ep:<22} unreachable: {e}"),
        }
    }
    for n in notes {
        println!("{n}");
    }
    crate::output::storm_alarm(c).await;
    // The capacity planner's alarm, as the leader last recorded it.
    let key = augur_proto::Key::Setting(augur_proto::CAPACITY_SETTING.into());
    if let Ok(Some(augur_proto::Record::Setting(s))) = c.get(&key).await {
        if let Ok(cap) = serde_json::from_slice::<augur_proto::CapacityAlarm>(&s.value) {
            if cap.alarm {
                println!(
                    "ALARM: {} (nodes wanted: {})",
                    cap.reason
                        .as_deref()
                        .unwrap_or("capacity: headroom below the minimum"),
                    cap.nodes_wanted
                );
            }
            if let Some(call) = cap.last_call {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                println!(
                    "capacity hook last called {}s ago, asking for {} node(s)",
                    now_ms.saturating_sub(call.at_ms) / 1000,
                    call.nodes_wanted
                );
            }
        }
    }
    Ok(0)
}

/// `augurctl bootstrap`.
pub async fn bootstrap(c: &Client, endpoint: Option<String>, timeout: u64) -> anyhow::Result<i32> {
    let ep = endpoint.unwrap_or_else(|| c.endpoints()[0].clone());
    c.bootstrap(&ep, std::time::Duration::from_secs(timeout))
        .await?;
    println!("bootstrapped a new cluster through {ep}");
    Ok(0)
}

/// `augurctl members ...`.
pub async fn members(c: &Client, cmd: MembersCmd, json: bool) -> anyhow::Result<i32> {
    match cmd {
        MembersCmd::List => {
            let members = c.members().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&members)?);
            } else {
                println!(
                    "{:<7} {:<22} {:<8} INCARNATION",
                    "MEMBER", "ADDRESS", "ROLE"
                );
                for m in members {
                    println!(
                        "{:<7} {:<22} {:<8} {:016x}",
                        m.id,
                        m.addr,
                        if m.voter { "voter" } else { "learner" },
                        m.incarnation
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
    }
    Ok(0)
}

/// `augurctl setting ...`.
pub async fn setting(c: &Client, cmd: SettingCmd, json: bool) -> anyhow::Result<i32> {
    match cmd {
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
    }
    Ok(0)
}

/// `augurctl watch`.
pub async fn watch(
    c: &Client,
    tables: Vec<TableArg>,
    from: u64,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<i32> {
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
    Ok(0)
}

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
