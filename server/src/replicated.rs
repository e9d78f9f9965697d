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
//! of them. `init_new_cluster` is for creating a new cluster; a replica
//! whose disk was lost must not be initialised (it would vote with an empty
//! log and could, with one lagging replica, form a majority that lost
//! committed entries), so `init_new_cluster` on an empty log is refused when
//! (a) the certificates folder records that this replica was initialised
//! before (`replica-N.initialized`, written at initialisation), or (b) a
//! peer answers with a checkpoint (a cluster that has been in use is not
//! new). Without the flag an empty log recovers from the group.

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
    /// Free space kept in reserve on the data folder's disk: below it the
    /// leader refuses writes that need space with ENOSPC.
    pub disk_reserve_bytes: u64,
    /// How long a mount's callback lasts (0: no client caching).
    pub callback_lease_ms: u64,
    /// A client session idle this long (by the log's clock) ends; when a
    /// client's last session ends, its open handles and locks are released.
    /// Mounts keep one session active (`chorus mount --keepalive-ms`).
    pub session_timeout_ms: u64,
}

/// Default of [`ReplicaConfig::session_timeout_ms`]: a crashed mount's locks
/// are free two minutes after it stopped, and a mount cut off that long
/// loses them (NFSv4's lease is 90 s).
pub const SESSION_TIMEOUT_MS_DEFAULT: u64 = 120_000;

/// Default of [`ReplicaConfig::callback_lease_ms`].
pub const CALLBACK_LEASE_MS_DEFAULT: u64 = 5_000;

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
    anyhow::ensure!(cfg.callback_lease_ms <= 60_000, "--callback-lease-ms may be at most 60000 (a change may wait that long)");
    anyhow::ensure!(
        cfg.session_timeout_ms >= 1_000,
        "--session-timeout-ms must be at least 1000 (mounts keep their sessions alive by sending a keepalive more often)"
    );
    anyhow::ensure!(
        cfg.session_timeout_ms > cfg.callback_lease_ms,
        "--session-timeout-ms ({}) must be above --callback-lease-ms ({}): a mount's session outlives its callbacks",
        cfg.session_timeout_ms,
        cfg.callback_lease_ms
    );
    anyhow::ensure!(
        cfg.checkpoint_interval_bytes <= 24 * 1024 * 1024,
        "--checkpoint-interval-bytes may be at most 24 MiB (log suffixes must fit a peer message)"
    );
    let log_dir = cfg.data_dir.join("log");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
    let empty = std::fs::read_dir(&log_dir)?.next().is_none();
    let init = cfg.init_new_cluster && empty;
    if init {
        refuse_if_not_new(&cfg).await?;
    }
    let (id, log_dir2, data_dir2, certs2) = (cfg.id, log_dir.clone(), cfg.data_dir.clone(), cfg.certs_dir.clone());
    let machine = tokio::task::spawn_blocking(move || -> anyhow::Result<FsMachine> {
        if init {
            chorus_replication_shell::disk::init(&log_dir2, SEGMENT_BYTES_DEFAULT, id, count)
                .context("cannot write the initial replication log")?;
            let marker = init_marker(&certs2, id);
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            if let Err(e) = std::fs::write(&marker, format!("replica {id} initialised a new cluster at unix time {stamp}\n")) {
                tracing::warn!(marker = %marker.display(), error = %e, "cannot record the initialisation; a wiped data folder will not be recognised by it");
            }
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
            core.callback_lease_ms = cfg.callback_lease_ms;
            core.session_timeout_ms = cfg.session_timeout_ms;
            // A session idle past its timeout is gone anyway: eviction
            // (of idle sessions, when the table is full) never waits longer.
            core.session_evict_idle_ms = core.session_evict_idle_ms.min(cfg.session_timeout_ms);
            core
        },
        seed: seed_for(cfg.id),
        checkpoints_dir: machine.checkpoints_dir(),
        disk_reserve_bytes: cfg.disk_reserve_bytes,
        // What each client certificate may claim (root squash).
        admit: Some(crate::admission::admit_operation),
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

/// Where `init_new_cluster` records that replica `id` was initialised.
pub fn init_marker(certs_dir: &std::path::Path, id: u8) -> PathBuf {
    certs_dir.join(format!("replica-{id}.initialized"))
}

/// How long the peers are asked whether the cluster is new.
const PEER_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Refuses `--init-new-cluster` on a replica of a cluster that is not new.
async fn refuse_if_not_new(cfg: &ReplicaConfig) -> anyhow::Result<()> {
    let what_to_do = format!(
        "a replica whose data folder was lost must recover from the others: start it without \
         --init-new-cluster (or use `chorus recover --id {}`)",
        cfg.id
    );
    let marker = init_marker(&cfg.certs_dir, cfg.id);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        anyhow::bail!(
            "refusing --init-new-cluster: the log folder {} is empty, but {} records that this replica \
             was initialised before ({}); {what_to_do}",
            cfg.data_dir.join("log").display(),
            marker.display(),
            text.trim()
        );
    }
    let others: Vec<usize> = (0..cfg.peers.len()).filter(|&i| i != cfg.id as usize).collect();
    let cluster = match chorus_replication_shell::client::Cluster::new(&cfg.certs_dir, cfg.peers.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the peers whether the cluster is new (no client certificate?)");
            return Ok(());
        }
    };
    let probes: Vec<_> = others
        .iter()
        .map(|&i| {
            let c = cluster.clone();
            tokio::spawn(async move { (i, tokio::time::timeout(PEER_PROBE_WAIT, c.status(i)).await.ok().flatten()) })
        })
        .collect();
    for probe in probes {
        let Ok((i, status)) = probe.await else { continue };
        if let Some(s) = status.filter(|s| s.checkpoint_op > 0) {
            anyhow::bail!(
                "refusing --init-new-cluster: replica {i} is serving a cluster that is not new (view {}, \
                 checkpoint at op {}); {what_to_do}",
                s.view,
                s.checkpoint_op
            );
        }
    }
    Ok(())
}

/// The core's random source only spreads timeouts; any per-process value
/// works, and differing between replicas is the point.
fn seed_for(id: u8) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (std::process::id() as u64) ^ ((id as u64) << 40) ^ t.as_nanos() as u64
}
