//! A shard-location cache that answers lookups without a round trip.
//!
//! It holds the shard table and the storage-node registry (a shard names its primary by node
//! id; the node record gives its address), so routing a key costs no metadata read. It
//! starts from a full listing of both tables and then applies a watch from the listing's
//! revision, so it converges to the leader's view and stays there. Entries are only
//! replaced by newer versions, so an old event can never undo a newer one, and a deleted shard
//! leaves a tombstone with the revision of its deletion, so a read that was already in flight
//! can never bring it back. If the watch ends (every member compacted the revision it needed,
//! or the cluster was unreachable for long), the cache lists again and watches from there,
//! with backoff; lookups keep answering from what it holds meanwhile. Node records follow
//! the same rules. A storage node that answers "wrong epoch" tells the caller the cache is behind for that shard:
//! [`ShardCache::invalidate`] drops the entry until the watch (or a direct read through
//! [`ShardCache::lookup_or_fetch`]) brings the new one.

use crate::client::Client;
use crate::error::Error;
use augur_proto::wire::Change;
use augur_proto::{Consistency, Key, Node, NodeId, Record, Shard, ShardId, Table};
use futures::StreamExt;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// A record kind the cache follows: how to find it in a change and what orders its versions.
trait Cached: Sized {
    /// Its id.
    type Id: Copy + Eq + Hash;
    /// Its id.
    fn id(&self) -> Self::Id;
    /// The log index that last changed it.
    fn version(&self) -> u64;
    /// The record, if it is of this kind.
    fn from_record(r: Record) -> Option<Self>;
    /// The id a key names, if it is of this kind.
    fn id_of(key: &Key) -> Option<Self::Id>;
}

impl Cached for Shard {
    type Id = ShardId;
    fn id(&self) -> ShardId {
        self.id
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn from_record(r: Record) -> Option<Shard> {
        match r {
            Record::Shard(s) => Some(s),
            _ => None,
        }
    }
    fn id_of(key: &Key) -> Option<ShardId> {
        match key {
            Key::Shard(id) => Some(*id),
            _ => None,
        }
    }
}

impl Cached for Node {
    type Id = NodeId;
    fn id(&self) -> NodeId {
        self.id
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn from_record(r: Record) -> Option<Node> {
        match r {
            Record::Node(n) => Some(n),
            _ => None,
        }
    }
    fn id_of(key: &Key) -> Option<NodeId> {
        match key {
            Key::Node(id) => Some(*id),
            _ => None,
        }
    }
}

/// What the cache knows of one record.
#[derive(Debug, Clone)]
enum Entry<T> {
    /// The record as of its version.
    Present(Arc<T>),
    /// Deleted at this revision: nothing at or below it may bring it back.
    Deleted(u64),
}

impl<T: Cached> Entry<T> {
    /// The revision this knowledge is as of.
    fn revision(&self) -> u64 {
        match self {
            Entry::Present(r) => r.version(),
            Entry::Deleted(r) => *r,
        }
    }
}

/// One table's records, applied to only by newer knowledge.
#[derive(Debug)]
struct RecordMap<T: Cached> {
    entries: HashMap<T::Id, Entry<T>>,
}

impl<T: Cached> Default for RecordMap<T> {
    fn default() -> Self {
        RecordMap {
            entries: HashMap::new(),
        }
    }
}

/// The shard map.
type ShardMap = RecordMap<Shard>;
/// The node registry.
type NodeMap = RecordMap<Node>;

impl<T: Cached> RecordMap<T> {
    /// Records `entry` for `id` unless what is held is as new or newer.
    fn learn(&mut self, id: T::Id, entry: Entry<T>) {
        match self.entries.get(&id) {
            Some(old) if old.revision() >= entry.revision() => {}
            _ => {
                self.entries.insert(id, entry);
            }
        }
    }

    /// Removes the entry for `used`'s id if it is `used` itself and `allow` agrees.
    fn forget(&mut self, used: &Arc<T>, allow: impl FnOnce() -> bool) {
        let id = used.id();
        let held = matches!(self.entries.get(&id), Some(Entry::Present(r)) if Arc::ptr_eq(r, used));
        if held && allow() {
            self.entries.remove(&id);
        }
    }

    fn get(&self, id: T::Id) -> Option<Arc<T>> {
        match self.entries.get(&id)? {
            Entry::Present(r) => Some(r.clone()),
            Entry::Deleted(_) => None,
        }
    }

    /// Folds in one change of a watch event at `revision`; changes to other tables are
    /// ignored.
    fn apply(&mut self, revision: u64, change: Change) {
        match change {
            Change::Put(r) => {
                if let Some(r) = T::from_record(r) {
                    self.learn(r.id(), Entry::Present(Arc::new(r)));
                }
            }
            Change::Delete(key) => {
                if let Some(id) = T::id_of(&key) {
                    self.learn(id, Entry::Deleted(revision));
                }
            }
        }
    }

    /// Folds in a full listing read at `revision`: records missing from it were deleted by
    /// then.
    fn relist(&mut self, records: Vec<T>, revision: u64) {
        let listed: std::collections::HashSet<T::Id> = records.iter().map(|r| r.id()).collect();
        let gone: Vec<T::Id> = self
            .entries
            .keys()
            .filter(|id| !listed.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.learn(id, Entry::Deleted(revision));
        }
        for r in records {
            self.learn(r.id(), Entry::Present(Arc::new(r)));
        }
    }

    /// Records held (tombstones aside).
    fn present(&self) -> impl Iterator<Item = &Arc<T>> {
        self.entries.values().filter_map(|e| match e {
            Entry::Present(r) => Some(r),
            Entry::Deleted(_) => None,
        })
    }

    fn len(&self) -> usize {
        self.present().count()
    }
}

/// Everything the cache holds, under one lock so that a listing or an event is folded in
/// whole.
#[derive(Debug, Default)]
struct Maps {
    shards: ShardMap,
    nodes: NodeMap,
}

impl Maps {
    fn apply(&mut self, revision: u64, change: Change) {
        match change.clone() {
            Change::Put(Record::Shard(_)) | Change::Delete(Key::Shard(_)) => {
                self.shards.apply(revision, change)
            }
            Change::Put(Record::Node(_)) | Change::Delete(Key::Node(_)) => {
                self.nodes.apply(revision, change)
            }
            _ => {}
        }
    }

    fn relist(&mut self, listing: Listing) {
        self.shards.relist(listing.shards, listing.shards_at);
        self.nodes.relist(listing.nodes, listing.nodes_at);
    }
}

/// Cached shard locations and storage-node records. Cheap to clone; clones share the maps.
#[derive(Clone)]
pub struct ShardCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    map: RwLock<Maps>,
    revision: AtomicU64,
    /// Times the cache had to list again after its watch ended.
    relists: AtomicU64,
    client: Client,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// One read at a time per missing record (see [`ShardCache::lookup_or_fetch`]).
    fetching: Fetching,
}

/// The records being read because they were missing: every request to a shard whose
/// primary just failed drops the entry, and each used to read it again itself, from every
/// task of every client at once, on the metadata leader that is handling the failover. Now
/// the first reads, the others wait for it and take what it brought.
#[derive(Default)]
struct Fetching {
    shards: Turns<ShardId>,
    nodes: Turns<NodeId>,
}

/// One lock per record being read.
type Turns<I> = std::sync::Mutex<HashMap<I, Arc<tokio::sync::Mutex<()>>>>;

/// `fetch`es the record `id` unless `cached` has it once this caller's turn comes: the
/// callers that waited while another read it take what that read brought.
async fn one_at_a_time<I, T, Fut>(
    locks: &Turns<I>,
    id: I,
    cached: impl Fn() -> Option<T>,
    fetch: impl FnOnce() -> Fut,
) -> Result<Option<T>, Error>
where
    I: Copy + Eq + Hash,
    Fut: std::future::Future<Output = Result<Option<T>, Error>>,
{
    let lock = match locks.lock() {
        Ok(mut m) => m.entry(id).or_default().clone(),
        // A poisoned map only costs the coalescing.
        Err(_) => Arc::default(),
    };
    let fetched = {
        let _turn = lock.lock().await;
        match cached() {
            Some(v) => Ok(Some(v)),
            None => fetch().await,
        }
    };
    if let Ok(mut m) = locks.lock() {
        // Nobody else holds or waits for it: two references, the map's and ours.
        if Arc::strong_count(&lock) <= 2 {
            m.remove(&id);
        }
    }
    fetched
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

/// Both tables, each read linearizably page by page, with the revision of its first page.
struct Listing {
    shards: Vec<Shard>,
    shards_at: u64,
    nodes: Vec<Node>,
    nodes_at: u64,
}

impl Listing {
    /// The revision every listed record is at least as new as: the watch resumes after it.
    /// Events the other listing already reflected come again and change nothing, since only
    /// newer versions replace what is held.
    fn revision(&self) -> u64 {
        self.shards_at.min(self.nodes_at)
    }
}

/// Lists one table linearizably: its records of kind `T` and the revision of the first page.
async fn list_table<T: Cached>(client: &Client, table: Table) -> Result<(Vec<T>, u64), Error> {
    let (records, revision) = client.list(table, Consistency::Linearizable).await?;
    Ok((
        records.into_iter().filter_map(T::from_record).collect(),
        revision,
    ))
}

async fn list_all(client: &Client) -> Result<Listing, Error> {
    let (shards, shards_at) = list_table::<Shard>(client, Table::Shards).await?;
    let (nodes, nodes_at) = list_table::<Node>(client, Table::Nodes).await?;
    Ok(Listing {
        shards,
        shards_at,
        nodes,
        nodes_at,
    })
}

impl ShardCache {
    /// Loads every shard and storage node and starts following changes to both.
    pub async fn start(client: Client) -> Result<ShardCache, Error> {
        let listing = list_all(&client).await?;
        let revision = listing.revision();
        let mut map = Maps::default();
        map.relist(listing);
        let cache = ShardCache {
            inner: Arc::new(CacheInner {
                map: RwLock::new(map),
                revision: AtomicU64::new(revision),
                relists: AtomicU64::new(0),
                client: client.clone(),
                task: std::sync::Mutex::new(None),
                fetching: Fetching::default(),
            }),
        };
        let task = tokio::spawn(follow(Arc::downgrade(&cache.inner), client, revision));
        if let Ok(mut t) = cache.inner.task.lock() {
            *t = Some(task);
        }
        Ok(cache)
    }

    /// The cached location of a shard, without a round trip.
    pub fn lookup(&self, id: ShardId) -> Option<Arc<Shard>> {
        self.inner.map.read().ok()?.shards.get(id)
    }

    /// The cached location, or a linearizable read if it is not cached: one at a time per
    /// shard, the callers that waited for it taking what it brought.
    pub async fn lookup_or_fetch(&self, id: ShardId) -> Result<Option<Arc<Shard>>, Error> {
        if let Some(s) = self.lookup(id) {
            return Ok(Some(s));
        }
        let locks = &self.inner.fetching.shards;
        one_at_a_time(locks, id, || self.lookup(id), || self.fetch_shard(id)).await
    }

    async fn fetch_shard(&self, id: ShardId) -> Result<Option<Arc<Shard>>, Error> {
        let (record, revision) = self
            .inner
            .client
            .get_with(&Key::Shard(id), Consistency::Linearizable)
            .await?;
        if let Ok(mut m) = self.inner.map.write() {
            match record.and_then(Shard::from_record) {
                Some(s) => m.shards.learn(id, Entry::Present(Arc::new(s))),
                None => m.shards.learn(id, Entry::Deleted(revision)),
            }
            return Ok(m.shards.get(id));
        }
        Ok(None)
    }

    /// Drops a shard's entry if it is still the very record `used` (the one a request was
    /// routed by and a storage node turned away) and `allow` agrees, so the next
    /// [`ShardCache::lookup_or_fetch`] reads it again; a newer record, or the same one read
    /// again since, is kept, and `allow` is not asked.
    ///
    /// Why identity rather than epoch: a primary that cannot serve yet (its lease, its
    /// reconciliation, admission control) answers every request at an unchanged epoch.
    /// Dropping every entry of that epoch made each refused request throw away the record
    /// the previous one had just re-read, so a client re-read the shard once per request
    /// per backoff step, from the metadata leader that was handling the failover. Now the
    /// requests routed by one record cause at most one re-read between them.
    pub fn forget_shard(&self, used: &Arc<Shard>, allow: impl FnOnce() -> bool) {
        if let Ok(mut m) = self.inner.map.write() {
            m.shards.forget(used, allow);
        }
    }

    /// [`ShardCache::forget_shard`] for a node's record (`used` could not be reached: the
    /// node may have moved).
    pub fn forget_node(&self, used: &Arc<Node>, allow: impl FnOnce() -> bool) {
        if let Ok(mut m) = self.inner.map.write() {
            m.nodes.forget(used, allow);
        }
    }

    /// Drops a shard's entry if it is not newer than `stale_epoch` (what a storage node said
    /// was out of date). [`ShardCache::forget_shard`] drops only the record a request used.
    pub fn invalidate(&self, id: ShardId, stale_epoch: u64) {
        if let Ok(mut m) = self.inner.map.write() {
            if matches!(m.shards.entries.get(&id), Some(Entry::Present(s)) if s.epoch <= stale_epoch)
            {
                m.shards.entries.remove(&id);
            }
        }
    }

    /// The cached record of a storage node (its addresses, state, rack), without a round
    /// trip.
    pub fn node(&self, id: NodeId) -> Option<Arc<Node>> {
        self.inner.map.read().ok()?.nodes.get(id)
    }

    /// The cached node record, or a linearizable read if it is not cached (one at a time per
    /// node, as [`ShardCache::lookup_or_fetch`]).
    pub async fn node_or_fetch(&self, id: NodeId) -> Result<Option<Arc<Node>>, Error> {
        if let Some(n) = self.node(id) {
            return Ok(Some(n));
        }
        let locks = &self.inner.fetching.nodes;
        one_at_a_time(locks, id, || self.node(id), || self.fetch_node(id)).await
    }

    async fn fetch_node(&self, id: NodeId) -> Result<Option<Arc<Node>>, Error> {
        let (record, revision) = self
            .inner
            .client
            .get_with(&Key::Node(id), Consistency::Linearizable)
            .await?;
        if let Ok(mut m) = self.inner.map.write() {
            match record.and_then(Node::from_record) {
                Some(n) => m.nodes.learn(id, Entry::Present(Arc::new(n))),
                None => m.nodes.learn(id, Entry::Deleted(revision)),
            }
            return Ok(m.nodes.get(id));
        }
        Ok(None)
    }

    /// Drops a node's entry if it is not newer than `stale_version` (the record the caller
    /// used when the node could not be reached: it may have moved), so the next
    /// [`ShardCache::node_or_fetch`] reads it again.
    pub fn invalidate_node(&self, id: NodeId, stale_version: u64) {
        if let Ok(mut m) = self.inner.map.write() {
            if matches!(m.nodes.entries.get(&id), Some(Entry::Present(n)) if n.version <= stale_version)
            {
                m.nodes.entries.remove(&id);
            }
        }
    }

    /// Every cached storage node, in id order.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        let mut nodes: Vec<Arc<Node>> = self
            .inner
            .map
            .read()
            .map(|m| m.nodes.present().cloned().collect())
            .unwrap_or_default();
        nodes.sort_by_key(|n| n.id);
        nodes
    }

    /// Last revision folded into the cache.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// How many times the cache listed the tables again after its watch ended.
    pub fn relists(&self) -> u64 {
        self.inner.relists.load(Ordering::Acquire)
    }

    /// Shards cached.
    pub fn len(&self) -> usize {
        self.inner.map.read().map(|m| m.shards.len()).unwrap_or(0)
    }

    /// Whether no shard is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Follows the shard and node tables from `revision` on: watches, and when the watch ends,
/// lists again and watches from the new listing, until the cache is dropped.
async fn follow(weak: Weak<CacheInner>, client: Client, mut revision: u64) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut watch = client.watch(
            vec![Table::Shards, Table::Nodes],
            revision.saturating_add(1),
        );
        while let Some(item) = watch.next().await {
            let Some(inner) = weak.upgrade() else { return };
            match item {
                Ok(event) => {
                    if let Ok(mut m) = inner.map.write() {
                        for change in event.changes {
                            m.apply(event.revision, change);
                        }
                    }
                    revision = event.revision;
                    inner.revision.store(revision, Ordering::Release);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shard cache watch ended; listing again");
                    break;
                }
            }
        }
        // The watch ended: list again, with backoff while the cluster cannot answer.
        loop {
            if weak.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match list_all(&client).await {
                Ok(listing) => {
                    let Some(inner) = weak.upgrade() else { return };
                    let at = listing.revision();
                    if let Ok(mut m) = inner.map.write() {
                        m.relist(listing);
                    }
                    revision = at;
                    inner.revision.store(at, Ordering::Release);
                    inner.relists.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "shard cache: listing failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
