//! The storage node's health agent and predictor (DESIGN.md "Prediction pipeline").
//!
//! The predictor crate's [`Agent`] samples the node every `sample_interval_ms` (the Linux
//! collector on the data device, or a simulated node), keeps its bounded history, and a
//! scoring task (`scoring`) scores it every round with the node model and, once SMART
//! readings exist, the disk model, combined by [`augur_predictor::combine_risks`]. The latest
//! risk (or the typed reason there is none) and a summary of the latest sample go with every
//! heartbeat; the recent samples and the risk timeline are kept, bounded, for `augurctl node
//! health`.
//!
//! Nothing here may stop the data plane: a model that does not load, a device that cannot be
//! read, a collector that fails, all leave the node serving with a reported reason.

pub mod config;
mod scoring;

use augur_predictor::agent::linux::{LinuxCollector, LinuxConfig, PeerNetwork};
use augur_predictor::agent::simulated::{FaultInjector, SimulatedSource};
use augur_predictor::agent::{AgentError, CallbackSink, Collector};
use augur_predictor::generate::FaultKind;
use augur_predictor::{Agent, AgentConfig, HealthSample};
use augur_proto::wire::{HealthSummary, NodeHealth, RiskState};
use config::{HealthSettings, HealthSource};
pub use scoring::score;
use scoring::score_loop;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Why an injection was refused. Nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// Not one of the fault names.
    #[error("unknown fault {0:?}: expected one of fail-slow, error-burst, thermal, psu-flap, packet-loss, sudden-death, clear")]
    UnknownFault(String),
    /// The node's health source is not the simulated one.
    #[error("faults can be injected only into the simulated health source (this node's is {0})")]
    NotSimulated(&'static str),
}

/// What an operator may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// One fault kind.
    Fault(FaultKind),
    /// Remove every injected fault.
    Clear,
}

impl std::str::FromStr for Injection {
    type Err = InjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "fail-slow" => Injection::Fault(FaultKind::FailSlowDisk),
            "error-burst" => Injection::Fault(FaultKind::ErrorBurst),
            "thermal" => Injection::Fault(FaultKind::ThermalRunaway),
            "psu-flap" => Injection::Fault(FaultKind::PsuFlapping),
            "packet-loss" => Injection::Fault(FaultKind::PacketLoss),
            "sudden-death" => Injection::Fault(FaultKind::SuddenDeath),
            "clear" => Injection::Clear,
            other => return Err(InjectError::UnknownFault(other.to_string())),
        })
    }
}

fn injection_name(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::FailSlowDisk => "fail-slow",
        FaultKind::ErrorBurst => "error-burst",
        FaultKind::ThermalRunaway => "thermal",
        FaultKind::PsuFlapping => "psu-flap",
        FaultKind::PacketLoss => "packet-loss",
        FaultKind::SuddenDeath => "sudden-death",
        other => other.name(),
    }
}

/// One scoring round.
#[derive(Debug, Clone, Serialize)]
pub struct RiskPoint {
    /// Wall-clock milliseconds of the round.
    pub at_ms: i64,
    /// Its outcome.
    pub risk: RiskState,
}

/// Whether each model is loaded, for the health endpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelStatus {
    /// The node model: `loaded: PATH` or why not.
    pub node: String,
    /// The disk model.
    pub disk: String,
}

#[derive(Default)]
struct Store {
    recent: VecDeque<HealthSample>,
    timeline: VecDeque<RiskPoint>,
    risk: RiskState,
    samples: u64,
    collect_errors: u64,
    faults: Vec<String>,
    models: ModelStatus,
}

/// The node's health: shared by the agent, the scorer, heartbeats and the admin endpoint.
pub struct Health {
    settings: HealthSettings,
    source: &'static str,
    store: Mutex<Store>,
    injector: Option<FaultInjector>,
    outbox: Mutex<Option<Outbox>>,
}

/// Batches on their way to the metadata leader.
pub type Outbox = tokio::sync::mpsc::Receiver<Vec<HealthSample>>;

/// Batches waiting for the leader; more are dropped (the local store keeps them).
const OUTBOX_BATCHES: usize = 4;

fn lock(m: &Mutex<Store>) -> MutexGuard<'_, Store> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Records every sample (and failure) of the wrapped collector in the node's store.
struct Recording {
    inner: Box<dyn Collector>,
    health: Arc<Health>,
}

impl Collector for Recording {
    fn collect(&mut self, now_ms: i64) -> Result<Option<HealthSample>, AgentError> {
        let r = self.inner.collect(now_ms);
        let mut s = lock(&self.health.store);
        match &r {
            Ok(Some(sample)) => {
                s.samples += 1;
                if s.recent.len() >= self.health.settings.recent_samples {
                    s.recent.pop_front();
                }
                s.recent.push_back(sample.clone());
            }
            Ok(None) => {}
            Err(_) => s.collect_errors += 1,
        }
        r
    }
}

impl Health {
    /// Starts the agent and the scorer for node `node` (whose data lives in `data_dir`).
    /// Never fails: whatever cannot start is reported in the node's health instead.
    pub fn start(
        settings: HealthSettings,
        node: u64,
        data_dir: &Path,
    ) -> (Arc<Health>, Vec<tokio::task::JoinHandle<()>>) {
        let name = node.to_string();
        let seed = if settings.simulated_seed == 0 {
            node
        } else {
            settings.simulated_seed
        };
        let interval = settings.sample_interval_ms as i64;
        let (collector, injector, source): (Option<Box<dyn Collector>>, _, _) = match settings
            .source
        {
            HealthSource::Off => (None, None, "off"),
            HealthSource::Simulated => {
                let sim = SimulatedSource::healthy(&name, seed, interval);
                let inj = sim.injector();
                (
                    Some(Box::new(sim) as Box<dyn Collector>),
                    Some(inj),
                    "simulated",
                )
            }
            HealthSource::Linux => match linux_collector(&settings, &name, data_dir) {
                Ok(c) => (Some(Box::new(c) as Box<dyn Collector>), None, "linux"),
                Err(e) => {
                    tracing::warn!(error = %e, "health agent cannot start: running without health samples");
                    let health = Arc::new(Health {
                        settings,
                        source: "off",
                        store: Mutex::new(Store {
                            risk: RiskState::NoModel {
                                reason: format!("no health agent: {e}"),
                            },
                            ..Default::default()
                        }),
                        injector: None,
                        outbox: Mutex::new(None),
                    });
                    return (health, vec![]);
                }
            },
        };
        let initial = match settings.source {
            HealthSource::Off => RiskState::NoModel {
                reason: "health agent disabled ([health] source = \"off\")".into(),
            },
            _ => RiskState::Unknown,
        };
        let health = Arc::new(Health {
            settings,
            source,
            store: Mutex::new(Store {
                risk: initial,
                ..Default::default()
            }),
            injector,
            outbox: Mutex::new(None),
        });
        let Some(collector) = collector else {
            return (health, vec![]);
        };
        let s = &health.settings;
        let agent_cfg = AgentConfig {
            sample_interval_ms: s.sample_interval_ms,
            batch_interval_ms: s.batch_interval_ms,
            ..AgentConfig::default()
        };
        let agent = Agent::new(
            agent_cfg,
            Box::new(Recording {
                inner: collector,
                health: health.clone(),
            }),
        );
        let (tx, rx) = tokio::sync::mpsc::channel(OUTBOX_BATCHES);
        let mut agent = agent;
        agent.add_sink(Box::new(CallbackSink::new(
            "metadata",
            move |batch: &[HealthSample]| {
                tx.try_send(batch.to_vec())
                    .map_err(|e| format!("batch dropped: {e}"))
            },
        )));
        *health.outbox.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        let history = agent.history();
        if let HealthSource::Simulated = health.settings.source {
            if health.settings.simulated_backfill_ms > 0 {
                history.backfill(backfill(&name, seed, health.settings.simulated_backfill_ms));
            }
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(async move {
            let stats = agent.run(stop_rx).await;
            drop(stop_tx);
            tracing::info!(?stats, "health agent stopped");
        }));
        tasks.push(tokio::spawn(score_loop(health.clone(), history)));
        tracing::info!(source, node_model = %health.settings.node_model.display(), "health agent started");
        (health, tasks)
    }

    /// The source's name.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The agent's batches for the metadata leader (once; `None` without an agent).
    pub fn take_outbox(&self) -> Option<Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// What goes with a heartbeat.
    pub fn node_health(&self) -> NodeHealth {
        let s = lock(&self.store);
        NodeHealth {
            source: self.source.to_string(),
            risk: s.risk.clone(),
            summary: summary(&s),
        }
    }

    /// The latest `n` samples, oldest first.
    pub fn recent(&self, n: usize) -> Vec<HealthSample> {
        let s = lock(&self.store);
        let skip = s.recent.len().saturating_sub(n);
        s.recent.iter().skip(skip).cloned().collect()
    }

    /// The latest `n` scoring rounds, oldest first.
    pub fn timeline(&self, n: usize) -> Vec<RiskPoint> {
        let s = lock(&self.store);
        let skip = s.timeline.len().saturating_sub(n);
        s.timeline.iter().skip(skip).cloned().collect()
    }

    /// Which models are loaded.
    pub fn models(&self) -> ModelStatus {
        lock(&self.store).models.clone()
    }

    /// Injects a fault into the simulated source (or clears them). Returns the faults now
    /// active. A sudden death with `sudden_death_exits` ends the process shortly after.
    pub fn inject(
        &self,
        what: Injection,
        ramp_ms: Option<u64>,
    ) -> Result<Vec<String>, InjectError> {
        let Some(inj) = &self.injector else {
            return Err(InjectError::NotSimulated(self.source));
        };
        let mut s = lock(&self.store);
        match what {
            Injection::Clear => {
                inj.clear();
                s.faults.retain(|f| f == "sudden-death");
            }
            Injection::Fault(kind) => {
                let ramp = ramp_ms.unwrap_or(self.settings.inject_ramp_ms);
                inj.inject(kind, now_ms(), ramp.min(i64::MAX as u64) as i64);
                let name = injection_name(kind).to_string();
                if !s.faults.contains(&name) {
                    s.faults.push(name);
                }
                tracing::warn!(
                    fault = injection_name(kind),
                    ramp_ms = ramp,
                    "fault injected into the simulated health source"
                );
                if kind == FaultKind::SuddenDeath && self.settings.sudden_death_exits {
                    std::thread::spawn(|| {
                        std::thread::sleep(Duration::from_millis(200));
                        tracing::error!("injected sudden death: exiting");
                        std::process::exit(137);
                    });
                }
            }
        }
        Ok(s.faults.clone())
    }
}

/// Sends the agent's batches to the metadata leader (every `batch_interval_ms`). A batch the
/// leader does not take (unreachable, an older version) is dropped: the node keeps its own
/// samples, and the leader's copy is advisory.
pub async fn ship(meta: augur_client::Client, node: augur_proto::NodeId, mut outbox: Outbox) {
    while let Some(batch) = outbox.recv().await {
        let samples: Vec<String> = batch
            .iter()
            .filter_map(|s| serde_json::to_string(s).ok())
            .filter(|s| s.len() <= augur_proto::wire::MAX_HEALTH_SAMPLE_BYTES)
            .collect();
        for chunk in samples.chunks(augur_proto::wire::MAX_HEALTH_BATCH) {
            if let Err(e) = meta.health_samples(node, chunk.to_vec()).await {
                tracing::debug!(error = %e, "health samples not taken by the leader; dropped");
            }
        }
    }
}

fn summary(s: &Store) -> HealthSummary {
    let last = s.recent.back();
    HealthSummary {
        at_ms: last.map(|x| x.ts_ms),
        samples: s.samples,
        collect_errors: s.collect_errors,
        cpu_util: last.and_then(|x| x.cpu_util),
        disk_read_lat_ms: last.and_then(|x| x.disk_read_lat_ms),
        disk_write_lat_ms: last.and_then(|x| x.disk_write_lat_ms),
        disk_util: last.and_then(|x| x.disk_util),
        net_loss_pct: last.and_then(|x| x.net_loss_pct),
        err_log_count: last.and_then(|x| x.err_log_count),
        temp_c: last.and_then(|x| x.temp_c),
        psu_ok: last.and_then(|x| x.psu_ok),
        faults: s.faults.clone(),
    }
}

/// The block device holding `dir`, by its name in /proc/diskstats: the `DEVNAME` of
/// `/sys/dev/block/MAJOR:MINOR`.
fn device_of(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_string)
}

/// The first whole disk in /proc/diskstats that is not a loop, RAM or compressed-RAM device.
fn first_disk() -> Option<String> {
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .find(|d| {
            !d.starts_with("loop")
                && !d.starts_with("ram")
                && !d.starts_with("zram")
                && Path::new("/sys/block").join(d).exists()
        })
        .map(str::to_string)
}

fn linux_collector(
    settings: &HealthSettings,
    node: &str,
    data_dir: &Path,
) -> Result<LinuxCollector, AgentError> {
    let device = if settings.data_device.is_empty() {
        match device_of(data_dir) {
            Some(d) => d,
            None => {
                let d = first_disk().unwrap_or_default();
                tracing::warn!(data_dir = %data_dir.display(), device = %d, "cannot tell which block device holds the data directory (overlay or network filesystem?); sampling the first disk; set [health] data_device");
                d
            }
        }
    } else {
        settings.data_device.clone()
    };
    let mut cfg = LinuxConfig::new(node, &device);
    if !settings.smart {
        cfg.smart_devices.clear();
    }
    LinuxCollector::new(cfg, PeerNetwork::default())
}

/// Healthy history of the simulated node (same profile), one sample a minute up to now.
fn backfill(node: &str, seed: u64, span_ms: u64) -> Vec<HealthSample> {
    let step = 60_000i64;
    let mut sim = SimulatedSource::healthy(node, seed, step);
    let end = now_ms();
    let start = end - span_ms as i64;
    let mut out = Vec::new();
    let mut t = start;
    while t < end {
        if let Ok(Some(s)) = sim.collect(t) {
            out.push(s);
        }
        t += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_proto::model::limits::bounded;
    use augur_proto::wire::RiskReport;

    #[test]
    fn fault_names_parse_and_unknown_ones_are_typed_errors() {
        for (name, want) in [
            ("fail-slow", Injection::Fault(FaultKind::FailSlowDisk)),
            ("error-burst", Injection::Fault(FaultKind::ErrorBurst)),
            ("thermal", Injection::Fault(FaultKind::ThermalRunaway)),
            ("psu-flap", Injection::Fault(FaultKind::PsuFlapping)),
            ("packet-loss", Injection::Fault(FaultKind::PacketLoss)),
            ("sudden-death", Injection::Fault(FaultKind::SuddenDeath)),
            ("clear", Injection::Clear),
        ] {
            assert_eq!(name.parse::<Injection>().unwrap(), want);
            if let Injection::Fault(k) = want {
                assert_eq!(injection_name(k), name);
            }
        }
        assert_eq!(
            "melt".parse::<Injection>(),
            Err(InjectError::UnknownFault("melt".into()))
        );
    }

    #[test]
    fn health_json_reads_back_and_tolerates_missing_fields() {
        let h = NodeHealth {
            source: "simulated".into(),
            risk: RiskState::Scored(RiskReport {
                score: 0.25,
                model: "node".into(),
                at_ms: 9,
                reasons: vec![("node:disk_write_lat_z".into(), 0.8)],
            }),
            summary: HealthSummary::default(),
        };
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["risk"]["scored"]["score"], 0.25);
        assert_eq!(serde_json::from_value::<NodeHealth>(json).unwrap(), h);
        let old: NodeHealth = serde_json::from_str(r#"{"source":"linux"}"#).unwrap();
        assert_eq!(old.risk, RiskState::Unknown);
        let none = NodeHealth {
            risk: RiskState::NoModel { reason: "x".into() },
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&none).unwrap()["risk"]["no_model"]["reason"],
            "x"
        );
    }

    #[test]
    fn scoring_without_models_is_the_typed_no_model_state() {
        let node_err = "node.model: model schema version 2 is not supported".to_string();
        let disk_err = "disk.model: missing".to_string();
        let samples = vec![HealthSample {
            node: "1".into(),
            ts_ms: 1,
            cpu_util: Some(0.1),
            ..Default::default()
        }];
        match score(Err(&node_err), Err(&disk_err), &samples) {
            RiskState::NoModel { reason } => {
                assert!(reason.contains("schema version 2"), "{reason}");
                assert!(reason.contains("disk.model: missing"), "{reason}");
            }
            other => panic!("expected no_model, got {other:?}"),
        }
        assert!(bounded("é".repeat(2000)).len() <= augur_proto::model::limits::MAX_STRING);
    }

    #[tokio::test]
    async fn injection_into_a_non_simulated_source_changes_nothing() {
        let settings = HealthSettings {
            source: HealthSource::Off,
            ..Default::default()
        };
        let (h, tasks) = Health::start(settings, 1, Path::new("/nonexistent"));
        assert!(tasks.is_empty());
        assert_eq!(
            h.inject(Injection::Fault(FaultKind::FailSlowDisk), None),
            Err(InjectError::NotSimulated("off"))
        );
        let nh = h.node_health();
        assert!(nh.summary.faults.is_empty());
        assert!(matches!(nh.risk, RiskState::NoModel { .. }));
        nh.validate().unwrap();
    }

    #[tokio::test]
    async fn a_simulated_node_without_a_loadable_model_reports_no_model() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bogus.model");
        std::fs::write(&bogus, b"{\"schema_version\": 1}").unwrap();
        let settings = HealthSettings {
            source: HealthSource::Simulated,
            sample_interval_ms: 20,
            batch_interval_ms: 100,
            score_interval_ms: 50,
            node_model: bogus,
            disk_model: dir.path().join("missing.model"),
            ..Default::default()
        };
        let (h, tasks) = Health::start(settings, 3, dir.path());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let nh = h.node_health();
            if let RiskState::NoModel { reason } = &nh.risk {
                assert!(reason.contains("schema"), "{reason}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no `no_model` state: {:?}",
                nh.risk
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A bad injection changes nothing; a good one shows in the summary.
        assert!("melt".parse::<Injection>().is_err());
        assert!(h.node_health().summary.faults.is_empty());
        let faults = h
            .inject(Injection::Fault(FaultKind::FailSlowDisk), Some(0))
            .unwrap();
        assert_eq!(faults, vec!["fail-slow".to_string()]);
        assert!(h.inject(Injection::Clear, None).unwrap().is_empty());
        assert!(!h.timeline(10).is_empty());
        for t in tasks {
            t.abort();
        }
    }
}
