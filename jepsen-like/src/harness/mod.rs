//! `augur-jepsen run`: a Jepsen-style test of real `augur meta` processes.
//!
//! A run:
//! 1. creates a network namespace and moves this process into it (before any thread exists,
//!    so every thread, child process and `nft` call lives there); the namespace is removed
//!    when the run ends, and by the signal handler if it is interrupted;
//! 2. makes certificates with `augur cert`, writes a config per node and starts N `augur meta`
//!    processes, node i on 127.0.0.(10+i), under libfaketime when the clock nemesis is on;
//! 3. founds the cluster once (`Client::bootstrap` through n1, operator certificate), then runs
//!    the workload ([`workload`]) while a thread walks the seeded fault schedule ([`control`]);
//!    members whose data a fault wiped are watched until the operator path adds them back
//!    ([`wiped`]);
//! 4. heals everything (the last fault is still in effect then), waits for the cluster to
//!    serve again (measuring how long), reads every
//!    key on every node linearizably, and compares the nodes' applied revisions and state
//!    digests;
//! 5. checks the history and writes `history.jsonl`, `results.json` and `report.html`; the exit
//!    code ([`RunExit`]) is the worst of what it found.
//!
//! Without a namespace (not root, no `ip`) the nodes run on the host's loopback with free
//! ports and partitions are reported as not injected; without libfaketime, clock faults are.

pub mod cluster;
pub mod config;
pub mod control;
mod observe;
pub mod wiped;
pub mod workload;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_client::{Client, ClientConfig};

use crate::checker::{CheckOptions, CheckReport};
use crate::history::{HistoryError, Recorder};
use crate::nemesis::clock::{Faketime, NodeClock};
use crate::nemesis::executor::Nemesis;
use crate::nemesis::netns::NetNs;
use crate::nemesis::partition::Firewall;
use crate::nemesis::process::ManagedProcess;
use crate::nemesis::schedule::{schedule, NemesisKind, ScheduleConfig};
use crate::nemesis::{find_program, install_signal_cleanup, is_root, NemesisError};
use crate::report::{render_html, ReportInput};
use crate::results::{Convergence, RunInfo, RunResults, WorkerRecord};
use cluster::ClusterLayout;
pub use config::{parse_duration, Findings, RunConfig, RunExit};
use observe::{converge, wait_all_healthy, wait_recovered, watch_leader};
use workload::{KeyPool, Shared, WorkerConfig};

/// Why a run could not be carried out (as opposed to finding a bug, which is a result).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Preparing the cluster failed (certificates, configs, first start).
    #[error("setup: {0}")]
    Setup(String),
    /// A node's admin surface answered something unusable.
    #[error("admin: {0}")]
    Admin(String),
    /// A nemesis primitive failed outside a fault (namespace, processes).
    #[error(transparent)]
    Nemesis(#[from] NemesisError),
    /// Writing the history failed.
    #[error("history: {0}")]
    History(#[from] HistoryError),
    /// The admin HTTP request failed.
    #[error(transparent)]
    Http(#[from] augur_client::admin_http::HttpError),
    /// The Augur client could not be created.
    #[error("client: {0}")]
    Client(#[from] augur_client::Error),
    /// Checking the history failed.
    #[error("checker: {0}")]
    Check(#[from] crate::checker::CheckError),
    /// Loading the history back failed.
    #[error(transparent)]
    Load(#[from] crate::LoadError),
    /// Writing results failed.
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
    /// File or process I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// `results.json`.
    pub results: RunResults,
    /// The exit status.
    pub exit: RunExit,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs a whole test. Must be called while the process has one thread (it enters the
/// namespace first): from `main`, before any runtime exists.
pub fn run(cfg: RunConfig) -> Result<RunOutcome, HarnessError> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.out)?;
    let out = cfg.out.canonicalize()?;
    let augur = cfg.augur_bin.canonicalize()?;
    let mut unavailable: BTreeMap<String, String> = BTreeMap::new();

    // 1. The namespace, entered while this is the only thread.
    let ns_name = format!("augur-jepsen-{}", std::process::id());
    let ns = match NetNs::create(&ns_name) {
        Ok(ns) => {
            ns.enter()?;
            Some(ns)
        }
        Err(e) if e.is_unavailable() => {
            tracing::warn!(reason = %e, "no network namespace: nodes run on the host loopback, partitions are not injected");
            unavailable.insert("partition".into(), format!("no network namespace: {e}"));
            None
        }
        Err(e) => return Err(e.into()),
    };
    install_signal_cleanup()?;

    // 2. Certificates, configs, processes.
    let layout = Arc::new(ClusterLayout::plan(&out, cfg.nodes, ns.is_some())?);
    layout.make_certs(&augur)?;
    layout.write_configs(true)?;
    let clocks: Result<Vec<NodeClock>, NemesisError> = if cfg.nemeses.contains(&NemesisKind::Clock)
    {
        Faketime::locate().and_then(|ft| {
            let dir = out.join("clock");
            std::fs::create_dir_all(&dir)?;
            layout
                .nodes
                .iter()
                .map(|n| ft.node_clock(&dir, &n.name))
                .collect()
        })
    } else {
        Err(NemesisError::Unavailable {
            nemesis: "clock",
            reason: "clock nemesis not requested".into(),
        })
    };
    if let (Err(e), true) = (&clocks, cfg.nemeses.contains(&NemesisKind::Clock)) {
        unavailable.insert("clock".into(), e.to_string());
    }
    let mut procs = Vec::with_capacity(cfg.nodes);
    for i in 0..cfg.nodes {
        let env = clocks.as_ref().map(|c| c[i].env()).unwrap_or_default();
        let spec = layout.process_spec(i, &augur, env)?;
        procs.push(ManagedProcess::start(spec, None)?);
    }
    let firewall: Result<Firewall, NemesisError> = match &ns {
        Some(ns) => Firewall::install(ns),
        None => Err(NemesisError::Unavailable {
            nemesis: "partition",
            reason: "no network namespace (needs root and `ip`)".into(),
        }),
    };
    if let (Err(e), true) = (&firewall, cfg.nemeses.contains(&NemesisKind::Partition)) {
        unavailable
            .entry("partition".into())
            .or_insert_with(|| e.to_string());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("augur-jepsen")
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run_cluster(
        &cfg,
        &out,
        Arc::clone(&layout),
        procs,
        firewall,
        clocks,
        ns.as_ref().map(|n| n.name().to_string()),
        unavailable,
    ));
    // The nodes were killed when the nemesis (which owns them) dropped inside run_cluster;
    // the namespace goes last.
    drop(runtime);
    if let Some(ns) = ns {
        if let Err(e) = ns.remove() {
            tracing::warn!(error = %e, "could not remove the namespace");
        }
    }
    outcome
}

fn client_for(
    layout: &ClusterLayout,
    first: usize,
    cfg: &RunConfig,
) -> Result<Client, HarnessError> {
    let mut endpoints = layout.endpoints();
    let n = endpoints.len().max(1);
    endpoints.rotate_left(first % n);
    let mut c = ClientConfig::new(endpoints, layout.client_tls.clone());
    c.request_timeout = cfg.op_timeout;
    c.attempt_timeout = cfg.op_timeout.min(Duration::from_secs(1));
    c.connect_timeout = Duration::from_secs(1);
    Ok(Client::new(c)?)
}

#[allow(clippy::too_many_arguments)]
async fn run_cluster(
    cfg: &RunConfig,
    out: &Path,
    layout: Arc<ClusterLayout>,
    procs: Vec<ManagedProcess>,
    firewall: Result<Firewall, NemesisError>,
    clocks: Result<Vec<NodeClock>, NemesisError>,
    namespace: Option<String>,
    unavailable: BTreeMap<String, String>,
) -> Result<RunOutcome, HarnessError> {
    let admin = client_for(&layout, 0, cfg)?;
    let handle = tokio::runtime::Handle::current();
    let addrs: Vec<Ipv4Addr> = layout.nodes.iter().map(|n| n.addr).collect();
    let control = control::Control::new(handle.clone(), admin.clone(), Arc::clone(&layout));
    // Filled by the watches on wiped members as they see them rejoin, even mid-run.
    let wiped_violations = control.violations();
    let nemesis = Nemesis::new(addrs, procs, firewall, clocks, control, cfg.seed)?;
    // From here the nemesis owns the processes: dropping it kills them.
    let mut nemesis = Some(nemesis);

    tracing::info!(nodes = cfg.nodes, "bootstrapping the cluster");
    let founder = layout.endpoints()[0].clone();
    let formed = async {
        admin
            .bootstrap(&founder, Duration::from_secs(60))
            .await
            .map_err(|e| format!("bootstrap through {founder}: {e}"))?;
        wait_all_healthy(&layout, Instant::now() + Duration::from_secs(60)).await
    };
    if let Err(e) = formed.await {
        for n in &layout.nodes {
            let tail = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = tail.lines().rev().take(5).collect();
            tracing::error!(node = %n.name, log = %lines.into_iter().rev().collect::<Vec<_>>().join(" | "), "node log tail");
        }
        return Err(HarnessError::Setup(format!(
            "cluster did not form within 60s: {e}"
        )));
    }
    // Founded: a (re)started node, wiped or not, is never asked to found a cluster again.
    layout.write_configs(false)?;

    let plan = schedule(&ScheduleConfig {
        seed: cfg.seed,
        nodes: cfg.nodes,
        duration: cfg.time,
        min_period: cfg.min_period,
        max_period: cfg.max_period,
        kinds: cfg.nemeses.clone(),
        max_skew_ms: cfg.max_skew_ms,
    })?;
    tracing::info!(faults = plan.len(), "fault schedule drawn");

    let history = File::create(out.join("history.jsonl"))?;
    let recorder = Arc::new(Recorder::new(BufWriter::new(history)));
    let t0 = recorder.started_at();
    let workers_n = cfg.nodes * cfg.clients_per_node;
    let shared = Arc::new(Shared {
        recorder: Arc::clone(&recorder),
        keys: KeyPool::new(cfg.keys, cfg.ops_per_key),
        next_process: AtomicU64::new(workers_n as u64),
        next_value: AtomicI64::new(1),
        stop: AtomicBool::new(false),
    });

    let monitor_stop = Arc::new(AtomicBool::new(false));
    let leader_changes = Arc::new(Mutex::new(Vec::new()));
    let monitor = {
        let mut c = ClientConfig::new(layout.endpoints(), layout.client_tls.clone());
        c.attempt_timeout = Duration::from_millis(300);
        c.request_timeout = Duration::from_millis(600);
        tokio::spawn(watch_leader(
            Client::new(c)?,
            Arc::clone(&layout),
            t0,
            Arc::clone(&monitor_stop),
            Arc::clone(&leader_changes),
        ))
    };

    let mut workers = Vec::with_capacity(workers_n);
    for w in 0..workers_n {
        let home = w % cfg.nodes;
        let node = layout.node(home)?;
        let wc = WorkerConfig {
            index: w,
            home,
            home_endpoint: node.endpoint(),
            op_timeout: cfg.op_timeout,
            think: cfg.think,
            seed: cfg
                .seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(w as u64),
        };
        let client = client_for(&layout, home, cfg)?;
        workers.push(tokio::spawn(workload::worker(
            wc,
            client,
            Arc::clone(&shared),
            node.name.clone(),
        )));
    }

    let nemesis_stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let nem = nemesis
            .take()
            .ok_or_else(|| HarnessError::Setup("nemesis missing".into()))?;
        let stop = Arc::clone(&nemesis_stop);
        let heal_timeout = cfg.recovery_timeout;
        std::thread::Builder::new()
            .name("augur-nemesis".into())
            .spawn(move || control::drive(nem, plan, t0, stop, heal_timeout))?
    };

    tokio::time::sleep(cfg.time).await;
    tracing::info!("workload period over; stopping clients");
    shared.stop.store(true, Ordering::Relaxed);
    let mut records: Vec<WorkerRecord> = Vec::with_capacity(workers_n);
    let mut worker_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(r)) => records.push(r),
            Ok(Err(e)) => worker_error = Some(e),
            Err(e) => worker_error = Some(HarnessError::Setup(format!("worker task: {e}"))),
        }
    }
    nemesis_stop.store(true, Ordering::Relaxed);
    let report = tokio::task::spawn_blocking(move || driver.join())
        .await
        .map_err(|e| HarnessError::Setup(format!("nemesis thread: {e}")))?
        .map_err(|_| HarnessError::Setup("nemesis thread panicked".into()))?;
    let faults = report.faults;
    let nem = report.nemesis;
    let heal_errors = report.heal_errors;
    if let Some(e) = worker_error {
        return Err(e);
    }

    // The nemesis thread has healed everything; measure how long until the cluster serves.
    let heal_start = report.heal_started;
    let recovery_deadline = heal_start + cfg.recovery_timeout;
    let recovered = wait_recovered(&admin, &layout, recovery_deadline).await;
    let recovery_ms = recovered.is_ok().then(|| ms(heal_start.elapsed()));
    match &recovered {
        Ok(()) => tracing::info!(recovery_ms = ?recovery_ms, "cluster serves again"),
        Err(e) => tracing::error!(error = %e, "cluster did not recover"),
    }

    // Read every key on every node, then compare the replicas.
    let keys = shared.keys.used();
    let nodes: Vec<(String, String)> = layout
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.endpoint()))
        .collect();
    let reads_deadline = Instant::now() + cfg.recovery_timeout;
    let reads = workload::final_reads(
        &admin,
        &shared,
        &nodes,
        &keys,
        cfg.op_timeout,
        reads_deadline,
    )
    .await?;
    let mut convergence = Convergence {
        keys_read: reads.len(),
        ..Default::default()
    };
    for (key, answers) in &reads {
        for (name, _) in &nodes {
            if !answers.iter().any(|a| &a.node == name) {
                convergence.missing_reads.push(format!("{key}@{name}"));
            }
        }
        let distinct: HashSet<(&Option<String>, u64)> =
            answers.iter().map(|a| (&a.value, a.version)).collect();
        if distinct.len() > 1 {
            convergence.disagreements.push(format!(
                "{key}: {}",
                answers
                    .iter()
                    .map(|a| format!(
                        "{}={}@v{}",
                        a.node,
                        a.value.as_deref().unwrap_or("nil"),
                        a.version
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    }
    let (digests_agree, digests, detail) =
        converge(&layout, Instant::now() + Duration::from_secs(30)).await;
    convergence.converged = digests_agree && convergence.disagreements.is_empty();
    convergence.nodes = digests;
    convergence.detail = detail.or_else(|| {
        (!convergence.disagreements.is_empty())
            .then(|| format!("{} keys read differently", convergence.disagreements.len()))
    });
    monitor_stop.store(true, Ordering::Relaxed);
    let _ = monitor.await;
    recorder.flush()?;
    drop(shared);
    drop(nem); // kills the nodes; their data and logs stay in the run directory

    // Check.
    let events = crate::load_history(&out.join("history.jsonl"), crate::InputFormat::Jsonl)?;
    let opts = CheckOptions {
        budget: cfg.check_budget,
        ..CheckOptions::default()
    };
    let check = tokio::task::block_in_place(|| {
        crate::check_history(&events, crate::ModelChoice::Versioned, &opts)
    })?;
    let wiped_member_violations = wiped_violations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let exit = RunExit::judge(&Findings {
        verdict: check.verdict,
        converged: convergence.converged,
        missing_reads: !convergence.missing_reads.is_empty(),
        recovered: recovered.is_ok(),
        wiped_member_rejoined: !wiped_member_violations.is_empty(),
    });
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
        nodes: cfg.nodes,
        nemeses: cfg.nemeses.iter().map(|k| k.name().to_string()).collect(),
        duration_ms: ms(cfg.time),
        augur_bin: cfg.augur_bin.display().to_string(),
        namespace,
        unavailable,
        workers: records,
        recovered: recovery_ms.is_some(),
        heal_errors,
        convergence,
        wiped_member_violations,
        data: None,
        exit_code: exit.code(),
        exit_reason: exit.reason().to_string(),
    });
    write_outputs(out, &events, &check, &results)?;
    Ok(RunOutcome { results, exit })
}

/// Writes `results.json` and `report.html`.
pub(crate) fn write_outputs(
    out: &Path,
    events: &[crate::history::Event],
    check: &CheckReport,
    results: &RunResults,
) -> Result<(), HarnessError> {
    results.write(&out.join("results.json"))?;
    let title = format!("augur-jepsen run {}", out.display());
    let html = render_html(&ReportInput {
        title: &title,
        events,
        faults: &results.faults,
        check: Some(check),
        time_unit_ns: Some(1),
        results: Some(results),
    });
    std::fs::write(out.join("report.html"), html)?;
    Ok(())
}

/// Why the machine cannot run nemesis `kind`, if it cannot (for `--help` and dry checks).
pub fn missing_for(kind: NemesisKind) -> Option<String> {
    match kind {
        NemesisKind::Partition => {
            if !is_root() {
                Some("not running as root".into())
            } else {
                ["ip", "nft"]
                    .iter()
                    .find(|p| find_program(p).is_none())
                    .map(|p| format!("`{p}` not found"))
            }
        }
        NemesisKind::Clock => Faketime::locate().err().map(|e| e.to_string()),
        NemesisKind::Kill
        | NemesisKind::Pause
        | NemesisKind::Member
        | NemesisKind::DiskLoss
        | NemesisKind::Migrate => None,
    }
}
