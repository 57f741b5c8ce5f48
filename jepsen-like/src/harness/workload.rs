//! The workload: logical client processes doing read / write / cas on versioned registers.
//!
//! Registers are `Setting` records named `jepsen-kNNNNN`; a record's `version` (the log index
//! that last wrote it) is the register's version, and every write stores a value no other
//! write uses, so the checker's pre-check and pruning can tie each read to its write.
//!
//! Each worker is a Jepsen "process": one operation outstanding at a time, its own
//! [`Client`] (its own QUIC endpoint), and a home node its reads go to, on exactly that node
//! ([`Client::get_on`], linearizable). Writes go to the leader through the client, which
//! follows `NotLeader` hints but never resends a write that may have arrived.
//!
//! Outcomes are classified by what is certain:
//! - `ok`: the server answered with a result;
//! - `fail`: the operation certainly had no effect (a cas whose compare failed; a request the
//!   server refused before proposing it; no connection could be made);
//! - `info`: anything else (timeout, connection lost after sending, `Indeterminate`).
//!
//! After an `info` the worker continues under a fresh process id, as in Jepsen: the old
//! process may still have an operation in flight, and a process never has two.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_client::{CasOutcome, Client, Error as ClientError};
use augur_proto::wire::ApiError;
use augur_proto::{Consistency, Key, Op, Record, Setting, Txn};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::HarnessError;
use crate::history::{EventKind, Fun, Payload, Recorder, Value};
use crate::results::WorkerRecord;

/// The history sink shared by every worker.
pub type SharedRecorder = Arc<Recorder<BufWriter<File>>>;

/// Name of the register with number `id`.
pub fn key_name(id: u64) -> String {
    format!("jepsen-k{id:05}")
}

/// Hands out keys so that a bounded number of operations touch each, and several processes
/// contend on the same keys at once.
///
/// `active` keys are in use at any time; a key retires after `ops_per_key` workload operations
/// and a fresh one takes its slot. Keeping keys short keeps the checker's search small; keeping
/// several processes on each key is what makes races (and stale reads) observable.
#[derive(Debug)]
pub struct KeyPool {
    state: Mutex<PoolState>,
    ops_per_key: u32,
}

#[derive(Debug)]
struct PoolState {
    slots: Vec<(u64, u32)>,
    next: u64,
    used: BTreeSet<u64>,
}

impl KeyPool {
    /// A pool of `active` concurrent keys, each used for at most `ops_per_key` operations.
    pub fn new(active: usize, ops_per_key: u32) -> Self {
        let active = active.max(1);
        KeyPool {
            state: Mutex::new(PoolState {
                slots: (0..active as u64).map(|id| (id, 0)).collect(),
                next: active as u64,
                used: BTreeSet::new(),
            }),
            ops_per_key: ops_per_key.max(1),
        }
    }

    /// A key for the next operation.
    pub fn take(&self, rng: &mut impl Rng) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let slot = rng.gen_range(0..s.slots.len());
        let (id, issued) = s.slots[slot];
        s.used.insert(id);
        if issued + 1 >= self.ops_per_key {
            let fresh = s.next;
            s.next += 1;
            s.slots[slot] = (fresh, 0);
        } else {
            s.slots[slot].1 = issued + 1;
        }
        id
    }

    /// The keys in use now (one per slot), e.g. for a nemesis to aim at the nodes serving
    /// them.
    pub fn active(&self) -> Vec<u64> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.slots.iter().map(|&(id, _)| id).collect()
    }

    /// Every key an operation was issued on.
    pub fn used(&self) -> Vec<u64> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.used.iter().copied().collect()
    }
}

/// What every worker shares.
pub struct Shared {
    /// The history.
    pub recorder: SharedRecorder,
    /// Keys.
    pub keys: KeyPool,
    /// Next unused process id (processes are renamed after `info`).
    pub next_process: AtomicU64,
    /// Next unique value to write.
    pub next_value: AtomicI64,
    /// Set when the workload period is over.
    pub stop: AtomicBool,
}

/// Per-worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker number (also its first process id).
    pub index: usize,
    /// Node index its reads go to.
    pub home: usize,
    /// The home node's QUIC endpoint.
    pub home_endpoint: String,
    /// Bound on one operation; past it the outcome is `info`.
    pub op_timeout: Duration,
    /// Mean pause between operations (uniform in 0..2x).
    pub think: Duration,
    /// RNG seed for this worker's choices.
    pub seed: u64,
}

/// An operation's outcome as recorded.
pub(crate) enum Outcome {
    Ok { value: Payload, version: u64 },
    Fail,
    Info,
}

pub(crate) fn value_of(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()) {
        Some(i) => Value::Int(i),
        None => Value::Str(String::from_utf8_lossy(bytes).into_owned()),
    }
}

fn setting(name: &str, value: i64) -> Record {
    Record::Setting(Setting {
        name: name.to_string(),
        value: value.to_string().into_bytes(),
        version: 0,
    })
}

/// Whether a failed write certainly had no effect.
pub fn write_error_is_certain(e: &ClientError) -> bool {
    match e {
        // Only returned after the request may have been delivered.
        ClientError::Indeterminate(_) => false,
        // The client returns this only when no attempt could have been applied: every
        // attempt was refused before proposing (NotLeader, Unavailable) or never connected.
        ClientError::Unavailable(_) => true,
        // The compare failed: nothing applied.
        ClientError::NotFound(_) => true,
        ClientError::Api(api) => match api {
            ApiError::NotLeader { .. }
            | ApiError::InvalidArgument(_)
            | ApiError::Compacted { .. }
            | ApiError::Unavailable(_)
            | ApiError::Membership(_)
            | ApiError::PermissionDenied(_)
            | ApiError::WrongIdentity(_) => true,
            ApiError::Indeterminate(_) | ApiError::Internal(_) => false,
        },
        // Local set-up failures: nothing was sent.
        ClientError::Config(_) | ClientError::Transport(_) => true,
        // Data-plane refusals (never returned by the metadata calls the workload makes): the
        // client reports a write that may have been applied as `Indeterminate` instead.
        ClientError::Data(_) | ClientError::NoDataPlane => true,
        ClientError::Unexpected { .. } => false,
    }
}

/// Whether a failed read certainly was refused by the node (rather than lost or timed out).
/// A read has no effect either way; the distinction only keeps the history honest.
pub fn read_error_is_certain(e: &ClientError) -> bool {
    matches!(e, ClientError::Api(api) if !matches!(api, ApiError::Internal(_) | ApiError::Indeterminate(_)))
}

/// A linearizable read of `key` on exactly `endpoint`, classified.
pub(crate) async fn read_on(
    client: &Client,
    endpoint: &str,
    key: &str,
    timeout: Duration,
) -> (Outcome, String) {
    let k = Key::Setting(key.to_string());
    match tokio::time::timeout(
        timeout,
        client.get_on(endpoint, &k, Consistency::Linearizable),
    )
    .await
    {
        Err(_) => (Outcome::Info, format!("timed out after {timeout:?}")),
        Ok(Ok((None, _))) => (
            Outcome::Ok {
                value: Payload::One(Value::Nil),
                version: 0,
            },
            String::new(),
        ),
        Ok(Ok((Some(Record::Setting(s)), _))) => (
            Outcome::Ok {
                value: Payload::One(value_of(&s.value)),
                version: s.version,
            },
            String::new(),
        ),
        Ok(Ok((Some(other), _))) => (Outcome::Info, format!("not a setting: {other:?}")),
        Ok(Err(e)) if read_error_is_certain(&e) => (Outcome::Fail, e.to_string()),
        Ok(Err(e)) => (Outcome::Info, e.to_string()),
    }
}

/// Records an invoke and the completion of `op`, renaming the process after `info`.
/// Returns the outcome. Shared with the data-plane workload ([`crate::data`]), whose
/// histories follow the same rules.
pub(crate) struct Recording<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) summary: &'a mut WorkerRecord,
    pub(crate) process: &'a mut u64,
}

impl Recording<'_> {
    pub(crate) fn invoke(
        &mut self,
        f: Fun,
        key: &str,
        value: Payload,
        version: Option<u64>,
    ) -> Result<(), HarnessError> {
        self.shared
            .recorder
            .record(EventKind::Invoke, *self.process, f, key, value, version)?;
        Ok(())
    }

    pub(crate) fn complete(
        &mut self,
        f: Fun,
        key: &str,
        sent: Payload,
        outcome: &Outcome,
    ) -> Result<(), HarnessError> {
        let (kind, value, version) = match outcome {
            Outcome::Ok { value, version } => (EventKind::Ok, value.clone(), Some(*version)),
            Outcome::Fail => (EventKind::Fail, sent, None),
            Outcome::Info => (EventKind::Info, sent, None),
        };
        self.shared
            .recorder
            .record(kind, *self.process, f, key, value, version)?;
        match outcome {
            Outcome::Ok { .. } => self.summary.ok += 1,
            Outcome::Fail => self.summary.fail += 1,
            Outcome::Info => {
                self.summary.info += 1;
                *self.process = self.shared.next_process.fetch_add(1, Ordering::Relaxed);
                self.summary.processes.push(*self.process);
            }
        }
        Ok(())
    }
}

/// Runs one worker until `shared.stop` is set.
pub async fn worker(
    cfg: WorkerConfig,
    client: Client,
    shared: Arc<Shared>,
    home_name: String,
) -> Result<WorkerRecord, HarnessError> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut process = cfg.index as u64;
    let mut summary = WorkerRecord {
        worker: cfg.index,
        home_node: home_name,
        processes: vec![process],
        ..Default::default()
    };
    // The last version this process saw of each key: what its next cas expects.
    let mut seen: HashMap<u64, u64> = HashMap::new();
    // A hard bound a little past the client's own deadline, so the client gets to classify.
    let hard = cfg.op_timeout + Duration::from_millis(500);
    while !shared.stop.load(Ordering::Relaxed) {
        let id = shared.keys.take(&mut rng);
        let key = key_name(id);
        let roll: f64 = rng.gen();
        let mut rec = Recording {
            shared: &shared,
            summary: &mut summary,
            process: &mut process,
        };
        let started = Instant::now();
        if roll < 0.5 {
            rec.invoke(Fun::Read, &key, Payload::NIL, None)?;
            let (outcome, why) = read_on(&client, &cfg.home_endpoint, &key, hard).await;
            if let Outcome::Ok { version, .. } = &outcome {
                seen.insert(id, *version);
                rec.summary.reads_ok += 1;
            } else {
                tracing::debug!(worker = cfg.index, key = %key, error = %why, "read did not complete ok");
            }
            let failed = !matches!(outcome, Outcome::Ok { .. });
            rec.complete(Fun::Read, &key, Payload::NIL, &outcome)?;
            if failed {
                // The home node is down, paused or cut off: do not spin on it.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            let value = shared.next_value.fetch_add(1, Ordering::Relaxed);
            let payload = Payload::One(Value::Int(value));
            let cas = roll >= 0.75;
            let expected = seen.get(&id).copied().unwrap_or(0);
            let (f, version_arg) = if cas {
                (Fun::Cas, Some(expected))
            } else {
                (Fun::Write, None)
            };
            rec.invoke(f, &key, payload.clone(), version_arg)?;
            let record = setting(&key, value);
            let result = if cas {
                let expect = (expected > 0).then_some(expected);
                tokio::time::timeout(hard, client.cas(record, expect))
                    .await
                    .map(|r| match r {
                        Ok(CasOutcome::Committed { version }) => Ok(Some(version)),
                        Ok(CasOutcome::Conflict { current }) => {
                            seen.insert(id, current);
                            Ok(None)
                        }
                        Err(ClientError::NotFound(_)) => {
                            seen.insert(id, 0);
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    })
            } else {
                let txn = Txn {
                    compares: Vec::new(),
                    ops: vec![Op::Put(record)],
                };
                tokio::time::timeout(hard, client.txn(txn))
                    .await
                    .map(|r| r.map(|t| t.succeeded.then_some(t.revision)))
            };
            let outcome = match result {
                Err(_) => Outcome::Info,
                Ok(Ok(Some(version))) => {
                    seen.insert(id, version);
                    rec.summary.writes_ok += 1;
                    Outcome::Ok {
                        value: payload.clone(),
                        version,
                    }
                }
                Ok(Ok(None)) => Outcome::Fail,
                Ok(Err(e)) if write_error_is_certain(&e) => {
                    tracing::debug!(worker = cfg.index, key = %key, error = %e, "write certainly not applied");
                    Outcome::Fail
                }
                Ok(Err(e)) => {
                    tracing::debug!(worker = cfg.index, key = %key, error = %e, "write outcome unknown");
                    Outcome::Info
                }
            };
            let failed = !matches!(outcome, Outcome::Ok { .. });
            rec.complete(f, &key, payload, &outcome)?;
            if failed && started.elapsed() < Duration::from_millis(50) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !cfg.think.is_zero() {
            let ms = cfg.think.as_millis() as u64;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=2 * ms))).await;
        }
    }
    Ok(summary)
}

/// The result of one final read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRead {
    /// Node name.
    pub node: String,
    /// Value read (`null` when absent).
    pub value: Option<String>,
    /// Version read (0 when absent).
    pub version: u64,
}

/// After heal: reads `keys` on every node in `endpoints` (linearizable, on exactly that node),
/// recording each attempt in the history, retrying refused or lost reads until `deadline`.
/// Returns, per key, what each node answered; a node that never answered is missing.
pub async fn final_reads(
    client: &Client,
    shared: &Shared,
    nodes: &[(String, String)],
    keys: &[u64],
    op_timeout: Duration,
    deadline: Instant,
) -> Result<Vec<(String, Vec<FinalRead>)>, HarnessError> {
    let mut out = Vec::with_capacity(keys.len());
    let mut processes: Vec<u64> = nodes
        .iter()
        .map(|_| shared.next_process.fetch_add(1, Ordering::Relaxed))
        .collect();
    for &id in keys {
        let key = key_name(id);
        let mut answers = Vec::with_capacity(nodes.len());
        for (i, (name, endpoint)) in nodes.iter().enumerate() {
            loop {
                let mut summary = WorkerRecord::default();
                let mut rec = Recording {
                    shared,
                    summary: &mut summary,
                    process: &mut processes[i],
                };
                rec.invoke(Fun::Read, &key, Payload::NIL, None)?;
                let (outcome, why) = read_on(client, endpoint, &key, op_timeout).await;
                rec.complete(Fun::Read, &key, Payload::NIL, &outcome)?;
                if let Outcome::Ok { value, version } = outcome {
                    let value = match value {
                        Payload::One(Value::Nil) => None,
                        other => Some(other.to_string()),
                    };
                    answers.push(FinalRead {
                        node: name.clone(),
                        value,
                        version,
                    });
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(node = %name, key = %key, error = %why, "final read gave up");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        out.push((key, answers));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pool_bounds_operations_per_key_and_rotates() {
        let pool = KeyPool::new(3, 10);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut per_key: HashMap<u64, u32> = HashMap::new();
        for _ in 0..1000 {
            *per_key.entry(pool.take(&mut rng)).or_default() += 1;
        }
        assert!(per_key.values().all(|&n| n <= 10), "{per_key:?}");
        assert!(
            per_key.len() >= 100,
            "keys did not rotate: {}",
            per_key.len()
        );
        assert_eq!(pool.used().len(), per_key.len());
        assert_eq!(pool.active().len(), 3);
    }

    #[test]
    fn classification_is_conservative() {
        assert!(!write_error_is_certain(&ClientError::Indeterminate(
            "x".into()
        )));
        assert!(!write_error_is_certain(&ClientError::Api(
            ApiError::Internal("x".into())
        )));
        assert!(write_error_is_certain(&ClientError::Api(
            ApiError::NotLeader { leader: None }
        )));
        assert!(write_error_is_certain(&ClientError::Unavailable(
            "x".into()
        )));
        assert!(!read_error_is_certain(&ClientError::Unavailable(
            "timeout".into()
        )));
        assert!(read_error_is_certain(&ClientError::Api(
            ApiError::Unavailable("no leader".into())
        )));
        assert_eq!(value_of(b"42"), Value::Int(42));
        assert_eq!(value_of(b"x"), Value::Str("x".into()));
    }
}
