//! An `augur-lazyfs` mount for the power-loss tests: a FUSE filesystem that keeps unsynced
//! writes apart and drops them on `crash` (see `lazyfs/README.md`).
//!
//! The binary is found like `augur`: next to the test executable's directory, or at
//! `$AUGUR_LAZYFS_BIN`.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `augur-lazyfs` binary.
pub fn lazyfs_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("AUGUR_LAZYFS_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("test executable path")?;
    // target/<profile>/deps/<test> -> target/<profile>/augur-lazyfs
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .context("target profile dir")?
        .join("augur-lazyfs");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p augur-lazyfs) or set \
             AUGUR_LAZYFS_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// Why a FUSE filesystem cannot be mounted here, if it cannot: mounting needs root and
/// `/dev/fuse`.
pub fn fuse_unavailable() -> Option<String> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => None,
        Err(e) => Some(format!("cannot open /dev/fuse: {e}")),
    }
}

/// What a `crash` dropped or a `checkpoint` wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unsynced {
    /// Files that had unsynced bytes.
    pub files: u64,
    /// Unsynced bytes.
    pub bytes: u64,
}

/// A running `augur-lazyfs mount`, unmounted (SIGTERM) on drop. The backing directory is
/// removed then, unless the test failed or `AUGUR_TEST_KEEP` is set.
pub struct LazyFs {
    child: Child,
    dir: tempfile::TempDir,
    mount: PathBuf,
    control: PathBuf,
}

impl LazyFs {
    /// Mounts a fresh backing directory and waits until the control socket answers.
    pub async fn mount() -> anyhow::Result<LazyFs> {
        let bin = lazyfs_bin()?;
        let dir = tempfile::Builder::new().prefix("augur-lazyfs-").tempdir()?;
        let backing = dir.path().join("backing");
        let mount = dir.path().join("mnt");
        let control = dir.path().join("control.sock");
        std::fs::create_dir(&backing)?;
        std::fs::create_dir(&mount)?;
        let log = std::fs::File::create(dir.path().join("lazyfs.log"))?;
        let child = Command::new(&bin)
            .arg("mount")
            .arg("--backing")
            .arg(&backing)
            .arg("--mount")
            .arg(&mount)
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut fs = LazyFs {
            child,
            dir,
            mount,
            control,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = fs.child.try_wait()? {
                bail!("augur-lazyfs exited ({status}): {}", fs.log());
            }
            match fs.status() {
                Ok(_) => return Ok(fs),
                Err(e) if Instant::now() >= deadline => {
                    bail!("augur-lazyfs did not come up in 20 s: {e:#}\n{}", fs.log())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mount
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lazyfs.log")).unwrap_or_default()
    }

    fn command(&self, cmd: &str) -> anyhow::Result<Unsynced> {
        let out = Command::new(lazyfs_bin()?)
            .arg(cmd)
            .arg("--control")
            .arg(&self.control)
            .output()
            .context("running augur-lazyfs")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "augur-lazyfs {cmd} failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // "<cmd>: files=N bytes=M"
        let field = |name: &str| -> anyhow::Result<u64> {
            text.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in {text:?}"))
        };
        Ok(Unsynced {
            files: field("files=")?,
            bytes: field("bytes=")?,
        })
    }

    /// The power cut: every unsynced byte is dropped. Returns what was dropped.
    pub fn crash(&self) -> anyhow::Result<Unsynced> {
        self.command("crash")
    }

    /// Persists every unsynced byte, as `sync(1)`. Returns what was written.
    pub fn checkpoint(&self) -> anyhow::Result<Unsynced> {
        self.command("checkpoint")
    }

    /// What is unsynced now.
    pub fn status(&self) -> anyhow::Result<Unsynced> {
        self.command("status")
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("AUGUR_TEST_KEEP").is_some();
        if keep {
            // What is kept is read after the fact: logs included, so persist them.
            let _ = self.checkpoint();
        }
        // SAFETY: kill(2) on our own child's pid; it touches no memory of ours.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let exited = loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break false,
            }
        };
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A daemon that died or could not unmount leaves a dead mount: detach it.
        let still_mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.contains(&*self.mount.to_string_lossy()))
            .unwrap_or(false);
        if still_mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
        }
        if keep {
            self.dir.disable_cleanup(true);
            eprintln!("lazyfs directory kept: {}", self.dir.path().display());
        }
    }
}
