//! Callbacks (issue 9) on `FsMachine`: `take_changed` names exactly the
//! inodes a command changed, `read_set` exactly the inodes a query's answer
//! came from. A missed inode is a client reading stale data, so every op kind
//! is checked against its exact set, and a random run checks that every
//! inode whose observable state moved across an apply is in that apply's set
//! (and nothing else is).

use std::collections::BTreeMap;

use chorus_fs::ops::{Caller, Errno, FileKind, Ino, Op, OpResult, Query, Reply, Request, SetAttr, SetTime, Timestamp, ROOT_INO};
use chorus_fs::StoreOptions;
use chorus_replication::{ApplyContext, StateMachine};
use chorus_server::machine::{decode_result, encode_request, FsMachine};

fn user(uid: u32) -> Caller {
    Caller { uid, gid: uid, pid: 1, groups: vec![] }
}

/// A machine fed one command per entry, with its changed set taken after each.
struct Bench {
    _dir: tempfile::TempDir,
    m: FsMachine,
    op: u64,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let m = FsMachine::open(&dir.path().join("db"), StoreOptions::default()).expect("open machine");
        Bench { _dir: dir, m, op: 0 }
    }

    fn apply_bytes(&mut self, bytes: &[u8]) -> (OpResult, Vec<u64>) {
        self.op += 1;
        let reply = self.m.apply(ApplyContext { op: self.op, timestamp_ms: 1_700_000_000_000 + self.op, client: 1 }, bytes);
        let changed = self.m.take_changed();
        assert_eq!(self.m.take_changed(), Vec::<u64>::new(), "taken once");
        (decode_result(&reply).expect("reply decodes"), changed)
    }

    fn run_as(&mut self, caller: &Caller, op: Op) -> (OpResult, Vec<u64>) {
        self.apply_bytes(&encode_request(&Request::Mutate { caller: caller.clone(), op }).unwrap())
    }

    fn run(&mut self, op: Op) -> (OpResult, Vec<u64>) {
        self.run_as(&Caller::root(), op)
    }

    /// Runs `op`, which must succeed, and returns its changed set.
    fn ok(&mut self, op: Op) -> Vec<u64> {
        let (result, changed) = self.run(op.clone());
        assert!(result.is_ok(), "{op:?} gave {result:?}");
        changed
    }

    fn query_as(&self, caller: &Caller, query: Query) -> (OpResult, Vec<u64>) {
        let bytes = encode_request(&Request::Query { caller: caller.clone(), query }).unwrap();
        let answer = self.m.query(&bytes);
        let read_set = self.m.read_set(&bytes, &answer);
        (decode_result(&answer).expect("answer decodes"), read_set)
    }

    fn query(&self, query: Query) -> (OpResult, Vec<u64>) {
        self.query_as(&Caller::root(), query)
    }

    fn mkdir(&mut self, parent: Ino, name: &str) -> Ino {
        match self.run(Op::Mkdir { parent, name: name.into(), mode: 0o755, umask: 0 }).0 {
            Ok(Reply::Entry(attr)) => attr.ino,
            other => panic!("mkdir {name}: {other:?}"),
        }
    }

    /// A new file, open read-write: (ino, fh).
    fn create(&mut self, parent: Ino, name: &str) -> (Ino, u64) {
        let op = Op::Create { parent, name: name.into(), mode: 0o644, umask: 0, flags: libc::O_RDWR, excl: true };
        match self.run(op).0 {
            Ok(Reply::Created { attr, fh }) => (attr.ino, fh),
            other => panic!("create {name}: {other:?}"),
        }
    }

    fn write(&mut self, ino: Ino, fh: u64, data: &[u8]) -> Vec<u64> {
        self.ok(Op::Write { ino, fh, offset: 0, data: data.to_vec(), flags: 0 })
    }
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

fn enoent() -> OpResult {
    Err(Errno(libc::ENOENT))
}

#[test]
fn changed_by_creating_ops_is_the_parent_and_the_new_inode() {
    let mut b = Bench::new();
    let d = b.mkdir(ROOT_INO, "d");
    assert_eq!(b.op, 1);
    let (result, changed) = b.run(Op::Mkdir { parent: d, name: b"sub".to_vec(), mode: 0o755, umask: 0 });
    let Ok(Reply::Entry(sub)) = result else { panic!("{result:?}") };
    assert_eq!(changed, sorted(vec![d, sub.ino]), "mkdir");

    let (result, changed) = b.run(Op::Create { parent: d, name: b"f".to_vec(), mode: 0o644, umask: 0, flags: libc::O_RDWR, excl: true });
    let Ok(Reply::Created { attr: f, .. }) = result else { panic!("{result:?}") };
    assert_eq!(changed, vec![d, f.ino], "create");

    let (result, changed) = b.run(Op::Mknod { parent: d, name: b"p".to_vec(), mode: libc::S_IFIFO | 0o644, umask: 0, rdev: 0 });
    let Ok(Reply::Entry(p)) = result else { panic!("{result:?}") };
    assert_eq!(changed, vec![d, p.ino], "mknod");

    let (result, changed) = b.run(Op::Symlink { parent: d, name: b"s".to_vec(), target: b"f".to_vec() });
    let Ok(Reply::Entry(s)) = result else { panic!("{result:?}") };
    assert_eq!(changed, vec![d, s.ino], "symlink");

    // A hard link in another directory: that directory and the file (nlink).
    assert_eq!(b.ok(Op::Link { ino: f.ino, newparent: ROOT_INO, newname: b"g".to_vec() }), vec![ROOT_INO, f.ino], "link");
}

#[test]
fn changed_by_removing_ops_is_the_parent_and_the_victim() {
    let mut b = Bench::new();
    let d = b.mkdir(ROOT_INO, "d");
    let (f, fh) = b.create(d, "f");
    b.ok(Op::Link { ino: f, newparent: d, newname: b"f2".to_vec() });
    // nlink 2 → 1: the file stays, its nlink (and ctime) changed.
    assert_eq!(b.ok(Op::Unlink { parent: d, name: b"f".to_vec() }), vec![d, f], "unlink of one of two links");
    // The last name of an open file: kept until the release.
    assert_eq!(b.ok(Op::Unlink { parent: d, name: b"f2".to_vec() }), vec![d, f], "last unlink, open");
    assert_eq!(b.query(Query::GetAttr { ino: f }).0.map(|r| matches!(r, Reply::Attr(a) if a.nlink == 0)), Ok(true));
    // The release frees the orphan: its object is gone.
    assert_eq!(b.ok(Op::Release { ino: f, fh }), vec![f], "release of an orphan");
    assert_eq!(b.query(Query::GetAttr { ino: f }).0, enoent());
    // The last name of a closed file: freed at once.
    let (g, gh) = b.create(d, "g");
    assert_eq!(b.ok(Op::Release { ino: g, fh: gh }), Vec::<u64>::new(), "release of a linked file");
    assert_eq!(b.ok(Op::Unlink { parent: d, name: b"g".to_vec() }), vec![d, g], "unlink frees");
    let sub = b.mkdir(d, "sub");
    assert_eq!(b.ok(Op::Rmdir { parent: d, name: b"sub".to_vec() }), vec![d, sub], "rmdir");
    assert_eq!(b.ok(Op::Rmdir { parent: ROOT_INO, name: b"d".to_vec() }), vec![ROOT_INO, d], "rmdir of the last subdirectory");
}

#[test]
fn changed_by_rename_is_both_parents_the_moved_and_the_replaced_inode() {
    let mut b = Bench::new();
    let (p1, p2) = (b.mkdir(ROOT_INO, "p1"), b.mkdir(ROOT_INO, "p2"));
    let (a, ah) = b.create(p1, "a");
    let (c, ch) = b.create(p2, "c");
    b.ok(Op::Release { ino: a, fh: ah });
    b.ok(Op::Release { ino: c, fh: ch });
    let rename = |parent, name: &str, newparent, newname: &str, flags| Op::Rename {
        parent,
        name: name.into(),
        newparent,
        newname: newname.into(),
        flags,
    };
    // Within one directory: the directory and the moved inode (ctime).
    assert_eq!(b.ok(rename(p1, "a", p1, "a1", 0)), sorted(vec![p1, a]), "rename within a directory");
    // Over an existing file in another directory: c is freed.
    assert_eq!(b.ok(rename(p1, "a1", p2, "c", 0)), sorted(vec![p1, p2, a, c]), "rename over a file");
    assert_eq!(b.query(Query::GetAttr { ino: c }).0, enoent());
    // Exchange: both parents and both inodes.
    let (e, eh) = b.create(p1, "e");
    b.ok(Op::Release { ino: e, fh: eh });
    assert_eq!(b.ok(rename(p1, "e", p2, "c", libc::RENAME_EXCHANGE)), sorted(vec![p1, p2, a, e]), "exchange");
    // A directory across parents: both parents (nlink) and the directory ("..").
    let sub = b.mkdir(p1, "sub");
    assert_eq!(b.ok(rename(p1, "sub", p2, "sub", 0)), sorted(vec![p1, p2, sub]), "directory move");
    // Over an empty directory: it is freed.
    let empty = b.mkdir(p1, "empty");
    assert_eq!(b.ok(rename(p2, "sub", p1, "empty", 0)), sorted(vec![p1, p2, sub, empty]), "over an empty directory");
    // Two names of one inode: Linux does nothing, nor do we.
    b.ok(Op::Link { ino: a, newparent: p2, newname: b"a2".to_vec() });
    assert_eq!(b.ok(rename(p2, "a2", p1, "e", 0)), Vec::<u64>::new(), "rename onto another name of the same inode");
    // Refused: nothing.
    let (result, changed) = b.run(rename(p2, "a2", p1, "e", libc::RENAME_NOREPLACE));
    assert_eq!((result, changed), (Err(Errno(libc::EEXIST)), vec![]));
}

#[test]
fn changed_by_data_attribute_and_xattr_ops_is_the_inode_alone() {
    let mut b = Bench::new();
    let (f, fh) = b.create(ROOT_INO, "f");
    assert_eq!(b.write(f, fh, b"hello"), vec![f], "write");
    assert_eq!(b.write(f, fh, b""), Vec::<u64>::new(), "an empty write changes nothing");
    let truncate = SetAttr { size: Some(2), ..SetAttr::default() };
    assert_eq!(b.ok(Op::SetAttr { ino: f, attr: truncate }), vec![f], "truncate");
    assert_eq!(b.ok(Op::SetAttr { ino: f, attr: SetAttr { mode: Some(0o600), ..SetAttr::default() } }), vec![f], "chmod");
    let times = SetAttr { atime: Some(SetTime::At(Timestamp::new(5, 0))), mtime: Some(SetTime::Now), ..SetAttr::default() };
    assert_eq!(b.ok(Op::SetAttr { ino: f, attr: times }), vec![f], "utimens");
    assert_eq!(b.ok(Op::SetAttr { ino: f, attr: SetAttr::default() }), Vec::<u64>::new(), "an empty setattr");
    assert_eq!(b.ok(Op::Fallocate { ino: f, fh, offset: 0, length: 100_000, mode: 0 }), vec![f], "fallocate");
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(b.ok(Op::Fallocate { ino: f, fh, offset: 0, length: 65536, mode: punch }), vec![f], "punch");
    let set = |flags| Op::SetXattr { ino: f, name: b"user.k".to_vec(), value: b"v".to_vec(), flags };
    assert_eq!(b.ok(set(0)), vec![f], "setxattr");
    assert_eq!(b.run(set(libc::XATTR_CREATE)), (Err(Errno(libc::EEXIST)), vec![]), "setxattr refused");
    assert_eq!(b.ok(Op::RemoveXattr { ino: f, name: b"user.k".to_vec() }), vec![f], "removexattr");
    assert_eq!(b.run(Op::RemoveXattr { ino: f, name: b"user.k".to_vec() }), (Err(Errno(libc::ENODATA)), vec![]));
    assert_eq!(b.ok(Op::Fsync { ino: f, datasync: false }), Vec::<u64>::new(), "fsync");
    // Directories: their attributes are their object too.
    assert_eq!(b.ok(Op::SetAttr { ino: ROOT_INO, attr: SetAttr { mode: Some(0o777), ..SetAttr::default() } }), vec![ROOT_INO]);
}

#[test]
fn open_and_release_change_only_what_they_truncate_or_free() {
    let mut b = Bench::new();
    let d = b.mkdir(ROOT_INO, "d");
    let (f, fh) = b.create(d, "f");
    b.write(f, fh, b"data");
    // Only the open count moves: no query sees it, no cached copy goes stale.
    let (result, changed) = b.run(Op::Open { ino: f, flags: libc::O_RDONLY });
    let Ok(Reply::Opened { fh: ro, .. }) = result else { panic!("{result:?}") };
    assert_eq!(changed, Vec::<u64>::new(), "open");
    assert_eq!(b.ok(Op::Release { ino: f, fh: ro }), Vec::<u64>::new(), "release");
    // A non-exclusive create of an existing name is an open.
    let create = |flags| Op::Create { parent: d, name: b"f".to_vec(), mode: 0o644, umask: 0, flags, excl: false };
    assert_eq!(b.ok(create(libc::O_RDWR)), Vec::<u64>::new(), "create of an existing name");
    // O_TRUNC drops the data: the file changed, its directory did not.
    assert_eq!(b.ok(create(libc::O_RDWR | libc::O_TRUNC)), vec![f], "create with O_TRUNC");
    assert_eq!(b.ok(Op::Open { ino: f, flags: libc::O_WRONLY | libc::O_TRUNC }), vec![f], "open with O_TRUNC");
}

#[test]
fn a_failed_or_refused_command_changes_nothing() {
    let mut b = Bench::new();
    let (f, fh) = b.create(ROOT_INO, "f");
    // Even when the set of the previous command was never taken.
    b.op += 1;
    let mkdir = encode_request(&Request::Mutate {
        caller: Caller::root(),
        op: Op::Mkdir { parent: ROOT_INO, name: b"d".to_vec(), mode: 0o755, umask: 0 },
    })
    .unwrap();
    b.m.apply(ApplyContext { op: b.op, timestamp_ms: 1, client: 1 }, &mkdir);
    assert_eq!(b.run(Op::Unlink { parent: ROOT_INO, name: b"missing".to_vec() }), (enoent(), vec![]));
    assert_eq!(b.m.take_changed(), Vec::<u64>::new());
    // Permission refused partway (after the checks of the name): nothing.
    let op = Op::Write { ino: f, fh: fh + 100, offset: 0, data: b"x".to_vec(), flags: 0 };
    assert_eq!(b.run(op), (Err(Errno(libc::EBADF)), vec![]));
    let (result, changed) = b.run_as(&user(1000), Op::Unlink { parent: ROOT_INO, name: b"f".to_vec() });
    assert_eq!((result, changed), (Err(Errno(libc::EACCES)), vec![]));
    // Garbage and queries in the log.
    assert_eq!(b.apply_bytes(b"garbage"), (Err(Errno(libc::EINVAL)), vec![]));
    let query = encode_request(&Request::Query { caller: Caller::root(), query: Query::GetAttr { ino: f } }).unwrap();
    assert_eq!(b.apply_bytes(&query), (Err(Errno(libc::EINVAL)), vec![]));
}

#[test]
fn a_restore_leaves_no_changed_set_behind() {
    let mut b = Bench::new();
    let image = b.m.checkpoint();
    b.op += 1;
    let mkdir = encode_request(&Request::Mutate {
        caller: Caller::root(),
        op: Op::Mkdir { parent: ROOT_INO, name: b"d".to_vec(), mode: 0o755, umask: 0 },
    })
    .unwrap();
    b.m.apply(ApplyContext { op: b.op, timestamp_ms: 1, client: 1 }, &mkdir);
    b.m.restore(b.op, &image).expect("restore");
    assert_eq!(b.m.take_changed(), Vec::<u64>::new());
}

#[test]
fn read_set_of_each_query_kind() {
    let mut b = Bench::new();
    let d = b.mkdir(ROOT_INO, "d");
    let sub = b.mkdir(d, "sub");
    let (f, fh) = b.create(d, "f");
    b.write(f, fh, b"hello");
    b.ok(Op::SetXattr { ino: f, name: b"user.k".to_vec(), value: b"v".to_vec(), flags: 0 });
    let s = match b.run(Op::Symlink { parent: d, name: b"s".to_vec(), target: b"f".to_vec() }).0 {
        Ok(Reply::Entry(attr)) => attr.ino,
        other => panic!("{other:?}"),
    };
    let lookup = |name: &str| Query::Lookup { parent: d, name: name.into() };

    assert_eq!(b.query(Query::GetAttr { ino: f }).1, vec![f], "getattr");
    assert_eq!(b.query(Query::GetAttr { ino: 999 }).1, Vec::<u64>::new(), "getattr of a missing inode");
    assert_eq!(b.query(Query::Read { ino: f, offset: 0, size: 10 }), (Ok(Reply::Data(b"hello".to_vec())), vec![f]), "read");
    assert_eq!(b.query(Query::Read { ino: d, offset: 0, size: 10 }), (Err(Errno(libc::EISDIR)), vec![]), "read of a directory");
    assert_eq!(b.query(Query::ReadLink { ino: s }).1, vec![s], "readlink");
    assert_eq!(b.query(Query::ReadLink { ino: f }).1, Vec::<u64>::new(), "readlink of a file");
    assert_eq!(b.query(Query::GetXattr { ino: f, name: b"user.k".to_vec() }).1, vec![f], "getxattr");
    assert_eq!(b.query(Query::GetXattr { ino: f, name: b"user.x".to_vec() }), (Err(Errno(libc::ENODATA)), vec![]));
    assert_eq!(b.query(Query::ListXattr { ino: f }).1, vec![f], "listxattr");
    assert_eq!(b.query(Query::StatFs).1, Vec::<u64>::new(), "statfs");

    // Lookup: the directory (its entries) and the inode found.
    assert_eq!(b.query(lookup("f")).1, sorted(vec![d, f]), "lookup");
    assert_eq!(b.query(lookup("sub")).1, sorted(vec![d, sub]), "lookup of a directory");
    assert_eq!(b.query(lookup(".")).1, vec![d], "lookup of .");
    assert_eq!(b.query(lookup("..")).1, sorted(vec![ROOT_INO, d]), "lookup of ..");
    // A negative entry is the directory's.
    assert_eq!(b.query(lookup("nothing")), (enoent(), vec![d]), "negative lookup");
    assert_eq!(b.query(Query::Lookup { parent: 999, name: b"x".to_vec() }), (enoent(), vec![999]), "in a missing directory");
    // Other errors are not cached.
    assert_eq!(b.query(Query::Lookup { parent: f, name: b"x".to_vec() }), (Err(Errno(libc::ENOTDIR)), vec![]));
    assert_eq!(b.query(Query::Lookup { parent: d, name: vec![b'x'; 300] }), (Err(Errno(libc::ENAMETOOLONG)), vec![]));
    b.ok(Op::SetAttr { ino: d, attr: SetAttr { mode: Some(0o700), ..SetAttr::default() } });
    assert_eq!(b.query_as(&user(1000), lookup("nothing")), (Err(Errno(libc::EACCES)), vec![]));

    // Readdir: the directory; with plus also every inode whose attributes
    // came along ("." is d, ".." the root).
    let readdir = |plus, cookie, max_entries| Query::ReadDir { ino: d, cookie, max_entries, plus };
    assert_eq!(b.query(readdir(false, 0, 100)).1, vec![d], "readdir");
    assert_eq!(b.query(readdir(true, 0, 100)).1, sorted(vec![ROOT_INO, d, sub, f, s]), "readdirplus");
    let (result, set) = b.query(readdir(true, 2, 1));
    let Ok(Reply::Dir(entries)) = result else { panic!("{result:?}") };
    assert_eq!(entries.len(), 1);
    assert_eq!(set, sorted(vec![d, entries[0].ino]), "one page of readdirplus");
    assert_eq!(b.query(Query::ReadDir { ino: f, cookie: 0, max_entries: 10, plus: true }).1, Vec::<u64>::new(), "readdir of a file");

    // Bytes that are not a query, or not an answer: nothing.
    let getattr = encode_request(&Request::Query { caller: Caller::root(), query: Query::GetAttr { ino: f } }).unwrap();
    let answer = b.m.query(&getattr);
    assert_eq!(b.m.read_set(&getattr, &answer), vec![f]);
    assert_eq!(b.m.read_set(b"garbage", &answer), Vec::<u64>::new());
    assert_eq!(b.m.read_set(&getattr, b"garbage"), Vec::<u64>::new());
    let mutation = encode_request(&Request::Mutate { caller: Caller::root(), op: Op::Fsync { ino: f, datasync: false } }).unwrap();
    assert_eq!(b.m.read_set(&mutation, &answer), Vec::<u64>::new());
    // An answer of another kind than the query's (not from this machine).
    let other = chorus_server::machine::encode_result(&Ok(Reply::Data(vec![])));
    assert_eq!(b.m.read_set(&getattr, &other), Vec::<u64>::new());
}

/// xorshift64*: a deterministic stream without extra dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

const NAMES: &[&[u8]] = &[b"a", b"b", b"c"];
const XATTRS: &[&[u8]] = &[b"user.x", b"user.y", b"trusted.z"];

/// One directory entry as readdir gives it: (cookie, name, ino, kind).
type Entry = (u64, Vec<u8>, Ino, FileKind);

/// Everything a query can answer about one inode's object, with other
/// inodes named only by number (their attributes are their own objects).
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    attr: OpResult,
    data: Option<OpResult>,
    link: OpResult,
    xattrs: Vec<OpResult>,
    /// Directories: every entry as (cookie, name, ino, kind), and what
    /// each lookup finds (a number or an errno).
    entries: Option<Vec<Entry>>,
    lookups: Vec<Result<Ino, Errno>>,
}

fn observe(b: &Bench, ino: Ino) -> Seen {
    let attr = b.query(Query::GetAttr { ino }).0;
    let kind = match &attr {
        Ok(Reply::Attr(a)) => Some((a.kind, a.size)),
        _ => None,
    };
    let data = match kind {
        Some((FileKind::File, size)) => Some(b.query(Query::Read { ino, offset: 0, size: size as u32 + 1 }).0),
        _ => None,
    };
    let mut xattrs = vec![b.query(Query::ListXattr { ino }).0];
    xattrs.extend(XATTRS.iter().map(|name| b.query(Query::GetXattr { ino, name: name.to_vec() }).0));
    let (mut entries, mut lookups) = (None, Vec::new());
    if let Some((FileKind::Dir, _)) = kind {
        let mut all = Vec::new();
        let mut cookie = 0;
        loop {
            let Ok(Reply::Dir(page)) = b.query(Query::ReadDir { ino, cookie, max_entries: 2, plus: false }).0 else { panic!() };
            let Some(last) = page.last() else { break };
            cookie = last.cookie;
            all.extend(page.into_iter().map(|e| (e.cookie, e.name, e.ino, e.kind)));
        }
        entries = Some(all);
        for name in NAMES.iter().copied().chain([&b".."[..], b"."]) {
            let found = match b.query(Query::Lookup { parent: ino, name: name.to_vec() }).0 {
                Ok(Reply::Entry(a)) => Ok(a.ino),
                Ok(other) => panic!("lookup replied {other:?}"),
                Err(e) => Err(e),
            };
            lookups.push(found);
        }
    }
    Seen { attr, data, link: b.query(Query::ReadLink { ino }).0, xattrs, entries, lookups }
}

/// Every inode up to `last` (one past the newest: a stray new one shows).
fn observe_all(b: &Bench, last: Ino) -> BTreeMap<Ino, Seen> {
    (ROOT_INO..=last).map(|ino| (ino, observe(b, ino))).collect()
}

/// Queries a client may cache, with their answers and read sets.
type Cached = Vec<(Query, OpResult, Vec<Ino>)>;

/// Every cacheable query about inodes up to `last` (lookups of present,
/// absent and special names; readdir whole, plus or not, and a page).
fn cacheable(b: &Bench, last: Ino) -> Cached {
    let mut queries = Vec::new();
    for ino in ROOT_INO..=last {
        queries.extend([
            Query::GetAttr { ino },
            Query::Read { ino, offset: 0, size: 1 << 20 },
            Query::ReadLink { ino },
            Query::ListXattr { ino },
            Query::ReadDir { ino, cookie: 0, max_entries: 4096, plus: false },
            Query::ReadDir { ino, cookie: 0, max_entries: 4096, plus: true },
            Query::ReadDir { ino, cookie: 3, max_entries: 1, plus: true },
        ]);
        queries.extend(XATTRS.iter().map(|name| Query::GetXattr { ino, name: name.to_vec() }));
        let names = NAMES.iter().copied().chain([&b"."[..], b"..", b"absent"]);
        queries.extend(names.map(|name| Query::Lookup { parent: ino, name: name.to_vec() }));
    }
    queries
        .into_iter()
        .filter_map(|q| {
            let (answer, read_set) = b.query(q.clone());
            (!read_set.is_empty()).then_some((q, answer, read_set))
        })
        .collect()
}

/// A random command built from what the state holds now (so most succeed).
fn random_op(rng: &mut Rng, seen: &BTreeMap<Ino, Seen>, handles: &[(Ino, u64)]) -> Op {
    let kind_of = |s: &Seen| match &s.attr {
        Ok(Reply::Attr(a)) => Some(a.kind),
        _ => None,
    };
    let live: Vec<Ino> = seen.iter().filter(|(_, s)| kind_of(s).is_some()).map(|(i, _)| *i).collect();
    let dirs: Vec<Ino> = seen.iter().filter(|(_, s)| kind_of(s) == Some(FileKind::Dir)).map(|(i, _)| *i).collect();
    let files: Vec<Ino> = seen.iter().filter(|(_, s)| kind_of(s) == Some(FileKind::File)).map(|(i, _)| *i).collect();
    // Names in use, by kind: most removals and renames should find their victim.
    let entries: Vec<(Ino, Vec<u8>, FileKind)> = seen
        .iter()
        .flat_map(|(dir, s)| s.entries.iter().flatten().filter(|e| e.1 != b"." && e.1 != b"..").map(|e| (*dir, e.1.clone(), e.3)))
        .collect();
    let existing = |rng: &mut Rng, want: Option<FileKind>| {
        let fit: Vec<_> = entries.iter().filter(|e| want.is_none_or(|k| (e.2 == FileKind::Dir) == (k == FileKind::Dir))).collect();
        if fit.is_empty() || rng.below(4) == 0 {
            None
        } else {
            let (dir, name, _) = rng.pick(&fit);
            Some((*dir, name.clone()))
        }
    };
    let name = |rng: &mut Rng| rng.pick(NAMES).to_vec();
    let dir = |rng: &mut Rng| rng.pick(&dirs);
    let victim = |rng: &mut Rng, want| existing(rng, want).unwrap_or_else(|| (dir(rng), name(rng)));
    let any = |rng: &mut Rng| if rng.below(10) == 0 { 1 + rng.below(live.len() as u64 + 3) } else { rng.pick(&live) };
    let handle = |rng: &mut Rng| if handles.is_empty() || rng.below(10) == 0 { (any(rng), 999) } else { rng.pick(handles) };
    match rng.below(22) {
        0 | 1 => Op::Create {
            parent: dir(rng),
            name: name(rng),
            mode: 0o644,
            umask: 0o022,
            flags: rng.pick(&[libc::O_RDWR, libc::O_RDONLY, libc::O_RDWR | libc::O_TRUNC]),
            excl: rng.below(2) == 0,
        },
        2 | 20 | 21 => Op::Mkdir { parent: dir(rng), name: name(rng), mode: 0o755, umask: 0 },
        3 => Op::Mknod { parent: dir(rng), name: name(rng), mode: libc::S_IFIFO | 0o600, umask: 0, rdev: 0 },
        4 => Op::Symlink { parent: dir(rng), name: name(rng), target: name(rng) },
        5 => Op::Link { ino: if files.is_empty() { any(rng) } else { rng.pick(&files) }, newparent: dir(rng), newname: name(rng) },
        6 => {
            let (parent, name) = victim(rng, Some(FileKind::File));
            Op::Unlink { parent, name }
        }
        7 => {
            let (parent, name) = victim(rng, Some(FileKind::Dir));
            Op::Rmdir { parent, name }
        }
        8 | 9 => {
            let (parent, old) = victim(rng, None);
            let (newparent, newname) = if rng.below(2) == 0 { victim(rng, None) } else { (dir(rng), name(rng)) };
            let flags = rng.pick(&[0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]);
            Op::Rename { parent, name: old, newparent, newname, flags }
        }
        10 => {
            let mut attr = SetAttr::default();
            match rng.below(4) {
                0 => attr.size = Some(rng.below(150_000)),
                1 => attr.mode = Some(0o600 | rng.below(0o200) as u32),
                2 => attr.mtime = Some(SetTime::At(Timestamp::new(rng.below(100) as i64, 0))),
                _ => attr.uid = Some(rng.pick(&[0, 1000])),
            }
            Op::SetAttr { ino: any(rng), attr }
        }
        11 => Op::Open { ino: any(rng), flags: rng.pick(&[libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC]) },
        12 | 13 => {
            let (ino, fh) = handle(rng);
            Op::Release { ino, fh }
        }
        14 | 15 => {
            let (ino, fh) = handle(rng);
            let data = vec![rng.below(256) as u8; rng.below(3) as usize * (1 + rng.below(70_000) as usize)];
            Op::Write { ino, fh, offset: rng.below(140_000), data, flags: 0 }
        }
        16 => {
            let (ino, fh) = handle(rng);
            let mode = rng.pick(&[
                0,
                libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
            ]);
            Op::Fallocate { ino, fh, offset: rng.below(140_000), length: 1 + rng.below(140_000), mode }
        }
        17 => Op::SetXattr {
            ino: any(rng),
            name: rng.pick(XATTRS).to_vec(),
            value: vec![b'v'; rng.below(3) as usize],
            flags: rng.pick(&[0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
        },
        18 => Op::RemoveXattr { ino: any(rng), name: rng.pick(XATTRS).to_vec() },
        _ => Op::Fsync { ino: any(rng), datasync: false },
    }
}

/// After each random command, the inodes whose observable state moved are
/// exactly the changed set: none missing (a stale cache), none extra (a
/// needless recall).
#[test]
fn changed_is_exactly_the_inodes_whose_answers_moved_in_random_runs() {
    let mut kinds = BTreeMap::<String, (u32, u32)>::new();
    for seed in [1u64, 2, 3, 4, 5, 0x5eed] {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut b = Bench::new();
        let mut handles: Vec<(Ino, u64)> = Vec::new();
        let mut last = ROOT_INO + 1;
        let mut before = observe_all(&b, last);
        let mut cached = cacheable(&b, last);
        for step in 0..400 {
            let op = random_op(&mut rng, &before, &handles);
            let caller = if rng.below(8) == 0 { user(1000) } else { Caller::root() };
            let (result, changed) = b.run_as(&caller, op.clone());
            match (&op, &result) {
                (_, Ok(Reply::Created { attr, fh } | Reply::Opened { attr, fh })) => handles.push((attr.ino, *fh)),
                (Op::Release { ino, fh }, Ok(_)) => handles.retain(|h| *h != (*ino, *fh)),
                _ => {}
            }
            if let Ok(Reply::Created { attr, .. } | Reply::Entry(attr)) = &result {
                last = last.max(attr.ino + 1);
            }
            let after = observe_all(&b, last);
            // An inode past the old range was unseen before: it moved if it now exists.
            let moved: Vec<Ino> = after
                .iter()
                .filter(|(ino, seen)| match before.get(ino) {
                    Some(old) => old != *seen,
                    None => seen.attr != enoent(),
                })
                .map(|(ino, _)| *ino)
                .collect();
            assert_eq!(changed, moved, "seed {seed} step {step}: {op:?} by uid {} gave {result:?}", caller.uid);
            // What a client cached before is recalled if it is now stale:
            // one of its objects is in the changed set.
            for (query, answer, read_set) in &cached {
                if b.query(query.clone()).0 != *answer {
                    assert!(
                        read_set.iter().any(|ino| changed.contains(ino)),
                        "seed {seed} step {step}: {op:?} made {query:?} stale (read set {read_set:?}) but changed only {changed:?}"
                    );
                }
            }
            cached = cacheable(&b, last);
            let name = format!("{op:?}").split([' ', '{']).next().unwrap().to_string();
            let entry = kinds.entry(name).or_default();
            entry.0 += 1;
            entry.1 += u32::from(!changed.is_empty());
            before = after;
        }
    }
    // Every kind ran, and (but fsync) changed something at least once.
    for (name, (runs, changing)) in &kinds {
        assert!(*runs > 5, "{name} ran {runs} times");
        if name != "Fsync" {
            assert!(*changing > 0, "{name} never changed anything in {runs} runs");
        }
    }
    assert_eq!(kinds.len(), 16, "{kinds:?}");
}
