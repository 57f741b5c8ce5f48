//! A shard's replication log: the entries a replica holds, appended unsynced (the syncer
//! makes them durable), read back by streams and applies, and pruned once applied.

use super::{decode, encode, log_key, shard_prefix, Engine, EngineError, CF_LOG};
use augur_proto::data::LogEntry;
use augur_proto::ShardId;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

impl Engine {
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

    /// Drops log entries before `seq` (they are applied and no replica needs them).
    pub fn prune_log(&self, shard: ShardId, before: u64) -> Result<(), EngineError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG)?, log_key(shard, 0), log_key(shard, before));
        self.db.write(batch)?;
        Ok(())
    }
}
