//! The seam between the FUSE frontend and whatever executes file-system
//! operations. Keeping it one blocking call makes the frontend testable
//! against an in-process store and independent of the transport.

use chorus_fs::ops::{OpResult, Request};

/// How the FUSE frontend reaches the file system. Blocking; called from many
/// FUSE worker threads at once.
pub trait Backend: Send + Sync + 'static {
    /// Sends one request and waits for its answer. Transport trouble that the
    /// backend could not hide becomes `Err(Errno(EIO))` (or ENOTCONN), never
    /// a panic.
    fn call(&self, req: Request) -> OpResult;
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
