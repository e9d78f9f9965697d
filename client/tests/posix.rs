//! The FUSE frontend end to end: a real `FsStore` behind an in-process
//! backend, mounted in a temporary folder, exercised only through the
//! kernel (std::fs and libc), as applications see it.
//!
//! Each test mounts its own store, so tests run in parallel and a failure
//! leaves nothing mounted (the fixture unmounts in Drop). Needs root and
//! /dev/fuse; without them each test passes with a note.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use support::{cpath, last_errno, Mounted};

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap_or(0)
}

fn process_umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[test]
fn files_write_read_append_sparse_truncate() {
    let Some(m) = Mounted::new() else { return };
    let p = m.path("a.txt");
    fs::write(&p, b"hello world").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello world");
    assert_eq!(fs::metadata(&p).unwrap().len(), 11);

    // Overwrite in the middle, append with O_APPEND.
    let mut f = OpenOptions::new().write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(6)).unwrap();
    f.write_all(b"WORLD").unwrap();
    drop(f);
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"!!").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello WORLD!!");

    // O_EXCL on an existing name.
    assert_eq!(errno_of(OpenOptions::new().write(true).create_new(true).open(&p)), libc::EEXIST);
    // O_TRUNC empties it.
    drop(OpenOptions::new().write(true).truncate(true).open(&p).unwrap());
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);

    // Sparse: a write far past the end reads back zeros before it.
    let s = m.path("sparse");
    let mut f = File::create(&s).unwrap();
    f.seek(SeekFrom::Start(200_000)).unwrap();
    f.write_all(b"end").unwrap();
    drop(f);
    let data = fs::read(&s).unwrap();
    assert_eq!(data.len(), 200_003);
    assert!(data[..200_000].iter().all(|&b| b == 0));
    assert_eq!(&data[200_000..], b"end");

    // A large file: several max_write-sized writes across 64 KiB blocks.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 12345).map(|i| (i * 7 % 251) as u8).collect();
    let b = m.path("big");
    fs::write(&b, &big).unwrap();
    assert_eq!(fs::read(&b).unwrap(), big);

    // ftruncate (setattr through the handle) shrinks and extends.
    let f = OpenOptions::new().write(true).open(&b).unwrap();
    f.set_len(100_000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 100_000);
    f.set_len(150_000).unwrap();
    drop(f);
    let data = fs::read(&b).unwrap();
    assert_eq!(&data[..100_000], &big[..100_000]);
    assert!(data[100_000..].iter().all(|&x| x == 0));
    // truncate(2) by path.
    assert_eq!(unsafe { libc::truncate(cpath(&b).as_ptr(), 10) }, 0);
    assert_eq!(fs::read(&b).unwrap(), &big[..10]);

    // fsync and fdatasync reach the store.
    let f = OpenOptions::new().write(true).open(&b).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
}

#[test]
fn directories_listing_and_removal() {
    let Some(m) = Mounted::new() else { return };
    let d = m.path("dir");
    fs::DirBuilder::new().mode(0o777).create(&d).unwrap();
    let md = fs::metadata(&d).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.mode() & 0o777, 0o777 & !process_umask());

    // Enough entries for several kernel readdir calls and backend batches.
    let mut want: Vec<String> = (0..600).map(|i| format!("file-with-a-longish-name-{i:04}")).collect();
    for n in &want {
        File::create(d.join(n)).unwrap();
    }
    fs::create_dir(d.join("sub")).unwrap();
    want.push("sub".into());
    let mut got: Vec<String> = fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // File types come through readdir(plus).
    let sub = fs::read_dir(&d).unwrap().map(|e| e.unwrap()).find(|e| e.file_name() == "sub").unwrap();
    assert!(sub.file_type().unwrap().is_dir());

    assert_eq!(errno_of(fs::remove_dir(&d)), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::create_dir(d.join("sub"))), libc::EEXIST);
    assert_eq!(errno_of(fs::remove_dir(d.join("file-with-a-longish-name-0000"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(d.join("sub"))), libc::EISDIR);
    let long = "x".repeat(256);
    assert_eq!(errno_of(File::create(d.join(&long))), libc::ENAMETOOLONG);
    assert_eq!(errno_of(fs::metadata(d.join(&long))), libc::ENAMETOOLONG);

    for n in &want {
        if n == "sub" {
            fs::remove_dir(d.join(n)).unwrap();
        } else {
            fs::remove_file(d.join(n)).unwrap();
        }
    }
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
    fs::remove_dir(&d).unwrap();
    assert_eq!(errno_of(fs::metadata(&d)), libc::ENOENT);
}

#[test]
fn rename_plain_replace_noreplace_exchange() {
    let Some(m) = Mounted::new() else { return };
    fs::write(m.path("a"), b"A").unwrap();
    fs::write(m.path("b"), b"B").unwrap();
    fs::create_dir(m.path("d")).unwrap();

    fs::rename(m.path("a"), m.path("d/a2")).unwrap();
    assert_eq!(errno_of(fs::metadata(m.path("a"))), libc::ENOENT);
    assert_eq!(fs::read(m.path("d/a2")).unwrap(), b"A");

    // Replace an existing file.
    fs::write(m.path("c"), b"C").unwrap();
    fs::rename(m.path("c"), m.path("b")).unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"C");

    let at = libc::AT_FDCWD;
    let (x, y) = (cpath(&m.path("b")), cpath(&m.path("d/a2")));
    let rc = unsafe { libc::renameat2(at, x.as_ptr(), at, y.as_ptr(), libc::RENAME_NOREPLACE) };
    assert_eq!((rc, last_errno()), (-1, libc::EEXIST));
    let rc = unsafe { libc::renameat2(at, x.as_ptr(), at, y.as_ptr(), libc::RENAME_EXCHANGE) };
    assert_eq!(rc, 0, "exchange: errno {}", last_errno());
    assert_eq!(fs::read(m.path("b")).unwrap(), b"A");
    assert_eq!(fs::read(m.path("d/a2")).unwrap(), b"C");

    // A directory cannot move into itself.
    assert_eq!(errno_of(fs::rename(m.path("d"), m.path("d/inner"))), libc::EINVAL);
}

#[test]
fn symlinks_and_hard_links() {
    let Some(m) = Mounted::new() else { return };
    fs::write(m.path("target"), b"data").unwrap();
    std::os::unix::fs::symlink("target", m.path("link")).unwrap();
    assert_eq!(fs::read_link(m.path("link")).unwrap().to_str().unwrap(), "target");
    assert!(fs::symlink_metadata(m.path("link")).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(m.path("link")).unwrap(), b"data");
    let long_target = "t".repeat(4000);
    std::os::unix::fs::symlink(&long_target, m.path("longlink")).unwrap();
    assert_eq!(fs::read_link(m.path("longlink")).unwrap().to_str().unwrap(), long_target);

    fs::hard_link(m.path("target"), m.path("hard")).unwrap();
    let (a, b) = (fs::metadata(m.path("target")).unwrap(), fs::metadata(m.path("hard")).unwrap());
    assert_eq!(a.ino(), b.ino());
    assert_eq!(b.nlink(), 2);
    fs::write(m.path("hard"), b"changed").unwrap();
    assert_eq!(fs::read(m.path("target")).unwrap(), b"changed");
    fs::remove_file(m.path("target")).unwrap();
    assert_eq!(fs::metadata(m.path("hard")).unwrap().nlink(), 1);
    assert_eq!(errno_of(fs::hard_link(m.path("hard"), m.path("hard"))), libc::EEXIST);
}

#[test]
fn unlinked_open_file_stays_readable() {
    let Some(m) = Mounted::new() else { return };
    let p = m.path("ghost");
    fs::write(&p, b"still here").unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(errno_of(fs::metadata(&p)), libc::ENOENT);
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    // Writable too, and fstat works on the unlinked inode.
    f.write_all(b"!").unwrap();
    assert_eq!(f.metadata().unwrap().len(), 11);
    drop(f);
    assert_eq!(fs::read_dir(&m.mnt).unwrap().count(), 0);
}

#[test]
fn xattrs_probe_erange_list_remove() {
    let Some(m) = Mounted::new() else { return };
    let p = m.path("x");
    fs::write(&p, b"").unwrap();
    let c = cpath(&p);
    let name = c"user.color";
    let val = b"blue";
    let set = |flags| unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), val.as_ptr().cast(), val.len(), flags) };
    assert_eq!(set(0), 0, "errno {}", last_errno());
    assert_eq!((set(libc::XATTR_CREATE), last_errno()), (-1, libc::EEXIST));

    // Size probe, too-small buffer, exact buffer.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(n, 4);
    let mut small = [0u8; 2];
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), small.as_mut_ptr().cast(), small.len()) };
    assert_eq!((n, last_errno()), (-1, libc::ERANGE));
    let mut buf = [0u8; 64];
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], val);

    let n = unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(n as usize, b"user.color\0".len());
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"user.color\0");

    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) }, 0);
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!((n, last_errno()), (-1, libc::ENODATA));
}

#[test]
fn attributes_chmod_chown_times_statfs_special_files() {
    let Some(m) = Mounted::new() else { return };
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));

    // Times, including before 1970 with a fraction (fuser's negative-time path).
    let times = [libc::timespec { tv_sec: -2, tv_nsec: 800_000_000 }, libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 123_456_789 }];
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p).as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "errno {}", last_errno());
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (-2, 800_000_000));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000_000, 123_456_789));
    let now = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW }, libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }];
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p).as_ptr(), now.as_ptr(), 0) }, 0);
    let md = fs::metadata(&p).unwrap();
    assert!(md.atime() > 1_600_000_000);
    assert_eq!(md.mtime(), 1_000_000_000);

    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(cpath(&m.mnt).as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_namemax, 255);
    assert!(st.f_bsize > 0 && st.f_blocks > 0);

    let fifo = m.path("fifo");
    assert_eq!(unsafe { libc::mkfifo(cpath(&fifo).as_ptr(), 0o644) }, 0);
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let dev = m.path("null");
    assert_eq!(unsafe { libc::mknod(cpath(&dev).as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) }, 0);
    let md = fs::metadata(&dev).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), libc::makedev(1, 3));
}

#[test]
fn fallocate_and_copy_file_range() {
    let Some(m) = Mounted::new() else { return };
    let f = File::create(m.path("pre")).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0, "errno {}", last_errno());
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    drop(f);

    let src: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(m.path("src"), &src).unwrap();
    let fin = File::open(m.path("src")).unwrap();
    let fout = File::create(m.path("dst")).unwrap();
    let mut left = src.len();
    while left > 0 {
        let n = unsafe { libc::copy_file_range(fin.as_raw_fd(), std::ptr::null_mut(), fout.as_raw_fd(), std::ptr::null_mut(), left, 0) };
        assert!(n > 0, "copy_file_range: {n} errno {}", last_errno());
        left -= n as usize;
    }
    drop((fin, fout));
    assert_eq!(fs::read(m.path("dst")).unwrap(), src);
}

/// Runs `cmd` as uid/gid 65534 with the given supplementary groups and
/// returns (success, stderr).
fn run_as_nobody(groups: &[u32], cmd: &str) -> (bool, String) {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(cmd);
    // std runs pre_exec after its own uid switch, so switch here, in order.
    unsafe {
        c.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn permissions_for_other_users() {
    let Some(m) = Mounted::new() else { return };
    let secret = m.path("secret");
    fs::write(&secret, b"s").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o755)).unwrap();

    let (ok, err) = run_as_nobody(&[], &format!("cat {}", secret.display()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = run_as_nobody(&[], &format!("touch {}", m.path("new").display()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = run_as_nobody(&[], &format!("chmod 777 {}", secret.display()));
    assert!(!ok && err.contains("Operation not permitted"), "{err}");

    // Access through a supplementary group: the kernel allows it and so must
    // the state machine (the frontend passes the caller's groups along).
    let shared = m.path("shared");
    fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(0), Some(4242)).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o770)).unwrap();
    fs::write(shared.join("in"), b"g").unwrap();
    let (ok, err) = run_as_nobody(&[], &format!("cat {}", shared.join("in").display()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) =
        run_as_nobody(&[4242], &format!("cat {0} && touch {1} && rm {1}", shared.join("in").display(), shared.join("mine").display()));
    assert!(ok, "{err}");

    // A user's own file: chmod allowed, chown to root refused.
    let (ok, err) = run_as_nobody(&[], &format!("chmod 1777 {}", m.mnt.display()));
    assert!(!ok, "{err}");
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    let mine = m.path("mine");
    let (ok, err) = run_as_nobody(&[], &format!("echo hi > {0} && chmod 600 {0}", mine.display()));
    assert!(ok, "{err}");
    assert_eq!(fs::metadata(&mine).unwrap().uid(), 65534);
    let (ok, err) = run_as_nobody(&[], &format!("chown 0 {}", mine.display()));
    assert!(!ok && err.contains("Operation not permitted"), "{err}");
    // Sticky directory: nobody may not remove root's file.
    let (ok, _) = run_as_nobody(&[], &format!("rm -f {}", secret.display()));
    assert!(!ok);
    assert!(secret.exists());
}

#[test]
fn concurrent_writers_on_several_threads() {
    let Some(m) = Mounted::new() else { return };
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let p = m.path(&format!("t{t}"));
            std::thread::spawn(move || {
                let data = vec![t as u8; 256 * 1024];
                for _ in 0..4 {
                    fs::write(&p, &data).unwrap();
                    assert_eq!(fs::read(&p).unwrap(), data);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(fs::read_dir(&m.mnt).unwrap().count(), 8);
}

#[test]
fn unmount_then_remount_keeps_nothing_mounted() {
    let Some(mut m) = Mounted::new() else { return };
    fs::write(m.path("f"), b"x").unwrap();
    let f = File::open(m.path("f")).unwrap();
    // Busy (open file): unmount must still free the mount point.
    m.unmount();
    drop(f);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains(m.mnt.to_str().unwrap()));
}

/// What the frontend sends for details the kernel hides from a single
/// client: O_APPEND on writes (the server appends at its own size), O_EXCL
/// as `excl`, rename flags, UTIME_NOW vs explicit times, umask, groups.
#[test]
fn requests_carry_flags_times_umask_and_groups() {
    use chorus_fs::ops::{Op, Request, SetTime};
    let Some(m) = Mounted::new() else { return };
    let mutations = |m: &Mounted| -> Vec<(chorus_fs::ops::Caller, Op)> {
        m.backend
            .requests()
            .into_iter()
            .filter_map(|r| match r {
                Request::Mutate { caller, op } => Some((caller, op)),
                _ => None,
            })
            .collect()
    };

    File::create(m.path("plain")).unwrap();
    drop(OpenOptions::new().write(true).create_new(true).open(m.path("excl")).unwrap());
    let mut f = OpenOptions::new().append(true).open(m.path("plain")).unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    let ops = mutations(&m);
    assert!(ops.iter().any(|(_, op)| matches!(op, Op::Create { name, excl: false, .. } if name == b"plain")));
    assert!(ops.iter().any(|(_, op)| matches!(op, Op::Create { name, excl: true, .. } if name == b"excl")));
    assert!(ops.iter().any(|(_, op)| matches!(op, Op::Write { flags, .. } if flags & libc::O_APPEND != 0)));
    assert!(ops.iter().any(|(_, op)| matches!(op, Op::Release { .. })));

    let (x, y) = (cpath(&m.path("plain")), cpath(&m.path("excl")));
    assert_eq!(unsafe { libc::renameat2(libc::AT_FDCWD, x.as_ptr(), libc::AT_FDCWD, y.as_ptr(), libc::RENAME_EXCHANGE) }, 0);
    assert!(mutations(&m).iter().any(|(_, op)| matches!(op, Op::Rename { flags, .. } if *flags == libc::RENAME_EXCHANGE)));

    let now = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW }, libc::timespec { tv_sec: 7, tv_nsec: 9 }];
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, x.as_ptr(), now.as_ptr(), 0) }, 0);
    assert!(mutations(&m).iter().any(|(_, op)| matches!(op, Op::SetAttr { attr, .. }
        if attr.atime == Some(SetTime::Now) && attr.mtime == Some(SetTime::At(chorus_fs::ops::Timestamp::new(7, 9))))));

    // mkdir carries the process umask (the state machine applies it).
    fs::create_dir(m.path("d")).unwrap();
    let umask = process_umask();
    assert!(mutations(&m).iter().any(|(_, op)| matches!(op, Op::Mkdir { umask: u, .. } if *u == umask || umask == 0)));

    // A non-root caller's supplementary groups travel with its requests.
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    let (ok, err) = run_as_nobody(&[4242, 4343], &format!("touch {}", m.path("nob").display()));
    assert!(ok, "{err}");
    let (caller, _) =
        mutations(&m).into_iter().find(|(_, op)| matches!(op, Op::Create { name, .. } if name == b"nob")).expect("create of nob");
    assert_eq!((caller.uid, caller.gid), (65534, 65534));
    assert_eq!(caller.groups, vec![4242, 4343]);
}
