//! Byte-range locks and the release of a gone client's handles, with
//! commands from several clients (the replication layer's client ids).

use libc::{EAGAIN, EBADF, F_RDLCK, F_UNLCK, F_WRLCK, O_RDONLY, O_RDWR};

use crate::keys::Table;
use crate::ops::*;
use crate::{AppliedTag, FsStore, StoreOptions};

/// A store driven as the replicated service drives it: every command
/// tagged, each from a chosen client.
struct Clients {
    _dir: tempfile::TempDir,
    store: FsStore,
    op: u64,
}

#[allow(clippy::too_many_arguments)]
impl Clients {
    fn new() -> Clients {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::open(&dir.path().join("db"), StoreOptions::default()).expect("open");
        Clients { _dir: dir, store, op: 0 }
    }

    fn tag(&mut self) -> (u64, AppliedTag) {
        self.op += 1;
        let now = Timestamp::new(1_000 + self.op as i64, 0);
        (self.store.applied_index() + 1, AppliedTag { op: self.op, last_now: now })
    }

    fn run(&mut self, client: u64, op: Op) -> OpResult {
        let (index, tag) = self.tag();
        let cmd = Command { now: tag.last_now, caller: Caller::root(), op };
        self.store.apply_tagged_tracked(index, &cmd, &tag, client).expect("apply").result
    }

    fn gone(&mut self, client: u64) {
        let (index, tag) = self.tag();
        self.store.apply_client_gone(index, tag.last_now, &tag, client).expect("apply").result.expect("client gone never fails");
    }

    fn create(&mut self, client: u64, name: &str) -> (Ino, Fh) {
        let op = Op::Create { parent: ROOT_INO, name: name.into(), mode: 0o644, umask: 0, flags: O_RDWR, excl: true };
        match self.run(client, op) {
            Ok(Reply::Created { attr, fh }) => (attr.ino, fh),
            other => panic!("create: {other:?}"),
        }
    }

    fn open(&mut self, client: u64, ino: Ino, flags: i32) -> Fh {
        match self.run(client, Op::Open { ino, flags }) {
            Ok(Reply::Opened { fh, .. }) => fh,
            other => panic!("open: {other:?}"),
        }
    }

    fn lock(&mut self, client: u64, ino: Ino, fh: Fh, owner: u64, typ: i32, start: u64, end: u64) -> Result<(), i32> {
        let lock = FileLock { owner, start, end, typ, pid: owner as u32 };
        match self.run(client, Op::SetLock { ino, fh, lock }) {
            Ok(Reply::Ok) => Ok(()),
            Ok(other) => panic!("setlock: {other:?}"),
            Err(e) => Err(e.0),
        }
    }

    fn test(&mut self, client: u64, ino: Ino, fh: Fh, owner: u64, typ: i32, start: u64, end: u64) -> FileLock {
        let lock = FileLock { owner, start, end, typ, pid: 0 };
        match self.run(client, Op::GetLock { ino, fh, lock }) {
            Ok(Reply::Lock(l)) => l,
            other => panic!("getlock: {other:?}"),
        }
    }

    fn fsck(&self) {
        let problems = self.store.fsck().expect("fsck");
        assert!(problems.is_empty(), "{problems:#?}");
    }
}

const A: u64 = 0x8000_0000_0000_0011;
const B: u64 = 0x8000_0000_0000_0022;

#[test]
fn locks_of_two_clients_conflict_by_range_and_type() {
    let mut c = Clients::new();
    let (f, afh) = c.create(A, "f");
    let bfh = c.open(B, f, O_RDWR);
    c.lock(A, f, afh, 1, F_WRLCK, 0, 99).unwrap();
    assert_eq!(c.lock(B, f, bfh, 1, F_RDLCK, 50, 60), Err(EAGAIN), "same owner number, other client");
    c.lock(B, f, bfh, 1, F_WRLCK, 100, 199).unwrap();
    let seen = c.test(B, f, bfh, 1, F_RDLCK, 0, u64::MAX);
    assert_eq!((seen.typ, seen.start, seen.end, seen.pid), (F_WRLCK, 0, 99, 1));
    assert_eq!(c.test(A, f, afh, 1, F_WRLCK, 0, 99).typ, F_UNLCK, "its own lock never conflicts");
    // A splits its lock by unlocking the middle: B may take the hole.
    c.lock(A, f, afh, 1, F_UNLCK, 40, 59).unwrap();
    c.lock(B, f, bfh, 1, F_WRLCK, 40, 59).unwrap();
    assert_eq!(c.lock(B, f, bfh, 1, F_WRLCK, 39, 40), Err(EAGAIN));
    // Read locks share; a downgrade of A's range lets B read-lock it.
    c.lock(A, f, afh, 1, F_RDLCK, 0, 39).unwrap();
    c.lock(B, f, bfh, 2, F_RDLCK, 0, 39).unwrap();
    assert_eq!(c.lock(A, f, afh, 1, F_WRLCK, 0, 0), Err(EAGAIN), "an upgrade waits for the other reader");
    // Another client's handle is no handle.
    assert_eq!(c.lock(B, f, afh, 1, F_UNLCK, 0, u64::MAX), Err(EBADF));
    c.fsck();
}

#[test]
fn one_owners_ranges_merge_and_split() {
    let mut c = Clients::new();
    let (f, fh) = c.create(A, "f");
    let bfh = c.open(B, f, O_RDWR);
    for start in (0..1000u64).step_by(10) {
        c.lock(A, f, fh, 7, F_WRLCK, start, start + 9).unwrap();
    }
    // One merged range: B's probe reports it whole.
    let seen = c.test(B, f, bfh, 1, F_RDLCK, 500, 500);
    assert_eq!((seen.start, seen.end), (0, 999));
    c.lock(A, f, fh, 7, F_UNLCK, 0, u64::MAX).unwrap();
    assert_eq!(c.test(B, f, bfh, 1, F_WRLCK, 0, u64::MAX).typ, F_UNLCK);
    c.fsck();
}

#[test]
fn lock_requests_are_checked() {
    let mut c = Clients::new();
    let (f, fh) = c.create(A, "f");
    // flock(LOCK_EX) on a read-only descriptor is allowed (fcntl's mode
    // rule is checked by the kernel before the request reaches us).
    let ro = c.open(A, f, O_RDONLY);
    c.lock(A, f, ro, 1, F_WRLCK, 0, 0).unwrap();
    assert_eq!(c.lock(A, f, 12345, 1, F_WRLCK, 0, 0), Err(EBADF), "no such handle");
    let bad = FileLock { owner: 1, start: 5, end: 4, typ: F_RDLCK, pid: 0 };
    assert_eq!(c.run(A, Op::SetLock { ino: f, fh, lock: bad }), Err(Errno(libc::EINVAL)));
    let bad = FileLock { owner: 1, start: 0, end: 4, typ: 77, pid: 0 };
    assert_eq!(c.run(A, Op::SetLock { ino: f, fh, lock: bad }), Err(Errno(libc::EINVAL)));
}

#[test]
fn releasing_a_handle_drops_the_locks_taken_through_it() {
    let mut c = Clients::new();
    let (f, fh) = c.create(A, "f");
    let fh2 = c.open(A, f, O_RDWR);
    let bfh = c.open(B, f, O_RDWR);
    c.lock(A, f, fh, 1, F_WRLCK, 0, 9).unwrap(); // an flock or OFD lock: owner is the open file
    c.lock(A, f, fh2, 2, F_WRLCK, 10, 19).unwrap();
    assert_eq!(c.run(A, Op::Release { ino: f, fh }), Ok(Reply::Ok));
    c.lock(B, f, bfh, 1, F_WRLCK, 0, 9).unwrap();
    assert_eq!(c.lock(B, f, bfh, 1, F_WRLCK, 10, 10), Err(EAGAIN));
    c.fsck();
}

/// A client that died holding a lock and the last handle of an unlinked
/// file: when it is gone, the lock is free and the file's space with it.
#[test]
fn a_gone_client_releases_its_locks_and_handles() {
    let mut c = Clients::new();
    let (f, afh) = c.create(A, "f");
    assert!(matches!(c.run(A, Op::Write { ino: f, fh: afh, offset: 0, data: vec![7; 200_000], flags: 0 }), Ok(Reply::Written { .. })));
    let (g, _) = c.create(A, "g");
    let bfh = c.open(B, f, O_RDWR);
    c.lock(A, f, afh, 1, F_WRLCK, 0, u64::MAX).unwrap();
    assert_eq!(c.run(A, Op::Unlink { parent: ROOT_INO, name: b"g".to_vec() }), Ok(Reply::Ok));
    assert_eq!(c.lock(B, f, bfh, 9, F_WRLCK, 0, 0), Err(EAGAIN));
    // B cannot release A's handles for it.
    assert_eq!(c.run(B, Op::Release { ino: f, fh: afh }), Err(Errno(EBADF)));
    assert_eq!((c.store.count_keys(Table::Handles), c.store.count_keys(Table::Inodes)), (3, 3));
    c.gone(A);
    c.lock(B, f, bfh, 9, F_WRLCK, 0, 0).unwrap();
    assert!(matches!(c.store.query(&Caller::root(), &Query::GetAttr { ino: g }).unwrap(), Err(Errno(libc::ENOENT))), "g freed");
    assert!(matches!(c.store.query(&Caller::root(), &Query::GetAttr { ino: f }).unwrap(), Ok(Reply::Attr(_))), "f still named");
    assert_eq!((c.store.count_keys(Table::Handles), c.store.count_keys(Table::Inodes)), (1, 2), "only B's handle, root and f left");
    // Gone twice, or a client that held nothing: no error, nothing changes.
    c.gone(A);
    c.gone(0x1234);
    c.fsck();
}
