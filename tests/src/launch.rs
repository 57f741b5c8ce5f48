//! Running a local cluster with a chosen `augur` binary and environment, in a chosen parent
//! directory, and crashing all its members at once: what the power-loss tests need beyond
//! [`LocalCluster::start_with`].

use crate::{augur_bin, poll, LocalCluster};
use anyhow::{bail, Context};
use augur_client::{Client, ClientConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Which `augur` binary runs `augur local` commands, and extra environment for it. Members
/// are started by `augur local up`/`start` as that same binary and inherit its environment,
/// so this is also how a test runs members of another build or with test-only settings.
#[derive(Debug, Clone, Default)]
pub struct Launcher {
    /// The binary; [`augur_bin`] when `None`.
    pub bin: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Launcher {
    /// Runs `augur ARGS` with this binary and environment, failing with its output if it
    /// fails. Members log warnings only, unless `AUGUR_TEST_LOG` gives another filter.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let bin = self.bin.clone().unwrap_or_else(augur_bin);
        let filter = std::env::var("AUGUR_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let out = Command::new(&bin)
            .args(args)
            .env("RUST_LOG", filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} {} failed ({}):\n{}\n{}",
                bin.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// True while any thread of process `pid` is alive. A killed process's main thread turns
/// zombie before its other threads are gone, and a thread blocked in a file operation (a
/// FUSE write, say) finishes it first: only when every thread is gone or a zombie are all the
/// process's file operations over, so only then may a power cut follow.
fn running(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        match std::fs::read_to_string(task.path().join("stat")) {
            // The state follows the command name in parentheses: Z zombie, X dead.
            Ok(stat) => stat
                .rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
                .unwrap_or(false),
            Err(_) => false,
        }
    })
}

impl LocalCluster {
    /// Starts `n` members in a new directory under `parent`, with extra `augur local up`
    /// flags, run by `launcher`; waits until healthy. The directory is removed on drop
    /// (kept if the test failed or `AUGUR_TEST_KEEP` is set).
    pub async fn start_in(
        parent: &Path,
        n: u64,
        extra: &[&str],
        launcher: &Launcher,
    ) -> anyhow::Result<LocalCluster> {
        let dir = tempfile::Builder::new()
            .prefix("augur-test-")
            .tempdir_in(parent)?;
        let d = dir.path().to_string_lossy().into_owned();
        let meta = n.to_string();
        let mut args = vec![
            "local",
            "up",
            "--dir",
            &d,
            "--meta",
            &meta,
            "--timeout",
            "90",
        ];
        args.extend_from_slice(extra);
        // From here on the cluster is torn down on every path: a failed `up` may have
        // started some members.
        let cluster_file = dir.path().join("cluster.toml");
        let up = launcher.run(&args);
        let client = up.and_then(|_| {
            Ok(Client::new(ClientConfig::from_cluster_file(
                &cluster_file,
            )?)?)
        });
        match client {
            Ok(client) => Ok(LocalCluster { dir, client }),
            Err(e) => {
                crate::teardown(dir.path());
                Err(e)
            }
        }
    }

    /// Process ids of the members that are running now.
    pub fn member_pids(&self) -> anyhow::Result<Vec<i32>> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(self.dir())? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with("meta-") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path().join("pid")) else {
                continue;
            };
            if let Ok(pid) = text.trim().parse::<i32>() {
                if running(pid) {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    }

    /// SIGKILLs every running member in one go (the signals leave within microseconds of
    /// each other, unlike `augur local stop` member by member), then waits until all have
    /// exited. Returns how many were killed.
    pub async fn kill_all_at_once(&self, timeout: Duration) -> anyhow::Result<usize> {
        let pids = self.member_pids()?;
        for &pid in &pids {
            // SAFETY: kill(2) with a pid we read from a member's pid file and checked to be a
            // live process; it touches no memory of ours.
            if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e).context(format!("killing member process {pid}"));
                }
            }
        }
        poll(timeout, "killed members to exit", || async {
            Ok(pids.iter().all(|&p| !running(p)).then_some(()))
        })
        .await?;
        Ok(pids.len())
    }
}
