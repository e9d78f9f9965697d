//! Reading the file-system state through any [`View`]: inodes, directory
//! entries, name rules. Shared by queries and the applier.
//!
//! Guarantees: the order of checks (parent exists, is a directory, may be
//! searched, then the name) is Linux's path-walk order, so the first failing
//! check decides the errno as on ext4.

use crate::error::{errno, Fail, R};
use crate::keys::{inode_key, named_key, Table};
use crate::ops::NAME_MAX_BYTES;
use crate::ops::{Caller, Ino};
use crate::perm::{check_access, MAY_EXEC};
use crate::records::{Dirent, Inode};
use crate::view::View;

/// Hard links of one inode, and subdirectories of one directory, as ext4's
/// EXT4_LINK_MAX.
pub(crate) const LINK_MAX: u32 = 65000;
/// Most entries one directory may hold (bound; ENOSPC beyond).
pub(crate) const DIR_ENTRIES_MAX: u64 = 16 * 1024 * 1024;
/// Deepest directory nesting we walk when checking for rename loops; deeper
/// means the parent chain has a cycle, which is a corrupt state.
pub(crate) const DEPTH_MAX: u32 = 1 << 20;

pub(crate) fn get_inode(view: &impl View, ino: Ino) -> R<Option<Inode>> {
    let key = inode_key(ino);
    let inode: Option<Inode> = view.get_record(Table::Inodes, &key).map_err(Fail::Store)?;
    if let Some(inode) = &inode {
        assert_eq!(inode.ino, ino, "inode record stored under another number");
    }
    Ok(inode)
}

/// The inode, or ENOENT.
pub(crate) fn load_inode(view: &impl View, ino: Ino) -> R<Inode> {
    match get_inode(view, ino)? {
        Some(inode) => Ok(inode),
        None => errno(libc::ENOENT),
    }
}

/// A directory we are about to look a name up in: exists (ENOENT), is a
/// directory (ENOTDIR), may be searched by `caller` (EACCES).
pub(crate) fn dir_for_lookup(view: &impl View, caller: &Caller, ino: Ino) -> R<Inode> {
    let dir = load_inode(view, ino)?;
    if !dir.is_dir() {
        return errno(libc::ENOTDIR);
    }
    check_access(&dir, caller, MAY_EXEC)?;
    Ok(dir)
}

/// Name rules: longer than NAME_MAX → ENAMETOOLONG; empty, or holding '/' or
/// NUL → EINVAL.
pub(crate) fn check_name(name: &[u8]) -> R<()> {
    if name.len() > NAME_MAX_BYTES {
        return errno(libc::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return errno(libc::EINVAL);
    }
    Ok(())
}

pub(crate) fn is_dot_or_dotdot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

pub(crate) fn get_dirent(view: &impl View, parent: Ino, name: &[u8]) -> R<Option<Dirent>> {
    let key = named_key(parent, name);
    view.get_record(Table::Dirents, &key).map_err(Fail::Store)
}

/// True when `ancestor` is `ino` or one of its ancestors (walks ".." links).
///
/// Assumes `ino` is a linked directory (nlink > 0; callers check it, see
/// `rename`). The parent chain of a linked directory runs through linked
/// directories up to the root: rmdir removes only empty directories and
/// rename moves only into linked ones. A removed directory (kept alive by a
/// handle) is the exception: its `parent` may be freed, so a walk from one
/// is refused here instead of wandering into a missing inode. Anything else
/// off the chain is a corrupt state: a panic, never reachable by a command.
pub(crate) fn is_ancestor(view: &impl View, ancestor: Ino, ino: Ino) -> R<bool> {
    let mut current = ino;
    for _ in 0..DEPTH_MAX {
        if current == ancestor {
            return Ok(true);
        }
        if current == crate::ops::ROOT_INO {
            return Ok(false);
        }
        let Some(inode) = get_inode(view, current)? else {
            panic!("directory {current} on a parent chain is missing");
        };
        assert!(inode.is_dir() && inode.nlink > 0, "parent chain from {ino} reaches {current}, not a linked directory");
        current = inode.parent;
    }
    panic!("parent chain from {ino} longer than {DEPTH_MAX}: cycle in the directory tree");
}
