//! The operation types of the file-system state machine: plain serde values.
//!
//! Guarantees: a [`Command`] carries every non-deterministic input it needs
//! (the caller's credentials and the leader-chosen time stamp), so applying
//! the same sequence of commands to the same state gives the same state and
//! the same replies on every replica. A [`Query`] never changes state.
//!
//! These types are the contract between the client (which builds them from
//! FUSE requests), the server (which sequences and applies them) and the
//! store (which executes them). They know nothing of networks or replication.

use serde::{Deserialize, Serialize};

/// Inode number. The root directory is [`ROOT_INO`]; numbers are allocated
/// from a counter kept in the state, never reused.
pub type Ino = u64;
/// Handle returned by open/create, unique within the state (counter).
pub type Fh = u64;

pub const ROOT_INO: Ino = 1;
/// File data is stored in fixed blocks keyed (inode, block index).
pub const BLOCK_SIZE_BYTES: u64 = 64 * 1024;
/// Longest name of one directory entry (bytes), as Linux NAME_MAX.
pub const NAME_MAX_BYTES: usize = 255;
/// Longest symlink target (bytes, without the NUL), as Linux PATH_MAX - 1.
pub const SYMLINK_MAX_BYTES: usize = 4095;
/// Largest xattr value (bytes), as Linux XATTR_SIZE_MAX.
pub const XATTR_VALUE_MAX_BYTES: usize = 64 * 1024;
/// Largest xattr name (bytes), as Linux XATTR_NAME_MAX.
pub const XATTR_NAME_MAX_BYTES: usize = 255;
/// Largest file size we accept (bytes): ext4's limit with 4 KiB blocks.
pub const FILE_SIZE_MAX_BYTES: u64 = 16 * 1024 * 1024 * 1024 * 1024;
/// Largest single read or write payload (bytes).
pub const IO_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most entries a single readdir reply may carry.
pub const READDIR_ENTRIES_MAX: u32 = 4096;

/// A POSIX error number (libc::ENOENT etc.).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

/// Time since the Unix epoch. `nsec < 1_000_000_000` always.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub const fn new(sec: i64, nsec: u32) -> Self {
        Timestamp { sec, nsec }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl FileKind {
    /// The S_IFMT bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDev => libc::S_IFCHR,
            FileKind::BlockDev => libc::S_IFBLK,
        }
    }

    /// The kind named by the S_IFMT bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Some(FileKind::File),
            libc::S_IFDIR => Some(FileKind::Dir),
            libc::S_IFLNK => Some(FileKind::Symlink),
            libc::S_IFIFO => Some(FileKind::Fifo),
            libc::S_IFSOCK => Some(FileKind::Socket),
            libc::S_IFCHR => Some(FileKind::CharDev),
            libc::S_IFBLK => Some(FileKind::BlockDev),
            _ => None,
        }
    }
}

/// Attributes of one inode, as returned to clients.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (mode & 0o7777).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    /// 512-byte blocks actually allocated.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// Bumped on every change of the inode (attributes, data or, for a
    /// directory, its entries). Clients validate caches with it.
    pub version: u64,
}

/// Who asks. Supplementary groups are read by the client from /proc when a
/// rule needs them (setgid clearing on chmod, chown to a group).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub groups: Vec<u32>,
}

impl Caller {
    pub fn root() -> Self {
        Caller { uid: 0, gid: 0, pid: 0, groups: vec![] }
    }
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// How setattr changes a time stamp (utimensat semantics; UTIME_OMIT is `None`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// UTIME_NOW: the command's time stamp.
    Now,
    At(Timestamp),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SetAttr {
    /// Full new mode bits (0o7777 part is used).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// Set when the kernel passes an explicit ctime.
    pub ctime: Option<Timestamp>,
    /// Truncation through an open handle (ftruncate).
    pub fh: Option<Fh>,
}

/// A state-changing operation. Time and caller come in the [`Command`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creates and opens a regular file (FUSE create). `excl` = O_EXCL.
    Create {
        parent: Ino,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        flags: i32,
        excl: bool,
    },
    /// Any non-directory node: regular, fifo, socket, char/block device.
    Mknod {
        parent: Ino,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        rdev: u32,
    },
    Mkdir {
        parent: Ino,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
    },
    Symlink {
        parent: Ino,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    Link {
        ino: Ino,
        newparent: Ino,
        newname: Vec<u8>,
    },
    Unlink {
        parent: Ino,
        name: Vec<u8>,
    },
    Rmdir {
        parent: Ino,
        name: Vec<u8>,
    },
    /// `flags`: 0, RENAME_NOREPLACE or RENAME_EXCHANGE (libc values).
    Rename {
        parent: Ino,
        name: Vec<u8>,
        newparent: Ino,
        newname: Vec<u8>,
        flags: u32,
    },
    SetAttr {
        ino: Ino,
        attr: SetAttr,
    },
    /// Opens an existing inode; O_TRUNC truncates. Opens are tracked so an
    /// unlinked file keeps its data until the last release.
    Open {
        ino: Ino,
        flags: i32,
    },
    Release {
        ino: Ino,
        fh: Fh,
    },
    Write {
        ino: Ino,
        fh: Fh,
        offset: u64,
        // Bytes as one blob on the wire, not one element at a time (40x faster in bincode).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        flags: i32,
    },
    /// libc FALLOC_FL_* mode bits (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE) or 0.
    Fallocate {
        ino: Ino,
        fh: Fh,
        offset: u64,
        length: u64,
        mode: i32,
    },
    /// `flags`: 0, XATTR_CREATE or XATTR_REPLACE.
    SetXattr {
        ino: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    /// A durability barrier for the inode; the store syncs before replying.
    Fsync {
        ino: Ino,
        datasync: bool,
    },
    /// Takes, changes or drops (F_UNLCK) a byte-range lock through an open
    /// handle, without waiting: a conflicting lock gives EAGAIN (the client
    /// retries for F_SETLKW).
    SetLock {
        ino: Ino,
        fh: Fh,
        lock: FileLock,
    },
    /// F_GETLK: the first lock of another owner that conflicts with `lock`,
    /// or `lock` with typ F_UNLCK. A command, so it is ordered with SetLock.
    GetLock {
        ino: Ino,
        fh: Fh,
        lock: FileLock,
    },
    /// Changes nothing: keeps the caller's session (and with it the
    /// client's handles and locks) alive while it is idle.
    KeepAlive,
}

/// A byte-range lock as fcntl(2) describes it, with the kernel's owner id.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLock {
    /// The lock owner on the client (FUSE lock_owner: a process's files, or
    /// an open file for OFD and flock locks).
    pub owner: u64,
    /// First and last byte, inclusive; `end == u64::MAX`: to any end of file.
    pub start: u64,
    pub end: u64,
    /// libc::F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    /// The holder's process id on its client (reported by F_GETLK only).
    pub pid: u32,
}

/// One command of the replicated log: the operation plus the inputs that
/// would otherwise differ between replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Leader-stamped time: every time stamp the command sets comes from here.
    pub now: Timestamp,
    pub caller: Caller,
    pub op: Op,
}

/// A read-only operation, answered from applied state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Lookup {
        parent: Ino,
        name: Vec<u8>,
    },
    GetAttr {
        ino: Ino,
    },
    Read {
        ino: Ino,
        offset: u64,
        size: u32,
    },
    ReadLink {
        ino: Ino,
    },
    /// Entries after `cookie` (0 = from the start), at most `max_entries`.
    /// With `plus` every entry carries its attributes (readdirplus).
    ReadDir {
        ino: Ino,
        cookie: u64,
        max_entries: u32,
        plus: bool,
    },
    GetXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    ListXattr {
        ino: Ino,
    },
    StatFs,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    /// Stable resume point: pass it back as `cookie` to continue after this entry.
    pub cookie: u64,
    pub kind: FileKind,
    pub name: Vec<u8>,
    pub attr: Option<Attr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// The successful outcome of a command or query.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Attr(Attr),
    /// Lookup, mkdir, mknod, symlink, link: the entry's attributes.
    Entry(Attr),
    /// Create: the new entry and its open handle.
    Created {
        attr: Attr,
        fh: Fh,
    },
    Opened {
        attr: Attr,
        fh: Fh,
    },
    Written {
        written: u32,
        attr: Attr,
    },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Dir(Vec<DirEntry>),
    /// GetLock: the conflicting lock, or typ F_UNLCK.
    Lock(FileLock),
    StatFs(StatFs),
}

pub type OpResult = Result<Reply, Errno>;

/// What a client sends: a mutation (the server stamps time and sequences it
/// into a [`Command`]) or a query. The answer is an [`OpResult`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Mutate { caller: Caller, op: Op },
    Query { caller: Caller, query: Query },
}
