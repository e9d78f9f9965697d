//! [`FsStore`]: the file-system state machine on one RocksDB.
//!
//! Guarantees:
//! - `apply` executes committed commands strictly in log order (index =
//!   applied + 1, asserted), one at a time, and writes each as ONE WriteBatch
//!   that also holds the new applied index: after a crash the state is that of
//!   some prefix of the log, never in between. A command that fails with an
//!   errno changes nothing but the applied index.
//! - Determinism: all time comes from `Command::now`, all numbers (inodes,
//!   handles, cookies) from counters in the state; nothing depends on the
//!   wall clock, the host or hash-map order. Same log, same state, same
//!   digest.
//! - `query` never writes and reads one snapshot, so it sees the state after
//!   some whole command; queries run concurrently with each other and with
//!   `apply` (RocksDB is thread-safe).
//! - Durability: with `sync_every_write` every batch is fsynced; otherwise
//!   `sync` (and every `Op::Fsync`) fsyncs the WAL, covering all earlier applies.
//! - `apply_tagged_tracked` also names the inodes the command changed (see
//!   `changes`): empty for a failed command, since nothing of it is written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rocksdb::{checkpoint::Checkpoint, ColumnFamilyDescriptor, Options, WriteOptions};

use crate::ctx::Ctx;
use crate::error::{Fail, StoreError};
use crate::image::StateHasher;
pub use crate::image::StoreImage;
use crate::keys::{inode_key, Table, META_KEY, TAG_KEY};
use crate::ops::{Caller, Command, FileKind, Ino, Op, OpResult, Query, Reply, StatFs, Timestamp, NAME_MAX_BYTES, ROOT_INO};
use crate::records::{decode, AppliedTag, Inode, Meta, FORMAT_VERSION};
use crate::view::{cf, Db, SnapView, Tx, View};
use crate::{attrs, data, locks, namespace, xattr};

/// Options of [`FsStore::open`].
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// fsync the WAL on every apply (slow); otherwise only on `sync`/fsync.
    pub sync_every_write: bool,
    /// Write no RocksDB WAL at all: for a store that is derived state, rebuilt
    /// at every start from a checkpoint plus a replayed log (a replica). Its
    /// durability is the replication log's; `checkpoint` flushes memtables.
    pub skip_wal: bool,
}

/// All memtables of one store together (bounds memory; several replicas may
/// share a machine).
const MEMTABLES_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Open table files kept by one store.
const OPEN_FILES_MAX: i32 = 256;
/// Block values at least this long live in blob files.
const BLOB_VALUE_BYTES_MIN: u64 = 4096;
/// Inode numbers we claim to have in statfs.
const FILES_MAX: u64 = 1 << 32;

/// What [`FsStore::apply_tagged_tracked`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The reply, as from [`FsStore::apply_tagged`].
    pub result: OpResult,
    /// Every inode whose cached copy (attributes, data, xattrs, symlink
    /// target, directory entries) the command made stale: sorted, no
    /// duplicates; empty when the command failed.
    pub changed: Vec<Ino>,
}

struct Applier {
    /// The committed meta record (matches the database).
    meta: Meta,
    /// The committed tag (matches the database); `None` until the first
    /// `apply_tagged`.
    tag: Option<AppliedTag>,
}

/// The replicated file-system state of one replica. Send + Sync.
pub struct FsStore {
    db: Db,
    dir: PathBuf,
    sync_every_write: bool,
    skip_wal: bool,
    /// Serializes appliers (and checkpoints) and holds the counters.
    applier: Mutex<Applier>,
    /// Copy of `meta.applied_index` readable without the lock.
    applied: AtomicU64,
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_db_write_buffer_size(MEMTABLES_BYTES_MAX);
    opts.set_max_open_files(OPEN_FILES_MAX);
    opts.set_keep_log_file_num(4);
    opts
}

/// Per-table options. File data goes to blob files (values of at least
/// BLOB_VALUE_BYTES_MIN): compactions then move small references instead of
/// rewriting 64 KiB blocks again and again.
fn table_options(table: Table) -> Options {
    let mut opts = Options::default();
    if table == Table::Blocks {
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(BLOB_VALUE_BYTES_MIN);
        opts.set_enable_blob_gc(true);
    }
    opts
}

impl FsStore {
    /// Opens or creates the store in `dir`; a new store gets the root
    /// directory (ino 1, mode 0o755, uid/gid 0, nlink 2, all times 0).
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<FsStore, StoreError> {
        let descriptors: Vec<ColumnFamilyDescriptor> =
            Table::ALL.iter().map(|t| ColumnFamilyDescriptor::new(t.name(), table_options(*t))).collect();
        let db = Db::open_cf_descriptors(&db_options(), dir, descriptors)?;
        for table in Table::ALL {
            if db.cf_handle(table.name()).is_none() {
                return Err(StoreError::MissingColumnFamily(table.name()));
            }
        }
        let meta = match db.get_cf(cf(&db, Table::Meta), META_KEY)? {
            Some(bytes) => {
                let meta: Meta = decode(Table::Meta, META_KEY, &bytes)?;
                if meta.format_version != FORMAT_VERSION {
                    return Err(StoreError::FormatVersion { found: meta.format_version, expected: FORMAT_VERSION });
                }
                meta
            }
            None => Self::initialize(&db)?,
        };
        assert!(meta.next_ino > ROOT_INO);
        let tag = read_tag(&db)?;
        let applied = AtomicU64::new(meta.applied_index);
        Ok(FsStore {
            db,
            dir: dir.to_path_buf(),
            sync_every_write: opts.sync_every_write,
            skip_wal: opts.skip_wal,
            applier: Mutex::new(Applier { meta, tag }),
            applied,
        })
    }

    /// Writes the state of an empty file system: the root directory.
    fn initialize(db: &Db) -> Result<Meta, StoreError> {
        let meta = Meta { format_version: FORMAT_VERSION, applied_index: 0, next_ino: ROOT_INO + 1, next_fh: 1, inodes_live: 1 };
        let mut root = Inode::new(ROOT_INO, FileKind::Dir, 0o755, 0, 0, Timestamp::new(0, 0));
        root.parent = ROOT_INO;
        let mut tx = Tx::new(db);
        tx.put_record(Table::Inodes, inode_key(ROOT_INO), &root);
        tx.put_record(Table::Meta, META_KEY.to_vec(), &meta);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(tx.into_batch(), &wo)?;
        Ok(meta)
    }

    /// Applies the committed command at log position `index` (must be
    /// `applied_index() + 1`). POSIX failures are `Ok(Err(errno))`; the
    /// applied index advances either way.
    pub fn apply(&self, index: u64, cmd: &Command) -> Result<OpResult, StoreError> {
        Ok(self.apply_inner(index, cmd.now, &cmd.caller, Work::Op(&cmd.op), SINGLE_REPLICA_CLIENT, None, false)?.result)
    }

    /// [`FsStore::apply`], and records `tag` in the same WriteBatch, so after
    /// a crash the tag always describes the last command the state holds.
    ///
    /// Asserts: `tag.last_now == cmd.now`; tags move forward (`op` never
    /// decreases, `last_now` strictly increases). A store is driven by
    /// `apply_tagged` for its whole life (an untagged `apply` in between
    /// would leave the tag behind the state).
    pub fn apply_tagged(&self, index: u64, cmd: &Command, tag: &AppliedTag) -> Result<OpResult, StoreError> {
        Ok(self.apply_inner(index, cmd.now, &cmd.caller, Work::Op(&cmd.op), SINGLE_REPLICA_CLIENT, Some(tag), false)?.result)
    }

    /// [`FsStore::apply_tagged`], and the inodes the command changed (for
    /// recalling what clients cache). Costs one read of each inode record
    /// the command rewrites, to leave out rewrites that change nothing a
    /// query can see.
    /// `client` is the replication client that sent it: it owns the handles
    /// and locks the command opens or takes, and only it may use them.
    pub fn apply_tagged_tracked(&self, index: u64, cmd: &Command, tag: &AppliedTag, client: u64) -> Result<Applied, StoreError> {
        self.apply_inner(index, cmd.now, &cmd.caller, Work::Op(&cmd.op), client, Some(tag), true)
    }

    /// Releases everything `client` holds (its open handles, freeing
    /// unlinked files they kept, and its locks) as the command at `index`:
    /// the replicated service calls it when the client's last session ends.
    /// Never fails with an errno (a gone client holding nothing is fine).
    pub fn apply_client_gone(&self, index: u64, now: Timestamp, tag: &AppliedTag, client: u64) -> Result<Applied, StoreError> {
        let root = Caller::root();
        self.apply_inner(index, now, &root, Work::ClientGone, client, Some(tag), true)
    }

    /// The tag of the last `apply_tagged` (or of the imported image); `None`
    /// for a store never driven by `apply_tagged`.
    pub fn tag(&self) -> Option<AppliedTag> {
        self.applier.lock().expect("applier lock poisoned by an earlier panic").tag
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_inner(
        &self,
        index: u64,
        now: Timestamp,
        caller: &Caller,
        work: Work,
        client: u64,
        tag: Option<&AppliedTag>,
        track: bool,
    ) -> Result<Applied, StoreError> {
        let mut applier = self.applier.lock().expect("applier lock poisoned by an earlier panic");
        assert_eq!(index, applier.meta.applied_index + 1, "apply out of order: index {index} after {}", applier.meta.applied_index);
        if let Some(tag) = tag {
            assert_eq!(tag.last_now, now, "the tag records the command's time");
            if let Some(prev) = &applier.tag {
                assert!(tag.op >= prev.op, "tag op went back: {} after {}", tag.op, prev.op);
                assert!(tag.last_now > prev.last_now, "tagged time did not increase: {:?} after {:?}", tag.last_now, prev.last_now);
            }
        }
        let mut ctx = Ctx::new(Tx::new(&self.db), now, caller, client, applier.meta.clone());
        let outcome = match work {
            Work::Op(op) => execute(&mut ctx, op),
            Work::ClientGone => crate::locks::client_gone(&mut ctx),
        };
        let result = match outcome {
            Ok(reply) => Ok(reply),
            Err(Fail::Errno(e)) => {
                ctx.tx.discard();
                ctx.meta = applier.meta.clone();
                Err(e)
            }
            Err(Fail::Store(e)) => return Err(e),
        };
        // Before the meta record joins the batch: counters belong to no inode.
        let changed = if track { crate::changes::changed_inos(&ctx.tx)? } else { Vec::new() };
        let sync = ctx.sync_requested || self.sync_every_write;
        let mut meta = ctx.meta;
        meta.applied_index = index;
        let mut tx = ctx.tx;
        tx.put_record(Table::Meta, META_KEY.to_vec(), &meta);
        if let Some(tag) = tag {
            tx.put_record(Table::Meta, TAG_KEY.to_vec(), tag);
        }
        let mut wo = WriteOptions::default();
        if self.skip_wal {
            // RocksDB refuses sync without a WAL; durability is elsewhere.
            wo.disable_wal(true);
        } else {
            wo.set_sync(sync);
        }
        self.db.write_opt(tx.into_batch(), &wo)?;
        applier.meta = meta;
        if let Some(tag) = tag {
            applier.tag = Some(*tag);
        }
        self.applied.store(index, Ordering::Release);
        Ok(Applied { result, changed })
    }

    /// Answers a read-only query from one snapshot of the applied state.
    pub fn query(&self, caller: &Caller, q: &Query) -> Result<OpResult, StoreError> {
        let view = SnapView::new(&self.db);
        let outcome = crate::perm::check_query(&view, caller, q).and_then(|()| match q {
            Query::Lookup { parent, name } => namespace::lookup(&view, caller, *parent, name),
            Query::GetAttr { ino } => crate::state::load_inode(&view, *ino).map(|n| Reply::Attr(n.attr())),
            Query::Read { ino, offset, size } => data::read(&view, *ino, *offset, *size),
            Query::ReadLink { ino } => readlink(&view, *ino),
            Query::ReadDir { ino, cookie, max_entries, plus } => namespace::readdir(&view, *ino, *cookie, *max_entries, *plus),
            Query::GetXattr { ino, name } => xattr::getxattr(&view, caller, *ino, name),
            Query::ListXattr { ino } => xattr::listxattr(&view, caller, *ino),
            Query::StatFs => self.statfs(&view),
        });
        match outcome {
            Ok(reply) => Ok(Ok(reply)),
            Err(Fail::Errno(e)) => Ok(Err(e)),
            Err(Fail::Store(e)) => Err(e),
        }
    }

    /// The database, for the read-only checks of `fsck`.
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Makes every applied command durable (WAL fsync; without a WAL there
    /// is nothing to sync: see [`StoreOptions::skip_wal`]).
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.skip_wal {
            return Ok(());
        }
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// SHA-256 over every table in a fixed order, every pair in key order,
    /// each length-prefixed. Equal logs give equal digests.
    pub fn digest(&self) -> Result<[u8; 32], StoreError> {
        let view = SnapView::new(&self.db);
        let mut hasher = StateHasher::new();
        for table in Table::ALL {
            hasher.begin_table(table.name());
            view.for_each(table, |key, value| hasher.pair(key, value))?;
            hasher.end_table();
        }
        Ok(hasher.finish())
    }

    /// The whole state (every table, the tag included) as one self-contained
    /// value, read from one snapshot; O(state) in time and memory. Fails with
    /// `StoreError::Image` beyond `image::IMAGE_BYTES_MAX`.
    pub fn export_image(&self) -> Result<StoreImage, StoreError> {
        crate::image::export(&SnapView::new(&self.db))
    }

    /// Replaces the whole state by `image` in ONE WriteBatch (fsynced): every
    /// key of every table is deleted and the image's pairs written, so a
    /// crash leaves either the old state or the image. Afterwards `digest()`
    /// equals `image.digest()` (asserted). The image was validated when it
    /// was built or decoded.
    pub fn import_image(&self, image: &StoreImage) -> Result<(), StoreError> {
        let mut applier = self.applier.lock().expect("applier lock poisoned by an earlier panic");
        let (meta, tag) = crate::image::import(&self.db, image)?;
        applier.meta = meta;
        applier.tag = tag;
        self.applied.store(applier.meta.applied_index, Ordering::Release);
        drop(applier);
        assert_eq!(self.digest()?, image.digest(), "imported state differs from its image");
        Ok(())
    }

    /// A RocksDB checkpoint (hard links) of the current state in `dir`, which
    /// must not exist. Returns the applied index the checkpoint holds.
    pub fn checkpoint(&self, dir: &Path) -> Result<u64, StoreError> {
        if dir.exists() {
            return Err(StoreError::CheckpointDirExists(dir.display().to_string()));
        }
        // Holding the applier lock: no command lands while the files are linked.
        let applier = self.applier.lock().expect("applier lock poisoned by an earlier panic");
        Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(applier.meta.applied_index)
    }

    fn statfs(&self, view: &SnapView) -> Result<Reply, Fail> {
        let meta: Meta = view.get_record(Table::Meta, META_KEY)?.expect("meta record exists in an open store");
        let (blocks, bfree, bavail) = host_space(&self.dir);
        let files = FILES_MAX;
        let ffree = files.saturating_sub(meta.inodes_live);
        Ok(Reply::StatFs(StatFs { blocks, bfree, bavail, files, ffree, bsize: 4096, namelen: NAME_MAX_BYTES as u32, frsize: 4096 }))
    }
}

/// The tag record, if any (replicated stores only).
pub(crate) fn read_tag(db: &Db) -> Result<Option<AppliedTag>, StoreError> {
    match db.get_cf(cf(db, Table::Meta), TAG_KEY)? {
        Some(bytes) => Ok(Some(decode(Table::Meta, TAG_KEY, &bytes)?)),
        None => Ok(None),
    }
}

/// Space of the file system under the store, in 4096-byte units.
fn host_space(dir: &Path) -> (u64, u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let fallback = (1 << 28, 1 << 27, 1 << 27);
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return fallback;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return fallback;
    }
    let unit = st.f_frsize.max(1) as u64;
    let scale = |n: u64| n.saturating_mul(unit) / 4096;
    (scale(st.f_blocks as u64), scale(st.f_bfree as u64), scale(st.f_bavail as u64))
}

fn readlink(view: &impl View, ino: u64) -> Result<Reply, Fail> {
    let node = crate::state::load_inode(view, ino)?;
    if node.kind != FileKind::Symlink {
        return crate::error::errno(libc::EINVAL);
    }
    Ok(Reply::Data(node.target))
}

/// The client id of every command of a single-replica server (connections
/// have no sessions there: handles are everyone's, as before sessions).
pub const SINGLE_REPLICA_CLIENT: u64 = 0;

/// What one applied command does.
enum Work<'a> {
    Op(&'a Op),
    /// Release what a gone client held.
    ClientGone,
}

/// Runs one operation against the command's context.
fn execute(ctx: &mut Ctx, op: &Op) -> Result<Reply, Fail> {
    match op {
        Op::Create { parent, name, mode, umask, flags, excl } => namespace::create(ctx, *parent, name, *mode, *umask, *flags, *excl),
        Op::Mknod { parent, name, mode, umask, rdev } => namespace::mknod(ctx, *parent, name, *mode, *umask, *rdev),
        Op::Mkdir { parent, name, mode, umask } => namespace::mkdir(ctx, *parent, name, *mode, *umask),
        Op::Symlink { parent, name, target } => namespace::symlink(ctx, *parent, name, target),
        Op::Link { ino, newparent, newname } => namespace::link(ctx, *ino, *newparent, newname),
        Op::Unlink { parent, name } => namespace::unlink(ctx, *parent, name),
        Op::Rmdir { parent, name } => namespace::rmdir(ctx, *parent, name),
        Op::Rename { parent, name, newparent, newname, flags } => namespace::rename(ctx, *parent, name, *newparent, newname, *flags),
        Op::SetAttr { ino, attr } => attrs::setattr(ctx, *ino, attr),
        Op::Open { ino, flags } => attrs::open(ctx, *ino, *flags),
        Op::Release { ino, fh } => attrs::release(ctx, *ino, *fh),
        Op::Write { ino, fh, offset, data, flags } => data::write(ctx, *ino, *fh, *offset, data, *flags),
        Op::Fallocate { ino, fh, offset, length, mode } => data::fallocate(ctx, *ino, *fh, *offset, *length, *mode),
        Op::SetXattr { ino, name, value, flags } => xattr::setxattr(ctx, *ino, name, value, *flags),
        Op::RemoveXattr { ino, name } => xattr::removexattr(ctx, *ino, name),
        Op::Fsync { ino, datasync: _ } => attrs::fsync(ctx, *ino),
        Op::SetLock { ino, fh, lock } => locks::set_lock(ctx, *ino, *fh, lock),
        Op::GetLock { ino, fh, lock } => locks::get_lock(ctx, *ino, *fh, lock),
        Op::KeepAlive => Ok(Reply::Ok),
    }
}

#[cfg(test)]
impl FsStore {
    /// Overwrites one raw record (tests only: corruption).
    pub(crate) fn put_raw(&self, table: Table, key: &[u8], value: &[u8]) {
        self.db.put_cf(cf(&self.db, table), key, value).expect("put");
    }

    /// Number of keys in `table` (tests only).
    pub(crate) fn count_keys(&self, table: Table) -> usize {
        let view = SnapView::new(&self.db);
        let mut count = 0;
        view.for_each(table, |_, _| count += 1).expect("scan");
        count
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<FsStore>();
}
