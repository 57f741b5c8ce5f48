//! What a data-plane run is asked to do ([`DataRunConfig`]), checked before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use super::schedule::SUPPORTED;
use crate::harness::HarnessError;
use crate::nemesis::schedule::NemesisKind;

/// Everything a data-plane run needs.
#[derive(Debug, Clone)]
pub struct DataRunConfig {
    /// Metadata members (1..=7; metadata faults need 3 or more).
    pub meta: u64,
    /// Storage nodes.
    pub storage: u64,
    /// Shards of the data plane.
    pub shards: u32,
    /// Replicas per shard.
    pub rf: u32,
    /// Length of the workload and fault period.
    pub time: Duration,
    /// Fault families (partition, kill, pause, disk-loss on storage nodes and members;
    /// migrate: drains of storage nodes).
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
    /// Client processes.
    pub clients: usize,
    /// Bound on one write.
    pub op_timeout: Duration,
    /// Bound on one read at one node.
    pub read_timeout: Duration,
    /// Mean pause between one process's operations.
    pub think: Duration,
    /// Shortest quiet or fault period.
    pub min_period: Duration,
    /// Longest quiet or fault period.
    pub max_period: Duration,
    /// How long the cluster may take to serve again, and to get back to its replication
    /// factor, after the final heal.
    pub recovery_timeout: Duration,
    /// The checker's time budget.
    pub check_budget: Duration,
    /// Storage lease written into the members' `[control]` tables (heartbeat, grace period
    /// and suspicion derived from it); 0 keeps the members' defaults (6 s lease, 8 s grace).
    pub lease_ms: u64,
    /// `augur local up --down-delay-ms`: how long a Down node's replicas wait before they
    /// are re-created elsewhere.
    pub down_delay_ms: u64,
}

impl DataRunConfig {
    /// Checks the settings before anything is created.
    pub fn validate(&self) -> Result<(), HarnessError> {
        let bad = |m: String| Err(HarnessError::Config(m));
        if !(1..=7).contains(&self.meta) {
            return bad(format!("--meta must be 1 to 7, got {}", self.meta));
        }
        if !(1..=32).contains(&self.storage) {
            return bad(format!("--storage must be 1 to 32, got {}", self.storage));
        }
        if !(1..=4096).contains(&self.shards) {
            return bad(format!("--shards must be 1 to 4096, got {}", self.shards));
        }
        if !(1..=5).contains(&self.rf) || u64::from(self.rf) > self.storage {
            return bad(format!(
                "--rf must be 1 to 5 and at most --storage ({}), got {}",
                self.storage, self.rf
            ));
        }
        if self.nemeses.contains(&NemesisKind::DiskLoss) && self.storage <= u64::from(self.rf) {
            return bad(format!(
                "disk-loss needs more storage nodes than --rf ({}): a wiped node registers \
                 again only once its replicas were re-created elsewhere",
                self.rf
            ));
        }
        if self.nemeses.contains(&NemesisKind::Migrate) && self.storage <= u64::from(self.rf) {
            return bad(format!(
                "migrate needs more storage nodes than --rf ({}): the moves off a drained node \
                 need somewhere to go",
                self.rf
            ));
        }
        if let Some(k) = self.nemeses.iter().find(|k| !SUPPORTED.contains(k)) {
            return bad(format!(
                "--workload data injects partition, kill, pause, disk-loss and migrate, not {}",
                k.name()
            ));
        }
        if self.time < Duration::from_secs(1) {
            return bad("--time must be at least 1s".into());
        }
        if self.keys == 0 || self.keys > 10_000 {
            return bad(format!("--keys must be 1 to 10000, got {}", self.keys));
        }
        if self.ops_per_key == 0 || self.ops_per_key > 10_000 {
            return bad(format!(
                "--ops-per-key must be 1 to 10000, got {} (200 is the tested default)",
                self.ops_per_key
            ));
        }
        if self.clients == 0 || self.clients > 256 {
            return bad(format!("clients must be 1 to 256, got {}", self.clients));
        }
        if self.op_timeout < Duration::from_millis(100)
            || self.read_timeout < Duration::from_millis(100)
        {
            return bad("--op-timeout must be at least 100ms".into());
        }
        if self.min_period.is_zero() || self.min_period > self.max_period {
            return bad("need 0 < --min-period <= --max-period".into());
        }
        if self.lease_ms != 0 && !(500..=60_000).contains(&self.lease_ms) {
            return bad(format!(
                "--lease-ms must be 0 (the members' defaults) or 500 to 60000, got {}",
                self.lease_ms
            ));
        }
        if self.down_delay_ms > 3_600_000 {
            return bad(format!(
                "--down-delay-ms must be at most 3600000, got {}",
                self.down_delay_ms
            ));
        }
        if !self.augur_bin.is_file() {
            return bad(format!(
                "augur binary {} does not exist (set --augur-bin or AUGUR_BIN)",
                self.augur_bin.display()
            ));
        }
        if self.out.join("history.jsonl").exists() || self.out.join("cluster").exists() {
            return bad(format!(
                "{} already holds a run; choose a new --out",
                self.out.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::schedule::parse_kinds;

    fn good() -> DataRunConfig {
        DataRunConfig {
            meta: 3,
            storage: 5,
            shards: 16,
            rf: 3,
            time: Duration::from_secs(60),
            nemeses: parse_kinds("partition,kill,pause,disk-loss").unwrap(),
            seed: 1,
            out: PathBuf::from("/nonexistent/run"),
            augur_bin: std::env::current_exe().unwrap(),
            keys: 8,
            ops_per_key: 200,
            clients: 10,
            op_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(1),
            think: Duration::from_millis(10),
            min_period: Duration::from_secs(3),
            max_period: Duration::from_secs(8),
            recovery_timeout: Duration::from_secs(90),
            check_budget: Duration::from_secs(120),
            lease_ms: 2000,
            down_delay_ms: 2000,
        }
    }

    type Change = fn(&mut DataRunConfig);

    #[test]
    fn bad_settings_get_config_errors() {
        good().validate().unwrap();
        let cases: Vec<(&str, Change)> = vec![
            ("meta", |c| c.meta = 0),
            ("storage", |c| c.storage = 33),
            ("rf", |c| c.rf = 6),
            ("rf", |c| c.storage = 2),
            ("disk-loss", |c| c.storage = 3),
            ("migrate", |c| {
                c.storage = 3;
                c.nemeses = parse_kinds("kill,migrate").unwrap()
            }),
            ("clock", |c| c.nemeses = parse_kinds("clock").unwrap()),
            ("member", |c| c.nemeses = parse_kinds("member").unwrap()),
            ("shards", |c| c.shards = 0),
            ("lease", |c| c.lease_ms = 10),
            ("period", |c| c.min_period = Duration::ZERO),
            ("keys", |c| c.keys = 0),
            ("binary", |c| {
                c.augur_bin = PathBuf::from("/nonexistent/augur")
            }),
        ];
        for (what, change) in cases {
            let mut c = good();
            change(&mut c);
            assert!(
                matches!(c.validate(), Err(HarnessError::Config(_))),
                "{what}: {:?}",
                c.validate()
            );
        }
    }
}
