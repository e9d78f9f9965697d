//! Byte-range locks (fcntl F_SETLK and F_GETLK, OFD locks, flock) and the
//! release of everything a client owned when it is gone.
//!
//! Guarantees:
//! - Locks of different owners (client, kernel lock owner) overlap only if
//!   both are read locks: a request that would break this gets EAGAIN and
//!   changes nothing. Within one owner a new lock replaces what the owner
//!   held on its bytes, and adjacent ranges of one type merge (POSIX).
//! - A lock belongs to the handle it was taken through and goes with it,
//!   and everything a client holds (handles, locks) goes when the client is
//!   gone ([`client_gone`], at the same point of the log on every replica):
//!   a crashed or cut-off mount cannot hold a lock, or keep an unlinked
//!   file's space, for ever.
//! - Bounded: at most [`LOCKS_PER_FILE_MAX`] ranges per file (ENOLCK).
//!
//! Assumes: the client retries EAGAIN for F_SETLKW (a command must never
//! wait: it would stop the log), and drops an owner's POSIX locks when the
//! owner closes the file (FUSE FLUSH), as the kernel does locally. flock
//! locks arrive as whole-file locks owned by the open file (FUSE gives no
//! way to tell them apart), so, as on NFS, flock and fcntl locks of
//! different owners conflict with each other.

use crate::ctx::{Ctx, SCAN_CHUNK};
use crate::error::{errno, R};
use crate::keys::{corrupt, inode_key, Table};
use crate::ops::{FileLock, Ino, Reply};
use crate::records::{Handle, LockRecord};
use crate::view::View;

/// Most lock ranges one file holds at once.
pub(crate) const LOCKS_PER_FILE_MAX: usize = 1024;

fn load(ctx: &Ctx, ino: Ino) -> R<Vec<LockRecord>> {
    Ok(ctx.tx.get_record(Table::Locks, &inode_key(ino))?.unwrap_or_default())
}

fn save(ctx: &mut Ctx, ino: Ino, locks: &[LockRecord]) {
    if locks.is_empty() {
        ctx.tx.delete(Table::Locks, inode_key(ino));
    } else {
        ctx.tx.put_record(Table::Locks, inode_key(ino), &locks.to_vec());
    }
}

fn overlaps(l: &LockRecord, start: u64, end: u64) -> bool {
    l.start <= end && start <= l.end
}

/// Checks the request's shape: EINVAL for an empty range or an unknown type.
fn checked_type(lock: &FileLock) -> R<Option<bool>> {
    if lock.start > lock.end {
        return errno(libc::EINVAL);
    }
    match lock.typ {
        libc::F_RDLCK => Ok(Some(false)),
        libc::F_WRLCK => Ok(Some(true)),
        libc::F_UNLCK => Ok(None),
        _ => errno(libc::EINVAL),
    }
}

fn conflict<'l>(locks: &'l [LockRecord], client: u64, lock: &FileLock, write: bool) -> Option<&'l LockRecord> {
    locks.iter().find(|l| (l.client, l.owner) != (client, lock.owner) && overlaps(l, lock.start, lock.end) && (l.write || write))
}

pub(crate) fn set_lock(ctx: &mut Ctx, ino: Ino, fh: u64, lock: &FileLock) -> R<Reply> {
    let write = checked_type(lock)?;
    // Any handle of the client's: fcntl's rule (a write lock needs a
    // descriptor open for writing) is the kernel's to check, and flock,
    // which arrives here looking the same, has no such rule.
    ctx.handle(ino, fh)?;
    ctx.inode(ino)?;
    let locks = load(ctx, ino)?;
    if let Some(write) = write {
        if conflict(&locks, ctx.client, lock, write).is_some() {
            return errno(libc::EAGAIN);
        }
    }
    let me = (ctx.client, lock.owner);
    let (mut mine, mut others): (Vec<LockRecord>, Vec<LockRecord>) = locks.into_iter().partition(|l| (l.client, l.owner) == me);
    // Carve the requested bytes out of what this owner held.
    let mut kept = Vec::with_capacity(mine.len() + 2);
    for l in mine.drain(..) {
        if !overlaps(&l, lock.start, lock.end) {
            kept.push(l);
            continue;
        }
        if l.start < lock.start {
            kept.push(LockRecord { end: lock.start - 1, ..l.clone() });
        }
        if l.end > lock.end {
            kept.push(LockRecord { start: lock.end + 1, ..l });
        }
    }
    if let Some(write) = write {
        kept.push(LockRecord { client: ctx.client, owner: lock.owner, fh, write, start: lock.start, end: lock.end, pid: lock.pid });
    }
    // Merge adjacent ranges of one type (the owner's ranges no longer overlap).
    kept.sort_by_key(|l| l.start);
    let mut merged: Vec<LockRecord> = Vec::with_capacity(kept.len());
    for l in kept {
        match merged.last_mut() {
            Some(last) if last.write == l.write && last.end.checked_add(1) == Some(l.start) => {
                last.end = l.end;
                last.fh = l.fh.max(last.fh);
            }
            _ => merged.push(l),
        }
    }
    others.extend(merged);
    if others.len() > LOCKS_PER_FILE_MAX {
        return errno(libc::ENOLCK);
    }
    others.sort_by_key(|l| (l.start, l.client, l.owner));
    save(ctx, ino, &others);
    Ok(Reply::Ok)
}

pub(crate) fn get_lock(ctx: &mut Ctx, ino: Ino, fh: u64, lock: &FileLock) -> R<Reply> {
    let Some(write) = checked_type(lock)? else { return errno(libc::EINVAL) };
    ctx.handle(ino, fh)?;
    ctx.inode(ino)?;
    let locks = load(ctx, ino)?;
    let answer = match conflict(&locks, ctx.client, lock, write) {
        Some(l) => {
            FileLock { owner: l.owner, start: l.start, end: l.end, typ: if l.write { libc::F_WRLCK } else { libc::F_RDLCK }, pid: l.pid }
        }
        None => FileLock { typ: libc::F_UNLCK, ..*lock },
    };
    Ok(Reply::Lock(answer))
}

/// Drops the locks the client took through `fh` on `ino` (the handle is
/// being released).
pub(crate) fn release_handle_locks(ctx: &mut Ctx, ino: Ino, fh: u64) -> R<()> {
    let mut locks = load(ctx, ino)?;
    let before = locks.len();
    let client = ctx.client;
    locks.retain(|l| !(l.client == client && l.fh == fh));
    if locks.len() != before {
        save(ctx, ino, &locks);
    }
    Ok(())
}

/// Every (inode-or-handle number, record) of `table`, read through the
/// command's pending writes, in key order.
fn records<T: serde::de::DeserializeOwned>(ctx: &Ctx, table: Table) -> R<Vec<(u64, T)>> {
    let (mut from, to) = (Vec::new(), vec![0xff; 9]);
    let mut out = Vec::new();
    loop {
        let chunk = ctx.tx.scan(table, &from, &to, SCAN_CHUNK)?;
        let Some((last, _)) = chunk.last() else { return Ok(out) };
        from = last.clone();
        from.push(0);
        for (key, value) in chunk {
            let number: [u8; 8] = key.as_slice().try_into().map_err(|_| corrupt(table, &key, "key is not 8 bytes".into()))?;
            out.push((u64::from_be_bytes(number), crate::records::decode(table, &key, &value)?));
        }
    }
}

/// Releases everything `ctx.client` holds: its handles (an unlinked file it
/// kept open is freed with its last handle, and the locks taken through a
/// handle go with it), then any lock still naming the client.
pub(crate) fn client_gone(ctx: &mut Ctx) -> R<Reply> {
    let client = ctx.client;
    let handles: Vec<(u64, Handle)> = records(ctx, Table::Handles)?;
    for (fh, handle) in handles.into_iter().filter(|(_, h)| h.owner == client) {
        crate::attrs::release(ctx, handle.ino, fh)?;
    }
    let locks: Vec<(u64, Vec<LockRecord>)> = records(ctx, Table::Locks)?;
    for (ino, mut list) in locks {
        let before = list.len();
        list.retain(|l| l.client != client);
        if list.len() != before {
            save(ctx, ino, &list);
        }
    }
    Ok(Reply::Ok)
}
