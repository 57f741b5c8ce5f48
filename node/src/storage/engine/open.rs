//! Opening the database: its column families, their tuning, and the node's identity.

use super::retention::{Retention, PERIODIC_COMPACTION_SECS};
use super::{bulk, sync::run_syncer, sync::SyncDone};
use super::{
    corrupt, decode, encode, Engine, EngineError, StorageIdentity, Syncer, CF_DATA, CF_LOG,
    CF_META, CF_REPLICA, CF_REQUESTS, KEY_IDENTITY,
};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

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
        let retention = Retention::default();
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
            if n == CF_REQUESTS {
                // Ids past retention are dropped as their files are compacted (see
                // `retention`), and every file is compacted at least this often.
                o.set_compaction_filter("augur-request-retention", retention.filter());
                o.set_periodic_compaction_seconds(PERIODIC_COMPACTION_SECS);
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
                retention,
            },
            identity,
        ))
    }
}

fn load_identity(db: &DB, node: u64) -> Result<StorageIdentity, EngineError> {
    let meta = db
        .cf_handle(CF_META)
        .ok_or_else(|| corrupt("database", "column family meta missing"))?;
    if let Some(b) = db.get_cf(meta, KEY_IDENTITY)? {
        let id: StorageIdentity = decode("identity", &b)?;
        if id.incarnation == 0 {
            return Err(corrupt("identity", "incarnation 0 is never chosen"));
        }
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
