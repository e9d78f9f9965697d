//! Tests of the store through its public API: a harness that numbers commands
//! and stamps time like the replication layer would, unit tests of the tricky
//! cases, a model-based property test and determinism / persistence tests.

mod bench;
mod hostile;
mod linux;
mod locks;
mod model;
mod persist;
mod unit;

use crate::ops::*;
use crate::{FsStore, StoreOptions};

pub(crate) struct Harness {
    /// Keeps the directory alive as long as the store.
    pub _dir: tempfile::TempDir,
    pub store: FsStore,
    pub clock_sec: i64,
    /// Every command applied, in order (to replay elsewhere).
    pub log: Vec<Command>,
    /// The reply to each command of `log`.
    pub replies: Vec<OpResult>,
}

pub(crate) fn user(uid: u32) -> Caller {
    Caller { uid, gid: uid, pid: 1, groups: vec![] }
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::open(&dir.path().join("db"), StoreOptions::default()).expect("open");
        Harness { _dir: dir, store, clock_sec: 1_000, log: Vec::new(), replies: Vec::new() }
    }

    pub fn run_as(&mut self, caller: &Caller, op: Op) -> OpResult {
        self.clock_sec += 1;
        let cmd = Command { now: Timestamp::new(self.clock_sec, 7), caller: caller.clone(), op };
        let index = self.store.applied_index() + 1;
        let result = self.store.apply(index, &cmd).expect("apply");
        self.log.push(cmd);
        self.replies.push(result.clone());
        result
    }

    pub fn run(&mut self, op: Op) -> OpResult {
        self.run_as(&Caller::root(), op)
    }

    pub fn query_as(&self, caller: &Caller, q: Query) -> OpResult {
        self.store.query(caller, &q).expect("query")
    }

    pub fn query(&self, q: Query) -> OpResult {
        self.query_as(&Caller::root(), q)
    }

    pub fn now(&self) -> Timestamp {
        Timestamp::new(self.clock_sec, 7)
    }

    pub fn mkdir(&mut self, parent: Ino, name: &str) -> Attr {
        self.mkdir_as(&Caller::root(), parent, name, 0o755).expect("mkdir")
    }

    pub fn mkdir_as(&mut self, caller: &Caller, parent: Ino, name: &str, mode: u32) -> Result<Attr, i32> {
        match self.run_as(caller, Op::Mkdir { parent, name: name.into(), mode, umask: 0 }) {
            Ok(Reply::Entry(a)) => Ok(a),
            Ok(r) => panic!("mkdir replied {r:?}"),
            Err(e) => Err(e.0),
        }
    }

    pub fn create_as(&mut self, caller: &Caller, parent: Ino, name: &[u8], mode: u32) -> Result<(Attr, Fh), i32> {
        let op = Op::Create { parent, name: name.to_vec(), mode, umask: 0, flags: libc::O_RDWR, excl: true };
        match self.run_as(caller, op) {
            Ok(Reply::Created { attr, fh }) => Ok((attr, fh)),
            Ok(r) => panic!("create replied {r:?}"),
            Err(e) => Err(e.0),
        }
    }

    pub fn create(&mut self, parent: Ino, name: &str) -> (Attr, Fh) {
        self.create_as(&Caller::root(), parent, name.as_bytes(), 0o644).expect("create")
    }

    pub fn write(&mut self, ino: Ino, fh: Fh, offset: u64, data: &[u8]) -> Result<Attr, i32> {
        match self.run(Op::Write { ino, fh, offset, data: data.to_vec(), flags: 0 }) {
            Ok(Reply::Written { written, attr }) => {
                assert_eq!(written as usize, data.len());
                Ok(attr)
            }
            Ok(r) => panic!("write replied {r:?}"),
            Err(e) => Err(e.0),
        }
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        match self.query(Query::Read { ino, offset, size }) {
            Ok(Reply::Data(d)) => Ok(d),
            Ok(r) => panic!("read replied {r:?}"),
            Err(e) => Err(e.0),
        }
    }

    pub fn lookup_as(&self, caller: &Caller, parent: Ino, name: &str) -> Result<Attr, i32> {
        match self.query_as(caller, Query::Lookup { parent, name: name.into() }) {
            Ok(Reply::Entry(a)) => Ok(a),
            Ok(r) => panic!("lookup replied {r:?}"),
            Err(e) => Err(e.0),
        }
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, i32> {
        self.lookup_as(&Caller::root(), parent, name)
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, i32> {
        match self.query(Query::GetAttr { ino }) {
            Ok(Reply::Attr(a)) => Ok(a),
            Ok(r) => panic!("getattr replied {r:?}"),
            Err(e) => Err(e.0),
        }
    }

    pub fn release(&mut self, ino: Ino, fh: Fh) {
        assert_eq!(self.run(Op::Release { ino, fh }), Ok(Reply::Ok));
    }

    pub fn readdir(&self, ino: Ino, cookie: u64, max_entries: u32) -> Vec<DirEntry> {
        match self.query(Query::ReadDir { ino, cookie, max_entries, plus: false }) {
            Ok(Reply::Dir(d)) => d,
            other => panic!("readdir replied {other:?}"),
        }
    }

    /// Names in the directory (without "." and ".."), sorted.
    pub fn names(&self, ino: Ino) -> Vec<String> {
        let mut names = Vec::new();
        let mut cookie = 0;
        loop {
            let batch = self.readdir(ino, cookie, 7);
            let Some(last) = batch.last() else { break };
            cookie = last.cookie;
            for e in batch {
                let name = String::from_utf8(e.name).unwrap();
                if name != "." && name != ".." {
                    names.push(name);
                }
            }
        }
        names.sort();
        names
    }
}

pub(crate) fn errno_of(result: OpResult) -> i32 {
    match result {
        Err(e) => e.0,
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
}
