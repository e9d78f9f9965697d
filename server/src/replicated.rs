//! A replica of a replicated ChorusFS cluster: the file-system state machine
//! ([`crate::machine::FsMachine`]) under the replication core, run by the
//! replication shell (log, transport, driver).
//!
//! Guarantees: every mutation is sequenced by the leader, durable on a
//! majority and applied in log order on every replica before any client sees
//! its reply (the core's uniform-output rule); retries of the same
//! (session, seq) are answered from the replicated reply cache.
//!
//! Why the state store is rebuilt at every start: the replication log holds
//! a reference (manifest) to the newest checkpoint, a RocksDB checkpoint
//! under `checkpoints/` (see `FsMachine::open_replica`), plus every entry
//! after it, so the live RocksDB store in `state/` is derived state, written
//! without a WAL. Opening it as it was left would make the core replay
//! entries the store already applied. Starting from the verified checkpoint
//! (hard links, no copy), the core replays the suffix: recovery is
//! idempotent, a crash during it just restarts it. A damaged checkpoint
//! makes the replica recover from the others (state transfer).
//!
//! Assumes: `peers` lists every replica of the universe, identically on all
//! of them; `init_new_cluster` is given only when creating a new cluster
//! (a replica whose disk was lost must NOT be initialised: it recovers from
//! the group instead).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chorus_replication_shell::log::SEGMENT_BYTES_DEFAULT;
use chorus_replication_shell::node::{self, NodeConfig};
use tracing::info;

use crate::machine::FsMachine;

/// How to run one replica of a replicated cluster.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This replica's number: its certificate and its place in `peers`.
    pub id: u8,
    /// Addresses of every replica, by number.
    pub peers: Vec<SocketAddr>,
    pub certs_dir: PathBuf,
    /// This replica's folder: `log/` (replication log) and `state/` (store).
    pub data_dir: PathBuf,
    /// Write the initial log of a brand-new universe if `log/` is empty.
    pub init_new_cluster: bool,
    /// A checkpoint every this many log entries...
    pub checkpoint_interval_ops: u64,
    /// ...or this many bytes of commands, whichever comes first.
    pub checkpoint_interval_bytes: u64,
}

/// Default of [`ReplicaConfig::checkpoint_interval_ops`].
pub const CHECKPOINT_INTERVAL_OPS_DEFAULT: u64 = 20_000;
/// Default of [`ReplicaConfig::checkpoint_interval_bytes`]: with the core's
/// retained interval below the newest checkpoint, this bounds the log a
/// state transfer or view change carries well inside the peer message bound.
pub const CHECKPOINT_INTERVAL_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;

/// Runs the replica until `shutdown` resolves.
pub async fn run(cfg: ReplicaConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let count = u8::try_from(cfg.peers.len()).context("too many replicas")?;
    anyhow::ensure!(count % 2 == 1, "a cluster needs an odd number of replicas (got {count})");
    anyhow::ensure!(cfg.id < count, "replica id {} outside 0..{count}", cfg.id);
    anyhow::ensure!(cfg.checkpoint_interval_ops > 0 && cfg.checkpoint_interval_bytes > 0, "checkpoint intervals must be positive");
    anyhow::ensure!(
        cfg.checkpoint_interval_bytes <= 24 * 1024 * 1024,
        "--checkpoint-interval-bytes may be at most 24 MiB (log suffixes must fit a peer message)"
    );
    let log_dir = cfg.data_dir.join("log");
    let (id, init, log_dir2, data_dir2) = (cfg.id, cfg.init_new_cluster, log_dir.clone(), cfg.data_dir.clone());
    let machine = tokio::task::spawn_blocking(move || -> anyhow::Result<FsMachine> {
        std::fs::create_dir_all(&log_dir2).with_context(|| format!("cannot create {}", log_dir2.display()))?;
        let empty = std::fs::read_dir(&log_dir2)?.next().is_none();
        if init && empty {
            chorus_replication_shell::disk::init(&log_dir2, SEGMENT_BYTES_DEFAULT, id, count)
                .context("cannot write the initial replication log")?;
            info!(replica = id, "initialised the log of a new cluster");
        }
        FsMachine::open_replica(&data_dir2, id).context("cannot open the state store")
    })
    .await??;
    let node_cfg = NodeConfig {
        id: cfg.id,
        peers: cfg.peers.clone(),
        certs_dir: cfg.certs_dir.clone(),
        data_dir: log_dir,
        core: {
            let mut core = node::core_config(count);
            core.checkpoint_interval_ops = cfg.checkpoint_interval_ops;
            core.checkpoint_interval_bytes = cfg.checkpoint_interval_bytes;
            core
        },
        seed: seed_for(cfg.id),
        checkpoints_dir: machine.checkpoints_dir(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    info!(replica = cfg.id, listen = %cfg.peers[cfg.id as usize], replicas = count, "serving (replicated)");
    let node = node::run(node_cfg, machine, stop_rx);
    tokio::pin!(node);
    tokio::pin!(shutdown);
    tokio::select! {
        // The node stopped on its own (bind failure, disk error): report it.
        r = &mut node => return r,
        _ = &mut shutdown => {}
    }
    let _ = stop_tx.send(true);
    node.await
}

/// The core's random source only spreads timeouts; any per-process value
/// works, and differing between replicas is the point.
fn seed_for(id: u8) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (std::process::id() as u64) ^ ((id as u64) << 40) ^ t.as_nanos() as u64
}
