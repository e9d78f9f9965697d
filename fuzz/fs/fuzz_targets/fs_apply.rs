//! `FsStore::apply` (and `query`) over arbitrary inode-level command
//! sequences: raw inode and handle numbers (mostly the small ones a fresh
//! store hands out, sometimes anything), Open and Release, names and values
//! no kernel sends, any caller among root and two users; commands from
//! three clients (handles and byte-range locks are per client: SetLock,
//! GetLock, opens and releases as another client, a client gone).
//!
//! Fails on: a panic anywhere in apply or query (a poison command: every
//! replica would die at the same op, and again at every replay), a store
//! error, an inconsistent state at the end (`FsStore::fsck`), and, for
//! inputs that ask for it, a replay into a second store that answers or
//! hashes differently (replicas would diverge).

#![no_main]

#[path = "../../scratch.rs"]
mod scratch;

use arbitrary::{Arbitrary, Result, Unstructured};
use chorus_fs::ops::*;
use std::sync::Mutex;

use chorus_fs::{AppliedTag, FsStore, StoreImage, StoreOptions};
use libfuzzer_sys::fuzz_target;

/// Most steps one input runs (keeps an execution in milliseconds).
const STEPS_MAX: usize = 64;

/// An inode number: 0..14 (root is 1, new inodes count up from 2) most of
/// the time, else u64::MAX or anything.
#[derive(Debug, Clone, Copy)]
struct RawIno(u64);

impl<'a> Arbitrary<'a> for RawIno {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(RawIno(match u8::arbitrary(u)? {
            b @ 0..=239 => u64::from(b % 14),
            240..=247 => u64::MAX,
            _ => u64::arbitrary(u)?,
        }))
    }
}

/// A handle number: 0..10 (handles count up from 1) or anything.
#[derive(Debug, Clone, Copy)]
struct RawFh(u64);

impl<'a> Arbitrary<'a> for RawFh {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(RawFh(match u8::arbitrary(u)? {
            b @ 0..=239 => u64::from(b % 10),
            240..=247 => u64::MAX,
            _ => u64::arbitrary(u)?,
        }))
    }
}

/// Names from a tiny alphabet (collisions), the special ones, or raw bytes.
#[derive(Debug, Clone)]
struct Name(Vec<u8>);

impl<'a> Arbitrary<'a> for Name {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        const NAMES: [&[u8]; 8] = [b"a", b"b", b"c", b"", b".", b"..", b"a/b", b"a\0"];
        Ok(Name(match u8::arbitrary(u)? {
            b @ 0..=215 => NAMES[usize::from(b) % 3].to_vec(),
            b @ 216..=239 => NAMES[3 + usize::from(b - 216) % 5].to_vec(),
            240..=247 => vec![b'n'; NAME_MAX_BYTES + 1],
            _ => Vec::<u8>::arbitrary(u)?,
        }))
    }
}

#[derive(Debug, Clone)]
struct XattrName(Vec<u8>);

impl<'a> Arbitrary<'a> for XattrName {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        const NAMES: [&[u8]; 10] = [
            b"user.a",
            b"user.b",
            b"trusted.t",
            b"security.s",
            b"user.",
            b"trusted.",
            b"user.a\0b",
            b"",
            b"system.posix_acl_access",
            b"other",
        ];
        Ok(XattrName(match u8::arbitrary(u)? {
            b @ 0..=239 => NAMES[usize::from(b) % NAMES.len()].to_vec(),
            _ => Vec::<u8>::arbitrary(u)?,
        }))
    }
}

#[derive(Debug, Clone)]
struct Target(Vec<u8>);

impl<'a> Arbitrary<'a> for Target {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Target(match u8::arbitrary(u)? {
            0..=199 => b"t".to_vec(),
            200..=219 => b"".to_vec(),
            220..=229 => b"a\0b".to_vec(),
            230..=239 => vec![b't'; SYMLINK_MAX_BYTES + 1],
            _ => Vec::<u8>::arbitrary(u)?,
        }))
    }
}

/// Mode bits: the usual ones, a file type, or anything.
#[derive(Debug, Clone, Copy)]
struct Mode(u32);

impl<'a> Arbitrary<'a> for Mode {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        const MODES: [u32; 14] = [
            0o644,
            0o755,
            0o777,
            0o7777,
            0o1777,
            0o2755,
            0,
            0o4755,
            libc::S_IFREG | 0o644,
            libc::S_IFIFO | 0o600,
            libc::S_IFCHR,
            libc::S_IFSOCK,
            libc::S_IFDIR | 0o755,
            libc::S_IFLNK,
        ];
        Ok(Mode(match u8::arbitrary(u)? {
            b @ 0..=223 => MODES[usize::from(b) % MODES.len()],
            _ => u32::arbitrary(u)?,
        }))
    }
}

#[derive(Debug, Clone, Copy)]
struct OpenFlags(i32);

impl<'a> Arbitrary<'a> for OpenFlags {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        const FLAGS: [i32; 6] = [
            libc::O_RDONLY,
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_RDWR | libc::O_TRUNC,
            libc::O_WRONLY | libc::O_APPEND,
            libc::O_RDONLY | libc::O_DIRECTORY,
        ];
        Ok(OpenFlags(match u8::arbitrary(u)? {
            b @ 0..=223 => FLAGS[usize::from(b) % FLAGS.len()],
            _ => i32::arbitrary(u)?,
        }))
    }
}

/// Offsets and sizes: small ones (blocks are 64 KiB), the limits, anything.
#[derive(Debug, Clone, Copy)]
struct Offset(u64);

impl<'a> Arbitrary<'a> for Offset {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Offset(match u8::arbitrary(u)? {
            0..=199 => u64::from(u16::arbitrary(u)?) * 5,
            200..=209 => FILE_SIZE_MAX_BYTES - 1,
            210..=219 => FILE_SIZE_MAX_BYTES,
            220..=229 => i64::MAX as u64,
            230..=239 => u64::MAX,
            _ => u64::arbitrary(u)?,
        }))
    }
}

#[derive(Debug, Clone)]
struct Data(Vec<u8>);

impl<'a> Arbitrary<'a> for Data {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Data(match u8::arbitrary(u)? {
            0..=239 => {
                let len = usize::from(u8::arbitrary(u)?);
                vec![u8::arbitrary(u)?; len]
            }
            _ => vec![9u8; 70_000],
        }))
    }
}

/// A replication client id: 0..3 most of the time, else anything.
#[derive(Debug, Clone, Copy)]
struct Client(u64);

impl<'a> Arbitrary<'a> for Client {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Client(match u8::arbitrary(u)? {
            b @ 0..=249 => u64::from(b % 3),
            _ => u64::arbitrary(u)?,
        }))
    }
}

/// A lock request: small owners (conflicts), any range, the three types or
/// anything.
#[derive(Debug, Clone, Copy, Arbitrary)]
struct LockSpec {
    owner: u8,
    start: Offset,
    end: Offset,
    typ: u8,
    raw_typ: i32,
}

impl LockSpec {
    fn lock(self) -> FileLock {
        let typ = match self.typ % 4 {
            0 => libc::F_RDLCK,
            1 => libc::F_WRLCK,
            2 => libc::F_UNLCK,
            _ => self.raw_typ,
        };
        FileLock { owner: u64::from(self.owner % 4), start: self.start.0, end: self.end.0, typ, pid: 7 }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Who {
    Root,
    User,
    UserInRootGroup,
}

impl Who {
    fn caller(self) -> Caller {
        let user = |uid: u32, groups: Vec<u32>| Caller { uid, gid: uid, pid: 1, groups };
        match self {
            Who::Root => Caller::root(),
            Who::User => user(1000, vec![]),
            Who::UserInRootGroup => user(1001, vec![1000, 0]),
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Time {
    Omit,
    Now,
    At(i64, u32),
}

impl Time {
    fn set_time(self) -> Option<SetTime> {
        match self {
            Time::Omit => None,
            Time::Now => Some(SetTime::Now),
            Time::At(sec, nsec) => Some(SetTime::At(Timestamp::new(sec, nsec % 1_100_000_000))),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
enum Step {
    Create(Who, RawIno, Name, Mode, Mode, OpenFlags, bool),
    Mknod(Who, RawIno, Name, Mode, u32),
    Mkdir(Who, RawIno, Name, Mode),
    Symlink(Who, RawIno, Name, Target),
    Link(Who, RawIno, RawIno, Name),
    Unlink(Who, RawIno, Name),
    Rmdir(Who, RawIno, Name),
    Rename(Who, RawIno, Name, RawIno, Name, u8),
    SetAttr {
        who: Who,
        ino: RawIno,
        mode: Option<Mode>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<Offset>,
        atime: Time,
        mtime: Time,
        fh: Option<RawFh>,
    },
    Open(Who, RawIno, OpenFlags),
    Release(Who, RawIno, RawFh),
    Write(Who, RawIno, RawFh, Offset, Data, OpenFlags),
    Fallocate(Who, RawIno, RawFh, Offset, Offset, u8),
    SetXattr(Who, RawIno, XattrName, Data, u8),
    RemoveXattr(Who, RawIno, XattrName),
    Fsync(Who, RawIno),
    Lookup(Who, RawIno, Name),
    GetAttr(RawIno),
    Read(RawIno, Offset, u32),
    ReadLink(RawIno),
    ReadDir(RawIno, u8, u8, bool),
    GetXattr(Who, RawIno, XattrName),
    ListXattr(Who, RawIno),
    OpenAs(Who, Client, RawIno, OpenFlags),
    ReleaseAs(Client, RawIno, RawFh),
    SetLock(Client, RawIno, RawFh, LockSpec),
    GetLock(Client, RawIno, RawFh, LockSpec),
    ClientGone(Client),
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Also replay the log into a second store and compare (half speed).
    replay: bool,
    steps: Vec<Step>,
}

enum Action {
    /// A command of client 0 (the single-replica client).
    Apply(Caller, Op),
    /// A command of another client.
    ApplyAs(u64, Caller, Op),
    Query(Caller, Query),
    /// The client's last session ended.
    Gone(u64),
}

fn action(step: &Step) -> Action {
    use Action::{Apply, ApplyAs, Gone, Query as Q};
    match step.clone() {
        Step::OpenAs(w, c, i, f) => ApplyAs(c.0, w.caller(), Op::Open { ino: i.0, flags: f.0 }),
        Step::ReleaseAs(c, i, f) => ApplyAs(c.0, Caller::root(), Op::Release { ino: i.0, fh: f.0 }),
        Step::SetLock(c, i, f, l) => ApplyAs(c.0, Caller::root(), Op::SetLock { ino: i.0, fh: f.0, lock: l.lock() }),
        Step::GetLock(c, i, f, l) => ApplyAs(c.0, Caller::root(), Op::GetLock { ino: i.0, fh: f.0, lock: l.lock() }),
        Step::ClientGone(c) => Gone(c.0),
        Step::Create(w, p, n, m, um, f, excl) => {
            Apply(w.caller(), Op::Create { parent: p.0, name: n.0, mode: m.0, umask: um.0, flags: f.0, excl })
        }
        Step::Mknod(w, p, n, m, rdev) => Apply(w.caller(), Op::Mknod { parent: p.0, name: n.0, mode: m.0, umask: 0o022, rdev }),
        Step::Mkdir(w, p, n, m) => Apply(w.caller(), Op::Mkdir { parent: p.0, name: n.0, mode: m.0, umask: 0o022 }),
        Step::Symlink(w, p, n, t) => Apply(w.caller(), Op::Symlink { parent: p.0, name: n.0, target: t.0 }),
        Step::Link(w, i, p, n) => Apply(w.caller(), Op::Link { ino: i.0, newparent: p.0, newname: n.0 }),
        Step::Unlink(w, p, n) => Apply(w.caller(), Op::Unlink { parent: p.0, name: n.0 }),
        Step::Rmdir(w, p, n) => Apply(w.caller(), Op::Rmdir { parent: p.0, name: n.0 }),
        Step::Rename(w, p, n, q, m, f) => {
            let flags = match f % 5 {
                0 | 1 => 0,
                2 => libc::RENAME_NOREPLACE,
                3 => libc::RENAME_EXCHANGE,
                _ => u32::from(f),
            };
            Apply(w.caller(), Op::Rename { parent: p.0, name: n.0, newparent: q.0, newname: m.0, flags })
        }
        Step::SetAttr { who, ino, mode, uid, gid, size, atime, mtime, fh } => Apply(
            who.caller(),
            Op::SetAttr {
                ino: ino.0,
                attr: SetAttr {
                    mode: mode.map(|m| m.0),
                    uid,
                    gid,
                    size: size.map(|s| s.0),
                    atime: atime.set_time(),
                    mtime: mtime.set_time(),
                    ctime: None,
                    fh: fh.map(|f| f.0),
                },
            },
        ),
        Step::Open(w, i, f) => Apply(w.caller(), Op::Open { ino: i.0, flags: f.0 }),
        Step::Release(w, i, f) => Apply(w.caller(), Op::Release { ino: i.0, fh: f.0 }),
        Step::Write(w, i, f, o, d, fl) => Apply(w.caller(), Op::Write { ino: i.0, fh: f.0, offset: o.0, data: d.0, flags: fl.0 }),
        Step::Fallocate(w, i, f, o, l, m) => {
            use libc::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH, FALLOC_FL_ZERO_RANGE as ZERO};
            let mode = [0, KEEP, PUNCH | KEEP, ZERO, ZERO | KEEP, PUNCH, i32::from(m)][usize::from(m) % 7];
            Apply(w.caller(), Op::Fallocate { ino: i.0, fh: f.0, offset: o.0, length: l.0, mode })
        }
        Step::SetXattr(w, i, n, v, f) => {
            let flags = [0, libc::XATTR_CREATE, libc::XATTR_REPLACE, i32::from(f)][usize::from(f) % 4];
            let mut value = v.0;
            value.truncate(64);
            Apply(w.caller(), Op::SetXattr { ino: i.0, name: n.0, value, flags })
        }
        Step::RemoveXattr(w, i, n) => Apply(w.caller(), Op::RemoveXattr { ino: i.0, name: n.0 }),
        Step::Fsync(w, i) => Apply(w.caller(), Op::Fsync { ino: i.0, datasync: false }),
        Step::Lookup(w, p, n) => Q(w.caller(), Query::Lookup { parent: p.0, name: n.0 }),
        Step::GetAttr(i) => Q(Caller::root(), Query::GetAttr { ino: i.0 }),
        Step::Read(i, o, size) => Q(Caller::root(), Query::Read { ino: i.0, offset: o.0, size }),
        Step::ReadLink(i) => Q(Caller::root(), Query::ReadLink { ino: i.0 }),
        Step::ReadDir(i, cookie, max, plus) => Q(
            Caller::root(),
            Query::ReadDir {
                ino: i.0,
                cookie: if cookie == 255 { u64::MAX } else { u64::from(cookie % 8) },
                max_entries: u32::from(max),
                plus,
            },
        ),
        Step::GetXattr(w, i, n) => Q(w.caller(), Query::GetXattr { ino: i.0, name: n.0 }),
        Step::ListXattr(w, i) => Q(w.caller(), Query::ListXattr { ino: i.0 }),
    }
}

/// The stores of this process, reused by a run of inputs: opening a RocksDB
/// per input costs ~100 ms, a reset to the fresh state (`import_image`:
/// every key deleted, the root written, the digest checked) well under one.
/// Each reset leaves range tombstones in the memtable that every later read
/// wades through, so the stores are replaced every `INPUTS_PER_STORE` inputs.
struct Stores {
    one: FsStore,
    two: FsStore,
    fresh: StoreImage,
    inputs: u64,
    // Dropped after the stores (fields drop in declaration order).
    _dir: Folder,
}

/// A folder of the process's scratch directory (../../scratch.rs), removed
/// when dropped; the scratch directory itself goes at exit.
struct Folder(std::path::PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const INPUTS_PER_STORE: u64 = 64;

impl Stores {
    fn new() -> Stores {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Folder(scratch::scratch("fs_apply").join(generation.to_string()));
        std::fs::create_dir_all(&dir.0).expect("a folder for the stores");
        let one = open_store(&dir.0.join("one"));
        let two = open_store(&dir.0.join("two"));
        let fresh = one.export_image().expect("image of a fresh store");
        Stores { one, two, fresh, inputs: 0, _dir: dir }
    }
}

fn open_store(dir: &std::path::Path) -> FsStore {
    // No WAL: nothing outlives the process.
    let options = StoreOptions { skip_wal: true, ..StoreOptions::default() };
    FsStore::open(dir, options).expect("open a fresh store")
}

static STORES: Mutex<Option<Stores>> = Mutex::new(None);

/// One tagged command of `client` at `index` (or, for `None`, the release
/// of everything the client held), as the replicated service applies it.
fn apply(store: &FsStore, index: u64, client: u64, cmd: Option<&Command>, now: Timestamp) -> OpResult {
    let tag = AppliedTag { op: index, last_now: now };
    let applied = match cmd {
        Some(cmd) => store.apply_tagged_tracked(index, cmd, &tag, client),
        None => store.apply_client_gone(index, now, &tag, client),
    };
    let applied = applied.expect("apply: store error");
    if cmd.is_none() {
        assert_eq!(applied.result, Ok(Reply::Ok), "releasing what a gone client held failed");
    }
    applied.result
}

fuzz_target!(|input: Input| {
    // A panic poisons the lock, but a panic also ends the process.
    let mut slot = STORES.lock().expect("stores lock");
    if slot.as_ref().is_none_or(|s| s.inputs >= INPUTS_PER_STORE) {
        *slot = None; // closes the old RocksDBs before new ones open
        *slot = Some(Stores::new());
    }
    let stores = slot.as_mut().expect("stores just made");
    stores.inputs += 1;
    let Stores { one: store, two: replica, fresh, .. } = &*stores;
    store.import_image(fresh).expect("reset to the fresh state");
    // (client, command or None for "client gone", reply), applied tagged as
    // the replicated service applies them.
    let mut log: Vec<(u64, Option<Command>, OpResult)> = Vec::new();
    for step in input.steps.iter().take(STEPS_MAX) {
        let index = log.len() as u64 + 1;
        let now = Timestamp::new(1_000 + index as i64, 7);
        let (client, cmd) = match action(step) {
            Action::Apply(caller, op) => (0, Some(Command { now, caller, op })),
            Action::ApplyAs(client, caller, op) => (client, Some(Command { now, caller, op })),
            Action::Gone(client) => (client, None),
            Action::Query(caller, query) => {
                let _answer = store.query(&caller, &query).expect("query: store error");
                continue;
            }
        };
        let reply = apply(store, index, client, cmd.as_ref(), now);
        log.push((client, cmd, reply));
    }
    let problems = store.fsck().expect("fsck: store error");
    assert!(problems.is_empty(), "inconsistent state after {} commands: {problems:#?}", log.len());
    if input.replay {
        replica.import_image(fresh).expect("reset to the fresh state");
        for (i, (client, cmd, reply)) in log.iter().enumerate() {
            let index = i as u64 + 1;
            let now = Timestamp::new(1_000 + index as i64, 7);
            let again = apply(replica, index, *client, cmd.as_ref(), now);
            assert_eq!(&again, reply, "replay answered command {} differently", i + 1);
        }
        assert_eq!(replica.digest().unwrap(), store.digest().unwrap(), "replay diverged");
    }
});
