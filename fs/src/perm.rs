//! POSIX permission rules, as Linux applies them to a local file system.
//!
//! Guarantees: the same checks and the same error numbers as Linux's
//! `generic_permission` (no ACLs), `may_delete`'s sticky-directory rule and
//! `inode_owner_or_capable`. uid 0 stands for a process with every capability
//! (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN, CAP_FSETID, CAP_MKNOD,
//! CAP_SYS_ADMIN). Assumes the caller's credentials in the command are the
//! ones the kernel would have checked (the server maps them first: a
//! certificate not trusted as root has uid 0 squashed to nobody).
//!
//! Queries are checked like commands ([`check_query`]): a client that names
//! an inode by number, without opening it through a path, still needs read
//! permission to read a file or list a directory.

use crate::error::{errno, Fail, R};
use crate::ops::{Caller, FileKind, Query};
use crate::records::Inode;
use crate::view::View;

pub(crate) const MAY_EXEC: u32 = 1;
pub(crate) const MAY_WRITE: u32 = 2;
pub(crate) const MAY_READ: u32 = 4;

pub(crate) fn is_root(caller: &Caller) -> bool {
    caller.uid == 0
}

/// `generic_permission`: EACCES unless `caller` may do everything in `mask`.
pub(crate) fn check_access(inode: &Inode, caller: &Caller, mask: u32) -> R<()> {
    assert_eq!(mask & !(MAY_EXEC | MAY_WRITE | MAY_READ), 0, "unknown permission bits");
    if is_root(caller) {
        // Root may do anything except execute a non-directory nobody may execute.
        if mask & MAY_EXEC != 0 && !inode.is_dir() && inode.perm & 0o111 == 0 {
            return errno(libc::EACCES);
        }
        return Ok(());
    }
    let granted = if caller.uid == inode.uid {
        (inode.perm >> 6) & 7
    } else if caller.in_group(inode.gid) {
        (inode.perm >> 3) & 7
    } else {
        inode.perm & 7
    };
    if mask & !granted != 0 {
        return errno(libc::EACCES);
    }
    Ok(())
}

/// The permission a query needs on the inode it names, beyond the checks
/// its handler makes itself (lookup: search on the directory; getxattr:
/// the namespace rules): Read needs read permission on the file, ReadDir
/// read permission on the directory (what open(2) and opendir(3) check);
/// execute permission also lets a file be read (exec of a 0711 program).
/// The owner and root always pass: the owner could grant itself the bits
/// with chmod anyway, and it keeps a file created with mode 0 or chmodded
/// after open readable by the process that owns it (queries carry no handle).
/// GetAttr, ReadLink, ListXattr and StatFs need nothing, as on Linux (stat,
/// readlink and listxattr check only the path, which a query by inode
/// number does not have). A missing inode passes here: the handler answers
/// its own error (ENOENT).
pub(crate) fn check_query(view: &impl View, caller: &Caller, query: &Query) -> R<()> {
    let ino = match query {
        Query::Read { ino, .. } | Query::ReadDir { ino, .. } => *ino,
        _ => return Ok(()),
    };
    let inode = match crate::state::load_inode(view, ino) {
        Ok(inode) => inode,
        Err(Fail::Errno(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    if is_owner_or_root(&inode, caller) {
        return Ok(());
    }
    match (check_access(&inode, caller, MAY_READ), inode.kind) {
        // The kernel reads a program it executes for a caller that may
        // execute but not read it (mode 0711): exec permission is enough.
        (Err(_), FileKind::File) => check_access(&inode, caller, MAY_EXEC),
        (answer, _) => answer,
    }
}

/// `inode_owner_or_capable`.
pub(crate) fn is_owner_or_root(inode: &Inode, caller: &Caller) -> bool {
    is_root(caller) || caller.uid == inode.uid
}

/// The sticky-directory rule of `may_delete`: in a sticky directory only the
/// owner of the entry, the owner of the directory or root may remove or
/// rename it (EPERM).
pub(crate) fn check_sticky(dir: &Inode, victim: &Inode, caller: &Caller) -> R<()> {
    assert!(dir.is_dir());
    if dir.perm & libc::S_ISVTX == 0 {
        return Ok(());
    }
    if caller.uid == victim.uid || caller.uid == dir.uid || is_root(caller) {
        return Ok(());
    }
    errno(libc::EPERM)
}

/// `may_delete(dir, victim, isdir)` after the entry is known to exist: write
/// and search permission on `dir` (EACCES), the sticky rule (EPERM), then the
/// kind (ENOTDIR when a directory was wanted, EISDIR when it was not).
pub(crate) fn may_delete(dir: &Inode, victim: &Inode, want_dir: bool, caller: &Caller) -> R<()> {
    check_access(dir, caller, MAY_WRITE | MAY_EXEC)?;
    check_sticky(dir, victim, caller)?;
    if want_dir && !victim.is_dir() {
        return errno(libc::ENOTDIR);
    }
    if !want_dir && victim.is_dir() {
        return errno(libc::EISDIR);
    }
    Ok(())
}

/// `may_create(dir)`: the directory is still linked (ENOENT) and writable and
/// searchable (EACCES).
pub(crate) fn may_create(dir: &Inode, caller: &Caller) -> R<()> {
    assert!(dir.is_dir());
    if dir.nlink == 0 {
        return errno(libc::ENOENT);
    }
    check_access(dir, caller, MAY_WRITE | MAY_EXEC)
}

/// `setattr_should_drop_sgid`: S_ISGID goes when group execute is set, or
/// when `caller` is neither in the file's group `gid` nor root.
fn should_drop_sgid(perm: u32, gid: u32, caller: &Caller) -> bool {
    perm & libc::S_ISGID != 0 && (perm & libc::S_IXGRP != 0 || !(is_root(caller) || caller.in_group(gid)))
}

/// Mode bits a write, truncate or fallocate by `caller` leaves on a regular
/// file of group `gid` (`file_remove_privs`): nothing changes for root;
/// others drop S_ISUID, and S_ISGID by `should_drop_sgid`.
pub(crate) fn perm_after_write(perm: u32, gid: u32, caller: &Caller) -> u32 {
    if is_root(caller) {
        return perm;
    }
    let mut perm = perm & !libc::S_ISUID;
    if should_drop_sgid(perm, gid, caller) {
        perm &= !libc::S_ISGID;
    }
    perm
}

/// Mode bits a chown of a non-directory (group `gid` before the change)
/// leaves (`chown_common` + `notify_change`): S_ISUID always goes, even for
/// root; S_ISGID by `should_drop_sgid`.
pub(crate) fn perm_after_chown(perm: u32, gid: u32, caller: &Caller) -> u32 {
    let mut perm = perm & !libc::S_ISUID;
    if should_drop_sgid(perm, gid, caller) {
        perm &= !libc::S_ISGID;
    }
    perm
}

#[cfg(test)]
mod tests {
    use crate::ops::{Caller, Query, Reply, ROOT_INO};
    use crate::tests::{user, Harness};

    fn errno_of(r: crate::ops::OpResult) -> i32 {
        r.expect_err("expected an errno").0
    }

    /// Issue 10, finding 3: queries check permission like commands do; a
    /// client naming an inode by number cannot read what it may not open.
    #[test]
    fn reads_and_listings_need_read_permission() {
        let mut h = Harness::new();
        let alice = user(1000);
        let bob = user(1001);
        let home = h.mkdir_as(&Caller::root(), ROOT_INO, "home", 0o777).unwrap();
        let (secret, _) = h.create_as(&alice, home.ino, b"secret", 0o600).unwrap();
        let (shared, _) = h.create_as(&alice, home.ino, b"shared", 0o640).unwrap();
        let private = h.mkdir_as(&alice, home.ino, "private", 0o700).unwrap();
        let (nobits, _) = h.create_as(&alice, home.ino, b"nobits", 0o000).unwrap();
        let read = |ino| Query::Read { ino, offset: 0, size: 16 };
        let list = |ino| Query::ReadDir { ino, cookie: 0, max_entries: 16, plus: true };

        assert_eq!(errno_of(h.query_as(&bob, read(secret.ino))), libc::EACCES);
        assert_eq!(errno_of(h.query_as(&bob, list(private.ino))), libc::EACCES);
        assert_eq!(errno_of(h.query_as(&bob, read(shared.ino))), libc::EACCES, "other has no read bit");
        // Group read, through a supplementary group too.
        let in_group = Caller { uid: 1001, gid: 50, pid: 1, groups: vec![1000] };
        assert!(matches!(h.query_as(&in_group, read(shared.ino)), Ok(Reply::Data(_))));
        // The owner (even without bits: it could chmod) and root may.
        assert!(matches!(h.query_as(&alice, read(secret.ino)), Ok(Reply::Data(_))));
        assert!(matches!(h.query_as(&alice, read(nobits.ino)), Ok(Reply::Data(_))));
        assert!(matches!(h.query_as(&alice, list(private.ino)), Ok(Reply::Dir(_))));
        assert!(matches!(h.query_as(&Caller::root(), read(secret.ino)), Ok(Reply::Data(_))));
        assert!(matches!(h.query_as(&Caller::root(), list(private.ino)), Ok(Reply::Dir(_))));
        // A squashed root is nobody: no better than bob.
        let nobody = user(65534);
        assert_eq!(errno_of(h.query_as(&nobody, read(secret.ino))), libc::EACCES);
        // Attributes need no permission on the inode (stat checks the path only).
        assert!(matches!(h.query_as(&bob, Query::GetAttr { ino: secret.ino }), Ok(Reply::Attr(_))));
        // Missing inodes keep their own errors.
        assert_eq!(errno_of(h.query_as(&bob, read(999_999))), libc::ENOENT);
        assert_eq!(errno_of(h.query_as(&bob, list(999_999))), libc::ENOENT);
        // Lookup in a directory bob cannot search.
        assert_eq!(errno_of(h.query_as(&bob, Query::Lookup { parent: private.ino, name: b"x".to_vec() })), libc::EACCES);
        // A program bob may run but not read (0711): the kernel reads it to
        // execute it for him. A directory's execute bit is no read right.
        let (program, _) = h.create_as(&alice, home.ino, b"program", 0o711).unwrap();
        assert!(matches!(h.query_as(&bob, read(program.ino)), Ok(Reply::Data(_))));
        let search_only = h.mkdir_as(&alice, home.ino, "search-only", 0o711).unwrap();
        assert_eq!(errno_of(h.query_as(&bob, list(search_only.ino))), libc::EACCES);
    }
}
