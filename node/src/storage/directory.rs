//! What the storage node knows of the metadata: every shard record (its configuration) and
//! every node record (peers' addresses and states), followed by a watch.
//!
//! A change to a shard that lists this node, or that this node holds, is handed to that
//! shard's replica task at once; configuration changes reach replicas within a watch
//! round-trip of their commit. Entries are replaced only by newer versions. When the watch
//! ends (compaction, a long outage), the directory lists again.

use super::NodeCtx;
use augur_proto::data::{DataCluster, DATA_CLUSTER_SETTING};
use augur_proto::wire::Change;
use augur_proto::{Consistency, Key, Node, NodeId, Record, Shard, ShardId, Table};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// Shard and node records, as last seen.
#[derive(Default)]
pub struct Directory {
    shards: RwLock<HashMap<ShardId, Arc<Shard>>>,
    nodes: RwLock<HashMap<NodeId, Arc<Node>>>,
    layout: RwLock<Option<DataCluster>>,
}

impl Directory {
    /// A shard's record.
    pub fn shard(&self, id: ShardId) -> Option<Arc<Shard>> {
        self.shards.read().ok()?.get(&id).cloned()
    }

    /// A node's record.
    pub fn node(&self, id: NodeId) -> Option<Arc<Node>> {
        self.nodes.read().ok()?.get(&id).cloned()
    }

    /// The data plane's layout, once created.
    pub fn layout(&self) -> Option<DataCluster> {
        *self.layout.read().ok()?
    }

    /// Every shard record.
    pub fn all_shards(&self) -> Vec<Arc<Shard>> {
        self.shards
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Records a shard unless what is held is as new; returns whether it changed.
    fn learn_shard(&self, s: Shard) -> Option<Arc<Shard>> {
        let mut m = self.shards.write().ok()?;
        match m.get(&s.id) {
            Some(old) if old.version >= s.version => None,
            _ => {
                let s = Arc::new(s);
                m.insert(s.id, s.clone());
                Some(s)
            }
        }
    }

    fn learn_node(&self, n: Node) {
        if let Ok(mut m) = self.nodes.write() {
            match m.get(&n.id) {
                Some(old) if old.version >= n.version => {}
                _ => {
                    m.insert(n.id, Arc::new(n));
                }
            }
        }
    }

    fn learn_setting(&self, name: &str, value: &[u8]) {
        if name == DATA_CLUSTER_SETTING {
            if let Ok(l) = serde_json::from_slice::<DataCluster>(value) {
                if let Ok(mut w) = self.layout.write() {
                    *w = Some(l);
                }
            }
        }
    }
}

/// Reads `key`'s record from the metadata now (linearizably), for a refresh that cannot wait
/// for the watch; a failed read is logged and gives nothing.
async fn read_now(ctx: &NodeCtx, key: Key) -> Option<Record> {
    match ctx.meta.get_with(&key, Consistency::Linearizable).await {
        Ok((record, _)) => record,
        Err(e) => {
            tracing::debug!(%key, error = %e, "cannot refresh the record");
            None
        }
    }
}

/// Reads the shard record afresh (after a message named a newer epoch than the directory
/// holds) and hands it on.
pub async fn refresh_shard(ctx: &Arc<NodeCtx>, id: ShardId) {
    if let Some(Record::Shard(s)) = read_now(ctx, Key::Shard(id)).await {
        if let Some(s) = ctx.directory.learn_shard(s) {
            ctx.on_shard(s).await;
        }
    }
}

/// Reads node `id`'s record from the metadata now, for a peer the directory does not know
/// (yet) or knows under another incarnation: a replication stream to or from a node that
/// registered while this one was listing waited for the watch, and a reconciling primary's
/// peers were reported for removal when that took longer than the ack timeout.
pub async fn refresh_node(ctx: &Arc<NodeCtx>, id: NodeId) {
    if let Some(Record::Node(n)) = read_now(ctx, Key::Node(id)).await {
        tracing::debug!(node = %id, incarnation = n.incarnation, "refreshed a node record");
        ctx.directory.learn_node(n);
    }
}

async fn list_all(ctx: &Arc<NodeCtx>) -> Result<u64, augur_client::Error> {
    let mut first = None;
    for table in [Table::Settings, Table::Nodes, Table::Shards] {
        let (records, rev) = ctx.meta.list(table, Consistency::Linearizable).await?;
        first.get_or_insert(rev);
        for r in records {
            apply_record(ctx, r).await;
        }
    }
    Ok(first.unwrap_or(0))
}

async fn apply_record(ctx: &Arc<NodeCtx>, r: Record) {
    match r {
        Record::Shard(s) => {
            if let Some(s) = ctx.directory.learn_shard(s) {
                ctx.on_shard(s).await;
            }
        }
        Record::Node(n) => {
            tracing::debug!(node = %n.id, version = n.version, "directory: node record");
            ctx.directory.learn_node(n)
        }
        Record::Setting(s) => ctx.directory.learn_setting(&s.name, &s.value),
        Record::Migration(_) => {}
    }
}

/// Lists the tables and follows their changes until the node stops.
pub async fn follow(weak: Weak<NodeCtx>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(ctx) = weak.upgrade() else { return };
        let rev = match list_all(&ctx).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the metadata; retrying");
                drop(ctx);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        tracing::debug!(
            revision = rev,
            "directory listed; watching from the next revision"
        );
        ctx.directory_ready.notify_waiters();
        let mut watch = ctx.meta.watch(
            vec![Table::Settings, Table::Nodes, Table::Shards],
            rev.saturating_add(1),
        );
        drop(ctx);
        while let Some(item) = watch.next().await {
            let Some(ctx) = weak.upgrade() else { return };
            match item {
                Ok(ev) => {
                    backoff = Duration::from_millis(100);
                    for change in ev.changes {
                        match change {
                            Change::Put(r) => apply_record(&ctx, r).await,
                            // Shards and nodes are not deleted in normal operation; a deleted
                            // shard's replica becomes a stray when its next record omits it.
                            Change::Delete(_) => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metadata watch ended; listing again");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
