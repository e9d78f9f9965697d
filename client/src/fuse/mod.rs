//! The FUSE frontend (fuser 0.18): [`mount`] serves a [`crate::Backend`] at
//! a mount point from a multi-threaded fuser session.
//!
//! Split: `fs` maps each FUSE request onto ops (no file-system state; what
//! the kernel may cache comes from `crate::cache`), `invalidate` is the
//! thread that tells the kernel what to drop, `locks` the mount's side of
//! file locks (waiting, release at close), `convert` holds the pure type
//! conversions, `caller` the credentials, `mount` the mount lifecycle and
//! its errors.

mod caller;
mod convert;
mod fs;
mod invalidate;
mod locks;
mod mount;

pub use fs::{MAX_READAHEAD_BYTES, MAX_WRITE_BYTES};
pub use mount::{force_unmount, mount, MountError, MountHandle, MountOptions, UnmountError};
