//! The records stored in the tables, and their (bounded, strict) encoding.
//!
//! Guarantees: records are bincode with fixed-width integers, decoded with a
//! size limit and no trailing bytes allowed, so a torn or foreign record is
//! reported as `StoreError::Corrupt` instead of being half-understood. Every
//! field is deterministic (no hash maps, no wall-clock time), so equal logs
//! give byte-equal records on every replica.

use bincode::Options;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::StoreError;
use crate::keys::{corrupt, Table};
use crate::ops::{Attr, FileKind, Ino, Timestamp, BLOCK_SIZE_BYTES};

/// Version of the on-disk layout; a store of another version is refused.
/// 2: handles record their owning client; the `locks` table.
pub(crate) const FORMAT_VERSION: u32 = 2;

/// Largest record we ever decode (an inode with a 4 KiB symlink target is far
/// smaller; blocks are raw bytes and never go through this codec).
const RECORD_BYTES_MAX: u64 = 64 * 1024;

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().reject_trailing_bytes().with_limit(RECORD_BYTES_MAX)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail; a failure is a bug.
    codec().serialize(value).expect("record encodes")
}

pub(crate) fn decode<T: DeserializeOwned>(table: Table, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    codec().deserialize(bytes).map_err(|e| corrupt(table, key, e.to_string()))
}

/// The counters and position of the state machine (table `meta`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub format_version: u32,
    /// Log position of the last applied command (0 = none yet).
    pub applied_index: u64,
    /// Next inode number to hand out (never reused).
    pub next_ino: Ino,
    /// Next file handle to hand out (never reused).
    pub next_fh: u64,
    /// Inodes currently stored (for statfs).
    pub inodes_live: u64,
}

/// Where a replicated log stands, stored under `TAG_KEY` in table `meta` by
/// [`crate::FsStore::apply_tagged`] in the same WriteBatch as the command.
///
/// The replication core numbers log *entries* (one entry may hold several
/// commands); the store numbers *commands*. The tag keeps the entry number of
/// the last command and its time stamp, so an adapter can answer in entries
/// and keep time strictly increasing across restarts. Absent in stores driven
/// only by [`crate::FsStore::apply`] (the single-replica server).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AppliedTag {
    /// The log entry (replication op) holding the last applied command.
    pub op: u64,
    /// `Command::now` of the last applied command.
    pub last_now: Timestamp,
}

/// One inode (table `inodes`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inode {
    pub ino: Ino,
    pub kind: FileKind,
    /// mode & 0o7777.
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    /// Number of stored data blocks (each counts as BLOCK_SIZE_BYTES allocated).
    pub blocks_stored: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    pub version: u64,
    /// Directories: the directory holding this one (the root: itself). 0 otherwise.
    pub parent: Ino,
    /// Directories: next readdir cookie (1 and 2 are "." and "..").
    pub next_cookie: u64,
    /// Directories: number of entries other than "." and "..".
    pub entries: u64,
    /// Open handles on this inode; it outlives nlink == 0 while this is > 0.
    pub open_count: u32,
    pub xattr_count: u32,
    /// Sum of name and value lengths of all xattrs.
    pub xattr_bytes: u64,
    /// Symlinks: the target.
    pub target: Vec<u8>,
}

/// First cookie handed to a real entry ("." is 1, ".." is 2).
pub(crate) const COOKIE_FIRST: u64 = 3;
/// Size reported for directories, as ext4 reports one block.
pub(crate) const DIR_SIZE_BYTES: u64 = 4096;

impl Inode {
    /// A fresh inode of `kind`; all time stamps are `now`, version 1.
    pub(crate) fn new(ino: Ino, kind: FileKind, perm: u32, uid: u32, gid: u32, now: Timestamp) -> Inode {
        assert_eq!(perm & !0o7777, 0, "perm carries only permission bits");
        let dir = kind == FileKind::Dir;
        Inode {
            ino,
            kind,
            perm,
            nlink: if dir { 2 } else { 1 },
            uid,
            gid,
            rdev: 0,
            size: if dir { DIR_SIZE_BYTES } else { 0 },
            blocks_stored: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            version: 1,
            parent: 0,
            next_cookie: if dir { COOKIE_FIRST } else { 0 },
            entries: 0,
            open_count: 0,
            xattr_count: 0,
            xattr_bytes: 0,
            target: Vec::new(),
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }

    /// Records a change of the inode at `now`: ctime and version.
    pub(crate) fn changed(&mut self, now: Timestamp) {
        self.ctime = now;
        self.version += 1;
    }

    /// Records a change of contents at `now`: mtime, ctime and version.
    pub(crate) fn modified(&mut self, now: Timestamp) {
        self.mtime = now;
        self.changed(now);
    }

    pub(crate) fn attr(&self) -> Attr {
        let blocks_512 = match self.kind {
            FileKind::Dir => DIR_SIZE_BYTES / 512,
            _ => self.blocks_stored * (BLOCK_SIZE_BYTES / 512),
        };
        Attr {
            ino: self.ino,
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            size: self.size,
            blocks: blocks_512,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
            version: self.version,
        }
    }
}

/// A directory entry by name (table `dirents`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dirent {
    pub ino: Ino,
    pub kind: FileKind,
    pub cookie: u64,
}

/// A directory entry by cookie (table `dirindex`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct DirSlot {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// An open file handle (table `handles`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Handle {
    pub ino: Ino,
    pub flags: i32,
    /// The client that opened it (its replication client id; 0 for
    /// single-replica connections): only it may use or release the handle,
    /// and its handles are released when it is gone.
    pub owner: u64,
}

impl Handle {
    pub(crate) fn writable(&self) -> bool {
        matches!(self.flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
    }
}

/// One byte-range lock (table `locks`, a list per inode). POSIX, OFD and
/// flock locks are all byte-range locks here (flock: the whole file), told
/// apart only by their owner, as on NFS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct LockRecord {
    /// The client holding it (see [`Handle::owner`]).
    pub client: u64,
    /// The kernel's lock owner on that client (process, open file).
    pub owner: u64,
    /// The handle it was taken through: released with it.
    pub fh: u64,
    pub write: bool,
    /// First and last byte, inclusive (`u64::MAX`: to the end of any file).
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}
