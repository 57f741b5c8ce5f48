//! Nemeses: the faults a run injects into real `augur meta` processes.
//!
//! Everything here acts on the real system (a network namespace, nftables, signals, libfaketime)
//! and needs what that needs: root for namespaces and nftables, the `ip` and `nft` binaries, and
//! the libfaketime library. When something is missing the nemesis reports itself as
//! [`NemesisError::Unavailable`] and the run records it as not injected; nothing is simulated.
//!
//! Anything created (namespaces, child processes) is registered so that [`cleanup_registered`]
//! — called by the RAII guards' `Drop` and by the signal handler from
//! [`install_signal_cleanup`] — removes it even when the harness is interrupted.

pub mod clock;
pub mod executor;
pub mod netns;
pub mod partition;
pub mod ports;
pub mod process;
pub mod schedule;
pub mod timeline;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Why a nemesis could not act.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    /// The machine lacks what this nemesis needs (root, a binary, a library).
    #[error("{nemesis} unavailable: {reason}")]
    Unavailable {
        /// Which nemesis.
        nemesis: &'static str,
        /// What is missing.
        reason: String,
    },
    /// An external command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A caller passed something unusable (bad namespace name, unknown node...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The cluster-control callback (leader lookup, membership change) failed.
    #[error("cluster control: {0}")]
    Control(String),
    /// The fault was not injected because it would break a rule of the run: a second member
    /// losing its data while one is still lost.
    #[error("refused: {0}")]
    Refused(String),
    /// Sending a signal failed.
    #[error("signal: {0}")]
    Signal(#[from] nix::Error),
    /// File or process I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl NemesisError {
    /// True when the fault was not injected because the machine cannot do it.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, NemesisError::Unavailable { .. })
    }
}

/// True when running as root (needed for namespaces and nftables).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Finds an executable on `PATH` or in the sbin directories, which `PATH` often lacks.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Checks root and the named programs, for nemesis `nemesis`.
pub(crate) fn require(
    nemesis: &'static str,
    programs: &[&str],
) -> Result<Vec<PathBuf>, NemesisError> {
    if !is_root() {
        return Err(NemesisError::Unavailable {
            nemesis,
            reason: "not running as root".into(),
        });
    }
    programs
        .iter()
        .map(|p| {
            find_program(p).ok_or_else(|| NemesisError::Unavailable {
                nemesis,
                reason: format!("`{p}` not found"),
            })
        })
        .collect()
}

/// Runs a command to completion, feeding `stdin`; non-zero exit is an error with its stderr.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String, NemesisError> {
    use std::io::Write;
    use std::process::Stdio;
    let line = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(NemesisError::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What must be undone if the harness dies: namespaces by name and child processes by pid.
#[derive(Default)]
struct Registry {
    namespaces: Vec<String>,
    pids: Vec<i32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: Vec::new(),
    pids: Vec::new(),
});

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    // A poisoned lock only means another thread panicked mid-update; the lists are still valid.
    let mut guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

pub(crate) fn register_pid(pid: i32) {
    with_registry(|r| r.pids.push(pid));
}

pub(crate) fn unregister_pid(pid: i32) {
    with_registry(|r| r.pids.retain(|&p| p != pid));
}

pub(crate) fn register_namespace(name: &str) {
    with_registry(|r| r.namespaces.push(name.to_string()));
}

pub(crate) fn unregister_namespace(name: &str) {
    with_registry(|r| r.namespaces.retain(|n| n != name));
}

/// Kills every registered child (SIGCONT then SIGKILL, so paused ones die too) and deletes every
/// registered namespace. Safe to call more than once.
pub fn cleanup_registered() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let (pids, namespaces) = with_registry(|r| {
        (
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.namespaces),
        )
    });
    for pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if let Some(ip) = find_program("ip") {
        for ns in namespaces {
            if let Err(e) = run(Command::new(&ip).args(["netns", "del", &ns]), None) {
                tracing::warn!(namespace = %ns, error = %e, "could not delete namespace");
            }
        }
    }
}

/// Installs a handler for SIGINT, SIGTERM, SIGHUP and SIGQUIT that cleans up what is registered
/// and exits with 128 + the signal number, so an interrupted run leaves no namespace behind.
pub fn install_signal_cleanup() -> Result<(), NemesisError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
    std::thread::Builder::new()
        .name("augur-nemesis-cleanup".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::warn!(
                    signal = sig,
                    "interrupted: cleaning up namespaces and processes"
                );
                cleanup_registered();
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}
