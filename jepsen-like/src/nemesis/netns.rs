//! A network namespace owned by the harness: created at the start of a run, removed when the
//! guard drops (or by the signal handler), so cluster traffic and firewall rules never touch the
//! host. Its loopback carries all of 127.0.0.0/8, so nodes can bind 127.0.0.x without adding
//! addresses.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use super::{register_namespace, require, run, unregister_namespace, NemesisError};

/// Longest accepted namespace name (it becomes a file name under /run/netns).
const MAX_NAME: usize = 64;

/// RAII guard for a network namespace.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    ip: PathBuf,
    removed: bool,
}

impl NetNs {
    /// Creates namespace `name` with loopback up. Needs root and `ip`.
    pub fn create(name: &str) -> Result<Self, NemesisError> {
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(NemesisError::Invalid(format!(
                "namespace name {name:?} must be 1-{MAX_NAME} characters of [A-Za-z0-9_-]"
            )));
        }
        let ip = require("network namespace", &["ip"])?.remove(0);
        run(Command::new(&ip).args(["netns", "add", name]), None)?;
        register_namespace(name);
        let ns = NetNs {
            name: name.to_string(),
            ip,
            removed: false,
        };
        // On failure the guard drops and removes the half-made namespace.
        run(
            Command::new(&ns.ip).args(["-n", name, "link", "set", "lo", "up"]),
            None,
        )?;
        tracing::info!(namespace = name, "created network namespace");
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NS program`). `ip`
    /// execs the program in place, so the child's pid is the program's pid and signals reach it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec"]).arg(&self.name).arg(program);
        cmd
    }

    /// Moves the calling process into the namespace, so that everything it starts afterwards
    /// (threads, child processes, `nft`, QUIC sockets) lives there without `ip netns exec`.
    ///
    /// `setns` moves only the calling thread, and threads inherit the namespace of the thread
    /// that creates them. So this must run while the process has a single thread, before any
    /// runtime or helper thread exists; it refuses otherwise, because a process straddling two
    /// namespaces would send some traffic through the host.
    pub fn enter(&self) -> Result<(), NemesisError> {
        let threads = thread_count()?;
        if threads != 1 {
            return Err(NemesisError::Invalid(format!(
                "cannot enter namespace {}: the process already has {threads} threads",
                self.name
            )));
        }
        let path = PathBuf::from("/run/netns").join(&self.name);
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        tracing::info!(namespace = %self.name, "entered network namespace");
        Ok(())
    }

    /// Removes the namespace now, reporting failure (drop does the same but can only log).
    pub fn remove(mut self) -> Result<(), NemesisError> {
        self.removed = true;
        unregister_namespace(&self.name);
        run(
            Command::new(&self.ip).args(["netns", "del", &self.name]),
            None,
        )?;
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        unregister_namespace(&self.name);
        match run(
            Command::new(&self.ip).args(["netns", "del", &self.name]),
            None,
        ) {
            Ok(_) => tracing::info!(namespace = %self.name, "removed network namespace"),
            Err(e) => {
                tracing::warn!(namespace = %self.name, error = %e, "could not remove namespace")
            }
        }
    }
}

/// Threads of this process, from `/proc/self/status`.
fn thread_count() -> Result<usize, NemesisError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| NemesisError::Invalid("no thread count in /proc/self/status".into()))
}
