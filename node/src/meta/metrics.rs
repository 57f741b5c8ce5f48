//! Prometheus metrics for a metadata node.
//!
//! Raft gauges are read from openraft's metrics at scrape time rather than pushed on every
//! change, so scraping costs nothing when nobody scrapes.

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

/// The node's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    rpc_seconds: Family<KindLabel, Histogram>,
    rpc_errors: Family<KindLabel, Counter>,
    watchers: Gauge,
    /// Current term.
    pub term: Gauge,
    /// 1 if this node leads.
    pub is_leader: Gauge,
    /// Id of the known leader, 0 if none.
    pub leader_id: Gauge,
    /// Committed log index.
    pub commit_index: Gauge,
    /// Applied log index.
    pub applied_index: Gauge,
    /// Last log index.
    pub last_log_index: Gauge,
    /// Highest log index purged after a snapshot: a follower behind it needs the snapshot.
    pub purged_index: Gauge,
    /// Bytes used by RocksDB.
    pub rocksdb_bytes: Gauge,
    /// The data plane's control plane (see `control::status`).
    pub control: crate::control::metrics::ControlMetrics,
}

fn rpc_histogram() -> Histogram {
    Histogram::new([
        0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

impl Metrics {
    /// Registers everything; `apply` comes from the state machine.
    pub fn new(apply: Histogram) -> Metrics {
        let mut registry = Registry::with_prefix("augur");
        let rpc_seconds = Family::<KindLabel, Histogram>::new_with_constructor(
            rpc_histogram as fn() -> Histogram,
        );
        let m = Metrics {
            rpc_seconds: rpc_seconds.clone(),
            rpc_errors: Family::default(),
            watchers: Gauge::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            leader_id: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            purged_index: Gauge::default(),
            rocksdb_bytes: Gauge::default(),
            control: Default::default(),
            registry: Registry::default(),
        };
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register(
            "raft_is_leader",
            "1 if this node is the leader",
            m.is_leader.clone(),
        );
        registry.register(
            "raft_leader_id",
            "Member id of the known leader (0: none)",
            m.leader_id.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Highest committed log index",
            m.commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest applied log index",
            m.applied_index.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last log index",
            m.last_log_index.clone(),
        );
        registry.register(
            "raft_purged_index",
            "Highest log index purged after a snapshot (0: none)",
            m.purged_index.clone(),
        );
        registry.register(
            "rocksdb_size_bytes",
            "Bytes used by RocksDB (SST + memtables)",
            m.rocksdb_bytes.clone(),
        );
        registry.register(
            "apply_seconds",
            "Time to apply and fsync one batch of entries",
            apply,
        );
        registry.register(
            "rpc_seconds",
            "Time to serve one request, by kind",
            rpc_seconds,
        );
        registry.register(
            "rpc_errors",
            "Requests answered with an error, by error kind",
            m.rpc_errors.clone(),
        );
        registry.register("watchers", "Open watch streams", m.watchers.clone());
        m.control.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Records one served request.
    pub fn observe_rpc(&self, kind: &'static str, took: Duration) {
        self.rpc_seconds
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    /// Counts one error answer.
    pub fn rpc_errors(&self, kind: &'static str) {
        self.rpc_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// Adjusts the open-watch gauge.
    pub fn watchers(&self, delta: i64) {
        self.watchers.inc_by(delta);
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
