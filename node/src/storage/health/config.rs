//! The `[health]` section of a storage node's configuration.
//!
//! ```toml
//! [health]                                    # defaults shown
//! source = "linux"                            # "linux" | "simulated" | "off"
//! sample_interval_ms = 5000                   # one health sample every 5 s
//! batch_interval_ms = 30000                   # samples handed to sinks in batches
//! score_interval_ms = 0                       # 0: the node model's scoring round (5 min)
//! node_model = "/usr/share/augur/models/default.model"
//! disk_model = "/usr/share/augur/models/disk.model"
//! data_device = ""                            # "": the block device holding data_dir
//! smart = true                                # read SMART of the data device (smartctl), hourly
//! recent_samples = 720                        # samples kept for `augurctl node health` (1 h at 5 s)
//! risk_timeline = 288                         # scoring rounds kept (24 h at 5 min)
//! inject_ramp_ms = 0                          # injected faults reach full severity after this
//! simulated_seed = 0                          # 0: the node id
//! simulated_backfill_ms = 0                   # simulated only: healthy history synthesised at start
//! sudden_death_exits = true                   # simulated only: an injected sudden death ends the process
//! ```
//!
//! Relative model paths are taken relative to the configuration file's directory, like
//! `data_dir`. The defaults name where a package installs the shipped models; `augur local`
//! points its nodes at the repository's `predictor/models`. A model that is missing or does
//! not load (another schema version, corrupt) is not fatal: the node runs and reports the
//! typed "no model" state until a loadable file appears (it is re-read when its modification
//! time changes).

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where health samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthSource {
    /// procfs / sysfs / kmsg of this machine, SMART of the data device.
    #[default]
    Linux,
    /// A synthetic healthy node into which faults can be injected (demos, tests).
    Simulated,
    /// No health agent: no samples, no risk.
    Off,
}

impl HealthSource {
    /// The name used in config, flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            HealthSource::Linux => "linux",
            HealthSource::Simulated => "simulated",
            HealthSource::Off => "off",
        }
    }
}

impl std::str::FromStr for HealthSource {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linux" => Ok(HealthSource::Linux),
            "simulated" => Ok(HealthSource::Simulated),
            "off" => Ok(HealthSource::Off),
            other => Err(ConfigError::Invalid {
                setting: "health.source",
                detail: format!("{other:?} is not one of linux, simulated, off"),
            }),
        }
    }
}

/// Health agent and predictor settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// Where samples come from.
    pub source: HealthSource,
    /// Milliseconds between samples.
    pub sample_interval_ms: u64,
    /// Milliseconds between batches handed to the sinks.
    pub batch_interval_ms: u64,
    /// Milliseconds between scoring rounds; 0: the node model's own round (`alert.round_ms`,
    /// 5 minutes for the shipped model, the cadence it was tuned for).
    pub score_interval_ms: u64,
    /// The node model file.
    pub node_model: PathBuf,
    /// The disk (SMART) model file; used once the history holds a SMART reading.
    pub disk_model: PathBuf,
    /// The data device's name in /proc/diskstats (e.g. `nvme0n1`); empty: the device holding
    /// `data_dir`.
    pub data_device: String,
    /// Whether to read SMART of the data device (needs smartctl; absent SMART is not an error).
    pub smart: bool,
    /// Recent samples kept in memory for `augurctl node health`.
    pub recent_samples: usize,
    /// Scoring rounds kept in memory (the risk timeline).
    pub risk_timeline: usize,
    /// An injected fault ramps to full severity over this many milliseconds (0: at once).
    pub inject_ramp_ms: u64,
    /// Seed of the simulated node's profile; 0: the node id.
    pub simulated_seed: u64,
    /// Simulated source only: this many milliseconds of healthy history (one sample a
    /// minute) are synthesised at start and scored with the live samples, so a model's long
    /// windows are filled in a demo instead of after hours. 0: none.
    pub simulated_backfill_ms: u64,
    /// Simulated source only: an injected `sudden-death` ends the storage process at once
    /// (exit status 137, as SIGKILL would), after answering the request. Otherwise only the
    /// health source dies.
    pub sudden_death_exits: bool,
}

/// Where the shipped models are installed by default.
pub const DEFAULT_MODEL_DIR: &str = "/usr/share/augur/models";

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            source: HealthSource::Linux,
            sample_interval_ms: 5_000,
            batch_interval_ms: 30_000,
            score_interval_ms: 0,
            node_model: Path::new(DEFAULT_MODEL_DIR).join("default.model"),
            disk_model: Path::new(DEFAULT_MODEL_DIR).join("disk.model"),
            data_device: String::new(),
            smart: true,
            recent_samples: 720,
            risk_timeline: 288,
            inject_ramp_ms: 0,
            simulated_seed: 0,
            simulated_backfill_ms: 0,
            sudden_death_exits: true,
        }
    }
}

/// Largest in-memory bounds accepted (a sample is a few hundred bytes).
const MAX_RECENT: usize = 100_000;
/// A week of backfill at one sample a minute is the most synthesised at start.
const MAX_BACKFILL_MS: u64 = 7 * 24 * 3_600_000;

impl HealthSettings {
    /// Makes relative model paths relative to `base` (the configuration file's directory).
    pub fn relative_to(mut self, base: &Path) -> Self {
        self.node_model = base.join(&self.node_model);
        self.disk_model = base.join(&self.disk_model);
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting: &'static str, detail: &str| ConfigError::Invalid {
            setting,
            detail: detail.to_string(),
        };
        if self.sample_interval_ms == 0 || self.sample_interval_ms > 3_600_000 {
            return Err(invalid(
                "health.sample_interval_ms",
                "must be 1..=3600000 (the node model reads nothing sampled less than hourly)",
            ));
        }
        if self.batch_interval_ms < self.sample_interval_ms {
            return Err(invalid(
                "health.batch_interval_ms",
                "must be at least sample_interval_ms",
            ));
        }
        if self.recent_samples == 0 || self.recent_samples > MAX_RECENT {
            return Err(invalid("health.recent_samples", "must be 1..=100000"));
        }
        if self.risk_timeline == 0 || self.risk_timeline > MAX_RECENT {
            return Err(invalid("health.risk_timeline", "must be 1..=100000"));
        }
        if self.simulated_backfill_ms > MAX_BACKFILL_MS {
            return Err(invalid(
                "health.simulated_backfill_ms",
                "must be at most 604800000 (7 days)",
            ));
        }
        if self.data_device.contains('/') {
            return Err(invalid(
                "health.data_device",
                "a device name as in /proc/diskstats (e.g. nvme0n1), not a path",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let s: HealthSettings = toml::from_str("").unwrap();
        assert_eq!(s, HealthSettings::default());
        s.validate().unwrap();
        assert_eq!(s.sample_interval_ms, 5_000);
        assert_eq!(s.source, HealthSource::Linux);
    }

    #[test]
    fn a_full_section_parses_and_relative_models_follow_the_file() {
        let s: HealthSettings = toml::from_str(
            "source = \"simulated\"\nsample_interval_ms = 1000\nbatch_interval_ms = 2000\n\
             node_model = \"models/n.model\"\ndisk_model = \"/abs/d.model\"\n",
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.source, HealthSource::Simulated);
        let s = s.relative_to(Path::new("/etc/augur"));
        assert_eq!(s.node_model, Path::new("/etc/augur/models/n.model"));
        assert_eq!(s.disk_model, Path::new("/abs/d.model"));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(toml::from_str::<HealthSettings>("source = \"smart\"").is_err());
        assert!(toml::from_str::<HealthSettings>("bogus = 1").is_err());
        assert!("smart".parse::<HealthSource>().is_err());
        assert_eq!(
            "simulated".parse::<HealthSource>().unwrap(),
            HealthSource::Simulated
        );
        let named = |s: HealthSettings| match s.validate() {
            Err(ConfigError::Invalid { setting, .. }) => setting,
            other => panic!("expected a named setting, got {other:?}"),
        };
        let s = HealthSettings {
            sample_interval_ms: 0,
            ..Default::default()
        };
        assert_eq!(named(s), "health.sample_interval_ms");
        let s = HealthSettings {
            batch_interval_ms: 1_000,
            ..Default::default()
        };
        assert_eq!(named(s), "health.batch_interval_ms");
        let s = HealthSettings {
            recent_samples: 0,
            ..Default::default()
        };
        assert_eq!(named(s), "health.recent_samples");
        let s = HealthSettings {
            data_device: "/dev/sda".into(),
            ..Default::default()
        };
        assert_eq!(named(s), "health.data_device");
    }
}
