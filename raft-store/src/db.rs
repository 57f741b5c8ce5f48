//! Opening the metadata database and the layout of its column families.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `log` | log index, big-endian u64 | postcard [`crate::types::Entry`] |
//! | `raft` | `vote`, `committed`, `purged`, `identity` | postcard vote / log id / identity |
//! | `state` | [`augur_proto::Key::encode`] | postcard [`augur_proto::Record`] |
//! | `history` | revision, big-endian u64 | postcard `Vec<Change>` of that revision |
//! | `sm` | `applied`, `membership`, `compacted`, `snapshot` | state-machine metadata |

use crate::error::StoreError;
use crate::identity::Identity;
use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_STATE: &str = "state";
pub(crate) const CF_HISTORY: &str = "history";
pub(crate) const CF_SM: &str = "sm";

/// Store settings that are not Raft's business.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding the RocksDB files and snapshot files.
    pub dir: PathBuf,
    /// Revisions of change history kept for watchers; older ones are compacted.
    pub history_retention: u64,
    /// RocksDB block cache in bytes.
    pub block_cache_bytes: usize,
}

impl StoreConfig {
    /// Defaults for a data directory: 100 000 revisions of history, 64 MiB block cache.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            dir: dir.into(),
            history_retention: 100_000,
            block_cache_bytes: 64 << 20,
        }
    }
}

/// The two halves openraft wants, over one database, and the directory's identity.
pub struct Stores {
    /// The Raft log and vote.
    pub log: LogStore,
    /// The metadata state machine; clone it to serve reads.
    pub state: StateMachine,
    /// Which member and incarnation this directory is, and its cluster.
    pub identity: Identity,
}

/// Opens (creating if needed) the database under `cfg.dir` for member `member`.
pub fn open(cfg: &StoreConfig, member: u64) -> Result<Stores, StoreError> {
    std::fs::create_dir_all(&cfg.dir)?;
    let db = Arc::new(open_db(&cfg.dir.join("rocksdb"), cfg.block_cache_bytes)?);
    let identity = Identity::load_or_create(db.clone(), member)?;
    let log = LogStore::new(db.clone())?;
    let state = StateMachine::new(db, cfg.dir.join("snapshots"), cfg.history_retention)?;
    Ok(Stores {
        log,
        state,
        identity,
    })
}

fn open_db(path: &Path, block_cache_bytes: usize) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Bounded memory: one shared block cache, modest write buffers.
    let cache = rocksdb::Cache::new_lru_cache(block_cache_bytes);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(32 << 20);
    opts.set_max_write_buffer_number(3);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_keep_log_file_num(4);
    let cfs = [CF_LOG, CF_RAFT, CF_STATE, CF_HISTORY, CF_SM]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, opts.clone()));
    Ok(DB::open_cf_descriptors(&opts, path, cfs)?)
}

/// Looks up a column family that `open` created; its absence means a damaged database.
pub(crate) fn cf<'a>(
    db: &'a DB,
    name: &'static str,
) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::corrupt("database", format!("column family {name} missing")))
}

/// Approximate bytes on disk (SST files plus memtables), for `/metrics`.
pub(crate) fn approximate_size(db: &DB) -> u64 {
    [CF_LOG, CF_RAFT, CF_STATE, CF_HISTORY, CF_SM]
        .into_iter()
        .filter_map(|name| db.cf_handle(name))
        .map(|cf| {
            let sst = db
                .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                .ok()
                .flatten()
                .unwrap_or(0);
            let mem = db
                .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                .ok()
                .flatten()
                .unwrap_or(0);
            sst + mem
        })
        .sum()
}

/// Runs a blocking RocksDB call without stalling the async workers: on tokio's multi-thread
/// runtime the worker hands its other tasks off for the duration (`block_in_place`), which
/// keeps the call in order with the caller's, unlike a spawned blocking task. Elsewhere (a
/// current-thread runtime in tests) it simply runs.
pub(crate) fn off_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StoreError::corrupt("encoding", e))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::corrupt(what, e))
}

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::corrupt("log key", format!("{} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}
