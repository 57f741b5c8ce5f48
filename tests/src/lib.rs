//! Test support: a loopback cluster of real `augur` processes, driven through the same
//! `augur local` commands users run, and always torn down.
//!
//! The `augur` binary is found next to the test executable's directory (cargo puts both under
//! `target/<profile>/`), or at `$AUGUR_BIN`.

pub mod launch;
pub mod lazyfs;
pub mod moves;
pub mod storage;

pub use launch::Launcher;

use anyhow::{bail, Context};
use augur_client::{Client, ClientConfig, ClusterFile};
use augur_proto::wire::ClusterStatus;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// Path of the `augur` binary under test.
pub fn augur_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AUGUR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/augur
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = profile_dir.join("augur");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release -p augur-node) or set AUGUR_BIN",
        bin.display()
    );
    bin
}

/// Runs `augur ARGS`, failing with its output if it fails. Members log warnings only, unless
/// `AUGUR_TEST_LOG` gives another filter (same syntax as `RUST_LOG`).
pub fn augur(args: &[&str]) -> anyhow::Result<String> {
    let filter = std::env::var("AUGUR_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let out = Command::new(augur_bin())
        .args(args)
        .env("RUST_LOG", filter)
        .output()
        .context("running augur")?;
    if !out.status.success() {
        bail!(
            "augur {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running local cluster in a temporary directory; stopped (SIGKILL if need be) on drop.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    /// A client for it.
    pub client: Client,
}

impl LocalCluster {
    /// Starts `n` members and waits until healthy.
    pub async fn start(n: u64) -> anyhow::Result<LocalCluster> {
        Self::start_with(n, &[]).await
    }

    /// Starts `n` members with extra `augur local up` flags.
    pub async fn start_with(n: u64, extra: &[&str]) -> anyhow::Result<LocalCluster> {
        let dir = tempfile::Builder::new().prefix("augur-test-").tempdir()?;
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
        if let Err(e) = augur(&args) {
            teardown(dir.path());
            return Err(e);
        }
        let client = match Client::new(ClientConfig::from_cluster_file(
            &dir.path().join("cluster.toml"),
        )?) {
            Ok(c) => c,
            Err(e) => {
                teardown(dir.path());
                return Err(e.into());
            }
        };
        Ok(LocalCluster { dir, client })
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn dir_arg(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    /// A fresh client (its own connections).
    pub fn new_client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(ClientConfig::from_cluster_file(
            &self.dir.path().join("cluster.toml"),
        )?)?)
    }

    /// The cluster file.
    pub fn cluster_file(&self) -> anyhow::Result<ClusterFile> {
        Ok(ClusterFile::load(&self.dir.path().join("cluster.toml"))?)
    }

    /// QUIC endpoint of member `id`.
    pub fn endpoint(&self, id: u64) -> anyhow::Result<String> {
        let f = self.cluster_file()?;
        f.endpoints
            .get(id as usize - 1)
            .cloned()
            .with_context(|| format!("no member {id}"))
    }

    /// HTTP admin address of member `id`.
    pub fn admin(&self, id: u64) -> anyhow::Result<String> {
        let f = self.cluster_file()?;
        f.admin
            .get(id as usize - 1)
            .cloned()
            .with_context(|| format!("no member {id}"))
    }

    /// Stops member `id` (`kill`: SIGKILL, as a crash).
    pub fn stop(&self, id: u64, kill: bool) -> anyhow::Result<()> {
        let d = self.dir_arg();
        let m = id.to_string();
        let mut args = vec!["local", "stop", "--dir", &d, "--member", &m];
        if kill {
            args.push("--kill");
        }
        augur(&args).map(|_| ())
    }

    /// Starts member `id` again.
    pub fn start_member(&self, id: u64) -> anyhow::Result<()> {
        let d = self.dir_arg();
        let m = id.to_string();
        augur(&["local", "start", "--dir", &d, "--member", &m]).map(|_| ())
    }

    /// Creates and starts a new member (not yet added to the group); returns id and address.
    pub fn add_member(&self) -> anyhow::Result<(u64, String)> {
        let before = self.cluster_file()?.endpoints.len() as u64;
        let d = self.dir_arg();
        augur(&["local", "add", "--dir", &d, "--start"])?;
        let f = self.cluster_file()?;
        let id = before + 1;
        Ok((id, f.endpoints[id as usize - 1].clone()))
    }

    /// Status of member `id`.
    pub async fn status(&self, id: u64) -> anyhow::Result<ClusterStatus> {
        Ok(self.client.status(Some(&self.endpoint(id)?)).await?)
    }

    /// Waits until some member reports itself leader and a majority agrees; returns its id.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let n = self.cluster_file()?.endpoints.len() as u64;
        poll(timeout, "a leader", || async {
            for id in 1..=n {
                if let Ok(s) = self.status(id).await {
                    if s.role == "leader" {
                        return Ok(Some(id));
                    }
                }
            }
            Ok(None)
        })
        .await
    }

    /// Waits until member `id` has applied at least `revision`.
    pub async fn wait_applied(
        &self,
        id: u64,
        revision: u64,
        timeout: Duration,
    ) -> anyhow::Result<ClusterStatus> {
        poll(
            timeout,
            &format!("member {id} to apply {revision}"),
            || async {
                match self.status(id).await {
                    Ok(s) if s.applied >= revision => Ok(Some(s)),
                    _ => Ok(None),
                }
            },
        )
        .await
    }

    /// `GET path` on member `id`'s admin port: (status code, body).
    pub async fn http_get(&self, id: u64, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = self.admin(id)?.parse()?;
        let r = augur_client::admin_http::get(addr, path, Duration::from_secs(10)).await?;
        Ok((r.status, r.body))
    }
}

impl Drop for LocalCluster {
    /// Members are always stopped. The directory (configs, data, each member's `augur.log`)
    /// is kept when the test failed or `AUGUR_TEST_KEEP` is set, so a failure can be read.
    fn drop(&mut self) {
        teardown(self.dir.path());
        if std::thread::panicking() || std::env::var_os("AUGUR_TEST_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("cluster directory kept: {}", self.dir.path().display());
        }
    }
}

/// A directory to start clusters in ([`LocalCluster::start_in`]), removed as theirs are:
/// kept when the test failed or `AUGUR_TEST_KEEP` is set. A plain `TempDir` here removed the
/// cluster directory its `LocalCluster` had just kept, and with it the logs of the failure.
pub struct ParentDir(tempfile::TempDir);

impl ParentDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new() -> anyhow::Result<ParentDir> {
        Ok(ParentDir(tempfile::tempdir()?))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ParentDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("AUGUR_TEST_KEEP").is_some() {
            self.0.disable_cleanup(true);
        }
    }
}

/// Crash-stops every member and storage node in `dir`: tests must not leave processes behind.
fn teardown(dir: &Path) {
    let d = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let (role, id) = if let Some(id) = name.strip_prefix("meta-") {
            ("--member", id.to_string())
        } else if let Some(id) = name.strip_prefix("storage-") {
            ("--storage", id.to_string())
        } else {
            continue;
        };
        // A paused process must be resumed to die promptly on SIGKILL's delivery.
        if let Ok(pid) = std::fs::read_to_string(entry.path().join("pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: plain signal delivery to a pid this cluster started.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                }
            }
        }
        let _ = Command::new(augur_bin())
            .args(["local", "stop", "--dir", &d, role, &id, "--kill"])
            .output();
    }
}

/// Calls `f` until it returns `Some`, or fails after `timeout` naming what it waited for.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
