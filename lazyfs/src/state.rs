//! The filesystem's state: which backing files the kernel knows, their unsynced bytes, open
//! handles, and the two whole-filesystem acts, the power cut and the checkpoint.
//!
//! Every inode the kernel knows is held open as an `O_PATH` descriptor of the backing file.
//! The descriptor follows the file through renames (no path bookkeeping), and it keeps the
//! backing inode alive, so its number cannot be reused by another file while we use it as
//! the FUSE inode number. An inode with unsynced bytes stays in the table after the kernel
//! forgets it: a page cache keeps dirty pages of files nobody has open, and so do we.
//!
//! Lock order: `power`, then `nodes`, then one inode's `dirty`; `handles` alone.

use crate::cache::Dirty;
use fuser::{FileAttr, FileType, INodeNo};
use rustix::fs::{fstat, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// FUSE's inode number of the mount's root.
pub(crate) const ROOT: u64 = 1;

/// One backing file or directory the kernel knows.
pub(crate) struct Inode {
    /// `O_PATH` descriptor of the backing file.
    pub(crate) fd: OwnedFd,
    /// Written but not yet synced (always empty for directories).
    pub(crate) dirty: Mutex<Dirty>,
}

impl Inode {
    /// A path naming this very inode, usable where a descriptor is not (chmod, utimens,
    /// reopening with other flags): the kernel resolves it to the file, not to a name.
    pub(crate) fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    /// Opens the backing file with `flags` (plus close-on-exec).
    pub(crate) fn reopen(&self, flags: OFlags) -> Result<File, Errno> {
        let fd = rustix::fs::openat(
            CWD,
            self.proc_path(),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }
}

struct Node {
    inode: Arc<Inode>,
    /// The kernel's lookup count; at zero the kernel no longer names this inode.
    lookups: u64,
}

/// An open file or directory.
#[derive(Clone)]
pub(crate) enum Handle {
    /// A backing file open for reading (and writing when allowed).
    File(Arc<File>),
    /// A directory's entries, read once at `opendir` so offsets stay stable.
    Dir(Arc<Vec<DirEntry>>),
}

/// One directory entry as `readdir` reports it.
pub(crate) struct DirEntry {
    pub(crate) ino: u64,
    pub(crate) kind: FileType,
    pub(crate) name: std::ffi::OsString,
}

/// What a power cut dropped or a checkpoint persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Files that had unsynced bytes.
    pub files: u64,
    /// Unsynced bytes in them.
    pub bytes: u64,
}

/// Shared by the FUSE worker threads and the control socket.
pub struct State {
    /// Backing inode number of the root, which FUSE calls 1 (and backing inode 1, if any
    /// file has it, is called by the root's number: the mapping is its own inverse).
    root_ino: u64,
    /// The backing filesystem's device: files on other devices are refused, since their
    /// inode numbers could collide with ours.
    dev: u64,
    nodes: Mutex<HashMap<u64, Node>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Taken shared by every operation on file data and exclusively by the power cut and
    /// the checkpoint, so those happen between operations, never inside one.
    power: RwLock<()>,
}

/// Locks `m`, carrying on after a panic elsewhere: the data is plain bytes and stays valid.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn time(secs: i64, nsecs: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs.into())
    }
}

fn kind_of(mode: u32) -> FileType {
    use rustix::fs::FileType as T;
    match T::from_raw_mode(mode) {
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::Fifo => FileType::NamedPipe,
        T::Socket => FileType::Socket,
        T::CharacterDevice => FileType::CharDevice,
        T::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// Writes every extent to `file` at its offset.
fn write_extents(
    file: &File,
    extents: &std::collections::BTreeMap<u64, Vec<u8>>,
) -> std::io::Result<()> {
    for (offset, data) in extents {
        file.write_all_at(data, *offset)?;
    }
    Ok(())
}

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error()
        .map(Errno::from_raw_os_error)
        .unwrap_or(Errno::IO)
}

impl State {
    /// Opens the backing directory.
    pub fn new(backing: &Path) -> Result<State, crate::Error> {
        let fd = rustix::fs::open(
            backing,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| crate::Error::Backing(backing.to_path_buf(), e.into()))?;
        let st = fstat(&fd).map_err(|e| crate::Error::Backing(backing.to_path_buf(), e.into()))?;
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                inode: Arc::new(Inode {
                    fd,
                    dirty: Mutex::default(),
                }),
                // The kernel never forgets the root while mounted.
                lookups: u64::MAX,
            },
        );
        Ok(State {
            root_ino: st.st_ino,
            dev: st.st_dev,
            nodes: Mutex::new(nodes),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            power: RwLock::new(()),
        })
    }

    /// FUSE inode number of a backing inode number (and back: the map is an involution).
    pub(crate) fn fuse_ino(&self, backing: u64) -> u64 {
        if backing == self.root_ino {
            ROOT
        } else if backing == ROOT {
            self.root_ino
        } else {
            backing
        }
    }

    /// The inode the kernel calls `ino`.
    pub(crate) fn inode(&self, ino: INodeNo) -> Result<Arc<Inode>, Errno> {
        lock(&self.nodes)
            .get(&ino.0)
            .map(|n| n.inode.clone())
            .ok_or(Errno::STALE)
    }

    /// Takes the shared side of the power lock for one data operation.
    pub(crate) fn powered(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.power.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a backing file or directory (an `O_PATH` descriptor of it) into the table,
    /// or counts one more kernel lookup of it; returns its attributes.
    pub(crate) fn register(&self, fd: OwnedFd) -> Result<FileAttr, Errno> {
        let st = fstat(&fd)?;
        if st.st_dev != self.dev {
            return Err(Errno::XDEV);
        }
        let ino = self.fuse_ino(st.st_ino);
        let inode = {
            let mut nodes = lock(&self.nodes);
            let node = nodes.entry(ino).or_insert_with(|| Node {
                inode: Arc::new(Inode {
                    fd,
                    dirty: Mutex::default(),
                }),
                lookups: 0,
            });
            node.lookups = node.lookups.saturating_add(1);
            node.inode.clone()
        };
        let end = lock(&inode.dirty).end();
        Ok(self.attr(&st, end))
    }

    /// Looks `name` up in directory `parent` (counts a kernel lookup).
    pub(crate) fn lookup(
        &self,
        parent: INodeNo,
        name: &std::ffi::OsStr,
    ) -> Result<FileAttr, Errno> {
        let dir = self.inode(parent)?;
        let fd = rustix::fs::openat(
            &dir.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        self.register(fd)
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        let mut nodes = lock(&self.nodes);
        let Some(node) = nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 || ino == ROOT {
            return;
        }
        // Keep unsynced bytes of a file that still has a name; a deleted one's are
        // unreachable now.
        let keep = !lock(&node.inode.dirty).is_empty()
            && fstat(&node.inode.fd)
                .map(|st| st.st_nlink > 0)
                .unwrap_or(false);
        if !keep {
            nodes.remove(&ino);
        }
    }

    /// Attributes as readers see them: a file's size counts its unsynced bytes.
    // `st_*time` are `c_long`: i64 on this target, i32 on 32-bit ones.
    #[allow(clippy::useless_conversion)]
    pub(crate) fn attr(&self, st: &Stat, dirty_end: Option<u64>) -> FileAttr {
        let size = u64::try_from(st.st_size)
            .unwrap_or(0)
            .max(dirty_end.unwrap_or(0));
        FileAttr {
            ino: INodeNo(self.fuse_ino(st.st_ino)),
            size,
            blocks: st.st_blocks as u64,
            atime: time(i64::from(st.st_atime), st.st_atime_nsec as u32),
            mtime: time(i64::from(st.st_mtime), st.st_mtime_nsec as u32),
            ctime: time(i64::from(st.st_ctime), st.st_ctime_nsec as u32),
            crtime: UNIX_EPOCH,
            kind: kind_of(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    /// Current attributes of `ino`.
    pub(crate) fn getattr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let inode = self.inode(ino)?;
        let st = fstat(&inode.fd)?;
        let end = lock(&inode.dirty).end();
        Ok(self.attr(&st, end))
    }

    /// Stores an open handle; returns its number.
    pub(crate) fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    pub(crate) fn handle(&self, fh: u64) -> Result<Handle, Errno> {
        lock(&self.handles).get(&fh).cloned().ok_or(Errno::BADF)
    }

    pub(crate) fn remove_handle(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    /// Opens backing file `inode` for a handle: read-write whenever allowed, so that reads
    /// work whatever the caller asked for (the kernel enforces the caller's mode).
    pub(crate) fn open_backing(&self, inode: &Inode, flags: i32) -> Result<File, Errno> {
        match inode.reopen(OFlags::RDWR) {
            Ok(f) => Ok(f),
            Err(Errno::ACCESS | Errno::ROFS | Errno::ISDIR | Errno::TXTBSY) => {
                let acc = match flags & rustix::fs::OFlags::ACCMODE.bits() as i32 {
                    x if x == OFlags::WRONLY.bits() as i32 => OFlags::WRONLY,
                    x if x == OFlags::RDWR.bits() as i32 => OFlags::RDWR,
                    _ => OFlags::RDONLY,
                };
                inode.reopen(acc)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads `size` bytes at `offset`: the backing file's bytes with unsynced ones on top.
    pub(crate) fn read(
        &self,
        ino: INodeNo,
        file: &File,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let _power = self.powered();
        let inode = self.inode(ino)?;
        let dirty = lock(&inode.dirty);
        let backing_len = u64::try_from(fstat(file)?.st_size).unwrap_or(0);
        let len = backing_len.max(dirty.end().unwrap_or(0));
        if offset >= len {
            return Ok(Vec::new());
        }
        let n = (len - offset).min(size.into()) as usize;
        let mut buf = vec![0u8; n];
        let mut done = 0;
        while done < n && offset + (done as u64) < backing_len {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_errno(e)),
            }
        }
        dirty.overlay(offset, &mut buf);
        Ok(buf)
    }

    /// Caches a write, or with `O_DSYNC`/`O_SYNC` writes it through and syncs it.
    pub(crate) fn write(
        &self,
        ino: INodeNo,
        offset: u64,
        data: &[u8],
        open_flags: i32,
    ) -> Result<(), Errno> {
        let _power = self.powered();
        let inode = self.inode(ino)?;
        let mut dirty = lock(&inode.dirty);
        if open_flags & OFlags::DSYNC.bits() as i32 == 0 {
            return dirty.write(offset, data).map_err(|_| Errno::FBIG);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::FBIG)?;
        let file = inode.reopen(OFlags::WRONLY)?;
        file.write_all_at(data, offset).map_err(io_errno)?;
        dirty.remove_range(offset, end);
        drop(dirty);
        rustix::fs::fdatasync(&file)?;
        Ok(())
    }

    /// `fsync`/`fdatasync`: moves the file's unsynced bytes to the backing file and syncs
    /// it. Bytes written to the backing file are safe from our power cuts (the backing
    /// filesystem does not crash), so the cache lock is released before the slow sync.
    pub(crate) fn fsync(&self, ino: INodeNo, datasync: bool) -> Result<(), Errno> {
        let _power = self.powered();
        let inode = self.inode(ino)?;
        let file = inode.reopen(OFlags::WRONLY)?;
        {
            let mut dirty = lock(&inode.dirty);
            let extents = dirty.take();
            if let Err(e) = write_extents(&file, &extents) {
                // Nothing is lost on a failed sync: the bytes stay cached.
                for (offset, data) in &extents {
                    let _ = dirty.write(*offset, data);
                }
                return Err(io_errno(e));
            }
        }
        if datasync {
            rustix::fs::fdatasync(&file)?;
        } else {
            rustix::fs::fsync(&file)?;
        }
        Ok(())
    }

    /// Sets the size: straight through to the backing file (a metadata operation, as in
    /// LazyFS), dropping unsynced bytes past the new end.
    pub(crate) fn truncate(&self, ino: INodeNo, size: u64) -> Result<(), Errno> {
        let _power = self.powered();
        let inode = self.inode(ino)?;
        let mut dirty = lock(&inode.dirty);
        let file = inode.reopen(OFlags::WRONLY)?;
        rustix::fs::ftruncate(&file, size)?;
        dirty.remove_range(size, u64::MAX);
        Ok(())
    }

    /// `fallocate`: preallocation (with or without `KEEP_SIZE`) and punching holes go
    /// through; other modes are refused with `EOPNOTSUPP`, which callers such as RocksDB
    /// treat as "no preallocation".
    pub(crate) fn fallocate(
        &self,
        ino: INodeNo,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        use rustix::fs::FallocateFlags as F;
        let flags = F::from_bits(mode as u32).ok_or(Errno::OPNOTSUPP)?;
        let end = offset.checked_add(len).ok_or(Errno::FBIG)?;
        let _power = self.powered();
        let inode = self.inode(ino)?;
        let mut dirty = lock(&inode.dirty);
        let file = inode.reopen(OFlags::WRONLY)?;
        if flags.is_empty() || flags == F::KEEP_SIZE {
            rustix::fs::fallocate(&file, flags, offset, len)?;
        } else if flags == F::KEEP_SIZE | F::PUNCH_HOLE {
            rustix::fs::fallocate(&file, flags, offset, len)?;
            dirty.remove_range(offset, end);
        } else {
            return Err(Errno::OPNOTSUPP);
        }
        Ok(())
    }

    /// The power cut: every unsynced byte of every file is gone, at once.
    pub fn crash(&self) -> CacheStats {
        let _power = self.power.write().unwrap_or_else(PoisonError::into_inner);
        let mut nodes = lock(&self.nodes);
        let mut stats = CacheStats::default();
        for node in nodes.values() {
            let mut dirty = lock(&node.inode.dirty);
            if !dirty.is_empty() {
                stats.files += 1;
                stats.bytes += dirty.bytes();
                dirty.take();
            }
        }
        nodes.retain(|_, n| n.lookups > 0);
        stats
    }

    /// Persists every unsynced byte of every file, as `sync(1)` would (LazyFS's
    /// "checkpoint"). Files that fail keep their bytes; the first error is returned.
    pub fn checkpoint(&self) -> Result<CacheStats, Errno> {
        let _power = self.power.write().unwrap_or_else(PoisonError::into_inner);
        let mut nodes = lock(&self.nodes);
        let mut stats = CacheStats::default();
        let mut first_error = None;
        for node in nodes.values() {
            let mut dirty = lock(&node.inode.dirty);
            if dirty.is_empty() {
                continue;
            }
            let bytes = dirty.bytes();
            let result = node.inode.reopen(OFlags::WRONLY).and_then(|file| {
                write_extents(&file, &dirty.take()).map_err(io_errno)?;
                rustix::fs::fsync(&file)
            });
            match result {
                Ok(()) => {
                    stats.files += 1;
                    stats.bytes += bytes;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        nodes.retain(|_, n| n.lookups > 0 || !lock(&n.inode.dirty).is_empty());
        match first_error {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// What is unsynced right now.
    pub fn unsynced(&self) -> CacheStats {
        let nodes = lock(&self.nodes);
        let mut stats = CacheStats::default();
        for node in nodes.values() {
            let dirty = lock(&node.inode.dirty);
            if !dirty.is_empty() {
                stats.files += 1;
                stats.bytes += dirty.bytes();
            }
        }
        stats
    }

    /// Inode numbers the kernel may have cached, to invalidate after a power cut.
    pub fn known_inodes(&self) -> Vec<u64> {
        lock(&self.nodes).keys().copied().collect()
    }

    /// `statfs` of the backing filesystem.
    pub(crate) fn statfs(&self) -> Result<rustix::fs::StatVfs, Errno> {
        let root = self.inode(INodeNo(ROOT))?;
        let dir = root.reopen(OFlags::RDONLY | OFlags::DIRECTORY)?;
        rustix::fs::fstatvfs(dir.as_fd())
    }
}
