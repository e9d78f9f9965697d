//! chorus-fs: the deterministic file-system state machine and its RocksDB store.
//! Knows nothing of networks, views or retries.
//!
//! Layout: `ops` (the contract: commands, queries, replies), `store` (the
//! [`FsStore`] API: open, apply, query, sync, digest, checkpoint), and the
//! operations by concern: `namespace` (names), `data` (file contents),
//! `attrs` (attributes, open/release), `xattr`; under them `perm`
//! (permission rules), `state` (reading inodes and entries), `ctx` (one
//! command's pending writes), `view` (snapshot and overlay reads), `records`
//! and `keys` (the on-disk layout).
pub mod ops;

mod attrs;
mod ctx;
mod data;
mod error;
mod keys;
mod namespace;
mod perm;
mod records;
mod state;
mod store;
mod view;
mod xattr;

#[cfg(test)]
mod tests;

pub use error::StoreError;
pub use store::{FsStore, StoreOptions};
