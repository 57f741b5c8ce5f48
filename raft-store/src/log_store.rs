//! The Raft log and vote, with group-commit fsync.
//!
//! `append` writes entries into RocksDB without syncing (they are readable at once) and hands
//! openraft's completion callback to a syncer thread. The syncer takes every callback that is
//! waiting, syncs the write-ahead log once, and only then reports them flushed. So a burst of
//! appends costs one fsync, the Raft core never blocks on the disk, and no entry is reported
//! durable before it is. Votes are written with a synced write before `save_vote` returns; the
//! shared WAL makes that sync cover every earlier append too.

use crate::db::{cf, decode, encode, index_key, key_index, off_workers, CF_LOG, CF_RAFT};
use crate::error::StoreError;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use rocksdb::{WriteBatch, WriteOptions, DB};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

const KEY_VOTE: &[u8] = b"vote";

/// A log entry's key and value as RocksDB holds them.
type StoredEntry = (Box<[u8]>, Box<[u8]>);
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// The Raft log store. Cheap to clone; clones share the database and the syncer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<Syncer>,
    /// Where the log ends and how large its entries are lately, to tell a read of what was
    /// just written (in the memtable) from a catch-up read that may touch the disk.
    tail: Arc<Tail>,
}

/// The last appended index and the mean entry size of the last append.
#[derive(Default)]
struct Tail {
    last: AtomicU64,
    entry_bytes: AtomicU64,
}

impl Tail {
    /// Records where the log now ends and how large its entries are.
    fn set(&self, last: u64, entry_bytes: u64) {
        self.entry_bytes.store(entry_bytes, Ordering::Relaxed);
        self.last.store(last, Ordering::Relaxed);
    }

    /// Whether reading `span` entries from `start` is a read of what was just written, small
    /// enough to stay on the async worker.
    fn is_recent(&self, start: u64, span: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        let each = self.entry_bytes.load(Ordering::Relaxed).max(1);
        start.saturating_add(RECENT_ENTRIES) > last
            && span <= RECENT_ENTRIES
            && span.saturating_mul(each) <= INLINE_READ_BYTES
    }
}

/// The syncer thread's handle. When the last clone of the store goes, the thread is told to
/// stop and joined, so its reference to the database is gone before the store's owner moves
/// on: a RocksDB closed by a detached thread while the process exits aborts in C++ static
/// destructors ("pthread lock: Invalid argument").
struct Syncer {
    tx: Option<mpsc::Sender<IOFlushed<TypeConfig>>>,
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

/// Appends up to this many bytes are written on the async worker. Handing the worker off
/// (`block_in_place`) costs more than such a write, which touches only the memtable and the
/// page cache (the WAL sync runs on the syncer thread): on two cores it cost 8% of the
/// leader's CPU per compare-and-set. Bigger batches, which may meet a write stall, leave
/// the workers.
const INLINE_WRITE_BYTES: usize = 64 * 1024;

/// Reads of entries among the last this many appended run on the async worker, for the same
/// reason: a leader in step sends what it has just written, from the memtable. With 64
/// clients a batch holds dozens of entries; a limit of 16 sent most batches through
/// `block_in_place`, which hands the worker's queue to another thread each time and was a
/// large part of the leader's extra CPU per compare-and-set against the build before.
const RECENT_ENTRIES: u64 = 1024;

/// ... as long as the read is at most about this many bytes (judged by the size of the
/// entries last appended): a lagging follower's catch-up of large entries leaves the worker.
const INLINE_READ_BYTES: u64 = 1 << 20;

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> Result<Self, StoreError> {
        if !sync_writes() {
            tracing::warn!(
                "UNSAFE TEST BUILD: AUGUR_UNSAFE_SKIP_WAL_SYNC=1 skips every WAL sync; \
                 acknowledged writes WILL be lost at a power failure"
            );
        }
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let sync_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("augur-wal-sync".into())
            .spawn(move || run_syncer(sync_db, rx))?;
        let store = LogStore {
            db,
            syncer: Arc::new(Syncer {
                tx: Some(tx),
                thread: Some(thread),
            }),
            tail: Arc::new(Tail::default()),
        };
        // After a restart the tail is the last entry on disk, judged by its own size.
        if let Some((k, v)) = store.last_stored()? {
            store.tail.set(key_index(&k)?, v.len() as u64);
        }
        Ok(store)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match self.db.get_cf(cf(&self.db, CF_RAFT)?, key)? {
            Some(bytes) => Ok(Some(decode(what, &bytes)?)),
            None => Ok(None),
        }
    }

    fn entries(&self, start: u64, end: Bound<u64>) -> Result<Vec<Entry>, StoreError> {
        let log = cf(&self.db, CF_LOG)?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            log,
            rocksdb::IteratorMode::From(&index_key(start), rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            let index = key_index(&k)?;
            let past_end = match end {
                Bound::Included(e) => index > e,
                Bound::Excluded(e) => index >= e,
                Bound::Unbounded => false,
            };
            if past_end {
                break;
            }
            out.push(decode::<Entry>("log entry", &v)?);
        }
        Ok(out)
    }

    /// The last log entry's key and encoded bytes, as stored.
    fn last_stored(&self) -> Result<Option<StoredEntry>, StoreError> {
        let log = cf(&self.db, CF_LOG)?;
        match self.db.iterator_cf(log, rocksdb::IteratorMode::End).next() {
            Some(item) => Ok(Some(item?)),
            None => Ok(None),
        }
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StoreError> {
        match self.last_stored()? {
            Some((_, v)) => Ok(Some(decode::<Entry>("log entry", &v)?.log_id())),
            None => Ok(None),
        }
    }

    async fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut opts = WriteOptions::default();
            opts.set_sync(sync_writes());
            db.write_opt(batch, &opts)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(())
    }
}

/// Whether the store's synced writes and WAL syncs really sync: always, unless the crate is
/// built with the test-only `unsafe-test-hooks` feature and run with
/// `AUGUR_UNSAFE_SKIP_WAL_SYNC=1`. That skips every sync (appends, votes, truncations, purges,
/// applies, snapshot installs; skipping only some would show nothing, since one synced write
/// syncs the whole shared WAL), so the power-loss test can prove it catches a store that
/// acknowledges what is not durable.
#[cfg(not(feature = "unsafe-test-hooks"))]
#[inline(always)]
pub(crate) const fn sync_writes() -> bool {
    true
}

/// See the version without `unsafe-test-hooks`; this one reads the environment once.
#[cfg(feature = "unsafe-test-hooks")]
pub(crate) fn sync_writes() -> bool {
    static SYNC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SYNC.get_or_init(|| std::env::var_os("AUGUR_UNSAFE_SKIP_WAL_SYNC").is_none_or(|v| v != "1"))
}

/// Syncs the WAL for every waiting callback at once, then reports them in arrival order.
fn run_syncer(db: Arc<DB>, rx: mpsc::Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = if sync_writes() {
            db.flush_wal(true)
        } else {
            Ok(())
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "WAL sync failed; Raft will stop on this storage error");
        }
        for cb in waiting {
            cb.io_completed(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(format!("WAL sync failed: {e}"))),
            });
        }
    }
}

fn start_of<RB: RangeBounds<u64>>(range: &RB) -> u64 {
    match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = (start_of(&range), range.end_bound().cloned());
        let span = match end {
            Bound::Included(e) => e.saturating_add(1).saturating_sub(start),
            Bound::Excluded(e) => e.saturating_sub(start),
            Bound::Unbounded => u64::MAX,
        };
        if self.tail.is_recent(start, span) {
            // The entries a leader in step sends: just written, read from the memtable.
            return Ok(self.entries(start, end)?);
        }
        // A lagging follower's batch can be megabytes of entries, some of them on disk.
        Ok(off_workers(|| self.entries(start, end))?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.get_meta(KEY_VOTE, "vote")?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(KEY_PURGED, "purged log id")?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT)?, KEY_VOTE, encode(vote)?);
        Ok(self.write_synced(batch).await?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: after a crash a stale value only means re-applying from the state
        // machine's own durable `applied`, which openraft does anyway.
        let raft = cf(&self.db, CF_RAFT)?;
        self.db
            .put_cf(raft, KEY_COMMITTED, encode(&committed)?)
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .get_meta::<Option<LogId>>(KEY_COMMITTED, "committed log id")?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        let mut last = None;
        for entry in entries {
            let index = entry.log_id().index;
            batch.put_cf(log, index_key(index), encode(&entry)?);
            last = Some(index);
        }
        if let Some(last) = last {
            let each = batch.size_in_bytes() / batch.len().max(1);
            self.tail.set(last, each as u64);
        }
        if batch.size_in_bytes() <= INLINE_WRITE_BYTES {
            // Unsynced (the syncer thread syncs): a memtable insert and a buffered WAL write.
            self.db.write(batch).map_err(StoreError::from)?;
        } else {
            off_workers(|| self.db.write(batch)).map_err(StoreError::from)?;
        }
        self.syncer
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("WAL syncer stopped"))?
            .send(callback)
            .map_err(|_| io::Error::other("WAL syncer thread is gone"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id
            .map(|id| id.index.saturating_add(1))
            .unwrap_or(0);
        let log = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(log, index_key(from), index_key(u64::MAX));
        // Synced so a truncated entry cannot reappear after a crash alongside newer ones.
        self.write_synced(batch).await?;
        self.tail
            .last
            .store(from.saturating_sub(1), Ordering::Relaxed);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT)?, KEY_PURGED, encode(&log_id)?);
        batch.delete_range_cf(
            cf(&self.db, CF_LOG)?,
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        Ok(self.write_synced(batch).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(last: u64, entry_bytes: u64) -> Tail {
        let t = Tail::default();
        t.last.store(last, Ordering::Relaxed);
        t.entry_bytes.store(entry_bytes, Ordering::Relaxed);
        t
    }

    #[test]
    fn a_read_of_the_fresh_tail_stays_on_the_worker() {
        // A leader in step with 64 clients sends batches of dozens of small entries.
        let t = tail(100_000, 300);
        assert!(t.is_recent(99_937, 64));
        assert!(t.is_recent(100_000, 1));
        // A follower far behind reads old entries, perhaps from disk.
        assert!(!t.is_recent(50_000, 64));
        assert!(!t.is_recent(0, 300));
    }

    #[test]
    fn a_large_read_leaves_the_worker_even_at_the_tail() {
        // 300 entries of 60 KB each: 18 MB to copy out of the memtable.
        let t = tail(10_000, 60_000);
        assert!(!t.is_recent(9_701, 300));
        assert!(t.is_recent(9_999, 2));
        // A span beyond the recent window never counts as recent.
        assert!(!tail(10_000, 10).is_recent(9_000, 2_000));
    }
}
