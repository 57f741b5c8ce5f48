//! The Linux collector: /proc for CPU, memory, disk, network and TCP counters, /sys for
//! temperature and power supplies, /dev/kmsg for hardware error lines.
//!
//! Every counter the kernel keeps cumulatively is turned into a per-interval delta here, so a
//! sample stands on its own; the first call only primes the counters and yields no sample.
//! Sensors that do not exist become `null`, and so does a latency in an interval without I/O
//! and the peer RTT / loss until the node has measured them, and the TCP retransmission share
//! while /proc/net/snmp cannot be read. A kernel log we may not read (no privilege) counts
//! zero errors and is reported once in the log: the node models were trained with that
//! channel always present, and read it missing as risk (healthy nodes scored about 0.35
//! instead of 0.01 with `default.model`). SMART comes from smartmontools once per
//! period (see [`super::smart`]), read from the physical disks under the data device (a
//! partition's disk, the members of an LVM or md device), since those are what fail.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use procfs::{Current, CurrentSI, DiskStat, KernelStats, Meminfo};

use super::smart::SmartPoller;
use super::sysfs::{physical_disks, read_power_supply, read_temperature};
use super::{AgentError, Collector};
use crate::sample::HealthSample;

/// Collector settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxConfig {
    /// Node id written into samples.
    pub node: String,
    /// Block device holding shard data, as named in /proc/diskstats (e.g. `nvme0n1`).
    pub data_device: String,
    /// Interfaces whose errors count; empty means the physical ones (those backed by a
    /// device in sysfs), or every interface but `lo` on a machine with none (a container's
    /// veth). Virtual interfaces (bridges, veths, tunnels) mostly repeat or hide what the
    /// physical ones see, and containers starting and stopping churn them.
    pub interfaces: Vec<String>,
    /// Root of sysfs (tests point this at a fixture).
    pub sys_root: PathBuf,
    /// Whether to follow /dev/kmsg for error lines.
    pub kmsg: bool,
    /// Devices whose SMART is read (as under /dev); empty disables SMART. Each is read
    /// through the physical disks under it ([`super::sysfs::physical_disks`], resolved when
    /// the collector starts): by default the data device's.
    pub smart_devices: Vec<String>,
    /// Time between SMART readings, ms (SMART changes over hours; reading it costs a
    /// command per device).
    pub smart_period_ms: u64,
    /// The smartctl program (smartmontools 7 or later, for `--json`).
    pub smartctl: PathBuf,
}

impl LinuxConfig {
    /// Defaults for `node` storing data on `data_device`.
    pub fn new(node: &str, data_device: &str) -> Self {
        LinuxConfig {
            node: node.to_string(),
            data_device: data_device.to_string(),
            interfaces: Vec::new(),
            sys_root: PathBuf::from("/sys"),
            kmsg: true,
            smart_devices: vec![data_device.to_string()],
            smart_period_ms: 3_600_000,
            smartctl: PathBuf::from("smartctl"),
        }
    }
}

/// The interfaces whose error counters count (see [`LinuxConfig::interfaces`]), out of
/// `present`.
fn counted_interfaces<'a>(
    config: &LinuxConfig,
    present: impl Iterator<Item = &'a str> + Clone,
) -> Vec<&'a str> {
    if !config.interfaces.is_empty() {
        return present
            .filter(|n| config.interfaces.iter().any(|i| i == n))
            .collect();
    }
    let net = config.sys_root.join("class/net");
    let physical: Vec<&str> = present
        .clone()
        .filter(|n| net.join(n).join("device").exists())
        .collect();
    if physical.is_empty() {
        present.filter(|n| *n != "lo").collect()
    } else {
        physical
    }
}

/// Peer network quality, supplied by the node from its QUIC connections (the agent cannot
/// measure RTT and loss to peers by itself).
///
/// Until the node calls [`PeerNetwork::set`], samples carry no RTT and no loss (`null`): a
/// node that has not talked to a peer yet has not measured a perfect network.
#[derive(Debug, Clone, Default)]
pub struct PeerNetwork {
    inner: Arc<Mutex<Option<(f64, f64)>>>,
}

impl PeerNetwork {
    /// Records the latest smoothed RTT (ms) and loss (percent) across peers.
    pub fn set(&self, rtt_ms: f64, loss_pct: f64) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *g = Some((rtt_ms.max(0.0), loss_pct.clamp(0.0, 100.0)));
    }

    fn get(&self) -> Option<(f64, f64)> {
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a kernel log record counts as an error: priority err or worse, or a known disk,
/// memory or PCIe failure pattern at any priority (drivers log some of those as warnings).
///
/// Corrected errors do not count, whatever their priority: ECC and PCIe AER report every
/// error they corrected, and some healthy machines log them by the hundred a day. They say
/// the hardware worked; counting them made chronically chatty nodes look like failing ones.
pub fn is_error_record(record: &str) -> bool {
    let (prefix, message) = record.split_once(';').unwrap_or(("", record));
    if is_corrected_report(message) {
        return false;
    }
    let priority = prefix
        .split(',')
        .next()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .map(|p| p & 7);
    if priority.is_some_and(|p| p <= 3) {
        return true;
    }
    const PATTERNS: [&str; 14] = [
        "i/o error",
        "blk_update_request",
        "medium error",
        "uncorrectable",
        "edac",
        "machine check",
        "mce:",
        "hardware error",
        "aer:",
        "pcie bus error",
        "nvme",
        "ata bus error",
        "reset controller",
        "timeout",
    ];
    let m = message.to_ascii_lowercase();
    // "nvme" and "timeout" alone are too broad; they count only together with a failure word.
    PATTERNS
        .iter()
        .take(12)
        .any(|p| m.contains(p) && (*p != "nvme" || m.contains("error") || m.contains("timeout")))
        || (m.contains("timeout") && (m.contains("i/o") || m.contains("command")))
        || m.contains("reset controller")
}

/// A report of an error the hardware corrected ("AER: Corrected error received", EDAC's
/// "CE" lines, "corrected ... error" from MCE), as opposed to an uncorrected one.
fn is_corrected_report(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    if m.contains("uncorrect") || m.contains(" ue ") {
        return false;
    }
    m.contains("corrected") || (m.contains("edac") && m.contains(" ce "))
}

#[derive(Debug, Clone, Default)]
struct Counters {
    cpu_busy: u64,
    cpu_total: u64,
    /// The data device's counters; `None` while the kernel does not list it (a disk that
    /// dropped off the bus, the very failure the agent watches for).
    disk: Option<DiskCounters>,
    /// Error and drop counters of each counted interface, by name: each is compared with
    /// its own earlier value, so an interface that appears adds nothing for its history.
    net_errors: BTreeMap<String, u64>,
    /// Segments sent and retransmitted (`None` while /proc/net/snmp cannot be read).
    tcp: Option<(u64, u64)>,
    at_ms: i64,
}

/// One block device's counters, with its device number: a device that comes back under the
/// same name may be another one, whose counters are not comparable.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DiskCounters {
    dev: (i32, i32),
    reads: u64,
    read_ms: u64,
    writes: u64,
    write_ms: u64,
    sectors_read: u64,
    sectors_written: u64,
    io_ticks_ms: u64,
}

/// Samples the local machine.
pub struct LinuxCollector {
    config: LinuxConfig,
    peers: PeerNetwork,
    previous: Option<Counters>,
    kmsg_errors: Arc<AtomicU64>,
    kmsg_seen: u64,
    smart: Option<SmartPoller>,
}

impl LinuxCollector {
    /// Checks that the data device exists and starts following the kernel log.
    pub fn new(config: LinuxConfig, peers: PeerNetwork) -> Result<Self, AgentError> {
        let disks = procfs::diskstats().map_err(|e| AgentError::Procfs(e.to_string()))?;
        if !disks.iter().any(|d| d.name == config.data_device) {
            return Err(AgentError::NoSuchDevice {
                device: config.data_device.clone(),
                available: disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let kmsg_errors = Arc::new(AtomicU64::new(0));
        if config.kmsg {
            follow_kmsg(kmsg_errors.clone());
        }
        let smart = (!config.smart_devices.is_empty() && config.smart_period_ms > 0).then(|| {
            let mut disks: Vec<String> = config
                .smart_devices
                .iter()
                .flat_map(|d| physical_disks(&config.sys_root, d))
                .collect();
            disks.sort();
            disks.dedup();
            tracing::info!(data_device = %config.data_device, disks = ?disks, "reading SMART of these disks");
            SmartPoller::start(
                config.smartctl.clone(),
                disks,
                std::time::Duration::from_millis(config.smart_period_ms),
            )
        });
        Ok(LinuxCollector {
            config,
            peers,
            previous: None,
            kmsg_errors,
            kmsg_seen: 0,
            smart,
        })
    }

    fn counters(&self, now_ms: i64) -> Result<Counters, AgentError> {
        let procfs_err = |e: procfs::ProcError| AgentError::Procfs(e.to_string());
        let stat = KernelStats::current().map_err(procfs_err)?;
        let t = &stat.total;
        let idle = t.idle + t.iowait.unwrap_or(0);
        let total = t.user
            + t.nice
            + t.system
            + idle
            + t.irq.unwrap_or(0)
            + t.softirq.unwrap_or(0)
            + t.steal.unwrap_or(0);
        let disk: Option<DiskStat> = procfs::diskstats()
            .map_err(procfs_err)?
            .into_iter()
            .find(|d| d.name == self.config.data_device);
        let devs = procfs::net::dev_status().map_err(procfs_err)?;
        let counted = counted_interfaces(&self.config, devs.keys().map(String::as_str));
        let net_errors = counted
            .into_iter()
            .filter_map(|n| {
                let d = devs.get(n)?;
                Some((
                    n.to_string(),
                    d.recv_errs + d.recv_drop + d.sent_errs + d.sent_drop,
                ))
            })
            .collect();
        let tcp = procfs::net::snmp()
            .ok()
            .map(|s| (s.tcp_out_segs, s.tcp_retrans_segs));
        Ok(Counters {
            cpu_busy: total - idle,
            cpu_total: total,
            disk: disk.map(|d| DiskCounters {
                dev: (d.major, d.minor),
                reads: d.reads,
                read_ms: d.time_reading,
                writes: d.writes,
                write_ms: d.time_writing,
                sectors_read: d.sectors_read,
                sectors_written: d.sectors_written,
                io_ticks_ms: d.time_in_progress,
            }),
            net_errors,
            tcp,
            at_ms: now_ms,
        })
    }
}

/// Reads /dev/kmsg on a background thread (reads block until the next record), counting error
/// records. Starts at the end of the ring buffer so old boot messages do not count.
fn follow_kmsg(counter: Arc<AtomicU64>) {
    let spawned = std::thread::Builder::new()
        .name("augur-kmsg".into())
        .spawn(move || {
            let path = Path::new("/dev/kmsg");
            let mut file = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read /dev/kmsg: err_log_count will stay 0");
                    return;
                }
            };
            if let Err(e) = file.seek(SeekFrom::End(0)) {
                tracing::warn!(error = %e, "cannot seek /dev/kmsg; counting from the start");
            }
            // /dev/kmsg returns one record per read; a small buffer per line is enough.
            let mut reader = BufReader::with_capacity(8192, file);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        if is_error_record(&line) {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // EPIPE: records were overwritten before we read them; keep going.
                    Err(e) if e.raw_os_error() == Some(32) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "stopped reading /dev/kmsg");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the kmsg reader");
    }
}

/// New error and drop counts between two readings of the interfaces' counters: each
/// interface against its own earlier value, so one that appeared (a container's veth, a
/// replaced NIC) or vanished between them adds nothing.
fn net_errors_between(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> u64 {
    now.iter()
        .filter_map(|(name, &n)| Some(delta(n, *before.get(name)?)))
        .sum()
}

fn delta(now: u64, before: u64) -> u64 {
    // Counters can reset (device re-attached, 32-bit wrap): treat as a fresh start.
    now.saturating_sub(before)
}

impl Collector for LinuxCollector {
    fn collect(&mut self, now_ms: i64) -> Result<Option<HealthSample>, AgentError> {
        let now = self.counters(now_ms)?;
        let kmsg_total = self.kmsg_errors.load(Ordering::Relaxed);
        let err_log_count = kmsg_total - self.kmsg_seen.min(kmsg_total);
        self.kmsg_seen = kmsg_total;
        let Some(prev) = self.previous.replace(now.clone()) else {
            // Priming: every delta would be zero.
            return Ok(None);
        };
        let elapsed_ms = (now.at_ms - prev.at_ms).max(1) as f64;
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        // The disk's figures need its counters at both ends, from the same device: while it
        // is missing, and for the first interval after it returns (possibly as another
        // device), they are unmeasured, and every other figure is still reported.
        let disk = match (now.disk, prev.disk) {
            (Some(n), Some(p)) if n.dev == p.dev => Some((n, p)),
            (None, _) => {
                if prev.disk.is_some() {
                    tracing::warn!(device = %self.config.data_device, "the data device is no longer listed by the kernel");
                }
                None
            }
            _ => None,
        };
        let mem = Meminfo::current().map_err(|e| AgentError::Procfs(e.to_string()))?;
        let available = mem
            .mem_available
            .unwrap_or(mem.mem_free + mem.buffers + mem.cached);
        let peers = self.peers.get();
        let net_errors = net_errors_between(&now.net_errors, &prev.net_errors);
        let tcp = match (now.tcp, prev.tcp) {
            (Some((out, re)), Some((p_out, p_re))) => Some((delta(out, p_out), delta(re, p_re))),
            _ => None,
        };
        let mbps = |sectors: u64| sectors as f64 * 512.0 / 1e6 / (elapsed_ms / 1000.0);
        Ok(Some(HealthSample {
            node: self.config.node.clone(),
            ts_ms: now_ms,
            cpu_util: ratio(
                delta(now.cpu_busy, prev.cpu_busy),
                delta(now.cpu_total, prev.cpu_total),
            )
            .map(|v| v.clamp(0.0, 1.0)),
            mem_util: ratio(available, mem.mem_total).map(|a| (1.0 - a).clamp(0.0, 1.0)),
            // No I/O in the interval: no latency was observed, which is not a latency of 0.
            disk_read_lat_ms: disk
                .and_then(|(n, p)| ratio(delta(n.read_ms, p.read_ms), delta(n.reads, p.reads))),
            disk_write_lat_ms: disk
                .and_then(|(n, p)| ratio(delta(n.write_ms, p.write_ms), delta(n.writes, p.writes))),
            disk_read_mbps: disk.map(|(n, p)| mbps(delta(n.sectors_read, p.sectors_read))),
            disk_write_mbps: disk.map(|(n, p)| mbps(delta(n.sectors_written, p.sectors_written))),
            disk_util: disk.map(|(n, p)| {
                (delta(n.io_ticks_ms, p.io_ticks_ms) as f64 / elapsed_ms).clamp(0.0, 1.0)
            }),
            net_rtt_ms: peers.map(|p| p.0),
            net_loss_pct: peers.map(|p| p.1),
            net_errors: Some(net_errors),
            err_log_count: Some(err_log_count),
            temp_c: read_temperature(&self.config.sys_root),
            psu_ok: read_power_supply(&self.config.sys_root),
            tcp_retrans_pct: tcp
                .filter(|(out, _)| *out > 0)
                .map(|(out, re)| 100.0 * re as f64 / out as f64),
            smart: self.smart.as_ref().and_then(SmartPoller::take),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_kernel_records() {
        assert!(is_error_record("3,1234,5678,-;something failed"));
        assert!(!is_error_record("6,1,2,-;eth0: link up"));
        assert!(is_error_record(
            "4,9,9,-;blk_update_request: I/O error, dev sda, sector 42"
        ));
        assert!(is_error_record(
            "4,9,9,-;nvme nvme0: I/O 12 QID 3 timeout, reset controller"
        ));
        assert!(!is_error_record(
            "6,1,1,-;nvme nvme0: 8/0/0 default/read/poll queues"
        ));
        // Corrected errors are the hardware working, at any priority.
        assert!(!is_error_record(
            "3,1,1,-;pcieport 0000:00:1c.0: AER: Corrected error received: 0000:01:00.0"
        ));
        assert!(!is_error_record(
            "3,1,1,-;EDAC MC0: 1 CE memory read error on CPU_SrcID#0_Ha#0_Chan#1_DIMM#0"
        ));
        assert!(is_error_record(
            "3,1,1,-;EDAC MC0: 1 UE memory read error on CPU_SrcID#0_Ha#0_Chan#1_DIMM#0"
        ));
        assert!(is_error_record(
            "3,1,1,-;pcieport 0000:00:1c.0: AER: Uncorrected (Fatal) error received"
        ));
    }

    /// By default only interfaces backed by a device count (not bridges or veths), unless the
    /// machine has none; a configured list counts exactly its names.
    #[test]
    fn errors_count_on_physical_interfaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = LinuxConfig::new("n", "sda");
        cfg.sys_root = dir.path().to_path_buf();
        let present = ["lo", "eth0", "docker0", "veth1a2b", "eno1"];
        let counted = |cfg: &LinuxConfig| {
            let mut c = counted_interfaces(cfg, present.iter().copied());
            c.sort();
            c
        };
        assert_eq!(counted(&cfg), ["docker0", "eno1", "eth0", "veth1a2b"]);
        for nic in ["eth0", "eno1"] {
            std::fs::create_dir_all(dir.path().join("class/net").join(nic).join("device")).unwrap();
        }
        assert_eq!(counted(&cfg), ["eno1", "eth0"]);
        cfg.interfaces = vec!["veth1a2b".into(), "absent".into()];
        assert_eq!(counted(&cfg), ["veth1a2b"]);
    }

    /// An interface's counters count only against its own earlier reading.
    #[test]
    fn a_new_interface_brings_no_history() {
        let m = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
        };
        let before = m(&[("eth0", 10), ("eth1", 500)]);
        let now = m(&[("eth0", 13), ("eth2", 9_000)]);
        assert_eq!(net_errors_between(&now, &before), 3);
        // A counter that went back (a re-created interface) starts afresh.
        assert_eq!(net_errors_between(&m(&[("eth0", 2)]), &before), 0);
    }

    #[test]
    fn collects_from_this_machine() {
        let disks = match procfs::diskstats() {
            Ok(d) if !d.is_empty() => d,
            _ => return, // no /proc/diskstats in this sandbox: nothing to sample
        };
        let mut cfg = LinuxConfig::new("local", &disks[0].name);
        cfg.kmsg = false;
        cfg.smart_devices.clear();
        let peers = PeerNetwork::default();
        let mut c = LinuxCollector::new(cfg, peers.clone()).unwrap();
        assert_eq!(c.collect(1_000).unwrap(), None, "priming yields no sample");
        let s = c.collect(2_000).unwrap().unwrap();
        assert!(s.validate().is_ok(), "{s:?}");
        assert_eq!(
            (s.net_rtt_ms, s.net_loss_pct),
            (None, None),
            "not measured yet"
        );
        // CPU may show no elapsed jiffy between two immediate calls (then it is null, not
        // 0); memory and disk utilisation are always there.
        assert!(s.mem_util.is_some() && s.disk_util.is_some());
        // An unread kernel log counts 0, never null: the node model reads null as risk.
        assert_eq!(s.err_log_count, Some(0));
        peers.set(0.7, 0.1);
        let s = c.collect(3_000).unwrap().unwrap();
        assert_eq!(s.net_rtt_ms, Some(0.7));
        let missing = LinuxCollector::new(
            LinuxConfig::new("x", "no-such-disk"),
            PeerNetwork::default(),
        );
        assert!(matches!(missing, Err(AgentError::NoSuchDevice { .. })));
    }
}
