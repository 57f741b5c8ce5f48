//! The FUSE operations: thin adapters from kernel requests to [`State`] and to the backing
//! directory.
//!
//! File data goes through the unsynced cache; everything else (create, mkdir, rename,
//! unlink, rmdir, link, symlink, chmod, chown, utimes, truncate, fallocate) goes straight to
//! the backing directory and so survives a power cut, as in LazyFS by default. Files are
//! opened with `FOPEN_DIRECT_IO` and attributes are never cached by the kernel: otherwise
//! the kernel's own page cache over the mount would keep serving bytes a power cut dropped.
//! Byte-range and `flock` locks are left to the kernel (we do not ask for
//! `FUSE_POSIX_LOCKS`), which keeps them per mount, as RocksDB's `LOCK` file needs.

use crate::state::{DirEntry, Handle, State};
use fuser::{
    Errno as FuseErrno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, CWD};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::os::unix::fs::DirEntryExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Names never change behind the kernel's back (a power cut keeps them), so it may cache
/// them for a while.
const ENTRY_TTL: Duration = Duration::from_secs(1);
/// Sizes do change at a power cut: the kernel asks every time.
const ATTR_TTL: Duration = Duration::ZERO;

/// The filesystem the kernel talks to.
pub struct LazyFs {
    state: Arc<State>,
}

impl LazyFs {
    /// A filesystem over `state` (shared with the control socket).
    pub fn new(state: Arc<State>) -> Self {
        LazyFs { state }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<fuser::FileAttr, Errno>) {
        match r {
            Ok(attr) => reply.entry_with_ttls(&ATTR_TTL, &ENTRY_TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Runs a namespace operation in directory `parent`, then looks `name` up.
    fn make(
        &self,
        parent: INodeNo,
        name: &OsStr,
        op: impl FnOnce(&std::os::fd::OwnedFd) -> Result<(), Errno>,
    ) -> Result<fuser::FileAttr, Errno> {
        let dir = self.state.inode(parent)?;
        op(&dir.fd)?;
        self.state.lookup(parent, name)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<std::fs::File>, Errno> {
        match self.state.handle(fh.0)? {
            Handle::File(f) => Ok(f),
            Handle::Dir(_) => Err(Errno::ISDIR),
        }
    }
}

fn errno(e: Errno) -> FuseErrno {
    FuseErrno::from_i32(e.raw_os_error())
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn timespec(t: Option<TimeOrNow>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (secs, nsecs) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                Err(e) => (-(e.duration().as_secs() as i64), 0),
            };
            Timespec {
                tv_sec: secs,
                tv_nsec: nsecs.into(),
            }
        }
    }
}

/// Reads a directory's entries (with `.` and `..`) through its `O_PATH` descriptor.
fn list_dir(state: &State, ino: INodeNo, path: &str) -> Result<Vec<DirEntry>, Errno> {
    let mut out = vec![
        DirEntry {
            ino: ino.0,
            kind: FileType::Directory,
            name: ".".into(),
        },
        DirEntry {
            ino: ino.0,
            kind: FileType::Directory,
            name: "..".into(),
        },
    ];
    let io = |e: std::io::Error| {
        e.raw_os_error()
            .map(Errno::from_raw_os_error)
            .unwrap_or(Errno::IO)
    };
    for entry in std::fs::read_dir(Path::new(path)).map_err(io)? {
        let entry = entry.map_err(io)?;
        let kind = entry
            .file_type()
            .ok()
            .and_then(FileType::from_std)
            .unwrap_or(FileType::RegularFile);
        out.push(DirEntry {
            ino: state.fuse_ino(entry.ino()),
            kind,
            name: entry.file_name(),
        });
    }
    Ok(out)
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.state.lookup(parent, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.state.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state.getattr(ino) {
            Ok(attr) => reply.attr(&ATTR_TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = (|| {
            let inode = self.state.inode(ino)?;
            if let Some(mode) = mode {
                rustix::fs::chmodat(
                    CWD,
                    inode.proc_path(),
                    Mode::from_raw_mode(mode & 0o7777),
                    AtFlags::empty(),
                )?;
            }
            if uid.is_some() || gid.is_some() {
                rustix::fs::chownat(
                    &inode.fd,
                    "",
                    uid.map(rustix::fs::Uid::from_raw),
                    gid.map(rustix::fs::Gid::from_raw),
                    AtFlags::EMPTY_PATH,
                )?;
            }
            if let Some(size) = size {
                self.state.truncate(ino, size)?;
            }
            if atime.is_some() || mtime.is_some() {
                let times = Timestamps {
                    last_access: timespec(atime),
                    last_modification: timespec(mtime),
                };
                rustix::fs::utimensat(CWD, inode.proc_path(), &times, AtFlags::empty())?;
            }
            self.state.getattr(ino)
        })();
        match r {
            Ok(attr) => reply.attr(&ATTR_TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self
            .state
            .inode(ino)
            .and_then(|inode| rustix::fs::readlinkat(&inode.fd, "", Vec::new()));
        match r {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.make(parent, name, |dir| {
            rustix::fs::mknodat(
                dir,
                name,
                rustix::fs::FileType::from_raw_mode(mode),
                Mode::from_raw_mode(mode & !umask & 0o7777),
                rdev.into(),
            )
        });
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.make(parent, name, |dir| {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode & !umask & 0o7777))
        });
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .state
            .inode(parent)
            .and_then(|dir| rustix::fs::unlinkat(&dir.fd, name, AtFlags::empty()));
        empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .state
            .inode(parent)
            .and_then(|dir| rustix::fs::unlinkat(&dir.fd, name, AtFlags::REMOVEDIR));
        empty(reply, r);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.make(parent, link_name, |dir| {
            rustix::fs::symlinkat(target, dir, link_name)
        });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let from = self.state.inode(parent)?;
            let to = self.state.inode(newparent)?;
            let flags = rustix::fs::RenameFlags::from_bits(flags.bits()).ok_or(Errno::INVAL)?;
            rustix::fs::renameat_with(&from.fd, name, &to.fd, newname, flags)
        })();
        empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let inode = self.state.inode(ino)?;
            self.make(newparent, newname, |dir| {
                rustix::fs::linkat(
                    CWD,
                    inode.proc_path(),
                    dir,
                    newname,
                    AtFlags::SYMLINK_FOLLOW,
                )
            })
        })();
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let inode = self.state.inode(ino)?;
            let file = self.state.open_backing(&inode, flags.0)?;
            if flags.0 & OFlags::TRUNC.bits() as i32 != 0 {
                self.state.truncate(ino, 0)?;
            }
            Ok(self.state.add_handle(Handle::File(Arc::new(file))))
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let dir = self.state.inode(parent)?;
            let create = OFlags::from_bits_truncate(flags as u32) & (OFlags::EXCL | OFlags::TRUNC);
            let fd = rustix::fs::openat(
                &dir.fd,
                name,
                OFlags::CREATE | OFlags::NOFOLLOW | OFlags::RDWR | OFlags::CLOEXEC | create,
                Mode::from_raw_mode(mode & !umask & 0o7777),
            )?;
            let file = std::fs::File::from(fd);
            // Enter the very inode we opened (not whatever the name points to by now).
            let path = rustix::fs::openat(
                CWD,
                format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)),
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let attr = self.state.register(path)?;
            if create.contains(OFlags::TRUNC) {
                self.state.truncate(attr.ino, 0)?;
            }
            Ok((attr, self.state.add_handle(Handle::File(Arc::new(file)))))
        })();
        match r {
            Ok((attr, fh)) => reply.created(
                &ATTR_TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self
            .file(fh)
            .and_then(|f| self.state.read(ino, &f, offset, size));
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let len = match u32::try_from(data.len()) {
            Ok(len) => len,
            Err(_) => return reply.error(FuseErrno::EINVAL),
        };
        match self.state.write(ino, offset, data, flags.0) {
            Ok(()) => reply.written(len),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// `close` persists nothing: that is the point of this filesystem.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state.remove_handle(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.state.fsync(ino, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self
            .state
            .inode(ino)
            .and_then(|dir| list_dir(&self.state, ino, &dir.proc_path()));
        match r {
            Ok(entries) => {
                let fh = self.state.add_handle(Handle::Dir(Arc::new(entries)));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.state.handle(fh.0) {
            Ok(Handle::Dir(entries)) => entries,
            Ok(Handle::File(_)) => return reply.error(FuseErrno::ENOTDIR),
            Err(e) => return reply.error(errno(e)),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state.remove_handle(fh.0);
        reply.ok();
    }

    /// Directory entries go straight through, so syncing a directory syncs the backing one.
    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.state.inode(ino).and_then(|dir| {
            let f = dir.reopen(OFlags::RDONLY | OFlags::DIRECTORY)?;
            rustix::fs::fsync(&f)
        });
        empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.state.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.state.fallocate(ino, offset, length, mode));
    }
}
