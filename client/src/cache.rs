//! A shard-location cache that answers lookups without a round trip.
//!
//! It starts from a full listing of the shard table and then applies a watch from the
//! listing's revision, so it converges to the leader's view and stays there. Entries are only
//! replaced by newer versions, so an old event can never undo a newer one. A storage node
//! that answers "wrong epoch" tells the caller the cache is behind for that shard:
//! [`ShardCache::invalidate`] drops the entry until the watch (or a direct read through
//! [`ShardCache::lookup_or_fetch`]) brings the new one.

use crate::client::Client;
use crate::error::Error;
use augur_proto::wire::Change;
use augur_proto::{Consistency, Key, Record, Shard, ShardId, Table};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Cached shard locations. Cheap to clone; clones share the map.
#[derive(Clone)]
pub struct ShardCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    map: RwLock<HashMap<ShardId, Arc<Shard>>>,
    revision: AtomicU64,
    client: Client,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for CacheInner {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.lock() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
    }
}

impl ShardCache {
    /// Loads every shard and starts following changes.
    pub async fn start(client: Client) -> Result<ShardCache, Error> {
        let (records, revision) = client
            .list(Table::Shards, Consistency::Linearizable)
            .await?;
        let map = records
            .into_iter()
            .filter_map(|r| match r {
                Record::Shard(s) => Some((s.id, Arc::new(s))),
                _ => None,
            })
            .collect();
        let cache = ShardCache {
            inner: Arc::new(CacheInner {
                map: RwLock::new(map),
                revision: AtomicU64::new(revision),
                client: client.clone(),
                task: std::sync::Mutex::new(None),
            }),
        };
        let weak = Arc::downgrade(&cache.inner);
        let mut watch = client.watch(vec![Table::Shards], revision + 1);
        let task = tokio::spawn(async move {
            while let Some(item) = watch.next().await {
                let Some(inner) = weak.upgrade() else { return };
                match item {
                    Ok(event) => {
                        for change in event.changes {
                            apply(&inner, change);
                        }
                        inner.revision.store(event.revision, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "shard cache watch ended; lookups fall back to reads");
                        if let Ok(mut m) = inner.map.write() {
                            m.clear();
                        }
                        return;
                    }
                }
            }
        });
        if let Ok(mut t) = cache.inner.task.lock() {
            *t = Some(task);
        }
        Ok(cache)
    }

    /// The cached location of a shard, without a round trip.
    pub fn lookup(&self, id: ShardId) -> Option<Arc<Shard>> {
        self.inner.map.read().ok()?.get(&id).cloned()
    }

    /// The cached location, or a linearizable read if it is not cached.
    pub async fn lookup_or_fetch(&self, id: ShardId) -> Result<Option<Arc<Shard>>, Error> {
        if let Some(s) = self.lookup(id) {
            return Ok(Some(s));
        }
        match self.inner.client.get(&Key::Shard(id)).await? {
            Some(Record::Shard(s)) => {
                let s = Arc::new(s);
                self.insert(s.clone());
                Ok(Some(s))
            }
            _ => Ok(None),
        }
    }

    /// Drops a shard's entry if it is not newer than `stale_epoch` (what a storage node said
    /// was out of date).
    pub fn invalidate(&self, id: ShardId, stale_epoch: u64) {
        if let Ok(mut m) = self.inner.map.write() {
            if m.get(&id).is_some_and(|s| s.epoch <= stale_epoch) {
                m.remove(&id);
            }
        }
    }

    /// Last revision folded into the cache.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// Shards cached.
    pub fn len(&self) -> usize {
        self.inner.map.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, shard: Arc<Shard>) {
        if let Ok(mut m) = self.inner.map.write() {
            upsert(&mut m, shard);
        }
    }
}

fn upsert(m: &mut HashMap<ShardId, Arc<Shard>>, shard: Arc<Shard>) {
    match m.get(&shard.id) {
        Some(old) if old.version >= shard.version => {}
        _ => {
            m.insert(shard.id, shard);
        }
    }
}

fn apply(inner: &CacheInner, change: Change) {
    let Ok(mut m) = inner.map.write() else { return };
    match change {
        Change::Put(Record::Shard(s)) => upsert(&mut m, Arc::new(s)),
        Change::Delete(Key::Shard(id)) => {
            m.remove(&id);
        }
        _ => {}
    }
}
