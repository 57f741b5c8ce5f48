//! Test support for storage nodes: their processes, their records, their own view.

use crate::{augur, LocalCluster};
use anyhow::{bail, Context};
use augur_client::{Client, Transport};
use augur_proto::data::{DataRequest, DataResponse, NodeReport};
use augur_proto::{Node, NodeId, Shard, ShardId};
use std::collections::BTreeMap;
use std::time::Duration;

impl LocalCluster {
    fn storage_pid(&self, id: u64) -> anyhow::Result<i32> {
        let path = self.dir().join(format!("storage-{id}")).join("pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().parse()?)
    }

    /// SIGKILLs storage node `id`, as a crash would.
    pub fn kill_storage(&self, id: u64) -> anyhow::Result<()> {
        let d = self.dir().to_string_lossy().into_owned();
        augur(&[
            "local",
            "stop",
            "--dir",
            &d,
            "--storage",
            &id.to_string(),
            "--kill",
        ])
        .map(|_| ())
    }

    /// Starts storage node `id` again.
    pub fn start_storage(&self, id: u64) -> anyhow::Result<()> {
        let d = self.dir().to_string_lossy().into_owned();
        augur(&["local", "start", "--dir", &d, "--storage", &id.to_string()]).map(|_| ())
    }

    /// Freezes storage node `id` (SIGSTOP): it holds its sockets and state but does nothing,
    /// as a node stuck in a long GC pause or a hung disk would.
    pub fn pause_storage(&self, id: u64) -> anyhow::Result<()> {
        let pid = self.storage_pid(id)?;
        // SAFETY: plain signal delivery to a pid this cluster started.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            bail!("SIGSTOP to storage node {id} (pid {pid}) failed");
        }
        Ok(())
    }

    /// Resumes a paused storage node (SIGCONT).
    pub fn resume_storage(&self, id: u64) -> anyhow::Result<()> {
        let pid = self.storage_pid(id)?;
        // SAFETY: as above.
        if unsafe { libc::kill(pid, libc::SIGCONT) } != 0 {
            bail!("SIGCONT to storage node {id} (pid {pid}) failed");
        }
        Ok(())
    }
}

/// Every shard record, by id.
pub async fn shards(client: &Client) -> anyhow::Result<BTreeMap<ShardId, Shard>> {
    Ok(client.list_shards().await?)
}

/// Every storage-node record, by id.
pub async fn nodes(client: &Client) -> anyhow::Result<BTreeMap<NodeId, Node>> {
    Ok(client
        .list_nodes()
        .await?
        .into_iter()
        .map(|n| (n.id, n))
        .collect())
}

/// The node leading the most shards.
pub async fn busiest_primary(client: &Client) -> anyhow::Result<NodeId> {
    let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
    for s in shards(client).await?.values() {
        if let Some(p) = s.replicas.first() {
            *led.entry(*p).or_default() += 1;
        }
    }
    led.into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(id, _)| id)
        .context("no shard has a primary")
}

/// What storage node `node` says about itself (a probe, as the control plane sends it; the
/// cluster file's operator certificate may probe).
pub async fn probe(transport: &Transport, node: &Node) -> anyhow::Result<NodeReport> {
    let addr = node.addrs.first().context("node without address")?;
    match transport
        .call_as::<_, DataResponse>(addr, &DataRequest::Probe, Duration::from_secs(5))
        .await?
    {
        DataResponse::Probe(r) => Ok(r),
        other => bail!("probe of node {} answered {other:?}", node.id),
    }
}

/// A raw transport to the storage nodes of `c`, with the cluster file's operator
/// certificate (which may probe and ask for checkpoints).
pub fn storage_transport(c: &LocalCluster) -> anyhow::Result<Transport> {
    let files = c.cluster_file()?;
    Ok(Transport::client(&files.tls, Duration::from_secs(2))?
        .for_servers(augur_transport::STORAGE_SERVER_NAME))
}

/// Every replica's `(node, crc64, keys)` of `shard` at one fresh checkpoint: the primary is
/// asked to write one, then every replica is probed until it reports that checkpoint. Equal
/// entries mean equal content at that sequence. If the shard's configuration changes
/// meanwhile (a balancing move or hand-off can follow any drain or repair), the replicas
/// probed may no longer all take the checkpoint: the comparison starts again on the new
/// configuration, within one overall deadline.
pub async fn replica_checksums(
    c: &LocalCluster,
    client: &Client,
    shard: ShardId,
) -> anyhow::Result<Vec<(u64, u64, u64)>> {
    let raw = storage_transport(c)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = shards(client).await?[&shard].clone();
        let registry = nodes(client).await?;
        let primary = &registry[s.replicas.first().context("shard without replicas")?];
        let asked = raw
            .call_as::<_, DataResponse>(
                primary.addrs.first().context("node without address")?,
                &DataRequest::Checkpoint {
                    shard,
                    epoch: s.epoch,
                },
                Duration::from_secs(30),
            )
            .await;
        let seq = match asked {
            Ok(DataResponse::Checkpointed { seq }) => Some(seq),
            // Refused by a primary replaced meanwhile: start again on the new configuration.
            other => {
                if shards(client).await?[&shard].epoch == s.epoch {
                    match other {
                        Ok(answer) => bail!("checkpoint of shard {shard}: {answer:?}"),
                        Err(e) => return Err(e.into()),
                    }
                }
                None
            }
        };
        if let Some(seq) = seq {
            let seen = crate::poll(
                Duration::from_secs(15),
                "every replica's checksum",
                || async {
                    if shards(client).await?[&shard].epoch != s.epoch {
                        return Ok(Some(None));
                    }
                    let mut crcs = Vec::new();
                    for n in &s.replicas {
                        let report = probe(&raw, &registry[n]).await?;
                        let cp = report
                            .replicas
                            .iter()
                            .find(|r| r.shard == shard)
                            .and_then(|r| r.checkpoint)
                            .filter(|cp| cp.seq == seq);
                        match cp {
                            Some(cp) => crcs.push((n.0, cp.crc64, cp.keys)),
                            None => return Ok(None),
                        }
                    }
                    Ok(Some(Some(crcs)))
                },
            )
            .await;
            match seen {
                Ok(Some(crcs)) => return Ok(crcs),
                // The configuration changed under the comparison: start again.
                Ok(None) => {}
                Err(e) if shards(client).await?[&shard].epoch == s.epoch => return Err(e),
                Err(_) => {}
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!("shard {shard}: its configuration kept changing under the checksum comparison");
        }
    }
}

/// The sum over every registered storage node's `/metrics` of the series named `name`
/// (all label sets).
pub async fn storage_metric_sum(client: &Client, name: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for n in nodes(client).await?.values() {
        let Ok(addr) = n.admin.parse() else {
            continue;
        };
        let Ok(r) = augur_client::admin_http::get(addr, "/metrics", Duration::from_secs(5)).await
        else {
            continue;
        };
        sum += augur_client::admin_http::metric_sum(&r.body, name);
    }
    Ok(sum)
}
