//! Names: create, mknod, mkdir, symlink, link, unlink, rmdir, rename, and the
//! lookup and readdir queries.
//!
//! Guarantees: checks run in Linux's order (path walk, then existence, then
//! `may_create` / `may_delete`, then the file system's own rules), so the
//! errno of a failing call is the one ext4 gives. Directory nlink is always
//! 2 + subdirectories; a file's nlink counts its names. Renames never create a
//! loop (a directory never moves into its own subtree). Readdir cookies are
//! stable: an entry keeps its cookie until it is removed or renamed, and a
//! cookie is never reused within its directory.

use crate::ctx::Ctx;
use crate::error::{errno, Fail, R};
use crate::keys::{pair_key, split_pair_key, Table};
use crate::ops::{Caller, DirEntry, FileKind, Ino, Reply, READDIR_ENTRIES_MAX, SYMLINK_MAX_BYTES};
use crate::perm::{check_access, is_owner_or_root, is_root, may_create, may_delete, MAY_READ, MAY_WRITE};
use crate::records::{decode, DirSlot, Inode, COOKIE_FIRST};
use crate::state::{check_name, dir_for_lookup, get_dirent, get_inode, is_ancestor, is_dot_or_dotdot, load_inode, LINK_MAX};
use crate::view::View;

/// Owner, group and permission bits of a new inode in `dir` (Linux
/// `inode_init_owner` and `mode_strip_sgid`): a set-group-ID directory hands
/// its group down, and to new subdirectories its S_ISGID bit too.
fn new_owner(dir: &Inode, caller: &Caller, kind: FileKind, perm: u32) -> (u32, u32, u32) {
    let mut perm = perm & 0o7777;
    let gid = if dir.perm & libc::S_ISGID != 0 {
        if kind == FileKind::Dir {
            perm |= libc::S_ISGID;
        } else if perm & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP) && !caller.in_group(dir.gid) && !is_root(caller)
        {
            perm &= !libc::S_ISGID;
        }
        dir.gid
    } else {
        caller.gid
    };
    (perm, caller.uid, gid)
}

/// The directory `parent` ready for a new entry `name`: path walk checks, name
/// rules, EEXIST, then `may_create`.
fn prepare_new_entry(ctx: &Ctx, parent: Ino, name: &[u8]) -> R<Inode> {
    let dir = dir_for_lookup(&ctx.tx, ctx.caller, parent)?;
    check_name(name)?;
    if is_dot_or_dotdot(name) || get_dirent(&ctx.tx, parent, name)?.is_some() {
        return errno(libc::EEXIST);
    }
    may_create(&dir, ctx.caller)?;
    Ok(dir)
}

/// Links the new inode `node` into `dir` as `name` and saves both.
fn insert_new(ctx: &mut Ctx, mut dir: Inode, name: &[u8], node: &Inode) -> R<()> {
    ctx.add_entry(&mut dir, name, node.ino, node.kind)?;
    if node.is_dir() {
        dir.nlink += 1;
    }
    dir.modified(ctx.now);
    ctx.save(&dir);
    ctx.save(node);
    Ok(())
}

pub(crate) fn create(ctx: &mut Ctx, parent: Ino, name: &[u8], mode: u32, umask: u32, flags: i32, excl: bool) -> R<Reply> {
    let dir = dir_for_lookup(&ctx.tx, ctx.caller, parent)?;
    check_name(name)?;
    if is_dot_or_dotdot(name) {
        return errno(if excl { libc::EEXIST } else { libc::EISDIR });
    }
    if let Some(entry) = get_dirent(&ctx.tx, parent, name)? {
        if excl {
            return errno(libc::EEXIST);
        }
        let (attr, fh) = crate::attrs::open_existing(ctx, entry.ino, flags)?;
        return Ok(Reply::Created { attr, fh });
    }
    may_create(&dir, ctx.caller)?;
    if !matches!(mode & libc::S_IFMT, 0 | libc::S_IFREG) {
        return errno(libc::EINVAL);
    }
    let (perm, uid, gid) = new_owner(&dir, ctx.caller, FileKind::File, mode & !umask);
    let mut node = ctx.alloc_inode(FileKind::File, perm, uid, gid)?;
    // A file created by this open is not checked against its own mode (Linux
    // skips may_open for FMODE_CREATED) and is empty, so O_TRUNC is moot.
    let fh = ctx.open_handle(&mut node, flags)?;
    insert_new(ctx, dir, name, &node)?;
    Ok(Reply::Created { attr: node.attr(), fh })
}

pub(crate) fn mknod(ctx: &mut Ctx, parent: Ino, name: &[u8], mode: u32, umask: u32, rdev: u32) -> R<Reply> {
    // may_mknod runs before the lookup in Linux.
    let kind = match mode & libc::S_IFMT {
        0 | libc::S_IFREG => FileKind::File,
        libc::S_IFCHR => FileKind::CharDev,
        libc::S_IFBLK => FileKind::BlockDev,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFDIR => return errno(libc::EPERM),
        _ => return errno(libc::EINVAL),
    };
    let dir = prepare_new_entry(ctx, parent, name)?;
    let device = matches!(kind, FileKind::CharDev | FileKind::BlockDev);
    if device && !is_root(ctx.caller) {
        return errno(libc::EPERM);
    }
    let (perm, uid, gid) = new_owner(&dir, ctx.caller, kind, mode & !umask);
    let mut node = ctx.alloc_inode(kind, perm, uid, gid)?;
    node.rdev = if device { rdev } else { 0 };
    insert_new(ctx, dir, name, &node)?;
    Ok(Reply::Entry(node.attr()))
}

pub(crate) fn mkdir(ctx: &mut Ctx, parent: Ino, name: &[u8], mode: u32, umask: u32) -> R<Reply> {
    let dir = prepare_new_entry(ctx, parent, name)?;
    if dir.nlink >= LINK_MAX {
        return errno(libc::EMLINK);
    }
    // vfs_mkdir keeps only rwx and sticky bits of the requested mode.
    let requested = mode & !umask & (0o777 | libc::S_ISVTX);
    let (perm, uid, gid) = new_owner(&dir, ctx.caller, FileKind::Dir, requested);
    let mut node = ctx.alloc_inode(FileKind::Dir, perm, uid, gid)?;
    node.parent = parent;
    insert_new(ctx, dir, name, &node)?;
    Ok(Reply::Entry(node.attr()))
}

pub(crate) fn symlink(ctx: &mut Ctx, parent: Ino, name: &[u8], target: &[u8]) -> R<Reply> {
    if target.is_empty() {
        return errno(libc::ENOENT);
    }
    if target.len() > SYMLINK_MAX_BYTES {
        return errno(libc::ENAMETOOLONG);
    }
    // A kernel ends the target at its first NUL; a stored NUL would read
    // back as another link than the one created.
    if target.contains(&0) {
        return errno(libc::EINVAL);
    }
    let dir = prepare_new_entry(ctx, parent, name)?;
    let (perm, uid, gid) = new_owner(&dir, ctx.caller, FileKind::Symlink, 0o777);
    let mut node = ctx.alloc_inode(FileKind::Symlink, perm, uid, gid)?;
    node.target = target.to_vec();
    node.size = target.len() as u64;
    insert_new(ctx, dir, name, &node)?;
    Ok(Reply::Entry(node.attr()))
}

/// `may_linkat` with fs.protected_hardlinks = 1 (the default of Debian and
/// most distributions): only the owner, root, or a caller who may read and
/// write a plain (not set-ID) regular file may hard-link it (EPERM).
fn may_linkat(node: &Inode, caller: &Caller) -> R<()> {
    if is_owner_or_root(node, caller) {
        return Ok(());
    }
    let setgid_exec = libc::S_ISGID | libc::S_IXGRP;
    let safe = node.kind == FileKind::File
        && node.perm & libc::S_ISUID == 0
        && node.perm & setgid_exec != setgid_exec
        && check_access(node, caller, MAY_READ | MAY_WRITE).is_ok();
    if safe {
        Ok(())
    } else {
        errno(libc::EPERM)
    }
}

pub(crate) fn link(ctx: &mut Ctx, ino: Ino, newparent: Ino, newname: &[u8]) -> R<Reply> {
    // Linux order: the new name (search, EEXIST), may_linkat, may_create,
    // then the file system's own rules.
    let mut node = ctx.inode(ino)?;
    let mut dir = dir_for_lookup(&ctx.tx, ctx.caller, newparent)?;
    check_name(newname)?;
    if is_dot_or_dotdot(newname) || get_dirent(&ctx.tx, newparent, newname)?.is_some() {
        return errno(libc::EEXIST);
    }
    may_linkat(&node, ctx.caller)?;
    may_create(&dir, ctx.caller)?;
    if node.is_dir() {
        return errno(libc::EPERM);
    }
    if node.nlink == 0 {
        return errno(libc::ENOENT);
    }
    if node.nlink >= LINK_MAX {
        return errno(libc::EMLINK);
    }
    ctx.add_entry(&mut dir, newname, ino, node.kind)?;
    dir.modified(ctx.now);
    ctx.save(&dir);
    node.nlink += 1;
    node.changed(ctx.now);
    ctx.save(&node);
    Ok(Reply::Entry(node.attr()))
}

pub(crate) fn unlink(ctx: &mut Ctx, parent: Ino, name: &[u8]) -> R<Reply> {
    let mut dir = dir_for_lookup(&ctx.tx, ctx.caller, parent)?;
    check_name(name)?;
    if is_dot_or_dotdot(name) {
        return errno(libc::EISDIR);
    }
    let Some(entry) = get_dirent(&ctx.tx, parent, name)? else {
        return errno(libc::ENOENT);
    };
    let victim = ctx.inode(entry.ino)?;
    may_delete(&dir, &victim, false, ctx.caller)?;
    ctx.remove_entry(&mut dir, name, &entry);
    dir.modified(ctx.now);
    ctx.save(&dir);
    ctx.drop_link(entry.ino)?;
    Ok(Reply::Ok)
}

pub(crate) fn rmdir(ctx: &mut Ctx, parent: Ino, name: &[u8]) -> R<Reply> {
    let mut dir = dir_for_lookup(&ctx.tx, ctx.caller, parent)?;
    check_name(name)?;
    if name == b"." {
        return errno(libc::EINVAL);
    }
    if name == b".." {
        return errno(libc::ENOTEMPTY);
    }
    let Some(entry) = get_dirent(&ctx.tx, parent, name)? else {
        return errno(libc::ENOENT);
    };
    let victim = ctx.inode(entry.ino)?;
    may_delete(&dir, &victim, true, ctx.caller)?;
    if victim.entries > 0 {
        return errno(libc::ENOTEMPTY);
    }
    ctx.remove_entry(&mut dir, name, &entry);
    assert!(dir.nlink > 2, "directory {} with a subdirectory has nlink {}", dir.ino, dir.nlink);
    dir.nlink -= 1;
    dir.modified(ctx.now);
    ctx.save(&dir);
    ctx.drop_link(entry.ino)?;
    Ok(Reply::Ok)
}

pub(crate) fn rename(ctx: &mut Ctx, parent: Ino, name: &[u8], newparent: Ino, newname: &[u8], flags: u32) -> R<Reply> {
    let noreplace = flags & libc::RENAME_NOREPLACE != 0;
    let exchange = flags & libc::RENAME_EXCHANGE != 0;
    if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange) {
        // RENAME_WHITEOUT is for overlay file systems; we do not support it.
        return errno(libc::EINVAL);
    }
    let old_dir = dir_for_lookup(&ctx.tx, ctx.caller, parent)?;
    check_name(name)?;
    let new_dir = dir_for_lookup(&ctx.tx, ctx.caller, newparent)?;
    check_name(newname)?;
    if is_dot_or_dotdot(name) {
        return errno(libc::EBUSY);
    }
    if is_dot_or_dotdot(newname) {
        return errno(if noreplace { libc::EEXIST } else { libc::EBUSY });
    }
    let Some(src) = get_dirent(&ctx.tx, parent, name)? else {
        return errno(libc::ENOENT);
    };
    // Linux looks no name up in a removed directory (IS_DEADDIR): ENOENT.
    // A removed directory kept alive by a handle has no entries (so `src`
    // above is never in one) and its `parent` may be freed: moving anything
    // into it would cut it off from the tree, and the loop check below would
    // walk into the freed parent.
    if new_dir.nlink == 0 {
        return errno(libc::ENOENT);
    }
    let dst = get_dirent(&ctx.tx, newparent, newname)?;
    if noreplace && dst.is_some() {
        return errno(libc::EEXIST);
    }
    if exchange && dst.is_none() {
        return errno(libc::ENOENT);
    }
    let src_is_dir = src.kind == FileKind::Dir;
    let dst_is_dir = dst.as_ref().is_some_and(|d| d.kind == FileKind::Dir);
    if src_is_dir && is_ancestor(&ctx.tx, src.ino, newparent)? {
        return errno(libc::EINVAL);
    }
    if let Some(d) = &dst {
        if dst_is_dir && is_ancestor(&ctx.tx, d.ino, parent)? {
            return errno(if exchange { libc::EINVAL } else { libc::ENOTEMPTY });
        }
        if d.ino == src.ino {
            // Same inode (the same entry, or two hard links): Linux does nothing.
            return Ok(Reply::Ok);
        }
    }
    let src_node = ctx.inode(src.ino)?;
    may_delete(&old_dir, &src_node, src_is_dir, ctx.caller)?;
    let dst_node = match &dst {
        None => {
            may_create(&new_dir, ctx.caller)?;
            None
        }
        Some(d) => {
            let node = ctx.inode(d.ino)?;
            let want_dir = if exchange { dst_is_dir } else { src_is_dir };
            may_delete(&new_dir, &node, want_dir, ctx.caller)?;
            Some(node)
        }
    };
    let cross = parent != newparent;
    if cross {
        // Moving a directory rewrites its "..": that needs write permission on it.
        if src_is_dir {
            check_access(&src_node, ctx.caller, MAY_WRITE)?;
        }
        if exchange && dst_is_dir {
            check_access(dst_node.as_ref().expect("exchange has a target"), ctx.caller, MAY_WRITE)?;
        }
    }
    if !exchange {
        if let Some(node) = &dst_node {
            if node.is_dir() && node.entries > 0 {
                return errno(libc::ENOTEMPTY);
            }
        }
        if src_is_dir && cross && !dst_is_dir && new_dir.nlink >= LINK_MAX {
            return errno(libc::EMLINK);
        }
    } else if cross && src_is_dir != dst_is_dir {
        let gaining = if src_is_dir { &new_dir } else { &old_dir };
        if gaining.nlink >= LINK_MAX {
            return errno(libc::EMLINK);
        }
    }

    // All checks passed: mutate. Each step reloads what it changes, because
    // parent and newparent may be the same directory.
    if exchange {
        let d = dst.expect("exchange has a target");
        ctx.repoint_entry(parent, name, &src, d.ino, d.kind);
        ctx.repoint_entry(newparent, newname, &d, src.ino, src.kind);
        let mut old_dir = ctx.inode(parent)?;
        if cross {
            old_dir.nlink = old_dir.nlink + dst_is_dir as u32 - src_is_dir as u32;
        }
        old_dir.modified(ctx.now);
        ctx.save(&old_dir);
        if cross {
            let mut new_dir = ctx.inode(newparent)?;
            new_dir.nlink = new_dir.nlink + src_is_dir as u32 - dst_is_dir as u32;
            new_dir.modified(ctx.now);
            ctx.save(&new_dir);
        }
        for (ino, holder) in [(src.ino, newparent), (d.ino, parent)] {
            let mut node = ctx.inode(ino)?;
            if node.is_dir() {
                node.parent = holder;
            }
            node.changed(ctx.now);
            ctx.save(&node);
        }
        return Ok(Reply::Ok);
    }

    if let Some(d) = &dst {
        let mut new_dir = ctx.inode(newparent)?;
        ctx.remove_entry(&mut new_dir, newname, d);
        if dst_is_dir {
            new_dir.nlink -= 1;
        }
        ctx.save(&new_dir);
        ctx.drop_link(d.ino)?;
    }
    let mut old_dir = ctx.inode(parent)?;
    ctx.remove_entry(&mut old_dir, name, &src);
    if src_is_dir && cross {
        old_dir.nlink -= 1;
    }
    old_dir.modified(ctx.now);
    ctx.save(&old_dir);
    let mut new_dir = ctx.inode(newparent)?;
    ctx.add_entry(&mut new_dir, newname, src.ino, src.kind)?;
    if src_is_dir && cross {
        new_dir.nlink += 1;
    }
    new_dir.modified(ctx.now);
    ctx.save(&new_dir);
    let mut node = ctx.inode(src.ino)?;
    if node.is_dir() {
        node.parent = newparent;
    }
    node.changed(ctx.now);
    ctx.save(&node);
    Ok(Reply::Ok)
}

pub(crate) fn lookup(view: &impl View, caller: &Caller, parent: Ino, name: &[u8]) -> R<Reply> {
    let dir = dir_for_lookup(view, caller, parent)?;
    check_name(name)?;
    let ino = match name {
        b"." => parent,
        b".." => dir.parent,
        _ => match get_dirent(view, parent, name)? {
            Some(entry) => entry.ino,
            None => return errno(libc::ENOENT),
        },
    };
    Ok(Reply::Entry(load_inode(view, ino)?.attr()))
}

pub(crate) fn readdir(view: &impl View, ino: Ino, cookie: u64, max_entries: u32, plus: bool) -> R<Reply> {
    let dir = load_inode(view, ino)?;
    if !dir.is_dir() {
        return errno(libc::ENOTDIR);
    }
    let limit = max_entries.clamp(1, READDIR_ENTRIES_MAX) as usize;
    let mut entries = Vec::with_capacity(limit.min(64));
    for (dot_cookie, dot_name, dot_ino) in [(1u64, &b"."[..], ino), (2, &b".."[..], dir.parent)] {
        if cookie < dot_cookie && entries.len() < limit && dir.nlink > 0 {
            let attr = if plus { Some(load_inode(view, dot_ino)?.attr()) } else { None };
            entries.push(DirEntry { ino: dot_ino, cookie: dot_cookie, kind: FileKind::Dir, name: dot_name.to_vec(), attr });
        }
    }
    let first = cookie.saturating_add(1).max(COOKIE_FIRST);
    let want = limit - entries.len();
    if want > 0 && first < u64::MAX {
        let from = pair_key(ino, first);
        let (_, to) = crate::keys::prefix_range(ino);
        for (key, value) in view.scan(Table::DirIndex, &from, &to, want)? {
            let (_, entry_cookie) = split_pair_key(Table::DirIndex, &key).map_err(Fail::Store)?;
            let slot: DirSlot = decode(Table::DirIndex, &key, &value).map_err(Fail::Store)?;
            let attr = if plus {
                let node = get_inode(view, slot.ino)?
                    .unwrap_or_else(|| panic!("entry {:?} of {ino} points at missing inode {}", slot.name, slot.ino));
                Some(node.attr())
            } else {
                None
            };
            entries.push(DirEntry { ino: slot.ino, cookie: entry_cookie, kind: slot.kind, name: slot.name, attr });
        }
    }
    Ok(Reply::Dir(entries))
}
