//! Test support for moving shards under load: a client workload that keeps a ledger of what
//! clients were told, a sampler of the shard map, `augurctl` as operators run it, and the
//! drain records the tests read back. Shared by the drain tests and the migration-fault
//! tests, which assert the same things: no failed or `Indeterminate` request, nothing
//! acknowledged lost, every shard at its replication factor at every sample.

use crate::storage::{nodes, shards};
use crate::{augur_bin, poll, LocalCluster};
use augur_client::{Client, DataClient, Error};
use augur_proto::{Migration, MigrationKind, MigrationState, NodeId, NodeState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// What clients were told.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The latest acknowledged write per key: (value, version).
    pub acked: HashMap<String, (String, u64)>,
    /// Writes acknowledged.
    pub writes_ok: u64,
    /// Reads answered.
    pub reads_ok: u64,
    /// Requests that returned an error (what the tests here must never see).
    pub failed: Vec<String>,
    /// Writes whose outcome was unknown (also listed in `failed`).
    pub indeterminate: u64,
    /// Reads older than a write acknowledged before they began.
    pub stale: Vec<String>,
}

/// Keys a writer cycles through: few enough that reads hit acknowledged values.
const KEYS_PER_WRITER: u64 = 32;

async fn writer(
    data: DataClient,
    prefix: String,
    w: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!("{prefix}-{w}-{}", n % KEYS_PER_WRITER);
        let value = format!("{w}-{n}-{}", "x".repeat(200));
        let r = data.put(key.clone(), value.clone().into_bytes()).await;
        let mut l = ledger.lock().unwrap();
        match r {
            Ok(version) => {
                l.writes_ok += 1;
                let e = l.acked.entry(key).or_insert((value.clone(), version));
                if version >= e.1 {
                    *e = (value, version);
                }
            }
            Err(Error::Indeterminate(e)) => {
                l.indeterminate += 1;
                l.failed.push(format!("write {key}: indeterminate: {e}"));
            }
            Err(e) => l.failed.push(format!("write {key}: {e}")),
        }
    }
}

async fn reader(
    data: DataClient,
    prefix: String,
    writers: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!(
            "{prefix}-{}-{}",
            n % writers.max(1) as u64,
            n % KEYS_PER_WRITER
        );
        let floor = ledger.lock().unwrap().acked.get(&key).map(|a| a.1);
        let r = data.get(key.as_bytes()).await;
        let mut l = ledger.lock().unwrap();
        match r {
            Ok(got) => {
                l.reads_ok += 1;
                let version = got.map(|v| v.version);
                if let Some(floor) = floor {
                    if version.is_none_or(|v| v < floor) {
                        l.stale
                            .push(format!("{key}: read {version:?} after {floor} was acked"));
                    }
                }
            }
            Err(e) => l.failed.push(format!("read {key}: {e}")),
        }
    }
}

/// Samples the shard map until stopped: every shard whose replica count differs from `rf`
/// (with `surplus_ok`, is below it), and how many samples were taken. A sample that cannot
/// be read (no metadata leader for a moment) is skipped, not counted.
async fn sampler(
    client: Client,
    rf: usize,
    surplus_ok: bool,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, usize) {
    let mut bad = Vec::new();
    let mut samples = 0;
    while !stop.load(Ordering::Acquire) {
        if let Ok(all) = shards(&client).await {
            samples += 1;
            for s in all.values() {
                let n = s.replicas.len();
                if n < rf || (n > rf && !surplus_ok) {
                    bad.push(format!("{s:?}"));
                }
            }
        }
        // Often enough that a drain over in a second or two is still seen several times.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (bad, samples)
}

/// Writers and readers on keys `PREFIX-W-N`, and a sampler of the shard map, running until
/// [`Workload::finish`].
pub struct Workload {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    sampling: JoinHandle<(Vec<String>, usize)>,
    rf: usize,
}

/// What a workload saw, once stopped.
#[derive(Debug)]
pub struct Finished {
    /// What clients were told.
    pub ledger: Ledger,
    /// Samples of the shard map with a shard not at its replication factor.
    pub bad_samples: Vec<String>,
    /// Samples of the shard map taken.
    pub samples: usize,
    /// The replication factor sampled against.
    pub rf: usize,
}

impl Workload {
    /// Starts `writers` writers and `readers` readers on `data`, and a sampler of the shard
    /// map through `sampling` expecting `rf` replicas per shard.
    pub fn start(
        data: &DataClient,
        sampling: Client,
        prefix: &str,
        writers: usize,
        readers: usize,
        rf: usize,
    ) -> Workload {
        Self::launch(data, sampling, prefix, (writers, readers), rf, false)
    }

    /// As [`Workload::start`], with a sampler that accepts shards above `rf` for a while (a
    /// sole replica's drain adds its copy beside it before it leaves) but never below.
    pub fn start_at_least(
        data: &DataClient,
        sampling: Client,
        prefix: &str,
        writers: usize,
        readers: usize,
        rf: usize,
    ) -> Workload {
        Self::launch(data, sampling, prefix, (writers, readers), rf, true)
    }

    fn launch(
        data: &DataClient,
        sampling: Client,
        prefix: &str,
        (writers, readers): (usize, usize),
        rf: usize,
        surplus_ok: bool,
    ) -> Workload {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..writers {
            tasks.push(tokio::spawn(writer(
                data.clone(),
                prefix.to_string(),
                w,
                ledger.clone(),
                stop.clone(),
            )));
        }
        for _ in 0..readers {
            tasks.push(tokio::spawn(reader(
                data.clone(),
                prefix.to_string(),
                writers,
                ledger.clone(),
                stop.clone(),
            )));
        }
        let sampling = tokio::spawn(sampler(sampling, rf, surplus_ok, stop.clone()));
        Workload {
            ledger,
            stop,
            tasks,
            sampling,
            rf,
        }
    }

    /// Writes acknowledged so far.
    pub fn writes_ok(&self) -> u64 {
        self.ledger.lock().unwrap().writes_ok
    }

    /// Waits until `more` writes beyond those acknowledged now are acknowledged.
    pub async fn more_writes(&self, more: u64, timeout: Duration) -> anyhow::Result<()> {
        let from = self.writes_ok();
        poll(timeout, &format!("{more} more writes"), || async {
            Ok((self.writes_ok() >= from + more).then_some(()))
        })
        .await
    }

    /// Stops every client and the sampler, and returns what they saw.
    pub async fn finish(self) -> anyhow::Result<Finished> {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.await?;
        }
        let (bad_samples, samples) = self.sampling.await?;
        let ledger = std::mem::take(&mut *self.ledger.lock().unwrap());
        Ok(Finished {
            ledger,
            bad_samples,
            samples,
            rf: self.rf,
        })
    }
}

impl Finished {
    /// Panics unless no request failed, none was `Indeterminate`, no read was stale, the
    /// shard map was sampled more than `min_samples` times and every sample had every shard
    /// at its replication factor.
    pub fn assert_clean(&self, min_samples: usize) {
        let l = &self.ledger;
        assert!(
            l.failed.is_empty(),
            "{} failed requests (of {} writes, {} reads): {:?}",
            l.failed.len(),
            l.writes_ok,
            l.reads_ok,
            &l.failed[..l.failed.len().min(10)]
        );
        assert_eq!(l.indeterminate, 0);
        assert!(l.stale.is_empty(), "{:?}", l.stale);
        assert!(
            self.samples > min_samples,
            "only {} samples of the shard map",
            self.samples
        );
        assert!(
            self.bad_samples.is_empty(),
            "shards not at rf {}: {:?}",
            self.rf,
            &self.bad_samples[..self.bad_samples.len().min(5)]
        );
    }

    /// Checks that every acknowledged write reads back at its version or a later one.
    pub async fn assert_acked_readable(&self, data: &DataClient) -> anyhow::Result<()> {
        for (key, (value, version)) in &self.ledger.acked {
            let got = poll(Duration::from_secs(30), "a final read", || async {
                Ok(data.get(key.as_bytes()).await.ok())
            })
            .await?
            .unwrap_or_else(|| panic!("{key}: acknowledged at version {version}, now absent"));
            assert!(
                got.version >= *version,
                "{key}: acknowledged {value:?} at {version}, read version {}",
                got.version
            );
        }
        Ok(())
    }
}

/// Runs `augurctl --cluster FILE ARGS` against `c`, failing with its output if it fails.
pub fn augurctl(c: &LocalCluster, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(augur_bin().with_file_name("augurctl"))
        .arg("--cluster")
        .arg(c.dir().join("cluster.toml"))
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "augurctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Drains `node` as an operator does (`augurctl node drain`), and checks its record says so.
pub async fn drain(c: &LocalCluster, client: &Client, node: NodeId) -> anyhow::Result<()> {
    let id = node.0.to_string();
    augurctl(c, &["node", "drain", &id, "--reason", "drain test"])?;
    let n = nodes(client).await?[&node].clone();
    anyhow::ensure!(n.state == NodeState::Draining, "not draining: {n:?}");
    Ok(())
}

/// Every migration record.
pub async fn migrations(client: &Client) -> anyhow::Result<Vec<Migration>> {
    Ok(client.list_migrations().await?)
}

/// The drain moves off `node` recorded so far.
pub async fn drain_moves(client: &Client, node: NodeId) -> anyhow::Result<Vec<Migration>> {
    Ok(migrations(client)
        .await?
        .into_iter()
        .filter(|m| m.kind == MigrationKind::Drain && m.from == node)
        .collect())
}

/// Whether a migration is over (committed or aborted).
pub fn finished(m: &Migration) -> bool {
    matches!(m.state, MigrationState::Committed | MigrationState::Aborted)
}

/// Polls until no shard lists `node` as a replica or learner.
pub async fn emptied(client: &Client, node: NodeId, timeout: Duration) -> anyhow::Result<()> {
    poll(timeout, "the drained node emptied", || async {
        let all = shards(client).await?;
        let left = all
            .values()
            .filter(|s| s.replicas.contains(&node) || s.learners.contains(&node))
            .count();
        Ok((left == 0).then_some(()))
    })
    .await
}

/// Replicas per node (primary or secondary) in the shard map now.
pub async fn replicas_held(client: &Client) -> anyhow::Result<HashMap<NodeId, usize>> {
    let mut held = HashMap::new();
    for s in shards(client).await?.values() {
        for n in &s.replicas {
            *held.entry(*n).or_default() += 1;
        }
    }
    Ok(held)
}

impl LocalCluster {
    /// Stops the whole cluster, sets every storage node's copy budget (`[copy]
    /// bytes_per_sec`, shared by its copies in and out) and, if given, its chunk size, and
    /// starts it again: how a test makes moves slow enough for a fault to land while they
    /// copy. `augur local up` has no flag for these, and a node reads its configuration only
    /// at start.
    pub fn restart_with_copy(
        &self,
        bytes_per_sec: u64,
        chunk_bytes: Option<usize>,
    ) -> anyhow::Result<()> {
        let d = self.dir().to_string_lossy().into_owned();
        crate::augur(&["local", "down", "--dir", &d])?;
        let mut table = format!("\n[copy]\nbytes_per_sec = {bytes_per_sec}\n");
        if let Some(chunk) = chunk_bytes {
            table.push_str(&format!("chunk_bytes = {chunk}\n"));
        }
        for entry in std::fs::read_dir(self.dir())? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with("storage-") {
                continue;
            }
            let path = entry.path().join("config.toml");
            let mut config = std::fs::read_to_string(&path)?;
            config.push_str(&table);
            std::fs::write(&path, config)?;
        }
        crate::augur(&["local", "up", "--dir", &d, "--timeout", "120"]).map(|_| ())
    }
}
