//! Prometheus metrics of a storage node.
//!
//! Per-shard figures (commit lag, applied sequence) are read from the replicas at scrape
//! time; counters and histograms are updated as things happen.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Labels of a per-shard gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    /// The shard id.
    pub shard: u64,
    /// The replica's role.
    pub role: &'static str,
}

/// The node's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<KindLabel, Histogram>,
    heartbeats: Family<KindLabel, Counter>,
    copies: Family<KindLabel, Gauge>,
    copied_bytes: Counter,
    copy_crc_failures: Counter,
    /// The copy budget in force: `copy.bytes_per_sec`, or `copy.busy_bytes_per_sec` while
    /// clients are being served.
    pub copy_rate_limit: Gauge,
    /// Bytes stored (data and logs).
    pub stored_bytes: Gauge,
    /// Committed minus applied, per shard.
    pub commit_lag: Family<ShardLabel, Gauge>,
    /// Prepared minus committed, per shard (entries waiting for replicas).
    pub replication_lag: Family<ShardLabel, Gauge>,
    /// 1 while the node's lease holds.
    pub lease_valid: Gauge,
    /// RocksDB's estimate of the bytes compactions still have to rewrite.
    pub compaction_pending_bytes: Gauge,
    /// Compactions and flushes running now.
    pub compactions_running: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers everything.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("augur_storage");
        let requests = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
            ])
        });
        let m = Metrics {
            registry: Registry::default(),
            requests: requests.clone(),
            heartbeats: Family::default(),
            copies: Family::default(),
            copied_bytes: Counter::default(),
            copy_crc_failures: Counter::default(),
            copy_rate_limit: Gauge::default(),
            stored_bytes: Gauge::default(),
            commit_lag: Family::default(),
            replication_lag: Family::default(),
            lease_valid: Gauge::default(),
            compaction_pending_bytes: Gauge::default(),
            compactions_running: Gauge::default(),
        };
        registry.register(
            "request_seconds",
            "Time to serve one request (replication latency included for writes), by kind",
            requests,
        );
        registry.register(
            "heartbeats",
            "Heartbeats sent, by outcome",
            m.heartbeats.clone(),
        );
        registry.register(
            "copies_in_flight",
            "Shard copies running, by direction",
            m.copies.clone(),
        );
        registry.register(
            "copied_bytes",
            "Bytes of shard copies sent and received",
            m.copied_bytes.clone(),
        );
        registry.register(
            "copy_crc_failures",
            "Copy chunks that failed their CRC-64 check",
            m.copy_crc_failures.clone(),
        );
        registry.register(
            "copy_rate_limit_bytes_per_second",
            "The copy budget in force (lower while client requests are being served)",
            m.copy_rate_limit.clone(),
        );
        registry.register(
            "stored_bytes",
            "Bytes of shard data and logs",
            m.stored_bytes.clone(),
        );
        registry.register(
            "commit_lag",
            "Entries committed but not yet applied, per shard",
            m.commit_lag.clone(),
        );
        registry.register(
            "replication_lag",
            "Entries prepared here but not yet committed, per shard",
            m.replication_lag.clone(),
        );
        registry.register(
            "lease_valid",
            "1 while the node's lease holds",
            m.lease_valid.clone(),
        );
        registry.register(
            "compaction_pending_bytes",
            "RocksDB's estimate of the bytes compactions still have to rewrite (write debt)",
            m.compaction_pending_bytes.clone(),
        );
        registry.register(
            "compactions_running",
            "RocksDB compactions and flushes running now",
            m.compactions_running.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records one served request.
    pub fn request(&self, kind: &'static str, took: Duration) {
        self.requests
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    /// Counts an acknowledged heartbeat.
    pub fn heartbeat_ok(&self) {
        self.heartbeats
            .get_or_create(&KindLabel { kind: "ok" })
            .inc();
    }

    /// Counts a heartbeat that was not acknowledged.
    pub fn heartbeat_failed(&self) {
        self.heartbeats
            .get_or_create(&KindLabel { kind: "failed" })
            .inc();
    }

    /// Adjusts the incoming-copy gauge.
    pub fn copies_in(&self, delta: i64) {
        self.copies
            .get_or_create(&KindLabel { kind: "in" })
            .inc_by(delta);
    }

    /// Adjusts the outgoing-copy gauge.
    pub fn copies_out(&self, delta: i64) {
        self.copies
            .get_or_create(&KindLabel { kind: "out" })
            .inc_by(delta);
    }

    /// Counts copied bytes.
    pub fn copied_bytes(&self, n: u64) {
        self.copied_bytes.inc_by(n);
    }

    /// Counts chunks that failed their check.
    pub fn copy_crc_failures(&self, n: u64) {
        self.copy_crc_failures.inc_by(n);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
