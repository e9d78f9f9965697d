//! `chorus recover`: the operator's way to bring a failed replica back, and
//! `chorus checkpoint`: a checkpoint on demand.
//!
//! Guarantees:
//! - Nothing damaged is applied: before starting, the log is read through
//!   (every record's CRC32C) and the newest checkpoint's files are checked
//!   against its manifest; what is found is reported in plain words. A
//!   damaged checkpoint makes the replica rebuild from its peers; a damaged
//!   log stops here with the command that rebuilds it (`--from-peer`).
//! - `--from-peer` never deletes the old data: it is moved aside into
//!   `DATA/set-aside-<unix time>/`, then the replica starts empty and rejoins
//!   by state transfer (the same path as a replica whose disk died).
//! - The replica runs in this process (exactly as `chorus server` would) and
//!   keeps serving after it has caught up; progress (bytes of the state
//!   transfer, then operations of the catch-up, with rate and ETA) is shown
//!   while it recovers, and a summary once it is a normal member again.
//!
//! Assumes: the other replicas are reachable at `--peers`; only one process
//! runs per data folder (the log writer refuses a second one).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chorus_replication_shell::api::NodeStatus;
use chorus_replication_shell::checkpoint::{self, Manifest};
use chorus_replication_shell::client::Cluster;
use chorus_replication_shell::log::SEGMENT_BYTES_DEFAULT;
use indicatif::{ProgressBar, ProgressStyle};

/// How often recovery progress is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// After this long without catching up, the operator is told where to look.
const SLOW_RECOVERY_WARNING: Duration = Duration::from_secs(300);

/// What `chorus recover` needs.
pub struct RecoverArgs {
    pub certs: PathBuf,
    pub data: PathBuf,
    pub id: u8,
    pub peers: Vec<SocketAddr>,
    pub from_peer: bool,
    pub checkpoint_interval_ops: u64,
    pub checkpoint_interval_bytes: u64,
    /// Must be the cluster's (see `chorus server --session-timeout-ms`).
    pub session_timeout_ms: u64,
}

/// What the preflight found on this replica's disk.
struct Preflight {
    checkpoint: Option<(String, u64, u64)>,
    entries: usize,
}

fn preflight(data: &Path, id: u8, count: u8) -> anyhow::Result<Preflight> {
    let log_dir = data.join("log");
    let empty = std::fs::read_dir(&log_dir).map(|mut d| d.next().is_none()).unwrap_or(true);
    if empty {
        bail!(
            "replica {id} has no log in {}: there is nothing to recover locally.\n  \
             Rebuild it from the other replicas with the same command and --from-peer.",
            log_dir.display()
        );
    }
    let (_, durable) = chorus_replication_shell::disk::open(&log_dir, SEGMENT_BYTES_DEFAULT, id, count).map_err(|e| {
        anyhow::anyhow!(
            "the log of replica {id} in {} is damaged: {e}\n  Nothing of it will be applied. \
             Rebuild this replica from the others with the same command and --from-peer\n  \
             (the damaged files are kept aside, not deleted).",
            log_dir.display()
        )
    })?;
    if durable.superblock.is_none() {
        println!("replica {id}: the log holds no view yet (never joined): it will recover from the other replicas");
    }
    let mut found = Preflight { checkpoint: None, entries: durable.entries.len() };
    if let Some(c) = &durable.checkpoint {
        let manifest = chorus_replication::machine_part(&c.state)
            .and_then(|bytes| Manifest::from_bytes(&bytes).ok())
            .context("the log names a checkpoint whose manifest does not decode")?;
        let root = data.join("checkpoints");
        match checkpoint::verify(&root, &manifest) {
            Ok(_) => {
                println!(
                    "replica {id}: checkpoint {} at op {} verified ({} files, {:.1} MiB, every CRC32C checked)",
                    manifest.name,
                    c.op,
                    manifest.files.len(),
                    manifest.bytes() as f64 / 1048576.0
                );
                found.checkpoint = Some((manifest.name.clone(), c.op, manifest.bytes()));
            }
            Err(e) => println!("replica {id}: WARNING: {e}\n  it will not be used: the replica rebuilds its state from the other replicas"),
        }
    }
    let first = durable.entries.first().map(|e| e.op);
    let last = durable.entries.last().map(|e| e.op);
    match (first, last) {
        (Some(a), Some(b)) => {
            println!("replica {id}: log verified: {} entries (ops {a}..={b}) to replay above the checkpoint", durable.entries.len())
        }
        _ => println!("replica {id}: log verified: no entries above the checkpoint"),
    }
    Ok(found)
}

/// Moves the replica's log, checkpoints and state aside (never deletes).
fn set_aside(data: &Path, id: u8) -> anyhow::Result<()> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let aside = data.join(format!("set-aside-{stamp}"));
    let mut moved = Vec::new();
    for name in ["log", "checkpoints", "state"] {
        let from = data.join(name);
        if from.exists() {
            std::fs::create_dir_all(&aside).with_context(|| format!("cannot create {}", aside.display()))?;
            std::fs::rename(&from, aside.join(name)).with_context(|| format!("cannot move {} aside", from.display()))?;
            moved.push(name);
        }
    }
    if moved.is_empty() {
        println!("replica {id}: no old data in {}; rebuilding from the other replicas", data.display());
    } else {
        println!(
            "replica {id}: moved the old {} to {} (delete it once the replica is healthy); rebuilding from the other replicas",
            moved.join(", "),
            aside.display()
        );
    }
    Ok(())
}

/// `chorus recover`.
pub fn run(rt: &tokio::runtime::Runtime, args: RecoverArgs, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let count = u8::try_from(args.peers.len()).context("too many peers")?;
    if args.id as usize >= args.peers.len() {
        bail!("--id {} has no address in --peers (which lists {} replicas)", args.id, args.peers.len());
    }
    if count < 3 {
        bail!("recovery needs the other replicas of a cluster (--peers lists {count})");
    }
    if !args.certs.join("ca.pem").exists() {
        bail!("no cluster certificates in {} (ca.pem missing)", args.certs.display());
    }
    std::fs::create_dir_all(&args.data).with_context(|| format!("cannot create {}", args.data.display()))?;
    let local = if args.from_peer {
        set_aside(&args.data, args.id)?;
        None
    } else {
        Some(preflight(&args.data, args.id, count)?)
    };
    let cfg = chorus_server::replicated::ReplicaConfig {
        id: args.id,
        peers: args.peers.clone(),
        certs_dir: args.certs.clone(),
        data_dir: args.data.clone(),
        init_new_cluster: false,
        checkpoint_interval_ops: args.checkpoint_interval_ops,
        checkpoint_interval_bytes: args.checkpoint_interval_bytes,
        disk_reserve_bytes: chorus_replication_shell::node::DISK_RESERVE_BYTES_DEFAULT,
        callback_lease_ms: chorus_server::replicated::CALLBACK_LEASE_MS_DEFAULT,
        session_timeout_ms: args.session_timeout_ms,
    };
    let id = args.id;
    let (certs, peers) = (args.certs.clone(), args.peers.clone());
    rt.block_on(async move {
        let cluster = Cluster::new(&certs, peers).map_err(|e| anyhow::anyhow!("cannot use the client certificate: {e}"))?;
        let replica = chorus_server::replicated::run(cfg, shutdown);
        tokio::pin!(replica);
        let watch = watch_progress(cluster, id, local);
        tokio::pin!(watch);
        tokio::select! {
            r = &mut replica => return r,
            _ = &mut watch => {}
        }
        println!("replica {id}: serving as a member again; Ctrl-C (or SIGTERM) stops it");
        replica.await
    })
}

/// Polls until replica `id` is a normal member caught up with the commit
/// point the others had when it started; draws progress; prints a summary.
async fn watch_progress(cluster: std::sync::Arc<Cluster>, id: u8, local: Option<Preflight>) {
    let started = Instant::now();
    let n = cluster.replica_count();
    let bar = ProgressBar::new(0);
    let bytes_style = ProgressStyle::with_template("{msg:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
        .expect("template")
        .progress_chars("=> ");
    let ops_style =
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} ops {per_sec} ETA {eta}").expect("template").progress_chars("=> ");
    let mut target: Option<u64> = None;
    let mut transfer_seen: Option<(u64, Instant)> = None;
    let mut transfer_time = Duration::ZERO;
    let mut phase = "";
    let mut warned = false;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let own = cluster.progress(id as usize).await;
        if target.is_none() {
            let mut best = None;
            for r in (0..n).filter(|&r| r != id as usize) {
                if let Some(s) = cluster.progress(r).await {
                    if s.status == "normal" {
                        best = Some(best.unwrap_or(0).max(s.commit_op));
                    }
                }
            }
            target = best;
        }
        let Some(own) = own else { continue };
        if own.transfer_active {
            if phase != "transfer" {
                phase = "transfer";
                eprintln!("replica {id}: state transfer started ({:.1} MiB)", own.transfer_bytes_total as f64 / 1048576.0);
                bar.set_style(bytes_style.clone());
                bar.set_message("state transfer");
                transfer_seen.get_or_insert((own.transfer_bytes_total, Instant::now()));
            }
            bar.set_length(own.transfer_bytes_total);
            bar.set_position(own.transfer_bytes_done);
        } else if let Some(goal) = target {
            if phase == "transfer" {
                if let Some((_, t)) = transfer_seen {
                    transfer_time = t.elapsed();
                }
            }
            if phase != "catch-up" {
                phase = "catch-up";
                bar.set_style(ops_style.clone());
                bar.set_message("catching up");
            }
            bar.set_length(goal);
            bar.set_position(own.commit_op.min(goal));
            if own.status == "normal" && own.commit_op >= goal {
                bar.finish_and_clear();
                summary(id, &own, started.elapsed(), &local, transfer_seen.map(|(b, _)| (b, transfer_time)), goal);
                return;
            }
        }
        if !warned && started.elapsed() > SLOW_RECOVERY_WARNING {
            warned = true;
            eprintln!("replica {id}: not caught up after {:?}; see `chorus status` and this replica's log", SLOW_RECOVERY_WARNING);
        }
    }
}

fn summary(id: u8, own: &NodeStatus, took: Duration, local: &Option<Preflight>, transfer: Option<(u64, Duration)>, goal: u64) {
    let source = match (transfer, local) {
        (Some((bytes, t)), _) => {
            let secs = t.as_secs_f64().max(0.001);
            format!(
                "state transfer of {:.1} MiB from a peer in {:.1} s ({:.0} MiB/s)",
                bytes as f64 / 1048576.0,
                secs,
                bytes as f64 / 1048576.0 / secs
            )
        }
        (None, Some(Preflight { checkpoint: Some((name, op, _)), entries })) => {
            format!("local checkpoint {name} (op {op}) plus {entries} logged entries")
        }
        (None, Some(Preflight { checkpoint: None, entries })) => format!("its log ({entries} entries)"),
        (None, None) => "the other replicas".to_string(),
    };
    println!(
        "replica {id}: RECOVERED in {:.1} s from {source}; caught up to op {} (the cluster was at {goal}); view {}, leader {}, status {}",
        took.as_secs_f64(),
        own.commit_op,
        own.view,
        own.leader,
        own.status
    );
}

/// `chorus checkpoint`: asks every replica (or one) to take a checkpoint now.
pub fn checkpoint(rt: &tokio::runtime::Runtime, certs: &Path, peers: Vec<SocketAddr>, only: Option<usize>) -> anyhow::Result<()> {
    if !certs.join("admin.pem").exists() {
        bail!("no admin certificate in {} (admin.pem missing): checkpoints on demand are for operators", certs.display());
    }
    let cluster = rt
        .block_on(async { Cluster::admin(certs, peers.clone()) })
        .map_err(|e| anyhow::anyhow!("cannot use the admin certificate in {}: {e}", certs.display()))?;
    let targets: Vec<usize> = match only {
        Some(r) if r < peers.len() => vec![r],
        Some(r) => bail!("--replica {r} is not in the cluster (0..{})", peers.len()),
        None => (0..peers.len()).collect(),
    };
    let mut ok = 0;
    for r in targets {
        match rt.block_on(cluster.checkpoint(r)) {
            Ok(op) => {
                ok += 1;
                println!("replica {r} ({}): newest checkpoint at op {op}", peers[r]);
            }
            Err(e) => eprintln!("replica {r} ({}): no checkpoint: {e}", peers[r]),
        }
    }
    if ok == 0 {
        bail!("no replica took a checkpoint");
    }
    Ok(())
}
