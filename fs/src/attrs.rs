//! Attributes and handles: setattr (chmod, chown, truncate, utimens), open,
//! release and fsync.
//!
//! Guarantees: permission rules of Linux `setattr_prepare`, `may_setattr`,
//! `chown_ok` / `chgrp_ok` and `may_open`; the set-ID bits are cleared as
//! `notify_change` clears them. An inode whose last name went away stays
//! (data and all) while handles are open, and is freed by the last release.

use crate::ctx::Ctx;
use crate::data::truncate;
use crate::error::{errno, R};
use crate::ops::{Attr, FileKind, Ino, Reply, SetAttr, SetTime, FILE_SIZE_MAX_BYTES};
use crate::perm::{check_access, is_owner_or_root, is_root, perm_after_chown, perm_after_write, MAY_READ, MAY_WRITE};

/// `may_open`: the access mode (and O_TRUNC) checked against the inode.
fn check_open(ctx: &Ctx, ino: Ino, flags: i32) -> R<()> {
    let node = ctx.inode(ino)?;
    let mut mask = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => MAY_READ,
        libc::O_WRONLY => MAY_WRITE,
        _ => MAY_READ | MAY_WRITE,
    };
    if flags & libc::O_TRUNC != 0 {
        mask |= MAY_WRITE;
    }
    match node.kind {
        FileKind::Symlink => return errno(libc::ELOOP),
        FileKind::Dir if mask & MAY_WRITE != 0 => return errno(libc::EISDIR),
        _ => {}
    }
    check_access(&node, ctx.caller, mask)
}

/// Opens an existing inode: checks, O_TRUNC, a new handle.
pub(crate) fn open_existing(ctx: &mut Ctx, ino: Ino, flags: i32) -> R<(Attr, u64)> {
    check_open(ctx, ino, flags)?;
    let mut node = ctx.inode(ino)?;
    if flags & libc::O_TRUNC != 0 && node.kind == FileKind::File {
        truncate(ctx, &mut node, 0)?;
        node.perm = perm_after_write(node.perm, node.gid, ctx.caller);
        node.modified(ctx.now);
    }
    let fh = ctx.open_handle(&mut node, flags)?;
    ctx.save(&node);
    Ok((node.attr(), fh))
}

pub(crate) fn open(ctx: &mut Ctx, ino: Ino, flags: i32) -> R<Reply> {
    let (attr, fh) = open_existing(ctx, ino, flags)?;
    Ok(Reply::Opened { attr, fh })
}

pub(crate) fn release(ctx: &mut Ctx, ino: Ino, fh: u64) -> R<Reply> {
    ctx.handle(ino, fh)?;
    crate::locks::release_handle_locks(ctx, ino, fh)?;
    ctx.close_handle(fh);
    let mut node = ctx.inode(ino)?;
    assert!(node.open_count > 0, "handle {fh} open on inode {ino} with open_count 0");
    node.open_count -= 1;
    ctx.save_or_free(node)?;
    Ok(Reply::Ok)
}

pub(crate) fn fsync(ctx: &mut Ctx, ino: Ino) -> R<Reply> {
    ctx.inode(ino)?;
    ctx.sync_requested = true;
    Ok(Reply::Ok)
}

/// Who may set time stamps (`vfs_utimes` + `setattr_prepare` + `may_setattr`):
/// both times "now" (ATTR_TOUCH) needs ownership or write permission
/// (EACCES); any other combination (an explicit time, or only one of them
/// "now": ATTR_TIMES_SET) needs ownership (EPERM). Times that come with a size
/// change are the truncate's own mtime/ctime update, checked as a truncate.
fn check_times(node: &crate::records::Inode, attr: &SetAttr, caller: &crate::ops::Caller) -> R<()> {
    if attr.size.is_some() || (attr.atime.is_none() && attr.mtime.is_none()) {
        return Ok(());
    }
    if is_owner_or_root(node, caller) {
        return Ok(());
    }
    let touch = attr.atime == Some(SetTime::Now) && attr.mtime == Some(SetTime::Now);
    if touch {
        return check_access(node, caller, MAY_WRITE);
    }
    errno(libc::EPERM)
}

pub(crate) fn setattr(ctx: &mut Ctx, ino: Ino, attr: &SetAttr) -> R<Reply> {
    let mut node = ctx.inode(ino)?;
    let caller = ctx.caller;

    // Checks, in the order Linux makes them: truncate, chown, chgrp, chmod, times.
    if let Some(size) = attr.size {
        match node.kind {
            FileKind::File => {}
            FileKind::Dir => return errno(libc::EISDIR),
            _ => return errno(libc::EINVAL),
        }
        match attr.fh {
            Some(fh) => {
                ctx.handle(ino, fh)?;
            }
            None => check_access(&node, caller, MAY_WRITE)?,
        }
        if size > FILE_SIZE_MAX_BYTES {
            return errno(libc::EFBIG);
        }
    }
    if let Some(uid) = attr.uid {
        let own_unchanged = caller.uid == node.uid && uid == node.uid;
        if !own_unchanged && !is_root(caller) {
            return errno(libc::EPERM);
        }
    }
    if let Some(gid) = attr.gid {
        let owner_may = caller.uid == node.uid && (gid == node.gid || caller.in_group(gid));
        if !owner_may && !is_root(caller) {
            return errno(libc::EPERM);
        }
    }
    if attr.mode.is_some() && !is_owner_or_root(&node, caller) {
        return errno(libc::EPERM);
    }
    for t in [attr.atime, attr.mtime].into_iter().flatten() {
        if matches!(t, SetTime::At(ts) if ts.nsec >= 1_000_000_000) {
            return errno(libc::EINVAL);
        }
    }
    if attr.ctime.is_some_and(|ts| ts.nsec >= 1_000_000_000) {
        return errno(libc::EINVAL);
    }
    check_times(&node, attr, caller)?;

    let mut any = false;
    if let Some(size) = attr.size {
        truncate(ctx, &mut node, size)?;
        node.perm = perm_after_write(node.perm, node.gid, caller);
        node.mtime = ctx.now;
        any = true;
    }
    if attr.uid.is_some() || attr.gid.is_some() {
        if node.kind != FileKind::Dir {
            node.perm = perm_after_chown(node.perm, node.gid, caller);
        }
        node.uid = attr.uid.unwrap_or(node.uid);
        node.gid = attr.gid.unwrap_or(node.gid);
        any = true;
    }
    if let Some(mode) = attr.mode {
        let mut perm = mode & 0o7777;
        if !is_root(caller) && !caller.in_group(node.gid) {
            perm &= !libc::S_ISGID;
        }
        node.perm = perm;
        any = true;
    }
    let now = ctx.now;
    let stamp = |t: SetTime| match t {
        SetTime::Now => now,
        SetTime::At(ts) => ts,
    };
    if let Some(t) = attr.atime {
        node.atime = stamp(t);
        any = true;
    }
    if let Some(t) = attr.mtime {
        node.mtime = stamp(t);
        any = true;
    }
    if any || attr.ctime.is_some() {
        node.changed(ctx.now);
        if let Some(ctime) = attr.ctime {
            node.ctime = ctime;
        }
        ctx.save(&node);
    }
    Ok(Reply::Attr(node.attr()))
}
