//! POSIX permission rules, as Linux applies them to a local file system.
//!
//! Guarantees: the same checks and the same error numbers as Linux's
//! `generic_permission` (no ACLs), `may_delete`'s sticky-directory rule and
//! `inode_owner_or_capable`. uid 0 stands for a process with every capability
//! (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN, CAP_FSETID, CAP_MKNOD,
//! CAP_SYS_ADMIN). Assumes the caller's credentials in the command are the
//! ones the kernel would have checked.

use crate::error::{errno, R};
use crate::ops::Caller;
use crate::records::Inode;

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
