//! Power loss: the whole cluster loses power under load, and every acknowledged write must
//! be there when it comes back.
//!
//! A SIGKILL cannot show a missing fsync: the kernel's page cache outlives the process and
//! the next start reads the unsynced bytes back. Here the members run on `augur-lazyfs`,
//! which keeps every byte not yet fsynced apart and drops it at `crash`. Each round: writers
//! load the cluster (blind puts and compare-and-sets of settings, every acknowledgement
//! recorded), all members are SIGKILLed at once at a random moment, the power is cut, the
//! members start again (`augur local up`), and every key written so far is read
//! linearizably. The second test runs a build whose store skips every WAL sync and must see
//! acknowledged writes vanish: proof that the first would notice.
//!
//! Needs root and `/dev/fuse` (otherwise prints `SKIPPED` and checks nothing), and the
//! `augur-lazyfs` binary next to `augur` (`cargo build --release --workspace --bins`).

use augur_client::{CasOutcome, Client, Error};
use augur_proto::{Key, Op, Record, Setting, Txn};
use augur_tests::lazyfs::{fuse_unavailable, LazyFs};
use augur_tests::{poll, Launcher, LocalCluster};
use rand::Rng;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MEMBERS: u64 = 3;
const WRITERS: u64 = 8;
/// Keys each writer blind-puts (its own).
const OWN_KEYS: u64 = 4;
/// Keys every writer compares-and-sets (shared, so CAS races and conflicts).
const SHARED_KEYS: u64 = 4;
/// Acknowledged writes to wait for in a round before the power may go.
const MIN_ACKED: u64 = 40;

/// What became of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Sent; no answer (yet, or ever: `Indeterminate`, or the writer was stopped by the
    /// crash). May or may not be applied.
    Unknown,
    /// Acknowledged as committed at this version (log index).
    Acked(u64),
    /// Certainly not applied (CAS conflict, cluster unavailable).
    NotApplied,
}

struct Write {
    key: String,
    value: Vec<u8>,
    outcome: Outcome,
}

/// Every write of the test, in the order they were sent.
#[derive(Default)]
struct History {
    writes: Vec<Write>,
}

type Shared = Arc<Mutex<History>>;

fn begin(h: &Shared, key: &str, value: &[u8]) -> usize {
    let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
    h.writes.push(Write {
        key: key.to_string(),
        value: value.to_vec(),
        outcome: Outcome::Unknown,
    });
    h.writes.len() - 1
}

fn finish(h: &Shared, i: usize, outcome: Outcome) {
    h.lock().unwrap_or_else(|e| e.into_inner()).writes[i].outcome = outcome;
}

fn setting(name: &str, value: &[u8]) -> Record {
    Record::Setting(Setting {
        name: name.into(),
        value: value.to_vec(),
        version: 0,
    })
}

/// Errors that prove the write was not applied; any other leaves it unknown.
fn failed(e: &Error) -> Outcome {
    match e {
        Error::Unavailable(_) | Error::NotFound(_) => Outcome::NotApplied,
        _ => Outcome::Unknown,
    }
}

/// One writer: alternates blind puts of its own keys and CAS of the shared ones until
/// stopped (or aborted: the write in flight then stays `Unknown`).
async fn writer(
    client: Client,
    id: u64,
    round: u32,
    history: Shared,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        seq += 1;
        let value = format!("round {round} writer {id} write {seq}").into_bytes();
        let outcome = if seq.is_multiple_of(2) {
            let key = format!("own-{id}-{}", seq / 2 % OWN_KEYS);
            let i = begin(&history, &key, &value);
            let txn = Txn {
                compares: vec![],
                ops: vec![Op::Put(setting(&key, &value))],
            };
            let outcome = match client.txn(txn).await {
                Ok(r) if r.succeeded => Outcome::Acked(r.revision),
                Ok(_) => Outcome::NotApplied,
                Err(e) => failed(&e),
            };
            finish(&history, i, outcome);
            outcome
        } else {
            let key = format!("shared-{}", (seq / 2 + id) % SHARED_KEYS);
            let expected = match client.get(&Key::Setting(key.clone())).await {
                Ok(Some(r)) => Some(r.version()),
                Ok(None) => None,
                // Nothing written; the cluster is busy or going down.
                Err(_) => continue,
            };
            let i = begin(&history, &key, &value);
            let outcome = match client.cas(setting(&key, &value), expected).await {
                Ok(CasOutcome::Committed { version }) => Outcome::Acked(version),
                Ok(CasOutcome::Conflict { .. }) => Outcome::NotApplied,
                Err(e) => failed(&e),
            };
            finish(&history, i, outcome);
            outcome
        };
        if matches!(outcome, Outcome::Acked(_)) {
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Checks what was read after the crash against the history; returns every violation.
///
/// For each key, with A the acknowledged write of the highest version: the read must be A,
/// or a write of unknown outcome at a higher version; with no acknowledged write, absent or
/// a write of unknown outcome. So an acknowledged write that vanished, or was overwritten by
/// an older value, or a value that was never (or certainly not) written, is a violation.
fn check(history: &History, reads: &BTreeMap<String, Option<(Vec<u8>, u64)>>) -> Vec<String> {
    let mut bad = Vec::new();
    for (key, read) in reads {
        let writes: Vec<&Write> = history.writes.iter().filter(|w| &w.key == key).collect();
        let last_acked = writes
            .iter()
            .filter_map(|w| match w.outcome {
                Outcome::Acked(v) => Some((v, &w.value)),
                _ => None,
            })
            .max_by_key(|(v, _)| *v);
        let unknown: HashSet<&Vec<u8>> = writes
            .iter()
            .filter(|w| w.outcome == Outcome::Unknown)
            .map(|w| &w.value)
            .collect();
        let show = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        match (last_acked, read) {
            (None, None) => {}
            (None, Some((v, _))) if unknown.contains(v) => {}
            (None, Some((v, ver))) => bad.push(format!(
                "{key}: holds {:?} at version {ver}, which was never acknowledged nor pending",
                show(v)
            )),
            (Some((aver, av)), None) => bad.push(format!(
                "{key}: LOST: acknowledged {:?} at version {aver}, now absent",
                show(av)
            )),
            (Some((aver, av)), Some((v, ver))) => {
                if *ver < aver {
                    bad.push(format!(
                        "{key}: LOST: acknowledged {:?} at version {aver}, now {:?} at older \
                         version {ver}",
                        show(av),
                        show(v)
                    ));
                } else if *ver == aver && v != av {
                    bad.push(format!(
                        "{key}: version {ver} holds {:?}, acknowledged as {:?}",
                        show(v),
                        show(av)
                    ));
                } else if *ver > aver && !unknown.contains(v) {
                    bad.push(format!(
                        "{key}: holds {:?} at version {ver} after acknowledged version {aver}, \
                         but no write of unknown outcome wrote it",
                        show(v)
                    ));
                }
            }
        }
    }
    bad
}

/// The last lines of every member's log, to explain a failure.
fn log_tails(cluster: &LocalCluster) -> String {
    let mut out = String::new();
    for id in 1..=MEMBERS {
        let log = cluster.dir().join(format!("meta-{id}/augur.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out += &format!("--- {}:\n", log.display());
        out += &lines[lines.len().saturating_sub(15)..].join("\n");
        out += "\n";
    }
    out
}

/// What one round did.
struct Round {
    acked: u64,
    unknown: usize,
    dropped_bytes: u64,
    violations: Vec<String>,
}

/// One round: load, SIGKILL all members at once and cut the power, restart, read back.
async fn round(
    cluster: &LocalCluster,
    fs: &LazyFs,
    launcher: &Launcher,
    history: &Shared,
    n: u32,
) -> anyhow::Result<Round> {
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..WRITERS {
        tasks.push(tokio::spawn(writer(
            cluster.new_client()?,
            id,
            n,
            history.clone(),
            acked.clone(),
            stop.clone(),
        )));
    }
    poll(Duration::from_secs(30), "writes to be acknowledged", || {
        let acked = acked.clone();
        async move { Ok((acked.load(Ordering::Relaxed) >= MIN_ACKED).then_some(())) }
    })
    .await?;
    // A random moment under load.
    let extra = rand::thread_rng().gen_range(0..1500);
    tokio::time::sleep(Duration::from_millis(extra)).await;

    let load = started.elapsed();
    let killed = cluster.kill_all_at_once(Duration::from_secs(10)).await?;
    anyhow::ensure!(
        killed == MEMBERS as usize,
        "only {killed} of {MEMBERS} members were running at the power cut\n{}",
        log_tails(cluster)
    );
    let dropped = fs.crash()?;
    stop.store(true, Ordering::Release);
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.load(Ordering::Relaxed);

    let restart = Instant::now();
    let dir = cluster.dir().to_string_lossy().into_owned();
    let l = launcher.clone();
    tokio::task::spawn_blocking(move || l.run(&["local", "up", "--dir", &dir, "--timeout", "60"]))
        .await??;
    let restart = restart.elapsed();
    // `augur local up` waits only for the members that run: one that died at its start (a
    // store it cannot open after the power cut, say) must not pass unnoticed.
    let running = cluster.member_pids()?.len();
    anyhow::ensure!(
        running == MEMBERS as usize,
        "only {running} of {MEMBERS} members are running after the restart\n{}",
        log_tails(cluster)
    );

    let client = cluster.new_client()?;
    let (keys, max_acked, unknown) = {
        let h = history.lock().unwrap_or_else(|e| e.into_inner());
        let keys: HashSet<String> = h.writes.iter().map(|w| w.key.clone()).collect();
        let max_acked = h
            .writes
            .iter()
            .filter_map(|w| match w.outcome {
                Outcome::Acked(v) => Some(v),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let unknown = h
            .writes
            .iter()
            .filter(|w| w.outcome == Outcome::Unknown)
            .count();
        (keys, max_acked, unknown)
    };
    let mut reads = BTreeMap::new();
    let mut revision = 0;
    for key in keys {
        let k = Key::Setting(key.clone());
        let (record, rev) = poll(Duration::from_secs(30), "a linearizable read", || async {
            match client
                .get_with(&k, augur_proto::wire::Consistency::Linearizable)
                .await
            {
                Ok(r) => Ok(Some(r)),
                Err(Error::Unavailable(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        revision = revision.max(rev);
        let read = match record {
            Some(Record::Setting(s)) => Some((s.value, s.version)),
            Some(other) => anyhow::bail!("{key} holds a {other:?}"),
            None => None,
        };
        reads.insert(key, read);
    }
    let mut violations = {
        let h = history.lock().unwrap_or_else(|e| e.into_inner());
        check(&h, &reads)
    };
    if revision < max_acked {
        violations.push(format!(
            "the cluster is at revision {revision}, below the acknowledged revision {max_acked}"
        ));
    }
    println!(
        "round {n}: {acked} writes acknowledged in {load:.1?}; power cut dropped {} bytes in {} \
         files; restart took {restart:.1?}; {} keys read at revision {revision} (highest \
         acknowledged {max_acked}); {unknown} writes of unknown outcome so far; {} violations",
        dropped.bytes,
        dropped.files,
        reads.len(),
        violations.len()
    );
    for v in violations.iter().take(10) {
        println!("  {v}");
    }
    Ok(Round {
        acked,
        unknown,
        dropped_bytes: dropped.bytes,
        violations,
    })
}

/// fsyncs every file and directory under `dir` except the members' data directories.
fn sync_provisioning(dir: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "data") {
                continue;
            }
            sync_provisioning(&path)?;
        }
        std::fs::File::open(&path)?.sync_all()?;
    }
    Ok(())
}

/// Mounts augur-lazyfs and starts a cluster on it, or says why the test cannot run.
///
/// `augur local up` writes configurations, certificates and the cluster file without fsync,
/// as provisioning does before an operator's `sync`; those are synced here, while the members'
/// data directories are left to the members. With `checkpoint_all`, everything unsynced is
/// persisted instead (LazyFS's cache checkpoint; `sync(1)`), bootstrap state included.
async fn setup(
    test: &str,
    launcher: &Launcher,
    checkpoint_all: bool,
) -> anyhow::Result<Option<(LazyFs, LocalCluster)>> {
    if let Some(why) = fuse_unavailable() {
        println!("SKIPPED {test}: {why}");
        return Ok(None);
    }
    let fs = LazyFs::mount().await?;
    let cluster = LocalCluster::start_in(fs.mountpoint(), MEMBERS, &[], launcher).await?;
    sync_provisioning(cluster.dir())?;
    if checkpoint_all {
        fs.checkpoint()?;
    }
    Ok(Some((fs, cluster)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_power_loss() -> anyhow::Result<()> {
    const ROUNDS: u32 = 3;
    let launcher = Launcher::default();
    let Some((fs, cluster)) = setup("power_loss", &launcher, false).await? else {
        return Ok(());
    };
    let history = Shared::default();
    let started = Instant::now();
    let mut acked = 0;
    for n in 1..=ROUNDS {
        // Panic (not return) on failure while the mount and the cluster are alive, so their
        // directories are kept for reading.
        let r = round(&cluster, &fs, &launcher, &history, n)
            .await
            .unwrap_or_else(|e| panic!("round {n}: {e:#}"));
        assert!(
            r.violations.is_empty(),
            "round {n}: acknowledged writes did not survive the power cut:\n{}",
            r.violations.join("\n")
        );
        acked += r.acked;
    }
    assert!(acked >= u64::from(ROUNDS) * MIN_ACKED);
    println!(
        "power_loss: {ROUNDS} power cuts, {acked} acknowledged writes, none lost, in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// The same scenario against a build that skips every WAL sync must lose acknowledged
/// writes: the check above can see a missing fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_test_catches_skipped_wal_syncs() -> anyhow::Result<()> {
    const ROUNDS: u32 = 3;
    let Some(bin) = std::env::var_os("AUGUR_UNSAFE_BIN") else {
        println!(
            "SKIPPED power_loss teeth: AUGUR_UNSAFE_BIN is not set (an augur built with \
             --features augur-node/unsafe-test-hooks; scripts/test.sh builds it)"
        );
        return Ok(());
    };
    let launcher = Launcher {
        bin: Some(bin.into()),
        env: vec![("AUGUR_UNSAFE_SKIP_WAL_SYNC".into(), "1".into())],
    };
    // A build that never syncs would lose its bootstrap too, and then not come back at all:
    // persist the state before the load (as if the OS had flushed its cache), so that what
    // the test must see is the loss of acknowledged writes.
    let Some((fs, cluster)) = setup("power_loss teeth", &launcher, true).await? else {
        return Ok(());
    };
    let log = std::fs::read_to_string(cluster.dir().join("meta-1/augur.log"))?;
    assert!(
        log.contains("AUGUR_UNSAFE_SKIP_WAL_SYNC=1 skips every WAL sync"),
        "the members do not run the unsafe hook; was AUGUR_UNSAFE_BIN built with \
         unsafe-test-hooks (or does AUGUR_TEST_LOG hide warnings)?"
    );
    let history = Shared::default();
    for n in 1..=ROUNDS {
        let r = round(&cluster, &fs, &launcher, &history, n)
            .await
            .unwrap_or_else(|e| panic!("round {n}: {e:#}"));
        assert!(r.dropped_bytes > 0, "the power cut dropped nothing");
        if !r.violations.is_empty() {
            let lost = r.violations.iter().filter(|v| v.contains("LOST")).count();
            println!(
                "power_loss teeth: round {n} caught the unsynced WAL: {} violations ({lost} \
                 acknowledged writes lost) among {} acknowledged, {} unknown",
                r.violations.len(),
                r.acked,
                r.unknown
            );
            assert!(
                lost > 0,
                "violations, but no lost write: {:?}",
                r.violations
            );
            return Ok(());
        }
    }
    panic!("{ROUNDS} power cuts of a build that skips every WAL sync lost nothing: the test has no teeth");
}
