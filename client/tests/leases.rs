//! The FUSE frontend's caching under callbacks (issue 9, DESIGN.md §5),
//! end to end through the kernel, against an in-process backend that grants
//! leases like a leader would (a real `FsStore` behind it) and lets the test
//! play the other mounts: change the store directly, then recall (or not).
//!
//! What is checked: with a lease the kernel asks the backend once and then
//! answers from its cache (attributes, names, negative names, pages, listings);
//! a recall makes the next look ask again and see the change; a recall that
//! overtakes a reply means that reply is not cached; without a lease (or
//! after it lapsed) every look asks; an O_APPEND write lands at the store's
//! size. Needs root and /dev/fuse; without them each test passes with a note.

mod support;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_client::{force_unmount, mount, Backend, CacheControl, CacheInfo, MountHandle, MountOptions};
use chorus_fs::ops::{Caller, Op, OpResult, Query, Reply, Request, SetAttr, ROOT_INO};
use support::StoreBackend;

/// Something another mount does while a lookup is being answered.
type Race = Box<dyn FnOnce(&Leasing) + Send>;

/// A backend that grants `lease` on every query (none when zero), names
/// the inodes a mutation touched as `changed`, and counts queries by kind.
struct Leasing {
    store: StoreBackend,
    lease: Mutex<Duration>,
    control: Mutex<Option<CacheControl>>,
    queries: Mutex<HashMap<&'static str, usize>>,
    /// Run once, while the next lookup is being answered, after its answer
    /// was computed: another mount's change and its recall overtaking the
    /// (now stale) reply.
    race_next_lookup: Mutex<Option<Race>>,
    /// Writes wait this long before they are applied (a leader holding the
    /// reply while other mounts drop their copies).
    write_delay: Mutex<Duration>,
}

fn kind(q: &Query) -> &'static str {
    match q {
        Query::Lookup { .. } => "lookup",
        Query::GetAttr { .. } => "getattr",
        Query::Read { .. } => "read",
        Query::ReadLink { .. } => "readlink",
        Query::ReadDir { .. } => "readdir",
        Query::GetXattr { .. } => "getxattr",
        Query::ListXattr { .. } => "listxattr",
        Query::StatFs => "statfs",
    }
}

impl Leasing {
    fn new(dir: &Path, lease: Duration) -> Leasing {
        Leasing {
            store: StoreBackend::open(dir),
            lease: Mutex::new(lease),
            control: Mutex::new(None),
            queries: Mutex::new(HashMap::new()),
            race_next_lookup: Mutex::new(None),
            write_delay: Mutex::new(Duration::ZERO),
        }
    }

    fn count(&self, kind: &str) -> usize {
        self.queries.lock().unwrap().get(kind).copied().unwrap_or(0)
    }

    /// Another mount's change: straight to the store, no recall.
    fn change(&self, op: Op) -> Reply {
        self.store.call(Request::Mutate { caller: Caller::root(), op }).expect("direct change")
    }

    /// The recall the leader would send, waited for (the mount's ack).
    fn recall(&self, objects: &[u64]) {
        let control = self.control.lock().unwrap().clone().expect("attached at mount");
        let (tx, rx) = mpsc::channel();
        control.recall(objects, move || {
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("the mount acknowledged the recall within 10 s");
    }

    /// Overwrites bytes of `ino` as another mount would.
    fn write_direct(&self, ino: u64, offset: u64, data: &[u8], flags: i32) {
        let Reply::Opened { fh, .. } = self.change(Op::Open { ino, flags: libc::O_WRONLY | flags }) else { panic!("open") };
        self.change(Op::Write { ino, fh, offset, data: data.to_vec(), flags });
        self.change(Op::Release { ino, fh });
    }
}

impl Backend for Leasing {
    fn call(&self, req: Request) -> OpResult {
        self.call_leased(req).0
    }

    fn call_leased(&self, req: Request) -> (OpResult, CacheInfo) {
        let sent = Instant::now();
        match &req {
            Request::Query { query, .. } => {
                *self.queries.lock().unwrap().entry(kind(query)).or_default() += 1;
                let is_lookup = matches!(query, Query::Lookup { .. });
                let r = self.store.call(req);
                if is_lookup {
                    let race = self.race_next_lookup.lock().unwrap().take();
                    if let Some(race) = race {
                        race(self);
                    }
                }
                let lease = *self.lease.lock().unwrap();
                let lease_until = (!lease.is_zero()).then(|| sent + lease);
                (r, CacheInfo { lease_until, changed: Vec::new() })
            }
            Request::Mutate { op, .. } => {
                if matches!(op, Op::Write { .. }) {
                    let delay = *self.write_delay.lock().unwrap();
                    std::thread::sleep(delay);
                }
                // The inodes the op names (and the child a name leads to):
                // more than the store's exact set is still correct.
                let mut changed = Vec::new();
                let mut by_name = |parent: u64, name: &[u8]| {
                    let q = Query::Lookup { parent, name: name.to_vec() };
                    if let Ok(Reply::Entry(a)) = self.store.call(Request::Query { caller: Caller::root(), query: q }) {
                        changed.push(a.ino);
                    }
                };
                match op {
                    Op::Unlink { parent, name } | Op::Rmdir { parent, name } => by_name(*parent, name),
                    Op::Rename { parent, name, newparent, newname, .. } => {
                        by_name(*parent, name);
                        by_name(*newparent, newname);
                    }
                    _ => {}
                }
                changed.extend(match op {
                    Op::Create { parent, .. } | Op::Mknod { parent, .. } | Op::Mkdir { parent, .. } | Op::Symlink { parent, .. } => {
                        vec![*parent]
                    }
                    Op::Unlink { parent, .. } | Op::Rmdir { parent, .. } => vec![*parent],
                    Op::Rename { parent, newparent, .. } => vec![*parent, *newparent],
                    Op::Link { ino, newparent, .. } => vec![*ino, *newparent],
                    // A plain open changes nothing a query answers.
                    Op::Open { ino, flags } if flags & libc::O_TRUNC != 0 => vec![*ino],
                    Op::Open { .. } => vec![],
                    Op::SetAttr { ino, .. }
                    | Op::Write { ino, .. }
                    | Op::Fallocate { ino, .. }
                    | Op::SetXattr { ino, .. }
                    | Op::RemoveXattr { ino, .. } => vec![*ino],
                    Op::Release { .. } | Op::Fsync { .. } | Op::SetLock { .. } | Op::GetLock { .. } | Op::KeepAlive => vec![],
                });
                let r = self.store.call(req);
                if let Ok(Reply::Entry(a) | Reply::Created { attr: a, .. }) = &r {
                    changed.push(a.ino);
                }
                (r, CacheInfo { lease_until: None, changed })
            }
        }
    }

    fn attach(&self, cache: CacheControl) {
        *self.control.lock().unwrap() = Some(cache);
    }
}

/// A mounted leasing backend; unmounts on drop.
struct Rig {
    mnt: PathBuf,
    be: Arc<Leasing>,
    handle: Option<MountHandle>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(lease: Duration) -> Option<Rig> {
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
            assert!(std::env::var("CHORUS_REQUIRE_FAULTS").as_deref() != Ok("1"), "needs root and /dev/fuse");
            eprintln!("skipping: needs root and /dev/fuse");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let be = Arc::new(Leasing::new(&dir.path().join("store"), lease));
        let handle = mount(be.clone() as Arc<dyn Backend>, &mnt, MountOptions::default()).expect("mount");
        Some(Rig { mnt, be, handle: Some(handle), _dir: dir })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut h) = self.handle.take() {
            if let Err(e) = h.unmount() {
                eprintln!("unmount in teardown: {e}");
            }
        }
        force_unmount(&self.mnt);
    }
}

/// Lets the invalidation thread finish what this mount's own changes
/// queued: it may otherwise drop (harmlessly) what the next look caches.
fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}

fn looks(be: &Leasing) -> usize {
    be.count("lookup") + be.count("getattr")
}

#[test]
fn attributes_and_names_are_cached_under_a_lease_until_recalled() {
    let Some(r) = Rig::new(Duration::from_secs(60)) else { return };
    let f = r.path("f");
    fs::write(&f, b"x").unwrap();
    settle();
    let ino = fs::metadata(&f).unwrap().ino();
    let before = looks(&r.be);
    let mode = fs::metadata(&f).unwrap().mode() & 0o777;
    assert_ne!(mode, 0o600);
    for _ in 0..5 {
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, mode);
    }
    assert_eq!(looks(&r.be), before, "under a lease the kernel answers stat from its cache");
    // Another mount changes the mode; until the recall this mount may still
    // show the old one (it holds a callback), after it never.
    r.be.change(Op::SetAttr { ino, attr: SetAttr { mode: Some(0o600), ..Default::default() } });
    r.be.recall(&[ino]);
    assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "the recall dropped the cached attributes");
    assert!(looks(&r.be) > before);
}

#[test]
fn without_a_lease_every_look_asks() {
    let Some(r) = Rig::new(Duration::ZERO) else { return };
    let f = r.path("f");
    fs::write(&f, b"x").unwrap();
    let ino = fs::metadata(&f).unwrap().ino();
    let before = looks(&r.be);
    for _ in 0..3 {
        fs::metadata(&f).unwrap();
    }
    assert!(looks(&r.be) >= before + 3, "TTL 0: each stat reaches the backend");
    // And another mount's change is seen at once, without any recall.
    r.be.change(Op::SetAttr { ino, attr: SetAttr { mode: Some(0o600), ..Default::default() } });
    assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn negative_names_are_cached_and_dropped_with_their_directory() {
    let Some(r) = Rig::new(Duration::from_secs(60)) else { return };
    let g = r.path("ghost");
    settle();
    assert_eq!(fs::metadata(&g).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    let lookups = r.be.count("lookup");
    for _ in 0..3 {
        assert_eq!(fs::metadata(&g).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }
    assert_eq!(r.be.count("lookup"), lookups, "the negative entry is cached under the root's lease");
    // Another mount creates the name: the root's recall drops the negative entry.
    let Reply::Created { fh, attr } =
        r.be.change(Op::Create { parent: ROOT_INO, name: b"ghost".to_vec(), mode: 0o644, umask: 0, flags: libc::O_WRONLY, excl: true })
    else {
        panic!("create")
    };
    r.be.change(Op::Release { ino: attr.ino, fh });
    r.be.recall(&[ROOT_INO]);
    assert_eq!(fs::metadata(&g).unwrap().ino(), attr.ino);
    // Our own unlink: the kernel updates itself, and the name is gone here.
    fs::remove_file(&g).unwrap();
    assert_eq!(fs::metadata(&g).unwrap_err().raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn a_recall_that_overtakes_the_reply_means_no_caching() {
    let Some(r) = Rig::new(Duration::from_secs(60)) else { return };
    let f = r.path("f");
    fs::write(&f, b"x").unwrap();
    let ino = fs::metadata(&f).unwrap().ino();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    // Forget the name, so the next stat looks it up; that lookup's answer
    // (mode 644) is overtaken by a chmod elsewhere and its recall.
    r.be.recall(&[ROOT_INO, ino]);
    *r.be.race_next_lookup.lock().unwrap() = Some(Box::new(move |be: &Leasing| {
        be.change(Op::SetAttr { ino, attr: SetAttr { mode: Some(0o600), ..Default::default() } });
        // Not waited for: the handler of the lookup is this thread. The
        // pause lets the invalidation thread act before the stale reply.
        let control = be.control.lock().unwrap().clone().expect("attached");
        control.recall(&[ROOT_INO, ino], || {});
        std::thread::sleep(Duration::from_millis(100));
    }));
    // The stale lookup reply carries TTL 0, so stat asks for the
    // attributes again at once (cached, they would say 644 for a minute).
    assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "the stale answer was not cached");
    assert!(r.be.race_next_lookup.lock().unwrap().is_none(), "the race ran");
    assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    settle();
    fs::metadata(&f).unwrap();
    let before = looks(&r.be);
    fs::metadata(&f).unwrap();
    assert_eq!(looks(&r.be), before, "the next answer was");
}

#[test]
fn a_lapsed_lease_is_not_trusted() {
    let Some(r) = Rig::new(Duration::from_millis(600)) else { return };
    let f = r.path("f");
    fs::write(&f, b"x").unwrap();
    settle();
    fs::metadata(&f).unwrap();
    let before = looks(&r.be);
    fs::metadata(&f).unwrap();
    assert_eq!(looks(&r.be), before, "within the lease");
    std::thread::sleep(Duration::from_millis(800));
    fs::metadata(&f).unwrap();
    assert!(looks(&r.be) > before, "after the lease the kernel asks again");
}

#[test]
fn pages_are_kept_across_opens_under_a_lease_and_dropped_by_a_recall() {
    let Some(r) = Rig::new(Duration::from_secs(60)) else { return };
    let f = r.path("data");
    fs::write(&f, b"version one").unwrap();
    settle();
    let ino = fs::metadata(&f).unwrap().ino();
    assert_eq!(fs::read(&f).unwrap(), b"version one");
    assert_eq!(fs::read(&f).unwrap(), b"version one");
    let reads = r.be.count("read");
    assert_eq!(fs::read(&f).unwrap(), b"version one");
    assert_eq!(r.be.count("read"), reads, "FOPEN_KEEP_CACHE: same version under the lease, pages reused");
    // Same size, other bytes: only the recall can tell.
    r.be.write_direct(ino, 0, b"VERSION", 0);
    r.be.recall(&[ino]);
    assert_eq!(fs::read(&f).unwrap(), b"VERSION one");
    assert!(r.be.count("read") > reads);
}

#[test]
fn an_open_files_pages_are_dropped_by_a_recall_and_when_the_lease_lapses() {
    let Some(r) = Rig::new(Duration::from_millis(800)) else { return };
    let f = r.path("held");
    fs::write(&f, b"aaaa").unwrap();
    let ino = fs::metadata(&f).unwrap().ino();
    let held = File::open(&f).unwrap();
    let pread = |h: &File| {
        let mut b = [0u8; 4];
        h.read_exact_at(&mut b, 0).unwrap();
        b
    };
    assert_eq!(&pread(&held), b"aaaa");
    r.be.write_direct(ino, 0, b"bbbb", 0);
    r.be.recall(&[ino]);
    assert_eq!(&pread(&held), b"bbbb", "a recall drops the pages of a file kept open");
    // A mapping never asks the kernel to revalidate: only the lapse of the
    // lease drops its pages when no recall comes.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), 4, libc::PROT_READ, libc::MAP_SHARED, std::os::fd::AsRawFd::as_raw_fd(&held), 0) };
    assert_ne!(map, libc::MAP_FAILED);
    let mapped = || unsafe { std::slice::from_raw_parts(map as *const u8, 4).to_vec() };
    assert_eq!(mapped(), b"bbbb");
    r.be.write_direct(ino, 0, b"cccc", 0);
    let start = Instant::now();
    while mapped() != b"cccc" && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = mapped();
    unsafe { libc::munmap(map, 4) };
    assert_eq!(seen, b"cccc", "the lapse of the lease dropped the mapped pages");
}

#[test]
fn listings_are_cached_under_a_lease_until_the_directory_is_recalled() {
    let Some(r) = Rig::new(Duration::from_secs(60)) else { return };
    let d = r.path("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("one"), b"1").unwrap();
    settle();
    let dino = fs::metadata(&d).unwrap().ino();
    let names = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&d), vec!["one"]);
    assert_eq!(names(&d), vec!["one"]);
    let listings = r.be.count("readdir");
    assert_eq!(names(&d), vec!["one"]);
    assert_eq!(r.be.count("readdir"), listings, "FOPEN_CACHE_DIR under the directory's lease");
    let Reply::Created { fh, attr } =
        r.be.change(Op::Create { parent: dino, name: b"two".to_vec(), mode: 0o644, umask: 0, flags: libc::O_WRONLY, excl: true })
    else {
        panic!("create")
    };
    r.be.change(Op::Release { ino: attr.ino, fh });
    r.be.recall(&[dino]);
    assert_eq!(names(&d), vec!["one", "two"]);
    assert!(fs::metadata(d.join("two")).is_ok());
}

#[test]
fn own_changes_are_seen_at_once() {
    let Some(r) = Rig::new(Duration::from_secs(60)) else { return };
    let d = r.path("own");
    fs::create_dir(&d).unwrap();
    let f = d.join("f");
    fs::write(&f, b"12345").unwrap();
    // Cache everything, then change through this mount.
    for _ in 0..2 {
        fs::metadata(&d).unwrap();
        fs::metadata(&f).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"12345");
    }
    OpenOptions::new().write(true).open(&f).unwrap().write_all_at(b"AB", 1).unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"1AB45");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    fs::rename(&f, d.join("g")).unwrap();
    assert!(fs::metadata(&f).is_err());
    assert_eq!(fs::read(d.join("g")).unwrap(), b"1AB45");
    let mut names: Vec<String> = fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, vec!["g"]);
}

#[test]
fn a_write_in_flight_is_not_visible_to_the_mounts_readers() {
    // A buffered write would put the new bytes into the cached page before
    // the backend has them; the mount's readers must see them only once the
    // write returned (files opened for writing use direct I/O).
    let Some(r) = Rig::new(Duration::from_secs(60)) else { return };
    let f = r.path("w");
    fs::write(&f, b"old!").unwrap();
    settle();
    let reader = File::open(&f).unwrap();
    let pread = |h: &File| {
        let mut b = [0u8; 4];
        h.read_exact_at(&mut b, 0).unwrap();
        b
    };
    assert_eq!(&pread(&reader), b"old!", "cached now");
    *r.be.write_delay.lock().unwrap() = Duration::from_millis(400);
    let path = f.clone();
    let writer = std::thread::spawn(move || OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"new!", 0).unwrap());
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(&pread(&reader), b"old!", "the write has not reached the backend yet");
    writer.join().unwrap();
    assert_eq!(&pread(&reader), b"new!", "the write returned: every reader sees it");
}

#[test]
fn o_append_lands_at_the_stores_size() {
    // Without a lease the kernel's idea of the size is not refreshed for an
    // O_APPEND write; the store appends at its own size (and no cached page
    // holds the bytes at the kernel's stale end: direct I/O).
    let Some(r) = Rig::new(Duration::ZERO) else { return };
    let f = r.path("log");
    fs::write(&f, b"abc").unwrap();
    let ino = fs::metadata(&f).unwrap().ino();
    let mut app = OpenOptions::new().append(true).open(&f).unwrap();
    r.be.write_direct(ino, 0, b"XYZ", libc::O_APPEND);
    app.write_all(b"!!").unwrap();
    drop(app);
    let mut got = Vec::new();
    File::open(&f).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abcXYZ!!");
    // The same with a lease, the other writer's append recalled as a leader would.
    let Some(r) = Rig::new(Duration::from_secs(60)) else { return };
    let f = r.path("log");
    fs::write(&f, b"abc").unwrap();
    let ino = fs::metadata(&f).unwrap().ino();
    assert_eq!(fs::read(&f).unwrap(), b"abc");
    let mut app = OpenOptions::new().append(true).open(&f).unwrap();
    r.be.write_direct(ino, 0, b"XYZ", libc::O_APPEND);
    r.be.recall(&[ino]);
    app.write_all(b"!!").unwrap();
    drop(app);
    assert_eq!(fs::read(&f).unwrap(), b"abcXYZ!!");
    assert_eq!(fs::metadata(&f).unwrap().len(), 8);
}
