//! The metadata state machine: applies transactions, serves reads and keeps watch history.
//!
//! A batch of entries is applied into one RocksDB `WriteBatch` together with `applied`, the
//! membership and the change history, written with a synced write, and only then are clients
//! answered: an acknowledged transaction is on disk, and state and `applied` never disagree.
//! Compares within a batch see the writes of earlier entries of the same batch through a small
//! overlay, because the batch is not in the database until it is written.
//!
//! Reads go straight to RocksDB through a database snapshot, so a record and the revision
//! reported with it always agree. The server decides freshness (ReadIndex or not) before
//! reading; this module only promises that what it returns was applied.

use crate::db::{cf, decode, encode, index_key, key_index, CF_HISTORY, CF_SM, CF_STATE};
use crate::error::StoreError;
use crate::snapshot;
use crate::types::{Command, LogId, SnapshotMeta, StoreSnapshot, StoredMembership, TypeConfig};
use augur_proto::wire::{Change, WatchEvent};
use augur_proto::{Key, Op, Record, Table, Txn, TxnResult};
use futures::{Stream, StreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend};
use prometheus_client::metrics::histogram::Histogram;
use rocksdb::{WriteBatch, WriteOptions, DB};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

pub(crate) const KEY_APPLIED: &[u8] = b"applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const KEY_COMPACTED: &[u8] = b"compacted";

/// Most revisions one history read returns; a watcher far behind catches up in pages.
pub const HISTORY_PAGE: usize = 1024;

/// The state machine. Cheap to clone; the server keeps a clone to serve reads while openraft
/// owns another to apply.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    history_retention: u64,
    applied: watch::Sender<u64>,
    compacted: AtomicU64,
    apply_seconds: Histogram,
}

/// One page of change history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// Revisions with matching changes, in order.
    pub events: Vec<WatchEvent>,
    /// The first revision this page did not cover: where the next page starts.
    pub next: u64,
}

/// A consistent summary of the whole state, for comparing replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateDigest {
    /// Revision the digest was taken at.
    pub revision: u64,
    /// Records in the state.
    pub records: u64,
    /// CRC-64/XZ over every key and value in key order.
    pub crc64: u64,
}

impl StateMachine {
    pub(crate) fn new(
        db: Arc<DB>,
        snapshot_dir: PathBuf,
        history_retention: u64,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&snapshot_dir)?;
        snapshot::remove_partial_files(&snapshot_dir)?;
        let sm_cf = cf(&db, CF_SM)?;
        let applied: Option<LogId> = match db.get_cf(sm_cf, KEY_APPLIED)? {
            Some(b) => decode("applied log id", &b)?,
            None => None,
        };
        let compacted: u64 = match db.get_cf(sm_cf, KEY_COMPACTED)? {
            Some(b) => decode("compacted revision", &b)?,
            None => 0,
        };
        let (applied_tx, _) = watch::channel(applied.map(|l| l.index).unwrap_or(0));
        Ok(StateMachine {
            inner: Arc::new(Inner {
                db,
                snapshot_dir,
                history_retention: history_retention.max(1),
                applied: applied_tx,
                compacted: AtomicU64::new(compacted),
                apply_seconds: Histogram::new([
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
                ]),
            }),
        })
    }

    fn db(&self) -> &DB {
        &self.inner.db
    }

    /// The database and snapshot directory, for tests that stop an installation half-way.
    #[cfg(test)]
    pub(crate) fn parts(&self) -> (Arc<DB>, PathBuf) {
        (self.inner.db.clone(), self.inner.snapshot_dir.clone())
    }

    /// The last applied revision (log index).
    pub fn revision(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// The oldest revision a watch can start from.
    pub fn compacted_revision(&self) -> u64 {
        self.inner.compacted.load(Ordering::Acquire)
    }

    /// Notified with the new revision after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Latency of applying one batch, including its fsync.
    pub fn apply_histogram(&self) -> Histogram {
        self.inner.apply_seconds.clone()
    }

    /// Approximate bytes on disk.
    pub fn db_size_bytes(&self) -> u64 {
        crate::db::approximate_size(self.db())
    }

    /// Reads one record and the revision it was read at.
    pub fn get(&self, key: &Key) -> Result<(Option<Record>, u64), StoreError> {
        let snap = self.db().snapshot();
        let revision = applied_in(&snap, self.db())?;
        let record = match snap.get_cf(cf(self.db(), CF_STATE)?, key.encode())? {
            Some(bytes) => Some(decode::<Record>("record", &bytes)?),
            None => None,
        };
        Ok((record, revision))
    }

    /// [`Self::get`] from memory alone (memtables and the block cache), or `None` when the
    /// answer would need a read from disk. The server answers point reads with it on the
    /// async worker and sends only the misses to the blocking pool: a hand-off to another
    /// thread for every read cost a quarter of the read throughput on two cores, while a
    /// read that cannot block costs no more than the lookup itself.
    pub fn get_cached(&self, key: &Key) -> Result<Option<(Option<Record>, u64)>, StoreError> {
        let memory_only = || {
            let mut o = rocksdb::ReadOptions::default();
            o.set_read_tier(rocksdb::ReadTier::BlockCache);
            o
        };
        let snap = self.db().snapshot();
        let incomplete = |e: &rocksdb::Error| e.kind() == rocksdb::ErrorKind::Incomplete;
        let applied = match snap.get_cf_opt(cf(self.db(), CF_SM)?, KEY_APPLIED, memory_only()) {
            Ok(v) => v,
            Err(e) if incomplete(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let revision = match applied {
            Some(b) => decode::<Option<LogId>>("applied log id", &b)?
                .map(|l| l.index)
                .unwrap_or(0),
            None => 0,
        };
        let record = match snap.get_cf_opt(cf(self.db(), CF_STATE)?, key.encode(), memory_only()) {
            Ok(Some(bytes)) => Some(decode::<Record>("record", &bytes)?),
            Ok(None) => None,
            Err(e) if incomplete(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some((record, revision)))
    }

    /// Reads up to `limit` records of `table` after `start_after`, in key order, and at most
    /// about `max_bytes` of them (at least one record, however large); also says whether more
    /// follow, and the revision read at. The byte bound is what keeps a page of large records
    /// within one frame.
    pub fn list(
        &self,
        table: Table,
        start_after: Option<&Key>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Record>, bool, u64), StoreError> {
        let snap = self.db().snapshot();
        let revision = applied_in(&snap, self.db())?;
        let start = match start_after {
            Some(k) if k.table() == table => k.encode(),
            _ => vec![table.tag()],
        };
        let iter = snap.iterator_cf(
            cf(self.db(), CF_STATE)?,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for item in iter {
            let (k, v) = item?;
            if k.first() != Some(&table.tag()) {
                break;
            }
            if start_after.is_some() && *k == *start {
                continue;
            }
            if records.len() == limit || (!records.is_empty() && bytes + v.len() > max_bytes) {
                more = true;
                break;
            }
            bytes += v.len();
            records.push(decode::<Record>("record", &v)?);
        }
        Ok((records, more, revision))
    }

    /// Changes applied in revisions `from..=to` that touch `tables` (empty: all): at most
    /// [`HISTORY_PAGE`] revisions with matching changes and about `max_bytes` of them (at
    /// least one revision), and where the next page starts.
    ///
    /// The compaction floor and the history are read from one RocksDB snapshot, so a page
    /// either starts exactly at `from` or the read fails with [`StoreError::Compacted`]: a
    /// compaction or snapshot install racing the read can never make it skip a revision.
    pub fn history(
        &self,
        from: u64,
        to: u64,
        tables: &[Table],
        max_bytes: usize,
    ) -> Result<HistoryPage, StoreError> {
        let snap = self.db().snapshot();
        let compacted = compacted_in(&snap, self.db())?;
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let iter = snap.iterator_cf(
            cf(self.db(), CF_HISTORY)?,
            rocksdb::IteratorMode::From(&index_key(from), rocksdb::Direction::Forward),
        );
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut next = to.saturating_add(1).max(from);
        for item in iter {
            let (k, v) = item?;
            let revision = key_index(&k)?;
            if revision > to {
                break;
            }
            if events.len() == HISTORY_PAGE || (!events.is_empty() && bytes + v.len() > max_bytes) {
                next = revision;
                break;
            }
            let changes: Vec<Change> = decode("history", &v)?;
            let changes: Vec<Change> = changes
                .into_iter()
                .filter(|c| tables.is_empty() || tables.contains(&change_table(c)))
                .collect();
            if !changes.is_empty() {
                bytes += v.len();
                events.push(WatchEvent { revision, changes });
            }
        }
        Ok(HistoryPage { events, next })
    }

    /// Creates a file to receive a snapshot from the leader into. The caller removes it once
    /// Raft has installed it (installation keeps its own copy).
    pub fn incoming_snapshot(&self) -> Result<(PathBuf, std::fs::File), StoreError> {
        snapshot::incoming(&self.inner.snapshot_dir)
    }

    /// A digest of the whole state at one revision, to check that replicas converged.
    pub fn digest(&self) -> Result<StateDigest, StoreError> {
        let snap = self.db().snapshot();
        let revision = applied_in(&snap, self.db())?;
        let mut crc = crc64fast::Digest::new();
        let mut records = 0;
        for item in snap.iterator_cf(cf(self.db(), CF_STATE)?, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            crc.write(&(k.len() as u32).to_be_bytes());
            crc.write(&k);
            crc.write(&(v.len() as u32).to_be_bytes());
            crc.write(&v);
            records += 1;
        }
        Ok(StateDigest {
            revision,
            records,
            crc64: crc.sum64(),
        })
    }

    fn current_version(
        &self,
        key: &Key,
        overlay: &HashMap<Vec<u8>, Option<u64>>,
    ) -> Result<Option<u64>, StoreError> {
        let k = key.encode();
        if let Some(v) = overlay.get(&k) {
            return Ok(*v);
        }
        match self.db().get_cf(cf(self.db(), CF_STATE)?, &k)? {
            Some(bytes) => Ok(Some(decode::<Record>("record", &bytes)?.version())),
            None => Ok(None),
        }
    }

    /// Evaluates one transaction at log index `index`, adding its writes to `batch`.
    fn apply_txn(
        &self,
        txn: &Txn,
        index: u64,
        overlay: &mut HashMap<Vec<u8>, Option<u64>>,
        batch: &mut WriteBatch,
    ) -> Result<TxnResult, StoreError> {
        let refused = |current| TxnResult {
            succeeded: false,
            revision: index,
            current,
        };
        // The leader validated it; a log written by another build might not have been.
        if txn.validate().is_err() {
            return Ok(refused(Vec::new()));
        }
        let mut current = Vec::with_capacity(txn.compares.len());
        let mut holds = true;
        for c in &txn.compares {
            let v = self.current_version(&c.key, overlay)?;
            holds &= c.holds(v);
            current.push((c.key.clone(), v));
        }
        if !holds {
            return Ok(refused(current));
        }
        let state = cf(self.db(), CF_STATE)?;
        let mut changes = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            match op {
                Op::Put(record) => {
                    let mut record = record.clone();
                    record.set_version(index);
                    let k = record.key().encode();
                    batch.put_cf(state, &k, encode(&record)?);
                    overlay.insert(k, Some(index));
                    changes.push(Change::Put(record));
                }
                Op::Delete(key) => {
                    if self.current_version(key, overlay)?.is_some() {
                        let k = key.encode();
                        batch.delete_cf(state, &k);
                        overlay.insert(k, None);
                        changes.push(Change::Delete(key.clone()));
                    }
                }
            }
        }
        if !changes.is_empty() {
            batch.put_cf(
                cf(self.db(), CF_HISTORY)?,
                index_key(index),
                encode(&changes)?,
            );
        }
        Ok(TxnResult {
            succeeded: true,
            revision: index,
            current: Vec::new(),
        })
    }

    /// Drops history older than the retention window, in steps so it is not done per batch.
    fn compact_history(
        &self,
        last: u64,
        batch: &mut WriteBatch,
    ) -> Result<Option<u64>, StoreError> {
        let retention = self.inner.history_retention;
        let compacted = self.compacted_revision();
        // Saturating: a retention near u64::MAX keeps everything instead of wrapping.
        if last < compacted.saturating_add(retention.saturating_mul(2)) {
            return Ok(None);
        }
        let floor = last - retention;
        batch.delete_range_cf(cf(self.db(), CF_HISTORY)?, index_key(0), index_key(floor));
        batch.put_cf(cf(self.db(), CF_SM)?, KEY_COMPACTED, encode(&floor)?);
        Ok(Some(floor))
    }

    async fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut opts = WriteOptions::default();
            opts.set_sync(crate::log_store::sync_writes());
            db.write_opt(batch, &opts)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(())
    }

    pub(crate) fn set_applied(&self, revision: u64, compacted: u64) {
        self.inner.compacted.store(compacted, Ordering::Release);
        self.inner.applied.send_replace(revision);
    }
}

fn change_table(c: &Change) -> Table {
    match c {
        Change::Put(r) => r.table(),
        Change::Delete(k) => k.table(),
    }
}

fn compacted_in(snap: &rocksdb::Snapshot<'_>, db: &DB) -> Result<u64, StoreError> {
    match snap.get_cf(cf(db, CF_SM)?, KEY_COMPACTED)? {
        Some(b) => decode("compacted revision", &b),
        None => Ok(0),
    }
}

fn applied_in(snap: &rocksdb::Snapshot<'_>, db: &DB) -> Result<u64, StoreError> {
    match snap.get_cf(cf(db, CF_SM)?, KEY_APPLIED)? {
        Some(b) => Ok(decode::<Option<LogId>>("applied log id", &b)?
            .map(|l| l.index)
            .unwrap_or(0)),
        None => Ok(0),
    }
}

fn ok_result(index: u64) -> TxnResult {
    TxnResult {
        succeeded: true,
        revision: index,
        current: Vec::new(),
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = std::fs::File;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let sm = cf(self.db(), CF_SM)?;
        let applied: Option<LogId> = match self
            .db()
            .get_cf(sm, KEY_APPLIED)
            .map_err(StoreError::from)?
        {
            Some(b) => decode("applied log id", &b)?,
            None => None,
        };
        let membership: StoredMembership = match self
            .db()
            .get_cf(sm, KEY_MEMBERSHIP)
            .map_err(StoreError::from)?
        {
            Some(b) => decode("membership", &b)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        let mut overlay = HashMap::new();
        let mut replies = Vec::new();
        let mut last: Option<LogId> = None;
        let mut membership: Option<StoredMembership> = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            let result = match entry.payload {
                EntryPayload::Blank => ok_result(log_id.index),
                EntryPayload::Normal(Command::Txn(txn)) => {
                    self.apply_txn(&txn, log_id.index, &mut overlay, &mut batch)?
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(log_id), m));
                    ok_result(log_id.index)
                }
            };
            last = Some(log_id);
            if let Some(r) = responder {
                replies.push((r, result));
            }
        }
        let Some(last) = last else { return Ok(()) };
        let sm = cf(self.db(), CF_SM)?;
        batch.put_cf(sm, KEY_APPLIED, encode(&Some(last))?);
        if let Some(m) = &membership {
            batch.put_cf(sm, KEY_MEMBERSHIP, encode(m)?);
        }
        let compacted = self.compact_history(last.index, &mut batch)?;
        self.write_synced(batch).await?;
        self.set_applied(
            last.index,
            compacted.unwrap_or_else(|| self.compacted_revision()),
        );
        self.inner
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        for (responder, result) in replies {
            responder.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: std::fs::File,
    ) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        let (revision, compacted) = tokio::task::spawn_blocking(move || {
            snapshot::install(&this.inner.db, &this.inner.snapshot_dir, &meta, snapshot)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        self.set_applied(revision, compacted);
        tracing::info!(revision, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<StoreSnapshot>, io::Error> {
        let dir = self.inner.snapshot_dir.clone();
        let current = tokio::task::spawn_blocking(move || snapshot::open_current(&dir))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: file,
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = std::fs::File;

    async fn build_snapshot(&mut self) -> Result<StoreSnapshot, io::Error> {
        let this = self.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || {
            snapshot::build(&this.inner.db, &this.inner.snapshot_dir)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        tracing::info!(last_log_id = ?meta.last_log_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }
}
