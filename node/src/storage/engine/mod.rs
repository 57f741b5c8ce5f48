//! The storage node's RocksDB: shard data, replication logs, replica state, request ids.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `data` | shard (8 B BE) ‖ user key | postcard [`Versioned`] |
//! | `log` | shard ‖ seq (8 B BE) | postcard [`LogEntry`] |
//! | `replica` | shard | postcard [`ReplicaState`] |
//! | `requests` | shard ‖ client (16 B BE) ‖ request seq (8 B BE) | postcard [`Remembered`] |
//! | `meta` | `identity` | postcard [`StorageIdentity`] |
//!
//! All shards share one database and so one write-ahead log. Log appends are written unsynced
//! and handed to one syncer thread that fsyncs the WAL once for every append waiting
//! (group commit), as the metadata log store does; a replica acknowledges entries only once
//! that sync covers them. Under load the syncer waits a moment (`replication.sync_wait_us`)
//! for more appends to share a sync, and unsynced writes stay in RocksDB's WAL buffer until
//! the syncer flushes it (`manual_wal_flush`): nothing unsynced is promised to anyone, so a
//! process crash may lose what a power cut may lose, no more. Applying committed entries
//! writes data, request ids and the applied sequence in one batch; it need not be synced,
//! because the entries are in the synced log and applying them again after a crash gives the
//! same result. Replica state changes that
//! must survive before the node acts on them (a new epoch or role) are synced writes.

use augur_proto::data::{Checkpoint, LogEntry, ReplicaRole, RequestId, Versioned, WriteOutcome};
use augur_proto::ShardId;
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

mod bulk;
mod size;
pub use bulk::{LoadChunk, Loaded};

const CF_DATA: &str = "data";
const CF_LOG: &str = "log";
const CF_REPLICA: &str = "replica";
const CF_REQUESTS: &str = "requests";
const CF_META: &str = "meta";
const KEY_IDENTITY: &[u8] = b"identity";

/// Anything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Stored bytes do not decode: the database is damaged.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The data directory belongs to another node.
    #[error("identity: {0}")]
    Identity(String),
    /// A file operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The WAL syncer is gone (the engine is shutting down).
    #[error("the WAL syncer stopped")]
    SyncerGone,
}

fn corrupt(what: &'static str, e: impl ToString) -> EngineError {
    EngineError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, EngineError> {
    postcard::to_allocvec(v).map_err(|e| corrupt("encoding", e))
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, b: &[u8]) -> Result<T, EngineError> {
    postcard::from_bytes(b).map_err(|e| corrupt(what, e))
}

/// A data directory's identity: which node it belongs to and its incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageIdentity {
    /// The node id.
    pub node: u64,
    /// Random, chosen when the directory was created; never 0.
    pub incarnation: u64,
}

/// What a replica must remember across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The epoch the replica last acted under.
    pub epoch: u64,
    /// Its role at that epoch.
    pub role: ReplicaRole,
    /// The highest sequence applied to `data`.
    pub applied: u64,
    /// The lowest sequence the log may hold (entries below were applied and pruned, or the
    /// replica's data came from a copy read at `floor - 1`).
    pub floor: u64,
    /// For a learner: whether its copy of the data is complete.
    pub copied: bool,
}

impl ReplicaState {
    /// A replica that holds nothing yet.
    pub fn empty(epoch: u64, role: ReplicaRole) -> ReplicaState {
        ReplicaState {
            epoch,
            role,
            applied: 0,
            floor: 1,
            copied: role != ReplicaRole::Learner,
        }
    }
}

/// A request id's outcome, kept so that a resent write applies once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The sequence of the entry that carried it.
    pub seq: u64,
    /// What the client was (or will be) told.
    pub outcome: WriteOutcome,
    /// The primary's wall clock when it was written.
    pub at_ms: u64,
}

/// What [`Engine::compaction_debt`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionDebt {
    /// RocksDB's estimate of the bytes compactions still have to rewrite.
    pub pending_bytes: u64,
    /// Compactions and flushes running now.
    pub running: u64,
}

/// A stored [`Versioned`] read in place, for passes that only look at it.
#[derive(Deserialize)]
struct VersionedRef<'a> {
    #[serde(borrow)]
    value: &'a [u8],
    version: u64,
}

/// Read options for a pass over a whole shard (a copy's source, a checksum): large
/// sequential reads, and blocks that do not push clients' hot blocks out of the cache.
fn bulk_read() -> rocksdb::ReadOptions {
    let mut o = rocksdb::ReadOptions::default();
    o.set_readahead_size(2 << 20);
    o.fill_cache(false);
    o
}

/// The write buffer of the families written on every apply whose entries are small.
///
/// Every put inserts a replica state (the same 64 keys over and over) and a request id into
/// a memtable; in 64 MiB memtables those skip lists grew to hundreds of thousands of
/// entries, and each insert walked a dozen cache misses down them (a profile of a put run:
/// the largest single cost of applying). Small memtables stay in the CPU's caches; their
/// flushes are small (the replica states collapse to one key per shard).
fn small_buffer(cf: &str) -> Option<usize> {
    match cf {
        CF_REPLICA => Some(1 << 20),
        CF_REQUESTS => Some(8 << 20),
        _ => None,
    }
}

/// The prefix under which a family's keys arrive in order, so a memtable insert can start
/// from where the last one with that prefix went instead of from the top of the skip list:
/// a shard's log entries (by sequence), its replica state (one key), a client's request ids
/// in a shard (by the client's write number).
fn insert_hint(cf: &str) -> Option<usize> {
    match cf {
        CF_LOG | CF_REPLICA => Some(8),
        CF_REQUESTS => Some(24),
        _ => None,
    }
}

/// How many bytes a paced whole-shard pass reads between two calls of its pace.
pub const PACE_BYTES: u64 = 1 << 20;

fn shard_prefix(shard: ShardId) -> [u8; 8] {
    shard.0.to_be_bytes()
}

/// The first key after every key of `shard` (the next shard's prefix).
fn shard_end(shard: ShardId) -> [u8; 8] {
    shard.0.wrapping_add(1).to_be_bytes()
}

fn data_key(shard: ShardId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&shard_prefix(shard));
    k.extend_from_slice(key);
    k
}

fn log_key(shard: ShardId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&shard_prefix(shard));
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn request_key(shard: ShardId, id: &RequestId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&shard_prefix(shard));
    k[8..24].copy_from_slice(&id.client.to_be_bytes());
    k[24..].copy_from_slice(&id.seq.to_be_bytes());
    k
}

/// The first key after every key that starts with `prefix` (None: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

type SyncDone = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Stops and joins the syncer when the last engine handle goes.
struct Syncer {
    tx: Option<mpsc::Sender<SyncDone>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The storage engine. Cheap to clone; clones share the database and the syncer.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    syncer: Arc<Syncer>,
    /// The data column family's options: bulk-loaded files are written with them.
    data_opts: Arc<Options>,
    /// Where bulk-loaded files are written before RocksDB takes them in.
    ingest_dir: Arc<std::path::PathBuf>,
}

/// One item of a scan or a copy.
pub type Item = (Vec<u8>, Versioned);

impl Engine {
    /// Opens (creating if needed) the database under `dir` for node `node`. A directory that
    /// belongs to another node is refused. Under load a WAL sync first waits `sync_wait` for
    /// more writes to share it (`replication.sync_wait_us`; zero syncs at once).
    pub fn open(
        dir: &Path,
        node: u64,
        block_cache_bytes: usize,
        sync_wait: Duration,
    ) -> Result<(Engine, StorageIdentity), EngineError> {
        std::fs::create_dir_all(dir)?;
        let cache = rocksdb::Cache::new_lru_cache(block_cache_bytes);
        let tune = |mut opts: Options| {
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            opts.set_block_based_table_factory(&table);
            opts.set_write_buffer_size(64 << 20);
            opts.set_max_write_buffer_number(4);
            opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            opts.set_keep_log_file_num(4);
            // One WAL serves every column family, and a WAL file lives until each family
            // with data in it has flushed. The small families (replica state, request ids)
            // rarely fill a memtable, so without a bound RocksDB keeps up to four times all
            // the write buffers (gigabytes) of WAL; past this size it flushes the families
            // that pin the oldest file.
            opts.set_max_total_wal_size(512 << 20);
            // Files being written (flushes, compactions, a copy's SST files) go to the disk a
            // megabyte at a time as they grow, instead of all at the sync that ends them: a
            // copy's loader then spends a moment, not the whole file's write-back, in the
            // sync of each file it ingests, and the disk sees an even stream rather than
            // bursts that stall the WAL syncs of client writes behind them.
            opts.set_bytes_per_sync(1 << 20);
            opts
        };
        let mut opts = tune(Options::default());
        // Memtable inserts with hints (see `insert_hint`) need one writer at a time; on a
        // storage node's few cores the parallel inserts of a write group gained nothing.
        opts.set_allow_concurrent_memtable_write(false);
        // Writes go to the WAL file only when the syncer flushes it (or a write asks for its
        // own sync): the log's appends and the applies are not durable before that sync
        // anyway, and each had cost a `write` call of its own (three or more per put on
        // every replica).
        opts.set_manual_wal_flush(true);
        // Shard data is cut into files at shard boundaries (its keys start with the 8-byte
        // shard id), so no file spans two shards: a copied shard's files then overlap nothing
        // on the learner and go straight to the bottom level, and a deleted shard's files
        // drop whole. Only this family: the others hold a few small keys per shard.
        let data_opts = tune(Options::default().get_options_from_string(
            "sst_partitioner_factory={id=SstPartitionerFixedPrefixFactory;length=8}",
        )?);
        let mut cfs = Vec::new();
        for n in [CF_DATA, CF_LOG, CF_REPLICA, CF_REQUESTS, CF_META] {
            let mut o = match (n, insert_hint(n)) {
                (CF_DATA, _) => data_opts.clone(),
                (_, Some(len)) => tune(Options::default().get_options_from_string(format!(
                    "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{len}"
                ))?),
                (_, None) => opts.clone(),
            };
            if let Some(bytes) = small_buffer(n) {
                o.set_write_buffer_size(bytes);
            }
            if matches!(n, CF_DATA | CF_REQUESTS) {
                // A whole-key bloom filter in each memtable: a point read of a key the
                // memtable does not hold (every new request id a write looks up, most gets)
                // skips the skip list search, which a profile showed as the bulk of it.
                o.set_memtable_prefix_bloom_ratio(0.05);
                o.set_memtable_whole_key_filtering(true);
            }
            cfs.push(ColumnFamilyDescriptor::new(n, o));
        }
        let db = Arc::new(DB::open_cf_descriptors(&opts, dir.join("rocksdb"), cfs)?);
        let identity = load_identity(&db, node)?;
        let ingest_dir = dir.join("ingest");
        bulk::clear_leftovers(&ingest_dir)?;
        let (tx, rx) = mpsc::channel::<SyncDone>();
        let sync_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("augur-data-sync".into())
            .spawn(move || run_syncer(sync_db, rx, sync_wait))?;
        Ok((
            Engine {
                db,
                syncer: Arc::new(Syncer {
                    tx: Some(tx),
                    thread: Some(thread),
                }),
                data_opts: Arc::new(data_opts),
                ingest_dir: Arc::new(ingest_dir),
            },
            identity,
        ))
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, EngineError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| corrupt("database", format!("column family {name} missing")))
    }

    /// Every shard that has replica state on this node.
    pub fn shards(&self) -> Result<Vec<(ShardId, ReplicaState)>, EngineError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_REPLICA)?, IteratorMode::Start)
        {
            let (k, v) = item?;
            let id: [u8; 8] = k
                .as_ref()
                .try_into()
                .map_err(|_| corrupt("replica key", format!("{} bytes", k.len())))?;
            out.push((
                ShardId(u64::from_be_bytes(id)),
                decode("replica state", &v)?,
            ));
        }
        Ok(out)
    }

    /// A shard's replica state, if the node holds it.
    pub fn replica_state(&self, shard: ShardId) -> Result<Option<ReplicaState>, EngineError> {
        match self.db.get_cf(self.cf(CF_REPLICA)?, shard_prefix(shard))? {
            Some(b) => Ok(Some(decode("replica state", &b)?)),
            None => Ok(None),
        }
    }

    /// Writes a shard's replica state and syncs it: a new epoch or role must be durable
    /// before the replica acts on it.
    pub fn save_replica_state(
        &self,
        shard: ShardId,
        state: &ReplicaState,
    ) -> Result<(), EngineError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_REPLICA)?, shard_prefix(shard), encode(state)?);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Reads one key's committed value.
    pub fn get(&self, shard: ShardId, key: &[u8]) -> Result<Option<Versioned>, EngineError> {
        match self.db.get_cf(self.cf(CF_DATA)?, data_key(shard, key))? {
            Some(b) => Ok(Some(decode("value", &b)?)),
            None => Ok(None),
        }
    }

    /// [`Self::get`] from memory alone (memtables and the block cache), or `None` when the
    /// answer needs a read from a file. The server answers with it on the async worker and
    /// sends only the misses to the blocking pool: a hand-off to another thread per read costs
    /// more than a lookup that cannot block.
    pub fn get_cached(
        &self,
        shard: ShardId,
        key: &[u8],
    ) -> Result<Option<Option<Versioned>>, EngineError> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_read_tier(rocksdb::ReadTier::BlockCache);
        match self
            .db
            .get_cf_opt(self.cf(CF_DATA)?, data_key(shard, key), &opts)
        {
            Ok(Some(b)) => Ok(Some(Some(decode("value", &b)?))),
            Ok(None) => Ok(Some(None)),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `limit` items of `shard` whose keys start with `prefix`, after `start_after`, in
    /// key order, and about `max_bytes` of them (at least one); and whether more follow.
    pub fn scan(
        &self,
        shard: ShardId,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Item>, bool), EngineError> {
        let lower = data_key(shard, prefix);
        let start = match start_after {
            Some(k) if k >= prefix => data_key(shard, k),
            _ => lower.clone(),
        };
        let upper = prefix_end(&lower);
        let iter = self.db.iterator_cf(
            self.cf(CF_DATA)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for item in iter {
            let (k, v) = item?;
            if upper.as_deref().is_some_and(|u| &*k >= u) || !k.starts_with(&lower) {
                break;
            }
            let user_key = &k[8..];
            if start_after.is_some_and(|a| user_key <= a) {
                continue;
            }
            if items.len() == limit || (!items.is_empty() && bytes + k.len() + v.len() > max_bytes)
            {
                more = true;
                break;
            }
            bytes += k.len() + v.len();
            items.push((user_key.to_vec(), decode("value", &v)?));
        }
        Ok((items, more))
    }

    /// The last entry of a shard's log, if any.
    pub fn last_entry(&self, shard: ShardId) -> Result<Option<LogEntry>, EngineError> {
        let mut iter = self.db.iterator_cf(
            self.cf(CF_LOG)?,
            IteratorMode::From(&log_key(shard, u64::MAX), Direction::Reverse),
        );
        match iter.next() {
            Some(item) => {
                let (k, v) = item?;
                if k.len() == 16 && k[..8] == shard_prefix(shard) {
                    Ok(Some(decode("log entry", &v)?))
                } else {
                    Ok(None)
                }
            }
            None => Ok(None),
        }
    }

    /// One log entry.
    pub fn entry(&self, shard: ShardId, seq: u64) -> Result<Option<LogEntry>, EngineError> {
        match self.db.get_cf(self.cf(CF_LOG)?, log_key(shard, seq))? {
            Some(b) => Ok(Some(decode("log entry", &b)?)),
            None => Ok(None),
        }
    }

    /// Entries `from..=to` of a shard's log, stopping after about `max_bytes` (at least one
    /// entry) or at the first gap.
    pub fn entries(
        &self,
        shard: ShardId,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, EngineError> {
        let iter = self.db.iterator_cf(
            self.cf(CF_LOG)?,
            IteratorMode::From(&log_key(shard, from), Direction::Forward),
        );
        let mut out: Vec<LogEntry> = Vec::new();
        let mut bytes = 0usize;
        for (expect, item) in (from..).zip(iter) {
            let (k, v) = item?;
            if k.len() != 16 || k[..8] != shard_prefix(shard) {
                break;
            }
            let seq = u64::from_be_bytes(k[8..].try_into().unwrap_or_default());
            if seq > to || seq != expect || (!out.is_empty() && bytes + v.len() > max_bytes) {
                break;
            }
            bytes += v.len();
            out.push(decode("log entry", &v)?);
        }
        Ok(out)
    }

    /// Appends entries (after deleting any entries at or after the first one's sequence, so
    /// a replica's disagreeing tail goes in the same atomic write), unsynced; see
    /// [`Engine::sync`].
    pub fn append(
        &self,
        shard: ShardId,
        entries: &[LogEntry],
        truncate: bool,
    ) -> Result<(), EngineError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let log = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        if truncate {
            batch.delete_range_cf(log, log_key(shard, first.seq), log_key(shard, u64::MAX));
        }
        for e in entries {
            batch.put_cf(log, log_key(shard, e.seq), encode(e)?);
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Deletes a shard's log entries after `seq` (a disagreeing tail), synced.
    pub fn truncate_after(&self, shard: ShardId, seq: u64) -> Result<(), EngineError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOG)?,
            log_key(shard, seq + 1),
            log_key(shard, u64::MAX),
        );
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Calls `done` once every write made before this call is durable. Calls that arrive
    /// while a sync runs share the next one.
    pub fn sync(
        &self,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), EngineError> {
        self.syncer
            .tx
            .as_ref()
            .ok_or(EngineError::SyncerGone)?
            .send(Box::new(done))
            .map_err(|_| EngineError::SyncerGone)
    }

    /// Waits until every write made before this call is durable.
    pub async fn synced(&self) -> Result<(), EngineError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sync(move |r| {
            let _ = tx.send(r);
        })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EngineError::Io(std::io::Error::other(e))),
            Err(_) => Err(EngineError::SyncerGone),
        }
    }

    /// Applies committed entries: their effects on `data`, their request ids, and the new
    /// applied sequence, in one batch (unsynced: the entries are in the synced log).
    pub fn apply(
        &self,
        shard: ShardId,
        entries: &[LogEntry],
        state: &ReplicaState,
    ) -> Result<(), EngineError> {
        use augur_proto::data::Effect;
        let data = self.cf(CF_DATA)?;
        let requests = self.cf(CF_REQUESTS)?;
        let mut batch = WriteBatch::default();
        for e in entries {
            match &e.effect {
                Effect::Put { key, value } => batch.put_cf(
                    data,
                    data_key(shard, key),
                    encode(&Versioned {
                        value: value.clone(),
                        version: e.seq,
                    })?,
                ),
                Effect::Delete { key } => batch.delete_cf(data, data_key(shard, key)),
                Effect::Noop | Effect::Checkpoint => {}
            }
            if let Some(id) = &e.request {
                batch.put_cf(
                    requests,
                    request_key(shard, id),
                    encode(&Remembered {
                        seq: e.seq,
                        outcome: e.outcome,
                        at_ms: e.at_ms,
                    })?,
                );
            }
        }
        batch.put_cf(self.cf(CF_REPLICA)?, shard_prefix(shard), encode(state)?);
        self.db.write(batch)?;
        Ok(())
    }

    /// The remembered outcome of a request id, if the shard applied it.
    pub fn remembered(
        &self,
        shard: ShardId,
        id: &RequestId,
    ) -> Result<Option<Remembered>, EngineError> {
        match self
            .db
            .get_cf(self.cf(CF_REQUESTS)?, request_key(shard, id))?
        {
            Some(b) => Ok(Some(decode("request id", &b)?)),
            None => Ok(None),
        }
    }

    /// Forgets request ids written before `before_ms`, in every shard; returns how many.
    pub fn prune_requests(&self, before_ms: u64) -> Result<u64, EngineError> {
        let cf = self.cf(CF_REQUESTS)?;
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            let r: Remembered = decode("request id", &v)?;
            if r.at_ms < before_ms {
                batch.delete_cf(cf, k);
                n += 1;
            }
        }
        if n > 0 {
            self.db.write(batch)?;
        }
        Ok(n)
    }

    /// Drops log entries before `seq` (they are applied and no replica needs them).
    pub fn prune_log(&self, shard: ShardId, before: u64) -> Result<(), EngineError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG)?, log_key(shard, 0), log_key(shard, before));
        self.db.write(batch)?;
        Ok(())
    }

    /// A consistent view of one shard's data, for copies and checksums.
    pub fn snapshot(&self) -> rocksdb::Snapshot<'_> {
        self.db.snapshot()
    }

    /// A shard's replica state as of `snap` (its applied sequence is that of the snapshot's
    /// data: both are written in one batch).
    pub fn snapshot_replica_state(
        &self,
        snap: &rocksdb::Snapshot<'_>,
        shard: ShardId,
    ) -> Result<Option<ReplicaState>, EngineError> {
        match snap.get_cf(self.cf(CF_REPLICA)?, shard_prefix(shard))? {
            Some(b) => Ok(Some(decode("replica state", &b)?)),
            None => Ok(None),
        }
    }

    /// Reads `shard` after `after` from one new snapshot with one iterator, in chunks of at
    /// most `max_bytes` (at least one item; an empty shard gives one empty chunk), each handed
    /// to `emit` with the snapshot's applied sequence and whether it is the last; stops early
    /// when `emit` returns false. A copy's source runs this on a blocking thread, so reading
    /// the next chunk overlaps sending the last one.
    pub fn scan_snapshot(
        &self,
        shard: ShardId,
        after: Option<&[u8]>,
        max_bytes: usize,
        mut emit: impl FnMut(u64, Vec<Item>, bool) -> bool,
    ) -> Result<(), EngineError> {
        let snap = self.db.snapshot();
        let at_seq = self
            .snapshot_replica_state(&snap, shard)?
            .map(|s| s.applied)
            .unwrap_or(0);
        let lower = data_key(shard, &[]);
        let start = match after {
            Some(k) => data_key(shard, k),
            None => lower.clone(),
        };
        let iter = snap.iterator_cf_opt(
            self.cf(CF_DATA)?,
            bulk_read(),
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut items = Vec::new();
        let mut bytes = 0;
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&lower) {
                break;
            }
            if after.is_some() && *k == *start {
                continue;
            }
            if !items.is_empty() && bytes + k.len() + v.len() > max_bytes {
                if !emit(at_seq, std::mem::take(&mut items), false) {
                    return Ok(());
                }
                bytes = 0;
            }
            bytes += k.len() + v.len();
            items.push((k[8..].to_vec(), decode("value", &v)?));
        }
        emit(at_seq, items, true);
        Ok(())
    }

    /// The checksum of a shard's content in `snap` (see `augur_proto::data::crc_items`).
    pub fn checksum(
        &self,
        snap: &rocksdb::Snapshot<'_>,
        shard: ShardId,
        seq: u64,
    ) -> Result<Checkpoint, EngineError> {
        self.checksum_paced(snap, shard, seq, |_| {})
    }

    /// [`Engine::checksum`], calling `pace` with the bytes read after every
    /// [`PACE_BYTES`] or so: the caller may wait there, so that a whole-shard pass shares
    /// the node's copy budget instead of taking a core from its clients.
    pub fn checksum_paced(
        &self,
        snap: &rocksdb::Snapshot<'_>,
        shard: ShardId,
        seq: u64,
        mut pace: impl FnMut(u64),
    ) -> Result<Checkpoint, EngineError> {
        let lower = data_key(shard, &[]);
        let mut digest = crc64fast::Digest::new();
        let (mut bytes, mut keys) = (0u64, 0u64);
        let mut unpaced = 0u64;
        for item in snap.iterator_cf_opt(
            self.cf(CF_DATA)?,
            bulk_read(),
            IteratorMode::From(&lower, Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(&lower) {
                break;
            }
            // Borrowed from the iterator's buffer: a whole-shard pass copies no value.
            let value: VersionedRef<'_> =
                postcard::from_bytes(&v).map_err(|e| corrupt("value", e))?;
            augur_proto::data::crc_item(&mut digest, &k[8..], value.version, value.value);
            let n = (k.len() - 8 + value.value.len()) as u64;
            bytes += n;
            keys += 1;
            unpaced += n;
            if unpaced >= PACE_BYTES {
                pace(unpaced);
                unpaced = 0;
            }
        }
        if unpaced > 0 {
            pace(unpaced);
        }
        Ok(Checkpoint {
            seq,
            crc64: digest.sum64(),
            bytes,
            keys,
        })
    }

    /// Removes everything a node holds for a shard: data, log, request ids, replica state.
    ///
    /// The shard's data range gets a tombstone only if it holds a visible key. Every new
    /// learner starts by clearing its shard, usually a range this node never held; a
    /// tombstone there sat in the memtable, so the copy's first ingestion found the memtable
    /// overlapping its file, flushed it, and had to put the file in level 0, above the
    /// tombstone, and every later file of the copy too. Those files then went through the
    /// compactions bulk loading exists to avoid: in `bench recover` a third of the
    /// destination's CPU and half its disk bandwidth, four copies at 20 MB/s each.
    pub fn delete_shard(&self, shard: ShardId) -> Result<(), EngineError> {
        let p = shard_prefix(shard);
        let next = shard_end(shard);
        let has_data = self.holds_data(shard)?;
        let mut batch = WriteBatch::default();
        for cf in [CF_LOG, CF_REQUESTS] {
            batch.delete_range_cf(self.cf(cf)?, p, next);
        }
        if has_data {
            batch.delete_range_cf(self.cf(CF_DATA)?, p, next);
        }
        batch.delete_cf(self.cf(CF_REPLICA)?, p);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        if has_data {
            // The tombstones hide the shard at once. Dropping the data files the range covers
            // whole (they are cut per shard) frees the disk now, not when compaction reaches
            // them, and spares that compaction rewriting the live shards beside them.
            self.db
                .delete_file_in_range_cf(self.cf(CF_DATA)?, p, next)?;
        }
        Ok(())
    }

    /// Whether `shard` has a visible key in the data family. The caller owns the shard (its
    /// replica task), so no write to it can land between this answer and acting on it.
    pub fn holds_data(&self, shard: ShardId) -> Result<bool, EngineError> {
        let p = shard_prefix(shard);
        let mut o = rocksdb::ReadOptions::default();
        o.set_iterate_upper_bound(shard_end(shard).to_vec());
        o.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_DATA)?, o);
        it.seek(p);
        it.status()?;
        Ok(it.valid())
    }

    /// The background work RocksDB still owes: what a benchmark waits out before it measures,
    /// and what an operator sees when writes slow down for no visible reason.
    pub fn compaction_debt(&self) -> CompactionDebt {
        let int = |cf: Option<&rocksdb::ColumnFamily>, name: &str| -> u64 {
            match cf {
                Some(cf) => self.db.property_int_value_cf(cf, name),
                None => self.db.property_int_value(name),
            }
            .ok()
            .flatten()
            .unwrap_or(0)
        };
        let pending_bytes = [CF_DATA, CF_LOG, CF_REQUESTS]
            .into_iter()
            .map(|n| {
                int(
                    self.db.cf_handle(n),
                    "rocksdb.estimate-pending-compaction-bytes",
                )
            })
            .sum();
        CompactionDebt {
            pending_bytes,
            running: int(None, "rocksdb.num-running-compactions")
                + int(None, "rocksdb.num-running-flushes"),
        }
    }

    /// Approximate bytes of shard data and logs on disk.
    pub fn used_bytes(&self) -> u64 {
        [CF_DATA, CF_LOG, CF_REQUESTS]
            .into_iter()
            .filter_map(|n| self.db.cf_handle(n))
            .map(|cf| {
                let sst = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let mem = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                sst + mem
            })
            .sum()
    }
}

/// Syncs the WAL for every waiting callback at once, then calls them in arrival order.
/// Under load (the previous sync answered more than one caller) it first waits `wait` for
/// more callers to share the sync.
fn run_syncer(db: Arc<DB>, rx: mpsc::Receiver<SyncDone>, wait: Duration) {
    // How many callers the previous sync answered: more than one means a load.
    let mut last_batch = 0usize;
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        if !wait.is_zero() && last_batch > 1 {
            std::thread::sleep(wait);
        }
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        last_batch = waiting.len();
        let result = db.flush_wal(true).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "WAL sync failed");
        }
        for done in waiting {
            done(result.clone());
        }
    }
}

fn load_identity(db: &DB, node: u64) -> Result<StorageIdentity, EngineError> {
    let meta = db
        .cf_handle(CF_META)
        .ok_or_else(|| corrupt("database", "column family meta missing"))?;
    if let Some(b) = db.get_cf(meta, KEY_IDENTITY)? {
        let id: StorageIdentity = decode("identity", &b)?;
        if id.node != node {
            return Err(EngineError::Identity(format!(
                "this data directory belongs to storage node {}, not {node}",
                id.node
            )));
        }
        return Ok(id);
    }
    let replica = db
        .cf_handle(CF_REPLICA)
        .ok_or_else(|| corrupt("database", "column family replica missing"))?;
    if db
        .iterator_cf(replica, IteratorMode::Start)
        .next()
        .is_some()
    {
        return Err(EngineError::Identity(
            "the data directory holds shards but no identity; move it aside".into(),
        ));
    }
    let id = StorageIdentity {
        node,
        incarnation: loop {
            let v: u64 = rand::random();
            if v != 0 {
                break v;
            }
        },
    };
    let mut batch = WriteBatch::default();
    batch.put_cf(meta, KEY_IDENTITY, encode(&id)?);
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)?;
    tracing::info!(
        node,
        incarnation = format_args!("{:016x}", id.incarnation),
        "new data directory"
    );
    Ok(id)
}

#[cfg(test)]
mod tests;
