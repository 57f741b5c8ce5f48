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
//!
//! This module holds the types, the key layout and the per-key operations (reads, scans,
//! applies, request ids); `open` opens and tunes the database, `sync` is the group-commit
//! syncer, `log` the replication log, `pass` the whole-shard passes (snapshots, checksums,
//! removal), `bulk` the bulk-loaded copies and `size` the size estimates.

use augur_proto::data::{LogEntry, ReplicaRole, RequestId, Versioned, WriteOutcome};
use augur_proto::ShardId;
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

mod bulk;
mod log;
mod open;
mod pass;
mod retention;
mod size;
mod sync;
pub use bulk::{LoadChunk, LoadGate, Loaded};
pub use pass::PACE_BYTES;
use sync::Syncer;

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
    /// A bulk load's gate was closed: its copy was abandoned ([`LoadGate`]).
    #[error("the load was abandoned")]
    Abandoned,
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
    /// When the id was remembered: the later of the primary's wall clock when it wrote the
    /// entry and this node's when it applied (or copied) it. Ids are forgotten by this
    /// node's clock ([`Engine::set_request_retention`]); stamped with the primary's alone, a node
    /// whose clock ran ahead would forget them early, and a resend would apply twice.
    pub at_ms: u64,
    /// [`augur_proto::data::WriteOp::digest`] of the write: a resend under the id with
    /// another write is refused.
    pub op_digest: u64,
}

/// What [`Engine::compaction_debt`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionDebt {
    /// RocksDB's estimate of the bytes compactions still have to rewrite.
    pub pending_bytes: u64,
    /// Compactions and flushes running now.
    pub running: u64,
}

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

/// The request id a [`request_key`] names.
fn request_id_of(key: &[u8]) -> Result<RequestId, EngineError> {
    let (client, seq) = key
        .get(8..24)
        .zip(key.get(24..32))
        .ok_or_else(|| corrupt("request key", format!("{} bytes, not 32", key.len())))?;
    let client: [u8; 16] = client.try_into().map_err(|e| corrupt("request key", e))?;
    let seq: [u8; 8] = seq.try_into().map_err(|e| corrupt("request key", e))?;
    Ok(RequestId {
        client: u128::from_be_bytes(client),
        seq: u64::from_be_bytes(seq),
    })
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

/// The storage engine. Cheap to clone; clones share the database and the syncer.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    syncer: Arc<Syncer>,
    /// The data column family's options: bulk-loaded files are written with them.
    data_opts: Arc<Options>,
    /// Where bulk-loaded files are written before RocksDB takes them in.
    ingest_dir: Arc<std::path::PathBuf>,
    /// How long request ids are remembered (the request-id family's compaction filter).
    retention: retention::Retention,
}

/// One item of a scan or a copy.
pub type Item = (Vec<u8>, Versioned);

impl Engine {
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
        let now = crate::control::registry::now_ms();
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
                        at_ms: e.at_ms.max(now),
                        op_digest: e.op_digest,
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
#[cfg(test)]
mod tests;
