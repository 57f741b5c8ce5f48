//! The newest entries of a shard's log, also kept in memory.
//!
//! Every write passes through the log three times after it is appended: the primary's
//! replication streams read it to send it, and each replica reads it again to apply it once
//! committed. A profile of a put workload put those reads (a RocksDB iterator per frame and
//! per apply, a point read per follower frame) at about a fifth of a storage node's CPU,
//! although the entries had been in the replica's hands a moment before. The tail answers
//! those reads from memory; anything older (a peer that fell behind, a long apply after a
//! restart) is still read from the log, which stays the only record that counts.
//!
//! [`ShardLog`] is the only way the replica's task writes its log (or deletes its shard) and
//! everyone reads it: an append goes to RocksDB and then here, a read is answered here or
//! falls back to RocksDB.
//! The primary's streams read from their own tasks, hence the lock. The tail holds a
//! contiguous run of the log's last entries, bounded in entries and bytes so that many shards
//! cannot pin much memory.

use crate::storage::engine::{Engine, EngineError};
use augur_proto::data::{Effect, LogEntry};
use augur_proto::ShardId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One shard's log on this node: RocksDB's, with its newest entries also in memory. Clones
/// share the tail.
#[derive(Clone)]
pub struct ShardLog {
    engine: Engine,
    shard: ShardId,
    tail: Arc<LogTail>,
}

impl ShardLog {
    /// Shard `shard`'s log in `engine`, with an empty tail.
    pub fn new(engine: Engine, shard: ShardId) -> ShardLog {
        ShardLog {
            engine,
            shard,
            tail: Arc::default(),
        }
    }

    /// The shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Appends consecutive `entries` (unsynced; see [`Engine::append`]), after deleting the
    /// log from the first one's sequence on if `truncate`.
    pub fn append(&self, entries: Vec<LogEntry>, truncate: bool) -> Result<(), EngineError> {
        self.engine.append(self.shard, &entries, truncate)?;
        self.tail.appended(entries);
        Ok(())
    }

    /// Deletes everything this node holds of the shard ([`Engine::delete_shard`]), the tail
    /// with it. The tail is emptied even if the delete fails: it is only a copy of the log's
    /// end, and readers then go to RocksDB for whatever is still there.
    pub fn delete_shard(&self) -> Result<(), EngineError> {
        self.tail.clear();
        self.engine.delete_shard(self.shard)
    }

    /// The epoch of entry `seq`, if the log holds it.
    pub fn epoch_at(&self, seq: u64) -> Result<Option<u64>, EngineError> {
        match self.tail.epoch_at(seq) {
            Some(e) => Ok(Some(e)),
            None => Ok(self.engine.entry(self.shard, seq)?.map(|e| e.epoch)),
        }
    }

    /// Entries `from..=to`, stopping after about `max_bytes` (at least one entry) or at the
    /// first gap; empty or starting later if the log no longer holds `from`.
    pub fn entries(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, EngineError> {
        match self.tail.entries(from, to, max_bytes) {
            Some(e) => Ok(e),
            None => self.engine.entries(self.shard, from, to, max_bytes),
        }
    }
}

/// At most this many entries per shard.
const MAX_ENTRIES: usize = 512;
/// At most about this many bytes of keys and values per shard (64 shards: 16 MiB at most).
const MAX_BYTES: usize = 256 << 10;

/// A shard's newest log entries (see the module documentation).
#[derive(Default)]
struct LogTail {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<LogEntry>,
    bytes: usize,
}

/// What an entry is counted as against [`MAX_BYTES`].
fn weight(e: &LogEntry) -> usize {
    64 + match &e.effect {
        Effect::Put { key, value } => key.len() + value.len(),
        Effect::Delete { key } => key.len(),
        Effect::Noop | Effect::Checkpoint => 0,
    }
}

impl Inner {
    fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        let first = self.first_seq()?;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        (i < self.entries.len()).then_some(i)
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= weight(&e);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl LogTail {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves whole entries behind: still a valid tail.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mirrors a successful append of consecutive `entries` to the log. An entry at or before
    /// the last one held replaces it and everything after (a follower's log truncated to the
    /// primary's).
    fn appended(&self, entries: impl IntoIterator<Item = LogEntry>) {
        let mut t = self.lock();
        for e in entries {
            // Whatever the log held from this sequence on was replaced (a follower's
            // disagreeing tail); entries before it stay.
            while t.entries.back().is_some_and(|b| b.seq >= e.seq) {
                if let Some(b) = t.entries.pop_back() {
                    t.bytes -= weight(&b);
                }
            }
            if t.entries.back().is_some_and(|b| b.seq + 1 != e.seq) {
                // Not contiguous with what is held (cannot happen while the replica mirrors
                // every change; a gap must never be served as if there were none).
                t.clear();
            }
            t.bytes += weight(&e);
            t.entries.push_back(e);
        }
        while t.entries.len() > MAX_ENTRIES || (t.bytes > MAX_BYTES && t.entries.len() > 1) {
            t.pop_front();
        }
    }

    /// Mirrors the loss of the whole log (a shard deleted or reset).
    fn clear(&self) {
        self.lock().clear();
    }

    /// The epoch of entry `seq`, if the tail holds it.
    fn epoch_at(&self, seq: u64) -> Option<u64> {
        let t = self.lock();
        t.index_of(seq).map(|i| t.entries[i].epoch)
    }

    /// Entries `from..=to`, stopping after about `max_bytes` (at least one entry), if the tail
    /// holds `from`; `None` sends the caller to the log.
    fn entries(&self, from: u64, to: u64, max_bytes: usize) -> Option<Vec<LogEntry>> {
        let t = self.lock();
        let start = t.index_of(from)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in t.entries.range(start..) {
            if e.seq > to {
                break;
            }
            let w = weight(e);
            if !out.is_empty() && bytes + w > max_bytes {
                break;
            }
            bytes += w;
            out.push(e.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_proto::data::WriteOutcome;

    fn entry(seq: u64, epoch: u64, value_len: usize) -> LogEntry {
        LogEntry {
            seq,
            epoch,
            request: None,
            op_digest: 0,
            effect: Effect::Put {
                key: seq.to_be_bytes().to_vec(),
                value: vec![7; value_len],
            },
            outcome: WriteOutcome::Applied { version: seq },
            at_ms: 0,
        }
    }

    fn seqs(v: &[LogEntry]) -> Vec<(u64, u64)> {
        v.iter().map(|e| (e.seq, e.epoch)).collect()
    }

    #[test]
    fn serves_what_it_holds_and_sends_older_reads_to_the_log() {
        let t = LogTail::default();
        t.appended((5..=9).map(|s| entry(s, 1, 10)));
        assert_eq!(
            seqs(&t.entries(6, 8, 1 << 20).unwrap()),
            [(6, 1), (7, 1), (8, 1)]
        );
        assert_eq!(seqs(&t.entries(9, 20, 1 << 20).unwrap()), [(9, 1)]);
        assert!(
            t.entries(4, 9, 1 << 20).is_none(),
            "before the tail: read the log"
        );
        assert!(
            t.entries(10, 12, 1 << 20).is_none(),
            "after the tail: nothing held"
        );
        assert_eq!(t.epoch_at(7), Some(1));
        assert_eq!(t.epoch_at(10), None);
        // The byte limit stops a batch but always lets one entry through.
        assert_eq!(t.entries(5, 9, 1).unwrap().len(), 1);
        assert_eq!(
            t.entries(5, 9, 2 * weight(&entry(5, 1, 10))).unwrap().len(),
            2
        );
    }

    #[test]
    fn a_rewritten_suffix_replaces_the_old_one() {
        let t = LogTail::default();
        t.appended((1..=6).map(|s| entry(s, 1, 10)));
        // A new primary's entries from 4 on, at epoch 2, replace 4..=6.
        t.appended((4..=5).map(|s| entry(s, 2, 10)));
        assert_eq!(
            seqs(&t.entries(1, 10, 1 << 20).unwrap()),
            [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
        );
        assert_eq!(t.epoch_at(6), None);
        // A gap empties the tail rather than hide it.
        t.appended([entry(9, 2, 10)]);
        assert_eq!(seqs(&t.entries(9, 9, 1 << 20).unwrap()), [(9, 2)]);
        assert!(t.entries(5, 9, 1 << 20).is_none());
        t.clear();
        assert!(t.entries(9, 9, 1 << 20).is_none());
    }

    #[test]
    fn stays_within_its_bounds() {
        let t = LogTail::default();
        t.appended((1..=2000).map(|s| entry(s, 1, 10)));
        assert!(t
            .entries(2000 - MAX_ENTRIES as u64, 2000, usize::MAX)
            .is_none());
        let held = t
            .entries(2001 - MAX_ENTRIES as u64, 2000, usize::MAX)
            .unwrap();
        assert_eq!(held.len(), MAX_ENTRIES);
        let big = LogTail::default();
        big.appended((1..=40).map(|s| entry(s, 1, 64 << 10)));
        let held = (1..=40).filter(|s| big.epoch_at(*s).is_some()).count();
        assert!(
            held * (64 << 10) <= MAX_BYTES && held >= MAX_BYTES / (65 << 10),
            "{held}"
        );
        // One entry larger than the whole budget is still held (the next read wants it).
        big.appended([entry(41, 1, 2 * MAX_BYTES)]);
        assert_eq!(big.epoch_at(41), Some(1));
    }
}
