//! Forgetting request ids past their retention, inside RocksDB's compactions.
//!
//! A request id is remembered so that a resent write applies once, and forgotten once it is
//! older than `replication.request_retention_ms` by this node's clock (see
//! [`super::Remembered::at_ms`]). Every put leaves one id on every replica: at 7,000 puts a
//! second a node holds about four million within a 10-minute retention. A scan of them all
//! once a minute, and a deletion written for each one forgotten, cost a pass over the
//! family and a second write per put. Instead the family's compaction filter drops an id
//! past retention whenever a compaction rewrites its file (RocksDB turns the drop into a
//! tombstone where an older version may lie below, so nothing older resurfaces), and a
//! file is compacted at least once an hour (`periodic_compaction_seconds`) even when no
//! write pushes it. Forgetting is therefore late by up to an hour and a memtable, never
//! early: an id is never dropped before its retention, which is the promise that matters.
//! A record that does not decode is kept, as [`super::Engine::remembered`] reports it as
//! corrupt to whoever asks for its id: forgetting it could let a resend apply twice.

use super::{decode, Engine, Remembered};
use rocksdb::compaction_filter::Decision;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How often a file of the request-id family is compacted at the least, seconds.
pub(super) const PERIODIC_COMPACTION_SECS: u64 = 3_600;

/// The retention in force, in ms; `u64::MAX` (the value until the node sets it) keeps
/// every id.
#[derive(Debug, Clone)]
pub(super) struct Retention(Arc<AtomicU64>);

impl Default for Retention {
    fn default() -> Self {
        Retention(Arc::new(AtomicU64::new(u64::MAX)))
    }
}

impl Retention {
    /// The request-id family's compaction filter.
    pub(super) fn filter(&self) -> impl FnMut(u32, &[u8], &[u8]) -> Decision + Send + 'static {
        let retention = self.0.clone();
        move |_level, _key, value| {
            let keep_ms = retention.load(Ordering::Relaxed);
            if keep_ms == u64::MAX {
                return Decision::Keep;
            }
            // A wall clock before 1970 forgets nothing.
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let before = now_ms.saturating_sub(keep_ms);
            match decode::<Remembered>("request id", value) {
                Ok(r) if r.at_ms < before => Decision::Remove,
                _ => Decision::Keep,
            }
        }
    }
}

impl Engine {
    /// Forgets request ids older than `ms` (by this node's wall clock) from now on, as
    /// compactions rewrite them. Until it is called every id is kept.
    pub fn set_request_retention(&self, ms: u64) {
        self.retention.0.store(ms, Ordering::Relaxed);
    }

    /// Flushes the request-id family and compacts all of it: what RocksDB would do in its
    /// own time, done now so a test can see which ids were forgotten.
    #[cfg(test)]
    pub(super) fn compact_requests(&self) -> Result<(), super::EngineError> {
        let cf = self.cf(super::CF_REQUESTS)?;
        self.db.flush_cf(cf)?;
        let mut opts = rocksdb::CompactOptions::default();
        // A single file would otherwise just move down a level, unfiltered.
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }
}
