//! `augur-jepsen run`: a Jepsen-style test of real `augur meta` processes.
//!
//! A run:
//! 1. creates a network namespace and moves this process into it (before any thread exists,
//!    so every thread, child process and `nft` call lives there); the namespace is removed
//!    when the run ends, and by the signal handler if it is interrupted;
//! 2. makes certificates with `augur cert`, writes a config per node and starts N `augur meta`
//!    processes, node i on 127.0.0.(10+i), under libfaketime when the clock nemesis is on;
//! 3. runs the workload ([`workload`]) while a thread walks the seeded fault schedule
//!    ([`control`]);
//! 4. heals everything (the last fault is still in effect then), waits for the cluster to
//!    serve again (measuring how long), reads every
//!    key on every node linearizably, and compares the nodes' applied revisions and state
//!    digests;
//! 5. checks the history and writes `history.jsonl`, `results.json` and `report.html`.
//!
//! Without a namespace (not root, no `ip`) the nodes run on the host's loopback with free
//! ports and partitions are reported as not injected; without libfaketime, clock faults are.

pub mod cluster;
pub mod control;
pub mod workload;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_client::{Client, ClientConfig};
use augur_proto::{Op, Record, Setting, Txn};

use crate::checker::{CheckOptions, CheckReport, Verdict};
use crate::history::{HistoryError, Recorder};
use crate::nemesis::clock::{Faketime, NodeClock};
use crate::nemesis::netns::NetNs;
use crate::nemesis::partition::Firewall;
use crate::nemesis::process::ManagedProcess;
use crate::nemesis::schedule::{schedule, Nemesis, NemesisKind, ScheduleConfig};
use crate::nemesis::{find_program, install_signal_cleanup, is_root, NemesisError};
use crate::report::{render_html, ReportInput};
use crate::results::{Convergence, LeaderChange, NodeDigest, RunInfo, RunResults, WorkerRecord};
use cluster::ClusterLayout;
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

/// Exit codes of `augur-jepsen run`, worst first when several apply (1 > 5 > 4 > 2 > 0;
/// 3 when the run itself could not be carried out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunExit {
    /// Linearizable, converged, served again after heal.
    Pass = 0,
    /// The history is not linearizable.
    Anomaly = 1,
    /// No anomaly found, but the checker's budget ran out on some key.
    Unknown = 2,
    /// The harness could not carry out the run (bad flags, setup failure).
    Error = 3,
    /// After heal, the cluster did not serve again, or final reads never succeeded.
    NoProgress = 4,
    /// The nodes ended with different revisions, digests or final values.
    Diverged = 5,
}

impl RunExit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, for `results.json`.
    pub fn reason(self) -> &'static str {
        match self {
            RunExit::Pass => "linearizable, converged, recovered after heal",
            RunExit::Anomaly => "not linearizable",
            RunExit::Unknown => "no anomaly found, but some keys could not be decided",
            RunExit::Error => "the run could not be carried out",
            RunExit::NoProgress => "no progress after heal",
            RunExit::Diverged => "nodes did not converge",
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Number of `augur meta` processes (3 or 5 are the interesting ones).
    pub nodes: usize,
    /// Length of the workload and fault period.
    pub time: Duration,
    /// Fault families.
    pub nemeses: Vec<NemesisKind>,
    /// Seed of the fault schedule and the workload's choices.
    pub seed: u64,
    /// Run directory (created; must not hold a previous run).
    pub out: PathBuf,
    /// The `augur` binary under test.
    pub augur_bin: PathBuf,
    /// Keys in use at once.
    pub keys: usize,
    /// Workload operations per key before it retires.
    pub ops_per_key: u32,
    /// Client processes per node.
    pub clients_per_node: usize,
    /// Bound on one operation.
    pub op_timeout: Duration,
    /// Mean pause between one process's operations.
    pub think: Duration,
    /// Shortest quiet or fault period.
    pub min_period: Duration,
    /// Longest quiet or fault period.
    pub max_period: Duration,
    /// How long the cluster may take to serve again after the final heal.
    pub recovery_timeout: Duration,
    /// The checker's time budget.
    pub check_budget: Duration,
    /// Largest clock skew, ms.
    pub max_skew_ms: i64,
}

impl RunConfig {
    /// Checks the settings before anything is created.
    pub fn validate(&self) -> Result<(), HarnessError> {
        let bad = |m: String| Err(HarnessError::Config(m));
        if !(3..=9).contains(&self.nodes) {
            return bad(format!("--nodes must be 3 to 9, got {}", self.nodes));
        }
        if self.time < Duration::from_secs(1) {
            return bad("--time must be at least 1s".into());
        }
        if self.keys == 0 || self.keys > 100_000 {
            return bad(format!("--keys must be 1 to 100000, got {}", self.keys));
        }
        if self.ops_per_key == 0 || self.ops_per_key > 10_000 {
            return bad(format!(
                "--ops-per-key must be 1 to 10000, got {} (the checker's search grows \
                 exponentially with operations per key; 200 is the tested default)",
                self.ops_per_key
            ));
        }
        if self.clients_per_node == 0 || self.clients_per_node > 64 {
            return bad(format!(
                "--clients-per-node must be 1 to 64, got {}",
                self.clients_per_node
            ));
        }
        if self.op_timeout < Duration::from_millis(100) {
            return bad("--op-timeout must be at least 100ms".into());
        }
        if self.min_period.is_zero() || self.min_period > self.max_period {
            return bad("need 0 < --min-period <= --max-period".into());
        }
        if self.max_skew_ms <= 0 {
            return bad("--max-skew must be positive".into());
        }
        if !self.augur_bin.is_file() {
            return bad(format!(
                "augur binary {} does not exist (set --augur-bin or AUGUR_BIN)",
                self.augur_bin.display()
            ));
        }
        if self.out.join("history.jsonl").exists() {
            return bad(format!(
                "{} already holds a run (history.jsonl); choose a new --out",
                self.out.display()
            ));
        }
        Ok(())
    }
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

/// Waits until every node answers `/health` with 200.
async fn wait_all_healthy(layout: &ClusterLayout, deadline: Instant) -> Result<(), String> {
    loop {
        let checks = layout
            .nodes
            .iter()
            .map(|n| cluster::healthy(n, Duration::from_millis(500)));
        let results = futures::future::join_all(checks).await;
        let sick: Vec<&str> = layout
            .nodes
            .iter()
            .zip(&results)
            .filter(|(_, ok)| !**ok)
            .map(|(n, _)| n.name.as_str())
            .collect();
        if sick.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not healthy: {}", sick.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Polls the leader every 250 ms and records each change, until `stop`.
async fn watch_leader(
    client: Client,
    layout: Arc<ClusterLayout>,
    t0: Instant,
    stop: Arc<AtomicBool>,
    changes: Arc<Mutex<Vec<LeaderChange>>>,
) {
    let mut last: Option<Option<usize>> = None;
    while !stop.load(Ordering::Relaxed) {
        let statuses = cluster::statuses(&client, &layout).await;
        let leader = cluster::leader_of(&layout, &statuses);
        if last != Some(leader) {
            tracing::info!(leader = ?leader.map(|i| i + 1), "leader observed");
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

/// Waits for the cluster to serve after heal: every node healthy and a write committed.
async fn wait_recovered(
    client: &Client,
    layout: &ClusterLayout,
    deadline: Instant,
) -> Result<(), String> {
    wait_all_healthy(layout, deadline).await?;
    let probe = Record::Setting(Setting {
        name: "jepsen-recovery-probe".into(),
        value: b"healed".to_vec(),
        version: 0,
    });
    let mut last = String::new();
    while Instant::now() < deadline {
        let txn = Txn {
            compares: Vec::new(),
            ops: vec![Op::Put(probe.clone())],
        };
        match client.txn(txn).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no write committed after heal: {last}"))
}

/// Polls every node's digest until all agree or `deadline`; returns the last digests seen.
async fn converge(
    layout: &ClusterLayout,
    deadline: Instant,
) -> (bool, Vec<NodeDigest>, Option<String>) {
    loop {
        let asks = layout
            .nodes
            .iter()
            .map(|n| cluster::digest(n, Duration::from_secs(2)));
        let answers = futures::future::join_all(asks).await;
        let mut digests = Vec::new();
        let mut errors = Vec::new();
        for (n, a) in layout.nodes.iter().zip(answers) {
            match a {
                Ok(d) => digests.push(NodeDigest {
                    node: n.name.clone(),
                    revision: d.revision,
                    records: d.records,
                    crc64: d.crc64,
                }),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let distinct: HashSet<(u64, &str)> = digests
            .iter()
            .map(|d| (d.revision, d.crc64.as_str()))
            .collect();
        if errors.is_empty() && distinct.len() == 1 {
            return (true, digests, None);
        }
        if Instant::now() >= deadline {
            let detail = if errors.is_empty() {
                format!("{} different (revision, digest) pairs", distinct.len())
            } else {
                errors.join("; ")
            };
            return (false, digests, Some(detail));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    let nemesis = Nemesis::new(
        addrs,
        procs,
        firewall,
        clocks,
        control::Control::new(handle.clone(), admin.clone(), Arc::clone(&layout)),
        cfg.seed,
    )?;
    // From here the nemesis owns the processes: dropping it kills them.
    let mut nemesis = Some(nemesis);

    tracing::info!(nodes = cfg.nodes, "waiting for the cluster to form");
    if let Err(e) = wait_all_healthy(&layout, Instant::now() + Duration::from_secs(60)).await {
        for n in &layout.nodes {
            let tail = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = tail.lines().rev().take(5).collect();
            tracing::error!(node = %n.name, log = %lines.into_iter().rev().collect::<Vec<_>>().join(" | "), "node log tail");
        }
        return Err(HarnessError::Setup(format!(
            "cluster did not form within 60s: {e}"
        )));
    }
    // Bootstrapped: from now on a (re)started node, wiped or not, must never bootstrap.
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
    let no_progress = recovered.is_err() || !convergence.missing_reads.is_empty();
    let exit = if check.verdict == Verdict::NotLinearizable {
        RunExit::Anomaly
    } else if !convergence.converged && convergence.missing_reads.is_empty() {
        RunExit::Diverged
    } else if no_progress {
        RunExit::NoProgress
    } else if check.verdict == Verdict::Unknown {
        RunExit::Unknown
    } else {
        RunExit::Pass
    };
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
        nemeses: cfg
            .nemeses
            .iter()
            .filter_map(|k| serde_json::to_value(k).ok())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        duration_ms: ms(cfg.time),
        augur_bin: cfg.augur_bin.display().to_string(),
        namespace,
        unavailable,
        workers: records,
        recovered: recovery_ms.is_some(),
        heal_errors,
        convergence,
        exit_code: exit.code(),
        exit_reason: exit.reason().to_string(),
    });
    write_outputs(out, &events, &check, &results)?;
    Ok(RunOutcome { results, exit })
}

/// Writes `results.json` and `report.html`.
fn write_outputs(
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
        NemesisKind::Kill | NemesisKind::Pause | NemesisKind::Member => None,
    }
}

/// Parses `60s`, `2m`, `500ms`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 60s, 2m, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_reject_junk() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "10x", "-1s", "1e999s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_codes_are_distinct() {
        let all = [
            RunExit::Pass,
            RunExit::Anomaly,
            RunExit::Unknown,
            RunExit::Error,
            RunExit::NoProgress,
            RunExit::Diverged,
        ];
        let codes: HashSet<u8> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
    }
}
