//! `augur bench failover --predict on|off`: one storage node shows a precursor, then dies;
//! the run reports what clients paid for it.
//!
//! Both settings run the same scenario on identical clusters: a client workload (puts and
//! gets on random keys) runs throughout; after a healthy baseline, a fault is injected into
//! the node leading the most shards (`fail-slow` by default, through its admin endpoint, as
//! `augurctl node inject` does); `--death-after` later that node is SIGKILLed; the run ends
//! once every shard is back at RF on live nodes. With prediction on, the risk policy should
//! have drained the node before it died, so its death costs nothing; with it off, the
//! cluster learns of the failure only when the node goes silent, and pays the lease, the
//! grace period and re-replication.
//!
//! The four figures the issue names:
//! - `failed_requests`: workload and probe requests that returned an error;
//! - `indeterminate_requests`: those of them whose outcome is unknown;
//! - `unavailable_s`: wall-clock seconds during which at least one shard the node held at the
//!   injection answered no probe: every such shard has a probe writing and reading a key of
//!   its own every 100 ms, and a stretch longer than 1 s between two answered probes counts
//!   whole (shorter ones are ordinary latency);
//! - `below_rf_s`: seconds during which some shard had fewer than RF replicas on nodes that
//!   were alive, sampled from the shard map every 250 ms (the killed node counts as dead
//!   from the kill).
//!
//! Beside them, `slowest_request_ms` and `slow_requests` (calls that took over 1 s,
//! answered or not): the clients' default deadline (20 s) outlasts a reactive failover, so
//! its cost shows as calls that waited for the new primary rather than as failures.

use super::data::{data_clients, key, kind_of, preload};
use super::{most_leading, report, BenchCluster, ClusterPlan, Victim};
use crate::local::{self, Proc};
use anyhow::{bail, Context};
use augur_client::{admin_http, DataClient};
use augur_proto::data::shard_of;
use augur_proto::{NodeId, NodeState, ShardId};
use clap::Args;
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `augur bench failover`.
#[derive(Args, Debug)]
pub struct FailoverBenchArgs {
    /// Prediction-driven draining: `on` or `off` (the cluster's `[control] predict`; with
    /// `--cluster`, the given cluster's own setting applies and this only labels the run).
    #[arg(long, value_parser = crate::local::cli::parse_on_off, action = clap::ArgAction::Set)]
    pub predict: bool,
    /// Cluster directory made by `augur local up --storage N` (default: start one).
    #[arg(long)]
    pub cluster: Option<std::path::PathBuf>,
    /// The fault injected into the victim (see `augurctl node inject`).
    #[arg(long, default_value = "fail-slow")]
    pub fault: String,
    /// From the injection to the victim's death.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub death_after: Duration,
    /// Kill the victim as soon as it holds no replica (or at `--death-after`, whichever comes
    /// first): the test of "emptied before it died" on a machine too loaded to promise a drain
    /// time. The default keeps the death at a fixed time for both settings.
    #[arg(long)]
    pub die_when_drained: bool,
    /// Healthy workload before the injection.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub baseline: Duration,
    /// Give up if RF is not restored within this long after the death.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Workload clients (each a closed loop of puts and gets on random keys).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Keys preloaded and used by the workload.
    #[arg(long, default_value_t = 20_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Own cluster: storage nodes.
    #[arg(long, default_value_t = 5)]
    pub storage: u64,
    /// Own cluster: shards.
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Own cluster: replication factor.
    #[arg(long, default_value_t = 3)]
    pub rf: u32,
    /// Own cluster: `[control] down_delay_ms` (how long a Down node's replicas wait before
    /// they are re-created; the production default is 5 minutes).
    #[arg(long, default_value_t = 5_000)]
    pub down_delay_ms: u64,
    /// Own cluster: a further `[control]` setting, `KEY=VALUE` in TOML; repeatable.
    #[arg(long = "control", value_name = "KEY=VALUE")]
    pub control: Vec<String>,
    /// Own cluster: keep its directory afterwards (it is stopped either way).
    #[arg(long)]
    pub keep_cluster: bool,
}

/// One run's figures.
#[derive(Debug, Serialize)]
pub struct FailoverReport {
    /// Whether prediction-driven draining was on.
    pub predict: bool,
    /// The node that showed the precursor and died.
    pub victim: u64,
    /// The fault injected.
    pub fault: String,
    /// Shards it held at the injection.
    pub shards_held: usize,
    /// Shards it led at the injection.
    pub shards_led: usize,
    /// Requests answered (workload and probes).
    pub ok_requests: u64,
    /// Requests that returned an error.
    pub failed_requests: u64,
    /// Of those, requests whose outcome is unknown.
    pub indeterminate_requests: u64,
    /// Seconds during which some shard the victim held answered no probe (see the module
    /// documentation).
    pub unavailable_s: f64,
    /// Seconds during which some shard had fewer than RF replicas on live nodes.
    pub below_rf_s: f64,
    /// The longest any workload or probe call took, answered or not, ms.
    pub slowest_request_ms: f64,
    /// Workload and probe calls that took longer than 1 s, answered or not.
    pub slow_requests: u64,
    /// From the injection to the victim's record leaving Up (Suspect or Draining), s.
    pub flagged_after_s: Option<f64>,
    /// From the injection to the victim holding no replica, s (before its death, if ever).
    pub drained_after_s: Option<f64>,
    /// Replicas still on the victim when it died.
    pub replicas_at_death: usize,
    /// From the death to every shard at RF on live nodes, s.
    pub restored_after_s: f64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
}

/// Runs `augur bench failover`.
pub async fn run_failover(a: FailoverBenchArgs) -> anyhow::Result<()> {
    if a.clients == 0 || a.keys == 0 {
        bail!("--clients and --keys must be positive");
    }
    if a.value_size == 0 || a.value_size > augur_proto::data::MAX_VALUE {
        bail!("--value-size must be 1..={}", augur_proto::data::MAX_VALUE);
    }
    if a.cluster.is_none() && u64::from(a.rf) >= a.storage {
        bail!("--storage must exceed --rf, or the victim's replicas have nowhere to go");
    }
    let plan = ClusterPlan {
        meta: 3,
        storage: a.storage,
        shards: a.shards,
        rf: a.rf,
        down_delay_ms: Some(a.down_delay_ms),
        copy_bytes_per_sec: None,
        predict: Some(a.predict),
        control: a.control.clone(),
    };
    let cluster = BenchCluster::open(a.cluster.as_deref(), plan, a.keep_cluster).await?;
    let result = measure(&a, &cluster.dir).await;
    cluster.close().await;
    report(result, a.json, print_report)
}

fn print_report(r: &FailoverReport) {
    let secs = |v: Option<f64>| v.map_or_else(|| "never".to_string(), |s| format!("{s:.1} s"));
    println!(
        "prediction {}: node {} ({} shards, {} led), {} injected",
        if r.predict { "on" } else { "off" },
        r.victim,
        r.shards_held,
        r.shards_led,
        r.fault
    );
    println!(
        "flagged after {}, drained after {}; {} replicas on it when it died",
        secs(r.flagged_after_s),
        secs(r.drained_after_s),
        r.replicas_at_death
    );
    println!(
        "requests: {} answered, {} failed ({} indeterminate); {} took over 1 s, the slowest {:.0} ms",
        r.ok_requests,
        r.failed_requests,
        r.indeterminate_requests,
        r.slow_requests,
        r.slowest_request_ms
    );
    println!(
        "unavailable {:.1} s on its shards; below RF {:.1} s; RF whole {:.1} s after the death",
        r.unavailable_s, r.below_rf_s, r.restored_after_s
    );
    for (k, n) in &r.errors {
        println!("  error {k}: {n}");
    }
}

/// What the workload and the probes saw.
#[derive(Default)]
struct Seen {
    ok: u64,
    errors: BTreeMap<String, u64>,
    indeterminate: u64,
    /// The longest call, and the calls longer than [`GAP`].
    slowest: Duration,
    slow: u64,
    /// Per probed shard: when its last probe was answered.
    last_answer: BTreeMap<ShardId, Instant>,
    /// Stretches longer than [`GAP`] without an answer, on any probed shard.
    gaps: Vec<(Instant, Instant)>,
}

/// A stretch without an answered probe longer than this counts as unavailability.
const GAP: Duration = Duration::from_secs(1);

impl Seen {
    fn record(&mut self, r: Result<(), augur_client::Error>, took: Duration) {
        self.slowest = self.slowest.max(took);
        if took > GAP {
            self.slow += 1;
        }
        match r {
            Ok(()) => self.ok += 1,
            Err(e) => {
                if matches!(e, augur_client::Error::Indeterminate(_)) {
                    self.indeterminate += 1;
                }
                *self.errors.entry(kind_of(&e)).or_default() += 1;
            }
        }
    }

    fn answered(&mut self, shard: ShardId, at: Instant) {
        if let Some(prev) = self.last_answer.insert(shard, at) {
            if at.duration_since(prev) > GAP {
                self.gaps.push((prev, at));
            }
        }
    }

    /// Seconds covered by the union of the gaps (closing each shard's open one at `end`).
    fn unavailable_s(&self, end: Instant) -> f64 {
        let mut spans = self.gaps.clone();
        for &last in self.last_answer.values() {
            if end.duration_since(last) > GAP {
                spans.push((last, end));
            }
        }
        spans.sort();
        let mut total = Duration::ZERO;
        let mut cur: Option<(Instant, Instant)> = None;
        for (s, e) in spans {
            match cur {
                Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    total += ce - cs;
                    cur = Some((s, e));
                }
                None => cur = Some((s, e)),
            }
        }
        if let Some((cs, ce)) = cur {
            total += ce - cs;
        }
        total.as_secs_f64()
    }
}

/// Closed-loop clients: a put or a get (even odds) of a random preloaded key.
fn spawn_workload(
    clients: &[DataClient],
    n: usize,
    keys: u64,
    value_size: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let c = clients[w % clients.len()].clone();
            let (stop, seen) = (stop.clone(), seen.clone());
            tokio::spawn(async move {
                let value = vec![w as u8; value_size];
                while !stop.load(Ordering::Relaxed) {
                    let (i, put) = {
                        let mut rng = rand::thread_rng();
                        (rng.gen_range(1..=keys), rng.gen_bool(0.5))
                    };
                    let started = Instant::now();
                    let r = if put {
                        c.put(key(i), value.clone()).await.map(|_| ())
                    } else {
                        c.get(&key(i)).await.map(|_| ())
                    };
                    if let Ok(mut s) = seen.lock() {
                        s.record(r, started.elapsed());
                    }
                }
            })
        })
        .collect()
}

/// A key of `shard`'s own for its probe.
fn probe_key(shard: ShardId, shards: u32) -> Vec<u8> {
    (0u64..)
        .map(|i| format!("failover-probe-{}-{i}", shard.0).into_bytes())
        .find(|k| shard_of(k, shards) == shard)
        .unwrap_or_default()
}

/// Per shard, a put then a get of its probe key every 100 ms.
fn spawn_probes(
    client: &DataClient,
    probed: &[ShardId],
    shards: u32,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    probed
        .iter()
        .map(|&shard| {
            let c = client.clone();
            let (stop, seen) = (stop.clone(), seen.clone());
            let k = probe_key(shard, shards);
            tokio::spawn(async move {
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let started = Instant::now();
                    let r = match c.put(k.clone(), n.to_le_bytes().to_vec()).await {
                        Ok(_) => c.get(&k).await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    if let Ok(mut s) = seen.lock() {
                        if r.is_ok() {
                            s.answered(shard, Instant::now());
                        }
                        s.record(r, started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect()
}

/// Samples the shard map every 250 ms and adds up the time some shard had fewer than `rf`
/// replicas on live nodes; `dead` is set once the victim is killed.
pub(crate) fn spawn_rf_sampler(
    dir: &Path,
    rf: usize,
    victim: NodeId,
    dead: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    below_ms: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = local::client(dir)?;
    Ok(tokio::spawn(async move {
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = Instant::now();
            let dt = now.duration_since(last);
            last = now;
            let Ok(shards) = client.list_shards().await else {
                continue;
            };
            let victim_dead = dead.load(Ordering::Relaxed);
            let below = shards.values().any(|s| {
                let live = s
                    .replicas
                    .iter()
                    .filter(|n| !(victim_dead && **n == victim))
                    .count();
                live < rf
            });
            if below {
                below_ms.fetch_add(dt.as_millis() as u64, Ordering::Relaxed);
            }
        }
    }))
}

/// Injects `fault` into node `id` through its admin endpoint.
async fn inject(client: &augur_client::Client, id: NodeId, fault: &str) -> anyhow::Result<()> {
    let node = client
        .list_nodes()
        .await?
        .into_iter()
        .find(|n| n.id == id)
        .with_context(|| format!("node {id} is not registered"))?;
    let addr = node
        .admin
        .parse()
        .with_context(|| format!("node {id}'s admin address {:?}", node.admin))?;
    let body = serde_json::json!({ "fault": fault, "ramp_ms": 0 });
    let r = admin_http::post_json(addr, "/v1/health/inject", &body, Duration::from_secs(5))
        .await
        .with_context(|| format!("injecting {fault} into node {id}"))?;
    if r.status != 200 {
        bail!("node {id} refused the injection: {}", r.body);
    }
    Ok(())
}

async fn measure(a: &FailoverBenchArgs, dir: &Path) -> anyhow::Result<FailoverReport> {
    let client = local::client(dir)?;
    let layout = client
        .data_layout()
        .await?
        .context("the cluster has no data plane")?;
    let rf = layout.rf as usize;
    let Victim {
        id: victim,
        held,
        led,
    } = most_leading(&client.list_shards().await?)?;
    let shards_led = led.len();

    let clients = data_clients(dir, 4).await?;
    eprintln!("preloading {} keys of {} bytes", a.keys, a.value_size);
    preload(&clients, 32, a.keys, a.value_size).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let dead = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let below_ms = Arc::new(AtomicU64::new(0));
    let mut tasks = spawn_workload(
        &clients,
        a.clients,
        a.keys,
        a.value_size,
        stop.clone(),
        seen.clone(),
    );
    tasks.extend(spawn_probes(
        &clients[0],
        &held,
        layout.shards,
        stop.clone(),
        seen.clone(),
    ));
    tasks.push(spawn_rf_sampler(
        dir,
        rf,
        victim,
        dead.clone(),
        stop.clone(),
        below_ms.clone(),
    )?);
    let stop_all = |tasks: Vec<tokio::task::JoinHandle<()>>| {
        let stop = stop.clone();
        async move {
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                let _ = t.await;
            }
        }
    };
    tokio::time::sleep(a.baseline).await;

    eprintln!("node {victim}: injecting {}", a.fault);
    if let Err(e) = inject(&client, victim, &a.fault).await {
        stop_all(tasks).await;
        return Err(e);
    }
    let injected = Instant::now();
    let mut flagged = None;
    let mut drained = None;
    let mut last_progress: Option<Instant> = None;
    while injected.elapsed() < a.death_after {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = injected.elapsed().as_secs_f64();
        let node = client
            .list_nodes()
            .await
            .ok()
            .and_then(|ns| ns.into_iter().find(|n| n.id == victim));
        let shards = client.list_shards().await.ok();
        if let (None, Some(n)) = (flagged, &node) {
            if n.state != NodeState::Up {
                flagged = Some(t);
                eprintln!("t+{t:.0}s node {victim} flagged: {:?}", n.state);
            }
        }
        let on = shards.as_ref().map(|s| {
            s.values()
                .filter(|s| s.replicas.contains(&victim) || s.learners.contains(&victim))
                .count()
        });
        if drained.is_none() && on == Some(0) {
            drained = Some(t);
            eprintln!("t+{t:.0}s node {victim} drained: it holds no replica");
            if a.die_when_drained {
                break;
            }
        }
        if last_progress.is_none_or(|p| p.elapsed() >= Duration::from_secs(5)) {
            last_progress = Some(Instant::now());
            let moving = shards
                .as_ref()
                .map_or(0, |s| s.values().filter(|s| !s.learners.is_empty()).count());
            let (state, risk, reason) =
                node.as_ref()
                    .map_or(("?".to_string(), f64::NAN, String::new()), |n| {
                        let reason = n
                            .risk
                            .top_features
                            .first()
                            .map(|(f, c)| format!(" ({f} {c:+.2})"))
                            .unwrap_or_default();
                        (format!("{:?}", n.state), n.risk.score, reason)
                    });
            eprintln!(
                "t+{t:.0}s node {victim}: {state}, risk {risk:.3}{reason}; replicas on it: {}; shards moving: {moving}",
                on.map_or("?".to_string(), |n| n.to_string())
            );
        }
    }
    let replicas_at_death = client
        .list_shards()
        .await
        .map(|s| s.values().filter(|s| s.replicas.contains(&victim)).count())
        .unwrap_or(0);
    eprintln!("node {victim}: killed ({replicas_at_death} replicas on it)");
    local::stop(dir, Proc::Storage(victim.0), true, Duration::ZERO).await?;
    dead.store(true, Ordering::Relaxed);
    let died = Instant::now();

    let restored = loop {
        if died.elapsed() > a.timeout {
            stop_all(tasks).await;
            bail!("RF not restored within {:?} of the death", a.timeout);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(now) = client.list_shards().await else {
            continue;
        };
        let whole = now.values().all(|s| {
            s.replicas.len() >= rf && !s.replicas.contains(&victim) && s.learners.is_empty()
        });
        if whole {
            break died.elapsed().as_secs_f64();
        }
    };
    // A few more seconds of load after the cluster is whole, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = Instant::now();
    stop_all(tasks).await;

    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("workload tally poisoned"))?;
    Ok(FailoverReport {
        predict: a.predict,
        victim: victim.0,
        fault: a.fault.clone(),
        shards_held: held.len(),
        shards_led,
        ok_requests: seen.ok,
        failed_requests: seen.errors.values().sum(),
        indeterminate_requests: seen.indeterminate,
        unavailable_s: seen.unavailable_s(end),
        slowest_request_ms: seen.slowest.as_secs_f64() * 1e3,
        slow_requests: seen.slow,
        below_rf_s: below_ms.load(Ordering::Relaxed) as f64 / 1e3,
        flagged_after_s: flagged,
        drained_after_s: drained,
        replicas_at_death,
        restored_after_s: restored,
        errors: seen.errors.clone(),
    })
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
