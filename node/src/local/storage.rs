//! Storage nodes of a local cluster: their files, and bringing the data plane up.
//!
//! `augur local up --storage N` writes, for each node id 1..=N, a storage certificate bound
//! to that id (`certs/storage-N.pem`) and `storage-N/config.toml` in the format of
//! [`crate::storage::config`], with racks assigned round-robin (`r1`, `r2`, `r3`) so that
//! placement can spread replicas. Once the metadata quorum is healthy it starts the nodes,
//! waits until every one has registered and is Up, creates the data plane if there is none
//! (`InitDataPlane`), and waits until every shard's primary answers a read: the cluster is
//! then ready for clients.

use super::{free_port_pair, log_tail, running, start, Proc, CLUSTER_FILE};
use crate::certs::{self, Role};
use crate::storage::config::StorageFile;
use crate::storage::health::config::HealthSource;
use anyhow::{bail, Context};
use augur_client::{Client, ClusterFile, DataClient, DataConfig};
use augur_proto::data::DataCluster;
use augur_proto::{Node, NodeId, NodeState, ShardId};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Racks nodes are spread over, round-robin: enough for rf 3 to place every replica of a
/// shard in its own rack.
const RACKS: u64 = 3;

/// What `augur local up` is asked for on the data plane's side.
#[derive(Debug, Clone, Copy)]
pub struct DataPlan {
    /// Storage nodes the cluster should have (more are created if DIR has fewer).
    pub storage: u64,
    /// Shards of a new data plane.
    pub shards: u32,
    /// Replicas per shard of a new data plane (default: 3, or fewer nodes if fewer).
    pub rf: Option<u32>,
    /// `[copy] bytes_per_sec` of new storage nodes (default: the node's own, 100 MiB/s);
    /// the recovery benchmark lifts it to measure the copy machinery, not the throttle.
    pub copy_bytes_per_sec: Option<u64>,
}

/// A storage node's directory in DIR.
pub fn storage_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("storage-{id}"))
}

/// Storage node ids present in DIR, in order.
pub fn storage_nodes(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        if let Some(id) = name
            .to_string_lossy()
            .strip_prefix("storage-")
            .and_then(|s| s.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The subset of [`StorageFile`] a local cluster sets; everything else keeps the storage
/// node's defaults. Checked by loading it back as a [`StorageFile`] once written.
#[derive(Serialize)]
struct LocalStorageFile {
    id: u64,
    listen: String,
    admin_listen: String,
    data_dir: String,
    meta_endpoints: Vec<String>,
    rack: String,
    zone: String,
    #[serde(skip_serializing_if = "is_zero")]
    capacity_bytes: u64,
    tls: augur_client::TlsFiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    copy: Option<LocalCopy>,
    health: LocalHealth,
}

/// The `[health]` settings of a local cluster's nodes: the repository's shipped models (this
/// source tree's `predictor/models`), scored every 5 s rather than every 5 minutes so a demo
/// shows risk move within seconds, and, for the simulated source, 6 h of synthesised healthy
/// history so the model's long windows are filled from the start.
#[derive(Serialize)]
struct LocalHealth {
    source: HealthSource,
    node_model: PathBuf,
    disk_model: PathBuf,
    score_interval_ms: u64,
    simulated_backfill_ms: u64,
}

impl LocalHealth {
    fn new(source: HealthSource) -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let models = manifest
            .parent()
            .unwrap_or(manifest)
            .join("predictor/models");
        LocalHealth {
            source,
            node_model: models.join("default.model"),
            disk_model: models.join("disk.model"),
            score_interval_ms: 5_000,
            simulated_backfill_ms: if source == HealthSource::Simulated {
                6 * 3_600_000
            } else {
                0
            },
        }
    }
}

/// The `[copy]` settings a local cluster may override.
#[derive(Serialize)]
struct LocalCopy {
    bytes_per_sec: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// How `augur local up` configures the storage nodes it creates (nodes already in DIR keep
/// their configuration).
#[derive(Debug, Clone, Copy)]
pub struct NewNodes {
    /// Their health agents' source.
    pub health: HealthSource,
    /// Their `capacity_bytes` (0: their filesystem's size).
    pub capacity_bytes: u64,
}

/// Writes the certificate and configuration of storage node `id`.
fn write_storage(
    dir: &Path,
    id: u64,
    meta_endpoints: &[String],
    copy_bytes_per_sec: Option<u64>,
    new: NewNodes,
) -> anyhow::Result<()> {
    let certs_dir = dir.join("certs");
    let name = format!("storage-{id}");
    let node = NodeId::new(id)?;
    certs::issue(
        &certs_dir,
        &certs_dir,
        &name,
        Role::Storage(node),
        &["127.0.0.1".into(), "localhost".into()],
    )?;
    let sdir = storage_dir(dir, id);
    std::fs::create_dir_all(&sdir)?;
    let (q, a) = free_port_pair()?;
    let file = LocalStorageFile {
        id,
        listen: format!("127.0.0.1:{q}"),
        admin_listen: format!("127.0.0.1:{a}"),
        data_dir: "data".into(),
        meta_endpoints: meta_endpoints.to_vec(),
        rack: format!("r{}", (id - 1) % RACKS + 1),
        zone: "z1".into(),
        capacity_bytes: new.capacity_bytes,
        tls: augur_client::TlsFiles {
            ca: "../certs/ca.pem".into(),
            cert: format!("../certs/{name}.pem").into(),
            key: format!("../certs/{name}.key").into(),
        },
        copy: copy_bytes_per_sec.map(|bytes_per_sec| LocalCopy { bytes_per_sec }),
        health: LocalHealth::new(new.health),
    };
    let path = sdir.join("config.toml");
    let text = format!(
        "# Written by `augur local`; every other setting has its default \
         (see node/src/storage/config.rs).\n{}",
        toml::to_string(&file).context("encoding a storage config")?
    );
    std::fs::write(&path, text)?;
    StorageFile::load(&path)
        .and_then(StorageFile::validate)
        .with_context(|| format!("{} does not load back", path.display()))?;
    Ok(())
}

/// Creates the files of storage nodes `from..=to`.
fn create(
    dir: &Path,
    from: u64,
    to: u64,
    copy_bytes_per_sec: Option<u64>,
    new: NewNodes,
) -> anyhow::Result<()> {
    let file = ClusterFile::load(&dir.join(CLUSTER_FILE))?;
    for id in from..=to {
        write_storage(dir, id, &file.endpoints, copy_bytes_per_sec, new)
            .with_context(|| format!("creating storage node {id}"))?;
    }
    Ok(())
}

/// Prints the end of each named process's log to stderr.
fn report_logs(dir: &Path, ids: &[u64]) {
    for id in ids {
        let proc = Proc::Storage(*id);
        eprintln!(
            "--- last lines of {}:",
            proc.dir(dir).join("augur.log").display()
        );
        for l in log_tail(dir, proc, 10) {
            eprintln!("{l}");
        }
    }
}

/// Whether `n`'s record shows it registered and heartbeating: Up, or Suspect or Draining by
/// a decision of the risk policy or an operator (a persisted state its heartbeats do not
/// change: waiting for Up would wait out the timeout on a cluster with a drained node).
fn registered(n: &Node) -> bool {
    use augur_proto::StateOrigin;
    match n.state {
        NodeState::Up => true,
        NodeState::Suspect | NodeState::Draining => {
            matches!(n.cause.origin, StateOrigin::Policy | StateOrigin::Operator)
        }
        NodeState::Down | NodeState::Removed => false,
    }
}

/// Waits until every node in `ids` is registered (see [`registered`]). A node whose process
/// has exited fails the wait at once: nothing will register it.
pub async fn wait_registered(
    dir: &Path,
    client: &Client,
    ids: &[u64],
    timeout: Duration,
) -> anyhow::Result<Vec<Node>> {
    let deadline = Instant::now() + timeout;
    // Nodes found not running at the previous look. A process is declared exited only when
    // seen so twice in a row: a child that has just been spawned can show an empty command
    // line for a moment while the kernel finishes its exec, and fail the identity check.
    let mut missing: Vec<u64> = Vec::new();
    loop {
        let now_missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| running(dir, Proc::Storage(*id)).is_none())
            .collect();
        let exited: Vec<u64> = now_missing
            .iter()
            .copied()
            .filter(|id| missing.contains(id))
            .collect();
        if !exited.is_empty() {
            report_logs(dir, &exited);
            bail!("storage node(s) {exited:?} exited (see their logs above)");
        }
        missing = now_missing;
        let nodes = client.list_nodes().await.unwrap_or_default();
        let pending: Vec<String> = ids
            .iter()
            .filter_map(|id| match nodes.iter().find(|n| n.id.0 == *id) {
                Some(n) if registered(n) => None,
                Some(n) => Some(format!("storage-{id}: {:?}", n.state)),
                None => Some(format!("storage-{id}: not registered")),
            })
            .collect();
        if pending.is_empty() {
            return Ok(nodes);
        }
        if Instant::now() >= deadline {
            report_logs(dir, ids);
            bail!(
                "storage nodes not Up after {timeout:?}: {}",
                pending.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every shard's primary answers a read (a one-item scan), which it does only
/// once it holds a valid lease and has reconciled.
pub async fn wait_serving(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let cfg = DataConfig {
        request_timeout: Duration::from_secs(2),
        ..DataConfig::default()
    };
    let data = DataClient::with_config(client.clone(), cfg).await?;
    let mut pending: Vec<ShardId> = (1..=u64::from(data.layout().shards)).map(ShardId).collect();
    loop {
        let results: Vec<(ShardId, Result<(), augur_client::Error>)> = stream::iter(pending)
            .map(|s| {
                let data = data.clone();
                async move { (s, data.scan_shard(s, b"", None, 1).await.map(|_| ())) }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut last = None;
        pending = Vec::new();
        for (s, r) in results {
            if let Err(e) = r {
                last = Some(format!("shard {s}: {e}"));
                pending.push(s);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} shard(s) not served after {timeout:?}; last: {}",
                pending.len(),
                last.unwrap_or_default()
            );
        }
        pending.sort();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The storage half of `augur local up`, run once the metadata quorum is healthy: creates
/// the nodes DIR lacks, starts every node that is not running, waits until all are Up,
/// creates the data plane if there is none, and waits until every shard is served. Does
/// nothing for a cluster with no storage nodes and none asked for.
pub async fn up(dir: &Path, plan: DataPlan, timeout: Duration) -> anyhow::Result<()> {
    up_with_health(dir, plan, HealthSource::Simulated, timeout).await
}

/// [`up`], with new storage nodes' health agents on `health` (nodes already in DIR keep
/// their configuration). A local cluster's nodes share one machine and one disk, so the
/// simulated source (with fault injection) is the default there; `linux` samples the host.
pub async fn up_with_health(
    dir: &Path,
    plan: DataPlan,
    health: HealthSource,
    timeout: Duration,
) -> anyhow::Result<()> {
    let new = NewNodes {
        health,
        capacity_bytes: 0,
    };
    up_with(dir, plan, new, timeout).await
}

/// [`up`], with new storage nodes configured as `new` says.
pub async fn up_with(
    dir: &Path,
    plan: DataPlan,
    new: NewNodes,
    timeout: Duration,
) -> anyhow::Result<()> {
    let existing = storage_nodes(dir)?;
    let have = existing.last().copied().unwrap_or(0);
    if plan.storage > have {
        create(dir, have + 1, plan.storage, plan.copy_bytes_per_sec, new)?;
    }
    let ids = storage_nodes(dir)?;
    if ids.is_empty() {
        return Ok(());
    }
    for id in &ids {
        start(dir, Proc::Storage(*id))?;
    }
    let client = super::client(dir)?;
    wait_registered(dir, &client, &ids, timeout).await?;
    if client.data_layout().await?.is_none() {
        let rf = plan.rf.unwrap_or_else(|| (ids.len() as u32).min(3));
        let layout = DataCluster {
            shards: plan.shards,
            rf,
        };
        client
            .init_data_plane(layout, timeout)
            .await
            .with_context(|| {
                format!("creating the data plane ({} shards, rf {rf})", plan.shards)
            })?;
    }
    wait_serving(&client, timeout).await
}

/// One storage node as `augur local status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StorageStatus {
    /// Node id.
    pub node: u64,
    /// Its process id, if running.
    pub pid: Option<i32>,
    /// Its record in the registry, if the metadata cluster answered and it has one.
    pub record: Option<Node>,
    /// Replicas it holds, by the shard records.
    pub shards: usize,
    /// Shards it is primary of.
    pub primaries: usize,
}

/// Every storage node of DIR, with what the registry and shard table say of it (left
/// empty when the metadata cluster does not answer).
pub async fn status(dir: &Path) -> anyhow::Result<Vec<StorageStatus>> {
    let ids = storage_nodes(dir)?;
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let client = super::client(dir)?;
    let nodes = client.list_nodes().await.unwrap_or_default();
    let shards = match client
        .list(
            augur_proto::Table::Shards,
            augur_proto::Consistency::Linearizable,
        )
        .await
    {
        Ok((records, _)) => records,
        Err(_) => vec![],
    };
    Ok(ids
        .into_iter()
        .map(|id| {
            let holds = |primary_only: bool| {
                shards
                    .iter()
                    .filter(|r| match r {
                        augur_proto::Record::Shard(s) if primary_only => {
                            s.replicas.first().is_some_and(|p| p.0 == id)
                        }
                        augur_proto::Record::Shard(s) => s.replicas.iter().any(|n| n.0 == id),
                        _ => false,
                    })
                    .count()
            };
            StorageStatus {
                node: id,
                pid: running(dir, Proc::Storage(id)),
                record: nodes.iter().find(|n| n.id.0 == id).cloned(),
                shards: holds(false),
                primaries: holds(true),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_files_load_back_with_their_own_certificate_and_racks_round_robin() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        certs::create_ca(&d.join("certs")).unwrap();
        ClusterFile {
            endpoints: vec!["127.0.0.1:7101".into(), "127.0.0.1:7102".into()],
            admin: vec![],
            tls: augur_client::TlsFiles {
                ca: "certs/ca.pem".into(),
                cert: "certs/operator.pem".into(),
                key: "certs/operator.key".into(),
            },
        }
        .save(&d.join(CLUSTER_FILE))
        .unwrap();

        let new = NewNodes {
            health: HealthSource::Simulated,
            capacity_bytes: 0,
        };
        create(d, 1, 4, None, new).unwrap();
        create(
            d,
            5,
            5,
            None,
            NewNodes {
                capacity_bytes: 1 << 30,
                ..new
            },
        )
        .unwrap();
        let five = StorageFile::load(&storage_dir(d, 5).join("config.toml")).unwrap();
        assert_eq!(five.capacity_bytes, 1 << 30);

        assert_eq!(storage_nodes(d).unwrap(), vec![1, 2, 3, 4, 5]);
        let mut listens = std::collections::HashSet::new();
        for id in 1..=4u64 {
            let cfg = StorageFile::load(&storage_dir(d, id).join("config.toml"))
                .unwrap()
                .validate()
                .unwrap();
            assert_eq!(cfg.id, id);
            assert_eq!(cfg.rack, format!("r{}", (id - 1) % 3 + 1));
            assert_eq!(cfg.meta_endpoints.len(), 2);
            assert_eq!(cfg.data_dir, storage_dir(d, id).join("data"));
            assert!(listens.insert(cfg.listen), "ports differ");
            use rustls::pki_types::pem::PemObject;
            let der = rustls::pki_types::CertificateDer::from_pem_file(&cfg.tls.cert).unwrap();
            assert_eq!(
                augur_transport::roles::role_of_certificate(der.as_ref()),
                Ok(Role::Storage(NodeId(id)))
            );
        }
    }
}
