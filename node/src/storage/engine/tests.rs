use super::*;
use augur_proto::data::{CopiedRequest, Effect};
use std::time::Duration;

fn entry(seq: u64, epoch: u64, key: &str, value: &str) -> LogEntry {
    LogEntry {
        seq,
        epoch,
        request: Some(RequestId { client: 7, seq }),
        op_digest: seq,
        effect: Effect::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        },
        outcome: WriteOutcome::Applied { version: seq },
        at_ms: 1000 + seq,
    }
}

#[tokio::test]
async fn log_apply_scan_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (e, id) = Engine::open(dir.path(), 4, 8 << 20, Duration::ZERO).unwrap();
    let s = ShardId(3);
    let other = ShardId(4);
    let es: Vec<LogEntry> = (1..=5)
        .map(|i| entry(i, 1, &format!("k{i}"), "v"))
        .collect();
    e.append(s, &es, false).unwrap();
    e.append(other, &[entry(1, 1, "x", "y")], false).unwrap();
    e.synced().await.unwrap();
    assert_eq!(e.last_entry(s).unwrap().map(|x| x.seq), Some(5));
    assert_eq!(e.entries(s, 2, 4, usize::MAX).unwrap().len(), 3);
    assert_eq!(
        e.entries(s, 2, 9, 1).unwrap().len(),
        1,
        "at least one entry"
    );
    // A disagreeing tail is replaced in one write.
    e.append(s, &[entry(4, 2, "k4", "w")], true).unwrap();
    assert_eq!(
        e.last_entry(s).unwrap().map(|x| (x.seq, x.epoch)),
        Some((4, 2))
    );
    let mut st = ReplicaState::empty(2, ReplicaRole::Secondary);
    st.applied = 4;
    let applied = e.entries(s, 1, 4, usize::MAX).unwrap();
    e.apply(s, &applied, &st).unwrap();
    assert_eq!(
        e.get(s, b"k4").unwrap().map(|v| v.value),
        Some(b"w".to_vec())
    );
    assert_eq!(e.replica_state(s).unwrap().map(|r| r.applied), Some(4));
    assert!(e
        .remembered(s, &RequestId { client: 7, seq: 2 })
        .unwrap()
        .is_some());
    let (items, more) = e.scan(s, b"k", None, 2, usize::MAX).unwrap();
    assert_eq!((items.len(), more), (2, true));
    let (rest, more) = e.scan(s, b"k", Some(&items[1].0), 10, usize::MAX).unwrap();
    assert_eq!((rest.len(), more), (2, false));
    assert!(e.get(other, b"k1").unwrap().is_none(), "shards do not mix");
    // What is in the memtable reads the same from memory alone.
    assert_eq!(
        e.get_cached(s, b"k4").unwrap().map(|v| v.map(|v| v.value)),
        Some(Some(b"w".to_vec()))
    );
    assert_eq!(e.get_cached(other, b"k1").unwrap(), Some(None));
    // A copy's scan: one snapshot in chunks (at least one item each, however small the
    // budget), resumable after a key, the last chunk marked.
    let mut chunks = Vec::new();
    e.scan_snapshot(
        s,
        None,
        1,
        |_| true,
        |_, items, done| {
            chunks.push((items.len(), done));
            true
        },
    )
    .unwrap();
    assert_eq!(chunks, vec![(1, false), (1, false), (1, false), (1, true)]);
    let mut rest = Vec::new();
    e.scan_snapshot(
        s,
        Some(&items[1].0),
        usize::MAX,
        |_| true,
        |_, items, done| {
            rest.extend(items.into_iter().map(|(k, _)| (k, done)));
            true
        },
    )
    .unwrap();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|(k, done)| *k > items[1].0 && *done));
    let mut empty = Vec::new();
    e.scan_snapshot(
        ShardId(77),
        None,
        1,
        |_| true,
        |_, items, done| {
            empty.push((items.len(), done));
            true
        },
    )
    .unwrap();
    assert_eq!(
        empty,
        vec![(0, true)],
        "an empty shard is one empty last chunk"
    );
    // Checksums agree for equal content regardless of the log.
    let snap = e.snapshot();
    let c1 = e.checksum(&snap, s, 4).unwrap();
    assert_eq!((c1.keys, c1.bytes), (4, 12));
    drop(snap);
    // Ids are kept by this node's clock from when it applied them: the primary's older
    // stamps (1001..) do not shorten that. Until a retention is set, none is forgotten.
    let held = |e: &Engine| {
        (1..=4u64)
            .filter(|i| {
                let id = RequestId { client: 7, seq: *i };
                e.remembered(s, &id).unwrap().is_some()
            })
            .count()
    };
    e.compact_requests().unwrap();
    assert_eq!(held(&e), 4);
    e.set_request_retention(60_000);
    e.compact_requests().unwrap();
    assert_eq!(held(&e), 4, "applied just now: within a minute's retention");
    std::thread::sleep(Duration::from_millis(5));
    e.set_request_retention(1);
    e.compact_requests().unwrap();
    assert_eq!(held(&e), 0, "past a retention of 1 ms");
    e.delete_shard(s).unwrap();
    assert!(e.replica_state(s).unwrap().is_none());
    assert!(e.last_entry(s).unwrap().is_none());
    assert_eq!(e.last_entry(other).unwrap().map(|x| x.seq), Some(1));
    drop(e);
    let (_, again) = Engine::open(dir.path(), 4, 8 << 20, Duration::ZERO).unwrap();
    assert_eq!(again, id);
    assert!(matches!(
        Engine::open(dir.path(), 5, 8 << 20, Duration::ZERO),
        Err(EngineError::Identity(_))
    ));
}

fn versioned(version: u64, len: usize) -> Versioned {
    Versioned {
        value: vec![version as u8; len],
        version,
    }
}

fn load_chunk(keys: std::ops::Range<u32>, at_seq: u64) -> LoadChunk {
    let items: Vec<Item> = keys
        .map(|i| {
            (
                format!("k{i:05}").into_bytes(),
                versioned(u64::from(i), 100),
            )
        })
        .collect();
    let bytes = items
        .iter()
        .map(|(k, v)| (k.len() + v.value.len()) as u64)
        .sum();
    LoadChunk {
        items,
        at_seq,
        bytes,
    }
}

#[test]
fn bulk_load_ingests_files_and_keeps_what_it_ingested_before_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), 1, 8 << 20, Duration::ZERO).unwrap();
    // Data files are cut at shard boundaries, so a copied shard overlaps no file.
    let options = std::fs::read_dir(dir.path().join("rocksdb"))
        .unwrap()
        .filter_map(|f| f.ok())
        .filter(|f| f.file_name().to_string_lossy().starts_with("OPTIONS-"))
        .map(|f| std::fs::read_to_string(f.path()).unwrap())
        .collect::<String>();
    assert!(
        options.contains("SstPartitionerFixedPrefixFactory"),
        "{options}"
    );
    let s = ShardId(9);
    // Newer than anything already there: an old value of a copied key is replaced.
    e.apply(
        s,
        &[entry(1, 1, "k00003", "old")],
        &ReplicaState::empty(1, ReplicaRole::Learner),
    )
    .unwrap();
    // Files of 4 KiB of items: a file fills in each chunk of 30 items of 106 bytes.
    let chunks = vec![
        load_chunk(0..30, 12),
        load_chunk(30..30, 12),
        load_chunk(30..60, 11),
        load_chunk(60..90, 12),
    ];
    let (loaded, result) = e.bulk_load(s, 4 << 10, &LoadGate::default(), chunks);
    result.unwrap();
    assert_eq!(loaded.last.as_deref(), Some(&b"k00089"[..]));
    assert_eq!(loaded.at_seq, Some(11), "the oldest snapshot used");
    assert!(loaded.files >= 2, "several files: {loaded:?}");
    assert_eq!(loaded.bytes, 90 * 106);
    let (items, more) = e.scan(s, b"", None, 1000, usize::MAX).unwrap();
    assert!(!more);
    assert_eq!(items.len(), 90);
    assert!(items.iter().enumerate().all(|(i, (k, v))| {
        *k == format!("k{i:05}").into_bytes() && v.version == i as u64 && v.value.len() == 100
    }));
    assert_eq!(e.get(s, b"k00003").unwrap().map(|v| v.version), Some(3));
    // The whole-shard checksum (values read in place) is the chunks' CRC over the content.
    let mut digest = crc64fast::Digest::new();
    augur_proto::data::crc_items(&mut digest, items.iter().map(|(k, v)| (k.as_slice(), v)));
    let snap = e.snapshot();
    let sum = e.checksum(&snap, s, 12).unwrap();
    assert_eq!(
        (sum.crc64, sum.keys, sum.bytes),
        (digest.sum64(), 90, 90 * 106)
    );
    drop(snap);
    // The size estimate of a shard in files: its raw bytes (the copy's count) within the
    // per-item encoding overhead; nothing for a shard with no data.
    let est = e.size_estimates(&[s, ShardId(77)]);
    assert!(
        (90 * 106..=90 * 106 * 3 / 2).contains(&est[0]),
        "{est:?} for {} raw bytes",
        90 * 106
    );
    assert_eq!(est[1], 0);
    // Keys out of order: the file being written is dropped, the ones ingested before stay.
    let t = ShardId(10);
    let mut bad = load_chunk(50..60, 5);
    bad.items.swap(2, 7);
    let (loaded, result) = e.bulk_load(t, 1, &LoadGate::default(), vec![load_chunk(0..10, 5), bad]);
    assert!(result.is_err(), "out of order must be refused");
    assert_eq!(loaded.last.as_deref(), Some(&b"k00009"[..]));
    let (items, _) = e.scan(t, b"", None, 1000, usize::MAX).unwrap();
    assert_eq!(items.len(), 10, "only the ingested chunk");
    // Nothing is left behind in the staging directory, and a reopen clears leftovers.
    let staging = dir.path().join("ingest");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    std::fs::write(staging.join("shard-1-99.sst"), b"half a file").unwrap();
    drop(e);
    let (e, _) = Engine::open(dir.path(), 1, 8 << 20, Duration::ZERO).unwrap();
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    assert_eq!(e.scan(s, b"", None, 1000, usize::MAX).unwrap().0.len(), 90);
}

#[test]
fn an_abandoned_load_ingests_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), 1, 8 << 20, Duration::ZERO).unwrap();
    let s = ShardId(4);
    // Closed before the load: nothing lands, and no staged file is left behind.
    let gate = LoadGate::default();
    gate.close();
    let (loaded, result) = e.bulk_load(s, 1, &gate, vec![load_chunk(0..10, 5)]);
    assert!(matches!(result, Err(EngineError::Abandoned)), "{result:?}");
    assert_eq!(loaded, Loaded::default());
    assert!(e.scan(s, b"", None, 1000, usize::MAX).unwrap().0.is_empty());
    // Closed between chunks (the learner started over and deleted the shard): what was
    // ingested before stays for the delete to remove; the file being filled is dropped.
    let gate = LoadGate::default();
    let mut chunks = vec![load_chunk(0..10, 5), load_chunk(10..20, 5)].into_iter();
    let mut n = 0;
    let (loaded, result) = e.bulk_load(
        s,
        1,
        &gate,
        std::iter::from_fn(|| {
            n += 1;
            if n == 2 {
                gate.close();
            }
            chunks.next()
        }),
    );
    assert!(matches!(result, Err(EngineError::Abandoned)), "{result:?}");
    assert_eq!(loaded.last.as_deref(), Some(&b"k00009"[..]));
    assert_eq!(e.scan(s, b"", None, 1000, usize::MAX).unwrap().0.len(), 10);
    assert_eq!(
        std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_new_learners_clear_leaves_its_copy_a_path_to_the_bottom_level() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), 1, 8 << 20, Duration::ZERO).unwrap();
    let l0 = |e: &Engine| {
        e.db.property_int_value_cf(e.cf(CF_DATA).unwrap(), "rocksdb.num-files-at-level0")
            .unwrap()
            .unwrap()
    };
    // Another shard's writes sit in the memtable, as clients' writes would.
    let (s, other) = (ShardId(5), ShardId(6));
    e.apply(
        other,
        &[entry(1, 1, "a", "1")],
        &ReplicaState::empty(1, ReplicaRole::Primary),
    )
    .unwrap();
    // A learner of a shard this node never held clears it, then bulk loads its copy: no
    // tombstone in the memtable, so no flush and no file in level 0.
    assert!(!e.holds_data(s).unwrap());
    e.delete_shard(s).unwrap();
    let (_, result) = e.bulk_load(s, 1 << 20, &LoadGate::default(), vec![load_chunk(0..50, 3)]);
    result.unwrap();
    assert_eq!(
        l0(&e),
        0,
        "the copy went below level 0, the memtable stayed"
    );
    assert!(e.holds_data(s).unwrap());
    assert_eq!(e.scan(s, b"", None, 1000, usize::MAX).unwrap().0.len(), 50);
    // A shard with data is still cleared (and its neighbour kept).
    e.delete_shard(s).unwrap();
    assert!(!e.holds_data(s).unwrap());
    assert!(e.scan(s, b"", None, 1000, usize::MAX).unwrap().0.is_empty());
    assert_eq!(e.get(other, b"a").unwrap().map(|v| v.version), Some(1));
    assert!(e.holds_data(other).unwrap());
}

#[test]
fn a_copy_ingested_beside_a_snapshot_is_never_rewritten_to_zero_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), 1, 8 << 20, Duration::ZERO).unwrap();
    let other = ShardId(6);
    e.apply(
        other,
        &[entry(1, 1, "a", "1")],
        &ReplicaState::empty(1, ReplicaRole::Primary),
    )
    .unwrap();
    // Another shard's copy or checksum holds a snapshot while each copy below lands.
    let copy_beside_a_snapshot = |shard, keys, version| {
        let snap = e.snapshot();
        let (_, result) = e.bulk_load(
            shard,
            1 << 20,
            &LoadGate::default(),
            vec![load_chunk(keys, version)],
        );
        result.unwrap();
        drop(snap);
    };
    let (s, busy) = (ShardId(5), ShardId(7));
    copy_beside_a_snapshot(s, 0..50, 3);
    // rocksdb.sstables lists each file as `number:size[smallest seq .. largest seq]...`:
    // the copy's file holds sequence 0, so RocksDB has no reason to rewrite it later.
    let listed =
        e.db.property_value_cf(e.cf(CF_DATA).unwrap(), "rocksdb.sstables")
            .unwrap()
            .unwrap();
    assert_eq!(
        listed.matches("[0 .. 0]").count(),
        1,
        "one file, at sequence 0: {listed}"
    );
    // A copy whose range the database already holds data in is still ordered after it.
    e.apply(
        busy,
        &[entry(1, 1, "k00003", "old")],
        &ReplicaState::empty(1, ReplicaRole::Learner),
    )
    .unwrap();
    copy_beside_a_snapshot(busy, 0..10, 3);
    assert_eq!(e.get(busy, b"k00003").unwrap().map(|v| v.version), Some(3));
    assert_eq!(e.scan(s, b"", None, 1000, usize::MAX).unwrap().0.len(), 50);
    // A shard cleared (a range tombstone above the file at sequence 0) and copied again, as
    // a node that held it before becomes its learner once more: the new copy is visible.
    e.delete_shard(s).unwrap();
    assert!(e.scan(s, b"", None, 1000, usize::MAX).unwrap().0.is_empty());
    copy_beside_a_snapshot(s, 20..40, 4);
    let (items, _) = e.scan(s, b"", None, 1000, usize::MAX).unwrap();
    assert_eq!(items.len(), 20, "the second copy, nothing of the first");
    assert_eq!(
        items.first().map(|(k, _)| k.clone()),
        Some(b"k00020".to_vec())
    );
}

#[test]
fn a_copy_carries_the_request_ids_the_shard_applied() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, _) = Engine::open(dirs.0.path(), 1, 8 << 20, Duration::ZERO).unwrap();
    let (dst, _) = Engine::open(dirs.1.path(), 2, 8 << 20, Duration::ZERO).unwrap();
    let (s, other) = (ShardId(3), ShardId(4));
    let state = ReplicaState::empty(1, ReplicaRole::Primary);
    let entries: Vec<LogEntry> = (1..=5).map(|i| entry(i, 1, "k", "v")).collect();
    src.apply(s, &entries, &state).unwrap();
    src.apply(other, &[entry(9, 1, "x", "y")], &state).unwrap();
    // Chunks of two ids (128-byte budget), then the data; only this shard's ids.
    let (mut chunks, mut sent) = (Vec::new(), Vec::new());
    src.scan_snapshot(
        s,
        None,
        128,
        |ids| {
            chunks.push(ids.len());
            sent.extend(ids);
            true
        },
        |_, _, _| true,
    )
    .unwrap();
    assert_eq!(chunks, vec![2, 2, 1]);
    assert_eq!(
        sent.iter().map(|r| (r.id.seq, r.seq)).collect::<Vec<_>>(),
        (1..=5).map(|i| (i, i)).collect::<Vec<_>>()
    );
    // The learner remembers them as the source does, for at least as long.
    dst.remember_copied(s, &sent).unwrap();
    for e in &entries {
        let id = e.request.unwrap();
        let (got, want) = (
            dst.remembered(s, &id).unwrap().unwrap(),
            src.remembered(s, &id).unwrap().unwrap(),
        );
        assert_eq!(
            (got.seq, got.outcome, got.op_digest),
            (want.seq, want.outcome, e.op_digest)
        );
        assert!(got.at_ms >= want.at_ms);
    }
    assert!(dst
        .remembered(other, &entries[0].request.unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn forgetting_and_copies_go_on_past_a_corrupt_request_record() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), 1, 8 << 20, Duration::ZERO).unwrap();
    let s = ShardId(2);
    // Many ids, with a corrupt record among them.
    let n = 20_007u64;
    let ids: Vec<CopiedRequest> = (0..n)
        .map(|i| CopiedRequest {
            id: RequestId { client: 9, seq: i },
            seq: i + 1,
            outcome: WriteOutcome::Applied { version: i + 1 },
            at_ms: 0,
            op_digest: i,
        })
        .collect();
    e.remember_copied(s, &ids).unwrap();
    let bad = RequestId { client: 1, seq: 1 };
    e.db.put_cf(
        e.cf(CF_REQUESTS).unwrap(),
        request_key(s, &bad),
        b"\xff\xff",
    )
    .unwrap();
    // A copy of the shard carries every readable id and leaves the corrupt one behind.
    let mut copied = 0u64;
    let mut done = false;
    e.scan_snapshot(
        s,
        None,
        1 << 20,
        |ids| {
            copied += ids.len() as u64;
            true
        },
        |_, _, last| {
            done |= last;
            true
        },
    )
    .unwrap();
    assert_eq!((copied, done), (n, true));
    // Nothing is past retention yet.
    e.set_request_retention(3_600_000);
    e.compact_requests().unwrap();
    assert!(e.remembered(s, &ids[0].id).unwrap().is_some());
    std::thread::sleep(Duration::from_millis(5));
    e.set_request_retention(1);
    e.compact_requests().unwrap();
    assert!(e.remembered(s, &ids[0].id).unwrap().is_none());
    assert!(e.remembered(s, &ids[n as usize - 1].id).unwrap().is_none());
    // The corrupt record is kept, and reported as corrupt to whoever asks for its id.
    assert!(e.remembered(s, &bad).is_err());
}
