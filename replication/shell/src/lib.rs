//! ChorusFS replication shell: runs the sans-IO replication core
//! (`chorus-replication`) on real sockets, disks and clocks.
//!
//! The core decides; the shell only executes. Nothing protocol-shaped lives
//! here: no view numbers are compared, no quorum is counted. Like quinn's
//! driver over quinn-proto, the shell feeds `(now, event)` to the core and
//! carries out the actions it returns.
//!
//! - [`log`]: the durable log (segment files, CRC32C records, superblock).
//! - [`writer`]: group commit — one thread, one fdatasync per batch.
//! - [`transport`]: replica-to-replica messages over QUIC with mutual TLS.
#![warn(missing_docs)]

pub mod log;
pub mod writer;
