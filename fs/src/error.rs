//! Errors of the store itself (storage failures, corrupt records), kept apart
//! from POSIX errors.
//!
//! Guarantees: a [`StoreError`] means the store could not do its job (RocksDB
//! failed, a record does not decode, the on-disk format is foreign); the
//! caller should stop applying. A POSIX error (`Errno`) is a normal outcome of
//! an operation and travels inside `Ok(Err(..))`.

use crate::ops::Errno;

/// A failure of the storage layer. Never a POSIX outcome.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("corrupt record in table {table} (key {key_hex}): {reason}")]
    Corrupt { table: &'static str, key_hex: String, reason: String },
    #[error("store format version {found} is not the supported version {expected}")]
    FormatVersion { found: u32, expected: u32 },
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
    #[error("checkpoint directory {0} already exists")]
    CheckpointDirExists(String),
    #[error("invalid state image: {0}")]
    Image(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Internal outcome of an operation step: a POSIX error to report, or a store
/// failure to propagate. Lets the operation code use `?` for both.
#[derive(Debug)]
pub(crate) enum Fail {
    Errno(Errno),
    Store(StoreError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Self {
        Fail::Errno(e)
    }
}

/// Result of an operation step.
pub(crate) type R<T> = Result<T, Fail>;

/// Shorthand for failing with a POSIX error number.
pub(crate) fn errno<T>(code: i32) -> R<T> {
    Err(Fail::Errno(Errno(code)))
}
