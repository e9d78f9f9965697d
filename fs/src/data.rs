//! File data: read, write, truncate and fallocate over fixed blocks.
//!
//! Guarantees: data lives in blocks of BLOCK_SIZE_BYTES keyed (inode, block
//! index). A missing block, and the bytes past the end of a short block, read
//! as zeros (sparse files). Invariant: every stored byte at or past the file
//! size is zero, so growing a file (truncate up, a write past the end) exposes
//! only zeros; shrinking trims the last partial block and deletes whole blocks
//! past the end, which keeps the invariant. A stored block counts as allocated
//! (`blocks` in attributes), also when it is empty (fallocate).

use crate::ctx::Ctx;
use crate::error::{errno, Fail, R};
use crate::keys::{block_key, split_pair_key, Table};
use crate::ops::{FileKind, Ino, Reply, BLOCK_SIZE_BYTES, FILE_SIZE_MAX_BYTES, IO_MAX_BYTES};
use crate::perm::perm_after_write;
use crate::records::Inode;
use crate::state::load_inode;
use crate::view::View;

/// Most blocks one fallocate may have to visit (4 GiB of range); more is ENOSPC.
pub(crate) const FALLOCATE_BLOCKS_MAX: u64 = 65536;

const BS: u64 = BLOCK_SIZE_BYTES;

/// Regular files only: EISDIR for directories, EINVAL for the other kinds.
fn require_file(node: &Inode) -> R<()> {
    match node.kind {
        FileKind::File => Ok(()),
        FileKind::Dir => errno(libc::EISDIR),
        _ => errno(libc::EINVAL),
    }
}

pub(crate) fn read(view: &impl View, ino: Ino, offset: u64, size: u32) -> R<Reply> {
    let node = load_inode(view, ino)?;
    require_file(&node)?;
    let size = (size as u64).min(IO_MAX_BYTES as u64);
    let end = offset.saturating_add(size).min(node.size);
    if offset >= end {
        return Ok(Reply::Data(Vec::new()));
    }
    let mut out = vec![0u8; (end - offset) as usize];
    let first = offset / BS;
    let last = (end - 1) / BS;
    let from = block_key(ino, first);
    let to = block_key(ino, last + 1);
    let limit = (last - first + 1) as usize;
    for (key, bytes) in view.scan(Table::Blocks, &from, &to, limit)? {
        let (_, index) = split_pair_key(Table::Blocks, &key).map_err(Fail::Store)?;
        assert!(bytes.len() as u64 <= BS, "block {index} of {ino} holds {} bytes", bytes.len());
        let block_start = index * BS;
        // Overlap of [offset, end) with the stored bytes of this block.
        let lo = offset.max(block_start);
        let hi = end.min(block_start + bytes.len() as u64);
        if lo < hi {
            let src = &bytes[(lo - block_start) as usize..(hi - block_start) as usize];
            out[(lo - offset) as usize..(hi - offset) as usize].copy_from_slice(src);
        }
    }
    Ok(Reply::Data(out))
}

/// Reads the stored bytes of one block (None when absent).
fn load_block(ctx: &Ctx, ino: Ino, index: u64) -> R<Option<Vec<u8>>> {
    Ok(ctx.tx.get(Table::Blocks, &block_key(ino, index))?)
}

/// Stores a block; counts it when it is new.
fn store_block(ctx: &mut Ctx, node: &mut Inode, index: u64, bytes: Vec<u8>, existed: bool) {
    assert!(bytes.len() as u64 <= BS);
    if !existed {
        node.blocks_stored += 1;
    }
    ctx.tx.put(Table::Blocks, block_key(node.ino, index), bytes);
}

fn delete_block(ctx: &mut Ctx, node: &mut Inode, index: u64) {
    assert!(node.blocks_stored > 0, "inode {} has no stored block to delete", node.ino);
    node.blocks_stored -= 1;
    ctx.tx.delete(Table::Blocks, block_key(node.ino, index));
}

/// Copies `data` into the file at `offset` (no size or time change here).
fn write_bytes(ctx: &mut Ctx, node: &mut Inode, offset: u64, data: &[u8]) -> R<()> {
    let end = offset + data.len() as u64;
    let mut pos = offset;
    while pos < end {
        let index = pos / BS;
        let block_start = index * BS;
        let lo = (pos - block_start) as usize;
        let hi = (end.min(block_start + BS) - block_start) as usize;
        let existing = load_block(ctx, node.ino, index)?;
        let existed = existing.is_some();
        let mut bytes = existing.unwrap_or_default();
        if bytes.len() < hi {
            bytes.resize(hi, 0);
        }
        let src = (pos - offset) as usize;
        bytes[lo..hi].copy_from_slice(&data[src..src + (hi - lo)]);
        store_block(ctx, node, index, bytes, existed);
        pos = block_start + hi as u64;
    }
    Ok(())
}

pub(crate) fn write(ctx: &mut Ctx, ino: Ino, fh: u64, offset: u64, data: &[u8], flags: i32) -> R<Reply> {
    let handle = ctx.writable_handle(ino, fh)?;
    let mut node = ctx.inode(ino)?;
    require_file(&node)?;
    if data.len() > IO_MAX_BYTES {
        return errno(libc::EINVAL);
    }
    let append = (flags | handle.flags) & libc::O_APPEND != 0;
    let offset = if append { node.size } else { offset };
    if data.is_empty() {
        return Ok(Reply::Written { written: 0, attr: node.attr() });
    }
    if offset >= FILE_SIZE_MAX_BYTES {
        return errno(libc::EFBIG);
    }
    // Like generic_write_check_limits: a write crossing the limit is cut short.
    let count = (data.len() as u64).min(FILE_SIZE_MAX_BYTES - offset) as usize;
    write_bytes(ctx, &mut node, offset, &data[..count])?;
    node.size = node.size.max(offset + count as u64);
    node.perm = perm_after_write(node.perm, node.gid, ctx.caller);
    node.modified(ctx.now);
    ctx.save(&node);
    Ok(Reply::Written { written: count as u32, attr: node.attr() })
}

/// Sets the size of a regular file; shrinking drops the data past the end.
/// Times are the caller's business.
pub(crate) fn truncate(ctx: &mut Ctx, node: &mut Inode, size: u64) -> R<()> {
    assert_eq!(node.kind, FileKind::File);
    assert!(size <= FILE_SIZE_MAX_BYTES);
    if size < node.size || node.blocks_stored > 0 {
        // Blocks entirely at or past the new end go (also preallocated ones).
        let keep_blocks = size.div_ceil(BS);
        let deleted = ctx.delete_keys(Table::Blocks, node.ino, keep_blocks)?;
        assert!(deleted <= node.blocks_stored);
        node.blocks_stored -= deleted;
        let tail = (size % BS) as usize;
        if tail != 0 {
            let index = size / BS;
            if let Some(mut bytes) = load_block(ctx, node.ino, index)? {
                if bytes.len() > tail {
                    bytes.truncate(tail);
                    store_block(ctx, node, index, bytes, true);
                }
            }
        }
    }
    node.size = size;
    Ok(())
}

pub(crate) fn fallocate(ctx: &mut Ctx, ino: Ino, fh: u64, offset: u64, length: u64, mode: i32) -> R<Reply> {
    use libc::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH, FALLOC_FL_ZERO_RANGE as ZERO};
    // vfs_fallocate's checks, then ext4's supported modes.
    if mode & !(KEEP | PUNCH | ZERO) != 0 {
        return errno(libc::EOPNOTSUPP);
    }
    if mode & PUNCH != 0 && (mode & KEEP == 0 || mode & ZERO != 0) {
        return errno(libc::EINVAL);
    }
    ctx.writable_handle(ino, fh)?;
    let mut node = ctx.inode(ino)?;
    match node.kind {
        FileKind::File => {}
        FileKind::Dir => return errno(libc::EISDIR),
        FileKind::Fifo => return errno(libc::ESPIPE),
        _ => return errno(libc::ENODEV),
    }
    if length == 0 || offset > i64::MAX as u64 || length > i64::MAX as u64 {
        return errno(libc::EINVAL);
    }
    let end = match offset.checked_add(length) {
        Some(end) if end <= FILE_SIZE_MAX_BYTES => end,
        _ => return errno(libc::EFBIG),
    };
    let first = offset / BS;
    let last = (end - 1) / BS;
    if mode & PUNCH == 0 && last - first + 1 > FALLOCATE_BLOCKS_MAX {
        return errno(libc::ENOSPC);
    }
    let keep_size = mode & KEEP != 0;
    if mode & PUNCH != 0 {
        punch(ctx, &mut node, offset, end)?;
        node.modified(ctx.now);
    } else {
        // Allocate every block of the range; ZERO_RANGE also zeroes the range.
        let zero = mode & ZERO != 0;
        for index in first..=last {
            let block_start = index * BS;
            let lo = offset.max(block_start) - block_start;
            let hi = end.min(block_start + BS) - block_start;
            let existing = load_block(ctx, ino, index)?;
            match existing {
                None => store_block(ctx, &mut node, index, Vec::new(), false),
                Some(mut bytes) if zero => {
                    if lo == 0 && hi == BS {
                        bytes.clear();
                    } else {
                        zero_in(&mut bytes, lo, hi);
                    }
                    store_block(ctx, &mut node, index, bytes, true);
                }
                Some(_) => {}
            }
        }
        let old_size = node.size;
        if !keep_size {
            node.size = node.size.max(end);
        }
        if zero || node.size != old_size {
            node.mtime = ctx.now;
        }
        node.changed(ctx.now);
    }
    node.perm = perm_after_write(node.perm, node.gid, ctx.caller);
    ctx.save(&node);
    Ok(Reply::Ok)
}

/// Zeroes bytes [lo, hi) of a stored block, as far as they are stored.
fn zero_in(bytes: &mut [u8], lo: u64, hi: u64) {
    let len = bytes.len() as u64;
    let (lo, hi) = (lo.min(len) as usize, hi.min(len) as usize);
    bytes[lo..hi].fill(0);
}

/// Deallocates [offset, end): whole blocks are deleted, partial ones zeroed.
fn punch(ctx: &mut Ctx, node: &mut Inode, offset: u64, end: u64) -> R<()> {
    let first = offset / BS;
    let last = (end - 1) / BS;
    let mut from = block_key(node.ino, first);
    let to = block_key(node.ino, last + 1);
    loop {
        let pairs = ctx.tx.scan(Table::Blocks, &from, &to, crate::ctx::SCAN_CHUNK)?;
        let Some((last_key, _)) = pairs.last() else {
            return Ok(());
        };
        from = last_key.clone();
        from.push(0);
        for (key, mut bytes) in pairs {
            let (_, index) = split_pair_key(Table::Blocks, &key).map_err(Fail::Store)?;
            let block_start = index * BS;
            let lo = offset.max(block_start) - block_start;
            let hi = end.min(block_start + BS) - block_start;
            if lo == 0 && hi == BS {
                delete_block(ctx, node, index);
            } else {
                zero_in(&mut bytes, lo, hi);
                store_block(ctx, node, index, bytes, true);
            }
        }
    }
}
