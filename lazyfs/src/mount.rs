//! Mounting: the FUSE session on its worker threads, plus the control socket.

use crate::control::ControlServer;
use crate::fs::LazyFs;
use crate::state::{CacheStats, State};
use crate::Error;
use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, Session};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What to mount where.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The directory holding the files ("the disk").
    pub backing: PathBuf,
    /// Where the filesystem appears.
    pub mountpoint: PathBuf,
    /// Where to listen for control commands, if anywhere.
    pub control: Option<PathBuf>,
    /// FUSE worker threads: more than one, so that one member's slow `fsync` does not hold
    /// up every other process's reads and writes.
    pub threads: usize,
}

impl MountOptions {
    /// Mounts `backing` at `mountpoint` with 4 worker threads and no control socket.
    pub fn new(backing: impl Into<PathBuf>, mountpoint: impl Into<PathBuf>) -> Self {
        MountOptions {
            backing: backing.into(),
            mountpoint: mountpoint.into(),
            control: None,
            threads: 4,
        }
    }
}

/// Tells the kernel to drop what it cached about every file we know (attributes, any
/// pages), so nothing a power cut dropped is served from the kernel's side afterwards.
fn invalidate_all(state: &State, notifier: &Notifier) {
    for ino in state.known_inodes() {
        // The kernel may have forgotten an inode already; that is fine.
        let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
    }
}

/// A mounted filesystem; unmounted by [`Mounted::unmount`] or on drop.
pub struct Mounted {
    state: Arc<State>,
    notifier: Notifier,
    session: Option<BackgroundSession>,
    control: Option<ControlServer>,
    mountpoint: PathBuf,
}

/// Mounts the filesystem described by `opts`.
pub fn mount(opts: &MountOptions) -> Result<Mounted, Error> {
    let state = Arc::new(State::new(&opts.backing)?);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("augur-lazyfs".into()),
        MountOption::Subtype("augur-lazyfs".into()),
        MountOption::NoAtime,
    ];
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = opts.threads > 1;
    let merr = |e| Error::Mount(opts.mountpoint.clone(), e);
    let session = Session::new(LazyFs::new(state.clone()), &opts.mountpoint, &config)
        .map_err(merr)?
        .spawn()
        .map_err(merr)?;
    let notifier = session.notifier();
    let mut mounted = Mounted {
        state: state.clone(),
        notifier: notifier.clone(),
        session: Some(session),
        control: None,
        mountpoint: opts.mountpoint.clone(),
    };
    if let Some(path) = &opts.control {
        let st = state.clone();
        mounted.control = Some(ControlServer::start(
            path,
            state,
            Box::new(move || invalidate_all(&st, &notifier)),
        )?);
    }
    Ok(mounted)
}

impl Mounted {
    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The power cut (as the control socket's `crash`).
    pub fn crash(&self) -> CacheStats {
        let stats = self.state.crash();
        invalidate_all(&self.state, &self.notifier);
        stats
    }

    /// Persists every unsynced byte (as the control socket's `checkpoint`).
    pub fn checkpoint(&self) -> Result<CacheStats, Error> {
        self.state
            .checkpoint()
            .map_err(|e| Error::Checkpoint(e.into()))
    }

    /// What is unsynced now.
    pub fn unsynced(&self) -> CacheStats {
        self.state.unsynced()
    }

    /// True once the FUSE session has ended (someone unmounted it from outside).
    pub fn is_finished(&self) -> bool {
        self.session
            .as_ref()
            .map(|s| s.guard.is_finished())
            .unwrap_or(true)
    }

    /// Stops the control socket and unmounts. If the kernel refuses (the mount is busy),
    /// the mount is detached lazily instead, so no dead mount point is left behind.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), Error> {
        if let Some(mut c) = self.control.take() {
            c.stop();
        }
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if session.guard.is_finished() {
            return session
                .join()
                .map_err(|e| Error::Mount(self.mountpoint.clone(), e));
        }
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "unmount failed; detaching the mount instead");
                rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH)
                    .map_err(|e| Error::Mount(self.mountpoint.clone(), e.into()))
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(error = %e, "unmounting");
        }
    }
}
