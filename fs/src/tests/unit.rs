//! Unit tests of the tricky cases: each states the Linux behaviour it pins.

use super::{errno_of, user, Harness};
use crate::ops::*;
use libc::*;

#[test]
fn new_store_has_root() {
    let h = Harness::new();
    let root = h.getattr(ROOT_INO).unwrap();
    assert_eq!((root.kind, root.perm, root.nlink, root.uid, root.gid), (FileKind::Dir, 0o755, 2, 0, 0));
    assert_eq!(h.lookup(ROOT_INO, "..").unwrap().ino, ROOT_INO);
    assert_eq!(h.store.applied_index(), 0);
}

#[test]
fn create_write_read_and_timestamps() {
    let mut h = Harness::new();
    let (attr, fh) = h.create(ROOT_INO, "f");
    assert_eq!((attr.kind, attr.perm, attr.nlink, attr.size), (FileKind::File, 0o644, 1, 0));
    assert_eq!(attr.mtime, h.now());
    let root = h.getattr(ROOT_INO).unwrap();
    assert_eq!((root.mtime, root.ctime), (h.now(), h.now()));
    let a = h.write(attr.ino, fh, 0, b"hello world").unwrap();
    assert_eq!(a.size, 11);
    assert_eq!(a.mtime, h.now());
    assert!(a.version > attr.version);
    assert_eq!(h.read(attr.ino, 6, 100).unwrap(), b"world");
    assert_eq!(h.read(attr.ino, 11, 100).unwrap(), b"");
    assert_eq!(h.read(attr.ino, 500, 100).unwrap(), b"");
    assert_eq!(h.lookup(ROOT_INO, "f").unwrap().ino, attr.ino);
    assert_eq!(h.lookup(ROOT_INO, "g"), Err(ENOENT));
}

#[test]
fn create_exclusive_and_reopen_with_truncate() {
    let mut h = Harness::new();
    let (attr, fh) = h.create(ROOT_INO, "f");
    h.write(attr.ino, fh, 0, b"data").unwrap();
    assert_eq!(h.create_as(&Caller::root(), ROOT_INO, b"f", 0o644), Err(EEXIST));
    let op = Op::Create { parent: ROOT_INO, name: b"f".to_vec(), mode: 0o600, umask: 0, flags: O_RDWR, excl: false };
    let Ok(Reply::Created { attr: a2, fh: fh2 }) = h.run(op.clone()) else { panic!() };
    assert_eq!((a2.ino, a2.size, a2.perm), (attr.ino, 4, 0o644));
    assert_ne!(fh, fh2);
    let op = Op::Create { parent: ROOT_INO, name: b"f".to_vec(), mode: 0o600, umask: 0, flags: O_RDWR | O_TRUNC, excl: false };
    let Ok(Reply::Created { attr: a3, .. }) = h.run(op) else { panic!() };
    assert_eq!(a3.size, 0);
    assert_eq!(a3.mtime, h.now());
    let d = h.mkdir(ROOT_INO, "d");
    let op = Op::Create { parent: ROOT_INO, name: b"d".to_vec(), mode: 0o600, umask: 0, flags: O_RDWR, excl: false };
    assert_eq!(errno_of(h.run(op)), EISDIR);
    let _ = d;
}

#[test]
fn name_rules() {
    let mut h = Harness::new();
    let long = vec![b'x'; NAME_MAX_BYTES + 1];
    let max = vec![b'y'; NAME_MAX_BYTES];
    assert_eq!(h.create_as(&Caller::root(), ROOT_INO, &long, 0o644), Err(ENAMETOOLONG));
    assert!(h.create_as(&Caller::root(), ROOT_INO, &max, 0o644).is_ok());
    assert_eq!(h.lookup(ROOT_INO, std::str::from_utf8(&long).unwrap()), Err(ENAMETOOLONG));
    assert_eq!(h.create_as(&Caller::root(), ROOT_INO, b"a/b", 0o644), Err(EINVAL));
    assert_eq!(h.create_as(&Caller::root(), ROOT_INO, b"", 0o644), Err(EINVAL));
    let op = Op::Mkdir { parent: ROOT_INO, name: long.clone(), mode: 0o755, umask: 0 };
    assert_eq!(errno_of(h.run(op)), ENAMETOOLONG);
    let op = Op::Symlink { parent: ROOT_INO, name: b"s".to_vec(), target: vec![b'z'; SYMLINK_MAX_BYTES + 1] };
    assert_eq!(errno_of(h.run(op)), ENAMETOOLONG);
    let op = Op::Symlink { parent: ROOT_INO, name: b"s".to_vec(), target: vec![b'z'; SYMLINK_MAX_BYTES] };
    let Ok(Reply::Entry(s)) = h.run(op) else { panic!() };
    assert_eq!((s.kind, s.size, s.perm), (FileKind::Symlink, SYMLINK_MAX_BYTES as u64, 0o777));
    assert_eq!(h.query(Query::ReadLink { ino: s.ino }), Ok(Reply::Data(vec![b'z'; SYMLINK_MAX_BYTES])));
    assert_eq!(errno_of(h.query(Query::ReadLink { ino: ROOT_INO })), EINVAL);
}

#[test]
fn mkdir_rmdir_unlink_rules_and_nlink() {
    let mut h = Harness::new();
    let a = h.mkdir(ROOT_INO, "a");
    assert_eq!(a.nlink, 2);
    assert_eq!(h.getattr(ROOT_INO).unwrap().nlink, 3);
    let b = h.mkdir(a.ino, "b");
    assert_eq!(h.getattr(a.ino).unwrap().nlink, 3);
    assert_eq!(h.lookup(b.ino, "..").unwrap().ino, a.ino);
    assert_eq!(h.mkdir_as(&Caller::root(), ROOT_INO, "a", 0o755), Err(EEXIST));
    assert_eq!(errno_of(h.run(Op::Rmdir { parent: ROOT_INO, name: b"a".to_vec() })), ENOTEMPTY);
    assert_eq!(errno_of(h.run(Op::Rmdir { parent: a.ino, name: b".".to_vec() })), EINVAL);
    assert_eq!(errno_of(h.run(Op::Rmdir { parent: a.ino, name: b"..".to_vec() })), ENOTEMPTY);
    assert_eq!(errno_of(h.run(Op::Unlink { parent: a.ino, name: b"b".to_vec() })), EISDIR);
    let (f, fh) = h.create(a.ino, "f");
    h.release(f.ino, fh);
    assert_eq!(errno_of(h.run(Op::Rmdir { parent: a.ino, name: b"f".to_vec() })), ENOTDIR);
    assert_eq!(errno_of(h.run(Op::Mkdir { parent: f.ino, name: b"x".to_vec(), mode: 0o755, umask: 0 })), ENOTDIR);
    assert_eq!(h.run(Op::Rmdir { parent: a.ino, name: b"b".to_vec() }), Ok(Reply::Ok));
    assert_eq!(h.getattr(b.ino), Err(ENOENT));
    let a_now = h.getattr(a.ino).unwrap();
    assert_eq!((a_now.nlink, a_now.mtime), (2, h.now()));
    assert_eq!(h.run(Op::Unlink { parent: a.ino, name: b"f".to_vec() }), Ok(Reply::Ok));
    assert_eq!(h.getattr(f.ino), Err(ENOENT));
    assert_eq!(h.run(Op::Rmdir { parent: ROOT_INO, name: b"a".to_vec() }), Ok(Reply::Ok));
    assert_eq!(h.getattr(ROOT_INO).unwrap().nlink, 2);
    assert_eq!(errno_of(h.run(Op::Unlink { parent: ROOT_INO, name: b"a".to_vec() })), ENOENT);
}

#[test]
fn mknod_kinds_and_device_permission() {
    let mut h = Harness::new();
    let mk = |name: &str, mode: u32| Op::Mknod { parent: ROOT_INO, name: name.into(), mode, umask: 0o022, rdev: 0x0801 };
    let Ok(Reply::Entry(fifo)) = h.run(mk("fifo", S_IFIFO | 0o666)) else { panic!() };
    assert_eq!((fifo.kind, fifo.perm, fifo.rdev), (FileKind::Fifo, 0o644, 0));
    let Ok(Reply::Entry(blk)) = h.run(mk("blk", S_IFBLK | 0o600)) else { panic!() };
    assert_eq!((blk.kind, blk.rdev), (FileKind::BlockDev, 0x0801));
    let Ok(Reply::Entry(reg)) = h.run(mk("reg", 0o600)) else { panic!() };
    assert_eq!(reg.kind, FileKind::File);
    assert_eq!(errno_of(h.run(mk("dir", S_IFDIR | 0o755))), EPERM);
    assert!(h.run(Op::SetAttr { ino: ROOT_INO, attr: SetAttr { mode: Some(0o777), ..Default::default() } }).is_ok());
    let op = Op::Mknod { parent: ROOT_INO, name: "c".into(), mode: S_IFCHR | 0o600, umask: 0, rdev: 1 };
    assert_eq!(errno_of(h.run_as(&user(1000), op)), EPERM);
    let op = Op::Mknod { parent: ROOT_INO, name: "sock".into(), mode: S_IFSOCK | 0o600, umask: 0, rdev: 1 };
    let Ok(Reply::Entry(sock)) = h.run_as(&user(1000), op) else { panic!() };
    assert_eq!((sock.kind, sock.uid, sock.gid), (FileKind::Socket, 1000, 1000));
}

fn rename(h: &mut Harness, parent: Ino, name: &str, newparent: Ino, newname: &str, flags: u32) -> OpResult {
    h.run(Op::Rename { parent, name: name.into(), newparent, newname: newname.into(), flags })
}

#[test]
fn rename_replace_rules() {
    let mut h = Harness::new();
    let d1 = h.mkdir(ROOT_INO, "d1");
    let d2 = h.mkdir(ROOT_INO, "d2");
    let full = h.mkdir(ROOT_INO, "full");
    h.mkdir(full.ino, "x");
    let (f, fh) = h.create(ROOT_INO, "f");
    h.release(f.ino, fh);
    let (g, fh) = h.create(ROOT_INO, "g");
    h.release(g.ino, fh);
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "f", ROOT_INO, "d1", 0)), EISDIR);
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "d1", ROOT_INO, "f", 0)), ENOTDIR);
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "d1", ROOT_INO, "full", 0)), ENOTEMPTY);
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "nope", ROOT_INO, "z", 0)), ENOENT);
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "f", ROOT_INO, "g", RENAME_NOREPLACE)), EEXIST);
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "f", ROOT_INO, "zz", RENAME_EXCHANGE)), ENOENT);
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "f", ROOT_INO, "g", RENAME_EXCHANGE | RENAME_NOREPLACE)), EINVAL);
    // Into its own subtree.
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "full", full.ino, "y", 0)), EINVAL);
    let x = h.lookup(full.ino, "x").unwrap();
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "full", x.ino, "y", 0)), EINVAL);
    // Target is an ancestor of the source.
    assert_eq!(errno_of(rename(&mut h, full.ino, "x", ROOT_INO, "full", 0)), ENOTEMPTY);
    // Dir over empty dir: the target goes, root loses one subdirectory.
    let root_nlink = h.getattr(ROOT_INO).unwrap().nlink;
    assert_eq!(rename(&mut h, ROOT_INO, "d1", ROOT_INO, "d2", 0), Ok(Reply::Ok));
    assert_eq!(h.getattr(d2.ino), Err(ENOENT));
    assert_eq!(h.lookup(ROOT_INO, "d2").unwrap().ino, d1.ino);
    assert_eq!(h.getattr(ROOT_INO).unwrap().nlink, root_nlink - 1);
    // File over file: the target's inode goes.
    assert_eq!(rename(&mut h, ROOT_INO, "f", ROOT_INO, "g", 0), Ok(Reply::Ok));
    assert_eq!(h.getattr(g.ino), Err(ENOENT));
    assert_eq!(h.lookup(ROOT_INO, "g").unwrap().ino, f.ino);
    assert_eq!(h.lookup(ROOT_INO, "f"), Err(ENOENT));
    assert_eq!(h.getattr(f.ino).unwrap().ctime, h.now());
    assert_eq!(h.names(ROOT_INO), vec!["d2", "full", "g"]);
}

#[test]
fn rename_across_parents_fixes_dotdot_and_nlink() {
    let mut h = Harness::new();
    let a = h.mkdir(ROOT_INO, "a");
    let b = h.mkdir(ROOT_INO, "b");
    let c = h.mkdir(a.ino, "c");
    assert_eq!(rename(&mut h, a.ino, "c", b.ino, "c2", 0), Ok(Reply::Ok));
    assert_eq!(h.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(h.getattr(b.ino).unwrap().nlink, 3);
    assert_eq!(h.lookup(c.ino, "..").unwrap().ino, b.ino);
    let (ta, tb) = (h.getattr(a.ino).unwrap(), h.getattr(b.ino).unwrap());
    assert_eq!((ta.mtime, ta.ctime, tb.mtime, tb.ctime), (h.now(), h.now(), h.now(), h.now()));
    // Now a/c2 would be in b's subtree? No: moving b into c (its child) loops.
    assert_eq!(errno_of(rename(&mut h, ROOT_INO, "b", c.ino, "b", 0)), EINVAL);
}

#[test]
fn rename_exchange_swaps() {
    let mut h = Harness::new();
    let a = h.mkdir(ROOT_INO, "a");
    let b = h.mkdir(ROOT_INO, "b");
    let sub = h.mkdir(a.ino, "sub");
    let (f, fh) = h.create(b.ino, "f");
    h.release(f.ino, fh);
    assert_eq!(rename(&mut h, a.ino, "sub", b.ino, "f", RENAME_EXCHANGE), Ok(Reply::Ok));
    assert_eq!(h.lookup(a.ino, "sub").unwrap().ino, f.ino);
    assert_eq!(h.lookup(b.ino, "f").unwrap().ino, sub.ino);
    assert_eq!(h.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(h.getattr(b.ino).unwrap().nlink, 3);
    assert_eq!(h.lookup(sub.ino, "..").unwrap().ino, b.ino);
    // Exchanging a directory with its own ancestor is EINVAL.
    assert_eq!(errno_of(rename(&mut h, b.ino, "f", ROOT_INO, "b", RENAME_EXCHANGE)), EINVAL);
    assert_eq!(h.names(a.ino), vec!["sub"]);
    assert_eq!(h.names(b.ino), vec!["f"]);
}

#[test]
fn rename_onto_hard_link_of_itself_is_a_no_op() {
    let mut h = Harness::new();
    let (f, fh) = h.create(ROOT_INO, "f");
    h.release(f.ino, fh);
    let Ok(Reply::Entry(l)) = h.run(Op::Link { ino: f.ino, newparent: ROOT_INO, newname: b"l".to_vec() }) else { panic!() };
    assert_eq!(l.nlink, 2);
    let before = h.getattr(f.ino).unwrap();
    assert_eq!(rename(&mut h, ROOT_INO, "f", ROOT_INO, "l", 0), Ok(Reply::Ok));
    assert_eq!(h.names(ROOT_INO), vec!["f", "l"]);
    assert_eq!(h.getattr(f.ino).unwrap(), before);
    assert_eq!(rename(&mut h, ROOT_INO, "f", ROOT_INO, "f", 0), Ok(Reply::Ok));
}

#[test]
fn link_rules() {
    let mut h = Harness::new();
    let d = h.mkdir(ROOT_INO, "d");
    let (f, fh) = h.create(ROOT_INO, "f");
    h.release(f.ino, fh);
    let link = |ino: Ino, name: &str| Op::Link { ino, newparent: ROOT_INO, newname: name.into() };
    assert_eq!(errno_of(h.run(link(d.ino, "dl"))), EPERM);
    assert_eq!(errno_of(h.run(link(f.ino, "f"))), EEXIST);
    assert_eq!(errno_of(h.run(link(999, "x"))), ENOENT);
    let Ok(Reply::Entry(a)) = h.run(link(f.ino, "f2")) else { panic!() };
    assert_eq!((a.nlink, a.ctime), (2, h.now()));
    assert_eq!(h.run(Op::Unlink { parent: ROOT_INO, name: b"f".to_vec() }), Ok(Reply::Ok));
    assert_eq!(h.getattr(f.ino).unwrap().nlink, 1);
}

#[test]
fn open_unlinked_file_lives_until_last_release() {
    let mut h = Harness::new();
    let (f, fh) = h.create(ROOT_INO, "f");
    h.write(f.ino, fh, 0, &vec![7u8; 200_000]).unwrap();
    let Ok(Reply::Opened { fh: fh2, .. }) = h.run(Op::Open { ino: f.ino, flags: O_RDONLY }) else { panic!() };
    assert_eq!(h.run(Op::Unlink { parent: ROOT_INO, name: b"f".to_vec() }), Ok(Reply::Ok));
    assert_eq!(h.lookup(ROOT_INO, "f"), Err(ENOENT));
    assert_eq!(h.getattr(f.ino).unwrap().nlink, 0);
    assert_eq!(h.read(f.ino, 199_990, 100).unwrap(), vec![7u8; 10]);
    h.write(f.ino, fh, 200_000, b"more").unwrap();
    assert_eq!(h.read(f.ino, 200_000, 100).unwrap(), b"more");
    assert_eq!(errno_of(h.run(Op::Link { ino: f.ino, newparent: ROOT_INO, newname: b"back".to_vec() })), ENOENT);
    h.release(f.ino, fh);
    assert_eq!(h.read(f.ino, 0, 3).unwrap(), vec![7u8; 3]);
    h.release(f.ino, fh2);
    assert_eq!(h.getattr(f.ino), Err(ENOENT));
    assert_eq!(errno_of(h.run(Op::Release { ino: f.ino, fh: fh2 })), EBADF);
    // Nothing of it is left: no data blocks, no handles.
    assert_eq!(h.store.count_keys(crate::keys::Table::Blocks), 0);
    assert_eq!(h.store.count_keys(crate::keys::Table::Handles), 0);
}

#[test]
fn rename_over_open_file_keeps_it_readable() {
    let mut h = Harness::new();
    let (victim, vfh) = h.create(ROOT_INO, "victim");
    h.write(victim.ino, vfh, 0, b"old").unwrap();
    let (src, sfh) = h.create(ROOT_INO, "src");
    h.release(src.ino, sfh);
    assert_eq!(rename(&mut h, ROOT_INO, "src", ROOT_INO, "victim", 0), Ok(Reply::Ok));
    assert_eq!(h.getattr(victim.ino).unwrap().nlink, 0);
    assert_eq!(h.read(victim.ino, 0, 10).unwrap(), b"old");
    h.release(victim.ino, vfh);
    assert_eq!(h.getattr(victim.ino), Err(ENOENT));
}

#[test]
fn sparse_files_truncate_tails_and_blocks() {
    let mut h = Harness::new();
    let bs = BLOCK_SIZE_BYTES;
    let (f, fh) = h.create(ROOT_INO, "f");
    let a = h.write(f.ino, fh, 3 * bs + 10, b"tail").unwrap();
    assert_eq!(a.size, 3 * bs + 14);
    assert_eq!(a.blocks, bs / 512, "one stored block");
    assert_eq!(h.read(f.ino, 0, 100).unwrap(), vec![0u8; 100]);
    let data = h.read(f.ino, 3 * bs, 20).unwrap();
    assert_eq!(&data[..10], &[0u8; 10]);
    assert_eq!(&data[10..], b"tail");
    // Fill a block with ones, shrink into its middle, grow again: the tail must read as zeros.
    h.write(f.ino, fh, 0, &vec![1u8; bs as usize + 100]).unwrap();
    let shrink = Op::SetAttr { ino: f.ino, attr: SetAttr { size: Some(1000), ..Default::default() } };
    let Ok(Reply::Attr(a)) = h.run(shrink) else { panic!() };
    assert_eq!((a.size, a.blocks, a.mtime, a.ctime), (1000, bs / 512, h.now(), h.now()));
    let grow = Op::SetAttr { ino: f.ino, attr: SetAttr { size: Some(2 * bs), ..Default::default() } };
    assert!(h.run(grow).is_ok());
    let data = h.read(f.ino, 0, 2 * bs as u32).unwrap();
    assert_eq!(data.len() as u64, 2 * bs);
    assert!(data[..1000].iter().all(|&b| b == 1));
    assert!(data[1000..].iter().all(|&b| b == 0), "tail after shrink+grow must be zeros");
    // Writing past the end of a shrunk file exposes zeros in between.
    let shrink = Op::SetAttr { ino: f.ino, attr: SetAttr { size: Some(10), ..Default::default() } };
    assert!(h.run(shrink).is_ok());
    h.write(f.ino, fh, 20, b"x").unwrap();
    assert_eq!(h.read(f.ino, 0, 100).unwrap(), [&[1u8; 10][..], &[0u8; 10][..], b"x"].concat());
    // Truncate to the same size still changes mtime/ctime.
    let same = Op::SetAttr { ino: f.ino, attr: SetAttr { size: Some(21), ..Default::default() } };
    let Ok(Reply::Attr(a)) = h.run(same) else { panic!() };
    assert_eq!(a.mtime, h.now());
    let too_big = Op::SetAttr { ino: f.ino, attr: SetAttr { size: Some(FILE_SIZE_MAX_BYTES + 1), ..Default::default() } };
    assert_eq!(errno_of(h.run(too_big)), EFBIG);
    let dir_trunc = Op::SetAttr { ino: ROOT_INO, attr: SetAttr { size: Some(0), ..Default::default() } };
    assert_eq!(errno_of(h.run(dir_trunc)), EISDIR);
}

#[test]
fn write_append_and_limits() {
    let mut h = Harness::new();
    let (f, fh) = h.create(ROOT_INO, "f");
    h.write(f.ino, fh, 0, b"abc").unwrap();
    let r = h.run(Op::Write { ino: f.ino, fh, offset: 0, data: b"def".to_vec(), flags: O_APPEND });
    let Ok(Reply::Written { written: 3, attr }) = r else { panic!("{r:?}") };
    assert_eq!(attr.size, 6);
    assert_eq!(h.read(f.ino, 0, 10).unwrap(), b"abcdef");
    let r = h.run(Op::Write { ino: f.ino, fh, offset: FILE_SIZE_MAX_BYTES, data: b"x".to_vec(), flags: 0 });
    assert_eq!(errno_of(r), EFBIG);
    let r = h.run(Op::Write { ino: f.ino, fh: fh + 100, offset: 0, data: b"x".to_vec(), flags: 0 });
    assert_eq!(errno_of(r), EBADF);
    let r = h.run(Op::Write { ino: f.ino, fh, offset: 0, data: vec![0; IO_MAX_BYTES + 1], flags: 0 });
    assert_eq!(errno_of(r), EINVAL);
    // A write crossing the size limit is cut short.
    let r = h.run(Op::Write { ino: f.ino, fh, offset: FILE_SIZE_MAX_BYTES - 2, data: b"wxyz".to_vec(), flags: 0 });
    let Ok(Reply::Written { written: 2, attr }) = r else { panic!("{r:?}") };
    assert_eq!(attr.size, FILE_SIZE_MAX_BYTES);
    assert_eq!(h.read(f.ino, FILE_SIZE_MAX_BYTES - 3, 10).unwrap(), b"\0wx");
}

fn fallocate(h: &mut Harness, ino: Ino, fh: Fh, offset: u64, length: u64, mode: i32) -> OpResult {
    h.run(Op::Fallocate { ino, fh, offset, length, mode })
}

#[test]
fn fallocate_modes() {
    let mut h = Harness::new();
    let bs = BLOCK_SIZE_BYTES;
    let (f, fh) = h.create(ROOT_INO, "f");
    assert_eq!(fallocate(&mut h, f.ino, fh, 0, 3 * bs, 0), Ok(Reply::Ok));
    let a = h.getattr(f.ino).unwrap();
    assert_eq!((a.size, a.blocks), (3 * bs, 3 * bs / 512));
    assert_eq!(h.read(f.ino, 0, 100).unwrap(), vec![0u8; 100]);
    assert_eq!(fallocate(&mut h, f.ino, fh, 3 * bs, bs, FALLOC_FL_KEEP_SIZE), Ok(Reply::Ok));
    let a = h.getattr(f.ino).unwrap();
    assert_eq!((a.size, a.blocks), (3 * bs, 4 * bs / 512));
    h.write(f.ino, fh, 0, &vec![9u8; 3 * bs as usize]).unwrap();
    // Punch the middle block whole and part of the first.
    let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    assert_eq!(fallocate(&mut h, f.ino, fh, bs - 10, bs + 10, punch), Ok(Reply::Ok));
    let a = h.getattr(f.ino).unwrap();
    assert_eq!((a.size, a.blocks), (3 * bs, 3 * bs / 512));
    let data = h.read(f.ino, 0, 3 * bs as u32).unwrap();
    assert!(data[..(bs - 10) as usize].iter().all(|&b| b == 9));
    assert!(data[(bs - 10) as usize..2 * bs as usize].iter().all(|&b| b == 0));
    assert!(data[2 * bs as usize..].iter().all(|&b| b == 9));
    // Zero range inside the last block, keeping the size.
    let zero_keep = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    assert_eq!(fallocate(&mut h, f.ino, fh, 2 * bs + 5, 10, zero_keep), Ok(Reply::Ok));
    let data = h.read(f.ino, 2 * bs, 20).unwrap();
    assert_eq!(data, [&[9u8; 5][..], &[0u8; 10][..], &[9u8; 5][..]].concat());
    // Zero range past the end grows the file.
    assert_eq!(fallocate(&mut h, f.ino, fh, 3 * bs, 100, FALLOC_FL_ZERO_RANGE), Ok(Reply::Ok));
    assert_eq!(h.getattr(f.ino).unwrap().size, 3 * bs + 100);
    assert_eq!(h.read(f.ino, 3 * bs, 200).unwrap(), vec![0u8; 100]);
    // Invalid and unsupported modes.
    assert_eq!(errno_of(fallocate(&mut h, f.ino, fh, 0, 10, FALLOC_FL_PUNCH_HOLE)), EINVAL);
    assert_eq!(errno_of(fallocate(&mut h, f.ino, fh, 0, 10, FALLOC_FL_COLLAPSE_RANGE)), EOPNOTSUPP);
    assert_eq!(errno_of(fallocate(&mut h, f.ino, fh, 0, 0, 0)), EINVAL);
    assert_eq!(errno_of(fallocate(&mut h, f.ino, fh, FILE_SIZE_MAX_BYTES, 1, 0)), EFBIG);
}

#[test]
fn search_and_write_permission_on_directories() {
    let mut h = Harness::new();
    let alice = user(1000);
    let d = h.mkdir(ROOT_INO, "d");
    h.create(d.ino, "f");
    assert_eq!(h.create_as(&alice, ROOT_INO, b"x", 0o644), Err(EACCES));
    assert_eq!(h.create_as(&alice, d.ino, b"f", 0o644), Err(EEXIST), "EEXIST comes before EACCES");
    assert!(h.lookup_as(&alice, d.ino, "f").is_ok());
    assert!(h.run(Op::SetAttr { ino: d.ino, attr: SetAttr { mode: Some(0o700), ..Default::default() } }).is_ok());
    assert_eq!(h.lookup_as(&alice, d.ino, "f"), Err(EACCES));
    assert_eq!(h.lookup_as(&alice, d.ino, "nope"), Err(EACCES));
    assert_eq!(errno_of(h.run_as(&alice, Op::Unlink { parent: d.ino, name: b"f".to_vec() })), EACCES);
    // Root bypasses rwx.
    assert!(h.lookup(d.ino, "f").is_ok());
}

#[test]
fn sticky_directory_rule() {
    let mut h = Harness::new();
    let (alice, bob) = (user(1000), user(1001));
    let tmp = h.mkdir_as(&Caller::root(), ROOT_INO, "tmp", 0o1777).unwrap();
    assert_eq!(tmp.perm, 0o1777);
    let (af, afh) = h.create_as(&alice, tmp.ino, b"a", 0o666).unwrap();
    h.release(af.ino, afh);
    assert_eq!(errno_of(h.run_as(&bob, Op::Unlink { parent: tmp.ino, name: b"a".to_vec() })), EPERM);
    let mv = Op::Rename { parent: tmp.ino, name: b"a".to_vec(), newparent: tmp.ino, newname: b"b".to_vec(), flags: 0 };
    assert_eq!(errno_of(h.run_as(&bob, mv.clone())), EPERM);
    let (bf, bfh) = h.create_as(&bob, tmp.ino, b"bobs", 0o666).unwrap();
    h.release(bf.ino, bfh);
    let over = Op::Rename { parent: tmp.ino, name: b"bobs".to_vec(), newparent: tmp.ino, newname: b"a".to_vec(), flags: 0 };
    assert_eq!(errno_of(h.run_as(&bob, over)), EPERM, "cannot replace another user's file either");
    assert_eq!(h.run_as(&alice, mv), Ok(Reply::Ok));
    assert_eq!(h.run(Op::Unlink { parent: tmp.ino, name: b"b".to_vec() }), Ok(Reply::Ok));
}

fn setattr(h: &mut Harness, caller: &Caller, ino: Ino, attr: SetAttr) -> Result<Attr, i32> {
    match h.run_as(caller, Op::SetAttr { ino, attr }) {
        Ok(Reply::Attr(a)) => Ok(a),
        Ok(r) => panic!("setattr replied {r:?}"),
        Err(e) => Err(e.0),
    }
}

#[test]
fn chmod_chown_rules_and_setid_clearing() {
    let mut h = Harness::new();
    let alice = Caller { uid: 1000, gid: 1000, pid: 1, groups: vec![50] };
    let bob = user(1001);
    setattr(&mut h, &Caller::root(), ROOT_INO, SetAttr { mode: Some(0o777), ..Default::default() }).unwrap();
    let (f, fh) = h.create_as(&alice, ROOT_INO, b"f", 0o755).unwrap();
    assert_eq!((f.uid, f.gid), (1000, 1000));
    assert_eq!(setattr(&mut h, &bob, f.ino, SetAttr { mode: Some(0o777), ..Default::default() }), Err(EPERM));
    assert_eq!(setattr(&mut h, &bob, f.ino, SetAttr { mode: Some(0o755), ..Default::default() }), Err(EPERM));
    let a = setattr(&mut h, &alice, f.ino, SetAttr { mode: Some(0o6755), ..Default::default() }).unwrap();
    // Not even a change that only drops set-ID bits (the kernel's kill-priv
    // setattr without HANDLE_KILLPRIV): Linux refuses a non-owner's chmod.
    let kill_only = SetAttr { mode: Some(0o2755), ..Default::default() };
    assert_eq!(setattr(&mut h, &bob, f.ino, kill_only), Err(EPERM));
    let a = setattr(&mut h, &alice, f.ino, SetAttr { mode: Some(a.perm), ..Default::default() }).unwrap();
    assert_eq!((a.perm, a.ctime), (0o6755, h.now()));
    // Only root changes the owner; the owner may pick one of their groups.
    assert_eq!(setattr(&mut h, &alice, f.ino, SetAttr { uid: Some(1001), ..Default::default() }), Err(EPERM));
    assert_eq!(setattr(&mut h, &alice, f.ino, SetAttr { gid: Some(77), ..Default::default() }), Err(EPERM));
    assert_eq!(setattr(&mut h, &bob, f.ino, SetAttr { gid: Some(1001), ..Default::default() }), Err(EPERM));
    let a = setattr(&mut h, &alice, f.ino, SetAttr { gid: Some(50), ..Default::default() }).unwrap();
    assert_eq!((a.gid, a.perm), (50, 0o755), "chgrp clears setuid and (group-exec) setgid");
    // chmod g+s by a non-member drops S_ISGID.
    setattr(&mut h, &Caller::root(), f.ino, SetAttr { gid: Some(9), ..Default::default() }).unwrap();
    let a = setattr(&mut h, &alice, f.ino, SetAttr { mode: Some(0o2755), ..Default::default() }).unwrap();
    assert_eq!(a.perm, 0o755);
    // Root chown also clears set-id bits of a file.
    setattr(&mut h, &Caller::root(), f.ino, SetAttr { mode: Some(0o4755), ..Default::default() }).unwrap();
    let a = setattr(&mut h, &Caller::root(), f.ino, SetAttr { uid: Some(5), ..Default::default() }).unwrap();
    assert_eq!((a.uid, a.perm), (5, 0o755));
    // A write by a non-root user clears setuid.
    setattr(&mut h, &Caller::root(), f.ino, SetAttr { mode: Some(0o4777), ..Default::default() }).unwrap();
    let r = h.run_as(&bob, Op::Write { ino: f.ino, fh, offset: 0, data: b"x".to_vec(), flags: 0 });
    let Ok(Reply::Written { attr, .. }) = r else { panic!("{r:?}") };
    assert_eq!(attr.perm, 0o777);
}

#[test]
fn utimens_permissions() {
    let mut h = Harness::new();
    let (alice, bob) = (user(1000), user(1001));
    setattr(&mut h, &Caller::root(), ROOT_INO, SetAttr { mode: Some(0o777), ..Default::default() }).unwrap();
    let (f, _) = h.create_as(&alice, ROOT_INO, b"f", 0o644).unwrap();
    let now_both = SetAttr { atime: Some(SetTime::Now), mtime: Some(SetTime::Now), ..Default::default() };
    let explicit = SetAttr { mtime: Some(SetTime::At(Timestamp::new(5, 6))), ..Default::default() };
    assert_eq!(setattr(&mut h, &bob, f.ino, now_both.clone()), Err(EACCES));
    assert_eq!(setattr(&mut h, &bob, f.ino, explicit.clone()), Err(EPERM));
    setattr(&mut h, &alice, f.ino, SetAttr { mode: Some(0o666), ..Default::default() }).unwrap();
    let a = setattr(&mut h, &bob, f.ino, now_both).unwrap();
    assert_eq!((a.atime, a.mtime, a.ctime), (h.now(), h.now(), h.now()));
    assert_eq!(setattr(&mut h, &bob, f.ino, explicit.clone()), Err(EPERM));
    let only_atime_now = SetAttr { atime: Some(SetTime::Now), ..Default::default() };
    assert_eq!(setattr(&mut h, &bob, f.ino, only_atime_now), Err(EPERM), "one UTIME_NOW + UTIME_OMIT is ATTR_TIMES_SET");
    let truncate_now = SetAttr { size: Some(3), mtime: Some(SetTime::Now), ..Default::default() };
    assert_eq!(setattr(&mut h, &bob, f.ino, truncate_now).unwrap().size, 3, "a writer may truncate");
    let a = setattr(&mut h, &alice, f.ino, explicit).unwrap();
    assert_eq!((a.mtime, a.ctime), (Timestamp::new(5, 6), h.now()));
    // Truncate by path needs write permission; through a handle it does not.
    setattr(&mut h, &alice, f.ino, SetAttr { mode: Some(0o644), ..Default::default() }).unwrap();
    assert_eq!(setattr(&mut h, &bob, f.ino, SetAttr { size: Some(0), ..Default::default() }), Err(EACCES));
}

#[test]
fn setgid_directory_inheritance_and_umask() {
    let mut h = Harness::new();
    let alice = user(1000);
    let d = h.mkdir_as(&Caller::root(), ROOT_INO, "d", 0o2777).unwrap();
    setattr(&mut h, &Caller::root(), d.ino, SetAttr { gid: Some(42), mode: Some(0o2777), ..Default::default() }).unwrap();
    let sub = h.mkdir_as(&alice, d.ino, "sub", 0o755).unwrap();
    assert_eq!((sub.gid, sub.perm), (42, 0o2755));
    let op = Op::Create { parent: d.ino, name: b"f".to_vec(), mode: 0o2777, umask: 0o022, flags: O_RDWR, excl: true };
    let Ok(Reply::Created { attr, .. }) = h.run_as(&alice, op) else { panic!() };
    assert_eq!((attr.gid, attr.perm), (42, 0o755), "umask applied, S_ISGID stripped for a non-member");
}

#[test]
fn open_permission_checks() {
    let mut h = Harness::new();
    let alice = user(1000);
    let (f, _) = h.create_as(&Caller::root(), ROOT_INO, b"f", 0o644).unwrap();
    assert!(h.run_as(&alice, Op::Open { ino: f.ino, flags: O_RDONLY }).is_ok());
    assert_eq!(errno_of(h.run_as(&alice, Op::Open { ino: f.ino, flags: O_WRONLY })), EACCES);
    assert_eq!(errno_of(h.run_as(&alice, Op::Open { ino: f.ino, flags: O_RDONLY | O_TRUNC })), EACCES);
    assert_eq!(errno_of(h.run(Op::Open { ino: ROOT_INO, flags: O_RDWR })), EISDIR);
    assert!(h.run(Op::Open { ino: ROOT_INO, flags: O_RDONLY | O_DIRECTORY }).is_ok());
}

#[test]
fn readdir_cookies_are_stable_under_concurrent_changes() {
    let mut h = Harness::new();
    let d = h.mkdir(ROOT_INO, "d");
    for i in 0..20 {
        h.create(d.ino, &format!("f{i:02}"));
    }
    let first = h.readdir(d.ino, 0, 5);
    let names: Vec<_> = first.iter().map(|e| String::from_utf8(e.name.clone()).unwrap()).collect();
    assert_eq!(names, vec![".", "..", "f00", "f01", "f02"]);
    assert_eq!((first[0].cookie, first[1].cookie), (1, 2));
    let mut seen: Vec<String> = names[2..].to_vec();
    let mut cookie = first.last().unwrap().cookie;
    let mut removed = Vec::new();
    let mut round = 0;
    loop {
        // Between batches: remove one already-seen and one not-yet-seen entry, add one.
        round += 1;
        let unseen = format!("f{:02}", 19 - round);
        if round < 6 {
            h.run(Op::Unlink { parent: d.ino, name: unseen.clone().into_bytes() }).unwrap();
            removed.push(unseen);
            h.run(Op::Unlink { parent: d.ino, name: seen[round - 1].clone().into_bytes() }).unwrap();
            h.create(d.ino, &format!("new{round}"));
        }
        let batch = h.readdir(d.ino, cookie, 3);
        let Some(last) = batch.last() else { break };
        assert!(batch.windows(2).all(|w| w[0].cookie < w[1].cookie));
        assert!(batch[0].cookie > cookie);
        cookie = last.cookie;
        seen.extend(batch.into_iter().map(|e| String::from_utf8(e.name).unwrap()));
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no entry returned twice: {seen:?}");
    for i in 0..20 {
        let name = format!("f{i:02}");
        if !removed.contains(&name) {
            assert!(seen.contains(&name), "{name} survived but was never returned");
        }
    }
    assert!(seen.contains(&"new1".to_string()), "entries added later come after the cursor");
}

#[test]
fn readdir_plus_and_errors() {
    let mut h = Harness::new();
    h.create(ROOT_INO, "f");
    let Ok(Reply::Dir(entries)) = h.query(Query::ReadDir { ino: ROOT_INO, cookie: 0, max_entries: 100, plus: true }) else { panic!() };
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e.attr.as_ref().map(|a| a.ino) == Some(e.ino)));
    let f = h.lookup(ROOT_INO, "f").unwrap();
    assert_eq!(errno_of(h.query(Query::ReadDir { ino: f.ino, cookie: 0, max_entries: 10, plus: false })), ENOTDIR);
}

#[test]
fn xattr_rules() {
    let mut h = Harness::new();
    let (f, _) = h.create(ROOT_INO, "f");
    let set = |name: &str, value: &[u8], flags: i32| Op::SetXattr { ino: f.ino, name: name.into(), value: value.to_vec(), flags };
    assert_eq!(h.run(set("user.a", b"1", XATTR_CREATE)), Ok(Reply::Ok));
    assert_eq!(errno_of(h.run(set("user.a", b"2", XATTR_CREATE))), EEXIST);
    assert_eq!(errno_of(h.run(set("user.b", b"2", XATTR_REPLACE))), ENODATA);
    assert_eq!(h.run(set("user.a", b"22", XATTR_REPLACE)), Ok(Reply::Ok));
    assert_eq!(h.getattr(f.ino).unwrap().ctime, h.now());
    assert_eq!(h.run(set("trusted.t", b"", 0)), Ok(Reply::Ok));
    assert_eq!(h.query(Query::GetXattr { ino: f.ino, name: b"user.a".to_vec() }), Ok(Reply::Data(b"22".to_vec())));
    assert_eq!(errno_of(h.query(Query::GetXattr { ino: f.ino, name: b"user.zz".to_vec() })), ENODATA);
    assert_eq!(h.query(Query::ListXattr { ino: f.ino }), Ok(Reply::Data(b"trusted.t\0user.a\0".to_vec())));
    assert_eq!(h.query_as(&user(5), Query::ListXattr { ino: f.ino }), Ok(Reply::Data(b"user.a\0".to_vec())));
    assert_eq!(errno_of(h.run(set("user.big", &vec![0; XATTR_VALUE_MAX_BYTES + 1], 0))), E2BIG);
    assert_eq!(errno_of(h.run(set(&format!("user.{}", "n".repeat(251)), b"", 0))), ERANGE);
    assert_eq!(errno_of(h.run(set("", b"", 0))), ERANGE);
    assert_eq!(errno_of(h.run(set("weird.x", b"", 0))), EOPNOTSUPP);
    assert_eq!(errno_of(h.run_as(&user(5), set("user.c", b"", 0))), EACCES);
    assert_eq!(errno_of(h.run_as(&user(5), set("trusted.c", b"", 0))), EPERM);
    assert_eq!(h.run(Op::RemoveXattr { ino: f.ino, name: b"user.a".to_vec() }), Ok(Reply::Ok));
    assert_eq!(errno_of(h.run(Op::RemoveXattr { ino: f.ino, name: b"user.a".to_vec() })), ENODATA);
    assert_eq!(h.query(Query::ListXattr { ino: f.ino }), Ok(Reply::Data(b"trusted.t\0".to_vec())));
}

#[test]
fn failed_command_changes_only_the_applied_index() {
    let mut h = Harness::new();
    h.create(ROOT_INO, "f");
    let before = h.getattr(ROOT_INO).unwrap();
    let index = h.store.applied_index();
    assert_eq!(h.create_as(&Caller::root(), ROOT_INO, b"f", 0o644), Err(EEXIST));
    assert_eq!(h.store.applied_index(), index + 1);
    assert_eq!(h.getattr(ROOT_INO).unwrap(), before);
    // The inode counter did not move either: the next file gets the next number.
    let (g, _) = h.create(ROOT_INO, "g");
    assert_eq!(g.ino, h.lookup(ROOT_INO, "f").unwrap().ino + 1);
}

#[test]
fn statfs_is_sensible() {
    let h = Harness::new();
    let Ok(Reply::StatFs(s)) = h.query(Query::StatFs) else { panic!() };
    assert_eq!((s.bsize, s.namelen, s.frsize), (4096, 255, 4096));
    assert!(s.blocks > 0 && s.bfree <= s.blocks && s.ffree < s.files);
}

#[test]
#[should_panic(expected = "apply out of order")]
fn apply_out_of_order_panics() {
    let h = Harness::new();
    let cmd = Command { now: Timestamp::new(1, 0), caller: Caller::root(), op: Op::Fsync { ino: ROOT_INO, datasync: false } };
    let _ = h.store.apply(2, &cmd);
}

#[test]
fn open_directory_survives_rmdir_until_release() {
    let mut h = Harness::new();
    let d = h.mkdir(ROOT_INO, "d");
    let Ok(Reply::Opened { fh, .. }) = h.run(Op::Open { ino: d.ino, flags: O_RDONLY | O_DIRECTORY }) else { panic!() };
    assert_eq!(h.run(Op::Rmdir { parent: ROOT_INO, name: b"d".to_vec() }), Ok(Reply::Ok));
    assert_eq!(h.getattr(d.ino).unwrap().nlink, 0);
    assert!(h.readdir(d.ino, 0, 10).is_empty(), "a removed directory lists nothing");
    let create = Op::Create { parent: d.ino, name: b"x".to_vec(), mode: 0o644, umask: 0, flags: O_RDWR, excl: true };
    assert_eq!(errno_of(h.run(create)), ENOENT, "no new entries in a removed directory");
    h.release(d.ino, fh);
    assert_eq!(h.getattr(d.ino), Err(ENOENT));
}

#[test]
fn io_on_non_files_and_bad_times() {
    let mut h = Harness::new();
    let Ok(Reply::Entry(s)) = h.run(Op::Symlink { parent: ROOT_INO, name: b"s".to_vec(), target: b"t".to_vec() }) else { panic!() };
    assert_eq!(h.read(ROOT_INO, 0, 10), Err(EISDIR));
    assert_eq!(h.read(s.ino, 0, 10), Err(EINVAL));
    assert_eq!(errno_of(h.run(Op::Open { ino: s.ino, flags: O_RDONLY })), ELOOP);
    let set = Op::SetXattr { ino: s.ino, name: b"user.a".to_vec(), value: vec![], flags: 0 };
    assert_eq!(errno_of(h.run(set)), EPERM, "user.* xattrs only on files and directories");
    let get = Query::GetXattr { ino: s.ino, name: b"user.a".to_vec() };
    assert_eq!(errno_of(h.query(get)), ENODATA);
    let (f, _) = h.create(ROOT_INO, "f");
    let bad = SetAttr { mtime: Some(SetTime::At(Timestamp::new(1, 1_000_000_000))), ..Default::default() };
    assert_eq!(errno_of(h.run(Op::SetAttr { ino: f.ino, attr: bad })), EINVAL);
    assert_eq!(errno_of(h.run(Op::Fsync { ino: 4242, datasync: true })), ENOENT);
    assert_eq!(h.run(Op::Fsync { ino: f.ino, datasync: true }), Ok(Reply::Ok));
}

#[test]
fn protected_hardlinks() {
    let mut h = Harness::new();
    let (alice, bob) = (user(1000), user(1001));
    setattr(&mut h, &Caller::root(), ROOT_INO, SetAttr { mode: Some(0o777), ..Default::default() }).unwrap();
    let (f, _) = h.create_as(&alice, ROOT_INO, b"f", 0o644).unwrap();
    let link = |name: &str| Op::Link { ino: f.ino, newparent: ROOT_INO, newname: name.into() };
    assert_eq!(errno_of(h.run_as(&bob, link("b1"))), EPERM, "bob may not write f");
    assert_eq!(errno_of(h.run_as(&bob, link("f"))), EEXIST, "EEXIST comes first");
    setattr(&mut h, &alice, f.ino, SetAttr { mode: Some(0o666), ..Default::default() }).unwrap();
    assert!(h.run_as(&bob, link("b2")).is_ok(), "read+write access to a plain file suffices");
    setattr(&mut h, &alice, f.ino, SetAttr { mode: Some(0o4666), ..Default::default() }).unwrap();
    assert_eq!(errno_of(h.run_as(&bob, link("b3"))), EPERM, "never a setuid file");
    assert!(h.run_as(&alice, link("a1")).is_ok(), "the owner may");
}
