//! `augur bench data`: throughput and latency of the data plane, through `DataClient`.
//!
//! Modes:
//! - `put`: blind puts of random keys (each one replicated to every replica and fsynced
//!   before it is answered);
//! - `get`: reads at the shards' primaries (linearizable: a primary serves only under its
//!   lease, from committed data);
//! - `mixed`: `--read-percent` gets, the rest puts, chosen at random per operation;
//! - `load`: only write the keys, then report the load rate and each storage node's
//!   resident memory (the memory-per-node figure).
//!
//! Keys are `bench-NNNNNNNNNN` for 1..=keys, values `--value-size` random bytes (random, so
//! that RocksDB's compression does not flatter the figures against etcd, which stores values
//! as they come). For get and mixed the keys are written first, unless a marker key says an
//! earlier run already wrote this many keys of this size. The etcd side,
//! `bench/etcd-bench --mode put|get|mixed`, uses the same key names, sizes and clients.
//!
//! Without `--cluster` the run starts its own local cluster (3 members, `--storage` nodes,
//! `--shards`, `--rf`) and removes it afterwards.

use super::{new_hist, report, storage_disk, storage_rss, BenchCluster, ClusterPlan};
use anyhow::{bail, Context};
use augur_client::{Client, ClientConfig, DataClient, DataConfig};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::{Rng, RngCore};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    /// Blind puts.
    Put,
    /// Gets at the primaries.
    Get,
    /// Gets and puts, `--read-percent` gets.
    Mixed,
    /// Only write the keys; report the load rate and storage nodes' memory.
    Load,
}

/// Arguments of `augur bench data`.
#[derive(Args, Debug)]
pub struct DataBenchArgs {
    /// Cluster directory made by `augur local up --storage N` (default: start one).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Concurrent clients (tasks).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Connections (data clients, each with its own QUIC endpoint) the clients share.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// How long to measure, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = DataMode::Put)]
    pub mode: DataMode,
    /// Mixed mode: percentage of operations that are gets.
    #[arg(long, default_value_t = 50)]
    pub read_percent: u32,
    /// Write the keys again even if an earlier run wrote them.
    #[arg(long)]
    pub reload: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Own cluster: storage nodes.
    #[arg(long, default_value_t = 3)]
    pub storage: u64,
    /// Own cluster: shards.
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    /// Own cluster: replication factor.
    #[arg(long, default_value_t = 3)]
    pub rf: u32,
    /// Own cluster: keep its directory afterwards (it is stopped either way).
    #[arg(long)]
    pub keep_cluster: bool,
}

/// One run's figures; the field names are those of `augur bench meta` where they overlap.
#[derive(Debug, Serialize)]
pub struct DataReport {
    /// Mode measured.
    pub mode: DataMode,
    /// Clients.
    pub clients: usize,
    /// Keys.
    pub keys: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Completed operations.
    pub ops: u64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Completed gets.
    pub gets: u64,
    /// Completed puts.
    pub puts: u64,
    /// Gets that found no value (a preloaded key should always be there).
    pub missing: u64,
    /// Failed operations.
    pub errors: u64,
    /// Failed operations by kind.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_kinds: BTreeMap<String, u64>,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// 99.9th percentile latency, ms.
    pub p999_ms: f64,
    /// Payload written and read per second, MB/s (values only).
    pub mb_per_sec: f64,
    /// Seconds spent writing the keys first (0 if they were there).
    pub preload_seconds: f64,
    /// Keys written per second while preloading (load mode: the figure measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_keys_per_sec: Option<f64>,
    /// Resident memory of each storage node (MiB), by node id, at the end of the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub storage_rss_mib: Vec<(u64, f64)>,
    /// Bytes on disk of each storage node's data directory (MiB), by node id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub storage_disk_mib: Vec<(u64, f64)>,
}

/// The key of index `i`, the same on the etcd side.
pub fn key(i: u64) -> Vec<u8> {
    format!("bench-{i:010}").into_bytes()
}

/// The key that says keys 1..=keys of `value_size` bytes were all written.
fn marker(keys: u64, value_size: usize) -> Vec<u8> {
    format!("bench-loaded-{keys}-{value_size}").into_bytes()
}

/// A short name for an error, for the report's error counts.
pub(crate) fn kind_of(e: &augur_client::Error) -> String {
    use augur_client::Error as E;
    match e {
        E::Indeterminate(_) => "indeterminate".into(),
        E::Unavailable(_) => "unavailable".into(),
        E::Data(d) => format!(
            "data: {}",
            d.to_string().chars().take(60).collect::<String>()
        ),
        E::Transport(_) => "transport".into(),
        other => other.to_string().chars().take(60).collect(),
    }
}

/// Data clients over `conns` metadata clients (each its own QUIC endpoint and connections).
pub(crate) async fn data_clients(
    cluster: &std::path::Path,
    conns: usize,
) -> anyhow::Result<Vec<DataClient>> {
    let cfg = ClientConfig::from_cluster_file(&cluster.join(crate::local::CLUSTER_FILE))?;
    let mut out = Vec::new();
    for _ in 0..conns.max(1) {
        let meta = Client::new(cfg.clone())?;
        out.push(DataClient::with_config(meta, DataConfig::default()).await?);
    }
    Ok(out)
}

/// Random bytes for values; each writer varies a copy so no two values are alike.
fn value_bytes(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// Writes keys 1..=keys with `clients` writers; returns seconds taken. Each key is retried
/// a few times: a preload that leaves holes would make the get figures lie.
pub(crate) async fn preload(
    clients: &[DataClient],
    writers: usize,
    keys: u64,
    value_size: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for w in 0..writers.max(1) {
        let c = clients[w % clients.len()].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut value = value_bytes(value_size);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > keys {
                    return anyhow::Ok(());
                }
                value[..8.min(value_size)].copy_from_slice(&i.to_le_bytes()[..8.min(value_size)]);
                let mut tries = 0;
                loop {
                    match c.put(key(i), value.clone()).await {
                        Ok(_) => break,
                        Err(e) if tries < 5 => {
                            tries += 1;
                            tracing::debug!(key = i, error = %e, "preload: retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e).with_context(|| format!("preloading key {i}")),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    gets: u64,
    puts: u64,
    missing: u64,
    errors: BTreeMap<String, u64>,
}

/// Runs `augur bench data`.
pub async fn run_data(a: DataBenchArgs) -> anyhow::Result<()> {
    if a.clients == 0 || a.conns == 0 || a.keys == 0 {
        bail!("--clients, --conns and --keys must be positive");
    }
    if a.value_size == 0 || a.value_size > augur_proto::data::MAX_VALUE {
        bail!("--value-size must be 1..={}", augur_proto::data::MAX_VALUE);
    }
    if a.read_percent > 100 {
        bail!("--read-percent is 0..=100");
    }
    let plan = ClusterPlan {
        meta: 3,
        storage: a.storage,
        shards: a.shards,
        rf: a.rf,
        down_delay_ms: None,
        copy_bytes_per_sec: None,
        predict: None,
        control: Vec::new(),
    };
    let cluster = BenchCluster::open(a.cluster.as_deref(), plan, a.keep_cluster).await?;
    let result = measure(&a, &cluster).await;
    cluster.close().await;
    report(result, a.json, print_table)
}

fn print_table(r: &DataReport) {
    println!(
        "{:<6} {:>8} {:>10} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "MODE", "CLIENTS", "OPS", "OPS/S", "P50 ms", "P99 ms", "P999 ms", "ERRORS"
    );
    println!(
        "{:<6} {:>8} {:>10} {:>12.0} {:>10.3} {:>10.3} {:>10.3} {:>8}",
        format!("{:?}", r.mode).to_lowercase(),
        r.clients,
        r.ops,
        r.ops_per_sec,
        r.p50_ms,
        r.p99_ms,
        r.p999_ms,
        r.errors
    );
    for (kind, n) in &r.error_kinds {
        println!("  {n} x {kind}");
    }
    if let Some(rate) = r.load_keys_per_sec {
        println!(
            "loaded {} keys of {} bytes at {rate:.0} keys/s",
            r.keys, r.value_size
        );
    }
    for (id, mib) in &r.storage_rss_mib {
        println!("storage node {id}: {mib:.0} MiB resident");
    }
    for (id, mib) in &r.storage_disk_mib {
        println!("storage node {id}: {mib:.0} MiB on disk");
    }
}

async fn measure(a: &DataBenchArgs, cluster: &BenchCluster) -> anyhow::Result<DataReport> {
    let clients = data_clients(&cluster.dir, a.conns.min(a.clients)).await?;
    let mut preload_seconds = 0.0;
    let mut load_rate = None;
    if a.mode != DataMode::Put {
        let mark = marker(a.keys, a.value_size);
        let loaded =
            !a.reload && a.mode != DataMode::Load && clients[0].get(&mark).await?.is_some();
        if !loaded {
            preload_seconds = preload(&clients, a.clients, a.keys, a.value_size).await?;
            load_rate = Some(a.keys as f64 / preload_seconds);
            clients[0].put(mark, Vec::new()).await?;
        }
    }
    let mut report = if a.mode == DataMode::Load {
        DataReport {
            mode: a.mode,
            clients: a.clients,
            keys: a.keys,
            value_size: a.value_size,
            seconds: preload_seconds,
            ops: a.keys,
            ops_per_sec: a.keys as f64 / preload_seconds,
            gets: 0,
            puts: a.keys,
            missing: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            mb_per_sec: (a.keys as f64 * a.value_size as f64) / 1e6 / preload_seconds,
            preload_seconds,
            load_keys_per_sec: load_rate,
            storage_rss_mib: Vec::new(),
            storage_disk_mib: Vec::new(),
        }
    } else {
        run_clients(a, &clients, preload_seconds, load_rate).await?
    };
    report.storage_rss_mib = storage_rss(&cluster.dir);
    report.storage_disk_mib = storage_disk(&cluster.dir);
    Ok(report)
}

async fn run_clients(
    a: &DataBenchArgs,
    clients: &[DataClient],
    preload_seconds: f64,
    load_rate: Option<f64>,
) -> anyhow::Result<DataReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..a.clients {
        let c = clients[i % clients.len()].clone();
        let stop = stop.clone();
        let (mode, keys, size, read_percent) = (a.mode, a.keys, a.value_size, a.read_percent);
        tasks.push(tokio::spawn(async move {
            let mut t = Tally {
                hist: Some(new_hist()?),
                ..Default::default()
            };
            let mut value = value_bytes(size);
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let (id, read) = {
                    let mut rng = rand::thread_rng();
                    let read = match mode {
                        DataMode::Get => true,
                        DataMode::Mixed => rng.gen_range(0..100) < read_percent,
                        DataMode::Put | DataMode::Load => false,
                    };
                    (rng.gen_range(1..=keys), read)
                };
                let started = Instant::now();
                let result = if read {
                    c.get(&key(id)).await.map(|v| {
                        t.gets += 1;
                        if v.is_none() {
                            t.missing += 1;
                        }
                    })
                } else {
                    n += 1;
                    value[..8.min(size)].copy_from_slice(&n.to_le_bytes()[..8.min(size)]);
                    c.put(key(id), value.clone()).await.map(|_| t.puts += 1)
                };
                match result {
                    Ok(()) => {
                        let us = started.elapsed().as_micros().max(1) as u64;
                        if let Some(h) = t.hist.as_mut() {
                            let _ = h.record(us);
                        }
                    }
                    Err(e) => *t.errors.entry(kind_of(&e)).or_default() += 1,
                }
            }
            anyhow::Ok(t)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(a.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = new_hist()?;
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await??;
        if let Some(h) = &t.hist {
            all.add(h)?;
        }
        total.gets += t.gets;
        total.puts += t.puts;
        total.missing += t.missing;
        for (k, n) in t.errors {
            *total.errors.entry(k).or_default() += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = all.len();
    Ok(DataReport {
        mode: a.mode,
        clients: a.clients,
        keys: a.keys,
        value_size: a.value_size,
        seconds,
        ops,
        ops_per_sec: ops as f64 / seconds,
        gets: total.gets,
        puts: total.puts,
        missing: total.missing,
        errors: total.errors.values().sum(),
        error_kinds: total.errors,
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        p999_ms: all.value_at_quantile(0.999) as f64 / 1000.0,
        mb_per_sec: ops as f64 * a.value_size as f64 / 1e6 / seconds,
        preload_seconds,
        load_keys_per_sec: load_rate,
        storage_rss_mib: Vec::new(),
        storage_disk_mib: Vec::new(),
    })
}
