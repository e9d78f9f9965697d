//! chorus-fs: the deterministic file-system state machine and its RocksDB store.
//! Knows nothing of networks, views or retries.
pub mod ops;
