//! A FUSE passthrough filesystem that keeps written-but-not-synced bytes apart from the
//! backing directory and can drop them all at once: a simulated power cut.
//!
//! Killing a process (SIGKILL) cannot show a missing `fsync`, because the kernel's page
//! cache outlives the process and the next start reads the unsynced bytes back. This
//! filesystem is the page cache instead: reads see unsynced writes, `fsync`/`fdatasync`
//! write them to the backing file and sync it, and `crash` throws every unsynced byte away,
//! so after a restart a program sees only what it made durable. It follows the design of
//! LazyFS (a FUSE filesystem with its own page cache, built to find durability bugs): a
//! per-file cache of dirty data, metadata operations straight through (see [`fs`] for what
//! that covers, and `README.md` for why).
//!
//! - [`cache`]: the unsynced extents of one file;
//! - [`state`]: inodes, handles, the power cut and the checkpoint;
//! - [`fs`]: the FUSE operations;
//! - [`control`]: the control socket (`crash`, `checkpoint`, `status`);
//! - [`mount`]: mounting and unmounting.

pub mod cache;
pub mod control;
pub mod fs;
pub mod mount;
pub mod state;

pub use control::{request, Command};
pub use mount::{mount, MountOptions, Mounted};
pub use state::CacheStats;

use std::path::PathBuf;

/// Why mounting or controlling the filesystem failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing directory cannot be opened.
    #[error("backing directory {0}: {1}")]
    Backing(PathBuf, std::io::Error),
    /// Mounting or unmounting failed.
    #[error("mount at {0}: {1}")]
    Mount(PathBuf, std::io::Error),
    /// The control socket could not be set up or reached.
    #[error("control socket {0}: {1}")]
    Control(PathBuf, std::io::Error),
    /// The control socket refused the command.
    #[error("control command refused: {0}")]
    Refused(String),
    /// The control socket answered something unexpected.
    #[error("unexpected answer from the control socket: {0:?}")]
    BadReply(String),
    /// Persisting the unsynced bytes failed.
    #[error("checkpoint: {0}")]
    Checkpoint(std::io::Error),
}
