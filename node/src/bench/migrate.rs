//! `augur bench migrate`: an operator drains a storage node holding `--gib` GiB under a
//! client workload; the run reports the rate the moves achieved against a raw QUIC copy of the
//! same bytes in the same run, and the clients' p99 during the drain against before it.
//!
//! Two drains: first the node holding the most replicas under the client workload (client
//! p99 during it, and its move rate as `under_load`: copies run at the busy budget there,
//! yielding to clients); then, with the workload stopped, that node undrained and the
//! balancing moves that give it replicas back finished (`balance_wait_s`), the node now
//! holding the most, for the move machinery alone.
//!
//! - **Move rate** (`move_mb_s`, of the second drain): the bytes its committed moves verified
//!   over the wall time from the drain command to the node holding no replica: hand-offs,
//!   learner copies with CRC-64 per chunk, catch-up, the whole-shard checksum comparison and
//!   the commits, all of it. The per-migration copy rates the migrator records are reported
//!   beside it.
//! - **Raw copy** (`raw_quinn_mb_s`): the same number of bytes through a bare QUIC connection
//!   between two storage certificates ([`super::rawcopy`]); and again into synced files on
//!   the nodes' filesystem (`raw_quinn_disk_mb_s`, `ratio_to_raw_disk`), since a move's
//!   bytes must be durable before it commits and a disk slower than loopback caps it there.
//! - **Client latency**: puts and gets (even odds) of 1 KiB on keys of their own, by closed-loop
//!   clients; p99 over `--baseline` before the drain (`p99_baseline_ms`) and over the drain
//!   (`p99_during_ms`). The targets: move rate at least 90% of the raw copy, p99 during
//!   at most 1.5 times the baseline.
//!
//! Without `--cluster` the run starts its own cluster with prediction off (only the operator
//! drains) and the copy throttle lifted (`--copy-mb-per-sec`), so the figure measures the move
//! machinery rather than the throttle or the policy. Before the baseline and before the
//! unloaded drain it waits for the storage nodes' compactions to finish
//! (`compaction_wait_s`): the raw copy runs on a quiet machine, and so do the moves it is
//! compared with.

use super::data::{data_clients, key, preload};
use super::rawcopy::{raw_copy_between_others, RawCopy};
use super::{
    check_load, new_hist, report, settle_compactions, BenchCluster, ClusterPlan, SETTLE_LIMIT,
};
use crate::local;
use anyhow::{bail, Context};
use augur_client::{DataClient, NodeCommand};
use augur_proto::{MigrationState, NodeId, ShardId};
use clap::Args;
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `augur bench migrate`.
#[derive(Args, Debug)]
pub struct MigrateBenchArgs {
    /// Cluster directory made by `augur local up --storage N` with N > rf (default: start one).
    #[arg(long)]
    pub cluster: Option<std::path::PathBuf>,
    /// Data the drained node holds, GiB.
    #[arg(long, default_value_t = 0.5)]
    pub gib: f64,
    /// Bytes per preloaded value.
    #[arg(long, default_value_t = 65_536)]
    pub value_size: usize,
    /// Workload clients during the baseline and the drain.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Workload before the drain (the p99 baseline).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub baseline: Duration,
    /// Give up if the node is not empty within this long after the drain command.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Streams of the raw QUIC copy.
    #[arg(long, default_value_t = 2)]
    pub raw_streams: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write every request of the loaded drain to this file, one line each: completion time
    /// (ms since the Unix epoch), latency (µs), 1 for a put or 0 for a get, and the shard.
    /// Lines up with the nodes' logs to tell which event a slow spell belongs to.
    #[arg(long)]
    pub latency_log: Option<std::path::PathBuf>,
    /// Own cluster: storage nodes.
    #[arg(long, default_value_t = 4)]
    pub storage: u64,
    /// Own cluster: shards.
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Own cluster: replication factor.
    #[arg(long, default_value_t = 3)]
    pub rf: u32,
    /// Own cluster: each storage node's copy budget, MB/s (`[copy] bytes_per_sec`).
    #[arg(long, default_value_t = 2_000)]
    pub copy_mb_per_sec: u64,
    /// Own cluster: keep its directory afterwards (it is stopped either way).
    #[arg(long)]
    pub keep_cluster: bool,
}

/// One run's figures.
#[derive(Debug, Serialize)]
pub struct MigrateReport {
    /// The node drained.
    pub drained: u64,
    /// Shards it held.
    pub shards_held: usize,
    /// Bytes of keys and values in them.
    pub bytes_moved: u64,
    /// From the drain command to the node holding no replica, s.
    pub drain_s: f64,
    /// `bytes_moved` over `drain_s`, MB/s.
    pub move_mb_s: f64,
    /// The same bytes through a bare QUIC connection, MB/s.
    pub raw_quinn_mb_s: f64,
    /// `move_mb_s` / `raw_quinn_mb_s`.
    pub ratio_to_raw: f64,
    /// The same bytes through a bare QUIC connection into synced files on the nodes'
    /// filesystem, MB/s: the ceiling once the copy must be durable, as a move's must.
    pub raw_quinn_disk_mb_s: f64,
    /// `move_mb_s` / `raw_quinn_disk_mb_s`.
    pub ratio_to_raw_disk: f64,
    /// Median of the copy rates the committed migrations recorded, MB/s.
    pub migration_copy_mb_s_p50: Option<f64>,
    /// Migrations committed for the drain.
    pub migrations_committed: usize,
    /// Migrations aborted (and retried) during the drain.
    pub migrations_aborted: usize,
    /// The first drain, under the client workload (copies at the busy budget).
    pub under_load: DrainRun,
    /// Its move rate over `raw_quinn_mb_s`.
    pub under_load_ratio_to_raw: f64,
    /// Client p99 before the drain, ms.
    pub p99_baseline_ms: f64,
    /// Client p99 during the drain, ms.
    pub p99_during_ms: f64,
    /// `p99_during_ms` / `p99_baseline_ms`.
    pub p99_ratio: f64,
    /// Client requests that failed during the run.
    pub failed_requests: u64,
    /// Seconds, from the end of the preload to the end of the second drain, during which
    /// some shard had fewer than RF replicas (sampled every 250 ms): a move never takes one
    /// away before its replacement is in, so anything above zero is a replica lost.
    pub below_rf_s: f64,
    /// Seconds waited, before the baseline and before the unloaded drain, for the storage
    /// nodes' compactions to finish ([`settle_compactions`]).
    pub compaction_wait_s: f64,
    /// Seconds waited after the undrain for the balancing moves that give the undrained
    /// node replicas back ([`settle_moves`]).
    pub balance_wait_s: f64,
    /// The raw copy's details.
    pub raw: RawCopy,
    /// The durable raw copy's details.
    pub raw_disk: RawCopy,
}

/// One drain: a node emptied, and what its moves achieved.
#[derive(Debug, Serialize)]
pub struct DrainRun {
    /// The node drained.
    pub node: u64,
    /// Replicas it held.
    pub shards: usize,
    /// Bytes its committed moves verified.
    pub bytes: u64,
    /// From the drain command to the node holding no replica, s.
    pub drain_s: f64,
    /// `bytes` over `drain_s`, MB/s.
    pub move_mb_s: f64,
    /// Median of the copy rates its committed migrations recorded, MB/s.
    pub copy_mb_s_p50: Option<f64>,
    /// Migrations committed.
    pub committed: usize,
    /// Migrations aborted (and retried).
    pub aborted: usize,
}

/// Runs `augur bench migrate`.
pub async fn run_migrate(a: MigrateBenchArgs) -> anyhow::Result<()> {
    check_load(a.gib, a.value_size, a.clients, a.raw_streams)?;
    if a.cluster.is_none() && u64::from(a.rf) >= a.storage {
        bail!("--storage must exceed --rf, or the drained node's replicas have nowhere to go");
    }
    let plan = ClusterPlan {
        meta: 3,
        storage: a.storage,
        shards: a.shards,
        rf: a.rf,
        down_delay_ms: None,
        copy_bytes_per_sec: Some(a.copy_mb_per_sec.saturating_mul(1_000_000)),
        predict: Some(false),
        control: Vec::new(),
    };
    let cluster = BenchCluster::open(a.cluster.as_deref(), plan, a.keep_cluster).await?;
    let result = measure(&a, &cluster.dir).await;
    cluster.close().await;
    report(result, a.json, print_report)
}

fn print_report(r: &MigrateReport) {
    println!(
        "drained storage node {}: {} shards, {:.2} GiB, in {:.1} s",
        r.drained,
        r.shards_held,
        r.bytes_moved as f64 / f64::from(1u32 << 30),
        r.drain_s
    );
    println!(
        "move rate {:.0} MB/s; raw QUIC copy {:.0} MB/s over {} streams; ratio {:.2}",
        r.move_mb_s, r.raw_quinn_mb_s, r.raw.streams, r.ratio_to_raw
    );
    println!(
        "raw QUIC copy into synced files {:.0} MB/s; ratio {:.2}",
        r.raw_quinn_disk_mb_s, r.ratio_to_raw_disk
    );
    if let Some(c) = r.migration_copy_mb_s_p50 {
        println!(
            "migrations: {} committed, {} aborted; median recorded copy rate {c:.0} MB/s",
            r.migrations_committed, r.migrations_aborted
        );
    }
    let l = &r.under_load;
    println!(
        "under the client workload: node {} ({} shards) drained in {:.1} s, {:.0} MB/s (ratio {:.2})",
        l.node, l.shards, l.drain_s, l.move_mb_s, r.under_load_ratio_to_raw
    );
    println!(
        "client p99: {:.1} ms before, {:.1} ms during that drain ({:.2}x); {} requests failed",
        r.p99_baseline_ms, r.p99_during_ms, r.p99_ratio, r.failed_requests
    );
    println!(
        "time some shard had fewer than RF replicas: {:.2} s; waited {:.1} s for the \
         undrained node's balancing moves",
        r.below_rf_s, r.balance_wait_s
    );
}

/// Latencies of the current phase; the workload records into whichever is installed.
struct Phase {
    hist: Mutex<Histogram<u64>>,
    /// Each request (see `--latency-log`), when asked for.
    log: Option<Mutex<Vec<Request>>>,
}

/// One request of the workload: completed at (ms since the Unix epoch), latency (µs), a put,
/// the shard.
type Request = (u64, u64, bool, u64);

impl Phase {
    fn new(log: bool) -> anyhow::Result<Arc<Phase>> {
        Ok(Arc::new(Phase {
            hist: Mutex::new(new_hist()?),
            log: log.then(|| Mutex::new(Vec::new())),
        }))
    }
}

/// Writes a phase's requests as `--latency-log` describes.
fn write_latency_log(p: &Phase, path: &Path) -> anyhow::Result<()> {
    let Some(log) = &p.log else { return Ok(()) };
    let lines: String = log
        .lock()
        .map(|l| {
            l.iter()
                .map(|(at, us, put, shard)| format!("{at} {us} {} {shard}\n", u8::from(*put)))
                .collect()
        })
        .unwrap_or_default();
    std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))
}

/// Closed-loop clients: puts and gets (even odds) of 1 KiB on keys of their own.
fn spawn_workload(
    clients: &[DataClient],
    n: usize,
    stop: Arc<AtomicBool>,
    phase: Arc<Mutex<Arc<Phase>>>,
    failed: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let c = clients[w % clients.len()].clone();
            let (stop, phase, failed) = (stop.clone(), phase.clone(), failed.clone());
            tokio::spawn(async move {
                let value = vec![w as u8; 1024];
                while !stop.load(Ordering::Relaxed) {
                    let (i, put) = {
                        let mut rng = rand::thread_rng();
                        (rng.gen_range(0..1024u32), rng.gen_bool(0.5))
                    };
                    let k = format!("migrate-w{w}-{i}").into_bytes();
                    let shard = c.shard_of(&k).0;
                    let started = Instant::now();
                    let r = if put {
                        c.put(k, value.clone()).await.map(|_| ())
                    } else {
                        c.get(&k).await.map(|_| ())
                    };
                    let us = started.elapsed().as_micros() as u64;
                    if r.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let current = phase.lock().map(|p| p.clone());
                    if let Ok(p) = current {
                        if let Ok(mut h) = p.hist.lock() {
                            let _ = h.record(us.max(1));
                        }
                        if let Some(Ok(mut log)) = p.log.as_ref().map(|l| l.lock()) {
                            let at = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as u64);
                            log.push((at, us, put, shard));
                        }
                    }
                }
            })
        })
        .collect()
}

fn p99_ms(p: &Phase) -> f64 {
    p.hist
        .lock()
        .map_or(f64::NAN, |h| h.value_at_quantile(0.99) as f64 / 1e3)
}

async fn measure(a: &MigrateBenchArgs, dir: &Path) -> anyhow::Result<MigrateReport> {
    let client = local::client(dir)?;
    let layout = client
        .data_layout()
        .await?
        .context("the cluster has no data plane")?;
    let before = client.list_shards().await?;
    let (victim, held) = most_replicas(&before, None).context("no shard has a replica")?;

    let per_key = (a.value_size + key(0).len()) as f64;
    let total_keys = (a.gib * f64::from(1u32 << 30) / per_key * f64::from(layout.shards)
        / held.len() as f64)
        .ceil() as u64;
    let clients = data_clients(dir, 8).await?;
    eprintln!(
        "preloading {total_keys} keys of {} bytes ({:.2} GiB on node {victim})",
        a.value_size, a.gib
    );
    preload(&clients, 32, total_keys, a.value_size).await?;
    // Neither the baseline nor a drain pays for the preload's compactions.
    let mut compaction_wait_s = settle_compactions(&client, SETTLE_LIMIT).await?;
    let (stop_sampler, below_ms) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = super::failover::spawn_rf_sampler(
        dir,
        layout.rf as usize,
        victim,
        Arc::new(AtomicBool::new(false)),
        stop_sampler.clone(),
        below_ms.clone(),
    )?;

    let baseline = Phase::new(false)?;
    let during = Phase::new(a.latency_log.is_some())?;
    let phase = Arc::new(Mutex::new(baseline.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let workers = spawn_workload(
        &clients,
        a.clients,
        stop.clone(),
        phase.clone(),
        failed.clone(),
    );
    let stop_workers = |workers: Vec<tokio::task::JoinHandle<()>>| {
        let stop = stop.clone();
        async move {
            stop.store(true, Ordering::Relaxed);
            for w in workers {
                let _ = w.await;
            }
        }
    };
    tokio::time::sleep(a.baseline).await;

    if let Ok(mut p) = phase.lock() {
        *p = during.clone();
    }
    eprintln!("draining storage node {victim} under the client workload");
    let loaded = drain(&client, victim, held.len(), a.timeout).await;
    stop_workers(workers).await;
    let loaded = loaded?;
    if let Some(path) = &a.latency_log {
        write_latency_log(&during, path)?;
    }

    // The machinery alone: the drained node takes replicas again, and the node now holding
    // the most is drained with no client traffic, so copies run at the full budget.
    client
        .node_command(victim, NodeCommand::Undrain, Some("bench migrate"))
        .await
        .with_context(|| format!("undraining node {victim}"))?;
    // The undrained node is empty: the leader's balancing gives it replicas back. The
    // second drain starts from the cluster that leaves, as a drain in service would.
    let balance_wait_s = settle_moves(&client, a.timeout).await?;
    let now = client.list_shards().await?;
    let (second, second_held) =
        most_replicas(&now, Some(victim)).context("no other node holds a replica")?;
    compaction_wait_s += settle_compactions(&client, SETTLE_LIMIT).await?;
    eprintln!("draining storage node {second} with no client traffic");
    let idle = drain(&client, second, second_held.len(), a.timeout).await;
    stop_sampler.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let idle = idle?;

    eprintln!("raw QUIC copy of {} bytes for comparison", idle.bytes);
    let raw = raw_copy_between_others(dir, second.0, idle.bytes, a.raw_streams, false).await?;
    eprintln!("the same bytes into synced files");
    let raw_disk = raw_copy_between_others(dir, second.0, idle.bytes, a.raw_streams, true).await?;
    let ratio = |r: &DrainRun| r.move_mb_s / raw.mb_per_sec.max(1e-9);
    let (p99_baseline_ms, p99_during_ms) = (p99_ms(&baseline), p99_ms(&during));
    Ok(MigrateReport {
        drained: idle.node,
        shards_held: idle.shards,
        bytes_moved: idle.bytes,
        drain_s: idle.drain_s,
        move_mb_s: idle.move_mb_s,
        raw_quinn_mb_s: raw.mb_per_sec,
        ratio_to_raw: ratio(&idle),
        raw_quinn_disk_mb_s: raw_disk.mb_per_sec,
        ratio_to_raw_disk: idle.move_mb_s / raw_disk.mb_per_sec.max(1e-9),
        migration_copy_mb_s_p50: idle.copy_mb_s_p50,
        migrations_committed: idle.committed,
        migrations_aborted: idle.aborted,
        under_load_ratio_to_raw: ratio(&loaded),
        under_load: loaded,
        p99_baseline_ms,
        p99_during_ms,
        p99_ratio: p99_during_ms / p99_baseline_ms.max(1e-9),
        failed_requests: failed.load(Ordering::Relaxed),
        below_rf_s: below_ms.load(Ordering::Relaxed) as f64 / 1e3,
        compaction_wait_s,
        balance_wait_s,
        raw,
        raw_disk,
    })
}

/// Waits until no migration has been in flight for [`MOVES_SETTLED`] (the mover plans
/// within a pass of a node record changing, so a shorter quiet spell could come before the
/// first move); the seconds waited.
async fn settle_moves(client: &augur_client::Client, limit: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        let moving = client
            .list_migrations()
            .await
            .map(|ms| {
                ms.iter().any(|m| {
                    !matches!(m.state, MigrationState::Committed | MigrationState::Aborted)
                })
            })
            .unwrap_or(true);
        if moving {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= MOVES_SETTLED {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > limit {
            bail!("moves still in flight {limit:?} after the undrain");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long no move may be in flight before the cluster counts as settled.
const MOVES_SETTLED: Duration = Duration::from_secs(3);

/// The node holding the most replicas (other than `except`), and its shards.
fn most_replicas(
    shards: &BTreeMap<ShardId, augur_proto::Shard>,
    except: Option<NodeId>,
) -> Option<(NodeId, Vec<ShardId>)> {
    let mut held_by: BTreeMap<NodeId, Vec<ShardId>> = BTreeMap::new();
    for s in shards.values() {
        for r in s.replicas.iter().filter(|r| Some(**r) != except) {
            held_by.entry(*r).or_default().push(s.id);
        }
    }
    held_by.into_iter().max_by_key(|(_, v)| v.len())
}

/// Drains `node` and waits until it holds no replica; the bytes are those its committed
/// moves verified.
async fn drain(
    client: &augur_client::Client,
    node: NodeId,
    shards: usize,
    timeout: Duration,
) -> anyhow::Result<DrainRun> {
    let started = Instant::now();
    let started_ms = crate::control::registry::now_ms();
    client
        .node_command(node, NodeCommand::Drain, Some("bench migrate"))
        .await
        .with_context(|| format!("draining node {node}"))?;
    let drain_s = loop {
        if started.elapsed() > timeout {
            bail!("node {node} not empty within {timeout:?} of the drain");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(now) = client.list_shards().await else {
            continue;
        };
        let left = now
            .values()
            .filter(|s| s.replicas.contains(&node) || s.learners.contains(&node))
            .count();
        if left == 0 {
            break started.elapsed().as_secs_f64();
        }
    };
    let migrations: Vec<_> = client
        .list_migrations()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.from == node && m.started_ms >= started_ms.saturating_sub(1_000))
        .collect();
    let committed: Vec<_> = migrations
        .iter()
        .filter(|m| m.state == MigrationState::Committed)
        .collect();
    let mut rates: Vec<f64> = committed
        .iter()
        .filter(|m| m.rate_bytes_per_s > 0)
        .map(|m| m.rate_bytes_per_s as f64 / 1e6)
        .collect();
    rates.sort_by(f64::total_cmp);
    let bytes: u64 = committed.iter().map(|m| m.bytes_total).sum();
    Ok(DrainRun {
        node: node.0,
        shards,
        bytes,
        drain_s,
        move_mb_s: bytes as f64 / 1e6 / drain_s.max(1e-3),
        copy_mb_s_p50: rates.get(rates.len() / 2).copied(),
        committed: committed.len(),
        aborted: migrations
            .iter()
            .filter(|m| m.state == MigrationState::Aborted)
            .count(),
    })
}
