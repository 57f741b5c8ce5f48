//! History paging under fire: a slow watcher reads pages while entries are applied, history
//! is compacted every few revisions and snapshots are installed. Every revision must reach it
//! exactly once, in order, or its read must fail with `Compacted`; never a silent gap.

use augur_proto::{Op, Record, Setting, Table, Txn};
use augur_raft_store::types::Entry;
use augur_raft_store::{open, Command, StoreConfig, StoreError, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::EntryPayload;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn entry(index: u64) -> Entry {
    Entry {
        log_id: log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::Txn(Txn {
            compares: vec![],
            ops: vec![Op::Put(Record::Setting(Setting {
                name: format!("k{}", index % 7),
                value: vec![0u8; 200],
                version: 0,
            }))],
        })),
    }
}

/// What one watcher saw: how many revisions, and whether it ended on `Compacted`.
#[derive(Debug, Default)]
struct Seen {
    revisions: u64,
    compacted: bool,
}

/// Reads from `from` page by page until `stop`, checking that revisions come one after
/// another with no gap; returns what it saw.
fn watch(
    sm: &augur_raft_store::StateMachine,
    from: u64,
    stop: &AtomicBool,
    pause: std::time::Duration,
) -> Seen {
    let mut next = from;
    let mut seen = Seen::default();
    while !stop.load(Ordering::Acquire) {
        let applied = sm.revision();
        if next > applied {
            std::thread::yield_now();
            continue;
        }
        // A small byte budget: pages of a few revisions, so many page boundaries race.
        match sm.history(next, applied, &[Table::Settings], 700) {
            Ok(page) => {
                for ev in &page.events {
                    assert_eq!(ev.revision, next, "a revision was skipped or repeated");
                    next += 1;
                    seen.revisions += 1;
                }
                assert_eq!(page.next, next, "the page says it stopped elsewhere");
                // A consumer slower or faster than the applier.
                std::thread::sleep(pause);
            }
            Err(StoreError::Compacted { requested, .. }) => {
                assert_eq!(requested, next);
                seen.compacted = true;
                return seen;
            }
            Err(e) => panic!("history read failed: {e}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watchers_never_skip_a_revision() -> Result<(), StoreError> {
    // Every watcher's stream is checked in every attempt. Whether both outcomes occur
    // depends on scheduling (on a loaded machine even the fast watchers may fall behind), so
    // the race is run again until it was real both ways, a few times at most.
    let mut outcomes = (0, 0);
    for attempt in 1..=5 {
        outcomes = race_once().await?;
        if outcomes.0 > 0 && outcomes.1 > 0 {
            return Ok(());
        }
        println!("attempt {attempt}: {outcomes:?} (compacted, complete); running the race again");
    }
    // Both outcomes happened: the race was real.
    assert!(outcomes.0 > 0, "no watcher ever fell behind compaction");
    assert!(outcomes.1 > 0, "no watcher kept up");
    Ok(())
}

/// One race of 40 watchers against applies, compaction and snapshot installs; returns how
/// many watchers ended with `Compacted` and how many read to the end.
async fn race_once() -> Result<(usize, usize), StoreError> {
    let dir = tempfile::tempdir()?;
    let mut cfg = StoreConfig::new(dir.path());
    cfg.history_retention = 8;
    let mut sm = open(&cfg, 1)?.state;
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    let mut index = 0u64;
    for round in 0..40u64 {
        // A watcher joins at the current revision each round, and keeps reading; every other
        // one is far slower than the applier and falls behind compaction.
        let (w_sm, w_stop, from) = (sm.clone(), stop.clone(), sm.revision() + 1);
        let pause = std::time::Duration::from_micros(if round % 2 == 0 { 100 } else { 20_000 });
        watchers.push(std::thread::spawn(move || {
            watch(&w_sm, from, &w_stop, pause)
        }));
        for _ in 0..25 {
            index += 1;
            let stream = futures::stream::iter([Ok((entry(index), None))]);
            sm.apply(stream).await?;
        }
        if round % 10 == 4 {
            // Install a snapshot of the current state: history is dropped behind it.
            let snap = sm.build_snapshot().await?;
            sm.install_snapshot(&snap.meta, snap.snapshot).await?;
        }
    }
    // Let the watchers drain what is left, then stop them.
    let last = sm.revision();
    assert_eq!(last, index);
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    let mut compacted = 0;
    let mut complete = 0;
    for w in watchers {
        let seen = w.join().expect("watcher panicked");
        if seen.compacted {
            compacted += 1;
        } else {
            complete += 1;
        }
    }
    Ok((compacted, complete))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_are_bounded_by_count_and_bytes() -> Result<(), StoreError> {
    let dir = tempfile::tempdir()?;
    let mut sm = open(&StoreConfig::new(dir.path()), 1)?.state;
    for index in 1..=50 {
        let stream = futures::stream::iter([Ok((entry(index), None))]);
        sm.apply(stream).await?;
    }
    // No budget to speak of: one revision per page, however small the budget.
    let page = sm.history(1, 50, &[], 1)?;
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.next, 2);
    // A budget of about three revisions.
    let page = sm.history(10, 50, &[], 3 * 230)?;
    assert!(
        (2..=4).contains(&page.events.len()),
        "{}",
        page.events.len()
    );
    assert_eq!(page.next, 10 + page.events.len() as u64);
    // Everything fits: the page ends after `to`.
    let page = sm.history(1, 50, &[], usize::MAX)?;
    assert_eq!(page.events.len(), 50);
    assert_eq!(page.next, 51);
    // A table nothing touched: no events, but the scan still moved past `to`.
    let page = sm.history(1, 50, &[Table::Shards], usize::MAX)?;
    assert!(page.events.is_empty());
    assert_eq!(page.next, 51);
    // Lists are bounded the same way, and resume where they stopped.
    let (first, more, _) = sm.list(Table::Settings, None, 100, 1)?;
    assert_eq!((first.len(), more), (1, true));
    let (rest, more, _) = sm.list(Table::Settings, Some(&first[0].key()), 100, usize::MAX)?;
    assert_eq!((rest.len(), more), (6, false));
    Ok(())
}
