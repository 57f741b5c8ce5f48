//! Snapshot files.
//!
//! A snapshot is built from one RocksDB snapshot, so the records, `applied` and the membership
//! in it belong to the same instant. Layout:
//!
//! ```text
//! "AUGSNAP1"                       magic
//! u32 len, postcard SnapshotMeta   header
//! u32 len, postcard (key, value)   one frame per record, in key order
//! u32 0xFFFF_FFFF                  end marker
//! u64 records, u64 crc64           trailer; the CRC covers every byte before the end marker
//! ```
//!
//! Installation reads the file into one `WriteBatch` and writes it only after the trailer's
//! count and CRC check out, so a damaged or truncated transfer changes nothing; the file
//! becomes this member's current snapshot before the state is written (see [`install`]).

use crate::db::{cf, decode, encode, index_key, CF_HISTORY, CF_SM, CF_STATE};
use crate::error::StoreError;
use crate::state_machine::{KEY_APPLIED, KEY_COMPACTED, KEY_MEMBERSHIP};
use crate::types::{LogId, SnapshotMeta, StoredMembership};
use rocksdb::{WriteBatch, WriteOptions, DB};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"AUGSNAP1";
const END: u32 = u32::MAX;
/// Largest frame accepted when reading a snapshot: one record is far smaller.
const MAX_FRAME: usize = 4 << 20;
const CURRENT: &str = "current.snap";
const BUILDING: &str = "building.snap.tmp";
const RECEIVED: &str = "installing.snap.tmp";

/// Removes files left by a build or install that a crash interrupted.
pub(crate) fn remove_partial_files(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == BUILDING || name == RECEIVED || name.starts_with("incoming-") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc64fast::Digest,
}

impl<W: Write> CrcWriter<W> {
    fn frame(&mut self, body: &[u8]) -> std::io::Result<()> {
        self.put(&(body.len() as u32).to_be_bytes())?;
        self.put(body)
    }
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.write(bytes);
        self.inner.write_all(bytes)
    }
}

/// Writes a snapshot of the current state to `dir` and returns its meta and the open file.
pub(crate) fn build(db: &DB, dir: &Path) -> Result<(SnapshotMeta, File), StoreError> {
    let snap = db.snapshot();
    let sm = cf(db, CF_SM)?;
    let last_log_id: Option<LogId> = match snap.get_cf(sm, KEY_APPLIED)? {
        Some(b) => decode("applied log id", &b)?,
        None => None,
    };
    let last_membership: StoredMembership = match snap.get_cf(sm, KEY_MEMBERSHIP)? {
        Some(b) => decode("membership", &b)?,
        None => StoredMembership::default(),
    };
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
    };
    let tmp = dir.join(BUILDING);
    let mut w = CrcWriter {
        inner: BufWriter::new(File::create(&tmp)?),
        crc: crc64fast::Digest::new(),
    };
    w.put(MAGIC)?;
    w.frame(&encode(&meta)?)?;
    let mut records: u64 = 0;
    for item in snap.iterator_cf(cf(db, CF_STATE)?, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        w.frame(&encode(&(&*k, &*v))?)?;
        records += 1;
    }
    let crc = w.crc.sum64();
    let mut inner = w.inner;
    inner.write_all(&END.to_be_bytes())?;
    inner.write_all(&records.to_be_bytes())?;
    inner.write_all(&crc.to_be_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    // Kept open: if a newer snapshot was installed meanwhile, this one is not published but
    // is still what the caller asked for.
    let built = File::open(&tmp)?;
    publish(dir, &tmp, &meta.last_log_id)?;
    Ok((meta, built))
}

/// Makes `tmp` the current snapshot unless the current one is at least as new; returns
/// whether it did. A build runs beside the installation of a snapshot from the leader, and
/// without this a build of an older state finishing last would replace the installed file:
/// this member would then serve a snapshot older than its purged log, and a follower that
/// installed it would need entries nobody holds.
fn publish(dir: &Path, tmp: &Path, last_log_id: &Option<LogId>) -> Result<bool, StoreError> {
    static PUBLISHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PUBLISHING.lock().unwrap_or_else(|e| e.into_inner());
    let newer_there = match open_current(dir) {
        Ok(Some((current, _))) => current.last_log_id >= *last_log_id,
        Ok(None) => false,
        // A damaged current file is replaced.
        Err(StoreError::Corrupt { .. }) => false,
        Err(e) => return Err(e),
    };
    if newer_there {
        std::fs::remove_file(tmp)?;
        return Ok(false);
    }
    std::fs::rename(tmp, dir.join(CURRENT))?;
    File::open(dir)?.sync_all()?;
    Ok(true)
}

/// Opens the newest snapshot, if any.
pub(crate) fn open_current(dir: &Path) -> Result<Option<(SnapshotMeta, File)>, StoreError> {
    let mut file = match File::open(dir.join(CURRENT)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta = read_header(
        &mut BufReader::new(&mut file),
        &mut crc64fast::Digest::new(),
    )?;
    file.seek(SeekFrom::Start(0))?;
    Ok(Some((meta, file)))
}

fn read_exact(
    r: &mut impl Read,
    buf: &mut [u8],
    crc: Option<&mut crc64fast::Digest>,
) -> Result<(), StoreError> {
    r.read_exact(buf)
        .map_err(|e| StoreError::corrupt("snapshot", format!("truncated: {e}")))?;
    if let Some(crc) = crc {
        crc.write(buf);
    }
    Ok(())
}

fn read_len(r: &mut impl Read, crc: &mut crc64fast::Digest) -> Result<u32, StoreError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| StoreError::corrupt("snapshot", format!("truncated: {e}")))?;
    let len = u32::from_be_bytes(len);
    if len != END {
        crc.write(&len.to_be_bytes());
    }
    Ok(len)
}

fn read_body(
    r: &mut impl Read,
    len: u32,
    crc: &mut crc64fast::Digest,
) -> Result<Vec<u8>, StoreError> {
    if len as usize > MAX_FRAME {
        return Err(StoreError::corrupt(
            "snapshot",
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    read_exact(r, &mut body, Some(crc))?;
    Ok(body)
}

fn read_header(r: &mut impl Read, crc: &mut crc64fast::Digest) -> Result<SnapshotMeta, StoreError> {
    let mut magic = [0u8; 8];
    read_exact(r, &mut magic, Some(crc))?;
    if &magic != MAGIC {
        return Err(StoreError::corrupt("snapshot", "bad magic"));
    }
    let len = read_len(r, crc)?;
    decode("snapshot header", &read_body(r, len, crc)?)
}

/// Verifies `file` and replaces the state with it in one synced write. Returns the new
/// revision and compacted revision.
///
/// The file is kept as this member's current snapshot *before* the state is written. Openraft
/// purges the log up to the snapshot once this returns, and at start it purges up to the
/// applied revision if the log ends before it. Written the other way round, a crash between
/// the two steps would leave the state at the new revision, the log purged up to it at the
/// next start, and the current snapshot older than that: a follower needing a snapshot would
/// get the old one and then ask for entries nobody holds, again and again. In this order a
/// crash leaves a current snapshot newer than the state, which openraft installs again at
/// start (`StorageHelper::get_initial_state`), so either way the two agree.
pub(crate) fn install(
    db: &DB,
    dir: &Path,
    meta: &SnapshotMeta,
    mut file: File,
) -> Result<(u64, u64), StoreError> {
    let staged = stage(db, meta, &mut file)?;
    keep(dir, &mut file, meta)?;
    commit(db, staged)
}

/// A verified snapshot's state, ready to replace the current one in one write.
pub(crate) struct Staged {
    batch: WriteBatch,
    revision: u64,
    compacted: u64,
}

/// Reads and verifies `file` (header for `meta`, every frame, the trailer's count and CRC)
/// into one batch that replaces the whole state; changes nothing.
pub(crate) fn stage(db: &DB, meta: &SnapshotMeta, file: &mut File) -> Result<Staged, StoreError> {
    file.seek(SeekFrom::Start(0))?;
    let mut crc = crc64fast::Digest::new();
    let mut r = BufReader::new(file);
    let header = read_header(&mut r, &mut crc)?;
    if header.last_log_id != meta.last_log_id {
        return Err(StoreError::corrupt(
            "snapshot",
            format!(
                "file is for {:?}, not {:?}",
                header.last_log_id, meta.last_log_id
            ),
        ));
    }
    let state = cf(db, CF_STATE)?;
    let sm = cf(db, CF_SM)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(state, [0u8].as_slice(), [0xffu8; 16].as_slice());
    batch.delete_range_cf(cf(db, CF_HISTORY)?, index_key(0), index_key(u64::MAX));
    let mut records: u64 = 0;
    loop {
        let len = read_len(&mut r, &mut crc)?;
        if len == END {
            break;
        }
        let body = read_body(&mut r, len, &mut crc)?;
        let (k, v): (Vec<u8>, Vec<u8>) = decode("snapshot record", &body)?;
        batch.put_cf(state, k, v);
        records += 1;
    }
    let mut trailer = [0u8; 16];
    read_exact(&mut r, &mut trailer, None)?;
    let want_records = u64::from_be_bytes(trailer[..8].try_into().unwrap_or_default());
    let want_crc = u64::from_be_bytes(trailer[8..].try_into().unwrap_or_default());
    if want_records != records || want_crc != crc.sum64() {
        return Err(StoreError::corrupt(
            "snapshot",
            format!("trailer mismatch: {records} records read, {want_records} announced"),
        ));
    }
    let revision = meta.last_log_id.map(|l| l.index).unwrap_or(0);
    let compacted = revision.saturating_add(1);
    batch.put_cf(sm, KEY_APPLIED, encode(&meta.last_log_id)?);
    batch.put_cf(sm, KEY_MEMBERSHIP, encode(&meta.last_membership)?);
    batch.put_cf(sm, KEY_COMPACTED, encode(&compacted)?);
    Ok(Staged {
        batch,
        revision,
        compacted,
    })
}

/// Keeps a verified `file` as this member's current snapshot (unless a newer one is there),
/// so it can serve it to others.
pub(crate) fn keep(dir: &Path, file: &mut File, meta: &SnapshotMeta) -> Result<(), StoreError> {
    file.seek(SeekFrom::Start(0))?;
    let tmp = dir.join(RECEIVED);
    let mut out = File::create(&tmp)?;
    std::io::copy(file, &mut out)?;
    out.sync_all()?;
    publish(dir, &tmp, &meta.last_log_id)?;
    Ok(())
}

/// Writes a staged state, synced; returns its revision and compacted revision.
pub(crate) fn commit(db: &DB, staged: Staged) -> Result<(u64, u64), StoreError> {
    let mut opts = WriteOptions::default();
    opts.set_sync(crate::log_store::sync_writes());
    db.write_opt(staged.batch, &opts)?;
    Ok((staged.revision, staged.compacted))
}

/// Creates a file for a snapshot arriving from the leader; it is handed to Raft when complete
/// and removed at the next start if the transfer never finished.
pub(crate) fn incoming(dir: &Path) -> Result<(std::path::PathBuf, File), StoreError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        "incoming-{}.snap.tmp",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TypeConfig;
    use openraft::testing::log_id;

    /// A snapshot file holding only a header for `index`, as `open_current` reads it.
    fn header_file(dir: &Path, name: &str, index: u64) -> (std::path::PathBuf, Option<LogId>) {
        let meta = SnapshotMeta {
            last_log_id: Some(log_id::<TypeConfig>(1, 1, index)),
            last_membership: StoredMembership::default(),
        };
        let path = dir.join(name);
        let mut w = CrcWriter {
            inner: File::create(&path).unwrap(),
            crc: crc64fast::Digest::new(),
        };
        w.put(MAGIC).unwrap();
        w.frame(&encode(&meta).unwrap()).unwrap();
        (path, meta.last_log_id)
    }

    fn current_index(dir: &Path) -> Option<u64> {
        let (meta, _) = open_current(dir).unwrap()?;
        meta.last_log_id.map(|l| l.index)
    }

    /// A build of an older state that finishes after a newer snapshot was installed leaves
    /// the newer one current; a newer one still replaces it.
    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, at) = header_file(dir.path(), "a.tmp", 10);
        assert!(publish(dir.path(), &a, &at).unwrap());
        assert_eq!(current_index(dir.path()), Some(10));
        let (b, bt) = header_file(dir.path(), "b.tmp", 5);
        assert!(!publish(dir.path(), &b, &bt).unwrap());
        assert_eq!(current_index(dir.path()), Some(10));
        assert!(!b.exists(), "the older file is removed");
        let (c, ct) = header_file(dir.path(), "c.tmp", 20);
        assert!(publish(dir.path(), &c, &ct).unwrap());
        assert_eq!(current_index(dir.path()), Some(20));
    }

    fn put_entry(index: u64, name: &str) -> crate::types::Entry {
        use augur_proto::{Op, Record, Setting, Txn};
        crate::types::Entry {
            log_id: log_id::<TypeConfig>(1, 1, index),
            payload: openraft::EntryPayload::Normal(crate::Command::Txn(Txn {
                compares: vec![],
                ops: vec![Op::Put(Record::Setting(Setting {
                    name: name.into(),
                    value: vec![index as u8],
                    version: 0,
                }))],
            })),
        }
    }

    async fn apply(
        sm: &mut crate::StateMachine,
        entries: impl Iterator<Item = crate::types::Entry>,
    ) {
        use openraft::storage::RaftStateMachine;
        let entries: Vec<_> = entries.map(|e| Ok((e, None))).collect();
        sm.apply(futures::stream::iter(entries)).await.unwrap();
    }

    /// A member that crashes while installing a snapshot from the leader, after keeping the
    /// file and before writing the state, starts again with the installed state and a
    /// current snapshot that covers every log entry it purged. (Writing the state first, as
    /// this code once did, left the member's own older snapshot current while openraft
    /// purged the log up to the installed revision at the next start.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_inside_an_installation_leaves_state_and_snapshot_agreeing() {
        use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
        let src_dir = tempfile::tempdir().unwrap();
        let mut src = crate::open(&crate::StoreConfig::new(src_dir.path()), 1)
            .unwrap()
            .state;
        apply(&mut src, (1..=30).map(|i| put_entry(i, &format!("s{i}")))).await;
        let mut snap = src.build_snapshot().await.unwrap();

        let dst_dir = tempfile::tempdir().unwrap();
        let cfg = crate::StoreConfig::new(dst_dir.path());
        {
            let mut dst = crate::open(&cfg, 1).unwrap().state;
            apply(&mut dst, (1..=5).map(|i| put_entry(i, &format!("d{i}")))).await;
            dst.build_snapshot().await.unwrap();
            let (db, dir) = dst.parts();
            let staged = stage(&db, &snap.meta, &mut snap.snapshot).unwrap();
            keep(&dir, &mut snap.snapshot, &snap.meta).unwrap();
            drop(staged); // the crash: the state is never written
        }

        let mut stores = crate::open(&cfg, 1).unwrap();
        openraft::storage::StorageHelper::new(&mut stores.log, &mut stores.state)
            .with_id(1)
            .get_initial_state()
            .await
            .unwrap();
        assert_eq!(stores.state.revision(), 30);
        assert_eq!(stores.state.digest().unwrap(), src.digest().unwrap());
        let purged = stores.log.get_log_state().await.unwrap().last_purged_log_id;
        let current = stores.state.get_current_snapshot().await.unwrap().unwrap();
        assert!(
            current.meta.last_log_id >= purged,
            "current snapshot {:?} older than the purged log {:?}",
            current.meta.last_log_id,
            purged
        );
    }
}
