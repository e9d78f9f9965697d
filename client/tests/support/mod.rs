//! Test support: an in-process [`Backend`] over a real `FsStore` (what a
//! single replica would do, without network or log), and a mount fixture that
//! always unmounts, even when the test fails.
//!
//! The backend is the server's job in miniature: a mutation gets the wall
//! clock as its `now` and is applied at `applied_index() + 1` under a mutex
//! (one applier at a time, as the store requires); a query goes straight to
//! the store, concurrently.

#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use chorus_client::{force_unmount, mount, Backend, MountHandle, MountOptions};
use chorus_fs::ops::{Command, Errno, OpResult, Request, Timestamp};
use chorus_fs::{FsStore, StoreOptions};

/// Most requests remembered for inspection (oldest dropped first).
const RECORDED_MAX: usize = 100_000;

pub struct StoreBackend {
    store: FsStore,
    apply_lock: Mutex<()>,
    /// What the frontend sent, for tests that check the mapping itself.
    recorded: Mutex<std::collections::VecDeque<Request>>,
}

impl StoreBackend {
    pub fn open(dir: &Path) -> StoreBackend {
        let store = FsStore::open(dir, StoreOptions::default()).expect("open store");
        StoreBackend { store, apply_lock: Mutex::new(()), recorded: Mutex::new(Default::default()) }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    fn record(&self, req: &Request) {
        let mut r = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == RECORDED_MAX {
            r.pop_front();
        }
        r.push_back(req.clone());
    }
}

fn now() -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    Timestamp::new(d.as_secs() as i64, d.subsec_nanos())
}

impl Backend for StoreBackend {
    fn call(&self, req: Request) -> OpResult {
        self.record(&req);
        match req {
            Request::Mutate { caller, op } => {
                // A panic in an earlier apply poisons the lock; the store
                // itself decides whether it can go on.
                let _g = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
                let cmd = Command { now: now(), caller, op };
                self.store.apply(self.store.applied_index() + 1, &cmd).unwrap_or_else(|e| {
                    eprintln!("store apply failed: {e}");
                    Err(Errno(libc::EIO))
                })
            }
            Request::Query { caller, query } => self.store.query(&caller, &query).unwrap_or_else(|e| {
                eprintln!("store query failed: {e}");
                Err(Errno(libc::EIO))
            }),
        }
    }
}

/// A mounted store in a temporary folder. Drop unmounts (then, whatever
/// happened, detaches lazily) before the folder is removed.
pub struct Mounted {
    pub mnt: PathBuf,
    pub backend: Arc<StoreBackend>,
    handle: Option<MountHandle>,
    _dir: tempfile::TempDir,
}

impl Mounted {
    /// None (and a note) when this machine can't mount: not root or no /dev/fuse.
    pub fn new() -> Option<Mounted> {
        Self::with_options(MountOptions::default())
    }

    pub fn with_options(opts: MountOptions) -> Option<Mounted> {
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
            // .ci/run sets CHORUS_REQUIRE_FAULTS=1: there a skip is a failure.
            assert!(
                std::env::var("CHORUS_REQUIRE_FAULTS").as_deref() != Ok("1"),
                "needs root and /dev/fuse; CHORUS_REQUIRE_FAULTS=1 forbids skipping"
            );
            eprintln!("skipping: needs root and /dev/fuse");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let backend = Arc::new(StoreBackend::open(&dir.path().join("store")));
        let handle = mount(backend.clone() as Arc<dyn Backend>, &mnt, opts).expect("mount");
        Some(Mounted { mnt, backend, handle: Some(handle), _dir: dir })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn unmount(&mut self) {
        if let Some(mut h) = self.handle.take() {
            h.unmount().expect("unmount");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut h) = self.handle.take() {
            if let Err(e) = h.unmount() {
                eprintln!("unmount in teardown: {e}");
            }
        }
        force_unmount(&self.mnt);
    }
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// The errno of the last failed libc call.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
