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
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use proptest::prelude::*;

use super::model::{arb_op, join, name, store_tree, unit, MOp, Path, Seen};
use super::Harness;
use crate::ops::*;

/// Target of every symlink: never exists.
const DANGLING: &[u8] = b"/nonexistent/chorus-target";

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .expect("errno")
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
        let fd = unsafe {
            libc::open(
                p.as_ptr(),
                libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
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
                    check(libc::symlink(
                        target.as_ptr(),
                        self.cpath(&join(p, *n)).as_ptr(),
                    ))
                }
                MOp::Link(s, p, n) => check(libc::link(
                    self.cpath(s).as_ptr(),
                    self.cpath(&join(p, *n)).as_ptr(),
                )),
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
                MOp::Fallocate(p, offset, length, mode) => self.with_fd(p, |fd| {
                    libc::fallocate(fd, *mode, *offset as i64, *length as i64)
                }),
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
            } else if meta.file_type().is_symlink() {
                Seen::Symlink(
                    std::fs::read_link(fs_path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else {
                Seen::File {
                    data: std::fs::read(fs_path).unwrap(),
                    nlink: meta.nlink() as u32,
                }
            };
            tree.insert(path, seen);
        }
        tree
    }
}

/// Walks `path` following symlinks the way the kernel does for a parent path:
/// every symlink dangles, so meeting one is ENOENT.
fn resolve_follow(h: &Harness, path: &Path) -> Result<Ino, i32> {
    let mut ino = ROOT_INO;
    for &c in path {
        let attr = h.lookup(ino, &name(c))?;
        if attr.kind == FileKind::Symlink {
            return Err(libc::ENOENT);
        }
        ino = attr.ino;
    }
    Ok(ino)
}

/// The parent of a rename source must be a directory before the target path
/// is looked at (the kernel walks the whole source parent first).
fn resolve_follow_dir(h: &Harness, path: &Path) -> Result<Ino, i32> {
    let ino = resolve_follow(h, path)?;
    if h.getattr(ino)?.kind != FileKind::Dir {
        return Err(libc::ENOTDIR);
    }
    Ok(ino)
}

/// `path`'s last component looked up without following it.
fn resolve_nofollow(h: &Harness, path: &Path) -> Result<Ino, i32> {
    let (last, parent) = path.split_last().expect("non-empty path");
    let parent = resolve_follow(h, &parent.to_vec())?;
    Ok(h.lookup(parent, &name(*last))?.ino)
}

fn apply_store(h: &mut Harness, op: &MOp) -> Result<(), i32> {
    match op {
        MOp::Mkdir(p, n) => {
            let parent = resolve_follow(h, p)?;
            unit(h.run(Op::Mkdir {
                parent,
                name: vec![*n],
                mode: 0o755,
                umask: 0,
            }))
        }
        MOp::Create(p, n) => {
            let parent = resolve_follow(h, p)?;
            let op = Op::Create {
                parent,
                name: vec![*n],
                mode: 0o644,
                umask: 0,
                flags: libc::O_RDWR,
                excl: true,
            };
            match h.run(op) {
                Ok(Reply::Created { attr, fh }) => {
                    h.release(attr.ino, fh);
                    Ok(())
                }
                other => unit(other),
            }
        }
        MOp::Symlink(p, n) => {
            let parent = resolve_follow(h, p)?;
            unit(h.run(Op::Symlink {
                parent,
                name: vec![*n],
                target: DANGLING.to_vec(),
            }))
        }
        MOp::Link(s, p, n) => {
            let ino = resolve_nofollow(h, s)?;
            let newparent = resolve_follow(h, p)?;
            unit(h.run(Op::Link {
                ino,
                newparent,
                newname: vec![*n],
            }))
        }
        MOp::Unlink(p, n) => {
            let parent = resolve_follow(h, p)?;
            unit(h.run(Op::Unlink {
                parent,
                name: vec![*n],
            }))
        }
        MOp::Rmdir(p, n) => {
            let parent = resolve_follow(h, p)?;
            unit(h.run(Op::Rmdir {
                parent,
                name: vec![*n],
            }))
        }
        MOp::Rename(p, n, q, m, flags) => {
            let parent = resolve_follow_dir(h, p)?;
            let newparent = resolve_follow(h, q)?;
            unit(h.run(Op::Rename {
                parent,
                name: vec![*n],
                newparent,
                newname: vec![*m],
                flags: *flags,
            }))
        }
        MOp::Write(p, ..) | MOp::Truncate(p, _) | MOp::Fallocate(p, ..) => {
            let ino = resolve_nofollow(h, p)?;
            let fh = match h.run(Op::Open {
                ino,
                flags: libc::O_RDWR,
            }) {
                Ok(Reply::Opened { fh, .. }) => fh,
                other => return unit(other),
            };
            let result = match op {
                MOp::Write(_, offset, data) => unit(h.run(Op::Write {
                    ino,
                    fh,
                    offset: *offset,
                    data: data.clone(),
                    flags: 0,
                })),
                MOp::Truncate(_, size) => {
                    let attr = SetAttr {
                        size: Some(*size),
                        fh: Some(fh),
                        ..Default::default()
                    };
                    unit(h.run(Op::SetAttr { ino, attr }))
                }
                MOp::Fallocate(_, offset, length, mode) => unit(h.run(Op::Fallocate {
                    ino,
                    fh,
                    offset: *offset,
                    length: *length,
                    mode: *mode,
                })),
                _ => unreachable!(),
            };
            h.release(ino, fh);
            result
        }
    }
}

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
            let got = apply_store(&mut h, op);
            prop_assert_eq!(got, expected, "op #{} {:?}", i, op);
        }
        prop_assert_eq!(store_tree(&h), real.tree());
    }
}
