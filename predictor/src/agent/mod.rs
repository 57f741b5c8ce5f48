//! The health agent: a collector sampled on a timer, batches streamed to pluggable sinks, and a
//! bounded local history the embedded predictor scores from.
//!
//! The storage node builds an [`Agent`] with a [`linux::LinuxCollector`] (tests and demos use a
//! [`simulated::SimulatedSource`]), adds a [`JsonLinesSink`] and a [`CallbackSink`] wired to the
//! metadata service, keeps the [`HistoryHandle`], and spawns [`Agent::run`] on tokio.

mod history;
pub mod linux;
pub mod simulated;
pub mod smart;
pub mod sysfs;

pub use history::HistoryHandle;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::sample::HealthSample;

/// Why a collection or a sink failed. The agent logs these and keeps running: a health agent
/// that crashes on a missing sensor is worse than one that reports less.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file under /proc, /sys or /dev could not be read, or a sink file written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// procfs could not parse a kernel table.
    #[error("procfs: {0}")]
    Procfs(String),
    /// The configured data device does not exist.
    #[error("data device `{device}` not found in /proc/diskstats (available: {available})")]
    NoSuchDevice {
        /// The configured device.
        device: String,
        /// Devices that do exist.
        available: String,
    },
    /// The source cannot produce a sample now (e.g. a simulated node that died).
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// A sink refused a batch.
    #[error("sink {sink}: {reason}")]
    Sink {
        /// Sink name.
        sink: String,
        /// Why.
        reason: String,
    },
}

/// Produces one health sample per call.
pub trait Collector: Send {
    /// Samples the node at wall-clock time `now_ms`. Counters are reported as deltas since the
    /// previous call, so a collector that only primes its counters on the first call returns
    /// `Ok(None)` then: a sample of zero deltas would claim an idle, error-free interval
    /// that nobody observed.
    fn collect(&mut self, now_ms: i64) -> Result<Option<HealthSample>, AgentError>;
}

/// Receives batches of samples.
pub trait Sink: Send {
    /// Short name for logs.
    fn name(&self) -> &str;
    /// Delivers one batch (in time order).
    fn send(&mut self, batch: &[HealthSample]) -> Result<(), AgentError>;
}

/// Appends batches to a JSON-lines file (the trace format, so `augur-predict score` reads it).
pub struct JsonLinesSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonLinesSink {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> Result<Self, AgentError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AgentError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(JsonLinesSink {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }
}

impl Sink for JsonLinesSink {
    fn name(&self) -> &str {
        "jsonl"
    }

    fn send(&mut self, batch: &[HealthSample]) -> Result<(), AgentError> {
        let io = |source| AgentError::Io {
            path: self.path.clone(),
            source,
        };
        for s in batch {
            serde_json::to_writer(&mut self.out, s).map_err(|e| io(std::io::Error::other(e)))?;
            self.out.write_all(b"\n").map_err(io)?;
        }
        // One flush per batch: a crash loses at most the batch being written.
        self.out.flush().map_err(io)
    }
}

/// Hands batches to a closure (the node wires this to the metadata service).
pub struct CallbackSink<F> {
    name: String,
    callback: F,
}

impl<F> CallbackSink<F>
where
    F: FnMut(&[HealthSample]) -> Result<(), String> + Send,
{
    /// A sink named `name` calling `callback` with every batch.
    pub fn new(name: &str, callback: F) -> Self {
        CallbackSink {
            name: name.to_string(),
            callback,
        }
    }
}

impl<F> Sink for CallbackSink<F>
where
    F: FnMut(&[HealthSample]) -> Result<(), String> + Send,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, batch: &[HealthSample]) -> Result<(), AgentError> {
        (self.callback)(batch).map_err(|reason| AgentError::Sink {
            sink: self.name.clone(),
            reason,
        })
    }
}

/// Agent timing and memory settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// Time between samples, ms.
    pub sample_interval_ms: u64,
    /// Time between batches sent to sinks, ms.
    pub batch_interval_ms: u64,
    /// Samples kept locally. The default holds the model's 72 h baseline at 5 s sampling.
    pub history_capacity: usize,
    /// SMART-bearing samples kept beyond that (the default: 45 days of hourly readings, for
    /// the disk model's 30-day growth features).
    pub smart_history_capacity: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            sample_interval_ms: 5_000,
            batch_interval_ms: 30_000,
            history_capacity: 72 * 720 + 720,
            smart_history_capacity: 45 * 24,
        }
    }
}

/// Counters of one agent run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Samples collected.
    pub samples: u64,
    /// Collections that failed.
    pub collect_errors: u64,
    /// Batches delivered to all sinks.
    pub batches: u64,
    /// Sink deliveries that failed.
    pub sink_errors: u64,
}

/// The sampler loop.
pub struct Agent {
    config: AgentConfig,
    /// Taken while a sample is collected on a blocking thread.
    collector: Option<Box<dyn Collector>>,
    sinks: Vec<Box<dyn Sink>>,
    history: HistoryHandle,
}

impl Agent {
    /// An agent sampling `collector`.
    pub fn new(config: AgentConfig, collector: Box<dyn Collector>) -> Self {
        let history = HistoryHandle::new(config.history_capacity, config.smart_history_capacity);
        Agent {
            config,
            collector: Some(collector),
            sinks: Vec::new(),
            history,
        }
    }

    /// Adds a sink; every batch goes to every sink.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// The local history, readable while the agent runs.
    pub fn history(&self) -> HistoryHandle {
        self.history.clone()
    }

    /// Samples every `sample_interval_ms` and flushes a batch every `batch_interval_ms` until
    /// `shutdown` turns true (or its sender is dropped); flushes the last partial batch.
    /// Timestamps follow tokio's clock from a wall-clock origin, so tests can pause time.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> AgentStats {
        let origin_wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let origin = Instant::now();
        let mut stats = AgentStats::default();
        let mut batch: Vec<HealthSample> = Vec::new();
        let mut sample_tick =
            tokio::time::interval(Duration::from_millis(self.config.sample_interval_ms.max(1)));
        sample_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let batch_period = Duration::from_millis(self.config.batch_interval_ms.max(1));
        let mut batch_tick = tokio::time::interval_at(Instant::now() + batch_period, batch_period);
        batch_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Biased: at an instant where both ticks are due, sample first so the batch
            // boundary is deterministic.
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                _ = sample_tick.tick() => {
                    let now_ms = origin_wall + origin.elapsed().as_millis() as i64;
                    let Some(mut collector) = self.collector.take() else {
                        break;
                    };
                    // On a blocking thread: reading a drive's temperature from sysfs sends
                    // the drive a command, and a failing drive can hold that read for its
                    // whole command timeout (a minute for NVMe), which would stall every
                    // task sharing this worker.
                    let collected = tokio::task::spawn_blocking(move || {
                        let r = collector.collect(now_ms);
                        (collector, r)
                    })
                    .await;
                    let Ok((collector, collected)) = collected else {
                        tracing::error!("the health collector panicked; the agent stops sampling");
                        break;
                    };
                    self.collector = Some(collector);
                    match collected {
                        Ok(None) => {}
                        Ok(Some(s)) => {
                            stats.samples += 1;
                            self.history.push(s.clone());
                            batch.push(s);
                        }
                        Err(e) => {
                            stats.collect_errors += 1;
                            tracing::warn!(error = %e, "health sample failed");
                        }
                    }
                }
                _ = batch_tick.tick() => {
                    self.flush(&mut batch, &mut stats);
                }
            }
        }
        self.flush(&mut batch, &mut stats);
        stats
    }

    fn flush(&mut self, batch: &mut Vec<HealthSample>, stats: &mut AgentStats) {
        if batch.is_empty() {
            return;
        }
        let mut ok = true;
        for sink in &mut self.sinks {
            if let Err(e) = sink.send(batch) {
                ok = false;
                stats.sink_errors += 1;
                tracing::warn!(sink = sink.name(), error = %e, samples = batch.len(), "batch not delivered");
            }
        }
        if ok {
            stats.batches += 1;
        }
        // A failed batch is not retried: the history keeps the samples and the next batch
        // carries on, so a dead sink cannot grow memory without bound.
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::simulated::SimulatedSource;
    use super::*;
    use crate::generate::FaultKind;
    use std::sync::{Arc, Mutex};

    #[tokio::test(start_paused = true)]
    async fn samples_batches_history_and_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.jsonl");
        let source = SimulatedSource::healthy("s-01", 7, 5_000);
        let injector = source.injector();
        let mut agent = Agent::new(
            AgentConfig {
                sample_interval_ms: 5_000,
                batch_interval_ms: 30_000,
                history_capacity: 10,
                smart_history_capacity: 0,
            },
            Box::new(source),
        );
        agent.add_sink(Box::new(JsonLinesSink::open(&path).unwrap()));
        let received = Arc::new(Mutex::new(Vec::<usize>::new()));
        let r2 = received.clone();
        agent.add_sink(Box::new(CallbackSink::new(
            "meta",
            move |b: &[HealthSample]| {
                r2.lock().unwrap().push(b.len());
                Ok(())
            },
        )));
        agent.add_sink(Box::new(CallbackSink::new(
            "broken",
            |_: &[HealthSample]| Err("metadata service unreachable".to_string()),
        )));
        let history = agent.history();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(agent.run(rx));
        // Paused clock: sleeping advances virtual time only.
        tokio::time::sleep(Duration::from_millis(62_000)).await;
        injector.inject(FaultKind::SuddenDeath, 0, 0);
        tokio::time::sleep(Duration::from_millis(20_000)).await;
        tx.send(true).unwrap();
        let stats = task.await.unwrap();
        assert_eq!(stats.samples, 13, "{stats:?}"); // t = 0, 5, ..., 60 s
        assert!(stats.collect_errors >= 3, "dead node: {stats:?}");
        // Batches at 30 s (samples 0..=30) and 60 s (35..=60); nothing left after death.
        assert_eq!(*received.lock().unwrap(), vec![7, 6]);
        assert_eq!(stats.sink_errors, 2);
        assert_eq!(history.len(), 10, "history is bounded");
        let lines = crate::trace::read_samples(&path).unwrap();
        assert_eq!(lines.len(), 13);
        assert!(lines.windows(2).all(|w| w[1].ts_ms - w[0].ts_ms == 5_000));
    }
}
