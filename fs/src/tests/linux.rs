//! Differential test against the real kernel: the same random operations on
//! the store and on a directory of the local (ext4) file system must give the
//! same errnos and the same final tree. Linux is the oracle here, not a model
//! written by the same hand as the store.
//!
//! Symlinks get dangling targets, so wherever the kernel follows one (a
//! parent path) the answer is ENOENT; data operations open with O_NOFOLLOW
//! (ELOOP on a symlink, as the store's Open). Runs as whatever user runs the
//! tests; the operations need no privileges.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use proptest::prelude::*;

use super::model::{arb_op, join, name, store_tree, unit, MOp, Path, Seen};
use super::Harness;
use crate::ops::*;

/// Target of every symlink: never exists.
const DANGLING: &[u8] = b"/nonexistent/chorus-target";

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().expect("errno")
}

fn check(rc: libc::c_int) -> Result<(), i32> {
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

struct Real {
    root: PathBuf,
}

impl Real {
    fn cpath(&self, path: &Path) -> CString {
        let mut full = self.root.as_os_str().as_bytes().to_vec();
        for &c in path {
            full.push(b'/');
            full.push(c);
        }
        CString::new(full).unwrap()
    }

    /// Runs `f` on an fd opened O_RDWR | O_NOFOLLOW, then closes it.
    fn with_fd(&self, path: &Path, f: impl FnOnce(libc::c_int) -> libc::c_int) -> Result<(), i32> {
        let p = self.cpath(path);
        // SAFETY: valid C string; the fd is closed below.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(last_errno());
        }
        let rc = f(fd);
        let result = check(rc);
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        result
    }

    fn apply(&self, op: &MOp) -> Result<(), i32> {
        // SAFETY (all calls below): valid NUL-terminated paths and buffers.
        unsafe {
            match op {
                MOp::Mkdir(p, n) => check(libc::mkdir(self.cpath(&join(p, *n)).as_ptr(), 0o755)),
                MOp::Create(p, n) => {
                    let path = self.cpath(&join(p, *n));
                    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC;
                    let fd = libc::open(path.as_ptr(), flags, 0o644);
                    if fd < 0 {
                        return Err(last_errno());
                    }
                    libc::close(fd);
                    Ok(())
                }
                MOp::Symlink(p, n) => {
                    let target = CString::new(DANGLING).unwrap();
                    check(libc::symlink(target.as_ptr(), self.cpath(&join(p, *n)).as_ptr()))
                }
                MOp::Link(s, p, n) => check(libc::link(self.cpath(s).as_ptr(), self.cpath(&join(p, *n)).as_ptr())),
                MOp::Unlink(p, n) => check(libc::unlink(self.cpath(&join(p, *n)).as_ptr())),
                MOp::Rmdir(p, n) => check(libc::rmdir(self.cpath(&join(p, *n)).as_ptr())),
                MOp::Rename(p, n, q, m, flags) => check(libc::renameat2(
                    libc::AT_FDCWD,
                    self.cpath(&join(p, *n)).as_ptr(),
                    libc::AT_FDCWD,
                    self.cpath(&join(q, *m)).as_ptr(),
                    *flags,
                )),
                MOp::Write(p, offset, data) => self.with_fd(p, |fd| {
                    let n = libc::pwrite(fd, data.as_ptr().cast(), data.len(), *offset as i64);
                    assert!(n < 0 || n as usize == data.len(), "short write on ext4");
                    n as libc::c_int
                }),
                MOp::Truncate(p, size) => self.with_fd(p, |fd| libc::ftruncate(fd, *size as i64)),
                MOp::Fallocate(p, offset, length, mode) => self.with_fd(p, |fd| libc::fallocate(fd, *mode, *offset as i64, *length as i64)),
            }
        }
    }

    fn tree(&self) -> BTreeMap<Path, Seen> {
        let mut tree = BTreeMap::new();
        let mut stack: Vec<Path> = vec![vec![]];
        while let Some(path) = stack.pop() {
            let cpath = self.cpath(&path);
            let fs_path = std::path::Path::new(std::ffi::OsStr::from_bytes(cpath.as_bytes()));
            let meta = std::fs::symlink_metadata(fs_path).unwrap();
            let seen = if meta.is_dir() {
                for entry in std::fs::read_dir(fs_path).unwrap() {
                    let entry = entry.unwrap();
                    stack.push(join(&path, entry.file_name().as_bytes()[0]));
                }
                Seen::Dir
            } else if meta.file_type().is_fifo() {
                Seen::Special { nlink: meta.nlink() as u32 }
            } else if meta.file_type().is_symlink() {
                Seen::Symlink(std::fs::read_link(fs_path).unwrap().as_os_str().as_bytes().to_vec())
            } else {
                Seen::File { data: std::fs::read(fs_path).unwrap(), nlink: meta.nlink() as u32 }
            };
            tree.insert(path, seen);
        }
        tree
    }
}

/// Walks `path` as `caller`, following symlinks the way the kernel does for a
/// parent path: every symlink dangles, so meeting one is ENOENT.
fn resolve_follow(h: &Harness, caller: &Caller, path: &Path) -> Result<Ino, i32> {
    let mut ino = ROOT_INO;
    for &c in path {
        let attr = h.lookup_as(caller, ino, &name(c))?;
        if attr.kind == FileKind::Symlink {
            return Err(libc::ENOENT);
        }
        ino = attr.ino;
    }
    Ok(ino)
}

/// The parent of a rename source must be a directory before the target path
/// is looked at (the kernel walks the whole source parent first).
/// The walk ends with a search-permission check on that parent (the kernel's
/// `may_lookup` runs before the last component is even looked at).
fn resolve_follow_dir(h: &Harness, caller: &Caller, path: &Path) -> Result<Ino, i32> {
    let ino = resolve_follow(h, caller, path)?;
    h.lookup_as(caller, ino, ".")?;
    Ok(ino)
}

/// `path`'s last component looked up without following it.
fn resolve_nofollow(h: &Harness, caller: &Caller, path: &Path) -> Result<Ino, i32> {
    let (last, parent) = path.split_last().expect("non-empty path");
    let parent = resolve_follow(h, caller, &parent.to_vec())?;
    Ok(h.lookup_as(caller, parent, &name(*last))?.ino)
}

fn apply_store(h: &mut Harness, caller: &Caller, op: &MOp) -> Result<(), i32> {
    let umask = UMASK;
    match op {
        MOp::Mkdir(p, n) => {
            let parent = resolve_follow(h, caller, p)?;
            unit(h.run_as(caller, Op::Mkdir { parent, name: vec![*n], mode: 0o755, umask }))
        }
        MOp::Create(p, n) => {
            let parent = resolve_follow(h, caller, p)?;
            let op = Op::Create { parent, name: vec![*n], mode: 0o644, umask, flags: libc::O_RDWR, excl: true };
            match h.run_as(caller, op) {
                Ok(Reply::Created { attr, fh }) => {
                    assert_eq!(h.run_as(caller, Op::Release { ino: attr.ino, fh }), Ok(Reply::Ok));
                    Ok(())
                }
                other => unit(other),
            }
        }
        MOp::Symlink(p, n) => {
            let parent = resolve_follow(h, caller, p)?;
            unit(h.run_as(caller, Op::Symlink { parent, name: vec![*n], target: DANGLING.to_vec() }))
        }
        MOp::Link(s, p, n) => {
            let ino = resolve_nofollow(h, caller, s)?;
            let newparent = resolve_follow(h, caller, p)?;
            unit(h.run_as(caller, Op::Link { ino, newparent, newname: vec![*n] }))
        }
        MOp::Unlink(p, n) => {
            let parent = resolve_follow(h, caller, p)?;
            unit(h.run_as(caller, Op::Unlink { parent, name: vec![*n] }))
        }
        MOp::Rmdir(p, n) => {
            let parent = resolve_follow(h, caller, p)?;
            unit(h.run_as(caller, Op::Rmdir { parent, name: vec![*n] }))
        }
        MOp::Rename(p, n, q, m, flags) => {
            let parent = resolve_follow_dir(h, caller, p)?;
            let newparent = resolve_follow(h, caller, q)?;
            let op = Op::Rename { parent, name: vec![*n], newparent, newname: vec![*m], flags: *flags };
            unit(h.run_as(caller, op))
        }
        MOp::Write(p, ..) | MOp::Truncate(p, _) | MOp::Fallocate(p, ..) => {
            let ino = resolve_nofollow(h, caller, p)?;
            let fh = match h.run_as(caller, Op::Open { ino, flags: libc::O_RDWR }) {
                Ok(Reply::Opened { fh, attr }) if attr.kind == FileKind::Fifo && matches!(op, MOp::Write(..)) => {
                    // pwrite on a pipe is refused by the kernel's pipe code.
                    assert_eq!(h.run_as(caller, Op::Release { ino, fh }), Ok(Reply::Ok));
                    return Err(libc::ESPIPE);
                }
                Ok(Reply::Opened { fh, .. }) => fh,
                other => return unit(other),
            };
            let op = match op {
                MOp::Write(_, offset, data) => Op::Write { ino, fh, offset: *offset, data: data.clone(), flags: 0 },
                MOp::Truncate(_, size) => Op::SetAttr { ino, attr: SetAttr { size: Some(*size), fh: Some(fh), ..Default::default() } },
                MOp::Fallocate(_, offset, length, mode) => Op::Fallocate { ino, fh, offset: *offset, length: *length, mode: *mode },
                _ => unreachable!(),
            };
            let result = unit(h.run_as(caller, op));
            assert_eq!(h.run_as(caller, Op::Release { ino, fh }), Ok(Reply::Ok));
            result
        }
    }
}

/// The umask both sides apply (the test process's umask is set to it).
const UMASK: u32 = 0o022;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_linux(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut h = Harness::new();
        let dir = tempfile::tempdir().unwrap();
        let real = Real { root: dir.path().join("root") };
        std::fs::create_dir(&real.root).unwrap();
        for (i, op) in ops.iter().enumerate() {
            let expected = real.apply(op);
            let got = apply_store(&mut h, &Caller::root(), op);
            prop_assert_eq!(got, expected, "op #{} {:?}", i, op);
        }
        prop_assert_eq!(store_tree(&h), real.tree());
    }
}

/// Operations of the permission test: any [`MOp`] by one of three users,
/// plus chmod, chown and utimens.
#[derive(Clone, Debug)]
enum POp {
    As(u8, MOp),
    Chmod(u8, Path, u32),
    Chown(u8, Path, Option<u32>, Option<u32>),
    /// `true`: both times UTIME_NOW; `false`: explicit times.
    Utimens(u8, Path, bool),
    /// open(path, O_WRONLY | O_TRUNC) and close.
    OpenTrunc(u8, Path),
    Mkfifo(u8, Path, u8),
    /// open(O_CREAT | O_EXCL) with a chosen mode (set-ID bits, umask).
    CreateMode(u8, Path, u8, u32),
}

/// root; alice (1000); bob (1001, also in alice's group 1000).
fn who(n: u8) -> Caller {
    match n {
        0 => Caller::root(),
        1 => Caller { uid: 1000, gid: 1000, pid: 1, groups: vec![] },
        _ => Caller { uid: 1001, gid: 1001, pid: 1, groups: vec![1000] },
    }
}

fn arb_pop() -> impl Strategy<Value = POp> {
    let who = 0u8..3;
    let modes = prop::sample::select(vec![0o755, 0o700, 0o1777, 0o2775, 0o4755, 0o644, 0o000, 0o777, 0o6777, 0o2644]);
    let ids = prop::sample::select(vec![None, Some(0), Some(1000), Some(1001)]);
    let path = prop::collection::vec(prop::sample::select(b"abc".to_vec()), 0..3);
    prop_oneof![
        6 => (who.clone(), arb_op()).prop_map(|(w, op)| POp::As(w, op)),
        2 => (who.clone(), path.clone(), modes).prop_map(|(w, p, m)| POp::Chmod(w, p, m)),
        2 => (who.clone(), path.clone(), ids.clone(), ids)
            .prop_filter("chown(-1, -1) is out of scope", |(_, _, u, g)| u.is_some() || g.is_some())
            .prop_map(|(w, p, u, g)| POp::Chown(w, p, u, g)),
        1 => (who.clone(), path.clone(), any::<bool>()).prop_map(|(w, p, now)| POp::Utimens(w, p, now)),
        1 => (who.clone(), prop::collection::vec(prop::sample::select(b"abc".to_vec()), 1..3))
            .prop_map(|(w, p)| POp::OpenTrunc(w, p)),
        1 => (who.clone(), path.clone(), prop::sample::select(b"abc".to_vec()))
            .prop_map(|(w, p, n)| POp::Mkfifo(w, p, n)),
        1 => (who.clone(), path.clone(), prop::sample::select(b"abc".to_vec()), prop::sample::select(vec![0o2755, 0o4777, 0o6711, 0o1600]))
            .prop_map(|(w, p, n, m)| POp::CreateMode(w, p, n, m))
    ]
}

/// Runs the calling thread's file-system accesses as `caller` until dropped:
/// setfsuid/setfsgid/setgroups are per thread at the system-call level, a
/// non-zero fsuid drops the file capabilities, and CAP_SYS_ADMIN (which
/// guards trusted.* and security.* xattrs) is dropped from the thread's
/// effective set by capset, so the thread acts like a real user.
struct AsUser {
    saved_caps: Option<[CapData; 2]>,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;
const CAP_SYS_ADMIN: u32 = 21;

fn caps_get() -> [CapData; 2] {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as capget(2) wants for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget");
    data
}

fn caps_set(data: &[CapData; 2]) {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    // SAFETY: as above; only this thread's capabilities change.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset");
}

impl AsUser {
    fn new(caller: &Caller) -> AsUser {
        let mut saved_caps = None;
        if caller.uid != 0 {
            let caps = caps_get();
            let mut reduced = caps;
            reduced[0].effective &= !(1 << CAP_SYS_ADMIN);
            caps_set(&reduced);
            saved_caps = Some(caps);
        }
        // SAFETY: plain system calls on this thread's credentials.
        unsafe {
            let rc = libc::syscall(libc::SYS_setgroups, caller.groups.len(), caller.groups.as_ptr());
            assert_eq!(rc, 0, "setgroups");
            libc::syscall(libc::SYS_setfsgid, caller.gid);
            libc::syscall(libc::SYS_setfsuid, caller.uid);
            assert_eq!(libc::syscall(libc::SYS_setfsuid, -1i32 as u32), caller.uid as i64);
        }
        AsUser { saved_caps }
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        let root_groups = [0u32];
        // SAFETY: as above; back to root.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, 0);
            libc::syscall(libc::SYS_setfsgid, 0);
            libc::syscall(libc::SYS_setgroups, 1, root_groups.as_ptr());
        }
        if let Some(caps) = &self.saved_caps {
            caps_set(caps);
        }
    }
}

impl Real {
    fn apply_perm(&self, op: &POp) -> Result<(), i32> {
        let caller = match op {
            POp::As(w, _)
            | POp::Chmod(w, ..)
            | POp::Chown(w, ..)
            | POp::Utimens(w, ..)
            | POp::OpenTrunc(w, ..)
            | POp::Mkfifo(w, ..)
            | POp::CreateMode(w, ..) => who(*w),
        };
        let _as = AsUser::new(&caller);
        // SAFETY: valid NUL-terminated paths and time arrays.
        unsafe {
            match op {
                POp::As(_, op) => self.apply(op),
                POp::Chmod(_, p, mode) => check(libc::chmod(self.cpath(p).as_ptr(), *mode)),
                POp::Chown(_, p, uid, gid) => {
                    let uid = uid.unwrap_or(u32::MAX);
                    let gid = gid.unwrap_or(u32::MAX);
                    check(libc::chown(self.cpath(p).as_ptr(), uid, gid))
                }
                POp::Utimens(_, p, now) => {
                    let t = if *now {
                        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW }
                    } else {
                        libc::timespec { tv_sec: 12345, tv_nsec: 6789 }
                    };
                    let times = [t, t];
                    check(libc::utimensat(libc::AT_FDCWD, self.cpath(p).as_ptr(), times.as_ptr(), 0))
                }
                POp::OpenTrunc(_, p) => {
                    // O_NONBLOCK: opening a fifo for writing would wait for a reader.
                    let flags = libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
                    let fd = libc::open(self.cpath(p).as_ptr(), flags);
                    if fd < 0 {
                        return Err(last_errno());
                    }
                    libc::close(fd);
                    Ok(())
                }
                POp::Mkfifo(_, p, n) => check(libc::mkfifo(self.cpath(&join(p, *n)).as_ptr(), 0o644)),
                POp::CreateMode(_, p, n, mode) => {
                    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC;
                    let fd = libc::open(self.cpath(&join(p, *n)).as_ptr(), flags, *mode);
                    if fd < 0 {
                        return Err(last_errno());
                    }
                    libc::close(fd);
                    Ok(())
                }
            }
        }
    }

    /// Kind, permission bits, owner and group of every path.
    fn owners(&self) -> BTreeMap<Path, (u32, u32, u32)> {
        self.tree()
            .into_keys()
            .map(|path| {
                let cpath = self.cpath(&path);
                let fs_path = std::path::Path::new(std::ffi::OsStr::from_bytes(cpath.as_bytes()));
                let meta = std::fs::symlink_metadata(fs_path).unwrap();
                (path, (meta.mode(), meta.uid(), meta.gid()))
            })
            .collect()
    }
}

fn apply_store_perm(h: &mut Harness, op: &POp) -> Result<(), i32> {
    match op {
        POp::As(w, op) => apply_store(h, &who(*w), op),
        POp::Chmod(w, p, mode) => {
            let ino = resolve_follow(h, &who(*w), p)?;
            let attr = SetAttr { mode: Some(*mode), ..Default::default() };
            unit(h.run_as(&who(*w), Op::SetAttr { ino, attr }))
        }
        POp::Chown(w, p, uid, gid) => {
            let ino = resolve_follow(h, &who(*w), p)?;
            let attr = SetAttr { uid: *uid, gid: *gid, ..Default::default() };
            unit(h.run_as(&who(*w), Op::SetAttr { ino, attr }))
        }
        POp::Utimens(w, p, now) => {
            let ino = resolve_follow(h, &who(*w), p)?;
            let t = if *now { SetTime::Now } else { SetTime::At(Timestamp::new(12345, 6789)) };
            let attr = SetAttr { atime: Some(t), mtime: Some(t), ..Default::default() };
            unit(h.run_as(&who(*w), Op::SetAttr { ino, attr }))
        }
        POp::OpenTrunc(w, p) => {
            let caller = who(*w);
            let ino = resolve_nofollow(h, &caller, p)?;
            match h.run_as(&caller, Op::Open { ino, flags: libc::O_WRONLY | libc::O_TRUNC }) {
                Ok(Reply::Opened { fh, attr }) => {
                    assert_eq!(h.run_as(&caller, Op::Release { ino, fh }), Ok(Reply::Ok));
                    // The kernel's pipe code, not the file system: no reader yet.
                    if attr.kind == FileKind::Fifo {
                        return Err(libc::ENXIO);
                    }
                    Ok(())
                }
                other => unit(other),
            }
        }
        POp::Mkfifo(w, p, n) => {
            let caller = who(*w);
            let parent = resolve_follow(h, &caller, p)?;
            let op = Op::Mknod { parent, name: vec![*n], mode: libc::S_IFIFO | 0o644, umask: UMASK, rdev: 0 };
            unit(h.run_as(&caller, op))
        }
        POp::CreateMode(w, p, n, mode) => {
            let caller = who(*w);
            let parent = resolve_follow(h, &caller, p)?;
            let op = Op::Create { parent, name: vec![*n], mode: *mode, umask: UMASK, flags: libc::O_WRONLY, excl: true };
            match h.run_as(&caller, op) {
                Ok(Reply::Created { attr, fh }) => {
                    assert_eq!(h.run_as(&caller, Op::Release { ino: attr.ino, fh }), Ok(Reply::Ok));
                    Ok(())
                }
                other => unit(other),
            }
        }
    }
}

fn store_owners(h: &Harness) -> BTreeMap<Path, (u32, u32, u32)> {
    store_tree(h)
        .into_keys()
        .map(|path| {
            let ino = resolve_nofollow_or_root(h, &path);
            let a = h.getattr(ino).unwrap();
            (path, (a.kind.mode_bits() | a.perm, a.uid, a.gid))
        })
        .collect()
}

fn resolve_nofollow_or_root(h: &Harness, path: &Path) -> Ino {
    let mut ino = ROOT_INO;
    for &c in path {
        ino = h.lookup(ino, &name(c)).unwrap().ino;
    }
    ino
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Permission rules against the kernel: three users, chmod/chown/utimens
    /// and every namespace and data operation; errnos, contents, modes and
    /// owners must agree. Needs root (to act as the users); skipped otherwise.
    #[test]
    fn permissions_match_linux(ops in prop::collection::vec(arb_pop(), 1..60)) {
        // SAFETY: geteuid and umask have no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // .ci/run sets CHORUS_REQUIRE_FAULTS=1: there a skip is a failure.
            assert!(std::env::var("CHORUS_REQUIRE_FAULTS").as_deref() != Ok("1"), "needs root; CHORUS_REQUIRE_FAULTS=1 forbids skipping");
            return Ok(());
        }
        unsafe { libc::umask(UMASK as libc::mode_t) };
        let mut h = Harness::new();
        let dir = tempfile::tempdir().unwrap();
        let real = Real { root: dir.path().join("root") };
        std::fs::create_dir(&real.root).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&real.root, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let open_root = SetAttr { mode: Some(0o1777), ..Default::default() };
        let opened = h.run(Op::SetAttr { ino: ROOT_INO, attr: open_root }).is_ok();
        prop_assert!(opened);
        for (i, op) in ops.iter().enumerate() {
            let expected = real.apply_perm(op);
            let got = apply_store_perm(&mut h, op);
            if std::env::var_os("CHORUS_TRACE").is_some() {
                eprintln!("{op:?} -> {got:?}");
            }
            prop_assert_eq!(got, expected, "op #{} {:?}", i, op);
        }
        prop_assert_eq!(store_tree(&h), real.tree());
        prop_assert_eq!(store_owners(&h), real.owners());
    }
}

/// Extended-attribute operations by one of the users.
#[derive(Clone, Debug)]
enum XOp {
    Set(u8, Path, &'static str, i32),
    Remove(u8, Path, &'static str),
    Get(u8, Path, &'static str),
}

/// Every path's (name, value) pairs, sorted.
type XattrTree = BTreeMap<Path, Vec<(Vec<u8>, Vec<u8>)>>;

const XATTR_NAMES: [&str; 4] = ["user.a", "user.b", "trusted.t", "security.s"];

fn arb_xop() -> impl Strategy<Value = XOp> {
    let path = prop::collection::vec(prop::sample::select(b"abc".to_vec()), 0..3);
    let xname = prop::sample::select(XATTR_NAMES.to_vec());
    let flags = prop::sample::select(vec![0, libc::XATTR_CREATE, libc::XATTR_REPLACE]);
    prop_oneof![
        3 => (0u8..3, path.clone(), xname.clone(), flags).prop_map(|(w, p, n, f)| XOp::Set(w, p, n, f)),
        1 => (0u8..3, path.clone(), xname.clone()).prop_map(|(w, p, n)| XOp::Remove(w, p, n)),
        1 => (0u8..3, path, xname).prop_map(|(w, p, n)| XOp::Get(w, p, n)),
    ]
}

impl Real {
    fn apply_xattr(&self, op: &XOp) -> Result<(), i32> {
        let caller = match op {
            XOp::Set(w, ..) | XOp::Remove(w, ..) | XOp::Get(w, ..) => who(*w),
        };
        let _as = AsUser::new(&caller);
        let value = b"v";
        let mut buf = vec![0u8; 256];
        // SAFETY: valid paths, names and buffers.
        unsafe {
            match op {
                XOp::Set(_, p, n, flags) => {
                    let n = CString::new(*n).unwrap();
                    let rc = libc::lsetxattr(self.cpath(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), 1, *flags);
                    check(rc)
                }
                XOp::Remove(_, p, n) => {
                    let n = CString::new(*n).unwrap();
                    check(libc::lremovexattr(self.cpath(p).as_ptr(), n.as_ptr()))
                }
                XOp::Get(_, p, n) => {
                    let n = CString::new(*n).unwrap();
                    let rc = libc::lgetxattr(self.cpath(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
                    check(rc as libc::c_int)
                }
            }
        }
    }

    /// (name, value) pairs of every path, read as root.
    fn xattrs(&self) -> XattrTree {
        let mut all = BTreeMap::new();
        for path in self.tree().into_keys() {
            let p = self.cpath(&path);
            let mut list = vec![0u8; 4096];
            // SAFETY: valid path and buffers.
            let n = unsafe { libc::llistxattr(p.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
            assert!(n >= 0, "llistxattr: {}", last_errno());
            let mut pairs = Vec::new();
            for name in list[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                let cname = CString::new(name).unwrap();
                let mut value = vec![0u8; 256];
                // SAFETY: as above.
                let len = unsafe { libc::lgetxattr(p.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
                assert!(len >= 0);
                value.truncate(len as usize);
                pairs.push((name.to_vec(), value));
            }
            pairs.sort();
            all.insert(path, pairs);
        }
        all
    }
}

fn apply_store_xattr(h: &mut Harness, op: &XOp) -> Result<(), i32> {
    match op {
        XOp::Set(w, p, n, flags) => {
            let ino = resolve_path_nofollow(h, &who(*w), p)?;
            let op = Op::SetXattr { ino, name: n.as_bytes().to_vec(), value: b"v".to_vec(), flags: *flags };
            unit(h.run_as(&who(*w), op))
        }
        XOp::Remove(w, p, n) => {
            let ino = resolve_path_nofollow(h, &who(*w), p)?;
            unit(h.run_as(&who(*w), Op::RemoveXattr { ino, name: n.as_bytes().to_vec() }))
        }
        XOp::Get(w, p, n) => {
            let ino = resolve_path_nofollow(h, &who(*w), p)?;
            unit(h.query_as(&who(*w), Query::GetXattr { ino, name: n.as_bytes().to_vec() }))
        }
    }
}

/// Like `resolve_nofollow`, also for the root path.
fn resolve_path_nofollow(h: &Harness, caller: &Caller, path: &Path) -> Result<Ino, i32> {
    if path.is_empty() {
        return Ok(ROOT_INO);
    }
    resolve_nofollow(h, caller, path)
}

fn store_xattrs(h: &Harness) -> XattrTree {
    let mut all = BTreeMap::new();
    for path in store_tree(h).into_keys() {
        let ino = resolve_nofollow_or_root(h, &path);
        let Ok(Reply::Data(list)) = h.query(Query::ListXattr { ino }) else { panic!("listxattr") };
        let mut pairs = Vec::new();
        for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let Ok(Reply::Data(value)) = h.query(Query::GetXattr { ino, name: name.to_vec() }) else { panic!("getxattr") };
            pairs.push((name.to_vec(), value));
        }
        pairs.sort();
        all.insert(path, pairs);
    }
    all
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Extended attributes against the kernel, mixed with permission changes.
    #[test]
    fn xattrs_match_linux(
        ops in prop::collection::vec(prop_oneof![2 => arb_pop().prop_map(Ok), 3 => arb_xop().prop_map(Err)], 1..50)
    ) {
        // SAFETY: geteuid and umask have no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // .ci/run sets CHORUS_REQUIRE_FAULTS=1: there a skip is a failure.
            assert!(std::env::var("CHORUS_REQUIRE_FAULTS").as_deref() != Ok("1"), "needs root; CHORUS_REQUIRE_FAULTS=1 forbids skipping");
            return Ok(());
        }
        unsafe { libc::umask(UMASK as libc::mode_t) };
        let mut h = Harness::new();
        let dir = tempfile::tempdir().unwrap();
        let real = Real { root: dir.path().join("root") };
        std::fs::create_dir(&real.root).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&real.root, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let open_root = SetAttr { mode: Some(0o1777), ..Default::default() };
        let opened = h.run(Op::SetAttr { ino: ROOT_INO, attr: open_root }).is_ok();
        prop_assert!(opened);
        for (i, op) in ops.iter().enumerate() {
            let (expected, got) = match op {
                Ok(pop) => (real.apply_perm(pop), apply_store_perm(&mut h, pop)),
                Err(xop) => (real.apply_xattr(xop), apply_store_xattr(&mut h, xop)),
            };
            prop_assert_eq!(got, expected, "op #{} {:?}", i, op);
        }
        prop_assert_eq!(store_xattrs(&h), real.xattrs());
        prop_assert_eq!(store_owners(&h), real.owners());
    }
}
