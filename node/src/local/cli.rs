//! The `augur local` command line: its subcommands and what each prints.
//!
//! Kept in the library, next to what it drives, so the `augur` binary only dispatches to it.

use super::storage::{self, DataPlan};
use super::{Proc, Tuning, CLUSTER_FILE};
use augur_proto::wire::ClusterStatus;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `augur local ...`.
#[derive(Subcommand)]
pub enum LocalCmd {
    /// Start (or restart) a loopback cluster and wait until it is healthy.
    Up {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// Metadata members (1..=7) for a new cluster.
        #[arg(long, default_value_t = 3)]
        meta: u64,
        /// Storage nodes the cluster should have (missing ones are created; 0: a metadata
        /// cluster only, unless DIR already has storage nodes).
        #[arg(long, default_value_t = 0)]
        storage: u64,
        /// Shards of a new data plane.
        #[arg(long, default_value_t = 64)]
        shards: u32,
        /// Replicas per shard of a new data plane (default: 3, or the number of storage
        /// nodes if fewer).
        #[arg(long)]
        rf: Option<u32>,
        /// Seconds (at most a day) to wait for each step (health, registration, serving).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout: u64,
        /// Snapshot after this many log entries (new clusters; default from `augur meta`).
        #[arg(long)]
        snapshot_logs: Option<u64>,
        /// Log entries kept behind a snapshot (new clusters).
        #[arg(long)]
        keep_logs: Option<u64>,
        /// Append-entries batches in flight to a follower (new clusters; 1 = unpipelined).
        #[arg(long)]
        append_window: Option<usize>,
        /// How long a Down storage node's replicas wait before they are re-created elsewhere,
        /// in ms (`[control] down_delay_ms` of new clusters; default 5 min).
        #[arg(long)]
        down_delay_ms: Option<u64>,
        /// Prediction-driven draining of new clusters (`[control] predict`): `on` (the
        /// default) or `off`.
        #[arg(long, value_parser = parse_on_off)]
        predict: Option<bool>,
        /// A further `[control]` setting of new clusters, `KEY=VALUE` in TOML (dotted keys
        /// reach sub-tables: `policy.k=1`); repeatable.
        #[arg(long = "control", value_name = "KEY=VALUE")]
        control: Vec<String>,
        /// Health source of new storage nodes: `simulated` (default here: the nodes share
        /// this machine and its disk; faults can be injected with `augurctl node inject`),
        /// `linux` (sample this host) or `off`.
        #[arg(long, default_value = "simulated")]
        health_source: crate::storage::health::config::HealthSource,
        /// `capacity_bytes` of new storage nodes (default: 0, their filesystem's size); tests
        /// give a small one to drive the capacity planner.
        #[arg(long, default_value_t = 0)]
        storage_capacity: u64,
    },
    /// Create a new member that will join as a learner (then start it and add it).
    Add {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// Start it too.
        #[arg(long)]
        start: bool,
    },
    /// Stop every storage node and member (data stays).
    Down {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Show every member's view and every storage node.
    Status {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Stop one member or storage node (SIGTERM; --kill for SIGKILL).
    Stop {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
        /// SIGKILL instead of a clean stop.
        #[arg(long)]
        kill: bool,
    },
    /// Kill one member or storage node with SIGKILL, as a crash would.
    Kill {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Add a member that lost its data back: remove its old entry, add its new incarnation
    /// as a learner, wait for it to catch up, promote it.
    Readd {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// Member id.
        #[arg(long)]
        member: u64,
        /// Seconds (at most a day) to wait for it to catch up.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout: u64,
    },
    /// Print the member id of the current leader.
    Leader {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start one stopped member or storage node.
    Start {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
    },
}

/// `on` / `off` (also `true` / `false`): the switches of `augur local up`, `augur meta` and
/// `augur bench failover`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("expected on or off, got {other:?}")),
    }
}

/// Which process: a member or a storage node, by id.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Metadata member id.
    #[arg(long)]
    member: Option<u64>,
    /// Storage node id.
    #[arg(long)]
    storage: Option<u64>,
}

impl Target {
    fn proc(&self) -> anyhow::Result<Proc> {
        match (self.member, self.storage) {
            (Some(id), None) => Ok(Proc::Member(id)),
            (None, Some(id)) => Ok(Proc::Storage(id)),
            _ => anyhow::bail!("give exactly one of --member and --storage"),
        }
    }
}

/// Runs one `augur local` command.
pub async fn run(cmd: LocalCmd) -> anyhow::Result<()> {
    match cmd {
        LocalCmd::Up {
            dir,
            meta,
            storage: n,
            shards,
            rf,
            timeout,
            snapshot_logs,
            keep_logs,
            append_window,
            down_delay_ms,
            predict,
            control,
            health_source,
            storage_capacity,
        } => {
            let control = control
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        Ok(format!("{} = {}", k.trim(), v.trim()))
                    }
                    _ => anyhow::bail!("--control takes KEY=VALUE, got {kv:?}"),
                })
                .collect::<anyhow::Result<Vec<String>>>()?;
            let tuning = Tuning {
                snapshot_logs,
                keep_logs,
                append_window,
                down_delay_ms,
                predict,
                control,
            };
            let timeout = Duration::from_secs(timeout);
            let waiting = super::up(&dir, meta, tuning, timeout).await?;
            let plan = DataPlan {
                storage: n,
                shards,
                rf,
                copy_bytes_per_sec: None,
            };
            let new_nodes = storage::NewNodes {
                health: health_source,
                capacity_bytes: storage_capacity,
            };
            storage::up_with(&dir, plan, new_nodes, timeout).await?;
            println!(
                "cluster is up; cluster file: {}",
                dir.join(CLUSTER_FILE).display()
            );
            for w in &waiting {
                println!(
                    "member {} takes no part in Raft: it lost its data. Add it back with \
                     `augur local readd --dir {} --member {}`",
                    w.id,
                    dir.display(),
                    w.id
                );
            }
            status(&dir, false).await
        }
        LocalCmd::Add { dir, start } => {
            let (id, addr) = super::add_member(&dir, Tuning::default())?;
            if start {
                super::start_member(&dir, id)?;
            }
            println!(
                "member {id} at {addr}: created{}; add it with `augurctl members add --id {id} \
                 --addr {addr}`",
                if start { " and started" } else { "" }
            );
            Ok(())
        }
        LocalCmd::Down { dir } => {
            let n = super::down(&dir).await?;
            println!("stopped {n} process(es)");
            Ok(())
        }
        LocalCmd::Status { dir, json } => status(&dir, json).await,
        LocalCmd::Stop { dir, target, kill } => stop(&dir, target.proc()?, kill).await,
        LocalCmd::Kill { dir, target } => stop(&dir, target.proc()?, true).await,
        LocalCmd::Readd {
            dir,
            member,
            timeout,
        } => {
            super::readd(&dir, member, Duration::from_secs(timeout)).await?;
            println!("member {member}: added back as a learner, caught up and promoted");
            Ok(())
        }
        LocalCmd::Leader { dir } => {
            let status = super::client(&dir)?.status(None).await?;
            match status.leader {
                Some(l) => {
                    println!("{}", l.id);
                    Ok(())
                }
                None => anyhow::bail!("no leader known to member {}", status.id),
            }
        }
        LocalCmd::Start { dir, target } => {
            let proc = target.proc()?;
            super::start(&dir, proc)?;
            println!("{proc}: started");
            Ok(())
        }
    }
}

async fn stop(dir: &Path, proc: Proc, hard: bool) -> anyhow::Result<()> {
    let stopped = super::stop(dir, proc, hard, Duration::from_secs(10)).await?;
    let what = match (stopped, hard) {
        (false, _) => "was not running",
        (true, true) => "killed",
        (true, false) => "stopped",
    };
    println!("{proc}: {what}");
    Ok(())
}

/// One process in `augur local status --json`, tagged by its role.
#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum Row<'a> {
    /// A metadata member and its view, if it answered.
    Member {
        member: u64,
        endpoint: &'a str,
        pid: Option<i32>,
        status: Option<&'a ClusterStatus>,
    },
    /// A storage node.
    Storage(&'a storage::StorageStatus),
}

/// `augur local status`: each member's view, then each storage node's process and record.
pub async fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let file = augur_client::ClusterFile::load(&dir.join(CLUSTER_FILE))?;
    let client = super::client(dir)?;
    let mut rows = Vec::new();
    for (i, ep) in file.endpoints.iter().enumerate() {
        let id = i as u64 + 1;
        let pid = super::running_pid(dir, id);
        let status = match pid {
            Some(_) => client.status(Some(ep)).await.ok(),
            None => None,
        };
        rows.push((id, ep.clone(), pid, status));
    }
    let nodes = storage::status(dir).await?;
    if json {
        // Serialized directly, not through `serde_json::Value`: a cluster id is a u128,
        // which a `Value` cannot hold.
        let mut v: Vec<Row> = rows
            .iter()
            .map(|(id, ep, pid, s)| Row::Member {
                member: *id,
                endpoint: ep,
                pid: *pid,
                status: s.as_ref(),
            })
            .collect();
        v.extend(nodes.iter().map(Row::Storage));
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<7} {:<22} {:<8} {:<10} {:>5} {:>7} {:>10} {:>10}",
        "MEMBER", "ENDPOINT", "PID", "ROLE", "TERM", "LEADER", "COMMITTED", "APPLIED"
    );
    let mut notes = Vec::new();
    for (id, ep, pid, s) in rows {
        let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        match s {
            Some(s) => {
                let role = if s.waiting.is_some() && s.cluster.is_none() {
                    "waiting".to_string()
                } else {
                    s.role
                };
                println!(
                    "{:<7} {:<22} {:<8} {:<10} {:>5} {:>7} {:>10} {:>10}",
                    id,
                    ep,
                    pid,
                    role,
                    s.term,
                    s.leader
                        .map(|l| l.id.0.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.committed,
                    s.applied
                );
                if let Some(w) = s.waiting {
                    notes.push(format!("member {id}: {w}"));
                }
            }
            None => println!("{:<7} {:<22} {:<8} {:<10}", id, ep, pid, "down"),
        }
    }
    for n in notes {
        println!("{n}");
    }
    if nodes.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "{:<7} {:<22} {:<8} {:<10} {:<5} {:>6} {:>9}",
        "STORAGE", "ADDRESS", "PID", "STATE", "RACK", "SHARDS", "PRIMARIES"
    );
    for n in nodes {
        let (addr, state, rack) = match &n.record {
            Some(r) => (
                r.addrs.first().cloned().unwrap_or_else(|| "-".into()),
                format!("{:?}", r.state),
                r.rack.clone(),
            ),
            None => ("-".into(), "unregistered".into(), "-".into()),
        };
        println!(
            "{:<7} {:<22} {:<8} {:<10} {:<5} {:>6} {:>9}",
            n.node,
            addr,
            n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            state,
            rack,
            n.shards,
            n.primaries
        );
    }
    Ok(())
}
