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
