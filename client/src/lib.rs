//! chorus-client: the client side of ChorusFS: the FUSE frontend, which
//! turns kernel requests into `chorus_fs::ops` requests and hands them to a
//! [`Backend`] (the network stub in the `chorus` binary, or an in-process
//! store in tests), and the mount's cache bookkeeping under callbacks
//! (`cache`, DESIGN.md §5), which decides what the kernel may keep and for
//! how long.
//!
//! The frontend knows nothing of networks: everything it needs from the rest
//! of the system is the blocking [`Backend::call_leased`] (answers with their
//! leases) and the [`CacheControl`] it hands the backend for recalls.

mod backend;
mod cache;
pub mod fuse;

pub use backend::{Backend, CacheControl, CacheInfo};
pub use fuse::{force_unmount, mount, MountError, MountHandle, MountOptions, UnmountError};
