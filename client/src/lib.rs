//! chorus-client: the client side of ChorusFS. Today: the FUSE frontend,
//! which turns kernel requests into `chorus_fs::ops` requests and hands them
//! to a [`Backend`] (the network stub in the `chorus` binary, or an
//! in-process store in tests). Later: the callback cache between the two.
//!
//! The frontend knows nothing of networks: everything it needs from the rest
//! of the system is the one blocking [`Backend::call`].

mod backend;
pub mod fuse;

pub use backend::Backend;
pub use fuse::{force_unmount, mount, MountError, MountHandle, MountOptions, UnmountError};
