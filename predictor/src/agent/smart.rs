//! SMART readings through smartmontools (`smartctl --json`), for the Linux collector.
//!
//! Reading SMART takes from tens of milliseconds to seconds (a busy disk answers slowly) and
//! the values change over hours, so a background thread reads every data device once per
//! period and leaves the result in a slot; the next sample picks it up. A missing `smartctl`,
//! a device without SMART or a USB bridge that hides it are not errors: the node then simply
//! reports no SMART, which is what it can see.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

use crate::sample::{SmartAttributes, SmartReadings};

/// ATA attributes whose raw value packs more than the value itself (min / max temperature,
/// vendor bytes above the hours): keep only the low bits that hold the reading.
fn ata_raw(id: u64, raw: u64) -> u64 {
    match id {
        190 | 194 => raw & 0xFF,
        9 => raw & 0xFFFF_FFFF,
        _ => raw,
    }
}

/// Parses the JSON that `smartctl --json -a DEVICE` prints: ATA attribute raw values by id,
/// NVMe health-log fields by name. `None` when the output holds neither (no SMART, unknown
/// device type, or not JSON at all).
pub fn parse_smartctl_json(text: &str) -> Option<SmartAttributes> {
    let v: Value = serde_json::from_str(text).ok()?;
    let mut out = SmartAttributes::new();
    if let Some(table) = v
        .pointer("/ata_smart_attributes/table")
        .and_then(Value::as_array)
    {
        for attr in table {
            let id = attr.get("id").and_then(Value::as_u64);
            let raw = attr.pointer("/raw/value").and_then(Value::as_u64);
            if let (Some(id), Some(raw)) = (id, raw) {
                out.insert(id.to_string(), ata_raw(id, raw) as f64);
            }
        }
    }
    if let Some(log) = v
        .get("nvme_smart_health_information_log")
        .and_then(Value::as_object)
    {
        for (name, value) in log {
            // Scalars only: `temperature_sensors` is an array of per-sensor readings.
            if let Some(x) = value.as_f64().filter(|x| x.is_finite() && *x >= 0.0) {
                out.insert(name.clone(), x);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// How long one `smartctl` call may take before it is killed. A healthy device answers in
/// well under a second; a failing one that hangs must not stop the others' readings.
pub const SMARTCTL_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of `smartctl`'s output read (its JSON for one device is tens of KiB).
const MAX_OUTPUT: u64 = 4 << 20;

/// Why one device could not be read (logged, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum SmartError {
    /// `smartctl` is not installed or could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program tried.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// smartctl did not finish within [`SMARTCTL_TIMEOUT`] (a hung disk or bridge): killed.
    #[error("{device}: smartctl did not answer in time; killed")]
    Timeout {
        /// The device.
        device: String,
    },
    /// smartctl ran but reported no SMART data for the device.
    #[error("{device}: no SMART data (smartctl exit status {status})")]
    NoData {
        /// The device.
        device: String,
        /// smartctl's exit status (a bit mask; bits 0-1 mean it could not even open it).
        status: i32,
    },
}

/// Reads one device with `smartctl --json -n standby -a /dev/DEVICE`, killing it after
/// [`SMARTCTL_TIMEOUT`]. `-n standby`: a disk spun down is left asleep (smartctl then reads
/// nothing and the device is missing from that reading); waking a spare disk every hour to
/// ask how it is would wear it.
pub fn read_device(smartctl: &Path, device: &str) -> Result<SmartAttributes, SmartError> {
    read_device_within(smartctl, device, SMARTCTL_TIMEOUT)
}

/// [`read_device`] with its own deadline.
fn read_device_within(
    smartctl: &Path,
    device: &str,
    timeout: Duration,
) -> Result<SmartAttributes, SmartError> {
    let path = if device.starts_with('/') {
        device.to_string()
    } else {
        format!("/dev/{device}")
    };
    let spawn_err = |source| SmartError::Spawn {
        program: smartctl.to_path_buf(),
        source,
    };
    let mut child = Command::new(smartctl)
        .args(["--json", "-n", "standby", "-a", &path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(spawn_err)?;
    // Its output is read on a thread of its own while this one watches the clock: a smartctl
    // stuck on a failing disk (or a USB bridge) would otherwise hold the reader, and every
    // device's readings, for good.
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.take(MAX_OUTPUT).read_to_end(&mut text);
        }
        text
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(spawn_err)? {
            Some(status) => break status,
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SmartError::Timeout {
                    device: device.to_string(),
                });
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let text = reader.join().unwrap_or_default();
    // smartctl's exit status is a bit mask: bits 2-7 report what it found (a failing disk,
    // logged errors) while still printing the attributes, so parse whatever it printed.
    let status = status.code().unwrap_or(-1);
    parse_smartctl_json(&String::from_utf8_lossy(&text)).ok_or(SmartError::NoData {
        device: device.to_string(),
        status,
    })
}

/// Reads every device; devices without SMART are left out, `None` when none has any.
pub fn read_devices(smartctl: &Path, devices: &[String]) -> Option<SmartReadings> {
    let mut readings = SmartReadings::new();
    for d in devices {
        match read_device(smartctl, d) {
            Ok(attrs) => {
                readings.insert(d.clone(), attrs);
            }
            Err(e @ SmartError::Spawn { .. }) => {
                tracing::debug!(error = %e, "no SMART: smartctl unavailable");
                return None;
            }
            Err(e @ SmartError::Timeout { .. }) => {
                tracing::warn!(error = %e, "SMART reading of a device hung")
            }
            Err(e) => tracing::debug!(error = %e, "no SMART for device"),
        }
    }
    (!readings.is_empty()).then_some(readings)
}

/// The background reader: reads all devices at start and then once per period, leaving each
/// result for [`SmartPoller::take`]. Stops when dropped.
pub struct SmartPoller {
    latest: Arc<Mutex<Option<SmartReadings>>>,
    _stop: Sender<()>,
}

impl SmartPoller {
    /// Starts reading `devices` with `smartctl` every `period`.
    pub fn start(smartctl: PathBuf, devices: Vec<String>, period: Duration) -> SmartPoller {
        let latest = Arc::new(Mutex::new(None));
        let (stop, stopped) = channel::<()>();
        let slot = latest.clone();
        let spawned = std::thread::Builder::new()
            .name("augur-smart".into())
            .spawn(move || {
                let mut warned = false;
                loop {
                    let r = read_devices(&smartctl, &devices);
                    if r.is_none() && !warned {
                        tracing::info!(
                            devices = ?devices,
                            "no SMART readings (smartctl missing or devices without SMART); samples carry no `smart`"
                        );
                        warned = true;
                    }
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = r;
                    match stopped.recv_timeout(period) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        // The collector was dropped (or asked us to stop).
                        _ => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the SMART reader");
        }
        SmartPoller {
            latest,
            _stop: stop,
        }
    }

    /// The reading taken since the last call, if any (so each reading is sent once).
    pub fn take(&self) -> Option<SmartReadings> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `smartctl 7.3 --json -a /dev/sda` of a SATA disk.
    const ATA: &str = r#"{
      "json_format_version": [1, 0],
      "smartctl": {"version": [7, 3], "exit_status": 0},
      "device": {"name": "/dev/sda", "type": "sat", "protocol": "ATA"},
      "ata_smart_attributes": {"revision": 16, "table": [
        {"id": 5, "name": "Reallocated_Sector_Ct", "value": 100, "raw": {"value": 8, "string": "8"}},
        {"id": 9, "name": "Power_On_Hours", "value": 90, "raw": {"value": 8761, "string": "8761"}},
        {"id": 194, "name": "Temperature_Celsius", "value": 64, "raw": {"value": 193273528356, "string": "36 (Min/Max 18/45)"}},
        {"id": 197, "name": "Current_Pending_Sector", "value": 100, "raw": {"value": 0, "string": "0"}}
      ]},
      "temperature": {"current": 36}
    }"#;

    /// Trimmed from `smartctl --json -a /dev/nvme0`.
    const NVME: &str = r#"{
      "device": {"name": "/dev/nvme0", "type": "nvme", "protocol": "NVMe"},
      "nvme_smart_health_information_log": {
        "critical_warning": 0, "temperature": 41, "available_spare": 100,
        "available_spare_threshold": 10, "percentage_used": 3, "media_errors": 2,
        "num_err_log_entries": 14, "unsafe_shutdowns": 9,
        "temperature_sensors": [41, 45]
      }
    }"#;

    #[test]
    fn parses_ata_and_nvme_and_nothing_else() {
        let ata = parse_smartctl_json(ATA).unwrap();
        assert_eq!(ata["5"], 8.0);
        assert_eq!(ata["9"], 8761.0);
        assert_eq!(ata["194"], 36.0, "packed min/max stripped");
        assert_eq!(ata.len(), 4);
        let nvme = parse_smartctl_json(NVME).unwrap();
        assert_eq!(nvme["media_errors"], 2.0);
        assert_eq!(nvme["percentage_used"], 3.0);
        assert!(!nvme.contains_key("temperature_sensors"));
        // A USB stick without SMART, an error message, garbage.
        let none = r#"{"device": {"name": "/dev/sdb"}, "smartctl": {"exit_status": 4}}"#;
        assert_eq!(parse_smartctl_json(none), None);
        assert_eq!(parse_smartctl_json("Smartctl open device failed"), None);
    }

    /// On a machine with smartmontools, reading its first disk yields attributes or "no
    /// SMART" (a VM's virtio disk has none), never a failure of the reader itself.
    #[test]
    fn reads_this_machines_disk_when_smartctl_is_installed() {
        let smartctl = Path::new("smartctl");
        let Ok(disks) = procfs::diskstats() else {
            println!("SKIPPED reads_this_machines_disk (no /proc/diskstats)");
            return;
        };
        let Some(disk) = disks.iter().find(|d| !d.name.starts_with("loop")) else {
            println!("SKIPPED reads_this_machines_disk (no disk)");
            return;
        };
        match read_device(smartctl, &disk.name) {
            Ok(attrs) => assert!(!attrs.is_empty()),
            Err(SmartError::NoData { device, .. }) => assert_eq!(device, disk.name),
            Err(SmartError::Spawn { .. }) => {
                println!("SKIPPED reads_this_machines_disk (smartctl not installed)")
            }
            Err(e @ SmartError::Timeout { .. }) => panic!("{e}"),
        }
    }

    /// A smartctl that hangs (a failing disk, a stuck bridge) is killed at the deadline.
    #[test]
    fn a_hung_smartctl_is_killed_at_its_deadline() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("smartctl");
        std::fs::write(&fake, "#!/bin/sh\nsleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let r = read_device_within(&fake, "sda", Duration::from_millis(300));
        assert!(matches!(r, Err(SmartError::Timeout { .. })), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn missing_smartctl_means_no_smart_not_an_error() {
        let missing = Path::new("/nonexistent/smartctl");
        assert!(matches!(
            read_device(missing, "sda"),
            Err(SmartError::Spawn { .. })
        ));
        assert_eq!(read_devices(missing, &["sda".into()]), None);
        let poller = SmartPoller::start(
            missing.to_path_buf(),
            vec!["sda".into()],
            Duration::from_secs(3600),
        );
        // The first read fails at once; whenever it lands, it leaves nothing to send.
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < deadline {
            assert_eq!(poller.take(), None);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
