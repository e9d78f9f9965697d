//! ChorusFS replication shell: runs the sans-IO replication core
//! (`chorus-replication`) on real sockets, disks and clocks.
//!
//! The core decides; the shell only executes. Nothing protocol-shaped lives
//! here: no view numbers are compared, no quorum is counted. Like quinn's
//! driver over quinn-proto, the shell feeds `(now, event)` to the core and
//! carries out the actions it returns.
//!
//! | module        | what it keeps                                              |
//! |---------------|------------------------------------------------------------|
//! | [`log`]       | segment files of CRC32C records, torn-tail recovery        |
//! | [`writer`]    | group commit: one thread, one fdatasync per batch          |
//! | [`disk`]      | the core's writes as atomic records; replay on start       |
//! | [`checkpoint`]| checkpoints by reference: manifests, checks, file transfer |
//! | [`transport`] | replica-to-replica messages over QUIC with mutual TLS      |
//! | [`driver`]    | the event loop: events in, actions out                     |
//! | [`fastenc`]   | byte-identical fast serialization of hot core types        |
//! | [`node`]      | one replica: endpoint, transport, client RPC, driver       |
//! | [`api`]       | client/operator RPC types                                  |
//! | [`client`]    | sessions, leader discovery, retries (tests, benchmark)     |
//! | [`machine`]   | a trivial register map state machine (tests, benchmark)    |
#![warn(missing_docs)]

pub mod api;
pub mod checkpoint;
pub mod client;
pub mod disk;
pub mod disk_space;
pub mod driver;
pub mod fastenc;
pub mod log;
pub mod machine;
pub mod node;
pub mod transport;
pub mod writer;
