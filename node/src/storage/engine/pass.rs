//! Whole-shard passes: snapshots read by copies and checksums, and removing a shard.

use super::{
    corrupt, data_key, decode, encode, request_id_of, request_key, shard_end, shard_prefix, Engine,
    EngineError, Item, Remembered, ReplicaState, CF_DATA, CF_LOG, CF_REPLICA, CF_REQUESTS,
};
use augur_proto::data::{Checkpoint, CopiedRequest};
use augur_proto::ShardId;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::Deserialize;

/// How many bytes a paced whole-shard pass reads between two calls of its pace.
pub const PACE_BYTES: u64 = 1 << 20;

/// About the bytes one request id takes in a copy frame: chunks of them are cut by count.
const REQUEST_BYTES: usize = 64;

/// A stored [`Versioned`] read in place, for passes that only look at it.
#[derive(Deserialize)]
struct VersionedRef<'a> {
    #[serde(borrow)]
    value: &'a [u8],
    version: u64,
}

/// Read options for a pass over a whole shard (a copy's source, a checksum): large
/// sequential reads, and blocks that do not push clients' hot blocks out of the cache.
pub(super) fn bulk_read() -> rocksdb::ReadOptions {
    let mut o = rocksdb::ReadOptions::default();
    o.set_readahead_size(2 << 20);
    o.fill_cache(false);
    o
}

impl Engine {
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
    ///
    /// Before the data, the shard's remembered request ids in the same snapshot go to
    /// `requests`, in chunks of about `max_bytes` too (none for a shard with none): a learner
    /// needs them as much as the data (see `augur_proto::data::CopiedRequest`). Every attempt
    /// of a resumed copy sends them again; they are small, and writing one twice is harmless.
    pub fn scan_snapshot(
        &self,
        shard: ShardId,
        after: Option<&[u8]>,
        max_bytes: usize,
        mut requests: impl FnMut(Vec<CopiedRequest>) -> bool,
        mut emit: impl FnMut(u64, Vec<Item>, bool) -> bool,
    ) -> Result<(), EngineError> {
        let snap = self.db.snapshot();
        let at_seq = self
            .snapshot_replica_state(&snap, shard)?
            .map(|s| s.applied)
            .unwrap_or(0);
        let prefix = shard_prefix(shard);
        let per_chunk = (max_bytes / REQUEST_BYTES).max(1);
        let mut ids = Vec::new();
        let mut skipped = 0u64;
        for item in snap.iterator_cf_opt(
            self.cf(CF_REQUESTS)?,
            bulk_read(),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            // A record that does not decode is left behind, not a reason to fail every copy
            // of the shard (at rf 1 that would leave its data on a failing node): its id is
            // answered as corrupt here already, and the learner simply does not know it.
            let (Ok(r), Ok(id)) = (decode::<Remembered>("request id", &v), request_id_of(&k))
            else {
                skipped += 1;
                continue;
            };
            ids.push(CopiedRequest {
                id,
                seq: r.seq,
                outcome: r.outcome,
                at_ms: r.at_ms,
                op_digest: r.op_digest,
            });
            if ids.len() == per_chunk && !requests(std::mem::take(&mut ids)) {
                return Ok(());
            }
        }
        if skipped > 0 {
            tracing::warn!(%shard, skipped, "request id records that do not decode left out of a copy");
        }
        if !ids.is_empty() && !requests(ids) {
            return Ok(());
        }
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

    /// Keeps request ids a learner's copy brought (unsynced: the copy syncs once it ends).
    pub fn remember_copied(
        &self,
        shard: ShardId,
        items: &[CopiedRequest],
    ) -> Result<(), EngineError> {
        let cf = self.cf(CF_REQUESTS)?;
        let mut batch = WriteBatch::default();
        // Kept by this node's clock from now on (see `Remembered::at_ms`).
        let now = crate::control::registry::now_ms();
        for r in items {
            let remembered = Remembered {
                seq: r.seq,
                outcome: r.outcome,
                at_ms: r.at_ms.max(now),
                op_digest: r.op_digest,
            };
            batch.put_cf(cf, request_key(shard, &r.id), encode(&remembered)?);
        }
        self.db.write(batch)?;
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
}
