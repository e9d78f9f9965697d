//! The fuser `Filesystem`: one FUSE request becomes (at most a few bounded)
//! [`Backend::call_leased`]s, and the answer becomes the FUSE reply.
//!
//! Guarantees:
//! - Every request gets exactly one reply (fuser replies EIO for a dropped
//!   reply object; we never rely on that) and no handler panics on any input:
//!   odd inputs become errno replies, a backend that panics becomes EIO.
//! - No file-system state lives here: no inode table, no open-file table.
//!   The backend (the replicated state machine) is the single source of
//!   truth, so `forget` is a no-op and directories need no server-side
//!   handle. What the kernel may cache is decided by the mount's cache
//!   bookkeeping (`crate::cache`) from the callbacks the backend grants
//!   (DESIGN.md §5): attribute and entry TTLs are the time left on the lease
//!   of every object the answer came from, and 0 without one (so a backend
//!   that grants none, e.g. a single server or an in-process store, is never
//!   read stale); a negative lookup under a lease becomes a negative entry;
//!   `FOPEN_KEEP_CACHE` only when the file's version is the one of its last
//!   open under the same unbroken lease, or, for pages kept untrusted past a
//!   lapse or a new leader, under a grant received before the open was sent
//!   (the open fetches the attributes first if nothing did); `FOPEN_CACHE_DIR`
//!   only under a lease on the directory. Mutations never carry a TTL, and what they changed
//!   (the backend's `changed`) is dropped like a recall: the leader does not
//!   recall the writer, it drops the writer's callbacks.
//! - Each cacheable answer is judged against a ticket taken before its
//!   request was sent: a recall that arrived meanwhile means no caching.
//! - No kernel notification is sent from a handler (that can deadlock the
//!   kernel against our own reply); handlers only queue invalidations, and
//!   the mount's invalidation threads (`super::invalidate`) send them through
//!   `fuser::Notifier`, then acknowledge recalls.
//! - Files opened for writing are opened FOPEN_DIRECT_IO: the kernel's
//!   buffered writes would show uncommitted bytes to the mount's other
//!   readers (see `open_flags`). Read-only opens use the page cache.
//! - O_APPEND writes land at the state machine's size, never at the
//!   kernel's possibly stale one: the open flags travel with the write, and
//!   (direct I/O) no cached page holds the bytes at the kernel's idea of the
//!   end; the write's `changed` drops what else the kernel holds.
//! - Sizes are bounded before they reach the backend: names by NAME_MAX,
//!   symlink targets by PATH_MAX, xattrs by the Linux limits, reads and writes
//!   by `IO_MAX_BYTES`, readdir batches by `READDIR_ENTRIES_MAX`.
//!
//! Permission checks (rwx on paths and files) are done by the kernel
//! (mount option default_permissions, using the attributes we return); the
//! state machine repeats the ownership rules that need the caller (chown,
//! chmod, sticky directories, times), hence the caller in every request.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chorus_fs::ops::{
    self, Attr, DirEntry, FileLock, Ino, Op, OpResult, Query, Reply, SetAttr, IO_MAX_BYTES, NAME_MAX_BYTES, READDIR_ENTRIES_MAX,
    SYMLINK_MAX_BYTES, XATTR_NAME_MAX_BYTES, XATTR_VALUE_MAX_BYTES,
};
use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, TimeOrNow, WriteFlags,
};
use tracing::{error, warn};

use super::caller::{caller, caller_with_groups, op_needs_groups, query_needs_groups};
use super::convert::{file_attr, file_type, negative_entry_attr, set_time, timestamp_from_fuser_input};
use crate::backend::CacheInfo;
use crate::cache::{MountCache, Ticket};
use crate::Backend;

/// Largest write the kernel may send us in one request. 1 MiB keeps one
/// request's payload well inside `IO_MAX_BYTES` and the transport's frame
/// limit while amortising the per-request round trip.
pub const MAX_WRITE_BYTES: u32 = 1024 * 1024;
/// Readahead we ask for; the kernel caps it at what it offered (usually 128 KiB).
pub const MAX_READAHEAD_BYTES: u32 = 1024 * 1024;
/// First readdir batch (entries); doubled per extra round trip while the
/// kernel's buffer still has room, up to `READDIR_ENTRIES_MAX`. fuser does not
/// tell us the kernel's buffer size (4 KiB to 1 MiB), so we start with about a
/// 4 KiB page worth and grow.
const READDIR_FIRST_BATCH: u32 = 128;
/// Same for readdirplus, whose records are ~5x larger (attributes included).
const READDIRPLUS_FIRST_BATCH: u32 = 32;
/// Most backend round trips one readdir request may make (bounds the latency
/// of a single request; the kernel simply asks again for the rest).
const READDIR_ROUND_TRIPS_MAX: usize = 8;

pub struct ChorusFuse {
    backend: Arc<dyn Backend>,
    cache: Arc<MountCache>,
    locks: Arc<super::locks::MountLocks>,
}

/// A query's answer with what decides its caching.
struct Answer {
    result: OpResult,
    lease_until: Option<Instant>,
    ticket: Ticket,
}

/// One readdir batch, as [`Answer`].
struct Batch {
    entries: Vec<DirEntry>,
    lease_until: Option<Instant>,
    ticket: Ticket,
}

fn errno(e: ops::Errno) -> Errno {
    // from_i32 maps 0 and negative values to EIO: a backend can't make us
    // send a success by accident.
    Errno::from_i32(e.0)
}

/// The backend answered with a reply of the wrong shape: a protocol bug on
/// the other side, reported as EIO rather than guessed around.
fn unexpected(what: &str, r: &Reply) -> Errno {
    error!(op = what, reply = ?std::mem::discriminant(r), "backend returned an unexpected reply kind");
    Errno::EIO
}

fn attr_of(what: &str, r: OpResult) -> Result<Attr, Errno> {
    match r.map_err(errno)? {
        Reply::Attr(a) | Reply::Entry(a) => Ok(a),
        other => Err(unexpected(what, &other)),
    }
}

fn ok_of(r: OpResult) -> Result<(), Errno> {
    r.map(|_| ()).map_err(errno)
}

fn data_of(what: &str, r: OpResult) -> Result<Vec<u8>, Errno> {
    match r.map_err(errno)? {
        Reply::Data(d) => Ok(d),
        other => Err(unexpected(what, &other)),
    }
}

/// A directory-entry name as bytes; Linux file systems refuse names longer
/// than NAME_MAX with ENAMETOOLONG, and the kernel does not check for us.
fn name_of(name: &OsStr) -> Result<Vec<u8>, Errno> {
    let b = name.as_bytes();
    if b.len() > NAME_MAX_BYTES {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(b.to_vec())
}

/// An xattr name; Linux answers ERANGE for names over XATTR_NAME_MAX.
fn xattr_name_of(name: &OsStr) -> Result<Vec<u8>, Errno> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > XATTR_NAME_MAX_BYTES {
        return Err(Errno::ERANGE);
    }
    Ok(b.to_vec())
}

/// Answers a getxattr/listxattr: size 0 is a probe for the length; a buffer
/// too small is ERANGE (the caller retries with a bigger one).
fn reply_xattr(reply: ReplyXattr, r: Result<Vec<u8>, Errno>, size: u32) {
    match r {
        Ok(v) => match u32::try_from(v.len()) {
            Err(_) => reply.error(Errno::E2BIG),
            Ok(len) if size == 0 => reply.size(len),
            Ok(len) if len > size => reply.error(Errno::ERANGE),
            Ok(_) => reply.data(&v),
        },
        Err(e) => reply.error(e),
    }
}

impl ChorusFuse {
    pub(crate) fn new(backend: Arc<dyn Backend>, cache: Arc<MountCache>) -> Self {
        ChorusFuse { backend, cache, locks: Arc::default() }
    }

    /// One backend call. A panicking backend must not take a FUSE worker
    /// thread (and with it part of the mount) down: it becomes EIO.
    fn call(&self, req: ops::Request) -> (OpResult, CacheInfo) {
        match catch_unwind(AssertUnwindSafe(|| self.backend.call_leased(req))) {
            Ok(r) => r,
            Err(_) => {
                error!("backend panicked; answering EIO");
                (Err(ops::Errno(libc::EIO)), CacheInfo::default())
            }
        }
    }

    /// A query, with the ticket taken before it was sent.
    fn query(&self, req: &fuser::Request, query: Query) -> Answer {
        let caller = if query_needs_groups(&query) { caller_with_groups(req) } else { caller(req) };
        let ticket = self.cache.ticket();
        let (result, info) = self.call(ops::Request::Query { caller, query });
        Answer { result, lease_until: info.lease_until, ticket }
    }

    /// A mutation; what it changed is dropped from this mount's caches
    /// (queued before the reply goes to the kernel).
    fn mutate(&self, req: &fuser::Request, op: Op) -> OpResult {
        let caller = if op_needs_groups(&op) { caller_with_groups(req) } else { caller(req) };
        let (result, info) = self.call(ops::Request::Mutate { caller, op });
        self.cache.changed(&info.changed);
        result
    }

    /// Attributes of `ino` from a query, with their TTL.
    fn attr_query(&self, req: &fuser::Request, ino: Ino) -> Result<(Attr, Duration), Errno> {
        let a = self.query(req, Query::GetAttr { ino });
        let attr = attr_of("getattr", a.result)?;
        let now = Instant::now();
        let g = self.cache.grant(a.ticket, a.lease_until, &[ino], &[], &[], now);
        self.cache.seen(a.ticket, ino, attr.version, now);
        Ok((attr, g.attr_ttl()))
    }

    /// An entry a mutation made: no lease, so no TTL.
    fn reply_new_entry(reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&Duration::ZERO, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn read_dir_batch(&self, req: &fuser::Request, ino: Ino, cookie: u64, max_entries: u32, plus: bool) -> Result<Batch, Errno> {
        let max_entries = max_entries.clamp(1, READDIR_ENTRIES_MAX);
        let a = self.query(req, Query::ReadDir { ino, cookie, max_entries, plus });
        match a.result.map_err(errno)? {
            Reply::Dir(mut entries) => {
                // Never trust a peer to respect the bound we asked for.
                entries.truncate(max_entries as usize);
                if entries.iter().any(|e| e.cookie == 0) {
                    // Offset 0 means "from the start" to the kernel: an entry
                    // with cookie 0 would make `ls` loop forever.
                    error!(ino, "backend returned a directory entry with cookie 0");
                    return Err(Errno::EIO);
                }
                Ok(Batch { entries, lease_until: a.lease_until, ticket: a.ticket })
            }
            other => Err(unexpected("readdir", &other)),
        }
    }

    /// Fills a readdir(plus) reply from successive bounded batches until the
    /// kernel's buffer is full (`push` returns true), the directory ends, or
    /// the round-trip bound is hit. Entries fetched but not fitting are
    /// dropped; the kernel resumes from the last entry's cookie. `push` gets
    /// each entry's attributes (plus only) and the TTL it may carry.
    fn fill_dir(
        &self,
        req: &fuser::Request,
        ino: Ino,
        offset: u64,
        plus: bool,
        mut push: impl FnMut(&DirEntry, Option<&Attr>, Duration) -> bool,
    ) -> Result<(), Errno> {
        let mut cookie = offset;
        let mut batch = if plus { READDIRPLUS_FIRST_BATCH } else { READDIR_FIRST_BATCH };
        for _ in 0..READDIR_ROUND_TRIPS_MAX {
            let b = self.read_dir_batch(req, ino, cookie, batch, plus)?;
            let entries = &b.entries;
            let complete = (entries.len() as u32) < batch;
            // The listing fills the directory's pages (readdir cache); with
            // plus, the entries' names and attributes are cached too, under
            // the directory's and the children's objects (as the leader
            // counts them: the directory and every child with attributes).
            let objects: Vec<Ino> = std::iter::once(ino).chain(entries.iter().filter_map(|e| e.attr.as_ref().map(|a| a.ino))).collect();
            let names: Vec<(Ino, &[u8])> = if plus { entries.iter().map(|e| (ino, e.name.as_slice())).collect() } else { Vec::new() };
            let grant = self.cache.grant(b.ticket, b.lease_until, &objects, &names, &[ino], Instant::now());
            for (i, e) in entries.iter().enumerate() {
                let full = if plus {
                    let fetched;
                    let (attr, ttl) = match &e.attr {
                        Some(a) => (Some(a), grant.entry_ttl(i)),
                        // A backend may omit attributes; fetch them (not
                        // cached: no lease covers the name with them). An
                        // entry that vanished meanwhile is simply left out.
                        None => {
                            fetched = attr_of("getattr", self.query(req, Query::GetAttr { ino: e.ino }).result).ok();
                            (fetched.as_ref(), Duration::ZERO)
                        }
                    };
                    attr.is_some_and(|a| push(e, Some(a), ttl))
                } else {
                    push(e, None, Duration::ZERO)
                };
                if full {
                    return Ok(());
                }
                cookie = e.cookie;
            }
            if complete {
                return Ok(());
            }
            batch = batch.saturating_mul(2).min(READDIR_ENTRIES_MAX);
        }
        Ok(())
    }
}

/// FOPEN flags of an open with `flags` (open(2)'s): a file opened for
/// writing is read and written directly, past the page cache. A buffered
/// write copies its bytes into a cached page and unlocks it before the
/// WRITE is even sent, so the mount's other readers would see a write the
/// leader has not committed (and holds while other mounts drop their
/// copies), then another mount could still read the older value: not
/// linearizable. Direct writes also drop the cached pages they cover first
/// (the kernel does that for FOPEN_DIRECT_IO), and read-only opens keep the
/// page cache. `keep`: the cached pages are current (FOPEN_KEEP_CACHE).
fn open_flags(flags: i32, keep: bool) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if keep {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    f
}

#[allow(clippy::too_many_arguments)]
impl Filesystem for ChorusFuse {
    fn init(&mut self, _req: &fuser::Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Both setters answer Err(nearest allowed value) when the kernel or
        // fuser cannot go as high: take that value.
        if let Err(max) = config.set_max_write(MAX_WRITE_BYTES) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD_BYTES) {
            let _ = config.set_max_readahead(max);
        }
        // Each capability separately: one the kernel lacks must not cost the others.
        // Deliberately absent: FUSE_WRITEBACK_CACHE (the kernel would buffer
        // writes and invent mtimes: breaks coherence between clients and fsx
        // semantics), FUSE_EXPORT_SUPPORT, FUSE_POSIX_ACL.
        for cap in [
            // Reads of one file may be in flight concurrently.
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_BIG_WRITES,
            // Lets max_write above 128 KiB take effect.
            InitFlags::FUSE_MAX_PAGES,
            // Shared mappings of files opened for writing, which are opened
            // FOPEN_DIRECT_IO (see `open_flags`).
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            // Lookups/creates in one directory need not serialize in the kernel.
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            // open(O_TRUNC) is one replicated op instead of open + setattr.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            // Drop cached pages when a getattr shows another writer changed
            // mtime/size: the best coherence available before callbacks.
            InitFlags::FUSE_AUTO_INVAL_DATA,
            // A symlink's target never changes and inode numbers are never
            // reused, so caching link targets is always coherent.
            InitFlags::FUSE_CACHE_SYMLINKS,
            // The store clears set-ID bits itself on write, truncate,
            // fallocate and chown, as Linux does. Without this the kernel
            // sends the clearing as a chmod from the writer, which the store
            // (like Linux) refuses to a non-owner: writes to a set-ID file
            // by others would fail with EPERM.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // fcntl and flock locks go to the cluster (see `super::locks`),
            // so every mount sees them; without these they would be local.
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
        ] {
            if config.add_capabilities(cap).is_err() {
                warn!(capability = ?cap, "kernel lacks FUSE capability; continuing without it");
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let a = self.query(req, Query::Lookup { parent: parent.0, name: name.clone() });
        let now = Instant::now();
        match a.result {
            Ok(Reply::Entry(attr)) | Ok(Reply::Attr(attr)) if attr.ino != 0 => {
                let g = self.cache.grant(a.ticket, a.lease_until, &[parent.0, attr.ino], &[(parent.0, &name)], &[], now);
                self.cache.seen(a.ticket, attr.ino, attr.version, now);
                reply.entry_with_ttls(&g.attr_ttl(), &g.entry_ttl(0), &file_attr(&attr), Generation(0));
            }
            Ok(other) => reply.error(unexpected("lookup", &other)),
            Err(ops::Errno(libc::ENOENT)) => {
                // "No such name" is the directory's: cache it as a negative
                // entry (inode 0) while the directory's lease holds.
                let g = self.cache.grant(a.ticket, a.lease_until, &[parent.0], &[(parent.0, &name)], &[], now);
                let ttl = g.entry_ttl(0);
                if ttl.is_zero() {
                    reply.error(Errno::ENOENT);
                } else {
                    reply.entry(&ttl, &negative_entry_attr(), Generation(0));
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &fuser::Request, _ino: INodeNo, _nlookup: u64) {
        // Nothing to do: no per-inode client state (see module comment).
    }

    fn getattr(&self, req: &fuser::Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_query(req, ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let attr = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime: ctime.map(timestamp_from_fuser_input),
            fh: fh.map(|f| f.0),
        };
        let nothing_to_change = attr.mode.is_none()
            && attr.uid.is_none()
            && attr.gid.is_none()
            && attr.size.is_none()
            && attr.atime.is_none()
            && attr.mtime.is_none()
            && attr.ctime.is_none();
        let r = if nothing_to_change {
            // E.g. only macOS-specific fields or a lock owner: don't
            // replicate a no-op, just report the current attributes.
            self.attr_query(req, ino.0)
        } else {
            attr_of("setattr", self.mutate(req, Op::SetAttr { ino: ino.0, attr })).map(|a| (a, Duration::ZERO))
        };
        match r {
            Ok((attr, ttl)) => reply.attr(&ttl, &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &fuser::Request, ino: INodeNo, reply: ReplyData) {
        // Not cached here: FUSE_CACHE_SYMLINKS lets the kernel keep targets,
        // which never change.
        match data_of("readlink", self.query(req, Query::ReadLink { ino: ino.0 }).result) {
            Ok(t) if t.len() <= SYMLINK_MAX_BYTES => reply.data(&t),
            Ok(_) => reply.error(Errno::ENAMETOOLONG),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let r = name_of(name).and_then(|name| {
            let op = Op::Mknod { parent: parent.0, name, mode, umask, rdev };
            attr_of("mknod", self.mutate(req, op))
        });
        Self::reply_new_entry(reply, r);
    }

    fn mkdir(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = name_of(name).and_then(|name| {
            let op = Op::Mkdir { parent: parent.0, name, mode, umask };
            attr_of("mkdir", self.mutate(req, op))
        });
        Self::reply_new_entry(reply, r);
    }

    fn unlink(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = name_of(name).and_then(|name| ok_of(self.mutate(req, Op::Unlink { parent: parent.0, name })));
        Self::reply_empty(reply, r);
    }

    fn rmdir(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = name_of(name).and_then(|name| ok_of(self.mutate(req, Op::Rmdir { parent: parent.0, name })));
        Self::reply_empty(reply, r);
    }

    fn symlink(&self, req: &fuser::Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let r = name_of(link_name).and_then(|name| {
            let target = target.as_os_str().as_bytes();
            if target.len() > SYMLINK_MAX_BYTES {
                return Err(Errno::ENAMETOOLONG);
            }
            let op = Op::Symlink { parent: parent.0, name, target: target.to_vec() };
            attr_of("symlink", self.mutate(req, op))
        });
        Self::reply_new_entry(reply, r);
    }

    fn rename(
        &self,
        req: &fuser::Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let allowed = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
            // Whiteouts are for overlayfs, unknown bits for future kernels.
            if !allowed.contains(flags) || flags == allowed {
                return Err(Errno::EINVAL);
            }
            let op = Op::Rename {
                parent: parent.0,
                name: name_of(name)?,
                newparent: newparent.0,
                newname: name_of(newname)?,
                flags: flags.bits(),
            };
            ok_of(self.mutate(req, op))
        })();
        Self::reply_empty(reply, r);
    }

    fn link(&self, req: &fuser::Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = name_of(newname).and_then(|newname| {
            let op = Op::Link { ino: ino.0, newparent: newparent.0, newname };
            attr_of("link", self.mutate(req, op))
        });
        Self::reply_new_entry(reply, r);
    }

    fn open(&self, req: &fuser::Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ticket = self.cache.ticket();
        if self.cache.untrusted(ino.0) {
            // Pages kept from before a lapse or a new leader: a fresh grant
            // first (its errors show again in the open).
            let _ = self.attr_query(req, ino.0);
        }
        let seq = self.cache.seq();
        match self.mutate(req, Op::Open { ino: ino.0, flags: flags.0 }).map_err(errno) {
            // Without FOPEN_KEEP_CACHE the kernel drops the file's pages
            // (close-to-open); with it, it keeps pages that the lease proves
            // current (see the module comment).
            Ok(Reply::Opened { fh, attr }) => {
                let keep = self.cache.keep_cache(ticket, ino.0, attr.version, seq, Instant::now());
                reply.opened(FileHandle(fh), open_flags(flags.0, keep))
            }
            Ok(other) => reply.error(unexpected("open", &other)),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let size = size.min(IO_MAX_BYTES as u32);
        let a = self.query(req, Query::Read { ino: ino.0, offset, size });
        match data_of("read", a.result) {
            Ok(d) => {
                // The kernel keeps these pages: renew the lease, and drop
                // them when it lapses.
                self.cache.grant(a.ticket, a.lease_until, &[ino.0], &[], &[ino.0], Instant::now());
                // Sending more than asked would make the kernel fail the read.
                reply.data(&d[..d.len().min(size as usize)])
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // max_write keeps data within IO_MAX_BYTES; if a kernel ever sent
        // more, a short write is a correct answer (the caller writes the rest).
        let data = &data[..data.len().min(IO_MAX_BYTES)];
        // The open flags travel along so O_APPEND appends at the size the
        // state machine knows, not the kernel's possibly stale one.
        let op = Op::Write { ino: ino.0, fh: fh.0, offset, data: data.to_vec(), flags: flags.0 };
        match self.mutate(req, op).map_err(errno) {
            Ok(Reply::Written { written, .. }) => reply.written(written.min(data.len() as u32)),
            Ok(other) => reply.error(unexpected("write", &other)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, req: &fuser::Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        // Writes are synchronous (no writeback cache): nothing is pending.
        // A close drops the closing owner's POSIX locks on the file; the
        // kernel leaves that to us when locks are remote.
        if self.locks.take_owner(ino.0, lock_owner.0) {
            let lock = FileLock { owner: lock_owner.0, start: 0, end: u64::MAX, typ: libc::F_UNLCK, pid: 0 };
            if let Err(e) = ok_of(self.mutate(req, Op::SetLock { ino: ino.0, fh: fh.0, lock })) {
                // The handle's release drops them too, and a dead mount's
                // session end at the latest.
                warn!(ino = ino.0, errno = e.code(), "unlock at close failed");
            }
        }
        reply.ok();
    }

    fn getlk(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let lock = FileLock { owner: lock_owner.0, start, end, typ, pid };
        match self.mutate(req, Op::GetLock { ino: ino.0, fh: fh.0, lock }).map_err(errno) {
            Ok(Reply::Lock(l)) => reply.locked(l.start, l.end, l.typ, l.pid),
            Ok(other) => reply.error(unexpected("getlk", &other)),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let lock = FileLock { owner: lock_owner.0, start, end, typ, pid };
        let op = Op::SetLock { ino: ino.0, fh: fh.0, lock };
        match self.mutate(req, op.clone()) {
            Err(ops::Errno(libc::EAGAIN)) if sleep => {
                // Waits on a thread of its own, never on this worker.
                self.locks.wait(self.backend.clone(), caller(req), op, move |r| Self::reply_empty(reply, ok_of(r)));
            }
            r => {
                if r.is_ok() {
                    self.locks.granted(ino.0, &lock);
                }
                Self::reply_empty(reply, ok_of(r));
            }
        }
    }

    fn release(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.cache.released(ino.0);
        let r = ok_of(self.mutate(req, Op::Release { ino: ino.0, fh: fh.0 }));
        if let Err(e) = r {
            // close() can't report it; the server reclaims the handle when
            // the session ends.
            warn!(ino = ino.0, fh = fh.0, errno = e.code(), "release failed");
        }
        Self::reply_empty(reply, r);
    }

    fn fsync(&self, req: &fuser::Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        Self::reply_empty(reply, ok_of(self.mutate(req, Op::Fsync { ino: ino.0, datasync })));
    }

    fn opendir(&self, req: &fuser::Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Stateless directory reading: cookies are stable in the state
        // machine. Under a lease on the directory the kernel may keep its
        // listing across opens (a recall drops it; one kept past the
        // lease's end is kept again only at the same version; the kernel
        // also checks the directory's mtime before reusing it).
        let ticket = self.cache.ticket();
        if self.cache.untrusted(ino.0) {
            // A fresh grant and the directory's version first.
            let _ = self.attr_query(req, ino.0);
        }
        let seq = self.cache.seq();
        let mut flags = FopenFlags::empty();
        let (cache, keep) = self.cache.cache_dir(ticket, ino.0, seq, Instant::now());
        if cache {
            flags |= FopenFlags::FOPEN_CACHE_DIR;
        }
        if keep {
            flags |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        reply.opened(FileHandle(0), flags);
    }

    fn readdir(&self, req: &fuser::Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let r = self.fill_dir(req, ino.0, offset, false, |e, _, _| {
            reply.add(INodeNo(e.ino), e.cookie, file_type(e.kind), OsStr::from_bytes(&e.name))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(&self, req: &fuser::Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let r = self.fill_dir(req, ino.0, offset, true, |e, attr, ttl| match attr {
            Some(a) => reply.add(INodeNo(e.ino), e.cookie, OsStr::from_bytes(&e.name), &ttl, &file_attr(a), Generation(0)),
            None => false,
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &fuser::Request, ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.cache.released(ino.0);
        reply.ok();
    }

    fn fsyncdir(&self, req: &fuser::Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        Self::reply_empty(reply, ok_of(self.mutate(req, Op::Fsync { ino: ino.0, datasync })));
    }

    fn statfs(&self, req: &fuser::Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.query(req, Query::StatFs).result.map_err(errno) {
            Ok(Reply::StatFs(s)) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize),
            Ok(other) => reply.error(unexpected("statfs", &other)),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(&self, req: &fuser::Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, position: u32, reply: ReplyEmpty) {
        let r = (|| {
            if position != 0 {
                return Err(Errno::EINVAL); // macOS resource forks only
            }
            let name = xattr_name_of(name)?;
            if value.len() > XATTR_VALUE_MAX_BYTES {
                return Err(Errno::E2BIG);
            }
            let op = Op::SetXattr { ino: ino.0, name, value: value.to_vec(), flags };
            ok_of(self.mutate(req, op))
        })();
        Self::reply_empty(reply, r);
    }

    fn getxattr(&self, req: &fuser::Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = xattr_name_of(name).and_then(|name| data_of("getxattr", self.query(req, Query::GetXattr { ino: ino.0, name }).result));
        reply_xattr(reply, r, size);
    }

    fn listxattr(&self, req: &fuser::Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = data_of("listxattr", self.query(req, Query::ListXattr { ino: ino.0 }).result);
        reply_xattr(reply, r, size);
    }

    fn removexattr(&self, req: &fuser::Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = xattr_name_of(name).and_then(|name| ok_of(self.mutate(req, Op::RemoveXattr { ino: ino.0, name })));
        Self::reply_empty(reply, r);
    }

    fn access(&self, _req: &fuser::Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel checks access itself and does
        // not call this; answer Ok should a kernel call it anyway.
        reply.ok();
    }

    fn create(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let r = name_of(name).and_then(|name| {
            let excl = flags & libc::O_EXCL != 0;
            let op = Op::Create { parent: parent.0, name, mode, umask, flags, excl };
            match self.mutate(req, op).map_err(errno)? {
                Reply::Created { attr, fh } => Ok((attr, fh)),
                other => Err(unexpected("create", &other)),
            }
        });
        match r {
            // A mutation's answer: no lease, no TTL.
            Ok((attr, fh)) => {
                self.cache.created(attr.ino);
                reply.created(&Duration::ZERO, &file_attr(&attr), Generation(0), FileHandle(fh), open_flags(flags, false))
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(&self, req: &fuser::Request, ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let op = Op::Fallocate { ino: ino.0, fh: fh.0, offset, length, mode };
        Self::reply_empty(reply, ok_of(self.mutate(req, op)));
    }

    fn lseek(&self, _req: &fuser::Request, _ino: INodeNo, _fh: FileHandle, _offset: i64, _whence: i32, reply: ReplyLseek) {
        // ENOSYS makes the kernel stop asking and use its generic lseek
        // (SEEK_DATA/SEEK_HOLE then treat the whole file as data: correct,
        // just not hole-aware).
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        req: &fuser::Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // One bounded read + write through the backend; a short count is a
        // valid answer and callers loop. Not atomic with respect to other
        // writers, exactly like the kernel's own read/write fallback.
        let r = (|| {
            if !flags.is_empty() {
                return Err(Errno::EINVAL);
            }
            let size = len.min(IO_MAX_BYTES as u64) as u32;
            if size == 0 {
                return Ok(0);
            }
            let data = data_of("read", self.query(req, Query::Read { ino: ino_in.0, offset: offset_in, size }).result)?;
            if data.is_empty() {
                return Ok(0);
            }
            let n = data.len().min(size as usize);
            let op = Op::Write { ino: ino_out.0, fh: fh_out.0, offset: offset_out, data: data[..n].to_vec(), flags: 0 };
            match self.mutate(req, op).map_err(errno)? {
                Reply::Written { written, .. } => Ok(written.min(n as u32)),
                other => Err(unexpected("write", &other)),
            }
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }
}
