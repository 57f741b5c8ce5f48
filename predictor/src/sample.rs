//! The health-sample contract shared by the agent, trace files and every CLI.
//!
//! One JSON object per line. The field names are the wire contract: the metadata service,
//! the trace generator, the Backblaze importer and third-party exporters all speak it, so they
//! never change meaning. Every measurement is optional (absent or `null` means "not measured",
//! never 0), because fleets differ in what they can see: a Backblaze drive log has SMART
//! attributes and nothing else, a node without I/O in an interval has no latency, and a node
//! that has not yet talked to a peer has no RTT.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// SMART attributes of one device: ATA attribute id (`"5"`, `"197"`) or NVMe health-log field
/// name (`"media_errors"`, `"percentage_used"`) -> raw value.
pub type SmartAttributes = BTreeMap<String, f64>;

/// SMART readings of a node's data devices: device name (`"sda"`, `"nvme0n1"`) -> attributes.
pub type SmartReadings = BTreeMap<String, SmartAttributes>;

/// One health observation of one storage node.
///
/// Utilisations are fractions in 0..=1; counts are per sample interval (not cumulative), so a
/// reader never needs the previous sample to interpret one line. Models turn counts into
/// per-minute rates (see [`crate::trace::NodeSeries::resample`]), so a node sampled every 5 s
/// and one sampled every 10 minutes describe the same behaviour with the same numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthSample {
    /// Node identifier, e.g. `s-07` (a drive's serial number in imported Backblaze data).
    pub node: String,
    /// Wall-clock time of the observation, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// CPU busy fraction over the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_util: Option<f64>,
    /// Fraction of memory in use (not available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_util: Option<f64>,
    /// Mean read latency of the data device over the interval, ms; `None` when the interval
    /// held no read (a latency of 0 would read as "very fast disk").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_read_lat_ms: Option<f64>,
    /// Mean write latency of the data device over the interval, ms; `None` without writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_write_lat_ms: Option<f64>,
    /// Read throughput of the data device, MB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_read_mbps: Option<f64>,
    /// Write throughput of the data device, MB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_write_mbps: Option<f64>,
    /// Fraction of the interval the data device was busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_util: Option<f64>,
    /// Round-trip time to peers, ms (supplied by the node from its QUIC connections); `None`
    /// until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rtt_ms: Option<f64>,
    /// Packet loss towards peers, percent; `None` until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_loss_pct: Option<f64>,
    /// Interface errors and drops during the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_errors: Option<u64>,
    /// Kernel log lines during the interval that report a hardware fault (priority err or
    /// worse, or a known disk / memory / PCIe failure pattern; corrected errors excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err_log_count: Option<u64>,
    /// Hottest temperature sensor, °C; `None` when the machine exposes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_c: Option<f64>,
    /// Whether every power supply reports online; `None` when none is visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psu_ok: Option<bool>,
    /// TCP retransmitted / sent segments over the interval, percent (Linux collector only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_retrans_pct: Option<f64>,
    /// SMART readings of the data devices, present only in the sample that follows a new
    /// reading (the agent reads SMART once per period, by default hourly); `None` otherwise
    /// and on machines without SMART.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart: Option<SmartReadings>,
}

/// Number of node metrics a sample contributes to the node model.
pub const N_METRICS: usize = 13;

/// The node metrics, in the order of [`HealthSample::metrics`]. This enum is the one place
/// that order is defined; names, indices and extraction all derive from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Metric {
    Cpu,
    Mem,
    ReadLat,
    WriteLat,
    ReadMbps,
    WriteMbps,
    DiskUtil,
    Rtt,
    Loss,
    NetErrors,
    ErrLog,
    Temp,
    Psu,
}

impl Metric {
    /// Every metric, in vector order.
    pub const ALL: [Metric; N_METRICS] = [
        Metric::Cpu,
        Metric::Mem,
        Metric::ReadLat,
        Metric::WriteLat,
        Metric::ReadMbps,
        Metric::WriteMbps,
        Metric::DiskUtil,
        Metric::Rtt,
        Metric::Loss,
        Metric::NetErrors,
        Metric::ErrLog,
        Metric::Temp,
        Metric::Psu,
    ];

    /// Position in the metric vector.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The sample field the metric comes from.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu_util",
            Metric::Mem => "mem_util",
            Metric::ReadLat => "disk_read_lat_ms",
            Metric::WriteLat => "disk_write_lat_ms",
            Metric::ReadMbps => "disk_read_mbps",
            Metric::WriteMbps => "disk_write_mbps",
            Metric::DiskUtil => "disk_util",
            Metric::Rtt => "net_rtt_ms",
            Metric::Loss => "net_loss_pct",
            Metric::NetErrors => "net_errors",
            Metric::ErrLog => "err_log_count",
            Metric::Temp => "temp_c",
            Metric::Psu => "psu_ok",
        }
    }

    /// Whether the sample holds a count per interval, which models read as a per-minute rate.
    pub const fn is_count(self) -> bool {
        matches!(self, Metric::NetErrors | Metric::ErrLog)
    }
}

/// Index of each metric in the model-facing vector, so feature code reads by name. Derived
/// from [`Metric`], never written out twice.
pub mod metric {
    #![allow(missing_docs)]
    use super::Metric;
    pub const CPU: usize = Metric::Cpu.index();
    pub const MEM: usize = Metric::Mem.index();
    pub const READ_LAT: usize = Metric::ReadLat.index();
    pub const WRITE_LAT: usize = Metric::WriteLat.index();
    pub const READ_MBPS: usize = Metric::ReadMbps.index();
    pub const WRITE_MBPS: usize = Metric::WriteMbps.index();
    pub const DISK_UTIL: usize = Metric::DiskUtil.index();
    pub const RTT: usize = Metric::Rtt.index();
    pub const LOSS: usize = Metric::Loss.index();
    pub const NET_ERR: usize = Metric::NetErrors.index();
    pub const ERR_LOG: usize = Metric::ErrLog.index();
    pub const TEMP: usize = Metric::Temp.index();
    pub const PSU: usize = Metric::Psu.index();
}

/// Model-facing metric names, in vector order.
pub fn metric_names() -> [&'static str; N_METRICS] {
    Metric::ALL.map(Metric::name)
}

impl HealthSample {
    /// A sample of `node` at `ts_ms` with nothing measured yet (builders fill fields in).
    pub fn empty(node: &str, ts_ms: i64) -> Self {
        HealthSample {
            node: node.to_string(),
            ts_ms,
            ..Default::default()
        }
    }

    /// One metric's value; `None` when not measured.
    pub fn get(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::Cpu => self.cpu_util,
            Metric::Mem => self.mem_util,
            Metric::ReadLat => self.disk_read_lat_ms,
            Metric::WriteLat => self.disk_write_lat_ms,
            Metric::ReadMbps => self.disk_read_mbps,
            Metric::WriteMbps => self.disk_write_mbps,
            Metric::DiskUtil => self.disk_util,
            Metric::Rtt => self.net_rtt_ms,
            Metric::Loss => self.net_loss_pct,
            Metric::NetErrors => self.net_errors.map(|v| v as f64),
            Metric::ErrLog => self.err_log_count.map(|v| v as f64),
            Metric::Temp => self.temp_c,
            Metric::Psu => self.psu_ok.map(|ok| if ok { 1.0 } else { 0.0 }),
        }
    }

    /// The sample as a compact metric vector; unmeasured metrics become NaN so that tree
    /// models route them down their "missing" branch instead of mistaking them for a 0.
    pub fn metrics(&self) -> [f32; N_METRICS] {
        Metric::ALL.map(|m| self.get(m).map_or(f32::NAN, |v| v as f32))
    }

    /// Whether any node metric was measured (a SMART-only sample carries none).
    pub fn has_node_metrics(&self) -> bool {
        Metric::ALL.iter().any(|&m| self.get(m).is_some())
    }

    /// Checks value ranges that JSON typing cannot: a negative latency or a utilisation of 7
    /// means a broken exporter, and letting it through would silently poison normalisation.
    /// A sample that measures nothing at all is refused too: it is a broken exporter, not a
    /// healthy node. Returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.node.is_empty() {
            return Err(("node", "must not be empty".into()));
        }
        for m in Metric::ALL {
            let Some(v) = self.get(m) else { continue };
            let ok = match m {
                Metric::Cpu | Metric::Mem | Metric::DiskUtil => (0.0..=1.0).contains(&v),
                Metric::Loss => (0.0..=100.0).contains(&v),
                Metric::Temp => (-60.0..=200.0).contains(&v),
                _ => v >= 0.0,
            };
            if !v.is_finite() || !ok {
                let range = match m {
                    Metric::Cpu | Metric::Mem | Metric::DiskUtil => "a fraction in 0..=1",
                    Metric::Loss => "a percentage in 0..=100",
                    Metric::Temp => "a temperature in -60..=200 °C",
                    _ => "a finite non-negative number",
                };
                return Err((m.name(), format!("{v} is not {range}")));
            }
        }
        if let Some(r) = self.tcp_retrans_pct {
            if !r.is_finite() || !(0.0..=100.0).contains(&r) {
                return Err(("tcp_retrans_pct", format!("{r} is not a percentage")));
            }
        }
        if let Some(smart) = &self.smart {
            for (device, attrs) in smart {
                if device.is_empty() {
                    return Err(("smart", "empty device name".into()));
                }
                for (attr, v) in attrs {
                    if attr.is_empty() || !v.is_finite() || *v < 0.0 {
                        return Err((
                            "smart",
                            format!("{device}/{attr} = {v} is not a finite non-negative raw value"),
                        ));
                    }
                }
            }
        }
        let has_smart = self
            .smart
            .as_ref()
            .is_some_and(|s| s.values().any(|a| !a.is_empty()));
        if !self.has_node_metrics() && !has_smart {
            return Err(("node", "the sample measures nothing".into()));
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
    /// When the failure was recorded, ms since the Unix epoch: what an operator's log
    /// holds, and all training may know.
    pub failed_at_ms: i64,
    /// Generator ground truth, with label delay: when the node actually died (it stops
    /// reporting then), before the failure was recorded at `failed_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub died_at_ms: Option<i64>,
    /// Generator ground truth: the precursor kind, or `sudden` when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Generator ground truth: when the precursor began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precursor_onset_ms: Option<i64>,
}

impl FailureRecord {
    /// Whether the failure is known to have had a detectable precursor: `None` when the
    /// record does not say (real failure logs), so that evaluation reports precursor recall
    /// as unknown instead of pretending every failure had one.
    pub fn has_precursor(&self) -> Option<bool> {
        match self.cause.as_deref() {
            None => None,
            Some("sudden") => Some(false),
            Some(_) => Some(true),
        }
    }

    /// The failure time evaluation judges against: the true death when the trace records
    /// it, else the recorded time. Training reads only `failed_at_ms`, as it would on a real
    /// fleet; judging against the truth keeps a late label from flattering lead times.
    pub fn truth_ms(&self) -> i64 {
        self.died_at_ms.unwrap_or(self.failed_at_ms)
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
    fn metric_order_is_the_enum_order() {
        let s: HealthSample = serde_json::from_str(LINE).unwrap();
        let v = s.metrics();
        for m in Metric::ALL {
            assert_eq!(metric_names()[m.index()], m.name());
            let expect = s.get(m).unwrap() as f32;
            assert_eq!(v[m.index()], expect, "{}", m.name());
        }
        assert_eq!(v[metric::READ_LAT], 1.2);
    }

    #[test]
    fn round_trips_and_rejects_out_of_range() {
        let mut s: HealthSample = serde_json::from_str(LINE).unwrap();
        let back: HealthSample = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(s, back);
        s.cpu_util = Some(1.5);
        assert_eq!(s.validate().unwrap_err().0, "cpu_util");
        s.cpu_util = None;
        s.disk_read_lat_ms = Some(-1.0);
        assert_eq!(s.validate().unwrap_err().0, "disk_read_lat_ms");
    }

    #[test]
    fn smart_only_samples_are_valid_and_empty_ones_are_not() {
        let line = r#"{"node":"Z300","ts_ms":1,"smart":{"disk":{"5":0,"197":8}}}"#;
        let s: HealthSample = serde_json::from_str(line).unwrap();
        assert!(s.validate().is_ok());
        assert!(!s.has_node_metrics());
        assert_eq!(s.smart.as_ref().unwrap()["disk"]["197"], 8.0);
        assert!(s.metrics().iter().all(|v| v.is_nan()));
        let nothing = HealthSample::empty("x", 1);
        assert_eq!(nothing.validate().unwrap_err().0, "node");
        let bad: HealthSample =
            serde_json::from_str(r#"{"node":"a","ts_ms":1,"smart":{"sda":{"5":-3}}}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "smart");
    }

    #[test]
    fn precursor_is_unknown_without_a_cause() {
        let mut f = FailureRecord {
            node: "n".into(),
            failed_at_ms: 1,
            cause: None,
            precursor_onset_ms: None,
            died_at_ms: None,
        };
        assert_eq!(f.has_precursor(), None);
        f.cause = Some("sudden".into());
        assert_eq!(f.has_precursor(), Some(false));
        f.cause = Some("error_burst".into());
        assert_eq!(f.has_precursor(), Some(true));
    }
}
