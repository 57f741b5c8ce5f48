//! `augur-jepsen run --workload data`: a Jepsen-style test of the data plane, on a real
//! `augur local` cluster of metadata members and storage nodes.
//!
//! A run:
//! 1. creates a network namespace and moves this process into it (before any thread exists),
//!    as the metadata run does, so every process it starts and every firewall rule lives
//!    there; without root it runs on the host and partitions are reported as not injected;
//! 2. creates the cluster with `augur local up --meta M` (then, members stopped, a short
//!    lease written into their `[control]` tables) and `augur local up --storage S --shards N
//!    --rf R` ([`cluster`]), which returns once every shard is served;
//! 3. runs the workload ([`workload`]: registers on keys through the data API, reads at the
//!    primaries) while two fault streams ([`schedule`], [`nemesis`]) disturb the storage nodes
//!    and the metadata members, and with `migrate` a third drains storage nodes meanwhile;
//! 4. heals everything (the last fault of each stream is still in effect then), waits until
//!    every shard is served and a write commits (`recovery_ms`), until every migration is
//!    Committed or Aborted and no node Draining, reads every key once more, and waits until
//!    every shard is back at its replication factor with equal checksums on all replicas at
//!    one checkpoint ([`converge`]);
//! 5. checks the history (a versioned register per key), looks for acknowledged writes the
//!    final reads do not show, and writes `history.jsonl`, `results.json` and `report.html`.
//!
//! Exit codes are the metadata run's ([`RunExit`]): 1 not linearizable or an acknowledged
//! write lost, 5 replicas differ, shards stayed under-replicated, a migration never ended or a
//! node stayed Draining, 4 no progress after heal,
//! 2 some key undecided, 3 the run could not be carried out.

pub mod cluster;
pub mod config;
pub mod converge;
pub mod nemesis;
pub mod schedule;
pub mod workload;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_client::{Client, DataClient, DataConfig, Transport};
use augur_proto::ShardId;

use crate::checker::CheckOptions;
use crate::harness::workload::{KeyPool, Shared};
use crate::harness::{Findings, HarnessError, RunExit, RunOutcome};
use crate::history::Recorder;
use crate::nemesis::install_signal_cleanup;
use crate::nemesis::netns::NetNs;
use crate::nemesis::ports::PortFirewall;
use crate::nemesis::schedule::NemesisKind;
use crate::results::{Convergence, DataPlaneInfo, LeaderChange, RunInfo, RunResults, WorkerRecord};
use cluster::{LocalCluster, Shape, Timing};
pub use config::DataRunConfig;
use nemesis::DataNemesis;
use schedule::{DataScheduleConfig, Side};

/// The environment variable of the test hook that makes a test build's storage primaries
/// serve reads without a lease. The harness only reports whether it was set: the nodes
/// inherit it from this process through `augur local`.
pub const SKIP_LEASE_ENV: &str = "AUGUR_UNSAFE_SKIP_LEASE_CHECK";

/// Kills the cluster's processes however the run ends.
struct KillOnDrop(Arc<LocalCluster>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs a whole data-plane test. Must be called while the process has one thread (it enters
/// the namespace first): from `main`, before any runtime exists.
pub fn run(cfg: DataRunConfig) -> Result<RunOutcome, HarnessError> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.out)?;
    let out = cfg.out.canonicalize()?;
    let augur = cfg.augur_bin.canonicalize()?;
    let mut unavailable: BTreeMap<String, String> = BTreeMap::new();

    let ns_name = format!("augur-jepsen-{}", std::process::id());
    let ns = match NetNs::create(&ns_name) {
        Ok(ns) => {
            ns.enter()?;
            Some(ns)
        }
        Err(e) if e.is_unavailable() => {
            tracing::warn!(reason = %e, "no network namespace: the cluster runs on the host loopback, partitions are not injected");
            unavailable.insert("partition".into(), format!("no network namespace: {e}"));
            None
        }
        Err(e) => return Err(e.into()),
    };
    install_signal_cleanup()?;

    let timing = match cfg.lease_ms {
        0 => Timing::defaults(cfg.down_delay_ms),
        lease => Timing::from_lease(lease, cfg.down_delay_ms),
    };
    let cluster = Arc::new(LocalCluster::new(
        out.join("cluster"),
        augur,
        Shape {
            meta: cfg.meta,
            storage: cfg.storage,
            shards: cfg.shards,
            rf: cfg.rf,
        },
    ));
    let guard = KillOnDrop(Arc::clone(&cluster));
    tracing::info!(dir = %cluster.dir.display(), "creating the cluster");
    let created = cluster.create((cfg.lease_ms != 0).then_some(timing), cfg.down_delay_ms);
    let firewall: Result<PortFirewall, String> = match &ns {
        Some(ns) => PortFirewall::install(ns).map_err(|e| e.to_string()),
        None => Err("no network namespace (needs root and `ip`)".into()),
    };
    if let (Err(e), true) = (&firewall, cfg.nemeses.contains(&NemesisKind::Partition)) {
        unavailable
            .entry("partition".into())
            .or_insert_with(|| e.clone());
    }
    let outcome = created.and_then(|()| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("augur-jepsen")
            .enable_all()
            .build()?;
        let outcome = runtime.block_on(run_cluster(
            &cfg,
            &out,
            Arc::clone(&cluster),
            firewall,
            timing,
            ns.as_ref().map(|n| n.name().to_string()),
            unavailable,
        ));
        drop(runtime);
        outcome
    });
    // The processes first (they live in the namespace), then the namespace.
    drop(guard);
    if let Some(ns) = ns {
        if let Err(e) = ns.remove() {
            tracing::warn!(error = %e, "could not remove the namespace");
        }
    }
    outcome
}

/// Polls the metadata leader every 250 ms and records each change, until `stop`.
async fn watch_leader(
    client: Client,
    t0: Instant,
    stop: Arc<AtomicBool>,
    changes: Arc<Mutex<Vec<LeaderChange>>>,
) {
    let mut last: Option<Option<usize>> = None;
    while !stop.load(Ordering::Relaxed) {
        let leader = nemesis::leader(&client)
            .await
            .map(|id| id.saturating_sub(1) as usize);
        if last != Some(leader) {
            changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(LeaderChange {
                    at_ms: ms(t0.elapsed()),
                    leader,
                });
            last = Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every shard serves a read and a write commits.
async fn wait_recovered(data: &DataClient, deadline: Instant) -> Result<(), String> {
    let shards = data.layout().shards;
    let mut pending: Vec<ShardId> = (1..=u64::from(shards)).map(ShardId).collect();
    let mut last = String::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for s in pending {
            if let Err(e) = data.scan_shard(s, b"", None, 1).await {
                last = format!("shard {s}: {e}");
                still.push(s);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("{} shard(s) not served: {last}", pending.len()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        match data.put("jepsen-recovery-probe", b"healed".to_vec()).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!("no write committed after heal: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn data_client(
    cluster: &LocalCluster,
    cfg: &DataRunConfig,
) -> Result<DataClient, HarnessError> {
    let client = Client::new(cluster.client_config(cfg.op_timeout)?)?;
    let dc = DataConfig {
        request_timeout: cfg.op_timeout,
        attempt_timeout: cfg.read_timeout,
        ..DataConfig::default()
    };
    Ok(DataClient::with_config(client, dc).await?)
}

async fn run_cluster(
    cfg: &DataRunConfig,
    out: &Path,
    cluster: Arc<LocalCluster>,
    firewall: Result<PortFirewall, String>,
    timing: Timing,
    namespace: Option<String>,
    unavailable: BTreeMap<String, String>,
) -> Result<RunOutcome, HarnessError> {
    let admin = Client::new(cluster.client_config(cfg.op_timeout)?)?;
    let admin_data = data_client(&cluster, cfg).await?;
    let layout = admin_data.layout();
    let tls = cluster.tls()?;
    let probe_transport = Transport::client(&tls, Duration::from_secs(1))
        .map_err(augur_client::Error::from)?
        .for_servers(augur_client::transport::STORAGE_SERVER_NAME);

    let plan = schedule::schedule(&DataScheduleConfig {
        seed: cfg.seed,
        duration: cfg.time,
        min_period: cfg.min_period,
        max_period: cfg.max_period,
        kinds: cfg.nemeses.clone(),
        min_pause: Duration::from_millis(timing.grace_ms + 2_000),
        meta_faults: cfg.meta >= 3,
    })?;
    tracing::info!(faults = plan.len(), "fault schedule drawn");

    let history = File::create(out.join("history.jsonl"))?;
    let recorder = Arc::new(Recorder::new(BufWriter::new(history)));
    let t0 = recorder.started_at();
    let shared = Arc::new(Shared {
        recorder: Arc::clone(&recorder),
        keys: KeyPool::new(cfg.keys, cfg.ops_per_key),
        next_process: AtomicU64::new(cfg.clients as u64),
        next_value: AtomicI64::new(1),
        stop: AtomicBool::new(false),
    });

    let monitor_stop = Arc::new(AtomicBool::new(false));
    let leader_changes = Arc::new(Mutex::new(Vec::new()));
    let monitor = tokio::spawn(watch_leader(
        Client::new(cluster.client_config(Duration::from_millis(600))?)?,
        t0,
        Arc::clone(&monitor_stop),
        Arc::clone(&leader_changes),
    ));

    let mut workers = Vec::with_capacity(cfg.clients);
    for w in 0..cfg.clients {
        let wc = workload::DataWorkerConfig {
            index: w,
            sticky: w % 2 == 1,
            op_timeout: cfg.op_timeout,
            read_timeout: cfg.read_timeout,
            think: cfg.think,
            seed: cfg
                .seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(w as u64),
        };
        let data = data_client(&cluster, cfg).await?;
        let raw = Transport::client(&tls, Duration::from_secs(1))
            .map_err(augur_client::Error::from)?
            .for_servers(augur_client::transport::STORAGE_SERVER_NAME);
        workers.push(tokio::spawn(workload::worker(
            wc,
            data,
            raw,
            Arc::clone(&shared),
        )));
    }

    let nem = Arc::new(DataNemesis::new(
        Arc::clone(&cluster),
        firewall,
        admin.clone(),
        Arc::clone(&shared),
        layout,
        t0,
    ));
    let stream_stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    // The migrate stream last: the final heal undoes held faults in this order, and a drain
    // left to finish should find killed nodes restarted and partitions lifted.
    for side in [Side::Storage, Side::Meta, Side::Migrate] {
        let mine: Vec<(usize, schedule::Planned)> = plan
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, p)| p.side == side)
            .collect();
        streams.push(tokio::spawn(
            Arc::clone(&nem).run_stream(mine, Arc::clone(&stream_stop)),
        ));
    }

    tokio::time::sleep(cfg.time).await;
    tracing::info!("workload period over; stopping clients and faults");
    shared.stop.store(true, Ordering::Relaxed);
    stream_stop.store(true, Ordering::Relaxed);
    let mut records: Vec<WorkerRecord> = Vec::with_capacity(cfg.clients);
    let mut worker_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(r)) => records.push(r),
            Ok(Err(e)) => worker_error = Some(e),
            Err(e) => worker_error = Some(HarnessError::Setup(format!("worker task: {e}"))),
        }
    }
    let mut faults = Vec::new();
    let mut held = Vec::new();
    for s in streams {
        let outcome = s
            .await
            .map_err(|e| HarnessError::Setup(format!("nemesis task: {e}")))?;
        let base = faults.len();
        faults.extend(outcome.records);
        held.extend(outcome.held.map(|(i, u)| (base + i, u)));
    }
    if let Some(e) = worker_error {
        return Err(e);
    }

    // Heal everything, then measure how long until the cluster serves again.
    let heal_start = Instant::now();
    let heal_errors = nem
        .heal_all(held, &mut faults, heal_start + cfg.recovery_timeout)
        .await;
    faults.sort_by_key(|f| f.start_ms);
    let recovered = wait_recovered(&admin_data, heal_start + cfg.recovery_timeout).await;
    let recovery_ms = recovered.is_ok().then(|| ms(heal_start.elapsed()));
    match &recovered {
        Ok(()) => tracing::info!(recovery_ms = ?recovery_ms, "cluster serves again"),
        Err(e) => tracing::error!(error = %e, "cluster did not recover"),
    }

    // Every move at rest and no node left Draining, then every key read once more, then
    // every shard's replicas compared.
    let moves =
        converge::settle_moves(&admin, heal_start, Instant::now() + cfg.recovery_timeout).await;
    if !moves.settled() {
        tracing::error!(unfinished = ?moves.unfinished, draining = ?moves.draining, error = ?moves.error, "moves did not come to rest after heal");
    }
    let keys = shared.keys.used();
    let finals = workload::final_reads(
        &admin_data,
        &shared,
        &keys,
        cfg.op_timeout,
        Instant::now() + cfg.recovery_timeout,
    )
    .await?;
    let shards = converge::check(
        &admin,
        &probe_transport,
        cfg.rf,
        heal_start,
        Instant::now() + cfg.recovery_timeout,
    )
    .await;
    monitor_stop.store(true, Ordering::Relaxed);
    let _ = monitor.await;
    recorder.flush()?;
    drop(shared);
    let migrate = nem.migrate_faults();
    drop(nem);

    let events = crate::load_history(&out.join("history.jsonl"), crate::InputFormat::Jsonl)?;
    let opts = CheckOptions {
        budget: cfg.check_budget,
        ..CheckOptions::default()
    };
    let check = tokio::task::block_in_place(|| {
        crate::check_history(&events, crate::ModelChoice::Versioned, &opts)
    })?;
    let lost = workload::lost_writes(&events, &finals);
    let missing_reads: Vec<String> = finals
        .iter()
        .filter(|f| f.read.is_none())
        .map(|f| f.key.clone())
        .collect();
    let moves_detail = (!moves.settled()).then(|| {
        let first = moves.unfinished.first().or(moves.draining.first());
        format!(
            "moves not at rest after heal: {} migration(s) unfinished, {} node(s) Draining{}",
            moves.unfinished.len(),
            moves.draining.len(),
            first
                .or(moves.error.as_ref())
                .map_or(String::new(), |f| format!(": {f}"))
        )
    });
    let convergence = Convergence {
        converged: shards.converged && moves.settled(),
        nodes: shards.replicas.clone(),
        keys_read: finals.len() - missing_reads.len(),
        missing_reads,
        disagreements: shards.mismatches.clone(),
        detail: shards.detail.clone().or(moves_detail),
    };
    let mut exit = RunExit::judge(&Findings {
        verdict: check.verdict,
        converged: convergence.converged,
        missing_reads: !convergence.missing_reads.is_empty(),
        recovered: recovered.is_ok(),
        wiped_member_rejoined: false,
    });
    if !lost.is_empty() {
        exit = RunExit::Anomaly;
    }
    let mut results = RunResults::new(&events, &check);
    results.seed = Some(cfg.seed);
    results.faults = faults;
    crate::results::measure_fault_recovery(&events, &mut results.faults);
    results.leader_changes =
        std::mem::take(&mut *leader_changes.lock().unwrap_or_else(|p| p.into_inner()));
    results.recovery_ms = recovery_ms;
    let mut heal_errors = heal_errors;
    if let Err(e) = recovered {
        heal_errors.push(e);
    }
    results.run = Some(RunInfo {
        nodes: cfg.meta as usize,
        nemeses: cfg.nemeses.iter().map(|k| k.name().to_string()).collect(),
        duration_ms: ms(cfg.time),
        augur_bin: cfg.augur_bin.display().to_string(),
        namespace,
        unavailable,
        workers: records,
        recovered: recovery_ms.is_some(),
        heal_errors,
        convergence,
        wiped_member_violations: Vec::new(),
        data: Some(DataPlaneInfo {
            meta: cfg.meta,
            storage: cfg.storage,
            shards: cfg.shards,
            rf: cfg.rf,
            lease_ms: timing.lease_ms,
            grace_ms: timing.grace_ms,
            down_delay_ms: timing.down_delay_ms,
            unsafe_skip_lease_check: std::env::var(SKIP_LEASE_ENV).is_ok_and(|v| v == "1"),
            lost_writes: lost,
            under_replicated: shards.under_replicated,
            mismatches: shards.mismatches,
            replicated_after_ms: shards.replicated_after_ms,
            migrate,
            unfinished_migrations: moves.unfinished,
            draining_nodes: moves.draining,
            moves_settled_after_ms: moves.settled_after_ms,
        }),
        exit_code: exit.code(),
        exit_reason: if exit == RunExit::Anomaly
            && check.verdict != crate::checker::Verdict::NotLinearizable
        {
            "an acknowledged write was lost".into()
        } else if exit == RunExit::Diverged && shards.converged {
            "moves did not come to rest after heal (a migration unfinished or a node Draining)"
                .into()
        } else {
            exit.reason().to_string()
        },
    });
    crate::harness::write_outputs(out, &events, &check, &results)?;
    Ok(RunOutcome { results, exit })
}
