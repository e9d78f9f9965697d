//! The seam between the FUSE frontend and whatever executes file-system
//! operations. Keeping it one blocking call makes the frontend testable
//! against an in-process store and independent of the transport.
//!
//! Callbacks (DESIGN.md §5) extend it backwards-compatibly: a backend that
//! grants leases answers [`Backend::call_leased`] with how long the objects a
//! query returned may be cached and which inodes a mutation changed, and
//! reports recalls and new leaders through the [`CacheControl`] the mount
//! hands it ([`Backend::attach`]). The defaults grant nothing, so a plain
//! backend (or a closure) is served uncached: every kernel TTL is 0.

use std::time::Instant;

use chorus_fs::ops::{OpResult, Request};

pub use crate::cache::CacheControl;

/// What a backend says about caching the answer to one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheInfo {
    /// A query answered under a callback: the objects it returned (see
    /// DESIGN.md §5: GetAttr/Read/ReadLink/xattrs → the inode, Lookup → parent
    /// and child, or the parent for ENOENT, ReadDir → the directory, plus the
    /// children with plus) may be trusted until then. The backend counts it
    /// from before it first sent the request and takes the clock-drift
    /// margin off. None: do not cache.
    pub lease_until: Option<Instant>,
    /// A mutation: the inodes it changed. This mount receives no recall for
    /// its own changes, so the frontend drops these itself.
    pub changed: Vec<u64>,
}

/// How the FUSE frontend reaches the file system. Blocking; called from many
/// FUSE worker threads at once.
pub trait Backend: Send + Sync + 'static {
    /// Sends one request and waits for its answer. Transport trouble that the
    /// backend could not hide becomes `Err(Errno(EIO))` (or ENOTCONN), never
    /// a panic.
    fn call(&self, req: Request) -> OpResult;

    /// [`call`](Self::call), plus what may be cached of the answer. The
    /// default grants nothing.
    fn call_leased(&self, req: Request) -> (OpResult, CacheInfo) {
        (self.call(req), CacheInfo::default())
    }

    /// The mount's cache, handed over once when the backend is mounted:
    /// recalls and new leaders are reported to it from then on (a later
    /// mount of the same backend replaces it). The default ignores it: a
    /// backend that grants no lease never needs to recall one.
    fn attach(&self, cache: CacheControl) {
        let _ = cache;
    }

    /// The mount is gone and holds nothing: callbacks the backend was
    /// granted may be given back. The default has none.
    fn release(&self) {}
}

/// Any thread-safe function is a backend: handy for tests and adapters.
impl<F> Backend for F
where
    F: Fn(Request) -> OpResult + Send + Sync + 'static,
{
    fn call(&self, req: Request) -> OpResult {
        self(req)
    }
}
