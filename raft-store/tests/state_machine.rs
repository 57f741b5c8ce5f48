//! The state machine on a real RocksDB: transactions within one applied batch see each other,
//! history serves watchers and compacts, lists paginate, and state survives a reopen.

use augur_proto::wire::Change;
use augur_proto::{Compare, CompareTarget, Key, Op, Record, Setting, Table, Txn};
use augur_raft_store::types::Entry;
use augur_raft_store::{open, Command, StoreConfig, StoreError, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::EntryPayload;

fn put(name: &str, v: u8) -> Op {
    Op::Put(Record::Setting(Setting {
        name: name.into(),
        value: vec![v],
        version: 0,
    }))
}

fn entry(index: u64, txn: Txn) -> Entry {
    Entry {
        log_id: log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::Txn(txn)),
    }
}

async fn apply(sm: &mut augur_raft_store::StateMachine, entries: Vec<Entry>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.expect("apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_overlay_history_pagination_and_reopen() -> Result<(), StoreError> {
    let dir = tempfile::tempdir()?;
    let mut cfg = StoreConfig::new(dir.path());
    cfg.history_retention = 10;
    let digest_before;
    {
        let mut sm = open(&cfg, 1)?.state;
        // Entry 2 compares on the version entry 1 wrote in the same batch.
        let absent = |n: &str| Compare {
            key: Key::Setting(n.into()),
            target: CompareTarget::Absent,
        };
        let at = |n: &str, v| Compare {
            key: Key::Setting(n.into()),
            target: CompareTarget::VersionEq(v),
        };
        apply(
            &mut sm,
            vec![
                entry(
                    1,
                    Txn {
                        compares: vec![absent("a")],
                        ops: vec![put("a", 1)],
                    },
                ),
                entry(
                    2,
                    Txn {
                        compares: vec![at("a", 1)],
                        ops: vec![put("a", 2), put("b", 2)],
                    },
                ),
                entry(
                    3,
                    Txn {
                        compares: vec![at("a", 1)],
                        ops: vec![put("a", 3)],
                    },
                ), // stale: fails
                entry(
                    4,
                    Txn {
                        compares: vec![],
                        ops: vec![
                            Op::Delete(Key::Setting("b".into())),
                            Op::Delete(Key::Setting("zz".into())),
                        ],
                    },
                ),
            ],
        )
        .await;
        assert_eq!(sm.revision(), 4);
        let (a, rev) = sm.get(&Key::Setting("a".into()))?;
        assert_eq!(rev, 4);
        match a {
            Some(Record::Setting(s)) => assert_eq!((s.value, s.version), (vec![2], 2)),
            other => panic!("{other:?}"),
        }
        assert!(sm.get(&Key::Setting("b".into()))?.0.is_none());
        // History: revision 3 failed and changed nothing; deleting an absent key emits nothing.
        let h = sm.history(1, 4, &[], usize::MAX)?.events;
        assert_eq!(
            h.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert_eq!(h[2].changes, vec![Change::Delete(Key::Setting("b".into()))]);
        assert!(sm
            .history(1, 4, &[Table::Shards], usize::MAX)?
            .events
            .is_empty());

        // Many revisions: history compacts to the retention window; lists paginate.
        let many: Vec<Entry> = (5..=40)
            .map(|i| {
                entry(
                    i,
                    Txn {
                        compares: vec![],
                        ops: vec![put(&format!("k{i:02}"), i as u8)],
                    },
                )
            })
            .collect();
        apply(&mut sm, many).await;
        assert!(sm.compacted_revision() > 1);
        assert!(matches!(
            sm.history(1, 40, &[], usize::MAX),
            Err(StoreError::Compacted { .. })
        ));
        assert_eq!(
            sm.history(sm.compacted_revision(), 40, &[], usize::MAX)?
                .events
                .last()
                .map(|e| e.revision),
            Some(40)
        );
        let (page, more, _) = sm.list(Table::Settings, None, 10, usize::MAX)?;
        assert!(more);
        assert_eq!(page.len(), 10);
        let (rest, more, _) = sm.list(Table::Settings, Some(&page[9].key()), 1000, usize::MAX)?;
        assert!(!more);
        assert_eq!(page.len() + rest.len(), 37);
        digest_before = sm.digest()?;
    }
    // Reopen: same state, same revision.
    let sm = open(&cfg, 1)?.state;
    assert_eq!(sm.revision(), 40);
    assert_eq!(sm.digest()?, digest_before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshots_are_refused_and_change_nothing() -> Result<(), StoreError> {
    use openraft::storage::RaftSnapshotBuilder;
    use std::io::{Read, Seek, Write};
    let src_dir = tempfile::tempdir()?;
    let mut src = open(&StoreConfig::new(src_dir.path()), 1)?.state;
    let entries: Vec<Entry> = (1..=30)
        .map(|i| {
            entry(
                i,
                Txn {
                    compares: vec![],
                    ops: vec![put(&format!("s{i}"), i as u8)],
                },
            )
        })
        .collect();
    apply(&mut src, entries).await;
    let snap = src.build_snapshot().await?;
    let mut bytes = Vec::new();
    let mut file = snap.snapshot;
    file.rewind()?;
    file.read_to_end(&mut bytes)?;

    let dst_dir = tempfile::tempdir()?;
    let mut dst = open(&StoreConfig::new(dst_dir.path()), 1)?.state;
    apply(
        &mut dst,
        vec![entry(
            1,
            Txn {
                compares: vec![],
                ops: vec![put("mine", 7)],
            },
        )],
    )
    .await;
    let before = dst.digest()?;
    let install = |data: Vec<u8>| {
        let mut dst = dst.clone();
        let meta = snap.meta.clone();
        async move {
            let mut f = tempfile::tempfile()?;
            f.write_all(&data)?;
            f.rewind()?;
            dst.install_snapshot(&meta, f).await
        }
    };
    // Every truncation, and single-byte corruptions across the file.
    for cut in (0..bytes.len()).step_by(7) {
        assert!(
            install(bytes[..cut].to_vec()).await.is_err(),
            "truncated at {cut} accepted"
        );
    }
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut damaged = bytes.clone();
        let at = (x as usize) % damaged.len();
        damaged[at] ^= 1 + (x >> 32) as u8 % 255;
        assert!(
            install(damaged).await.is_err(),
            "corruption at byte {at} accepted"
        );
    }
    assert_eq!(
        dst.digest()?,
        before,
        "a refused snapshot changed the state"
    );
    // The intact snapshot installs and reproduces the source exactly.
    install(bytes).await?;
    assert_eq!(dst.digest()?, src.digest()?);
    Ok(())
}

/// A read from memory alone gives exactly what a full read gives, for present and absent
/// keys, before and after the store is reopened; keys just written are always in memory.
/// After a reopen it may instead say it would need the disk, the only other answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_agree_with_full_reads() -> Result<(), StoreError> {
    let dir = tempfile::tempdir()?;
    let cfg = StoreConfig::new(dir.path());
    let names: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let check = |sm: &augur_raft_store::StateMachine, must_hit: bool| -> Result<(), StoreError> {
        let mut hits = 0;
        for n in names.iter().map(String::as_str).chain(["absent"]) {
            let key = Key::Setting(n.into());
            match sm.get_cached(&key)? {
                Some(cached) => {
                    hits += 1;
                    assert_eq!(cached, sm.get(&key)?, "{n}");
                }
                None => assert!(!must_hit, "{n}: a key just written must be in memory"),
            }
        }
        println!("{hits} of {} reads served from memory", names.len() + 1);
        Ok(())
    };
    {
        let mut sm = open(&cfg, 1)?.state;
        let entries = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                entry(
                    i as u64 + 1,
                    Txn {
                        compares: vec![],
                        ops: vec![put(n, i as u8)],
                    },
                )
            })
            .collect();
        apply(&mut sm, entries).await;
        check(&sm, true)?;
    }
    let sm = open(&cfg, 1)?.state;
    check(&sm, false)
}
