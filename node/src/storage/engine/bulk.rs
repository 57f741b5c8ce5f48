//! Bulk loading a copied shard: verified chunks go into SST files beside the database, which
//! RocksDB then takes in whole (`IngestExternalFile`), instead of through the write path.
//!
//! A copy writes a shard's whole content once. Through the write path every byte would be
//! written three times or more (the write-ahead log, the memtable's flush, then compactions
//! that rewrite it level by level), and those compactions compete with clients for the disk
//! and the CPU. A file written in key order and ingested is written once: its key range is new
//! to the learner, so RocksDB places it at the lowest level it fits and never compacts it to
//! get it there. Ingestion syncs the file and records it in the MANIFEST before it returns, so
//! what was ingested is durable with no further sync.
//!
//! Ingested data is newer than anything the database held in its key range (RocksDB gives
//! the file a sequence number above every earlier write when the range holds any; sequence 0
//! when it holds none), exactly as a put of the same items would be. That is what the
//! learner's replay expects (see `storage::copy`).

use super::{data_key, encode, Engine, EngineError, Item, CF_DATA};
use augur_proto::ShardId;
use rocksdb::{IngestExternalFileOptions, SstFileWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One verified chunk of a copy, in key order after the previous chunk.
#[derive(Debug)]
pub struct LoadChunk {
    /// The items, in strictly increasing key order.
    pub items: Vec<Item>,
    /// The applied sequence the source read them at.
    pub at_seq: u64,
    /// Bytes of keys and values, as the copy counts them.
    pub bytes: u64,
}

/// What a bulk load has made durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The last key ingested (None: nothing yet).
    pub last: Option<Vec<u8>>,
    /// The smallest applied sequence among the chunks ingested.
    pub at_seq: Option<u64>,
    /// Bytes of keys and values ingested.
    pub bytes: u64,
    /// Files ingested.
    pub files: u64,
}

/// Lets whoever abandons a copy stop its load for good. A learner that starts over deletes
/// the shard and copies again; a file of the abandoned copy ingested after that delete would
/// put older values under the new copy (ingested files rank above what the database held).
/// Every ingest runs holding the gate's lock and only while it is open, and [`LoadGate::close`]
/// takes the same lock, so once `close` returns no file of the load is ingested any more:
/// the caller closes, then deletes.
#[derive(Debug, Default)]
pub struct LoadGate {
    closed: std::sync::Mutex<bool>,
}

impl LoadGate {
    /// Closes the gate, waiting for an ingest in progress (one file) to finish.
    pub fn close(&self) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Whether the gate was closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` holding the lock, unless the gate is closed.
    pub fn while_open<T>(
        &self,
        f: impl FnOnce() -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(EngineError::Abandoned);
        }
        f()
    }
}

/// Names the files of concurrent loads apart.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// Removes files a crash left between writing and ingesting. They hold nothing anyone
/// relies on: a learner interrupted by a restart copies from scratch.
pub(super) fn clear_leftovers(dir: &Path) -> Result<(), EngineError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// An SST file being written: removed unless it was ingested.
struct OpenFile<'a> {
    writer: SstFileWriter<'a>,
    path: PathBuf,
    /// What the file holds beyond what was ingested before it.
    pending: Loaded,
}

impl Drop for OpenFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Engine {
    /// Writes `chunks` of `shard` into SST files of about `file_bytes` of keys and values each
    /// (before compression) and ingests each as it fills, and what is left once `chunks`
    /// ends. Blocks: run it on a blocking thread.
    ///
    /// Returns what was ingested, and the error that stopped the load if one did: files
    /// ingested before an error stay, so a copy resumes after `Loaded::last`. Chunks not yet
    /// ingested when an error occurs are dropped. Keys out of order are an error (RocksDB
    /// refuses them), never a misplaced item. Nothing is ingested once `gate` is closed
    /// (the load then stops with [`EngineError::Abandoned`]).
    pub fn bulk_load(
        &self,
        shard: ShardId,
        file_bytes: u64,
        gate: &LoadGate,
        chunks: impl IntoIterator<Item = LoadChunk>,
    ) -> (Loaded, Result<(), EngineError>) {
        let mut loaded = Loaded::default();
        let result = self.bulk_load_into(shard, file_bytes, gate, chunks, &mut loaded);
        (loaded, result)
    }

    fn bulk_load_into(
        &self,
        shard: ShardId,
        file_bytes: u64,
        gate: &LoadGate,
        chunks: impl IntoIterator<Item = LoadChunk>,
        loaded: &mut Loaded,
    ) -> Result<(), EngineError> {
        let mut open: Option<OpenFile<'_>> = None;
        for chunk in chunks {
            if gate.is_closed() {
                return Err(EngineError::Abandoned);
            }
            if open.is_none() && !chunk.items.is_empty() {
                open = Some(self.new_file(shard)?);
            }
            if let Some(file) = &mut open {
                for (key, value) in &chunk.items {
                    file.writer.put(data_key(shard, key), encode(value)?)?;
                }
            }
            if let (Some(file), Some((last, _))) = (&mut open, chunk.items.last()) {
                file.pending.last = Some(last.clone());
                file.pending.bytes += chunk.bytes;
                file.pending.at_seq = Some(
                    file.pending
                        .at_seq
                        .map_or(chunk.at_seq, |s| s.min(chunk.at_seq)),
                );
            }
            if open.as_ref().is_some_and(|f| f.pending.bytes >= file_bytes) {
                if let Some(file) = open.take() {
                    gate.while_open(|| self.ingest(file, loaded))?;
                }
            }
        }
        match open {
            Some(file) => gate.while_open(|| self.ingest(file, loaded)),
            None => Ok(()),
        }
    }

    fn new_file(&self, shard: ShardId) -> Result<OpenFile<'_>, EngineError> {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let path = self.ingest_dir.join(format!("shard-{}-{n}.sst", shard.0));
        let writer = SstFileWriter::create(&self.data_opts);
        writer.open(&path)?;
        Ok(OpenFile {
            writer,
            path,
            pending: Loaded::default(),
        })
    }

    fn ingest(&self, mut file: OpenFile<'_>, loaded: &mut Loaded) -> Result<(), EngineError> {
        file.writer.finish()?;
        let mut opts = IngestExternalFileOptions::default();
        // A hard link instead of a copy: the file is ours and written once.
        opts.set_move_files(true);
        // Snapshots that predate the file may see it. Nothing reads a learner's shard at a
        // snapshot before its copy is complete (copy passes and checksums read their own
        // shard), and with this a file whose key range is new to the database keeps
        // sequence number 0. With snapshot consistency, any snapshot held elsewhere on the
        // node (another shard's copy or checksum) forces a global sequence number on it,
        // and RocksDB later rewrites every such bottommost file once more only to zero that
        // number: a second full write of each copy, on the disk the clients' syncs wait
        // for. A file that does overlap data the database holds still gets a sequence
        // number above it, so the order above holds either way.
        opts.set_snapshot_consistency(false);
        self.db
            .ingest_external_file_cf_opts(self.cf(CF_DATA)?, &opts, vec![&file.path])?;
        let p = std::mem::take(&mut file.pending);
        loaded.last = p.last.or(loaded.last.take());
        loaded.bytes += p.bytes;
        loaded.files += 1;
        loaded.at_seq = match (loaded.at_seq, p.at_seq) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }
}
