//! The mount's invalidation threads: tell the kernel what the cache
//! (`crate::cache`) queued, then run the acknowledgements waiting behind it.
//!
//! Two threads, because some kernel invalidations can wait and others never
//! do: the fast thread takes each batch from the cache, drops the
//! attributes of its objects at once (`inval_inode` with offset -1 never
//! waits, and the kernel's attr_version makes it refuse the attributes of a
//! reply in flight), and hands the directory entries and pages to the slow
//! thread, which sends those (they wait for the directory's i_rwsem or a
//! page lock held by a request in flight) and then the batch's
//! acknowledgements.
//!
//! Guarantees:
//! - Kernel notifications (`fuser::Notifier`) are sent only from these
//!   threads, never from a FUSE handler and never under a lock a handler
//!   takes: the kernel may wait for a handler while it processes one.
//! - A batch is acknowledged once everything it asked for was sent, its
//!   entries and pages after everything queued before them; an entry or page
//!   invalidation that meets a request of this mount in flight on the same
//!   directory or page waits for it in the kernel and then removes what that
//!   request stored, so a reply that raced with a recall is not left behind.
//! - Bounded acknowledgement ([`ACK_WAIT`]): that wait can be a cycle. The
//!   leader parks this mount's reads of a recalled object, and holds its
//!   writes to it, until this mount acknowledges the recall, while the
//!   kernel holds the page or directory lock of that very request; nothing
//!   but the lease running out (seconds) would end it. So a batch whose
//!   entries or pages are still pending `ACK_WAIT` after its attributes were
//!   dropped is acknowledged by the fast thread; they follow one round trip
//!   later, when the request in the way returns. Meanwhile read(2) still
//!   never returns stale data: with the attributes dropped the kernel asks
//!   for them before it uses a cached page (FUSE_AUTO_INVAL_DATA), that
//!   getattr waits at the leader until the recall has ended, and the new
//!   mtime or size drops the pages. What may show the old state for that
//!   round trip is a path walk through a cached name or a mapping's cached
//!   page, and only while this mount has a request in flight on the
//!   recalled object itself.
//! - The slow thread's queue holds each page set and entry once (a set), so
//!   it is bounded by what the mount handed out, however long a request
//!   blocks it.
//! - Both stop within [`IDLE_WAIT`] once told to (unless stuck in the
//!   kernel until the connection ends); acknowledgements still waiting then
//!   are answered (the kernel holds nothing of an unmounted mount).
//!
//! Assumes: the cache queues everything the kernel holds under a lease when
//! that lease is withdrawn; the kernel offers FUSE_AUTO_INVAL_DATA (asked
//! for at init); the leader stamps every data change with a new mtime.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, error, info, warn};

use crate::cache::{MountCache, Work};

/// Longest sleep of a thread without work (the fast one also wakes for new
/// work, lapsing leases and due acknowledgements); bounds how long a stop
/// takes to be noticed.
pub const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Longest wait of a batch's acknowledgements for its entry and page
/// invalidations once its attributes are dropped (see the module comment).
/// A batch not stuck behind a request of this mount takes microseconds.
pub const ACK_WAIT: Duration = Duration::from_millis(50);

type Done = Box<dyn FnOnce() + Send>;

/// One batch's acknowledgements, run by whichever thread takes them first.
struct Acks {
    due: Instant,
    acks: Mutex<Option<Vec<Done>>>,
}

impl Acks {
    /// Runs them if nobody did; whether this call did.
    fn run(&self) -> bool {
        let Some(acks) = self.acks.lock().take() else { return false };
        for done in acks {
            if catch_unwind(AssertUnwindSafe(done)).is_err() {
                error!("a recall acknowledgement panicked");
            }
        }
        true
    }
}

/// `FUSE_NOTIFY_INVAL_ENTRY` with `FUSE_EXPIRE_ONLY` (Linux 6.2, protocol
/// 7.38), which fuser does not offer: the dentry is marked expired instead
/// of dropped, so the kernel looks the name up again before using it but
/// keeps the inode (FUSE frees an inode, pages included, with its last
/// dentry). Written to a duplicate of the connection's /dev/fuse descriptor.
pub(crate) struct ExpireNotifier {
    dev: OwnedFd,
}

const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;
const FUSE_EXPIRE_ONLY: u32 = 1;

impl ExpireNotifier {
    pub fn new(dev: OwnedFd) -> ExpireNotifier {
        ExpireNotifier { dev }
    }

    /// Expires (parent, name); Err(EINVAL) from a kernel without the flag.
    fn expire_entry(&self, parent: u64, name: &[u8]) -> std::io::Result<()> {
        let namelen = u32::try_from(name.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        // fuse_out_header { len, error = notify code, unique = 0 }, then
        // fuse_notify_inval_entry_out { parent, namelen, flags }, then the
        // name and its NUL.
        let len = 16 + 16 + name.len() + 1;
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&FUSE_NOTIFY_INVAL_ENTRY.to_ne_bytes());
        buf.extend_from_slice(&0u64.to_ne_bytes());
        buf.extend_from_slice(&parent.to_ne_bytes());
        buf.extend_from_slice(&namelen.to_ne_bytes());
        buf.extend_from_slice(&FUSE_EXPIRE_ONLY.to_ne_bytes());
        buf.extend_from_slice(name);
        buf.push(0);
        // SAFETY: `buf` is valid for `buf.len()` bytes; the descriptor is ours.
        let n = unsafe { libc::write(self.dev.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // ENOENT: the kernel had nothing cached.
            return if e.raw_os_error() == Some(libc::ENOENT) { Ok(()) } else { Err(e) };
        }
        Ok(())
    }
}

/// Expires an entry, or drops it where expiring is not possible (no
/// descriptor, or a kernel without FUSE_EXPIRE_ONLY).
fn expire(expirer: Option<&ExpireNotifier>, notifier: &Notifier, parent: u64, name: &[u8]) {
    if let Some(x) = expirer {
        match x.expire_entry(parent, name) {
            Ok(()) => return,
            Err(e) => debug!(parent, error = %e, "expiring an entry failed; invalidating it"),
        }
    }
    report(notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(name)), "entry", parent);
}

/// The slow thread's queue.
#[derive(Default)]
struct SlowQueue {
    pages: HashSet<u64>,
    entries: HashSet<(u64, Vec<u8>)>,
    expire: HashSet<(u64, Vec<u8>)>,
    acks: Vec<Arc<Acks>>,
    stop: bool,
}

#[derive(Default)]
struct Slow {
    queue: Mutex<SlowQueue>,
    wake: Condvar,
}

/// The running threads.
pub(crate) struct Invalidator {
    cache: Arc<MountCache>,
    slow: Arc<Slow>,
    threads: Vec<(JoinHandle<()>, Arc<AtomicBool>)>,
}

impl Invalidator {
    /// `expirer`: how reset names are expired (None: they are dropped).
    pub fn start(cache: Arc<MountCache>, notifier: Notifier, expirer: Option<ExpireNotifier>) -> std::io::Result<Invalidator> {
        let slow = Arc::new(Slow::default());
        let mut inv = Invalidator { cache: cache.clone(), slow: slow.clone(), threads: Vec::new() };
        let (s, n, done) = (slow.clone(), notifier.clone(), Arc::new(AtomicBool::new(false)));
        let d = done.clone();
        let t = std::thread::Builder::new().name("chorus-inval-slow".into()).spawn(move || {
            run_slow(&s, &n, expirer.as_ref());
            d.store(true, Ordering::SeqCst);
        })?;
        inv.threads.push((t, done));
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        // On failure `inv` drops, which stops the slow thread.
        let t = std::thread::Builder::new().name("chorus-inval".into()).spawn(move || {
            run_fast(&cache, &slow, &notifier);
            d.store(true, Ordering::SeqCst);
        })?;
        inv.threads.push((t, done));
        Ok(inv)
    }

    /// Stops the threads, waiting at most `limit` (a notification may be
    /// stuck in the kernel until the connection ends); left running after.
    pub fn stop(&mut self, limit: Duration) {
        self.cache.stop();
        let acks = {
            let mut q = self.slow.queue.lock();
            q.stop = true;
            std::mem::take(&mut q.acks)
        };
        self.slow.wake.notify_all();
        // The mount is gone: a batch stuck in the kernel holds nothing.
        for a in acks {
            a.run();
        }
        let deadline = Instant::now() + limit;
        for (thread, done) in self.threads.drain(..) {
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if done.load(Ordering::SeqCst) {
                let _ = thread.join();
            } else {
                warn!("an invalidation thread did not stop in time; leaving it");
            }
        }
    }
}

impl Drop for Invalidator {
    fn drop(&mut self) {
        self.stop(IDLE_WAIT * 2);
    }
}

/// The fast thread: attributes at once, the rest to the slow thread, and
/// the acknowledgements of batches stuck there past their time.
fn run_fast(cache: &MountCache, slow: &Slow, notifier: &Notifier) {
    let mut pending: Vec<Arc<Acks>> = Vec::new();
    let mut early = 0u64;
    loop {
        let now = Instant::now();
        let wait = pending.iter().map(|a| a.due.saturating_duration_since(now)).min().unwrap_or(IDLE_WAIT).min(IDLE_WAIT);
        let Some(work) = cache.wait_work(wait) else { break };
        let Work { attrs, pages, entries, expire, acks } = work;
        // Offset -1: attributes only; never waits on a page lock.
        for &ino in attrs.iter().chain(&pages) {
            report(notifier.inval_inode(INodeNo(ino), -1, 0), "inode attributes", ino);
        }
        if !acks.is_empty() || !pages.is_empty() || !entries.is_empty() || !expire.is_empty() {
            debug!(
                attrs = attrs.len(),
                pages = pages.len(),
                entries = entries.len(),
                expire = expire.len(),
                acks = acks.len(),
                "invalidating"
            );
        }
        let acks = (!acks.is_empty()).then(|| Arc::new(Acks { due: Instant::now() + ACK_WAIT, acks: Mutex::new(Some(acks)) }));
        if pages.is_empty() && entries.is_empty() && expire.is_empty() {
            if let Some(a) = acks {
                a.run();
            }
        } else {
            let mut q = slow.queue.lock();
            q.pages.extend(pages);
            q.entries.extend(entries);
            q.expire.extend(expire);
            if let Some(a) = acks {
                q.acks.push(a.clone());
                pending.push(a);
            }
            drop(q);
            slow.wake.notify_one();
        }
        let now = Instant::now();
        pending.retain(|a| {
            if a.due > now {
                return a.acks.lock().is_some();
            }
            if a.run() {
                early += 1;
                debug!(early, "acknowledged early");
                // Worth knowing, but a busy mount would flood the log.
                if early.is_power_of_two() {
                    info!(early, "recall acknowledged before the kernel dropped its pages or names: a request of this mount held the lock");
                }
            }
            false
        });
    }
    // Stopped: nothing is cached any more.
    for a in pending {
        a.run();
    }
}

/// The slow thread: entries, then pages, then the acknowledgements queued
/// with them.
fn run_slow(slow: &Slow, notifier: &Notifier, expirer: Option<&ExpireNotifier>) {
    loop {
        let (pages, entries, expired, acks) = {
            let mut q = slow.queue.lock();
            while !q.stop && q.pages.is_empty() && q.entries.is_empty() && q.expire.is_empty() && q.acks.is_empty() {
                slow.wake.wait_for(&mut q, IDLE_WAIT);
            }
            if q.stop {
                return;
            }
            (std::mem::take(&mut q.pages), std::mem::take(&mut q.entries), std::mem::take(&mut q.expire), std::mem::take(&mut q.acks))
        };
        for (parent, name) in &entries {
            report(notifier.inval_entry(INodeNo(*parent), OsStr::from_bytes(name)), "entry", *parent);
        }
        for (parent, name) in &expired {
            expire(expirer, notifier, *parent, name);
        }
        // Offset 0, length 0: attributes and every page.
        for &ino in &pages {
            report(notifier.inval_inode(INodeNo(ino), 0, 0), "inode pages", ino);
        }
        for a in acks {
            a.run();
        }
    }
}

/// ENOENT (the kernel had nothing cached) is already Ok from fuser; any
/// other error means the connection is going away, when nothing is cached.
fn report(r: std::io::Result<()>, what: &str, ino: u64) {
    if let Err(e) = r {
        debug!(what, ino, error = %e, "kernel invalidation failed");
    }
}
