//! `augur bench meta`: throughput and latency of the metadata service.
//!
//! Modes:
//! - `cas`: read a shard record, then compare-and-set it on the version read (what an etcd
//!   user does with a get plus a Txn on mod_revision). Latency covers both round trips; a CAS
//!   that loses its race counts as a conflict, not an error.
//! - `read`: linearizable gets.
//! - `lookup`: shard-location lookups answered by the client cache, on plain threads, so the
//!   figure is lookups per second per core.
//! - `load`: only create the keys; with `--cluster`, report each member's resident memory.
//!
//! `--kill-leader-after 10s` (cas mode, local cluster) SIGKILLs the leader mid-run and reports
//! the time from the kill to the first write committed after it.
//!
//! Keys are shard ids 1..=keys, created first if absent. Figures are medians of nothing: one
//! run is one sample; run it several times and report medians (see the README).

use super::new_hist;
use anyhow::{bail, Context};
use augur_client::{CasOutcome, Client, ClientConfig, ShardCache, TlsFiles};
use augur_proto::{Consistency, Key, NodeId, Op, Record, Shard, ShardId, ShardState, Txn};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Get, then CAS on the version read.
    Cas,
    /// Linearizable gets.
    Read,
    /// Cached lookups.
    Lookup,
    /// Only create the keys, then report load rate and each member's resident memory.
    Load,
}

/// Arguments of `augur bench meta`.
#[derive(Args, Debug)]
pub struct MetaBenchArgs {
    /// Cluster directory made by `augur local up`.
    #[arg(long, conflicts_with = "endpoints")]
    pub cluster: Option<PathBuf>,
    /// Metadata endpoints (with --ca, --cert, --key).
    #[arg(long, value_delimiter = ',', requires_all = ["ca", "cert", "key"])]
    pub endpoints: Vec<String>,
    /// Cluster CA certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Concurrent clients (tasks; threads in lookup mode).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Connections shared by the clients.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// How long to measure, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Distinct keys (shard ids 1..=keys).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Cas)]
    pub mode: Mode,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Per-attempt client deadline (how long a client waits on one node before trying
    /// another); default: the client library's.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub attempt_timeout: Option<Duration>,
    /// cas mode with --cluster: SIGKILL the leader this long into the run and measure how
    /// long until writes commit again.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub kill_leader_after: Option<Duration>,
}

/// One run's figures.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Mode measured.
    pub mode: Mode,
    /// Clients.
    pub clients: usize,
    /// Keys.
    pub keys: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Completed operations (for cas: committed + conflicts).
    pub ops: u64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Operations per second per thread (lookup mode: per core).
    pub ops_per_sec_per_thread: f64,
    /// Committed CASes.
    pub committed: u64,
    /// CASes that lost a race.
    pub conflicts: u64,
    /// Errors (unavailable, indeterminate...).
    pub errors: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// 99.9th percentile latency, ms.
    pub p999_ms: f64,
    /// With --kill-leader-after: ms from the kill to the first write committed after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_ms: Option<f64>,
    /// Load mode: keys created per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_keys_per_sec: Option<f64>,
    /// With --cluster: resident memory of each member (MiB), by member id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub member_rss_mib: Vec<(u64, f64)>,
}

/// Resident memory of each running member of a local cluster, from /proc.
fn member_rss(dir: &std::path::Path) -> Vec<(u64, f64)> {
    let Ok(ids) = crate::local::members(dir) else {
        return Vec::new();
    };
    ids.into_iter()
        .filter_map(|id| Some((id, super::rss_mib(crate::local::running_pid(dir, id)?)?)))
        .collect()
}

fn config(a: &MetaBenchArgs) -> anyhow::Result<ClientConfig> {
    match &a.cluster {
        Some(dir) => Ok(ClientConfig::from_cluster_file(
            &dir.join(crate::local::CLUSTER_FILE),
        )?),
        None if !a.endpoints.is_empty() => Ok(ClientConfig::new(
            a.endpoints.clone(),
            TlsFiles {
                ca: a.ca.clone().context("--ca")?,
                cert: a.cert.clone().context("--cert")?,
                key: a.key.clone().context("--key")?,
            },
        )),
        None => bail!("give --cluster DIR or --endpoints with --ca/--cert/--key"),
    }
}

fn shard(id: u64, epoch: u64) -> Shard {
    Shard {
        id: ShardId(id),
        replicas: vec![
            NodeId(1 + id % 5),
            NodeId(1 + (id + 1) % 5),
            NodeId(1 + (id + 2) % 5),
        ],
        learners: vec![],
        epoch,
        version: 0,
        state: ShardState::Stable,
        size_bytes: 64 << 20,
        crc64: 0,
    }
}

/// Creates the keys that do not exist yet, 128 per transaction (the transaction limit).
async fn preload(client: &Client, keys: u64) -> anyhow::Result<()> {
    let mut id = 1;
    while id <= keys {
        let end = (id + 128).min(keys + 1);
        let mut txn = Txn::default();
        for k in id..end {
            txn.compares.push(augur_proto::Compare {
                key: Key::Shard(ShardId(k)),
                target: augur_proto::CompareTarget::Absent,
            });
            txn.ops.push(Op::Put(Record::Shard(shard(k, 1))));
        }
        let r = client.txn(txn).await.context("preloading keys")?;
        if !r.succeeded {
            // Some exist already (an earlier run): create the missing ones one by one.
            for k in id..end {
                match client.cas(Record::Shard(shard(k, 1)), None).await {
                    Ok(_) | Err(augur_client::Error::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        id = end;
    }
    Ok(())
}

/// The benchmark's keys are shard records (ids 1..=keys, replicas on nodes 1..=5), so on a
/// cluster with a data plane its preload and compare-and-sets would rewrite the real shard
/// map under the storage nodes. It runs on metadata-only clusters.
async fn refuse_data_plane(client: &Client) -> anyhow::Result<()> {
    let key = Key::Setting(augur_proto::data::DATA_CLUSTER_SETTING.into());
    if client
        .get(&key)
        .await
        .context("reading the data-plane layout")?
        .is_some()
    {
        bail!(
            "this cluster has a data plane: `bench meta` writes shard records 1..=--keys and \
             would overwrite its shard map; run it on a metadata-only cluster \
             (`augur local up --meta 3`)"
        );
    }
    Ok(())
}

/// Runs `augur bench meta`.
pub async fn run_meta(a: MetaBenchArgs) -> anyhow::Result<()> {
    if a.clients == 0 || a.conns == 0 || a.keys == 0 {
        bail!("--clients, --conns and --keys must be positive");
    }
    let mut cfg = config(&a)?;
    if let Some(t) = a.attempt_timeout {
        cfg.attempt_timeout = t;
    }
    let clients: Vec<Client> = (0..a.conns.min(a.clients))
        .map(|_| Client::new(cfg.clone()))
        .collect::<Result<_, _>>()?;
    refuse_data_plane(&clients[0]).await?;
    let load_started = Instant::now();
    preload(&clients[0], a.keys).await?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let mut report = match a.mode {
        Mode::Lookup => lookup(&clients[0], &a).await?,
        Mode::Cas | Mode::Read => remote(&clients, &a).await?,
        Mode::Load => Report {
            mode: Mode::Load,
            clients: 1,
            keys: a.keys,
            seconds: load_seconds,
            ops: a.keys,
            ops_per_sec: a.keys as f64 / load_seconds,
            ops_per_sec_per_thread: a.keys as f64 / load_seconds,
            committed: a.keys,
            conflicts: 0,
            errors: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            failover_ms: None,
            load_keys_per_sec: Some(a.keys as f64 / load_seconds),
            member_rss_mib: Vec::new(),
        },
    };
    if let Some(dir) = &a.cluster {
        report.member_rss_mib = member_rss(dir);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{:<7} {:>8} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8}",
            "MODE", "CLIENTS", "OPS", "OPS/S", "P50 ms", "P99 ms", "P999 ms", "CONFLICTS", "ERRORS"
        );
        println!(
            "{:<7} {:>8} {:>10} {:>12.0} {:>10.3} {:>10.3} {:>10.3} {:>10} {:>8}",
            format!("{:?}", report.mode).to_lowercase(),
            report.clients,
            report.ops,
            report.ops_per_sec,
            report.p50_ms,
            report.p99_ms,
            report.p999_ms,
            report.conflicts,
            report.errors
        );
        if let Some(ms) = report.failover_ms {
            println!("leader killed: writes committed again after {ms:.0} ms");
        }
        if let Some(r) = report.load_keys_per_sec {
            println!("loaded {} keys at {r:.0} keys/s", report.keys);
        }
        for (id, mib) in &report.member_rss_mib {
            println!("member {id}: {mib:.0} MiB resident");
        }
    }
    for c in clients {
        c.close().await;
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    committed: u64,
    conflicts: u64,
    errors: u64,
}

async fn remote(clients: &[Client], a: &MetaBenchArgs) -> anyhow::Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    // Microseconds since `origin` of the kill, and of the first commit after it.
    let killed_at = Arc::new(AtomicU64::new(u64::MAX));
    let first_commit_after = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    for i in 0..a.clients {
        let client = clients[i % clients.len()].clone();
        let stop = stop.clone();
        let (killed_at, first_commit_after) = (killed_at.clone(), first_commit_after.clone());
        let (mode, keys) = (a.mode, a.keys);
        tasks.push(tokio::spawn(async move {
            let mut t = Tally {
                hist: Some(new_hist()?),
                ..Default::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let id = rand::thread_rng().gen_range(1..=keys);
                let started = Instant::now();
                let ok = match mode {
                    Mode::Read => client
                        .get_with(&Key::Shard(ShardId(id)), Consistency::Linearizable)
                        .await
                        .is_ok(),
                    _ => match client.get_shard(ShardId(id)).await {
                        Ok(Some(s)) => {
                            let version = s.version;
                            match client
                                .cas(Record::Shard(shard(id, s.epoch + 1)), Some(version))
                                .await
                            {
                                Ok(CasOutcome::Committed { .. }) => {
                                    t.committed += 1;
                                    // Only requests sent after the kill count: a reply
                                    // already in flight from the old leader proves nothing.
                                    let sent = started.duration_since(origin).as_micros() as u64;
                                    if sent > killed_at.load(Ordering::Acquire) {
                                        let now = origin.elapsed().as_micros() as u64;
                                        first_commit_after.fetch_min(now, Ordering::AcqRel);
                                    }
                                    true
                                }
                                Ok(CasOutcome::Conflict { .. }) => {
                                    t.conflicts += 1;
                                    true
                                }
                                Err(_) => false,
                            }
                        }
                        _ => false,
                    },
                };
                if ok {
                    let us = started.elapsed().as_micros().max(1) as u64;
                    if let Some(h) = t.hist.as_mut() {
                        let _ = h.record(us);
                    }
                } else {
                    t.errors += 1;
                }
            }
            anyhow::Ok(t)
        }));
    }
    let started = Instant::now();
    match (a.kill_leader_after, &a.cluster) {
        (Some(after), Some(dir)) if after < a.duration && a.mode == Mode::Cas => {
            tokio::time::sleep(after).await;
            let leader = clients[0]
                .status(None)
                .await?
                .leader
                .context("no leader to kill")?;
            killed_at.store(origin.elapsed().as_micros() as u64, Ordering::Release);
            crate::local::stop_member(dir, leader.id.0, true, Duration::from_secs(5)).await?;
            tokio::time::sleep(a.duration - after).await;
        }
        (Some(_), _) => bail!(
            "--kill-leader-after needs --cluster, --mode cas and to be shorter than --duration"
        ),
        _ => tokio::time::sleep(a.duration).await,
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = new_hist()?;
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await??;
        if let Some(h) = &t.hist {
            all.add(h)?;
        }
        total.committed += t.committed;
        total.conflicts += t.conflicts;
        total.errors += t.errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = all.len();
    Ok(Report {
        mode: a.mode,
        clients: a.clients,
        keys: a.keys,
        seconds,
        ops,
        ops_per_sec: ops as f64 / seconds,
        ops_per_sec_per_thread: ops as f64 / seconds / a.clients as f64,
        committed: total.committed,
        conflicts: total.conflicts,
        errors: total.errors,
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        p999_ms: all.value_at_quantile(0.999) as f64 / 1000.0,
        failover_ms: match (
            killed_at.load(Ordering::Acquire),
            first_commit_after.load(Ordering::Acquire),
        ) {
            (k, f) if k != u64::MAX && f != u64::MAX => Some((f - k) as f64 / 1000.0),
            _ => None,
        },
        load_keys_per_sec: None,
        member_rss_mib: Vec::new(),
    })
}

async fn lookup(client: &Client, a: &MetaBenchArgs) -> anyhow::Result<Report> {
    let cache = ShardCache::start(client.clone()).await?;
    if (cache.len() as u64) < a.keys {
        bail!("cache holds {} shards, expected {}", cache.len(), a.keys);
    }
    let threads = a.clients.min(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..threads {
        let cache = cache.clone();
        let stop = stop.clone();
        let keys = a.keys;
        handles.push(std::thread::spawn(move || {
            // A cheap xorshift keeps the generator out of the measurement.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
            let (mut ops, mut hits) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..1024 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if cache.lookup(ShardId(1 + x % keys)).is_some() {
                        hits += 1;
                    }
                }
                ops += 1024;
            }
            (ops, hits)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(a.duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ops, mut hits) = (0, 0);
    for h in handles {
        let (o, hh) = h
            .join()
            .map_err(|_| anyhow::anyhow!("lookup thread panicked"))?;
        ops += o;
        hits += hh;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        mode: Mode::Lookup,
        clients: threads,
        keys: a.keys,
        seconds,
        ops,
        ops_per_sec: ops as f64 / seconds,
        ops_per_sec_per_thread: ops as f64 / seconds / threads as f64,
        committed: 0,
        conflicts: 0,
        errors: ops - hits,
        p50_ms: 0.0,
        p99_ms: 0.0,
        p999_ms: 0.0,
        failover_ms: None,
        load_keys_per_sec: None,
        member_rss_mib: Vec::new(),
    })
}
