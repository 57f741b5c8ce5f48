//! The health-sample contract shared by the agent, trace files and every CLI.
//!
//! One JSON object per line. The field names are the wire contract: the metadata service,
//! the trace generator and third-party exporters all speak it, so they never change meaning.

use serde::{Deserialize, Serialize};

/// One health observation of one storage node.
///
/// Utilisations are fractions in 0..=1; counts are per sample interval (not cumulative), so a
/// reader never needs the previous sample to interpret one line. `temp_c` and `psu_ok` are
/// `None` when the machine has no such sensor: models treat that as "unknown", never as 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSample {
    /// Node identifier, e.g. `s-07`.
    pub node: String,
    /// Wall-clock time of the observation, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// CPU busy fraction over the interval.
    pub cpu_util: f64,
    /// Fraction of memory in use (not available).
    pub mem_util: f64,
    /// Mean read latency of the data device over the interval, ms.
    pub disk_read_lat_ms: f64,
    /// Mean write latency of the data device over the interval, ms.
    pub disk_write_lat_ms: f64,
    /// Read throughput of the data device, MB/s.
    pub disk_read_mbps: f64,
    /// Write throughput of the data device, MB/s.
    pub disk_write_mbps: f64,
    /// Fraction of the interval the data device was busy.
    pub disk_util: f64,
    /// Round-trip time to peers, ms (supplied by the node from its QUIC connections).
    pub net_rtt_ms: f64,
    /// Packet loss towards peers, percent.
    pub net_loss_pct: f64,
    /// Interface errors and drops during the interval.
    pub net_errors: u64,
    /// Kernel log lines of priority err or worse, or matching known hardware patterns.
    pub err_log_count: u64,
    /// Hottest temperature sensor, °C; `None` when the machine exposes none.
    #[serde(default)]
    pub temp_c: Option<f64>,
    /// Whether every power supply reports online; `None` when none is visible.
    #[serde(default)]
    pub psu_ok: Option<bool>,
    /// TCP retransmitted / sent segments over the interval, percent. Optional extension of the
    /// contract (readers ignore unknown fields), written only by the Linux collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_retrans_pct: Option<f64>,
}

/// Number of metrics a sample contributes to models.
pub const N_METRICS: usize = 13;

/// Model-facing metric names, in the order of [`HealthSample::metrics`].
pub const METRIC_NAMES: [&str; N_METRICS] = [
    "cpu_util",
    "mem_util",
    "disk_read_lat_ms",
    "disk_write_lat_ms",
    "disk_read_mbps",
    "disk_write_mbps",
    "disk_util",
    "net_rtt_ms",
    "net_loss_pct",
    "net_errors",
    "err_log_count",
    "temp_c",
    "psu_ok",
];

/// Index of each metric in the model-facing vector, so feature code reads by name.
pub mod metric {
    #![allow(missing_docs)]
    pub const CPU: usize = 0;
    pub const MEM: usize = 1;
    pub const READ_LAT: usize = 2;
    pub const WRITE_LAT: usize = 3;
    pub const READ_MBPS: usize = 4;
    pub const WRITE_MBPS: usize = 5;
    pub const DISK_UTIL: usize = 6;
    pub const RTT: usize = 7;
    pub const LOSS: usize = 8;
    pub const NET_ERR: usize = 9;
    pub const ERR_LOG: usize = 10;
    pub const TEMP: usize = 11;
    pub const PSU: usize = 12;
}

impl HealthSample {
    /// The sample as a compact metric vector; absent sensors become NaN so that tree models
    /// route them down their "missing" branch instead of mistaking them for a reading of 0.
    pub fn metrics(&self) -> [f32; N_METRICS] {
        [
            self.cpu_util as f32,
            self.mem_util as f32,
            self.disk_read_lat_ms as f32,
            self.disk_write_lat_ms as f32,
            self.disk_read_mbps as f32,
            self.disk_write_mbps as f32,
            self.disk_util as f32,
            self.net_rtt_ms as f32,
            self.net_loss_pct as f32,
            self.net_errors as f32,
            self.err_log_count as f32,
            self.temp_c.map_or(f32::NAN, |t| t as f32),
            self.psu_ok
                .map_or(f32::NAN, |ok| if ok { 1.0 } else { 0.0 }),
        ]
    }

    /// Checks value ranges that JSON typing cannot: a negative latency or a utilisation of 7
    /// means a broken exporter, and letting it through would silently poison normalisation.
    /// Returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.node.is_empty() {
            return Err(("node", "must not be empty".into()));
        }
        let fractions = [
            ("cpu_util", self.cpu_util),
            ("mem_util", self.mem_util),
            ("disk_util", self.disk_util),
        ];
        for (name, v) in fractions {
            if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                return Err((name, format!("{v} is not a fraction in 0..=1")));
            }
        }
        let non_negative = [
            ("disk_read_lat_ms", self.disk_read_lat_ms),
            ("disk_write_lat_ms", self.disk_write_lat_ms),
            ("disk_read_mbps", self.disk_read_mbps),
            ("disk_write_mbps", self.disk_write_mbps),
            ("net_rtt_ms", self.net_rtt_ms),
        ];
        for (name, v) in non_negative {
            if !v.is_finite() || v < 0.0 {
                return Err((name, format!("{v} must be a finite non-negative number")));
            }
        }
        if !self.net_loss_pct.is_finite() || !(0.0..=100.0).contains(&self.net_loss_pct) {
            return Err((
                "net_loss_pct",
                format!("{} is not a percentage in 0..=100", self.net_loss_pct),
            ));
        }
        if let Some(t) = self.temp_c {
            if !t.is_finite() || !(-60.0..=200.0).contains(&t) {
                return Err(("temp_c", format!("{t} °C is outside -60..=200")));
            }
        }
        Ok(())
    }
}

/// A recorded node failure (`failures.jsonl`).
///
/// `cause` and `precursor_onset_ms` are written by the synthetic generator for analysis; the
/// contract only requires `node` and `failed_at_ms`, so real failure logs parse too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The node that failed.
    pub node: String,
    /// When it stopped serving, ms since the Unix epoch.
    pub failed_at_ms: i64,
    /// Generator ground truth: the precursor kind, or `sudden` when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Generator ground truth: when the precursor began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precursor_onset_ms: Option<i64>,
}

impl FailureRecord {
    /// Whether the failure is known to have had a detectable precursor. Unknown causes count
    /// as precursor failures so that real logs are not excused from recall.
    pub fn has_precursor(&self) -> bool {
        self.cause.as_deref() != Some("sudden")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"node":"s-07","ts_ms":1764039605000,"cpu_util":0.42,"mem_util":0.63,"disk_read_lat_ms":1.2,"disk_write_lat_ms":3.4,"disk_read_mbps":45.0,"disk_write_mbps":12.5,"disk_util":0.31,"net_rtt_ms":0.4,"net_loss_pct":0.0,"net_errors":0,"err_log_count":0,"temp_c":48.5,"psu_ok":true}"#;

    #[test]
    fn parses_the_issue_example_and_ignores_unknown_fields() {
        let s: HealthSample = serde_json::from_str(LINE).unwrap();
        assert_eq!(s.node, "s-07");
        assert_eq!(s.temp_c, Some(48.5));
        let extra = LINE.replace("\"psu_ok\":true", "\"psu_ok\":null,\"fan_rpm\":1200");
        let s2: HealthSample = serde_json::from_str(&extra).unwrap();
        assert_eq!(s2.psu_ok, None);
        assert!(s2.metrics()[metric::PSU].is_nan());
        assert!(s.validate().is_ok());
    }

    #[test]
    fn round_trips_and_rejects_out_of_range() {
        let mut s: HealthSample = serde_json::from_str(LINE).unwrap();
        let back: HealthSample = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(s, back);
        s.cpu_util = 1.5;
        assert_eq!(s.validate().unwrap_err().0, "cpu_util");
    }
}
