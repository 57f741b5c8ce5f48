//! `augur bench recover`: a storage node holding `--gib` GiB is SIGKILLed under a write
//! load; the run reports what clients saw and how long the cluster took to be whole again.
//!
//! - **Write gap**, per shard the killed node was primary of: from the kill to the first write
//!   on that shard acknowledged afterwards (by the secondary promoted in its place). The
//!   bound it is judged against is lease + grace + 1 s: the old primary's lease must run out
//!   before anyone else may serve (no split brain), the leader then waits out the grace period
//!   before it declares the node Down and promotes.
//! - **Restore**: from the kill until every shard again has RF replicas on live nodes, and the
//!   copy phase within it (from the first learner seen to the last shard whole), with the
//!   bytes re-replicated and their rate.
//! - **Raw copy**: the same number of bytes through a bare QUIC connection between two storage
//!   certificates ([`super::rawcopy`]), in the same run: the ceiling the copy rate is compared
//!   with; and again into synced files on the nodes' filesystem (`raw_disk`,
//!   `ratio_to_raw_disk`), the ceiling once the copy must be durable.
//!
//! Without `--cluster` the run starts its own cluster with a short `down_delay_ms`, so that
//! re-replication starts seconds after the node is declared Down rather than the production
//! default of 5 minutes, and with the copy throttle lifted (`--copy-mb-per-sec`) so the
//! figure measures the copy machinery rather than the throttle.

use super::data::{data_clients, key, preload};
use super::rawcopy::{raw_copy_between_others, RawCopy};
use super::{
    check_load, most_leading, report, settle_compactions, BenchCluster, ClusterPlan, Victim,
    SETTLE_LIMIT,
};
use crate::control::settings::ControlSettings;
use crate::local::{self, Proc};
use anyhow::{bail, Context};
use augur_client::DataClient;
use augur_proto::data::shard_of;
use augur_proto::{NodeState, ShardId};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `augur bench recover`.
#[derive(Args, Debug)]
pub struct RecoverBenchArgs {
    /// Cluster directory made by `augur local up --storage N` with N > rf (default: start one).
    #[arg(long)]
    pub cluster: Option<std::path::PathBuf>,
    /// Data the killed node holds, GiB (its share of the preloaded keys).
    #[arg(long, default_value_t = 1.0)]
    pub gib: f64,
    /// Bytes per preloaded value.
    #[arg(long, default_value_t = 65_536)]
    pub value_size: usize,
    /// Writers during the run (1 KiB values on keys of their own).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Give up if RF is not restored within this long after the kill.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Streams of the raw QUIC copy.
    #[arg(long, default_value_t = 2)]
    pub raw_streams: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Own cluster: storage nodes (one more than rf leaves room to restore it).
    #[arg(long, default_value_t = 4)]
    pub storage: u64,
    /// Own cluster: shards.
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Own cluster: replication factor.
    #[arg(long, default_value_t = 3)]
    pub rf: u32,
    /// Own cluster: `[control] down_delay_ms`.
    #[arg(long, default_value_t = 1_000)]
    pub down_delay_ms: u64,
    /// Own cluster: each storage node's copy budget, MB/s (`[copy] bytes_per_sec`).
    #[arg(long, default_value_t = 2_000)]
    pub copy_mb_per_sec: u64,
    /// Own cluster: keep its directory afterwards (it is stopped either way).
    #[arg(long)]
    pub keep_cluster: bool,
}

/// One run's figures.
#[derive(Debug, Serialize)]
pub struct RecoverReport {
    /// The node killed (the one leading the most shards).
    pub killed: u64,
    /// Shards it held.
    pub shards_held: usize,
    /// Shards it was primary of.
    pub shards_led: usize,
    /// Bytes of keys and values it held (its shards' logical size).
    pub bytes_held: u64,
    /// Longest write gap over the shards it led, ms.
    pub write_gap_max_ms: f64,
    /// Median write gap over the shards it led, ms.
    pub write_gap_p50_ms: f64,
    /// lease + grace + 1 s of the control plane's default settings, ms.
    pub write_gap_bound_ms: f64,
    /// Writes acknowledged during the run.
    pub writes_ok: u64,
    /// Writes that failed (deadline passed during the failover, unknown outcome).
    pub writes_failed: u64,
    /// From the kill to the node being declared Down, ms.
    pub down_after_ms: f64,
    /// From the kill to every shard having RF replicas on live nodes, ms.
    pub restored_after_ms: f64,
    /// From the first learner seen to RF restored, ms.
    pub copy_phase_ms: f64,
    /// `bytes_held` over the copy phase, MB/s.
    pub copy_mb_per_sec: f64,
    /// The same bytes through a bare QUIC connection.
    pub raw: RawCopy,
    /// `copy_mb_per_sec` / the raw copy's.
    pub ratio_to_raw: f64,
    /// The same bytes into synced files on the nodes' filesystem: the ceiling once the copy
    /// must be durable, as a new replica's must.
    pub raw_disk: RawCopy,
    /// `copy_mb_per_sec` / the durable raw copy's.
    pub ratio_to_raw_disk: f64,
    /// Seconds waited after the preload for the storage nodes' compactions to finish
    /// ([`settle_compactions`]), before the writers start and the node is killed.
    pub compaction_wait_s: f64,
}

/// Runs `augur bench recover`.
pub async fn run_recover(a: RecoverBenchArgs) -> anyhow::Result<()> {
    check_load(a.gib, a.value_size, a.clients, a.raw_streams)?;
    if a.cluster.is_none() && u64::from(a.rf) >= a.storage {
        bail!("--storage must exceed --rf, or no node is left to restore RF on");
    }
    let plan = ClusterPlan {
        meta: 3,
        storage: a.storage,
        shards: a.shards,
        rf: a.rf,
        down_delay_ms: Some(a.down_delay_ms),
        copy_bytes_per_sec: Some(a.copy_mb_per_sec.saturating_mul(1_000_000)),
        predict: None,
        control: Vec::new(),
    };
    let cluster = BenchCluster::open(a.cluster.as_deref(), plan, a.keep_cluster).await?;
    let result = measure(&a, &cluster.dir).await;
    cluster.close().await;
    report(result, a.json, print_report)
}

fn print_report(r: &RecoverReport) {
    println!(
        "killed storage node {}: {} shards ({} led), {:.2} GiB",
        r.killed,
        r.shards_held,
        r.shards_led,
        r.bytes_held as f64 / f64::from(1u32 << 30)
    );
    println!(
        "write gap on its primaries: max {:.0} ms, median {:.0} ms (bound lease + grace + 1 s = {:.0} ms)",
        r.write_gap_max_ms, r.write_gap_p50_ms, r.write_gap_bound_ms
    );
    println!(
        "writes: {} acknowledged, {} failed",
        r.writes_ok, r.writes_failed
    );
    println!(
        "declared Down after {:.1} s; RF restored after {:.1} s (copy phase {:.1} s, {:.0} MB/s)",
        r.down_after_ms / 1e3,
        r.restored_after_ms / 1e3,
        r.copy_phase_ms / 1e3,
        r.copy_mb_per_sec
    );
    println!(
        "raw QUIC copy of the same bytes: {:.0} MB/s over {} streams; ratio {:.2}",
        r.raw.mb_per_sec, r.raw.streams, r.ratio_to_raw
    );
    println!(
        "raw QUIC copy into synced files: {:.0} MB/s; ratio {:.2}",
        r.raw_disk.mb_per_sec, r.ratio_to_raw_disk
    );
}

/// What the writers saw: per shard, the instants writes were acknowledged.
#[derive(Default)]
struct Acks {
    by_shard: BTreeMap<ShardId, Vec<Instant>>,
}

/// Writes 1 KiB values until `stop`, each writer on keys of its own; acknowledged writes
/// are recorded per shard.
fn spawn_writers(
    clients: &[DataClient],
    n: usize,
    shards: u32,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Acks>>,
    failed: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let c = clients[w % clients.len()].clone();
            let (stop, acks, failed) = (stop.clone(), acks.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let k = format!("recover-w{w}-{}", i % 4096).into_bytes();
                    let shard = shard_of(&k, shards);
                    match c.put(k, vec![w as u8; 1024]).await {
                        Ok(_) => {
                            if let Ok(mut a) = acks.lock() {
                                a.by_shard.entry(shard).or_default().push(Instant::now());
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "recover bench: write failed");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

async fn measure(a: &RecoverBenchArgs, dir: &Path) -> anyhow::Result<RecoverReport> {
    let client = local::client(dir)?;
    let layout = client
        .data_layout()
        .await?
        .context("the cluster has no data plane")?;
    let Victim {
        id: victim,
        held,
        led: led_by_victim,
    } = most_leading(&client.list_shards().await?)?;
    if held.is_empty() {
        bail!("node {victim} holds no replica");
    }

    // Enough keys that the victim's shards hold --gib GiB between them.
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
    // The preload leaves gigabytes of compaction debt; the copies would pay for it while the
    // raw copy they are compared with runs on a quiet machine.
    let compaction_wait_s = settle_compactions(&client, SETTLE_LIMIT).await?;
    let bytes_held: u64 = (1..=total_keys)
        .filter(|i| held.contains(&shard_of(&key(*i), layout.shards)))
        .map(|_| per_key as u64)
        .sum();

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let failed = Arc::new(AtomicU64::new(0));
    let writers = spawn_writers(
        &clients,
        a.clients,
        layout.shards,
        stop.clone(),
        acks.clone(),
        failed.clone(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    eprintln!("killing storage node {victim}");
    let killed_at = Instant::now();
    local::stop(dir, Proc::Storage(victim.0), true, Duration::ZERO).await?;

    let mut down_at = None;
    let mut first_learner = None;
    let restored_at = loop {
        if killed_at.elapsed() > a.timeout {
            stop.store(true, Ordering::Relaxed);
            bail!("RF not restored within {:?} of the kill", a.timeout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if down_at.is_none() {
            let nodes = client.list_nodes().await.unwrap_or_default();
            if nodes
                .iter()
                .any(|n| n.id == victim && n.state == NodeState::Down)
            {
                down_at = Some(Instant::now());
            }
        }
        let Ok(now) = client.list_shards().await else {
            continue;
        };
        if first_learner.is_none() && now.values().any(|s| !s.learners.is_empty()) {
            first_learner = Some(Instant::now());
        }
        let whole = now.values().all(|s| {
            s.replicas.len() == layout.rf as usize
                && !s.replicas.contains(&victim)
                && s.learners.is_empty()
        });
        if whole {
            break Instant::now();
        }
    };
    // A little more load after the fact, then stop the writers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }

    let (gaps, writes_ok) = {
        let acks = acks
            .lock()
            .map_err(|_| anyhow::anyhow!("writer tally poisoned"))?;
        let mut gaps: Vec<f64> = led_by_victim
            .iter()
            .map(|s| {
                acks.by_shard
                    .get(s)
                    .and_then(|v| v.iter().find(|t| **t > killed_at))
                    .map_or(restored_at, |t| *t)
                    .duration_since(killed_at)
                    .as_secs_f64()
                    * 1e3
            })
            .collect();
        gaps.sort_by(f64::total_cmp);
        let writes_ok: u64 = acks.by_shard.values().map(|v| v.len() as u64).sum();
        (gaps, writes_ok)
    };

    let copy_from = first_learner.or(down_at).unwrap_or(killed_at);
    let copy_phase = restored_at.duration_since(copy_from).as_secs_f64();
    let copy_mb_per_sec = bytes_held as f64 / 1e6 / copy_phase.max(1e-3);

    eprintln!("raw QUIC copy of {bytes_held} bytes for comparison");
    let raw = raw_copy_between_others(dir, victim.0, bytes_held, a.raw_streams, false).await?;
    eprintln!("the same bytes into synced files");
    let raw_disk = raw_copy_between_others(dir, victim.0, bytes_held, a.raw_streams, true).await?;

    let settings = ControlSettings::default();
    Ok(RecoverReport {
        killed: victim.0,
        shards_held: held.len(),
        shards_led: led_by_victim.len(),
        bytes_held,
        write_gap_max_ms: gaps.last().copied().unwrap_or(0.0),
        write_gap_p50_ms: gaps.get(gaps.len() / 2).copied().unwrap_or(0.0),
        write_gap_bound_ms: (settings.lease_ms + settings.grace_ms + 1_000) as f64,
        writes_ok,
        writes_failed: failed.load(Ordering::Relaxed),
        down_after_ms: down_at.map_or(f64::NAN, |t| {
            t.duration_since(killed_at).as_secs_f64() * 1e3
        }),
        restored_after_ms: restored_at.duration_since(killed_at).as_secs_f64() * 1e3,
        copy_phase_ms: copy_phase * 1e3,
        copy_mb_per_sec,
        ratio_to_raw: copy_mb_per_sec / raw.mb_per_sec.max(1e-9),
        raw,
        ratio_to_raw_disk: copy_mb_per_sec / raw_disk.mb_per_sec.max(1e-9),
        raw_disk,
        compaction_wait_s,
    })
}
