//! The applier's context for one command: its pending writes, its time stamp
//! and caller, and the state counters; plus the mutations shared by several
//! operations (allocate and free inodes, add and remove directory entries).
//!
//! Guarantees: every change goes into the command's [`Tx`], so a failed
//! command (any errno) is dropped whole by the caller and changes nothing but
//! the applied index. Inode numbers and handles come from counters in the
//! state, so every replica hands out the same ones.

use crate::error::{errno, R};
use crate::keys::{block_key, inode_key, named_key, pair_key, prefix_range, u64_key, Table};
use crate::ops::{Caller, FileKind, Ino, Timestamp};
use crate::records::{DirSlot, Dirent, Handle, Inode, Meta};
use crate::state::{load_inode, DIR_ENTRIES_MAX};
use crate::view::{Tx, View};

/// Most keys one scan inside a command reads at once when deleting a range.
pub(crate) const SCAN_CHUNK: usize = 4096;

pub(crate) struct Ctx<'a> {
    pub tx: Tx<'a>,
    pub now: Timestamp,
    pub caller: &'a Caller,
    /// The client sending the command (see [`Handle::owner`]).
    pub client: u64,
    pub meta: Meta,
    /// Set by operations whose reply promises durability (fsync).
    pub sync_requested: bool,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(tx: Tx<'a>, now: Timestamp, caller: &'a Caller, client: u64, meta: Meta) -> Self {
        Ctx { tx, now, caller, client, meta, sync_requested: false }
    }

    pub(crate) fn inode(&self, ino: Ino) -> R<Inode> {
        load_inode(&self.tx, ino)
    }

    pub(crate) fn save(&mut self, inode: &Inode) {
        assert!(inode.ino != 0);
        assert!(inode.perm & !0o7777 == 0);
        self.tx.put_record(Table::Inodes, inode_key(inode.ino), inode);
    }

    /// A new inode numbered from the counter (not yet saved); ENOSPC when
    /// the numbers are used up (never reused, so a limit exists).
    pub(crate) fn alloc_inode(&mut self, kind: FileKind, perm: u32, uid: u32, gid: u32) -> R<Inode> {
        let ino = self.meta.next_ino;
        let Some(next) = ino.checked_add(1) else {
            return errno(libc::ENOSPC);
        };
        self.meta.next_ino = next;
        self.meta.inodes_live += 1;
        Ok(Inode::new(ino, kind, perm, uid, gid, self.now))
    }

    /// Opens `inode` (not saved here: the caller saves it): a new handle.
    /// ENFILE when the handle numbers or the inode's open count (u32: a
    /// client can open one file 2^32 times) are used up.
    pub(crate) fn open_handle(&mut self, inode: &mut Inode, flags: i32) -> R<u64> {
        let fh = self.meta.next_fh;
        let (Some(next_fh), Some(open_count)) = (fh.checked_add(1), inode.open_count.checked_add(1)) else {
            return errno(libc::ENFILE);
        };
        self.meta.next_fh = next_fh;
        inode.open_count = open_count;
        self.tx.put_record(Table::Handles, u64_key(fh), &Handle { ino: inode.ino, flags, owner: self.client });
        Ok(fh)
    }

    /// The handle `fh` if it is open on `ino` by this command's client, else
    /// EBADF: handle numbers are guessable, so another client's handle is
    /// as good as none.
    pub(crate) fn handle(&self, ino: Ino, fh: u64) -> R<Handle> {
        let handle: Option<Handle> = self.tx.get_record(Table::Handles, &u64_key(fh))?;
        match handle {
            Some(h) if h.ino == ino && h.owner == self.client => Ok(h),
            _ => errno(libc::EBADF),
        }
    }

    /// [`Ctx::handle`], open for writing (EBADF otherwise, as write(2) on a
    /// read-only descriptor).
    pub(crate) fn writable_handle(&self, ino: Ino, fh: u64) -> R<Handle> {
        let handle = self.handle(ino, fh)?;
        if !handle.writable() {
            return errno(libc::EBADF);
        }
        Ok(handle)
    }

    pub(crate) fn close_handle(&mut self, fh: u64) {
        self.tx.delete(Table::Handles, u64_key(fh));
    }

    /// Adds `name → (ino, kind)` to `dir` with the next cookie; the caller saves `dir`.
    pub(crate) fn add_entry(&mut self, dir: &mut Inode, name: &[u8], ino: Ino, kind: FileKind) -> R<()> {
        assert!(dir.is_dir());
        if dir.entries >= DIR_ENTRIES_MAX {
            return errno(libc::ENOSPC);
        }
        let cookie = dir.next_cookie;
        assert!(cookie >= crate::records::COOKIE_FIRST);
        dir.next_cookie += 1;
        dir.entries += 1;
        self.tx.put_record(Table::Dirents, named_key(dir.ino, name), &Dirent { ino, kind, cookie });
        self.tx.put_record(Table::DirIndex, pair_key(dir.ino, cookie), &DirSlot { name: name.to_vec(), ino, kind });
        Ok(())
    }

    /// Removes the entry `name` (currently `entry`) from `dir`; the caller saves `dir`.
    pub(crate) fn remove_entry(&mut self, dir: &mut Inode, name: &[u8], entry: &Dirent) {
        assert!(dir.is_dir());
        assert!(dir.entries > 0, "removing from an empty directory {}", dir.ino);
        dir.entries -= 1;
        self.tx.delete(Table::Dirents, named_key(dir.ino, name));
        self.tx.delete(Table::DirIndex, pair_key(dir.ino, entry.cookie));
    }

    /// Points the existing entry `name` of `dir` at another inode, same cookie.
    pub(crate) fn repoint_entry(&mut self, dir: Ino, name: &[u8], entry: &Dirent, ino: Ino, kind: FileKind) {
        let cookie = entry.cookie;
        self.tx.put_record(Table::Dirents, named_key(dir, name), &Dirent { ino, kind, cookie });
        self.tx.put_record(Table::DirIndex, pair_key(dir, cookie), &DirSlot { name: name.to_vec(), ino, kind });
    }

    /// One name of `ino` went away: nlink drops (to 0 for a directory), ctime
    /// changes, and the inode is freed when nothing refers to it any more.
    pub(crate) fn drop_link(&mut self, ino: Ino) -> R<()> {
        let mut inode = self.inode(ino)?;
        if inode.is_dir() {
            assert_eq!(inode.entries, 0, "dropping non-empty directory {ino}");
            inode.nlink = 0;
        } else {
            assert!(inode.nlink > 0, "dropping a link of unlinked inode {ino}");
            inode.nlink -= 1;
        }
        inode.changed(self.now);
        self.save_or_free(inode)
    }

    /// Saves `inode`, or frees it when it has no names and no open handles.
    pub(crate) fn save_or_free(&mut self, inode: Inode) -> R<()> {
        if inode.nlink == 0 && inode.open_count == 0 {
            self.free_inode(&inode)
        } else {
            self.save(&inode);
            Ok(())
        }
    }

    /// Deletes the inode, its data blocks and its xattrs.
    fn free_inode(&mut self, inode: &Inode) -> R<()> {
        assert_eq!(inode.nlink, 0);
        assert_eq!(inode.open_count, 0);
        assert!(inode.ino != crate::ops::ROOT_INO, "freeing the root");
        self.delete_keys(Table::Blocks, inode.ino, 0)?;
        self.delete_keys(Table::Xattrs, inode.ino, 0)?;
        // Locks go with their handles, so none should be left; never keep
        // a lock list of a freed inode.
        self.tx.delete(Table::Locks, inode_key(inode.ino));
        self.tx.delete(Table::Inodes, inode_key(inode.ino));
        assert!(self.meta.inodes_live > 0);
        self.meta.inodes_live -= 1;
        Ok(())
    }

    /// Deletes every key of `table` under `ino` whose next 8 key bytes (or,
    /// for named keys, the whole key) sort at or after `from_block`; returns
    /// how many keys it deleted.
    pub(crate) fn delete_keys(&mut self, table: Table, ino: Ino, from_block: u64) -> R<u64> {
        let (prefix_from, to) = prefix_range(ino);
        let mut from = if from_block == 0 { prefix_from } else { block_key(ino, from_block) };
        let mut deleted = 0u64;
        loop {
            let keys = self.tx.scan_keys(table, &from, &to, SCAN_CHUNK)?;
            let Some(last) = keys.last() else {
                return Ok(deleted);
            };
            // Resume just after the last key: the smallest key greater than it.
            from = last.clone();
            from.push(0);
            for key in keys {
                self.tx.delete(table, key);
                deleted += 1;
            }
        }
    }
}
