//! The mount's cache under callbacks (DESIGN.md §5): which kernel state this
//! mount handed out under which lease, and what the kernel must be told to
//! drop. The kernel holds the cached data itself (attributes and names for
//! the TTLs given here, file and readdir pages); this module decides those
//! TTLs and queues the invalidations, which the mount's invalidation threads
//! (`fuse::invalidate`) send and then acknowledge.
//!
//! Guarantees:
//! - No lease, no caching: a TTL is the time left on a lease the backend
//!   granted for every object the answer came from, else 0.
//! - Generations: a handler takes a [`Ticket`] (the invalidation clock)
//!   before it sends; its answer is cached only if none of its objects was
//!   invalidated (recall, own change, reset) since. A recall that overtakes
//!   the reply it concerns is never undone by that reply. (Between this check
//!   and the kernel storing the reply, the kernel's own locking orders our
//!   later invalidation after it: see `fuse::invalidate`.)
//! - Every name handed out with an entry TTL is remembered under its
//!   directory, so dropping the directory invalidates exactly those names; a
//!   name that cannot be remembered (bounds) gets entry TTL 0.
//! - Own changes count as recalls: the leader drops this mount's callbacks
//!   on what it changes without recalling it, so everything the kernel holds
//!   of those objects (attributes, names, pages) is dropped too.
//! - A recall or reset is acknowledged (its `done` runs) only after the
//!   thread told the kernel everything queued before it.
//! - Untrusted, not forgotten: when a lease runs out unrenewed, or a new
//!   leader makes the mount reset, the kernel's pages of an object (file
//!   data, a readdir cache) stay only if the kernel cannot serve them without
//!   asking first, i.e. no handle of it is open (a mapping holds its handle
//!   until unmapped), and their version is known; such an object is
//!   *untrusted*. Everything else the kernel holds of it goes (after a lapse
//!   attributes and names have expired on their own, their TTLs ending with
//!   the lease; a reset drops them). The next open of an untrusted object is
//!   preceded by a fetch of its attributes (a lookup on the way, or the
//!   open's own getattr), whose grant trusts it again; the open then keeps
//!   the pages (FOPEN_KEEP_CACHE) only if that grant was received before the
//!   open was sent and the open saw the version the pages are of, else the
//!   kernel drops them at that open.
//! - Bounded: objects tracked ([`Limits::nodes`]; idle ones are forgotten,
//!   conservatively), names remembered or waiting to be invalidated
//!   ([`Limits::names`]), acknowledgements waiting ([`Limits::acks`]; beyond,
//!   a recall goes unanswered and the leader waits for the lease: safe). The
//!   lock is held for bookkeeping only, never across a backend call or a
//!   kernel notification.
//!
//! Assumes: inode numbers are never reused; object ids are inode numbers and
//! a directory's object covers its entries (negative ones too).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::debug;

/// The invalidation clock when a handler sent its request.
pub(crate) type Ticket = u64;

/// Runs once the kernel was told (or at once when nothing is cached).
type Done = Box<dyn FnOnce() + Send>;

/// Size bounds of one mount's cache bookkeeping.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Objects tracked.
    pub nodes: usize,
    /// Names remembered under directories plus names queued for invalidation.
    pub names: usize,
    /// Recall/reset acknowledgements waiting for the thread.
    pub acks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { nodes: 200_000, names: 400_000, acks: 65_536 }
    }
}

/// What this mount handed out of one object.
#[derive(Debug, Default)]
struct Node {
    /// Clock value of the object's last invalidation.
    inval_at: u64,
    /// The lease on it (the latest end of all grants since the last
    /// invalidation).
    lease_until: Option<Instant>,
    /// Names under this directory given to the kernel with an entry TTL.
    names: HashSet<Vec<u8>>,
    /// The kernel may hold pages of it (file data, readdir cache) filled
    /// while the lease held.
    pages: bool,
    /// The version of the file at the last open under the lease, of the
    /// directory when its listing was last cached: the kernel's pages are of
    /// that version while the lease holds, and while untrusted.
    open_version: Option<u64>,
    /// The version seen in an answer under the current lease (current while
    /// the lease holds).
    version: Option<u64>,
    /// Open FUSE handles (files and directories): while one is open, the
    /// kernel may serve pages (read(2), a mapping, getdents) without asking.
    handles: u32,
    /// The pages outlived the lease that proved them current: not used
    /// until a grant trusts the object again and an open checks the version.
    untrusted: bool,
    /// Trusted again after being untrusted: the next opendir compares the
    /// listing's version before keeping it.
    recheck: bool,
    /// The [`State::seq`] of the grant that last trusted it again.
    trusted_at: u64,
}

impl Node {
    /// Nothing of it is handed out, or only untrusted pages (which no open
    /// will keep once the node is forgotten).
    fn idle(&self) -> bool {
        self.lease_until.is_none()
            && self.names.is_empty()
            && self.handles == 0
            && (self.untrusted || (!self.pages && self.open_version.is_none()))
    }

    /// At a lapse or reset: whether the kernel's pages may stay, untrusted.
    fn keepable(&self, handles_lost: bool) -> bool {
        !handles_lost && self.handles == 0 && self.pages && self.open_version.is_some()
    }

    /// Stops trusting it; its pages stay in the kernel (see `keepable`).
    fn untrust(&mut self) {
        self.lease_until = None;
        self.version = None;
        self.untrusted = true;
        self.recheck = true;
    }
}

/// Kernel invalidations for the thread to send, then acknowledgements.
#[derive(Default)]
pub(crate) struct Work {
    /// Inodes whose attributes must be dropped.
    pub attrs: Vec<u64>,
    /// Inodes whose pages must be dropped too (attributes as well).
    pub pages: Vec<u64>,
    /// Directory entries (parent, name) to drop.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Directory entries to expire only (a reset): the kernel asks before
    /// using them again, but keeps the dentry, and with it the inode and
    /// its untrusted pages (FUSE frees an inode with its last dentry).
    pub expire: Vec<(u64, Vec<u8>)>,
    /// Run after all of the above.
    pub acks: Vec<Done>,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("attrs", &self.attrs)
            .field("pages", &self.pages)
            .field("entries", &self.entries)
            .field("expire", &self.expire)
            .field("acks", &self.acks.len())
            .finish()
    }
}

#[derive(Default)]
struct State {
    clock: u64,
    /// Invalidation clock of every object not in `nodes` (forgotten ones
    /// count as invalidated when they were forgotten).
    floor: u64,
    nodes: HashMap<u64, Node>,
    /// Names remembered in nodes plus names in `pending_entries` and
    /// `pending_expire`.
    names: usize,
    /// (lease end, object) per grant: when to look for lapsed leases.
    lapses: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Object → whether its pages go too.
    pending_inodes: HashMap<u64, bool>,
    pending_entries: Vec<(u64, Vec<u8>)>,
    pending_expire: Vec<(u64, Vec<u8>)>,
    pending_acks: Vec<Done>,
    stopped: bool,
    /// Counts grants that trusted an untrusted object again.
    seq: u64,
    /// A handle could not be counted (table full): no pages are ever kept
    /// untrusted from then on.
    handles_lost: bool,
}

/// The outcome of [`MountCache::grant`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The kernel TTL (time left on the lease); None: cache nothing.
    pub ttl: Option<Duration>,
    /// Per name asked for: whether it was remembered (entry TTL allowed).
    pub names: Vec<bool>,
}

impl Grant {
    fn none(names: usize) -> Grant {
        Grant { ttl: None, names: vec![false; names] }
    }

    /// The attribute TTL (0 without a lease).
    pub fn attr_ttl(&self) -> Duration {
        self.ttl.unwrap_or_default()
    }

    /// The entry TTL of the `i`th name asked for.
    pub fn entry_ttl(&self, i: usize) -> Duration {
        match self.names.get(i) {
            Some(true) => self.attr_ttl(),
            _ => Duration::ZERO,
        }
    }
}

impl State {
    fn inval_at(&self, object: u64) -> u64 {
        self.nodes.get(&object).map_or(self.floor, |n| n.inval_at)
    }

    fn valid(&self, object: u64, ticket: Ticket) -> bool {
        self.inval_at(object) <= ticket
    }

    /// The node of `object`, made if needed (forgetting idle nodes when
    /// full); None when the table is full of live ones.
    fn node(&mut self, object: u64, limits: &Limits) -> Option<&mut Node> {
        if !self.nodes.contains_key(&object) {
            if self.nodes.len() >= limits.nodes {
                let mut forgotten = self.floor;
                let pending = &mut self.pending_inodes;
                self.nodes.retain(|&o, n| {
                    if n.idle() {
                        forgotten = forgotten.max(n.inval_at);
                        if n.untrusted {
                            // Never kept once forgotten; free them.
                            pending.insert(o, true);
                        }
                        false
                    } else {
                        true
                    }
                });
                self.floor = forgotten;
                if self.nodes.len() >= limits.nodes {
                    return None;
                }
            }
            // A new node starts where an absent one stood.
            self.nodes.insert(object, Node { inval_at: self.floor, ..Node::default() });
        }
        self.nodes.get_mut(&object)
    }

    /// Stops trusting `object` and queues everything the kernel may hold
    /// of it (pages and remembered names included).
    fn invalidate(&mut self, object: u64, limits: &Limits) {
        self.clock += 1;
        let now = self.clock;
        let names = match self.node(object, limits) {
            Some(n) => {
                n.inval_at = now;
                n.lease_until = None;
                n.open_version = None;
                n.version = None;
                n.untrusted = false;
                n.recheck = false;
                n.pages = false;
                std::mem::take(&mut n.names)
            }
            None => {
                // Untracked (table full): every object counts as changed now.
                self.floor = now;
                HashSet::new()
            }
        };
        self.pending_entries.extend(names.into_iter().map(|name| (object, name)));
        // Pages even of objects never marked: the kernel fills pages from
        // every read, and the leader recalls what it granted, whatever this
        // mount decided about TTLs.
        self.pending_inodes.insert(object, true);
    }

    fn has_work(&self) -> bool {
        !self.pending_inodes.is_empty()
            || !self.pending_entries.is_empty()
            || !self.pending_expire.is_empty()
            || !self.pending_acks.is_empty()
    }

    /// Leases that ran out unrenewed: their pages go unless they can stay
    /// untrusted; their names and attributes have expired in the kernel
    /// already.
    fn sweep(&mut self, now: Instant) {
        let handles_lost = self.handles_lost;
        while let Some(Reverse((until, object))) = self.lapses.peek().copied() {
            if until > now {
                break;
            }
            self.lapses.pop();
            let Some(n) = self.nodes.get_mut(&object) else { continue };
            if n.lease_until != Some(until) {
                continue; // renewed or invalidated since
            }
            let names = std::mem::take(&mut n.names).len();
            debug!(object, keep = n.keepable(handles_lost), handles = n.handles, pages = n.pages, version = ?n.open_version, "lease lapsed");
            if n.keepable(handles_lost) {
                n.untrust();
            } else {
                n.lease_until = None;
                n.open_version = None;
                n.version = None;
                if std::mem::take(&mut n.pages) {
                    self.pending_inodes.entry(object).or_insert(true);
                }
            }
            self.names -= names;
        }
    }

    fn take(&mut self) -> Work {
        let mut work = Work::default();
        for (object, pages) in self.pending_inodes.drain() {
            if pages {
                work.pages.push(object);
            } else {
                work.attrs.push(object);
            }
        }
        self.names -= self.pending_entries.len() + self.pending_expire.len();
        work.entries = std::mem::take(&mut self.pending_entries);
        work.expire = std::mem::take(&mut self.pending_expire);
        work.acks = std::mem::take(&mut self.pending_acks);
        work
    }

    fn push_lapse(&mut self, until: Instant, object: u64, limits: &Limits) {
        self.lapses.push(Reverse((until, object)));
        // Stale entries (renewed leases) pile up: rebuild from the nodes.
        if self.lapses.len() > 4 * limits.nodes + 1024 {
            self.lapses = self.nodes.iter().filter_map(|(&o, n)| n.lease_until.map(|u| Reverse((u, o)))).collect();
        }
    }
}

/// One mount's cache bookkeeping, shared by the FUSE handlers, the
/// invalidation thread and (through [`CacheControl`]) the backend.
pub(crate) struct MountCache {
    /// Off: every TTL is 0 (recalls are still answered).
    enabled: bool,
    limits: Limits,
    state: Mutex<State>,
    /// Wakes the invalidation thread.
    wake: Condvar,
}

impl MountCache {
    pub fn new(enabled: bool, limits: Limits) -> MountCache {
        MountCache { enabled, limits, state: Mutex::new(State::default()), wake: Condvar::new() }
    }

    /// Take before sending a request whose answer may be cached.
    pub fn ticket(&self) -> Ticket {
        self.state.lock().clock
    }

    /// The answer to a request sent at `ticket` came with `lease_until`
    /// from `objects`. Caches it if every object is unchanged since the
    /// ticket: records the lease, remembers `names` ((directory, name)
    /// given to the kernel with an entry TTL) and marks `pages` (objects
    /// whose pages the kernel fills from this answer).
    pub fn grant(
        &self,
        ticket: Ticket,
        lease_until: Option<Instant>,
        objects: &[u64],
        names: &[(u64, &[u8])],
        pages: &[u64],
        now: Instant,
    ) -> Grant {
        let mut st = self.state.lock();
        // Pages filled without a lease of their own, under a lease the
        // object still has, must still go when that lease lapses.
        for p in pages {
            if let Some(n) = st.nodes.get_mut(p) {
                if n.lease_until.is_some_and(|u| u > now) {
                    n.pages = true;
                }
            }
        }
        let Some(until) = lease_until.filter(|u| *u > now && self.enabled) else { return Grant::none(names.len()) };
        // Nodes first: making one may forget idle ones, which moves the
        // floor that absent objects are judged by.
        for &o in objects {
            if st.node(o, &self.limits).is_none() {
                return Grant::none(names.len());
            }
        }
        // (Making a later one may have forgotten an earlier, still idle one.)
        if objects.iter().any(|&o| !st.nodes.contains_key(&o) || !st.valid(o, ticket)) {
            return Grant::none(names.len());
        }
        for &o in objects {
            let n = st.nodes.get_mut(&o).expect("made above");
            // A fresh grant: the leader recalls this object from now on, so
            // untrusted pages may be checked by version at the next open.
            let retrusted = std::mem::take(&mut n.untrusted);
            if n.lease_until.is_none_or(|u| u < until) {
                n.lease_until = Some(until);
                st.push_lapse(until, o, &self.limits);
            }
            if retrusted {
                st.seq += 1;
                let seq = st.seq;
                st.nodes.get_mut(&o).expect("made above").trusted_at = seq;
            }
        }
        for p in pages {
            if let Some(n) = st.nodes.get_mut(p) {
                n.pages = true;
            }
        }
        let mut remembered = Vec::with_capacity(names.len());
        for &(dir, name) in names {
            // A name counts for its directory's object: that must be one
            // of the objects granted.
            let ok = objects.contains(&dir) && {
                let room = st.names < self.limits.names;
                let n = st.nodes.get_mut(&dir).expect("made above");
                let known = n.names.contains(name);
                if !known && room {
                    n.names.insert(name.to_vec());
                    st.names += 1;
                }
                known || room
            };
            remembered.push(ok);
        }
        Grant { ttl: Some(until - now), names: remembered }
    }

    /// This mount changed `objects` (a write's `changed`): the leader
    /// dropped this mount's callbacks on them without a recall, so they are
    /// dropped here like recalled ones (no acknowledgement).
    pub fn changed(&self, objects: &[u64]) {
        if objects.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        if st.stopped {
            return;
        }
        for &o in objects {
            st.invalidate(o, &self.limits);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// The backend's recall: drop `objects`, then `done`.
    pub fn recall(&self, objects: &[u64], done: Done) {
        let mut st = self.state.lock();
        if st.stopped {
            drop(st);
            done(); // unmounted: the kernel holds nothing of ours
            return;
        }
        for &o in objects {
            st.invalidate(o, &self.limits);
        }
        if st.pending_acks.len() < self.limits.acks {
            st.pending_acks.push(done);
        } // else: unanswered; the leader waits for the lease (safe)
        drop(st);
        self.wake.notify_one();
    }

    /// Stops trusting everything handed out (a new leader, or a change of
    /// unknown extent), then `done`: attributes and names are dropped,
    /// pages too unless they can stay untrusted (see the module comment).
    /// No answer sent before is cached afterwards.
    pub fn drop_all(&self, done: Done) {
        let mut st = self.state.lock();
        if st.stopped {
            drop(st);
            done();
            return;
        }
        st.clock += 1;
        let now = st.clock;
        st.floor = now;
        let handles_lost = st.handles_lost;
        let nodes = std::mem::take(&mut st.nodes);
        for (object, mut n) in nodes {
            st.pending_expire.extend(std::mem::take(&mut n.names).into_iter().map(|name| (object, name)));
            let keep = n.keepable(handles_lost);
            debug!(object, keep, handles = n.handles, pages = n.pages, version = ?n.open_version, "reset");
            if keep {
                // Attributes only: the pages stay, untrusted.
                st.pending_inodes.entry(object).or_insert(false);
                n.untrust();
            } else if n.lease_until.is_some() || n.pages || n.open_version.is_some() || n.untrusted {
                st.pending_inodes.insert(object, true);
            }
            if keep || n.handles > 0 {
                // Kept: its clock (no earlier answer is cached) and its
                // handle count.
                let kept = Node {
                    inval_at: now,
                    handles: n.handles,
                    untrusted: keep,
                    recheck: keep,
                    pages: keep,
                    open_version: if keep { n.open_version } else { None },
                    trusted_at: n.trusted_at,
                    ..Node::default()
                };
                st.nodes.insert(object, kept);
            }
        }
        st.names = st.pending_entries.len() + st.pending_expire.len();
        st.lapses.clear();
        if st.pending_acks.len() < self.limits.acks {
            st.pending_acks.push(done);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Whether `ino`'s pages are untrusted: an open must fetch its
    /// attributes first (a grant) to have a chance of keeping them.
    pub fn untrusted(&self, ino: u64) -> bool {
        self.state.lock().nodes.get(&ino).is_some_and(|n| n.untrusted)
    }

    /// Take before sending an open, after any fetch meant to trust the
    /// object again: only a grant received before this counts for the open.
    pub fn seq(&self) -> u64 {
        self.state.lock().seq
    }

    /// An answer to a request sent at `ticket` showed `ino` at `version`:
    /// remembered while the lease holds (call after its grant).
    pub fn seen(&self, ticket: Ticket, ino: u64, version: u64, now: Instant) {
        let mut st = self.state.lock();
        let valid = st.valid(ino, ticket);
        if let Some(n) = st.nodes.get_mut(&ino) {
            if valid && !n.untrusted && n.lease_until.is_some_and(|u| u > now) {
                n.version = Some(version);
            }
        }
    }

    /// Counts an open handle of `ino` (its node made if needed); false when
    /// the table is full and it could not be counted.
    fn count_handle(st: &mut State, ino: u64, limits: &Limits) -> bool {
        match st.node(ino, limits) {
            Some(n) => {
                n.handles = n.handles.saturating_add(1);
                true
            }
            None => {
                st.handles_lost = true;
                false
            }
        }
    }

    /// Whether the kernel may keep what it has of `ino` at an open (a grant
    /// of it holds, received before the open was sent at `ticket` and
    /// `seq`, nothing invalidated since); if not, it drops it at that open.
    fn proven(st: &State, ino: u64, ticket: Ticket, seq: u64, now: Instant) -> bool {
        let valid = st.valid(ino, ticket);
        st.nodes.get(&ino).is_some_and(|n| valid && !n.untrusted && n.trusted_at <= seq && n.lease_until.is_some_and(|u| u > now))
    }

    /// Open of `ino` (sent at `ticket` and `seq`) answered with the file at
    /// `version` (counts the new handle): whether the kernel may keep the
    /// pages it has (FOPEN_KEEP_CACHE): the lease holds (granted before the
    /// open was sent), nothing was invalidated since the ticket, and the
    /// last open under this lease, or before the pages became untrusted,
    /// saw the same version.
    pub fn keep_cache(&self, ticket: Ticket, ino: u64, version: u64, seq: u64, now: Instant) -> bool {
        if !self.enabled {
            return false;
        }
        let mut st = self.state.lock();
        if !Self::count_handle(&mut st, ino, &self.limits) {
            return false;
        }
        let proven = Self::proven(&st, ino, ticket, seq, now);
        let valid = st.valid(ino, ticket);
        let n = st.nodes.get_mut(&ino).expect("counted above");
        debug!(ino, proven, valid, untrusted = n.untrusted, trusted_at = n.trusted_at, seq, lease = ?n.lease_until.map(|u| u.saturating_duration_since(now)), version, open_version = ?n.open_version, "open");
        if !proven {
            if n.untrusted {
                // The kernel drops them at this open.
                n.untrusted = false;
                n.pages = false;
                n.open_version = None;
            }
            return false;
        }
        let keep = n.open_version == Some(version);
        n.open_version = Some(version);
        n.pages = true;
        n.recheck = false;
        keep
    }

    /// Opendir of `ino` (started at `ticket` and `seq`; counts the handle):
    /// whether the kernel may cache its listing (FOPEN_CACHE_DIR: a lease
    /// holds) and keep the listing it has (FOPEN_KEEP_CACHE: also, if it
    /// outlived a lease, the directory is still at the version it was of).
    pub fn cache_dir(&self, ticket: Ticket, ino: u64, seq: u64, now: Instant) -> (bool, bool) {
        if !self.enabled {
            return (false, false);
        }
        let mut st = self.state.lock();
        if !Self::count_handle(&mut st, ino, &self.limits) {
            return (false, false);
        }
        let proven = Self::proven(&st, ino, ticket, seq, now);
        let n = st.nodes.get_mut(&ino).expect("counted above");
        if !proven {
            if n.untrusted {
                n.untrusted = false;
                n.pages = false;
                n.open_version = None;
            }
            return (false, false);
        }
        let keep = !n.recheck || (n.open_version.is_some() && n.open_version == n.version);
        if !keep || n.version.is_some() {
            n.open_version = n.version;
        }
        n.recheck = false;
        n.pages = true;
        (true, keep)
    }

    /// A file handle made by a create: counted like an open's.
    pub fn created(&self, ino: u64) {
        if self.enabled {
            let mut st = self.state.lock();
            Self::count_handle(&mut st, ino, &self.limits);
        }
    }

    /// A handle of `ino` (file or directory) was released.
    pub fn released(&self, ino: u64) {
        if self.enabled {
            if let Some(n) = self.state.lock().nodes.get_mut(&ino) {
                n.handles = n.handles.saturating_sub(1);
            }
        }
    }

    /// The next batch for the invalidation thread: waits (at most
    /// `max_wait`, or until a lease runs out) for work. None once stopped.
    pub fn wait_work(&self, max_wait: Duration) -> Option<Work> {
        let mut st = self.state.lock();
        let deadline = Instant::now() + max_wait;
        loop {
            if st.stopped {
                return None;
            }
            let now = Instant::now();
            st.sweep(now);
            if st.has_work() {
                return Some(st.take());
            }
            if now >= deadline {
                return Some(Work::default());
            }
            let next = st.lapses.peek().map_or(deadline, |Reverse((t, _))| (*t).min(deadline));
            // A lapse is acted on at its time or just after, never before.
            self.wake.wait_for(&mut st, next.saturating_duration_since(now) + Duration::from_millis(1));
        }
    }

    /// The mount is gone: answers waiting acknowledgements (nothing is
    /// cached any more) and every later one at once.
    pub fn stop(&self) {
        let acks = {
            let mut st = self.state.lock();
            st.stopped = true;
            st.pending_inodes.clear();
            st.pending_entries.clear();
            st.pending_expire.clear();
            st.names = st.nodes.values().map(|n| n.names.len()).sum();
            std::mem::take(&mut st.pending_acks)
        };
        self.wake.notify_all();
        for done in acks {
            done();
        }
    }

    #[cfg(test)]
    fn take_now(&self, now: Instant) -> Work {
        let mut st = self.state.lock();
        st.sweep(now);
        st.take()
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.nodes.len(), st.names)
    }
}

/// The mount's cache as a backend sees it ([`crate::Backend::attach`]):
/// where recalls and new leaders are reported. Cheap to clone; never
/// blocks (the kernel is told from the mount's invalidation thread).
#[derive(Clone)]
pub struct CacheControl {
    cache: Arc<MountCache>,
}

impl std::fmt::Debug for CacheControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheControl").finish_non_exhaustive()
    }
}

impl CacheControl {
    pub(crate) fn new(cache: Arc<MountCache>) -> CacheControl {
        CacheControl { cache }
    }

    /// A recall: drop `objects` (inode numbers) from every cache, the
    /// kernel's included; `done` runs after that (send the acknowledgement
    /// from it). Dropped without running when too many are waiting: the
    /// server then ends the recall when the lease runs out.
    pub fn recall(&self, objects: &[u64], done: impl FnOnce() + Send + 'static) {
        self.cache.recall(objects, Box::new(done));
    }

    /// Drops everything this mount handed out (a new leader, or a write of
    /// unknown outcome); `done` runs after that. Answers sent before this
    /// call are not cached afterwards.
    pub fn drop_all(&self, done: impl FnOnce() + Send + 'static) {
        self.cache.drop_all(Box::new(done));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cache() -> MountCache {
        MountCache::new(true, Limits::default())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn counter() -> (Arc<AtomicUsize>, impl Fn() -> Done) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (n, move || {
            let m = m.clone();
            Box::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            })
        })
    }

    #[test]
    fn a_lease_gives_its_remaining_time_and_no_lease_gives_none() {
        let c = cache();
        let now = Instant::now();
        let t = c.ticket();
        let g = c.grant(t, Some(now + secs(4)), &[5], &[], &[], now);
        assert_eq!(g.ttl, Some(secs(4)));
        assert_eq!(c.grant(t, None, &[5], &[], &[], now).ttl, None);
        assert_eq!(c.grant(t, Some(now), &[5], &[], &[], now).ttl, None, "an expired lease is none");
        let off = MountCache::new(false, Limits::default());
        assert_eq!(off.grant(off.ticket(), Some(now + secs(4)), &[5], &[], &[], now).ttl, None, "caching off");
    }

    #[test]
    fn a_recall_during_a_request_means_no_caching() {
        let c = cache();
        let now = Instant::now();
        let t = c.ticket();
        c.recall(&[5], Box::new(|| {}));
        assert_eq!(c.grant(t, Some(now + secs(4)), &[1, 5], &[], &[], now).ttl, None, "5 was recalled after the ticket");
        // Another object is unaffected; a request sent after the recall caches.
        assert!(c.grant(t, Some(now + secs(4)), &[1], &[], &[], now).ttl.is_some());
        let t2 = c.ticket();
        assert!(c.grant(t2, Some(now + secs(4)), &[5], &[], &[], now).ttl.is_some());
    }

    #[test]
    fn own_changes_count_like_recalls_but_need_no_ack() {
        let c = cache();
        let now = Instant::now();
        let t = c.ticket();
        assert!(c.grant(t, Some(now + secs(4)), &[1, 7], &[(1, b"f")], &[], now).ttl.is_some());
        let t2 = c.ticket();
        c.changed(&[1]);
        assert_eq!(c.grant(t2, Some(now + secs(4)), &[1], &[], &[], now).ttl, None);
        let w = c.take_now(now);
        assert_eq!(w.pages, vec![1]);
        assert_eq!(w.entries, vec![(1, b"f".to_vec())], "the names given under 1 are no longer covered");
        assert!(w.acks.is_empty());
    }

    #[test]
    fn a_reset_drops_everything_and_no_earlier_answer_caches() {
        let c = cache();
        let now = Instant::now();
        let t = c.ticket();
        c.grant(t, Some(now + secs(4)), &[1, 2], &[(1, b"a"), (1, b"b")], &[2], now);
        let (acks, done) = counter();
        c.drop_all(done());
        assert_eq!(c.grant(t, Some(now + secs(4)), &[3], &[], &[], now).ttl, None, "sent before the reset");
        let mut w = c.take_now(now);
        w.pages.sort_unstable();
        w.expire.sort();
        assert_eq!(w.pages, vec![1, 2]);
        assert_eq!(w.expire, vec![(1, b"a".to_vec()), (1, b"b".to_vec())], "names expire (their inodes stay)");
        assert_eq!(acks.load(Ordering::SeqCst), 0, "the thread acks after the kernel was told");
        for a in w.acks {
            a();
        }
        assert_eq!(acks.load(Ordering::SeqCst), 1);
        assert_eq!(c.counts(), (1, 0), "only the idle node of the refused grant of 3 is left");
    }

    #[test]
    fn negative_and_positive_names_are_remembered_and_recalled_with_their_directory() {
        let c = cache();
        let now = Instant::now();
        let t = c.ticket();
        // A negative lookup of "x" in 1 and a positive one of "y" (ino 9).
        let g = c.grant(t, Some(now + secs(4)), &[1], &[(1, b"x")], &[], now);
        assert_eq!((g.attr_ttl(), g.entry_ttl(0)), (secs(4), secs(4)));
        c.grant(t, Some(now + secs(4)), &[1, 9], &[(1, b"y")], &[], now);
        let (acks, done) = counter();
        c.recall(&[9], done());
        let w = c.take_now(now);
        assert_eq!(w.pages, vec![9]);
        assert!(w.entries.is_empty(), "the child's recall leaves its directory's names");
        c.recall(&[1], done());
        let mut w = c.take_now(now);
        w.entries.sort();
        assert_eq!(w.entries, vec![(1, b"x".to_vec()), (1, b"y".to_vec())]);
        assert_eq!(w.acks.len(), 1);
        assert_eq!(acks.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_name_is_only_remembered_under_a_granted_directory_and_within_bounds() {
        let c = MountCache::new(true, Limits { nodes: 100, names: 2, acks: 10 });
        let now = Instant::now();
        let t = c.ticket();
        let g = c.grant(t, Some(now + secs(4)), &[1], &[(1, b"a"), (2, b"b"), (1, b"c"), (1, b"d"), (1, b"a")], &[], now);
        assert_eq!(g.names, vec![true, false, true, false, true], "2 not granted; room for two names; a known name is fine");
        assert_eq!(g.entry_ttl(3), Duration::ZERO);
        assert_eq!(g.attr_ttl(), secs(4));
    }

    #[test]
    fn lease_expiry_drops_pages_but_renewal_keeps_them() {
        let c = cache();
        let t0 = Instant::now();
        let t = c.ticket();
        c.grant(t, Some(t0 + secs(2)), &[5], &[], &[5], t0);
        c.grant(t, Some(t0 + secs(2)), &[6, 1], &[(1, b"n")], &[6], t0);
        // 6 is renewed before its lease ends; 5 is not.
        c.grant(c.ticket(), Some(t0 + secs(5)), &[6], &[], &[6], t0 + secs(1));
        let w = c.take_now(t0 + secs(3));
        assert_eq!(w.pages, vec![5], "5 lapsed with pages; 6 was renewed; 1 had no pages");
        assert!(w.entries.is_empty(), "names expired in the kernel with the lease");
        assert_eq!(c.counts().1, 0);
        let w = c.take_now(t0 + secs(6));
        assert_eq!(w.pages, vec![6]);
        // Lapsed: a keep-cache open needs a fresh lease.
        assert!(!c.keep_cache(c.ticket(), 5, 1, c.seq(), t0 + secs(6)));
    }

    #[test]
    fn keep_cache_needs_the_same_version_under_one_unbroken_lease() {
        let c = cache();
        let now = Instant::now();
        c.grant(c.ticket(), Some(now + secs(4)), &[5], &[], &[], now);
        assert!(!c.keep_cache(c.ticket(), 5, 3, c.seq(), now), "first open: the kernel's pages may predate the lease");
        assert!(c.keep_cache(c.ticket(), 5, 3, c.seq(), now), "same version, lease holds");
        assert!(!c.keep_cache(c.ticket(), 5, 4, c.seq(), now), "the file changed");
        let t = c.ticket();
        c.recall(&[5], Box::new(|| {}));
        assert!(!c.keep_cache(t, 5, 4, c.seq(), now), "recalled during the open");
        c.grant(c.ticket(), Some(now + secs(4)), &[5], &[], &[], now);
        assert!(!c.keep_cache(c.ticket(), 5, 4, c.seq(), now), "the recall forgot the open version");
        assert!(c.keep_cache(c.ticket(), 5, 4, c.seq(), now));
        assert!(!c.keep_cache(c.ticket(), 5, 4, c.seq(), now + secs(5)), "lease over");
        assert!(!c.keep_cache(c.ticket(), 77, 1, c.seq(), now), "never granted");
    }

    #[test]
    fn cache_dir_needs_a_live_lease() {
        let c = cache();
        let now = Instant::now();
        assert_eq!(c.cache_dir(c.ticket(), 1, c.seq(), now), (false, false));
        c.grant(c.ticket(), Some(now + secs(4)), &[1], &[], &[], now);
        assert_eq!(c.cache_dir(c.ticket(), 1, c.seq(), now), (true, true));
        assert_eq!(c.cache_dir(c.ticket(), 1, c.seq(), now + secs(4)), (false, false));
        // The listing pages go when the lease lapses.
        assert_eq!(c.take_now(now + secs(5)).pages, vec![1]);
    }

    #[test]
    fn a_full_table_forgets_idle_objects_conservatively() {
        let c = MountCache::new(true, Limits { nodes: 2, names: 10, acks: 10 });
        let now = Instant::now();
        let t = c.ticket();
        assert!(c.grant(t, Some(now + secs(1)), &[1], &[], &[], now).ttl.is_some());
        assert!(c.grant(t, Some(now + secs(1)), &[2], &[], &[], now).ttl.is_some());
        assert!(c.grant(t, Some(now + secs(1)), &[3], &[], &[], now).ttl.is_none(), "full of live leases");
        // Recalled objects stay tracked (their clock matters) until idle...
        c.recall(&[1], Box::new(|| {}));
        let t2 = c.ticket();
        let _ = c.take_now(now);
        // ...then make room, and everything sent before counts as changed.
        assert!(c.grant(t, Some(now + secs(1)), &[3], &[], &[], now).ttl.is_none(), "sent before 1 was forgotten");
        assert!(c.grant(t2, Some(now + secs(1)), &[3], &[], &[], now).ttl.is_some());
    }

    #[test]
    fn acks_beyond_the_bound_are_dropped_and_stop_answers_the_rest() {
        let c = MountCache::new(true, Limits { nodes: 10, names: 10, acks: 2 });
        let (acks, done) = counter();
        for _ in 0..3 {
            c.recall(&[1], done());
        }
        c.stop();
        assert_eq!(acks.load(Ordering::SeqCst), 2, "two waited and were answered at stop; the third was dropped");
        c.recall(&[1], done());
        c.drop_all(done());
        assert_eq!(acks.load(Ordering::SeqCst), 4, "after stop: at once");
        assert!(c.wait_work(Duration::from_millis(1)).is_none());
    }

    /// A file opened (version `v`), read under a lease until `until` and
    /// closed: its pages are in the kernel.
    fn read_and_closed(c: &MountCache, ino: u64, v: u64, t0: Instant, until: Instant) {
        c.grant(c.ticket(), Some(until), &[ino], &[], &[], t0);
        c.keep_cache(c.ticket(), ino, v, c.seq(), t0);
        c.grant(c.ticket(), Some(until), &[ino], &[], &[ino], t0);
        c.released(ino);
    }

    #[test]
    fn a_lapse_keeps_closed_files_pages_untrusted_until_a_fresh_grant_and_the_same_version() {
        let c = cache();
        let t0 = Instant::now();
        for ino in [5, 6, 8] {
            read_and_closed(&c, ino, 3, t0, t0 + secs(2));
        }
        // 7 is still open (or mapped) when its lease lapses.
        c.grant(c.ticket(), Some(t0 + secs(2)), &[7], &[], &[], t0);
        c.keep_cache(c.ticket(), 7, 3, c.seq(), t0);
        c.grant(c.ticket(), Some(t0 + secs(2)), &[7], &[], &[7], t0);
        let t1 = t0 + secs(3);
        assert_eq!(c.take_now(t1).pages, vec![7], "only the open file's pages go: the kernel could serve them unasked");
        assert!(c.untrusted(5) && c.untrusted(6) && c.untrusted(8) && !c.untrusted(7));
        // Unchanged: a fresh grant (the open's getattr), then the open at the same version keeps them.
        let t = c.ticket();
        assert!(c.grant(c.ticket(), Some(t1 + secs(4)), &[5], &[], &[], t1).ttl.is_some());
        assert!(!c.untrusted(5));
        assert!(c.keep_cache(t, 5, 3, c.seq(), t1), "same version after a fresh grant: kept");
        // Changed: the open sees another version; the kernel drops them at that open.
        let t = c.ticket();
        c.grant(c.ticket(), Some(t1 + secs(4)), &[6], &[], &[], t1);
        assert!(!c.keep_cache(t, 6, 4, c.seq(), t1), "changed while untrusted: dropped");
        // Without a fresh grant no open keeps anything.
        let t = c.ticket();
        assert!(!c.keep_cache(t, 8, 3, c.seq(), t1), "untrusted, no grant yet");
        assert!(!c.untrusted(8), "that open dropped them");
        c.grant(c.ticket(), Some(t1 + secs(4)), &[8], &[], &[], t1);
        assert!(!c.keep_cache(c.ticket(), 8, 3, c.seq(), t1), "their version was forgotten with them");
        assert!(c.take_now(t1).pages.is_empty());
    }

    #[test]
    fn a_grant_received_after_the_open_was_sent_does_not_count() {
        let c = cache();
        let t0 = Instant::now();
        read_and_closed(&c, 5, 3, t0, t0 + secs(2));
        let t1 = t0 + secs(3);
        let _ = c.take_now(t1);
        let (t, seq) = (c.ticket(), c.seq());
        // A concurrent getattr's grant arrives while the open is in flight:
        // the leader may have granted after the open committed.
        c.grant(c.ticket(), Some(t1 + secs(4)), &[5], &[], &[], t1);
        assert!(!c.keep_cache(t, 5, 3, seq, t1));
    }

    #[test]
    fn a_reset_keeps_closed_files_pages_untrusted_but_drops_attributes_and_names() {
        let c = cache();
        let t0 = Instant::now();
        let until = t0 + secs(4);
        c.grant(c.ticket(), Some(until), &[1, 5], &[(1, b"f")], &[], t0);
        read_and_closed(&c, 5, 3, t0, until);
        // 6 is open at the reset.
        c.grant(c.ticket(), Some(until), &[6], &[], &[], t0);
        c.keep_cache(c.ticket(), 6, 3, c.seq(), t0);
        c.grant(c.ticket(), Some(until), &[6], &[], &[6], t0);
        let before = c.ticket();
        let (acks, done) = counter();
        c.drop_all(done());
        let mut w = c.take_now(t0);
        w.attrs.sort_unstable();
        w.pages.sort_unstable();
        assert_eq!(w.attrs, vec![5], "the kept file's attributes go (their TTL may outlive the reset)");
        assert_eq!(w.pages, vec![1, 6], "1 (no pages of its own) and the open 6 lose everything");
        assert_eq!(w.expire, vec![(1, b"f".to_vec())]);
        for a in w.acks {
            a();
        }
        assert_eq!(acks.load(Ordering::SeqCst), 1);
        assert!(c.untrusted(5));
        // An answer sent before the reset trusts nothing again.
        assert_eq!(c.grant(before, Some(until), &[5], &[], &[], t0).ttl, None);
        assert!(c.untrusted(5));
        let t = c.ticket();
        c.grant(c.ticket(), Some(until), &[5], &[], &[], t0);
        assert!(c.keep_cache(t, 5, 3, c.seq(), t0), "unchanged across the new leader: kept");
        // 6's handle was counted through the reset: released, then a lapse drops it.
        c.released(6);
        assert!(!c.keep_cache(c.ticket(), 6, 3, c.seq(), t0), "6 lost its pages at the reset");
    }

    #[test]
    fn a_directory_listing_outlives_a_lapse_only_at_the_same_version() {
        let c = cache();
        let t0 = Instant::now();
        for (dir, v) in [(1, 7), (2, 7)] {
            let t = c.ticket();
            c.grant(t, Some(t0 + secs(2)), &[dir], &[], &[], t0);
            c.seen(t, dir, v, t0);
            assert_eq!(c.cache_dir(c.ticket(), dir, c.seq(), t0), (true, true));
            c.released(dir);
        }
        let t1 = t0 + secs(3);
        assert!(c.take_now(t1).pages.is_empty());
        assert!(c.untrusted(1) && c.untrusted(2));
        for (dir, now_v, keep) in [(1, 7, true), (2, 8, false)] {
            // opendir of an untrusted directory: its getattr first.
            let t = c.ticket();
            let t2 = c.ticket();
            c.grant(t2, Some(t1 + secs(4)), &[dir], &[], &[], t1);
            c.seen(t2, dir, now_v, t1);
            assert_eq!(c.cache_dir(t, dir, c.seq(), t1), (true, keep), "dir {dir}");
        }
        // A listing whose version was never seen is not kept past a lapse.
        c.grant(c.ticket(), Some(t1 + secs(1)), &[3], &[], &[], t1);
        assert_eq!(c.cache_dir(c.ticket(), 3, c.seq(), t1), (true, true));
        c.released(3);
        assert_eq!(c.take_now(t1 + secs(2)).pages, vec![3]);
    }

    #[test]
    fn untrusted_pages_make_room_when_the_table_is_full() {
        let c = MountCache::new(true, Limits { nodes: 2, names: 10, acks: 10 });
        let t0 = Instant::now();
        read_and_closed(&c, 1, 1, t0, t0 + secs(1));
        read_and_closed(&c, 2, 1, t0, t0 + secs(1));
        let t1 = t0 + secs(2);
        assert!(c.take_now(t1).pages.is_empty());
        assert!(c.grant(c.ticket(), Some(t1 + secs(1)), &[3], &[], &[], t1).ttl.is_some(), "untrusted nodes are forgotten");
        let mut w = c.take_now(t1);
        w.pages.sort_unstable();
        assert_eq!(w.pages, vec![1, 2], "and their pages dropped");
        // A handle that cannot be counted: nothing is kept untrusted again.
        c.keep_cache(c.ticket(), 4, 1, c.seq(), t1);
        c.keep_cache(c.ticket(), 5, 1, c.seq(), t1);
        c.keep_cache(c.ticket(), 6, 1, c.seq(), t1);
        assert!(c.state.lock().handles_lost);
    }

    #[test]
    fn the_thread_wakes_for_work_and_for_lapses() {
        let c = Arc::new(cache());
        let now = Instant::now();
        c.grant(c.ticket(), Some(now + Duration::from_millis(50)), &[4], &[], &[4], now);
        let start = Instant::now();
        let w = c.wait_work(secs(5)).expect("running");
        assert_eq!(w.pages, vec![4]);
        assert!(start.elapsed() < secs(2), "woke at the lapse, not the idle bound");
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait_work(secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        c.changed(&[8]);
        let w = t.join().unwrap().expect("running");
        assert_eq!(w.pages, vec![8]);
        assert!(c.wait_work(Duration::from_millis(5)).expect("running").pages.is_empty(), "idle bound");
    }
}
