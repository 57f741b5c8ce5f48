//! `results.json`: the machine-readable summary of a run, for CI and for comparing runs.
//!
//! The harness fills what only it knows (seed, faults, leader changes, recovery time); the
//! history-derived figures come from [`HistoryStats::from_events`] so they always agree with
//! `history.jsonl`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checker::{Anomaly, CheckReport, Verdict};
use crate::history::{Event, EventKind};

/// Errors writing or reading `results.json`.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// File I/O failed.
    #[error("i/o on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The JSON is not a results document.
    #[error("decoding {path}: {source}")]
    Json {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// Completion counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Took effect.
    pub ok: u64,
    /// Certainly did not take effect.
    pub fail: u64,
    /// Unknown (timeouts, lost connections, never completed).
    pub info: u64,
}

/// Latency of operations with a definite outcome (ok or fail), in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Operations measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// Figures computed from a history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryStats {
    /// Invocations per function (`read`, `write`, `cas`).
    pub ops_by_kind: BTreeMap<String, u64>,
    /// How they completed.
    pub outcomes: OutcomeCounts,
    /// Latency of definite outcomes; `None` when event times are not a clock (a Jepsen log's
    /// times are positions).
    pub latency: Option<LatencyStats>,
    /// Distinct keys touched.
    pub keys: usize,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl HistoryStats {
    /// Counts operations and measures latency. Event times are nanoseconds; an invoke with no
    /// completion counts as `info`. Tolerates malformed histories (unmatched completions are
    /// ignored) because stats are wanted even for a history the checker rejects.
    pub fn from_events(events: &[Event]) -> Self {
        let mut s = HistoryStats::default();
        let mut pending: HashMap<u64, u64> = HashMap::new();
        let mut latencies = Vec::new();
        let mut keys = std::collections::HashSet::new();
        for e in events {
            match e.kind {
                EventKind::Invoke => {
                    *s.ops_by_kind.entry(e.f.to_string()).or_default() += 1;
                    keys.insert(e.key.as_str());
                    pending.insert(e.process, e.time);
                }
                kind => {
                    let Some(start) = pending.remove(&e.process) else {
                        continue;
                    };
                    match kind {
                        EventKind::Ok => s.outcomes.ok += 1,
                        EventKind::Fail => s.outcomes.fail += 1,
                        _ => s.outcomes.info += 1,
                    }
                    if kind != EventKind::Info {
                        latencies.push(e.time.saturating_sub(start));
                    }
                }
            }
        }
        s.outcomes.info += pending.len() as u64;
        latencies.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        s.latency = Some(LatencyStats {
            count: latencies.len() as u64,
            p50_ms: ms(percentile(&latencies, 50.0)),
            p99_ms: ms(percentile(&latencies, 99.0)),
            max_ms: ms(latencies.last().copied().unwrap_or(0)),
        });
        s.keys = keys.len();
        s
    }
}

/// One fault the nemesis tried to inject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Family (`partition`, `kill`, `pause`, `clock`, `member`, `disk-loss`).
    pub kind: String,
    /// What was done, e.g. `isolate 127.0.0.3`.
    pub description: String,
    /// When it started, ms from the start of the run.
    pub start_ms: u64,
    /// When it was healed; `None` if it never was.
    pub end_ms: Option<u64>,
    /// False when the machine could not inject it (no root, no nft, no libfaketime...).
    pub injected: bool,
    /// Why it was not injected, or what went wrong.
    pub note: Option<String>,
    /// Time from its heal until a write invoked after the heal succeeded, in milliseconds
    /// (`None` when no write after it succeeded, or it was never healed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_after_ms: Option<u64>,
    /// What the fault did, step by step (a disk loss: kill, wipe, restart, what the wiped
    /// member said while lost, each call of its re-add), so a reader can line each step up
    /// with the clients' operations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<FaultStep>,
}

/// One step of a fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStep {
    /// When, ms from the start of the run.
    pub at_ms: u64,
    /// What happened.
    pub what: String,
}

/// Fills each healed fault's [`FaultRecord::recovered_after_ms`] from the history. Fault times
/// are ms and event times ns on the same clock (the run's start).
pub fn measure_fault_recovery(events: &[Event], faults: &mut [FaultRecord]) {
    use crate::history::Fun;
    // (invoke time, completion time) of every successful write or cas, in invoke order.
    let mut invoked: HashMap<u64, u64> = HashMap::new();
    let mut writes: Vec<(u64, u64)> = Vec::new();
    for e in events {
        match e.kind {
            EventKind::Invoke => {
                invoked.insert(e.process, e.time);
            }
            EventKind::Ok if e.f != Fun::Read => {
                if let Some(start) = invoked.remove(&e.process) {
                    writes.push((start, e.time));
                }
            }
            _ => {
                invoked.remove(&e.process);
            }
        }
    }
    writes.sort_unstable();
    for f in faults.iter_mut() {
        let Some(end_ms) = f.end_ms.filter(|_| f.injected) else {
            continue;
        };
        let healed_ns = end_ms.saturating_mul(1_000_000);
        let first = writes.partition_point(|&(start, _)| start < healed_ns);
        f.recovered_after_ms = writes[first..]
            .iter()
            .map(|&(_, done)| done)
            .min()
            .map(|done| done.saturating_sub(healed_ns) / 1_000_000);
    }
}

/// A change of leader seen by the harness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderChange {
    /// When it was observed, ms from the start of the run.
    pub at_ms: u64,
    /// The new leader's node index (0-based: node `n<index+1>`), `None` when none was known.
    pub leader: Option<usize>,
}

/// How many times leadership moved to a different node, ignoring periods without a known
/// leader in between (a leader that is briefly unknown and comes back is not a change).
pub fn leader_moves(changes: &[LeaderChange]) -> usize {
    let mut last = None;
    let mut moves = 0;
    for l in changes.iter().filter_map(|c| c.leader) {
        if last.is_some_and(|p| p != l) {
            moves += 1;
        }
        last = Some(l);
    }
    moves
}

/// The whole `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    /// The run's seed (`None` when the results come from checking a recorded history).
    pub seed: Option<u64>,
    /// Overall verdict.
    pub verdict: Verdict,
    /// Operation counts, outcomes, latency.
    pub history: HistoryStats,
    /// Faults, injected or not.
    pub faults: Vec<FaultRecord>,
    /// Leader changes observed.
    pub leader_changes: Vec<LeaderChange>,
    /// Keys checked by the linearizability checker.
    pub keys_checked: usize,
    /// Keys whose verdict was unknown (budget exhausted).
    pub keys_unknown: Vec<String>,
    /// Every anomaly found.
    pub anomalies: Vec<Anomaly>,
    /// Time the checker took, in milliseconds.
    pub checker_ms: f64,
    /// Time from the final heal until the cluster served again, in milliseconds.
    pub recovery_ms: Option<u64>,
    /// What only a cluster run knows (absent when checking a recorded history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
}

/// What one logical client (a worker, possibly under several process ids) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Worker number.
    pub worker: usize,
    /// The node its reads go to.
    pub home_node: String,
    /// Process ids it ran under, in order (a new one after each `info`).
    pub processes: Vec<u64>,
    /// Completions: ok.
    pub ok: u64,
    /// Completions: fail.
    pub fail: u64,
    /// Completions: info.
    pub info: u64,
    /// Ok reads.
    pub reads_ok: u64,
    /// Ok writes and cas.
    pub writes_ok: u64,
}

/// One node's state digest after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDigest {
    /// Node name.
    pub node: String,
    /// Applied revision.
    pub revision: u64,
    /// Records in its state.
    pub records: u64,
    /// CRC-64 of its state.
    pub crc64: String,
}

/// Whether the replicas ended identical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Convergence {
    /// Same revision and digest on every node, and every key read the same on every node.
    pub converged: bool,
    /// The last digests seen.
    pub nodes: Vec<NodeDigest>,
    /// Keys read on every node after heal.
    pub keys_read: usize,
    /// Final reads that never succeeded (`key@node`).
    pub missing_reads: Vec<String>,
    /// Keys whose final value or version differs between nodes.
    pub disagreements: Vec<String>,
    /// Why not converged, in words.
    pub detail: Option<String>,
}

/// What a cluster run adds to the results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Number of nodes.
    pub nodes: usize,
    /// Nemesis families asked for.
    pub nemeses: Vec<String>,
    /// Length of the faulty period, ms.
    pub duration_ms: u64,
    /// The `augur` binary under test.
    pub augur_bin: String,
    /// The network namespace the run used, if any.
    pub namespace: Option<String>,
    /// Nemesis families this machine cannot inject, and why (their faults are in `faults`
    /// with `injected: false`).
    pub unavailable: BTreeMap<String, String>,
    /// Per logical client.
    pub workers: Vec<WorkerRecord>,
    /// Whether the cluster served again (all nodes healthy, a write committed) after heal.
    pub recovered: bool,
    /// Errors of the final heal that persisted until its deadline.
    pub heal_errors: Vec<String>,
    /// Final reads and digests.
    pub convergence: Convergence,
    /// Times a wiped member, before it was added back, answered as anything but a member
    /// waiting to be added with nothing applied: it rejoined on its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wiped_member_violations: Vec<String>,
    /// What only a data-plane run (`--workload data`) knows; then `nodes` counts the
    /// metadata members and `convergence.nodes` lists every shard replica's checksum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataPlaneInfo>,
    /// The exit code and why.
    pub exit_code: u8,
    /// The exit code's meaning for this run.
    pub exit_reason: String,
}

/// What a data-plane run adds to [`RunInfo`]: the cluster's shape and timing, and what the
/// checks after the final heal found besides the history's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPlaneInfo {
    /// Metadata members.
    pub meta: u64,
    /// Storage nodes.
    pub storage: u64,
    /// Shards.
    pub shards: u32,
    /// Replicas per shard.
    pub rf: u32,
    /// A storage node's lease after an acknowledged heartbeat, ms.
    pub lease_ms: u64,
    /// Silence before the control plane declares a storage node Down, ms.
    pub grace_ms: u64,
    /// Down this long before a node's replicas are re-created elsewhere, ms.
    pub down_delay_ms: u64,
    /// Whether the nodes ran with the test hook `AUGUR_UNSAFE_SKIP_LEASE_CHECK=1` (a test
    /// build's primaries then serve reads without a lease: the run must find stale reads).
    pub unsafe_skip_lease_check: bool,
    /// Acknowledged writes the final reads do not show.
    pub lost_writes: Vec<String>,
    /// Shards not back at their replication factor by the deadline.
    pub under_replicated: Vec<String>,
    /// Shards whose replicas differ at one checkpoint, or could not be compared.
    pub mismatches: Vec<String>,
    /// Time from the final heal until every shard was back at its replication factor, ms.
    pub replicated_after_ms: Option<u64>,
    /// Each `migrate` fault's drain and the moves it caused (empty without `--nemesis
    /// migrate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrate: Vec<MigrateFault>,
    /// Migrations still neither Committed nor Aborted when the check after the final heal
    /// gave up: a stuck move.
    #[serde(default)]
    pub unfinished_migrations: Vec<String>,
    /// Storage nodes still Draining when that check gave up: a drain nobody ended.
    #[serde(default)]
    pub draining_nodes: Vec<String>,
    /// Time from the final heal until every migration was terminal and no node Draining, ms.
    #[serde(default)]
    pub moves_settled_after_ms: Option<u64>,
}

/// One `migrate` fault: a storage node drained through the operator command while the other
/// faults ran, then undrained. The counts are of the drain's own moves (`Drain` migrations
/// off that node planned after the drain began), as `list_migrations` showed them, sampled
/// through the fault and until the undrain's cancellations had landed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateFault {
    /// The fault's start, ms from the start of the run (as in `faults`).
    pub start_ms: u64,
    /// The storage node drained.
    pub node: u64,
    /// True: the drain was left to empty the node before the undrain; false: undrained at
    /// the heal, cancelling what was unfinished.
    pub finish: bool,
    /// Shards whose primary the node was when drained (each must be handed off first).
    pub primaries_at_drain: usize,
    /// Shards the node held a replica of when drained.
    pub replicas_at_drain: usize,
    /// Of the shards it led when drained, those seen led by another node during the fault
    /// (a hand-off, or a failover when the node was also killed or cut off).
    pub primaries_moved: usize,
    /// Moves recorded (Planned) for the drain.
    pub moves_planned: usize,
    /// Moves that started copying (a learner added).
    pub moves_started: usize,
    /// Moves committed: the node's replica replaced by a verified copy.
    pub moves_committed: usize,
    /// Moves aborted (the undrain's cancellations, deadlines, a destination lost...).
    pub moves_aborted: usize,
    /// Moves neither committed nor aborted when this record was closed.
    pub moves_unfinished: usize,
    /// Whether the node held no replica and no learner at some point before the undrain.
    pub emptied: bool,
    /// When it was first seen empty, ms after the drain.
    pub emptied_after_ms: Option<u64>,
    /// Replicas it held when undrained.
    pub replicas_at_undrain: usize,
    /// What the undrain found or did.
    pub undrain: String,
}

impl RunResults {
    /// Builds the history- and checker-derived parts; the harness then sets seed, faults,
    /// leader changes and recovery time.
    pub fn new(events: &[Event], check: &CheckReport) -> Self {
        RunResults {
            seed: None,
            verdict: check.verdict,
            history: HistoryStats::from_events(events),
            faults: Vec::new(),
            leader_changes: Vec::new(),
            keys_checked: check.keys.len(),
            keys_unknown: check
                .keys
                .iter()
                .filter(|k| k.verdict == Verdict::Unknown)
                .map(|k| k.key.clone())
                .collect(),
            anomalies: check.anomalies().cloned().collect(),
            checker_ms: check.elapsed_us as f64 / 1000.0,
            recovery_ms: None,
            run: None,
        }
    }

    /// Writes pretty JSON to `path`.
    pub fn write(&self, path: &Path) -> Result<(), ResultsError> {
        let name = path.display().to_string();
        let text = serde_json::to_string_pretty(self).map_err(|source| ResultsError::Json {
            path: name.clone(),
            source,
        })?;
        std::fs::write(path, text + "\n").map_err(|source| ResultsError::Io { path: name, source })
    }

    /// Reads a `results.json`.
    pub fn read(path: &Path) -> Result<Self, ResultsError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ResultsError::Io {
            path: name.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ResultsError::Json { path: name, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check_events, CheckOptions};
    use crate::history::{Fun, Payload, Value};
    use crate::model::Register;

    fn ev(kind: EventKind, process: u64, time_ms: u64, f: Fun, value: Payload) -> Event {
        Event {
            kind,
            process,
            time: time_ms * 1_000_000,
            f,
            key: format!("k{}", process % 2),
            value,
            version: None,
        }
    }

    #[test]
    fn stats_count_outcomes_and_latency() {
        let one = |v| Payload::One(Value::Int(v));
        let mut events = Vec::new();
        // 100 writes by process 0 taking 1..=100 ms.
        let mut t = 0;
        for i in 1..=100u64 {
            events.push(ev(EventKind::Invoke, 0, t, Fun::Write, one(i as i64)));
            t += i;
            events.push(ev(EventKind::Ok, 0, t, Fun::Write, one(i as i64)));
        }
        events.push(ev(EventKind::Invoke, 1, t, Fun::Read, Payload::NIL));
        events.push(ev(
            EventKind::Invoke,
            3,
            t,
            Fun::Cas,
            Payload::Pair(Value::Nil, Value::Int(1)),
        ));
        events.push(ev(EventKind::Invoke, 5, t, Fun::Read, Payload::NIL));
        events.push(ev(EventKind::Fail, 1, t + 1000, Fun::Read, Payload::NIL));
        events.push(ev(EventKind::Info, 3, t + 5000, Fun::Cas, Payload::NIL));
        let s = HistoryStats::from_events(&events);
        assert_eq!(s.ops_by_kind["write"], 100);
        assert_eq!(s.ops_by_kind["read"], 2);
        assert_eq!(
            s.outcomes,
            OutcomeCounts {
                ok: 100,
                fail: 1,
                info: 2
            }
        );
        let l = s.latency.expect("latency");
        assert_eq!(l.count, 101);
        assert_eq!(l.p50_ms, 51.0);
        assert_eq!(l.p99_ms, 100.0);
        assert_eq!(l.max_ms, 1000.0);
        assert_eq!(s.keys, 2);

        let check = check_events(&Register, &events, &CheckOptions::default()).unwrap();
        let mut r = RunResults::new(&events, &check);
        r.seed = Some(9);
        r.faults.push(FaultRecord {
            kind: "clock".into(),
            description: "clock of node 1 skewed +500 ms".into(),
            start_ms: 10,
            end_ms: None,
            injected: false,
            note: Some("clock unavailable: libfaketime.so.1 not found".into()),
            recovered_after_ms: None,
            steps: Vec::new(),
        });
        let mut faults = vec![
            FaultRecord {
                kind: "kill".into(),
                description: "kill -9 n1".into(),
                start_ms: 0,
                end_ms: Some(20),
                injected: true,
                note: None,
                recovered_after_ms: None,
                steps: Vec::new(),
            },
            FaultRecord {
                kind: "pause".into(),
                description: "pause n1".into(),
                start_ms: 0,
                end_ms: Some(100_000),
                injected: true,
                note: None,
                recovered_after_ms: None,
                steps: Vec::new(),
            },
        ];
        measure_fault_recovery(&events, &mut faults);
        // Write i is invoked at (i-1)i/2 ms and ends at i(i+1)/2 ms; the first invoked at or
        // after 20 ms is i=7 (21 ms), ending at 28 ms.
        assert_eq!(faults[0].recovered_after_ms, Some(8));
        assert_eq!(faults[1].recovered_after_ms, None, "no write after it");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        r.write(&path).unwrap();
        assert_eq!(RunResults::read(&path).unwrap(), r);
        std::fs::write(&path, "{\"seed\": 1}").unwrap();
        assert!(matches!(
            RunResults::read(&path),
            Err(ResultsError::Json { .. })
        ));
    }
}
