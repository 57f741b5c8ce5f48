//! Configuration of a storage node: a TOML file, overridden by flags.
//!
//! ```toml
//! id = 1                                     # storage node id (positive)
//! listen = "127.0.0.1:7301"                  # QUIC: the data API and replication
//! admin_listen = "127.0.0.1:7401"            # HTTP: /health /metrics /v1/status
//! data_dir = "data"                          # RocksDB: shard data, replication logs
//! meta_endpoints = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
//! capacity_bytes = 0                         # 0: the size of data_dir's filesystem
//! rack = "r1"                                # failure domain (default: empty)
//! zone = "z1"
//!
//! [tls]                                      # a storage certificate for this node's id
//! ca = "certs/ca.pem"
//! cert = "certs/storage-1.pem"
//! key = "certs/storage-1.key"
//!
//! [replication]                              # defaults shown
//! ack_timeout_ms = 4000                      # a replica silent this long while writes wait is reported (≤ 1 h)
//! max_batch_bytes = 4194304                  # entries per replication frame, by bytes
//! max_pending_writes = 4096                  # writes in flight per shard before new ones wait
//! request_retention_ms = 600000              # how long a request id is remembered
//! stray_grace_ms = 60000                     # a removed replica's data is kept this long
//! log_retention = 100000                     # applied entries kept per shard for catch-up (≤ 10⁹)
//! sync_wait_us = 500                         # under load, a WAL sync waits this long for more writes
//!
//! [copy]
//! max_concurrent = 8                         # shard copies in and out at once
//! bytes_per_sec = 104857600                  # copy budget per node (both directions)
//! chunk_bytes = 1048576
//! busy_bytes_per_sec = 16777216              # copy budget while clients are served (yield)
//! busy_window_ms = 250                       # a client request this recent means busy
//!
//! [limits]
//! max_frame_bytes = 16777216
//! request_timeout_ms = 5000                  # metadata requests
//!
//! [health]                                   # health agent and predictor: see health/config.rs
//! source = "linux"                           # "linux" | "simulated" | "off"
//! sample_interval_ms = 5000
//! node_model = "/usr/share/augur/models/default.model"
//! disk_model = "/usr/share/augur/models/disk.model"
//! ```
//!
//! Lease and heartbeat timing come from the metadata leader with every heartbeat
//! acknowledgement, so a node and the leader cannot disagree about them.

use super::health::config::HealthSettings;
use crate::config::ConfigError;
use augur_transport::TlsFiles;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

fn invalid(setting: &'static str, detail: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        setting,
        detail: detail.to_string(),
    }
}

/// The longest `replication.sync_wait_us` taken: every write waits for it, and past this it
/// would be the larger part of a put's latency.
pub const MAX_SYNC_WAIT_US: u64 = 10_000;

/// The longest `replication.ack_timeout_ms` taken (an hour): a replica silent longer than
/// that while writes wait has long been dead, and the timeout's arithmetic stays far from
/// overflowing.
pub const MAX_ACK_TIMEOUT_MS: u64 = 3_600_000;

/// The largest `replication.log_retention` taken: a billion entries is more log than any
/// disk keeps, and the pruning arithmetic stays far from overflowing.
pub const MAX_LOG_RETENTION: u64 = 1_000_000_000;

/// Replication settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSettings {
    /// A replica that acknowledges nothing for this long while writes wait for it is reported
    /// to the control plane for removal. Removing a live replica costs a whole-shard copy and
    /// a window below the replication factor, and a busy disk's fsync can stall for seconds:
    /// at 2 s, replicas were removed for that on a loaded two-core machine. 4 s stays well
    /// under the 8 s of silence before a dead node is declared Down (`control.grace_ms`).
    pub ack_timeout_ms: u64,
    /// Bytes of entries in one replication frame.
    pub max_batch_bytes: usize,
    /// Writes in flight per shard before new ones wait.
    pub max_pending_writes: usize,
    /// How long a request id is remembered, so a resent write applies once.
    pub request_retention_ms: u64,
    /// How long a replica removed from its shard's configuration is kept before its data is
    /// deleted (an operator may still want it).
    pub stray_grace_ms: u64,
    /// Applied entries kept in a shard's log, so a replica that fell behind catches up from
    /// the log rather than by a copy.
    pub log_retention: u64,
    /// When the node's previous WAL sync carried the writes of more than one shard (the node
    /// is under load), the next sync waits this long for more writes to share it; an idle
    /// node syncs at once. Every `fdatasync` here costs a few exits to the hypervisor
    /// (a tenth of a loaded node's CPU went to them), so fewer, fuller syncs leave more
    /// CPU for the writes; each waits up to this much longer. 0 syncs at once always.
    pub sync_wait_us: u64,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            ack_timeout_ms: 4_000,
            max_batch_bytes: 4 << 20,
            max_pending_writes: 4096,
            request_retention_ms: 600_000,
            stray_grace_ms: 60_000,
            log_retention: 100_000,
            sync_wait_us: 500,
        }
    }
}

/// Shard-copy settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CopySettings {
    /// Copies in and out at once: by default room for the planner's two moves in
    /// (`max_moves_in_per_node`) and two out (`max_moves_out_per_node`), so an incoming copy
    /// never waits behind outgoing ones.
    pub max_concurrent: usize,
    /// Bytes per second for copies, both directions together.
    pub bytes_per_sec: u64,
    /// Bytes per chunk.
    pub chunk_bytes: usize,
    /// The budget while client requests are being served (one arrived within
    /// `busy_window_ms`), capped at `bytes_per_sec`: copies yield to clients, and run at
    /// `bytes_per_sec` when idle.
    pub busy_bytes_per_sec: u64,
    /// How recent a client request keeps the busy budget in force.
    pub busy_window_ms: u64,
}

impl Default for CopySettings {
    fn default() -> Self {
        CopySettings {
            max_concurrent: 8,
            bytes_per_sec: 100 << 20,
            chunk_bytes: 1 << 20,
            busy_bytes_per_sec: 16 << 20,
            busy_window_ms: 250,
        }
    }
}

/// Limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageLimits {
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Deadline of one metadata request.
    pub request_timeout_ms: u64,
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            max_frame_bytes: augur_proto::MAX_FRAME_DEFAULT,
            request_timeout_ms: 5_000,
        }
    }
}

/// The file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    /// Storage node id.
    pub id: Option<u64>,
    /// QUIC listen address.
    pub listen: Option<SocketAddr>,
    /// Address others reach the QUIC endpoint at (default: `listen`).
    pub advertise: Option<String>,
    /// HTTP admin listen address.
    pub admin_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Metadata members' QUIC addresses.
    #[serde(default)]
    pub meta_endpoints: Vec<String>,
    /// Bytes this node may hold (0: the filesystem's size).
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Rack label.
    #[serde(default)]
    pub rack: String,
    /// Zone label.
    #[serde(default)]
    pub zone: String,
    /// Certificates.
    pub tls: Option<TlsFiles>,
    /// Replication settings.
    #[serde(default)]
    pub replication: ReplicationSettings,
    /// Copy settings.
    #[serde(default)]
    pub copy: CopySettings,
    /// Limits.
    #[serde(default)]
    pub limits: StorageLimits,
    /// Health agent and predictor.
    #[serde(default)]
    pub health: HealthSettings,
}

/// A complete, validated storage-node configuration.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Storage node id.
    pub id: u64,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Address others reach it at.
    pub advertise: String,
    /// HTTP admin listen address.
    pub admin_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Metadata members.
    pub meta_endpoints: Vec<String>,
    /// Configured capacity (0: the filesystem's).
    pub capacity_bytes: u64,
    /// Rack label.
    pub rack: String,
    /// Zone label.
    pub zone: String,
    /// Certificates.
    pub tls: TlsFiles,
    /// Replication settings.
    pub replication: ReplicationSettings,
    /// Copy settings.
    pub copy: CopySettings,
    /// Limits.
    pub limits: StorageLimits,
    /// Health agent and predictor.
    pub health: HealthSettings,
}

impl StorageFile {
    /// Reads a config file; relative paths in it are taken relative to its directory.
    pub fn load(path: &Path) -> Result<StorageFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file: StorageFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.data_dir = file.data_dir.map(|d| base.join(d));
        file.tls = file.tls.map(|t| t.relative_to(base));
        file.health = file.health.relative_to(base);
        Ok(file)
    }

    /// Checks and completes the configuration.
    pub fn validate(self) -> Result<StorageConfig, ConfigError> {
        let id = self.id.ok_or(ConfigError::Missing("id"))?;
        if id == 0 {
            return Err(invalid("id", "node id 0 is reserved"));
        }
        let listen = self.listen.ok_or(ConfigError::Missing("listen"))?;
        let admin_listen = self
            .admin_listen
            .ok_or(ConfigError::Missing("admin_listen"))?;
        let data_dir = self.data_dir.ok_or(ConfigError::Missing("data_dir"))?;
        let tls = self.tls.ok_or(ConfigError::Missing("tls"))?;
        if self.meta_endpoints.is_empty() {
            return Err(ConfigError::Missing("meta_endpoints"));
        }
        for e in &self.meta_endpoints {
            if e.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(invalid("meta_endpoints", format!("{e:?} is not host:port")));
            }
        }
        let advertise = self.advertise.unwrap_or_else(|| listen.to_string());
        for (setting, v) in [("rack", &self.rack), ("zone", &self.zone)] {
            if v.len() > augur_proto::model::limits::MAX_STRING {
                return Err(invalid(setting, "too long"));
            }
        }
        let r = &self.replication;
        if r.ack_timeout_ms == 0 || r.ack_timeout_ms > MAX_ACK_TIMEOUT_MS {
            return Err(invalid(
                "replication.ack_timeout_ms",
                format!("must be 1..={MAX_ACK_TIMEOUT_MS}"),
            ));
        }
        if r.log_retention > MAX_LOG_RETENTION {
            return Err(invalid(
                "replication.log_retention",
                format!("must be 0..={MAX_LOG_RETENTION}"),
            ));
        }
        if r.sync_wait_us > MAX_SYNC_WAIT_US {
            return Err(invalid(
                "replication.sync_wait_us",
                format!("must be 0..={MAX_SYNC_WAIT_US}"),
            ));
        }
        if r.max_pending_writes == 0 {
            return Err(invalid(
                "replication.max_pending_writes",
                "must be at least 1",
            ));
        }
        let min_frame = augur_proto::frame::MIN_FRAME;
        if self.limits.max_frame_bytes < min_frame
            || self.limits.max_frame_bytes > u32::MAX as usize
        {
            return Err(invalid(
                "limits.max_frame_bytes",
                format!("must be {min_frame}..=4294967295"),
            ));
        }
        let budget = augur_proto::frame::payload_budget(self.limits.max_frame_bytes);
        if r.max_batch_bytes == 0 || r.max_batch_bytes > budget {
            return Err(invalid(
                "replication.max_batch_bytes",
                format!("must be 1..={budget} (the frame's payload budget)"),
            ));
        }
        let c = &self.copy;
        if c.max_concurrent == 0 || c.bytes_per_sec == 0 {
            return Err(invalid(
                "copy",
                "max_concurrent and bytes_per_sec must be at least 1",
            ));
        }
        if c.busy_bytes_per_sec == 0 {
            return Err(invalid("copy.busy_bytes_per_sec", "must be at least 1"));
        }
        if c.chunk_bytes == 0 || c.chunk_bytes > budget {
            return Err(invalid(
                "copy.chunk_bytes",
                format!("must be 1..={budget} (the frame's payload budget)"),
            ));
        }
        self.health.validate()?;
        Ok(StorageConfig {
            id,
            listen,
            advertise,
            admin_listen,
            data_dir,
            meta_endpoints: self.meta_endpoints,
            capacity_bytes: self.capacity_bytes,
            rack: self.rack,
            zone: self.zone,
            tls,
            replication: self.replication,
            copy: self.copy,
            limits: self.limits,
            health: self.health,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> StorageFile {
        StorageFile {
            id: Some(1),
            listen: Some("127.0.0.1:7301".parse().unwrap()),
            admin_listen: Some("127.0.0.1:7401".parse().unwrap()),
            data_dir: Some("d".into()),
            meta_endpoints: vec!["127.0.0.1:7101".into()],
            tls: Some(TlsFiles {
                ca: "a".into(),
                cert: "b".into(),
                key: "c".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn valid_config_passes_and_bad_values_are_named() {
        assert!(base().validate().is_ok());
        let mut f = base();
        f.meta_endpoints = vec![];
        assert!(matches!(
            f.validate(),
            Err(ConfigError::Missing("meta_endpoints"))
        ));
        let mut f = base();
        f.copy.chunk_bytes = 1 << 30;
        assert!(matches!(
            f.validate(),
            Err(ConfigError::Invalid {
                setting: "copy.chunk_bytes",
                ..
            })
        ));
        let mut f = base();
        f.copy.busy_bytes_per_sec = 0;
        assert!(matches!(
            f.validate(),
            Err(ConfigError::Invalid {
                setting: "copy.busy_bytes_per_sec",
                ..
            })
        ));
        let mut f = base();
        f.replication.sync_wait_us = MAX_SYNC_WAIT_US + 1;
        assert!(matches!(
            f.validate(),
            Err(ConfigError::Invalid {
                setting: "replication.sync_wait_us",
                ..
            })
        ));
        for (setting, edit) in [
            (
                "replication.ack_timeout_ms",
                (|f: &mut StorageFile| f.replication.ack_timeout_ms = MAX_ACK_TIMEOUT_MS + 1)
                    as fn(&mut StorageFile),
            ),
            ("replication.log_retention", |f| {
                f.replication.log_retention = MAX_LOG_RETENTION + 1
            }),
        ] {
            let mut f = base();
            edit(&mut f);
            assert!(
                matches!(f.validate(), Err(ConfigError::Invalid { setting: s, .. }) if s == setting),
                "{setting}"
            );
        }
        let mut f = base();
        f.id = Some(0);
        assert!(f.validate().is_err());
        assert!(toml::from_str::<StorageFile>("id = 1\nbogus = 2").is_err());
    }
}
