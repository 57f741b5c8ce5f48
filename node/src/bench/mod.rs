//! `augur bench`: throughput, latency, recovery and memory figures, measured against real
//! processes so that they can be compared side by side with etcd (see README "Performance").
//!
//! - [`meta`]: `augur bench meta`, the metadata quorum;
//! - [`data`]: `augur bench data`, puts and gets through the data plane;
//! - [`recover`]: `augur bench recover`, a storage node SIGKILLed under load: the write gap
//!   on the shards it led and the time to restore the replication factor;
//! - [`rawcopy`]: the raw QUIC bulk copy `recover` compares its re-replication rate with;
//! - [`failover`]: `augur bench failover --predict on|off`, a node with a precursor that
//!   dies: failed requests, unavailability and time below RF, with and without prediction;
//! - [`migrate`]: `augur bench migrate`, an operator's drain under load: the move rate
//!   against a raw QUIC copy, and client p99 during the drain against before it.
//!
//! One run is one sample: the machine is shared and noisy, so the scripts run each benchmark
//! several times, alternating systems, and report medians.

pub mod data;
pub mod failover;
pub mod meta;
pub mod migrate;
pub mod rawcopy;
pub mod recover;

pub use meta::{run_meta, MetaBenchArgs, Mode, Report};

use crate::local::{self, Proc};
use anyhow::Context;
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A latency histogram in microseconds, from 1 µs to 60 s at 3 significant digits.
pub(crate) fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?)
}

/// Ends a bench run: its error, or its report as pretty JSON with `--json`, else as the
/// bench's own text.
pub(crate) fn report<R: serde::Serialize>(
    result: anyhow::Result<R>,
    json: bool,
    text: fn(&R),
) -> anyhow::Result<()> {
    let r = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        text(&r);
    }
    Ok(())
}

/// The checks `bench migrate` and `bench recover` share on the data they load and copy.
pub(crate) fn check_load(
    gib: f64,
    value_size: usize,
    clients: usize,
    raw_streams: usize,
) -> anyhow::Result<()> {
    if !(gib > 0.0 && gib <= 64.0) {
        anyhow::bail!("--gib must be in (0, 64]");
    }
    if value_size == 0 || value_size > augur_proto::data::MAX_VALUE {
        anyhow::bail!("--value-size must be 1..={}", augur_proto::data::MAX_VALUE);
    }
    if clients == 0 || raw_streams == 0 {
        anyhow::bail!("--clients and --raw-streams must be positive");
    }
    Ok(())
}

/// The resident memory of a process, MiB, from /proc.
pub(crate) fn rss_mib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Resident memory of each running storage node of a local cluster (MiB), by node id.
pub(crate) fn storage_rss(dir: &Path) -> Vec<(u64, f64)> {
    let Ok(ids) = local::storage::storage_nodes(dir) else {
        return Vec::new();
    };
    ids.into_iter()
        .filter_map(|id| Some((id, rss_mib(local::running(dir, Proc::Storage(id))?)?)))
        .collect()
}

/// Bytes on disk of each storage node's data directory of a local cluster (MiB), by id.
pub(crate) fn storage_disk(dir: &Path) -> Vec<(u64, f64)> {
    let Ok(ids) = local::storage::storage_nodes(dir) else {
        return Vec::new();
    };
    ids.into_iter()
        .map(|id| {
            let data = local::storage::storage_dir(dir, id).join("data");
            (id, dir_bytes(&data) as f64 / f64::from(1u32 << 20))
        })
        .collect()
}

/// Bytes under `path`, recursively (a storage node's RocksDB directory).
pub(crate) fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The longest a run waits for compactions to finish before measuring anyway.
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Waits (at most `limit`) until no storage node owes RocksDB background work (pending
/// compaction bytes, compactions or flushes running), so a measurement does not pay for the
/// write debt of the load before it; returns the seconds waited. A node that does not answer
/// counts as busy until the limit.
pub(crate) async fn settle_compactions(
    client: &augur_client::Client,
    limit: Duration,
) -> anyhow::Result<f64> {
    use augur_client::admin_http::{get, metric_sum};
    let started = std::time::Instant::now();
    let nodes = client.list_nodes().await?;
    loop {
        let mut busy = 0.0;
        for n in &nodes {
            let Ok(addr) = n.admin.parse() else {
                continue;
            };
            busy += match get(addr, "/metrics", Duration::from_secs(5)).await {
                Ok(r) => {
                    metric_sum(&r.body, "augur_storage_compaction_pending_bytes")
                        + metric_sum(&r.body, "augur_storage_compactions_running")
                }
                Err(_) => 1.0,
            };
        }
        let waited = started.elapsed();
        if busy == 0.0 {
            return Ok(waited.as_secs_f64());
        }
        if waited >= limit {
            eprintln!("compactions still running after {limit:?}; measuring anyway");
            return Ok(waited.as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The storage node a benchmark kills: the one leading the most shards, with the shards it
/// holds and the ones it leads.
pub(crate) struct Victim {
    /// The node.
    pub id: augur_proto::NodeId,
    /// Shards it holds a replica of.
    pub held: Vec<augur_proto::ShardId>,
    /// Shards it is primary of.
    pub led: Vec<augur_proto::ShardId>,
}

/// Picks the [`Victim`] in a shard map.
pub(crate) fn most_leading(
    shards: &std::collections::BTreeMap<augur_proto::ShardId, augur_proto::Shard>,
) -> anyhow::Result<Victim> {
    let mut led: std::collections::BTreeMap<augur_proto::NodeId, usize> = Default::default();
    for s in shards.values() {
        if let Some(p) = s.replicas.first() {
            *led.entry(*p).or_default() += 1;
        }
    }
    let id = led
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| *id)
        .context("no shard has a primary")?;
    let of = |f: &dyn Fn(&augur_proto::Shard) -> bool| {
        shards.values().filter(|s| f(s)).map(|s| s.id).collect()
    };
    Ok(Victim {
        id,
        held: of(&|s| s.replicas.contains(&id)),
        led: of(&|s| s.replicas.first() == Some(&id)),
    })
}

/// The cluster a benchmark runs against: one given with `--cluster`, or one it started in a
/// directory of its own and stops (and deletes) when done, so a run without `--cluster` leaves
/// nothing behind.
pub(crate) struct BenchCluster {
    /// The cluster directory.
    pub dir: PathBuf,
    /// Set when this run created the cluster: whether to keep its directory afterwards.
    own: Option<bool>,
}

/// What a benchmark asks of a cluster it starts itself.
#[derive(Debug, Clone)]
pub(crate) struct ClusterPlan {
    /// Metadata members.
    pub meta: u64,
    /// Storage nodes.
    pub storage: u64,
    /// Shards.
    pub shards: u32,
    /// Replication factor.
    pub rf: u32,
    /// `[control] down_delay_ms` of every member.
    pub down_delay_ms: Option<u64>,
    /// `[copy] bytes_per_sec` of every storage node.
    pub copy_bytes_per_sec: Option<u64>,
    /// `[control] predict` of every member (prediction-driven draining).
    pub predict: Option<bool>,
    /// Further `[control]` lines of every member, `key = value` in TOML.
    pub control: Vec<String>,
}

impl BenchCluster {
    /// Uses `dir` if given; otherwise starts a cluster as `plan` says in a new directory
    /// (kept afterwards only with `keep`).
    pub async fn open(
        dir: Option<&Path>,
        plan: ClusterPlan,
        keep: bool,
    ) -> anyhow::Result<BenchCluster> {
        if let Some(d) = dir {
            return Ok(BenchCluster {
                dir: d.to_path_buf(),
                own: None,
            });
        }
        let path = std::env::temp_dir().join(format!(
            "augur-bench-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let cluster = BenchCluster {
            dir: path,
            own: Some(keep),
        };
        let timeout = Duration::from_secs(120);
        let tuning = local::Tuning {
            down_delay_ms: plan.down_delay_ms,
            predict: plan.predict,
            control: plan.control.clone(),
            ..Default::default()
        };
        let started = async {
            local::up(&cluster.dir, plan.meta, tuning, timeout).await?;
            let data = local::storage::DataPlan {
                storage: plan.storage,
                shards: plan.shards,
                rf: Some(plan.rf),
                copy_bytes_per_sec: plan.copy_bytes_per_sec,
            };
            local::storage::up(&cluster.dir, data, timeout).await
        }
        .await;
        if let Err(e) = started {
            cluster.close().await;
            return Err(e).context("starting the benchmark's own cluster");
        }
        eprintln!(
            "started a cluster in {} ({} members, {} storage nodes, {} shards, rf {})",
            cluster.dir.display(),
            plan.meta,
            plan.storage,
            plan.shards,
            plan.rf
        );
        Ok(cluster)
    }

    /// Stops the cluster if this run started it (and deletes it unless asked to keep it).
    pub async fn close(self) {
        let Some(keep) = self.own else { return };
        if let Err(e) = local::down(&self.dir).await {
            eprintln!("stopping the benchmark's cluster: {e:#}");
        }
        if keep {
            eprintln!("kept the cluster in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
