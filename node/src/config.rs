//! Configuration of a metadata node: a TOML file, overridden by flags.
//!
//! Every timeout, threshold and limit is a setting with a documented default. A file with an
//! unknown key, a missing required setting or an out-of-range value is refused with an error
//! that names the setting, before anything is opened or bound.
//!
//! ```toml
//! id = 1
//! listen = "127.0.0.1:7101"          # QUIC, for peers and clients
//! admin_listen = "127.0.0.1:7201"    # HTTP: /health /metrics /v1/status
//! data_dir = "data/meta-1"
//! initial_members = ["1=127.0.0.1:7101", "2=127.0.0.1:7102", "3=127.0.0.1:7103"]
//!
//! [tls]
//! ca = "certs/ca.pem"
//! cert = "certs/meta-1.pem"
//! key = "certs/meta-1.key"
//!
//! [raft]                              # defaults shown
//! heartbeat_interval_ms = 50
//! election_timeout_min_ms = 250
//! election_timeout_max_ms = 350
//! snapshot_logs_since_last = 20000
//! max_in_snapshot_log_to_keep = 10000
//! connect_timeout_ms = 1000
//! peer_idle_timeout_ms = 6000
//! append_window = 64                  # append-entries batches sent ahead of their answers
//!
//! [store]
//! history_retention = 100000          # revisions of change history kept for watchers (1..=10^9)
//! block_cache_mb = 64
//!
//! [control]                          # the data plane's control plane, on the leader
//! heartbeat_interval_ms = 1000        # storage nodes heartbeat this often
//! lease_ms = 6000                     # a storage node's lease after an acknowledged heartbeat
//! grace_ms = 8000                     # silence before a node is declared Down (> lease)
//! suspect_after_ms = 2500             # silence before a node is Suspect (>= 2 heartbeats)
//! down_delay_ms = 300000              # Down this long before its replicas are re-created
//! usage_interval_ms = 30000           # a node's usage is written at most this often
//! clock_drift = 0.01                  # bound on relative clock-rate error (rho)
//! predict = true                      # the risk policy drains at-risk nodes (`--predict off`)
//! # ... and the failure handling, re-replication and risk-policy knobs ([control.policy]):
//! # see `control::settings`
//!
//! [limits]
//! max_frame_bytes = 16777216          # every frame, both directions; >= 4 MiB + 64 KiB
//! max_snapshot_bytes = 8589934592     # largest snapshot accepted from a peer (8 GiB)
//! shutdown_transfer_timeout_ms = 3000
//! follower_read_timeout_ms = 1000
//! ```

use augur_transport::TlsFiles;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type...).
    #[error("config file {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        detail: String,
    },
    /// A required setting is missing from both file and flags.
    #[error("missing setting `{0}` (set it in the config file or with its flag)")]
    Missing(&'static str),
    /// A setting has an unusable value.
    #[error("setting `{setting}`: {detail}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        detail: String,
    },
}

fn invalid(setting: &'static str, detail: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        setting,
        detail: detail.to_string(),
    }
}

/// One initial member: `id=host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    /// Member id.
    pub id: u64,
    /// QUIC address.
    pub addr: String,
}

impl std::str::FromStr for InitialMember {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let (id, addr) = s
            .split_once('=')
            .ok_or_else(|| invalid("initial_members", format!("{s:?} is not id=host:port")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| invalid("initial_members", format!("{id:?} is not a member id")))?;
        if id == 0 {
            return Err(invalid("initial_members", "member id 0 is reserved"));
        }
        let addr = addr.trim().to_string();
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(invalid(
                "initial_members",
                format!("{addr:?} is not host:port"),
            ));
        }
        Ok(InitialMember { id, addr })
    }
}

/// Raft timing and log retention.
///
/// The timing defaults are set by failover time. openraft gives a follower a leader lease of
/// `election_timeout_max` from the last heartbeat and refuses votes while it holds; since
/// every election timer fires before that, the first round after a leader dies is always
/// refused and the second wins, about 2 × 250–350 ms after the last heartbeat. Five
/// heartbeats fit in the shortest timeout, which kept loaded 2-core test machines free of
/// spurious elections; raise all three together on slower networks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot (kept high: see openraft #2116).
    pub max_in_snapshot_log_to_keep: u64,
    /// Deadline for dialling a peer.
    pub connect_timeout_ms: u64,
    /// A peer connection with no traffic for this long is considered dead.
    pub peer_idle_timeout_ms: u64,
    /// Append-entries batches the leader sends a follower ahead of their answers (1..=1024).
    /// Each batch carries every entry waiting when it is sent, so a few are ever in use; 1
    /// waits for each answer before sending the next, as openraft does by default.
    pub append_window: usize,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 350,
            snapshot_logs_since_last: 20_000,
            max_in_snapshot_log_to_keep: 10_000,
            connect_timeout_ms: 1_000,
            peer_idle_timeout_ms: 6_000,
            append_window: 64,
        }
    }
}

impl RaftSettings {
    /// The openraft configuration these settings describe.
    pub fn to_openraft(&self) -> Result<openraft::Config, ConfigError> {
        let cfg = openraft::Config {
            cluster_name: "augur".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            enable_pre_vote: Some(true),
            // A restarted leader must win a new election, never resume its old term: after a
            // power cut its log may lack entries it had already sent to followers, and what it
            // wrote at those indexes in the same term would carry the same log ids, so the
            // followers would keep the old entries and diverge (openraft #1511; caught by
            // tests/tests/power_loss.rs).
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        cfg.validate().map_err(|e| invalid("raft", e))
    }
}

/// Store settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Revisions of change history kept for watchers.
    pub history_retention: u64,
    /// RocksDB block cache, MiB.
    pub block_cache_mb: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            history_retention: 100_000,
            block_cache_mb: 64,
        }
    }
}

pub use crate::control::settings::ControlSettings;

/// Limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame accepted or sent, on every stream in both directions (client requests
    /// and answers, Raft messages, list and watch pages, snapshot chunks). At least
    /// [`augur_proto::frame::MIN_FRAME`], so one maximal transaction always fits; every member
    /// of a cluster must use the same value.
    pub max_frame_bytes: usize,
    /// Largest snapshot accepted from a peer, in bytes. A transfer that passes it is cut off
    /// and its file removed, so a peer that never stops sending cannot fill the disk the
    /// member's log lives on. Far above any real metadata state (1,000,000 shard records
    /// make about 100 MB); every member of a cluster should use the same value.
    pub max_snapshot_bytes: u64,
    /// How long a leader asked to stop waits for leadership to move.
    pub shutdown_transfer_timeout_ms: u64,
    /// How long a follower serving a linearizable read waits for the leader's read index and
    /// then for its own apply to reach it, before answering `Unavailable`.
    pub follower_read_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: augur_proto::MAX_FRAME_DEFAULT,
            max_snapshot_bytes: 8 << 30,
            shutdown_transfer_timeout_ms: 3_000,
            follower_read_timeout_ms: 1_000,
        }
    }
}

/// The file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaFile {
    /// Member id.
    pub id: Option<u64>,
    /// QUIC listen address.
    pub listen: Option<SocketAddr>,
    /// HTTP admin listen address.
    pub admin_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Members to bootstrap with, as `id=host:port`.
    #[serde(default)]
    pub initial_members: Vec<String>,
    /// Certificates.
    pub tls: Option<TlsFiles>,
    /// Raft settings.
    #[serde(default)]
    pub raft: RaftSettings,
    /// Store settings.
    #[serde(default)]
    pub store: StoreSettings,
    /// Control-plane timing.
    #[serde(default)]
    pub control: ControlSettings,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
}

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// Member id.
    pub id: u64,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// HTTP admin listen address.
    pub admin_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Members to bootstrap with (empty: join an existing cluster as a learner).
    pub initial_members: Vec<InitialMember>,
    /// Certificates.
    pub tls: TlsFiles,
    /// Raft settings.
    pub raft: RaftSettings,
    /// Store settings.
    pub store: StoreSettings,
    /// Control-plane timing.
    pub control: ControlSettings,
    /// Limits.
    pub limits: Limits,
}

impl MetaFile {
    /// Reads a config file; relative paths in it are taken relative to its directory.
    pub fn load(path: &Path) -> Result<MetaFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file: MetaFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.data_dir = file.data_dir.map(|d| base.join(d));
        file.tls = file.tls.map(|t| t.relative_to(base));
        Ok(file)
    }

    /// Checks and completes the configuration.
    pub fn validate(self) -> Result<MetaConfig, ConfigError> {
        let id = self.id.ok_or(ConfigError::Missing("id"))?;
        if id == 0 {
            return Err(invalid("id", "member id 0 is reserved"));
        }
        let listen = self.listen.ok_or(ConfigError::Missing("listen"))?;
        let admin_listen = self
            .admin_listen
            .ok_or(ConfigError::Missing("admin_listen"))?;
        let data_dir = self.data_dir.ok_or(ConfigError::Missing("data_dir"))?;
        let tls = self.tls.ok_or(ConfigError::Missing("tls"))?;
        let initial_members = self
            .initial_members
            .iter()
            .map(|m| m.parse())
            .collect::<Result<Vec<InitialMember>, _>>()?;
        if !initial_members.is_empty() && !initial_members.iter().any(|m| m.id == id) {
            return Err(invalid(
                "initial_members",
                format!("does not include this node's id {id}"),
            ));
        }
        let mut ids: Vec<u64> = initial_members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("initial_members", "a member id appears twice"));
        }
        if self.raft.election_timeout_min_ms <= self.raft.heartbeat_interval_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                "must exceed heartbeat_interval_ms",
            ));
        }
        if !(1..=1024).contains(&self.raft.append_window) {
            return Err(invalid("raft.append_window", "must be between 1 and 1024"));
        }
        let min_frame = augur_proto::frame::MIN_FRAME
            .max(crate::meta::network::SNAPSHOT_CHUNK + augur_proto::frame::FRAME_SLACK);
        if self.limits.max_frame_bytes < min_frame {
            return Err(invalid(
                "limits.max_frame_bytes",
                format!(
                    "must be at least {min_frame}: one maximal transaction ({} bytes) or \
                     snapshot chunk ({} bytes) plus {} bytes of framing must fit in a frame",
                    augur_proto::txn::MAX_TXN_BYTES,
                    crate::meta::network::SNAPSHOT_CHUNK,
                    augur_proto::frame::FRAME_SLACK
                ),
            ));
        }
        if self.limits.max_frame_bytes > u32::MAX as usize {
            return Err(invalid(
                "limits.max_frame_bytes",
                "must fit the 4-byte length prefix",
            ));
        }
        if self.limits.max_snapshot_bytes < (1 << 20) {
            return Err(invalid(
                "limits.max_snapshot_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        if self.limits.follower_read_timeout_ms == 0 {
            return Err(invalid(
                "limits.follower_read_timeout_ms",
                "must be at least 1",
            ));
        }
        if !(1..=1_000_000_000).contains(&self.store.history_retention) {
            return Err(invalid(
                "store.history_retention",
                "must be between 1 and 1000000000 revisions",
            ));
        }
        self.raft.to_openraft()?;
        self.control.validate()?;
        Ok(MetaConfig {
            id,
            listen,
            admin_listen,
            data_dir,
            initial_members,
            tls,
            raft: self.raft,
            store: self.store,
            control: self.control,
            limits: self.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MetaFile {
        MetaFile {
            id: Some(1),
            listen: Some("127.0.0.1:7101".parse().unwrap()),
            admin_listen: Some("127.0.0.1:7201".parse().unwrap()),
            data_dir: Some("d".into()),
            initial_members: vec!["1=127.0.0.1:7101".into()],
            tls: Some(TlsFiles {
                ca: "ca".into(),
                cert: "c".into(),
                key: "k".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn valid_config_passes() {
        assert!(base().validate().is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let mut f = base();
        f.id = Some(0);
        assert!(matches!(
            f.validate(),
            Err(ConfigError::Invalid { setting: "id", .. })
        ));
        let mut f = base();
        f.initial_members = vec!["2=127.0.0.1:1".into()];
        assert!(f.validate().is_err());
        let mut f = base();
        f.initial_members = vec!["1=nohost".into()];
        assert!(f.validate().is_err());
        let mut f = base();
        f.listen = None;
        assert!(matches!(f.validate(), Err(ConfigError::Missing("listen"))));
        let mut f = base();
        f.raft.election_timeout_min_ms = 10;
        assert!(f.validate().is_err());
        let mut f = base();
        f.control.grace_ms = 7_000;
        assert!(matches!(
            f.validate(),
            Err(ConfigError::Invalid {
                setting: "control.grace_ms",
                ..
            })
        ));
        for frame in [65_536, augur_proto::frame::MIN_FRAME - 1, 1 << 33] {
            let mut f = base();
            f.limits.max_frame_bytes = frame;
            assert!(matches!(
                f.validate(),
                Err(ConfigError::Invalid {
                    setting: "limits.max_frame_bytes",
                    ..
                })
            ));
        }
        for retention in [0, u64::MAX / 2 + 1] {
            let mut f = base();
            f.store.history_retention = retention;
            assert!(matches!(
                f.validate(),
                Err(ConfigError::Invalid {
                    setting: "store.history_retention",
                    ..
                })
            ));
        }
        for window in [0, 1025] {
            let mut f = base();
            f.raft.append_window = window;
            assert!(matches!(
                f.validate(),
                Err(ConfigError::Invalid {
                    setting: "raft.append_window",
                    ..
                })
            ));
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<MetaFile>("id = 1\nlisten_addr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("listen_addr"));
    }
}
