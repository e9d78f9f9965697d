//! [`FsStore::fsck`]: checks that the stored state is one the operations can
//! produce, for tests, property tests and fuzzing.
//!
//! Guarantees: read-only (one snapshot); reports every broken rule it finds
//! as a sentence, and never panics on a broken state (that is its point).
//! Assumes the state fits in memory (it loads every record but the data
//! blocks' contents past their length check); not for production stores.
//!
//! The rules are the invariants the operation code relies on (the ones its
//! asserts state): counters ahead of every number handed out; entries point
//! at live inodes of the kind they record, with a matching cookie slot; a
//! linked directory has exactly one name, its `parent` is the directory
//! holding that name, nlink = 2 + subdirectories, and its parent chain
//! reaches the root; a removed directory (nlink 0) is empty and only kept
//! by handles; a file's nlink counts its names; an inode without names
//! has open handles; open counts, block counts and xattr counts and bytes
//! match the tables; bytes at or past a file's size are zero.

use std::collections::BTreeMap;

use crate::error::StoreError;
use crate::keys::{split_named_key, split_pair_key, Table, META_KEY};
use crate::ops::{FileKind, Ino, BLOCK_SIZE_BYTES, ROOT_INO};
use crate::records::{decode, DirSlot, Dirent, Handle, Inode, Meta, COOKIE_FIRST};
use crate::store::FsStore;
use crate::view::{SnapView, View};

/// Per-inode counts gathered from the other tables.
#[derive(Default)]
struct Seen {
    /// (directory, name) of every entry naming the inode.
    names: Vec<(Ino, Vec<u8>)>,
    /// Entries of a directory.
    entries: u64,
    /// Subdirectories of a directory.
    subdirs: u64,
    handles: u64,
    blocks: u64,
    xattrs: u64,
    xattr_bytes: u64,
}

impl FsStore {
    /// Every broken invariant of the stored state, as sentences (empty: the
    /// state is consistent). See the module `fsck` for the rules.
    pub fn fsck(&self) -> Result<Vec<String>, StoreError> {
        let view = SnapView::new(self.db());
        let mut problems = Vec::new();
        let mut bad = |s: String| problems.push(s);

        let meta: Meta = match view.get_record(Table::Meta, META_KEY)? {
            Some(meta) => meta,
            None => {
                bad("no meta record".into());
                return Ok(problems);
            }
        };
        let mut inodes: BTreeMap<Ino, Inode> = BTreeMap::new();
        view.for_each(Table::Inodes, |key, value| match decode::<Inode>(Table::Inodes, key, value) {
            Ok(inode) if key == inode.ino.to_be_bytes() => {
                inodes.insert(inode.ino, inode);
            }
            Ok(inode) => bad(format!("inode {} stored under key {key:02x?}", inode.ino)),
            Err(e) => bad(e.to_string()),
        })?;
        let mut seen: BTreeMap<Ino, Seen> = BTreeMap::new();
        if inodes.len() as u64 != meta.inodes_live {
            bad(format!("{} inodes stored, meta counts {}", inodes.len(), meta.inodes_live));
        }
        if let Some((&last, _)) = inodes.last_key_value() {
            if last >= meta.next_ino {
                bad(format!("inode {last} at or past next_ino {}", meta.next_ino));
            }
        }

        // Entries by name, and their cookie slots.
        let mut slots: BTreeMap<(Ino, u64), DirSlot> = BTreeMap::new();
        view.for_each(Table::DirIndex, |key, value| {
            match (split_pair_key(Table::DirIndex, key), decode::<DirSlot>(Table::DirIndex, key, value)) {
                (Ok(pair), Ok(slot)) => {
                    slots.insert(pair, slot);
                }
                (Err(e), _) | (_, Err(e)) => bad(e.to_string()),
            }
        })?;
        let mut named = 0usize;
        view.for_each(Table::Dirents, |key, value| {
            let (dir, name) = match split_named_key(Table::Dirents, key) {
                Ok(split) => split,
                Err(e) => return bad(e.to_string()),
            };
            let entry: Dirent = match decode(Table::Dirents, key, value) {
                Ok(entry) => entry,
                Err(e) => return bad(e.to_string()),
            };
            named += 1;
            if crate::state::check_name(name).is_err() || name == b"." || name == b".." {
                bad(format!("entry {name:?} of {dir}: not a valid name"));
            }
            match inodes.get(&dir) {
                Some(d) if d.is_dir() && d.nlink > 0 => {
                    if entry.cookie < COOKIE_FIRST || entry.cookie >= d.next_cookie {
                        bad(format!("entry {name:?} of {dir}: cookie {} out of range", entry.cookie));
                    }
                }
                Some(_) => bad(format!("entry {name:?} in {dir}, not a linked directory")),
                None => bad(format!("entry {name:?} in missing directory {dir}")),
            }
            match inodes.get(&entry.ino) {
                Some(node) if node.kind == entry.kind => {}
                Some(node) => bad(format!("entry {name:?} of {dir} says {:?}, inode {} is {:?}", entry.kind, entry.ino, node.kind)),
                None => bad(format!("entry {name:?} of {dir} names missing inode {}", entry.ino)),
            }
            let slot_matches =
                slots.get(&(dir, entry.cookie)).is_some_and(|slot| slot.name == name && slot.ino == entry.ino && slot.kind == entry.kind);
            if !slot_matches {
                bad(format!("entry {name:?} of {dir}: no matching cookie slot {}", entry.cookie));
            }
            let holder = seen.entry(dir).or_default();
            holder.entries += 1;
            if entry.kind == FileKind::Dir {
                holder.subdirs += 1;
            }
            seen.entry(entry.ino).or_default().names.push((dir, name.to_vec()));
        })?;
        if slots.len() != named {
            bad(format!("{} cookie slots for {named} entries", slots.len()));
        }

        view.for_each(Table::Handles, |key, value| match decode::<Handle>(Table::Handles, key, value) {
            Ok(handle) => {
                let fh = key.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
                if fh >= meta.next_fh {
                    bad(format!("handle {fh} at or past next_fh {}", meta.next_fh));
                }
                seen.entry(handle.ino).or_default().handles += 1;
            }
            Err(e) => bad(e.to_string()),
        })?;
        view.for_each(Table::Blocks, |key, value| {
            let (ino, index) = match split_pair_key(Table::Blocks, key) {
                Ok(pair) => pair,
                Err(e) => return bad(e.to_string()),
            };
            seen.entry(ino).or_default().blocks += 1;
            let Some(node) = inodes.get(&ino) else {
                return bad(format!("block {index} of missing inode {ino}"));
            };
            if node.kind != FileKind::File || value.len() as u64 > BLOCK_SIZE_BYTES {
                return bad(format!("block {index} of {ino}: {} bytes", value.len()));
            }
            // Stored bytes at or past the size must be zero.
            let start = index.saturating_mul(BLOCK_SIZE_BYTES);
            let keep = node.size.saturating_sub(start).min(value.len() as u64) as usize;
            if value[keep..].iter().any(|&b| b != 0) {
                bad(format!("block {index} of {ino}: data past the size {}", node.size));
            }
        })?;
        view.for_each(Table::Xattrs, |key, value| {
            let (ino, name) = match split_named_key(Table::Xattrs, key) {
                Ok(split) => split,
                Err(e) => return bad(e.to_string()),
            };
            let counts = seen.entry(ino).or_default();
            counts.xattrs += 1;
            counts.xattr_bytes += (name.len() + value.len()) as u64;
            if crate::xattr::check_name(name).is_err() {
                bad(format!("xattr {name:?} of {ino}: not a valid name"));
            }
        })?;

        for ino in seen.keys() {
            if !inodes.contains_key(ino) {
                bad(format!("entries, handles, blocks or xattrs of missing inode {ino}"));
            }
        }
        let empty = Seen::default();
        for (&ino, node) in &inodes {
            let s = seen.get(&ino).unwrap_or(&empty);
            if node.perm & !0o7777 != 0 {
                bad(format!("inode {ino}: mode bits {:o}", node.perm));
            }
            if u64::from(node.open_count) != s.handles {
                bad(format!("inode {ino}: open_count {} with {} handles", node.open_count, s.handles));
            }
            if node.blocks_stored != s.blocks {
                bad(format!("inode {ino}: blocks_stored {} with {} blocks", node.blocks_stored, s.blocks));
            }
            if u64::from(node.xattr_count) != s.xattrs || node.xattr_bytes != s.xattr_bytes {
                bad(format!(
                    "inode {ino}: xattrs {}/{} bytes counted, {}/{} stored",
                    node.xattr_count, node.xattr_bytes, s.xattrs, s.xattr_bytes
                ));
            }
            if node.nlink == 0 && node.open_count == 0 {
                bad(format!("inode {ino}: no names and no handles, yet not freed"));
            }
            if node.is_dir() {
                check_dir(&inodes, node, s, &mut bad);
            } else if u64::from(node.nlink) != s.names.len() as u64 {
                bad(format!("inode {ino}: nlink {} with {} names", node.nlink, s.names.len()));
            }
        }
        Ok(problems)
    }
}

/// The rules of one directory: its names, nlink, parent and parent chain.
fn check_dir(inodes: &BTreeMap<Ino, Inode>, dir: &Inode, s: &Seen, bad: &mut impl FnMut(String)) {
    let ino = dir.ino;
    if dir.entries != s.entries {
        bad(format!("directory {ino}: entries {} with {} stored", dir.entries, s.entries));
    }
    if dir.nlink == 0 {
        // Removed, kept by a handle: empty, nameless.
        if s.entries != 0 || !s.names.is_empty() {
            bad(format!("removed directory {ino} still has entries or names"));
        }
        return;
    }
    if u64::from(dir.nlink) != 2 + s.subdirs {
        bad(format!("directory {ino}: nlink {} with {} subdirectories", dir.nlink, s.subdirs));
    }
    if ino == ROOT_INO {
        if dir.parent != ROOT_INO || !s.names.is_empty() {
            bad("the root has a parent or a name".into());
        }
        return;
    }
    match s.names.as_slice() {
        [(holder, _)] if *holder == dir.parent => {}
        names => bad(format!("directory {ino} (parent {}) has names {names:?}", dir.parent)),
    }
    // The chain of parents reaches the root through linked directories.
    let mut current = dir.parent;
    for _ in 0..=inodes.len() {
        if current == ROOT_INO {
            return;
        }
        match inodes.get(&current) {
            Some(up) if up.is_dir() && up.nlink > 0 => current = up.parent,
            _ => {
                bad(format!("directory {ino}: parent chain reaches {current}, not a linked directory"));
                return;
            }
        }
    }
    bad(format!("directory {ino}: parent chain has a cycle"));
}
