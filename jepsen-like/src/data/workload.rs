//! The data-plane workload: logical client processes doing read / write / cas on keys of the
//! data API, each key an independent versioned register.
//!
//! A key's version is the sequence number of the write that set it in its shard (sequence
//! numbers only grow, so every change of a key gets a larger version); an absent key is version
//! 0 with value `nil`, and a cas expecting version 0 expects the key absent. Every write stores
//! a value no other write uses, so the checker's pre-check and pruning can tie each read to its
//! write. Keys come from the same [`KeyPool`] as the metadata workload's: a few are in use at a
//! time, and each retires after a bounded number of operations.
//!
//! **Writes** (`put`, `cas`) go through [`DataClient`], routed by its shard cache, resent
//! under their request id until the deadline; an unknown outcome is `info`.
//!
//! **Reads go to the primary the process believes in**, with the epoch it believes in, as one
//! `Get` request straight to that storage node: no redirect is followed within a read. Each
//! process remembers a route per shard (from the shard cache) and drops it when the node
//! answers that it does not serve the shard at that epoch, or cannot serve now. When the node
//! does not answer at all, half of the processes (the *sticky* ones) keep the route for up to
//! [`STICKY_FAILURES`] attempts: they are the clients with an out-of-date view that keep asking
//! a primary that was cut off, paused or replaced, so that a deposed primary which still serves
//! is asked, and its answer checked. The protocol must make that safe: a primary serves only
//! while its lease holds, and the lease ends before another replica can be promoted.
//!
//! Outcomes: `ok`; `fail` when certain (a cas whose version did not match, a write the client
//! says was never applied, a read the node refused); `info` otherwise. After `info` the worker
//! continues under a new process id, as in Jepsen.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use augur_client::{DataClient, Error as ClientError, Transport, TransportError};
use augur_proto::data::{DataError, DataRequest, DataResponse, WriteOutcome};
use augur_proto::{NodeId, ShardId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::harness::workload::{value_of, Outcome, Recording, Shared};
use crate::harness::HarnessError;
use crate::history::{Event, EventKind, Fun, Payload, Value};
use crate::results::WorkerRecord;

/// Consecutive unanswered reads after which even a sticky process looks its route up again.
pub const STICKY_FAILURES: u32 = 12;

/// The key of register `id`.
pub fn data_key(id: u64) -> String {
    format!("jepsen-d{id:05}")
}

/// Per-worker settings.
#[derive(Debug, Clone)]
pub struct DataWorkerConfig {
    /// Worker number (also its first process id).
    pub index: usize,
    /// Whether it keeps a route to an unresponsive primary (see the module documentation).
    pub sticky: bool,
    /// Bound on one write; past it the outcome is `info`.
    pub op_timeout: Duration,
    /// Bound on one read at one node.
    pub read_timeout: Duration,
    /// Mean pause between operations (uniform in 0..2x).
    pub think: Duration,
    /// RNG seed for this worker's choices.
    pub seed: u64,
}

/// Where a process sends a shard's reads.
#[derive(Debug, Clone)]
struct Route {
    addr: String,
    epoch: u64,
    node: NodeId,
    node_version: u64,
    /// Consecutive reads it did not answer.
    failures: u32,
}

/// The route the shard cache gives now, if it knows one.
async fn lookup(data: &DataClient, shard: ShardId) -> Option<Route> {
    let s = data.cache().lookup_or_fetch(shard).await.ok()??;
    let node = *s.replicas.first()?;
    let n = data.cache().node_or_fetch(node).await.ok()??;
    Some(Route {
        addr: n.addrs.first()?.clone(),
        epoch: s.epoch,
        node,
        node_version: n.version,
        failures: 0,
    })
}

/// Whether a failed data write certainly had no effect. The client reports a write that may
/// have been applied as `Indeterminate`; a storage node's internal error and an answer that
/// does not fit are not trusted to mean "not applied".
pub fn data_write_error_is_certain(e: &ClientError) -> bool {
    match e {
        ClientError::Indeterminate(_) | ClientError::Unexpected { .. } => false,
        ClientError::Data(DataError::Internal(_) | DataError::Indeterminate(_)) => false,
        ClientError::Data(_)
        | ClientError::Unavailable(_)
        | ClientError::NotFound(_)
        | ClientError::Api(_)
        | ClientError::Config(_)
        | ClientError::Transport(_)
        | ClientError::NoDataPlane => true,
    }
}

/// One request to one storage node, answered within `timeout` or abandoned.
///
/// Unlike [`Transport::call_as`], a timeout does not make the transport drop a connection on
/// which nothing was heard: the process keeps talking to the node it believes in over the
/// connection it has, like a client with an out-of-date view. So requests sent while the node
/// is paused are in its socket when it wakes up, and the node answers them at once, before
/// anything else it has to catch up with: exactly when a deposed primary must not serve.
async fn direct_read(
    raw: &Transport,
    addr: &str,
    req: &DataRequest,
    timeout: Duration,
) -> Result<DataResponse, TransportError> {
    let exchange = async {
        let (mut send, mut recv) = raw.open_as(addr, req).await?;
        let _ = send.finish();
        recv.next_as::<DataResponse>()
            .await?
            .ok_or_else(|| TransportError::Lost {
                addr: addr.to_string(),
                detail: "stream closed without a response".into(),
            })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout {
            addr: addr.to_string(),
            timeout,
        }),
    }
}

/// What a direct read's answer means, and what it says about the route.
enum ReadAnswer {
    /// The node served the read.
    Served(Outcome),
    /// The node refused; the route is out of date (drop it, and the cache entry if `stale`).
    Refused { why: String, stale: bool },
    /// The node is behind the route's epoch: keep the route.
    Behind(String),
    /// No answer.
    Lost(String),
}

fn judge_read(answer: Result<DataResponse, TransportError>) -> ReadAnswer {
    match answer {
        Ok(DataResponse::Value(None)) => ReadAnswer::Served(Outcome::Ok {
            value: Payload::One(Value::Nil),
            version: 0,
        }),
        Ok(DataResponse::Value(Some(v))) => ReadAnswer::Served(Outcome::Ok {
            value: Payload::One(value_of(&v.value)),
            version: v.version,
        }),
        Ok(DataResponse::Error(e @ DataError::Behind { .. })) => ReadAnswer::Behind(e.to_string()),
        Ok(DataResponse::Error(e)) => {
            let stale = matches!(
                e,
                DataError::Redirect(_)
                    | DataError::StaleEpoch { .. }
                    | DataError::UnknownShard(_)
                    | DataError::Unavailable(_)
            );
            ReadAnswer::Refused {
                why: e.to_string(),
                stale,
            }
        }
        Ok(other) => ReadAnswer::Refused {
            why: format!("unexpected answer {other:?}"),
            stale: false,
        },
        Err(e) => ReadAnswer::Lost(e.to_string()),
    }
}

/// Runs one worker until `shared.stop` is set.
pub async fn worker(
    cfg: DataWorkerConfig,
    data: DataClient,
    raw: Transport,
    shared: Arc<Shared>,
) -> Result<WorkerRecord, HarnessError> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut process = cfg.index as u64;
    let mut summary = WorkerRecord {
        worker: cfg.index,
        home_node: if cfg.sticky {
            "primaries (sticky routes)".into()
        } else {
            "primaries".into()
        },
        processes: vec![process],
        ..Default::default()
    };
    // The last version this process saw of each key: what its next cas expects.
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut routes: HashMap<ShardId, Route> = HashMap::new();
    // A hard bound past the client's own deadline (plus one attempt), so it gets to classify.
    let hard = cfg.op_timeout + Duration::from_millis(1500);
    while !shared.stop.load(Ordering::Relaxed) {
        let id = shared.keys.take(&mut rng);
        let key = data_key(id);
        let shard = data.shard_of(key.as_bytes());
        let roll: f64 = rng.gen();
        let started = Instant::now();
        let mut rec = Recording {
            shared: &shared,
            summary: &mut summary,
            process: &mut process,
        };
        let failed = if roll < 0.5 {
            let route = match routes.get(&shard) {
                Some(r) => Some(r.clone()),
                None => lookup(&data, shard).await,
            };
            let Some(route) = route else {
                // No primary known (the metadata is unreachable or the shard has none): no
                // read is invoked.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            rec.invoke(Fun::Read, &key, Payload::NIL, None)?;
            let req = DataRequest::Get {
                shard,
                epoch: route.epoch,
                key: key.clone().into_bytes(),
            };
            let answer = direct_read(&raw, &route.addr, &req, cfg.read_timeout).await;
            let outcome = match judge_read(answer) {
                ReadAnswer::Served(o) => {
                    if let Outcome::Ok { version, .. } = &o {
                        seen.insert(id, *version);
                        rec.summary.reads_ok += 1;
                    }
                    routes.insert(
                        shard,
                        Route {
                            failures: 0,
                            ..route
                        },
                    );
                    o
                }
                ReadAnswer::Behind(why) => {
                    tracing::debug!(worker = cfg.index, %key, %why, "read refused: node behind");
                    routes.insert(shard, route);
                    Outcome::Fail
                }
                ReadAnswer::Refused { why, stale } => {
                    tracing::debug!(worker = cfg.index, %key, %why, "read refused");
                    routes.remove(&shard);
                    if stale {
                        data.cache().invalidate(shard, route.epoch);
                    }
                    Outcome::Fail
                }
                ReadAnswer::Lost(why) => {
                    tracing::debug!(worker = cfg.index, %key, %why, "read unanswered");
                    let failures = route.failures + 1;
                    if cfg.sticky && failures < STICKY_FAILURES {
                        routes.insert(shard, Route { failures, ..route });
                    } else {
                        routes.remove(&shard);
                        data.cache().invalidate(shard, route.epoch);
                        data.cache().invalidate_node(route.node, route.node_version);
                    }
                    // A read has no effect: an unanswered one is recorded as unknown only to
                    // keep the history honest about what the client saw.
                    Outcome::Info
                }
            };
            let failed = !matches!(outcome, Outcome::Ok { .. });
            rec.complete(Fun::Read, &key, Payload::NIL, &outcome)?;
            failed
        } else {
            let value = shared.next_value.fetch_add(1, Ordering::Relaxed);
            let payload = Payload::One(Value::Int(value));
            let cas = roll >= 0.75;
            let expected = seen.get(&id).copied().unwrap_or(0);
            let f = if cas { Fun::Cas } else { Fun::Write };
            rec.invoke(f, &key, payload.clone(), cas.then_some(expected))?;
            let bytes = value.to_string().into_bytes();
            let result = if cas {
                let expect = (expected > 0).then_some(expected);
                tokio::time::timeout(hard, data.cas(key.clone(), expect, Some(bytes))).await
            } else {
                tokio::time::timeout(hard, data.put(key.clone(), bytes))
                    .await
                    .map(|r| r.map(|version| WriteOutcome::Applied { version }))
            };
            let outcome = match result {
                Err(_) => Outcome::Info,
                Ok(Ok(WriteOutcome::Applied { version })) => {
                    seen.insert(id, version);
                    rec.summary.writes_ok += 1;
                    Outcome::Ok {
                        value: payload.clone(),
                        version,
                    }
                }
                Ok(Ok(WriteOutcome::Conflict { current })) => {
                    seen.insert(id, current.unwrap_or(0));
                    Outcome::Fail
                }
                Ok(Err(e)) if data_write_error_is_certain(&e) => {
                    tracing::debug!(worker = cfg.index, %key, error = %e, "write certainly not applied");
                    Outcome::Fail
                }
                Ok(Err(e)) => {
                    tracing::debug!(worker = cfg.index, %key, error = %e, "write outcome unknown");
                    Outcome::Info
                }
            };
            let failed = !matches!(outcome, Outcome::Ok { .. });
            rec.complete(f, &key, payload, &outcome)?;
            failed
        };
        if failed && started.elapsed() < Duration::from_millis(50) {
            // Refused at once (no primary serving yet): do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !cfg.think.is_zero() {
            let ms = cfg.think.as_millis() as u64;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=2 * ms))).await;
        }
    }
    Ok(summary)
}

/// What the final read of a key returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalValue {
    /// The key.
    pub key: String,
    /// The value and version read, or `None` when no read succeeded before the deadline.
    pub read: Option<(Value, u64)>,
}

/// After heal: reads every key through the client's routing (at its primary), recording each
/// attempt in the history, retrying until one succeeds or `deadline` passes.
pub async fn final_reads(
    data: &DataClient,
    shared: &Shared,
    keys: &[u64],
    op_timeout: Duration,
    deadline: Instant,
) -> Result<Vec<FinalValue>, HarnessError> {
    let mut out = Vec::with_capacity(keys.len());
    let mut process = shared.next_process.fetch_add(1, Ordering::Relaxed);
    for &id in keys {
        let key = data_key(id);
        let mut read = None;
        loop {
            let mut summary = WorkerRecord::default();
            let mut rec = Recording {
                shared,
                summary: &mut summary,
                process: &mut process,
            };
            rec.invoke(Fun::Read, &key, Payload::NIL, None)?;
            let outcome = match tokio::time::timeout(op_timeout, data.get(key.as_bytes())).await {
                Ok(Ok(None)) => Outcome::Ok {
                    value: Payload::One(Value::Nil),
                    version: 0,
                },
                Ok(Ok(Some(v))) => Outcome::Ok {
                    value: Payload::One(value_of(&v.value)),
                    version: v.version,
                },
                Ok(Err(e)) => {
                    tracing::debug!(%key, error = %e, "final read failed");
                    Outcome::Fail
                }
                Err(_) => Outcome::Info,
            };
            rec.complete(Fun::Read, &key, Payload::NIL, &outcome)?;
            if let Outcome::Ok {
                value: Payload::One(v),
                version,
            } = outcome
            {
                read = Some((v, version));
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(%key, "final read gave up");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out.push(FinalValue { key, read });
    }
    Ok(out)
}

/// Acknowledged writes the final reads do not reflect: for each key, the highest version an
/// `ok` write or cas produced must be at most the version its final read returned (versions
/// only grow, so a smaller one means the write was lost). Keys without a final read are not
/// judged here (they are reported as missing reads).
pub fn lost_writes(events: &[Event], finals: &[FinalValue]) -> Vec<String> {
    let mut acked: HashMap<&str, (u64, &Payload)> = HashMap::new();
    for e in events {
        if e.kind == EventKind::Ok && e.f != Fun::Read {
            if let Some(v) = e.version {
                let entry = acked.entry(e.key.as_str()).or_insert((v, &e.value));
                if v > entry.0 {
                    *entry = (v, &e.value);
                }
            }
        }
    }
    let mut lost = Vec::new();
    for f in finals {
        let (Some((value, version)), Some((max, wrote))) = (&f.read, acked.get(f.key.as_str()))
        else {
            continue;
        };
        if version < max {
            lost.push(format!(
                "{}: wrote {wrote} at v{max} (acknowledged), final read {value}@v{version}",
                f.key
            ));
        }
    }
    lost.sort();
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, f: Fun, key: &str, value: i64, version: Option<u64>) -> Event {
        Event {
            kind,
            process: 0,
            time: 0,
            f,
            key: key.into(),
            value: Payload::One(Value::Int(value)),
            version,
        }
    }

    #[test]
    fn lost_writes_compare_the_last_acknowledged_version_with_the_final_read() {
        let events = vec![
            ev(EventKind::Ok, Fun::Write, "a", 1, Some(5)),
            ev(EventKind::Ok, Fun::Cas, "a", 2, Some(9)),
            ev(EventKind::Info, Fun::Write, "a", 3, None),
            ev(EventKind::Ok, Fun::Read, "a", 2, Some(9)),
            ev(EventKind::Ok, Fun::Write, "b", 4, Some(3)),
        ];
        let finals = vec![
            FinalValue {
                key: "a".into(),
                read: Some((Value::Int(1), 5)),
            },
            FinalValue {
                key: "b".into(),
                read: Some((Value::Int(7), 12)),
            },
            FinalValue {
                key: "c".into(),
                read: None,
            },
        ];
        let lost = lost_writes(&events, &finals);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].starts_with("a: wrote 2 at v9"), "{lost:?}");
    }

    #[test]
    fn write_errors_are_classified_conservatively() {
        assert!(!data_write_error_is_certain(&ClientError::Indeterminate(
            "x".into()
        )));
        assert!(!data_write_error_is_certain(&ClientError::Data(
            DataError::Internal("disk".into())
        )));
        assert!(data_write_error_is_certain(&ClientError::Unavailable(
            "x".into()
        )));
        assert!(data_write_error_is_certain(&ClientError::Data(
            DataError::InvalidArgument("x".into())
        )));
    }

    #[test]
    fn read_answers_say_what_to_do_with_the_route() {
        let served = judge_read(Ok(DataResponse::Value(None)));
        assert!(matches!(
            served,
            ReadAnswer::Served(Outcome::Ok { version: 0, .. })
        ));
        let redirect = judge_read(Ok(DataResponse::Error(DataError::StaleEpoch {
            shard: ShardId(1),
            epoch: 4,
        })));
        assert!(matches!(redirect, ReadAnswer::Refused { stale: true, .. }));
        let behind = judge_read(Ok(DataResponse::Error(DataError::Behind {
            shard: ShardId(1),
            epoch: 2,
        })));
        assert!(matches!(behind, ReadAnswer::Behind(_)));
        assert_eq!(data_key(7), "jepsen-d00007");
    }
}
