//! `augur-etcd-bench`: the reference side of `augur bench meta` and `augur bench data`.
//!
//! Runs the same workload against etcd v3 that Augur's benchmarks run, and prints the same
//! report fields, so the two can be compared side by side:
//! - `cas`: get a key, then a Txn that puts it only if its mod_revision is still the one read
//!   (`augur bench meta`; keys `shard/<id>`, created first if absent);
//! - `read`: linearizable gets of those keys;
//! - `put`, `get`, `mixed`: the data benchmark's blind puts, linearizable gets, and a mix
//!   (`--read-percent` gets) of keys `bench-NNNNNNNNNN` with `--value-size` random bytes, the
//!   names and sizes `augur bench data` uses; get and mixed write the keys first.

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The same allocator as the `augur` binary (whose `bench data` client it is compared with),
/// so neither client pays more than the other for its allocations on the shared cores.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Cas,
    Read,
    Put,
    Get,
    Mixed,
}

impl Mode {
    fn is_data(self) -> bool {
        matches!(self, Mode::Put | Mode::Get | Mode::Mixed)
    }
}

#[derive(Parser, Debug)]
#[command(about = "etcd reference for `augur bench meta`")]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections shared by the clients.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// How long to measure.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Workload.
    #[arg(long, value_enum, default_value_t = Mode::Cas)]
    mode: Mode,
    /// Data modes: bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Mixed mode: percentage of operations that are gets.
    #[arg(long, default_value_t = 50)]
    read_percent: u32,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    system: &'static str,
    mode: Mode,
    clients: usize,
    keys: u64,
    seconds: f64,
    ops: u64,
    ops_per_sec: f64,
    committed: u64,
    conflicts: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

fn key(id: u64) -> String {
    format!("shard/{id}")
}

/// The data benchmark's key of index `id` (as `augur bench data` names it).
fn data_key(id: u64) -> String {
    format!("bench-{id:010}")
}

fn random_value(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    rand::thread_rng().fill(&mut v[..]);
    v
}

/// Writes data keys 1..=keys with one writer per client.
async fn preload_data(clients: &[Client], writers: usize, keys: u64, size: usize) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut tasks = Vec::new();
    for w in 0..writers.max(1) {
        let mut c = clients[w % clients.len()].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let v = random_value(size);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > keys {
                    return anyhow::Ok(());
                }
                c.put(data_key(i), v.clone(), None).await.with_context(|| format!("preloading key {i}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// A value of the same size as an Augur shard record (~40 bytes).
fn value(epoch: u64) -> Vec<u8> {
    format!("{{\"replicas\":[1,2,3],\"epoch\":{epoch},\"size\":67108864}}").into_bytes()
}

async fn preload(c: &mut Client, keys: u64) -> anyhow::Result<()> {
    for id in 1..=keys {
        let txn = Txn::new()
            .when([Compare::version(key(id), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key(id), value(1), None)]);
        c.txn(txn).await.context("preloading")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.clients == 0 || a.conns == 0 || a.keys == 0 {
        bail!("--clients, --conns and --keys must be positive");
    }
    let mut clients = Vec::new();
    for _ in 0..a.conns.min(a.clients) {
        clients.push(Client::connect(&a.endpoints, None).await.context("connecting to etcd")?);
    }
    if a.mode.is_data() {
        if a.value_size == 0 {
            bail!("--value-size must be positive");
        }
        if a.read_percent > 100 {
            bail!("--read-percent is 0..=100");
        }
        if a.mode != Mode::Put {
            preload_data(&clients, a.clients, a.keys, a.value_size).await?;
        }
    } else {
        preload(&mut clients[0], a.keys).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..a.clients {
        let mut c = clients[i % clients.len()].clone();
        let stop = stop.clone();
        let (mode, keys, size, read_percent) = (a.mode, a.keys, a.value_size, a.read_percent);
        tasks.push(tokio::spawn(async move {
            let mut payload = if mode.is_data() { random_value(size) } else { Vec::new() };
            let mut n: u64 = 0;
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut committed, mut conflicts, mut errors) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let (id, read) = {
                    let mut rng = rand::thread_rng();
                    let read = match mode {
                        Mode::Get => true,
                        Mode::Mixed => rng.gen_range(0..100) < read_percent,
                        _ => false,
                    };
                    (rng.gen_range(1..=keys), read)
                };
                let started = Instant::now();
                let ok = match mode {
                    Mode::Read => c.get(key(id), None).await.is_ok(),
                    Mode::Put | Mode::Get | Mode::Mixed if read => c.get(data_key(id), None).await.is_ok(),
                    Mode::Put | Mode::Get | Mode::Mixed => {
                        n += 1;
                        let k = 8.min(size);
                        payload[..k].copy_from_slice(&n.to_le_bytes()[..k]);
                        match c.put(data_key(id), payload.clone(), None).await {
                            Ok(_) => {
                                committed += 1;
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    Mode::Cas => match c.get(key(id), None).await {
                        Ok(r) => match r.kvs().first() {
                            Some(kv) => {
                                let txn = Txn::new()
                                    .when([Compare::mod_revision(key(id), CompareOp::Equal, kv.mod_revision())])
                                    .and_then([TxnOp::put(key(id), value(kv.version() as u64 + 1), None)]);
                                match c.txn(txn).await {
                                    Ok(t) if t.succeeded() => {
                                        committed += 1;
                                        true
                                    }
                                    Ok(_) => {
                                        conflicts += 1;
                                        true
                                    }
                                    Err(_) => false,
                                }
                            }
                            None => false,
                        },
                        Err(_) => false,
                    },
                };
                if ok {
                    let _ = h.record(started.elapsed().as_micros().max(1) as u64);
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((h, committed, conflicts, errors))
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(a.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut committed, mut conflicts, mut errors) = (0, 0, 0);
    for t in tasks {
        let (h, c, f, e) = t.await??;
        all.add(&h)?;
        committed += c;
        conflicts += f;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let r = Report {
        system: "etcd",
        mode: a.mode,
        clients: a.clients,
        keys: a.keys,
        seconds,
        ops: all.len(),
        ops_per_sec: all.len() as f64 / seconds,
        committed,
        conflicts,
        errors,
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        p999_ms: all.value_at_quantile(0.999) as f64 / 1000.0,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "etcd {:?}: {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, {} conflicts, {} errors",
            r.mode, r.ops_per_sec, r.p50_ms, r.p99_ms, r.p999_ms, r.conflicts, r.errors
        );
    }
    Ok(())
}
