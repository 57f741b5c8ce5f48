//! Node processes the nemesis can kill, restart, pause and resume.
//!
//! A [`ManagedProcess`] remembers how it was started so `restart` brings back the same node (same
//! address, data dir and log). Output is appended to the node's log file across restarts.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{netns::NetNs, register_pid, unregister_pid, NemesisError};

/// How to start a node.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Name for logs and reports (e.g. `n1`).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment (e.g. the libfaketime variables from [`super::clock::NodeClock::env`]).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory, if not inherited.
    pub cwd: Option<PathBuf>,
    /// File that stdout and stderr are appended to.
    pub log: PathBuf,
}

/// A running (or killed) node process.
#[derive(Debug)]
pub struct ManagedProcess {
    spec: ProcessSpec,
    netns: Option<String>,
    ip: Option<PathBuf>,
    child: Option<Child>,
    paused: bool,
    starts: u32,
}

impl ManagedProcess {
    /// Starts `spec`, inside `netns` when given.
    pub fn start(spec: ProcessSpec, netns: Option<&NetNs>) -> Result<Self, NemesisError> {
        let ip = match netns {
            Some(_) => {
                Some(
                    super::find_program("ip").ok_or_else(|| NemesisError::Unavailable {
                        nemesis: "process",
                        reason: "`ip` not found".into(),
                    })?,
                )
            }
            None => None,
        };
        let mut p = ManagedProcess {
            spec,
            netns: netns.map(|n| n.name().to_string()),
            ip,
            child: None,
            paused: false,
            starts: 0,
        };
        p.spawn()?;
        Ok(p)
    }

    fn command(&self) -> Command {
        let mut cmd = match (&self.netns, &self.ip) {
            (Some(ns), Some(ip)) => {
                let mut c = Command::new(ip);
                c.args(["netns", "exec"]).arg(ns).arg(&self.spec.program);
                c
            }
            _ => Command::new(&self.spec.program),
        };
        cmd.args(&self.spec.args);
        cmd.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.spec.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    fn spawn(&mut self) -> Result<(), NemesisError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)?;
        let mut cmd = self.command();
        // Own process group: a Ctrl-C at the terminal reaches the harness, which cleans up,
        // rather than racing it to the children.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn()?;
        let pid = pid_of(&child)?;
        register_pid(pid.as_raw());
        tracing::info!(node = %self.spec.name, pid = pid.as_raw(), "started");
        self.child = Some(child);
        self.paused = false;
        self.starts += 1;
        Ok(())
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The spec it was started from.
    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times it has been started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// True while stopped by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// `Some(status)` once the process has exited on its own (or was killed), without blocking.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>, NemesisError> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// True when started and not yet exited.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && matches!(self.try_exit_status(), Ok(None))
    }

    fn signal(&self, sig: Signal) -> Result<(), NemesisError> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| NemesisError::Invalid(format!("{} is not running", self.spec.name)))?;
        kill(pid_of(child)?, sig)?;
        Ok(())
    }

    /// `kill -9`, then reaps it. A no-op when it is not running.
    pub fn kill9(&mut self) -> Result<(), NemesisError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = pid_of(&child)?;
        if child.try_wait()?.is_none() {
            kill(pid, Signal::SIGKILL)?;
        }
        child.wait()?;
        unregister_pid(pid.as_raw());
        self.paused = false;
        tracing::info!(node = %self.spec.name, pid = pid.as_raw(), "killed");
        Ok(())
    }

    /// Starts it again from the same spec (killing it first if it still runs).
    pub fn restart(&mut self) -> Result<(), NemesisError> {
        self.kill9()?;
        self.spawn()
    }

    /// SIGSTOP: the process stays alive but does nothing (a GC pause, a stalled VM).
    pub fn pause(&mut self) -> Result<(), NemesisError> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        tracing::info!(node = %self.spec.name, "paused");
        Ok(())
    }

    /// SIGCONT after a pause.
    pub fn resume(&mut self) -> Result<(), NemesisError> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        tracing::info!(node = %self.spec.name, "resumed");
        Ok(())
    }
}

fn pid_of(child: &Child) -> Result<Pid, NemesisError> {
    i32::try_from(child.id())
        .map(Pid::from_raw)
        .map_err(|_| NemesisError::Invalid(format!("pid {} out of range", child.id())))
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill9() {
            tracing::warn!(node = %self.spec.name, error = %e, "could not kill on drop");
        }
    }
}
