//! The cluster of a data-plane run: an `augur local` directory of metadata members and storage
//! nodes, driven through the same `augur local` commands an operator types, plus what the
//! nemeses need that `augur local` does not do (pausing, wiping, finding a process's ports).
//!
//! `augur local` starts every process in its own process group, detached from the command that
//! started it, and records its pid in `meta-N/pid` or `storage-N/pid`. The harness reads those
//! files the way the multi-process tests do (`tests/src/storage.rs`), checks that the pid is a
//! live `augur` process running that role with that config (pids are reused), and signals it
//! directly. Every pid seen is registered for the signal handler's cleanup, and
//! [`LocalCluster::kill_all`] kills whatever is left when the run ends.
//!
//! The processes inherit the environment of the `augur local` command that starts them, which
//! inherits the harness's: a test hook such as `AUGUR_UNSAFE_SKIP_LEASE_CHECK=1` set on
//! `augur-jepsen` reaches every storage node, restarts included.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use augur_client::{ClientConfig, ClusterFile, TlsFiles};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::HarnessError;
use crate::nemesis::{ports, register_pid, unregister_pid, NemesisError};

/// One process of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proc {
    /// A metadata member, by member id (1-based).
    Meta(u64),
    /// A storage node, by node id (1-based).
    Storage(u64),
}

impl Proc {
    /// Its directory's name in the cluster directory, also its name in reports.
    pub fn name(&self) -> String {
        match self {
            Proc::Meta(id) => format!("meta-{id}"),
            Proc::Storage(id) => format!("storage-{id}"),
        }
    }

    /// The `augur` subcommand it runs.
    fn subcommand(&self) -> &'static str {
        match self {
            Proc::Meta(_) => "meta",
            Proc::Storage(_) => "storage",
        }
    }

    /// `--member N` or `--storage N`, as `augur local` takes it.
    fn target_args(&self) -> [String; 2] {
        match self {
            Proc::Meta(id) => ["--member".into(), id.to_string()],
            Proc::Storage(id) => ["--storage".into(), id.to_string()],
        }
    }
}

/// Control-plane timing written into every member's `[control]` table, so that leases,
/// failure detection and re-replication take seconds instead of minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `control.heartbeat_interval_ms`.
    pub heartbeat_ms: u64,
    /// `control.lease_ms`: a storage node serves reads for this long after it sent its last
    /// acknowledged heartbeat.
    pub lease_ms: u64,
    /// `control.grace_ms`: silence before the leader declares a node Down and promotes
    /// another replica.
    pub grace_ms: u64,
    /// `control.suspect_after_ms`.
    pub suspect_ms: u64,
    /// `control.down_delay_ms`: Down this long before a node's replicas are re-created.
    pub down_delay_ms: u64,
}

impl Timing {
    /// The members' defaults (node/src/control/settings.rs) with `down_delay_ms`.
    pub fn defaults(down_delay_ms: u64) -> Timing {
        Timing {
            heartbeat_ms: 1_000,
            lease_ms: 6_000,
            grace_ms: 8_000,
            suspect_ms: 2_500,
            down_delay_ms,
        }
    }

    /// Timing derived from a lease: heartbeats four times per lease, and a grace period that
    /// satisfies the members' safety check (`grace > lease (1 + rho) / (1 - rho) + heartbeat`
    /// with rho = 0.01) with half a second to spare.
    pub fn from_lease(lease_ms: u64, down_delay_ms: u64) -> Timing {
        let heartbeat_ms = (lease_ms / 4).max(100);
        let min_grace = (lease_ms as f64 * 1.01 / 0.99).ceil() as u64 + heartbeat_ms;
        let grace_ms = min_grace + 500;
        Timing {
            heartbeat_ms,
            lease_ms,
            grace_ms,
            suspect_ms: (heartbeat_ms * 2).clamp(300, grace_ms - 100),
            down_delay_ms,
        }
    }

    /// The lines added to a member's `[control]` table: the timing, and the repair and mover
    /// loops every 250 ms (default 1 s) so re-replication steps follow each other quickly.
    fn toml_lines(&self) -> String {
        format!(
            "heartbeat_interval_ms = {}\nlease_ms = {}\ngrace_ms = {}\nsuspect_after_ms = {}\n\
             repair_interval_ms = 250\nmover_interval_ms = 250\n",
            self.heartbeat_ms, self.lease_ms, self.grace_ms, self.suspect_ms
        )
    }
}

/// What the cluster is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Metadata members.
    pub meta: u64,
    /// Storage nodes.
    pub storage: u64,
    /// Shards of the data plane.
    pub shards: u32,
    /// Replicas per shard.
    pub rf: u32,
}

/// A local cluster in `dir`, run by the `augur` binary `augur`.
#[derive(Debug)]
pub struct LocalCluster {
    /// The `augur local` directory.
    pub dir: PathBuf,
    augur: PathBuf,
    /// Its processes' counts and the data plane's layout.
    pub shape: Shape,
}

/// Adds `lines` to the `[control]` table of a member's config, creating the table if absent.
fn add_control_settings(config: &str, lines: &str) -> String {
    match config.find("[control]\n") {
        Some(at) => {
            let after = at + "[control]\n".len();
            format!("{}{lines}{}", &config[..after], &config[after..])
        }
        None => format!("{config}\n[control]\n{lines}"),
    }
}

impl LocalCluster {
    /// A cluster to be created in `dir` (which must not hold one yet).
    pub fn new(dir: PathBuf, augur: PathBuf, shape: Shape) -> Self {
        LocalCluster { dir, augur, shape }
    }

    /// Runs `augur local ARGS --dir DIR` to completion; a failure carries the end of its
    /// output (which includes the last lines of the processes' logs when `up` fails).
    pub fn local(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut cmd = Command::new(&self.augur);
        cmd.arg("local").args(args).arg("--dir").arg(&self.dir);
        let line = format!("augur local {}", args.join(" "));
        let out = cmd
            .output()
            .map_err(|e| HarnessError::Setup(format!("{line}: {e}")))?;
        if !out.status.success() {
            let tail = |b: &[u8]| {
                let s = String::from_utf8_lossy(b);
                let lines: Vec<&str> = s.lines().rev().take(30).collect();
                lines.into_iter().rev().collect::<Vec<_>>().join("\n")
            };
            return Err(HarnessError::Setup(format!(
                "{line} failed ({}):\n{}\n{}",
                out.status,
                tail(&out.stdout),
                tail(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates the cluster: the metadata members (`augur local up --meta M --down-delay-ms`),
    /// then, with the members stopped, `timing` written into their `[control]` tables, then
    /// everything started again with the storage nodes and the data plane (`augur local up
    /// --storage S --shards N --rf R`), which returns once every shard is served.
    pub fn create(&self, timing: Option<Timing>, down_delay_ms: u64) -> Result<(), HarnessError> {
        let s = self.shape;
        let (meta, delay) = (s.meta.to_string(), down_delay_ms.to_string());
        self.local(&[
            "up",
            "--meta",
            &meta,
            "--down-delay-ms",
            &delay,
            "--timeout",
            "120",
        ])?;
        self.register_pids();
        if let Some(t) = timing {
            self.local(&["down"])?;
            for id in 1..=s.meta {
                let path = self.proc_dir(Proc::Meta(id)).join("config.toml");
                let config = std::fs::read_to_string(&path)?;
                std::fs::write(&path, add_control_settings(&config, &t.toml_lines()))?;
            }
        }
        let (storage, shards, rf) = (
            s.storage.to_string(),
            s.shards.to_string(),
            s.rf.to_string(),
        );
        let result = self.local(&[
            "up",
            "--storage",
            &storage,
            "--shards",
            &shards,
            "--rf",
            &rf,
            "--timeout",
            "120",
        ]);
        self.register_pids();
        result.map(|_| ())
    }

    /// Every process of the cluster.
    pub fn procs(&self) -> Vec<Proc> {
        (1..=self.shape.meta)
            .map(Proc::Meta)
            .chain((1..=self.shape.storage).map(Proc::Storage))
            .collect()
    }

    /// The process's directory.
    pub fn proc_dir(&self, p: Proc) -> PathBuf {
        self.dir.join(p.name())
    }

    /// The process's data directory (what a disk loss deletes).
    pub fn data_dir(&self, p: Proc) -> PathBuf {
        self.proc_dir(p).join("data")
    }

    /// The process's log.
    pub fn log(&self, p: Proc) -> PathBuf {
        self.proc_dir(p).join("augur.log")
    }

    /// The pid of the process if it runs: its pid file names a live `augur` process running
    /// that role with that config (the check `augur local` itself makes against pid reuse).
    pub fn pid(&self, p: Proc) -> Option<i32> {
        let dir = self.proc_dir(p);
        let pid: i32 = std::fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let config = dir.join("config.toml");
        (alive(pid)
            && cmdline.contains(p.subcommand())
            && cmdline.contains(&*config.to_string_lossy()))
        .then_some(pid)
    }

    /// Registers every running process's pid for the signal handler's cleanup.
    pub fn register_pids(&self) {
        for p in self.procs() {
            if let Some(pid) = self.pid(p) {
                unregister_pid(pid);
                register_pid(pid);
            }
        }
    }

    /// Sends `sig` to the process; its pid, or an error if it does not run.
    pub fn signal(&self, p: Proc, sig: Signal) -> Result<i32, NemesisError> {
        let pid = self
            .pid(p)
            .ok_or_else(|| NemesisError::Invalid(format!("{} is not running", p.name())))?;
        kill(Pid::from_raw(pid), sig)?;
        Ok(pid)
    }

    /// Kills the process with SIGKILL (after SIGCONT, so a paused one dies too) and waits
    /// until it is gone. Returns whether it was running.
    pub async fn kill(&self, p: Proc) -> Result<bool, NemesisError> {
        let Some(pid) = self.pid(p) else {
            return Ok(false);
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            if Instant::now() >= deadline {
                return Err(NemesisError::Invalid(format!(
                    "{} (pid {pid}) still alive 10 s after SIGKILL",
                    p.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        unregister_pid(pid);
        Ok(true)
    }

    /// Starts the process if it does not run (`augur local start`), and registers its pid.
    pub fn start(&self, p: Proc) -> Result<(), HarnessError> {
        let [flag, id] = p.target_args();
        self.local(&["start", &flag, &id])?;
        if let Some(pid) = self.pid(p) {
            register_pid(pid);
        }
        Ok(())
    }

    /// Deletes the process's data directory (it must not be running).
    pub fn wipe(&self, p: Proc) -> Result<(), NemesisError> {
        if self.pid(p).is_some() {
            return Err(NemesisError::Invalid(format!(
                "{} runs: kill it before deleting its data",
                p.name()
            )));
        }
        match std::fs::remove_dir_all(self.data_dir(p)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The UDP ports the process holds now.
    pub fn ports(&self, p: Proc) -> Result<BTreeSet<u16>, NemesisError> {
        let pid = self
            .pid(p)
            .ok_or_else(|| NemesisError::Invalid(format!("{} is not running", p.name())))?;
        ports::udp_ports_of(pid)
    }

    /// Kills every process of the cluster (SIGCONT, then SIGKILL); data and logs stay.
    pub fn kill_all(&self) {
        for p in self.procs() {
            if let Some(pid) = self.pid(p) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                unregister_pid(pid);
            }
        }
    }

    /// The cluster file written by `augur local up`.
    pub fn cluster_file(&self) -> Result<ClusterFile, HarnessError> {
        Ok(ClusterFile::load(&self.dir.join("cluster.toml"))?)
    }

    /// A client configuration with the cluster file's operator certificate (operators may
    /// use the data API, probe storage nodes and ask them for checkpoints).
    pub fn client_config(&self, op_timeout: Duration) -> Result<ClientConfig, HarnessError> {
        let f = self.cluster_file()?;
        let mut c = ClientConfig::new(f.endpoints, f.tls);
        c.request_timeout = op_timeout;
        c.attempt_timeout = op_timeout.min(Duration::from_secs(1));
        c.connect_timeout = Duration::from_secs(1);
        Ok(c)
    }

    /// The operator certificate's files.
    pub fn tls(&self) -> Result<TlsFiles, HarnessError> {
        Ok(self.cluster_file()?.tls)
    }

    /// The last `n` lines of a process's log.
    pub fn log_tail(&self, p: Proc, n: usize) -> String {
        let text = std::fs::read_to_string(self.log(p)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(n).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

/// Whether `pid` is alive and not a zombie.
fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_from_a_lease_passes_the_members_safety_check() {
        for lease in [500u64, 2_000, 6_000, 30_000] {
            let t = Timing::from_lease(lease, 1_000);
            let rho = 0.01;
            let min = t.lease_ms as f64 * (1.0 + rho) / (1.0 - rho) + t.heartbeat_ms as f64;
            assert!(t.grace_ms as f64 > min, "{t:?}");
            assert!(t.lease_ms > t.heartbeat_ms);
            assert!(t.suspect_ms < t.grace_ms && t.suspect_ms > 250, "{t:?}");
        }
    }

    #[test]
    fn control_settings_go_into_the_control_table() {
        let lines = "lease_ms = 2000\n";
        let with = "id = 1\n\n[control]\ndown_delay_ms = 2000\n";
        let out = add_control_settings(with, lines);
        assert_eq!(
            out,
            "id = 1\n\n[control]\nlease_ms = 2000\ndown_delay_ms = 2000\n"
        );
        let without = "id = 1\n";
        assert_eq!(
            add_control_settings(without, lines),
            "id = 1\n\n[control]\nlease_ms = 2000\n"
        );
    }

    #[test]
    fn names_and_flags() {
        assert_eq!(Proc::Meta(2).name(), "meta-2");
        assert_eq!(Proc::Storage(5).name(), "storage-5");
        assert_eq!(Proc::Storage(5).target_args(), ["--storage", "5"]);
    }
}
