//! The filesystem mounted for real (FUSE, root): what survives a power cut and what does not.
//!
//! Each test mounts its own backing directory in-process and drives it with ordinary file
//! calls. Without root or `/dev/fuse` they print `SKIPPED` and pass.

use augur_lazyfs::{mount, request, CacheStats, Command, MountOptions, Mounted};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Fixture {
    // Field order: unmount before the directories go.
    fs: Mounted,
    _dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    control: PathBuf,
}

/// Why FUSE cannot be used here, if it cannot.
fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse: {e}"));
    }
    None
}

fn fixture(test: &str) -> Option<Fixture> {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    let control = dir.path().join("control.sock");
    std::fs::create_dir(&backing).expect("backing dir");
    std::fs::create_dir(&mnt).expect("mount dir");
    let mut opts = MountOptions::new(&backing, &mnt);
    opts.control = Some(control.clone());
    let fs = mount(&opts).expect("mount");
    Some(Fixture {
        fs,
        _dir: dir,
        backing,
        mnt,
        control,
    })
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// The power cut, through the control socket as the integration tests do it.
    fn crash(&self) -> CacheStats {
        request(&self.control, Command::Crash, Duration::from_secs(30)).expect("crash")
    }
}

fn read(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut out))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    out
}

#[test]
fn unsynced_write_is_read_back_then_lost_at_the_power_cut() {
    let Some(fx) = fixture("unsynced_write_is_read_back_then_lost_at_the_power_cut") else {
        return;
    };
    let p = fx.path("wal");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"not yet durable").unwrap();
    drop(f);
    // Readers see it, through a new descriptor too, and the size counts it...
    assert_eq!(read(&p), b"not yet durable");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 15);
    // ...but the disk does not have it.
    assert_eq!(read(&fx.backing.join("wal")), b"");
    assert_eq!(
        fx.fs.unsynced(),
        CacheStats {
            files: 1,
            bytes: 15
        }
    );
    let dropped = fx.crash();
    assert_eq!(
        dropped,
        CacheStats {
            files: 1,
            bytes: 15
        }
    );
    // The file was created (metadata goes straight through) but its bytes are gone.
    assert_eq!(read(&p), b"");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    assert_eq!(fx.fs.unsynced(), CacheStats::default());
}

#[test]
fn fsynced_write_survives_the_power_cut() {
    let Some(fx) = fixture("fsynced_write_survives_the_power_cut") else {
        return;
    };
    let p = fx.path("synced");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" and more").unwrap();
    f.sync_data().unwrap();
    f.write_all(b" but not this").unwrap();
    drop(f);
    assert_eq!(read(&p), b"durable and more but not this");
    fx.crash();
    assert_eq!(read(&p), b"durable and more");
    assert_eq!(read(&fx.backing.join("synced")), b"durable and more");
}

#[test]
fn partial_overwrites_and_extends_of_a_synced_file() {
    let Some(fx) = fixture("partial_overwrites_and_extends_of_a_synced_file") else {
        return;
    };
    let p = fx.path("data");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&[b'a'; 100], 0).unwrap();
    f.sync_all().unwrap();
    // Overwrite inside, extend past the end, and leave a hole before a far write.
    f.write_all_at(&[b'b'; 10], 10).unwrap();
    f.write_all_at(&[b'c'; 20], 95).unwrap();
    f.write_all_at(b"z", 200).unwrap();
    let mut expect = vec![b'a'; 100];
    expect[10..20].fill(b'b');
    expect.truncate(95);
    expect.extend([b'c'; 20]);
    expect.resize(200, 0);
    expect.push(b'z');
    assert_eq!(read(&p), expect);
    let mut mid = [0u8; 12];
    f.read_exact_at(&mut mid, 9).unwrap();
    assert_eq!(&mid, b"abbbbbbbbbba");
    fx.crash();
    assert_eq!(read(&p), vec![b'a'; 100]);

    // The same edits, synced this time, survive.
    f.write_all_at(&[b'b'; 10], 10).unwrap();
    f.write_all_at(&[b'c'; 20], 95).unwrap();
    f.write_all_at(b"z", 200).unwrap();
    f.sync_data().unwrap();
    fx.crash();
    assert_eq!(read(&p), expect);
}

#[test]
fn truncate_and_namespace_operations_go_straight_through() {
    let Some(fx) = fixture("truncate_and_namespace_operations_go_straight_through") else {
        return;
    };
    std::fs::create_dir(fx.path("d")).unwrap();
    let p = fx.path("d/f");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"0123456789").unwrap();
    f.sync_all().unwrap();
    f.write_all(b"abcdef").unwrap();
    // Cut inside the unsynced tail: the disk's size changes now, the cache keeps the rest.
    f.set_len(13).unwrap();
    assert_eq!(read(&p), b"0123456789abc");
    drop(f);
    std::fs::rename(&p, fx.path("d/g")).unwrap();
    std::fs::write(fx.path("gone"), b"x").unwrap();
    std::fs::remove_file(fx.path("gone")).unwrap();
    let names: Vec<String> = std::fs::read_dir(fx.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["g".to_string()]);
    fx.crash();
    // The rename and the new size stayed; the unsynced bytes below it became zeros.
    assert!(!p.exists());
    assert_eq!(read(&fx.path("d/g")), b"0123456789\0\0\0");
    assert!(!fx.path("gone").exists());
    std::fs::remove_file(fx.path("d/g")).unwrap();
    std::fs::remove_dir(fx.path("d")).unwrap();
    assert_eq!(std::fs::read_dir(&fx.mnt).unwrap().count(), 0);
}

#[test]
fn fallocate_locks_and_statfs_work_as_rocksdb_needs() {
    use rustix::fs::{FallocateFlags, FlockOperation};
    let Some(fx) = fixture("fallocate_locks_and_statfs_work_as_rocksdb_needs") else {
        return;
    };
    let p = fx.path("LOCK");
    let f = File::create(&p).unwrap();
    rustix::fs::fallocate(&f, FallocateFlags::KEEP_SIZE, 0, 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, 4096).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 4096);
    assert_eq!(
        rustix::fs::fallocate(&f, FallocateFlags::ZERO_RANGE, 0, 10),
        Err(rustix::io::Errno::OPNOTSUPP)
    );
    // One lock holder at a time, as RocksDB's LOCK file relies on.
    rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).unwrap();
    let g = File::open(&p).unwrap();
    assert_eq!(
        rustix::fs::flock(&g, FlockOperation::NonBlockingLockExclusive),
        Err(rustix::io::Errno::WOULDBLOCK)
    );
    drop(f);
    rustix::fs::flock(&g, FlockOperation::NonBlockingLockExclusive).unwrap();
    let st = rustix::fs::statvfs(&fx.mnt).unwrap();
    assert!(st.f_blocks > 0 && st.f_bsize > 0);
}

#[test]
fn checkpoint_persists_everything_and_unlinked_files_drop_their_bytes() {
    let Some(fx) = fixture("checkpoint_persists_everything_and_unlinked_files_drop_their_bytes")
    else {
        return;
    };
    std::fs::write(fx.path("a"), b"aaaa").unwrap();
    std::fs::write(fx.path("b"), b"bb").unwrap();
    let written = request(&fx.control, Command::Checkpoint, Duration::from_secs(30)).unwrap();
    assert_eq!(written, CacheStats { files: 2, bytes: 6 });
    assert_eq!(read(&fx.backing.join("a")), b"aaaa");
    std::fs::write(fx.path("c"), b"cc").unwrap();
    std::fs::remove_file(fx.path("c")).unwrap();
    fx.crash();
    assert_eq!(read(&fx.path("a")), b"aaaa");
    assert_eq!(read(&fx.path("b")), b"bb");
    assert_eq!(fx.fs.unsynced(), CacheStats::default());
}

#[test]
fn writes_with_o_dsync_are_durable_at_once() {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(fx) = fixture("writes_with_o_dsync_are_durable_at_once") else {
        return;
    };
    let p = fx.path("dsync");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::DSYNC.bits() as i32)
        .open(&p)
        .unwrap();
    f.write_all(b"synced by the open flag").unwrap();
    fx.crash();
    assert_eq!(read(&p), b"synced by the open flag");
}

#[test]
fn appends_after_a_power_cut_start_at_the_surviving_end() {
    let Some(fx) = fixture("appends_after_a_power_cut_start_at_the_surviving_end") else {
        return;
    };
    let p = fx.path("log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .unwrap();
    f.write_all(b"kept\n").unwrap();
    f.sync_all().unwrap();
    f.write_all(b"dropped at the power cut\n").unwrap();
    drop(f);
    fx.crash();
    // The kernel still remembers the longer size; the append must not leave a hole.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"after\n").unwrap();
    drop(f);
    assert_eq!(read(&p), b"kept\nafter\n");
}
