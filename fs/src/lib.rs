//! chorus-fs: the deterministic file-system state machine and its RocksDB store.
//! Knows nothing of networks, views or retries.
//!
//! The API is [`FsStore`]: `open` a directory, `apply(index, &Command)` each
//! committed command in log order, answer `query(&Caller, &Query)` from any
//! thread, `sync`, `digest` (replica comparison), `checkpoint` (recovery and
//! state transfer; a checkpoint directory opens as a store).
//!
//! For the replication core: `apply_tagged` also records the log entry and
//! time stamp of the command ([`AppliedTag`], read back with `tag`), and
//! `export_image`/`import_image` move the whole state as one self-contained,
//! digest-checked value ([`StoreImage`]). `apply_tagged_tracked` also names
//! the inodes the command changed ([`Applied`]), for callbacks.
//!
//! Layout: `ops` (the contract: commands, queries, replies), `store` (the
//! [`FsStore`] API), and the operations by concern: `namespace` (names),
//! `data` (file contents), `attrs` (attributes, open/release), `xattr`; under
//! them `perm` (permission rules), `state` (reading inodes and entries), `ctx`
//! (one command's pending writes and shared mutations), `changes` (the inodes
//! those writes change), `view` (snapshot and overlay reads), `records` and
//! `keys` (the on-disk layout: one column family per table, big-endian keys).
//!
//! Notes for callers:
//! - Open handles and byte-range locks live in the replicated state, owned
//!   by the client that opened or took them: an unlinked file keeps its data
//!   until its last `Op::Release`. When a client is gone (all its sessions
//!   ended) the replicated service calls [`FsStore::apply_client_gone`],
//!   which releases its handles and locks.
//! - Writes, truncates and fallocates by non-root callers clear set-ID bits in
//!   the state machine itself (Linux `file_remove_privs`), so a FUSE client may
//!   enable HANDLE_KILLPRIV(_V2); without it the kernel sends the same change
//!   as a setattr from the writer, which the store also accepts.
pub mod ops;

mod attrs;
mod changes;
mod ctx;
mod data;
mod error;
mod fsck;
mod image;
mod keys;
mod locks;
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
pub use records::AppliedTag;
pub use store::{Applied, FsStore, StoreImage, StoreOptions};
