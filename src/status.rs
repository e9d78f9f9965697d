//! `chorus status`: asks every replica of a replicated cluster for its
//! protocol status and prints one table row per replica.
//!
//! Guarantees: bounded (each replica gets [`REPLICA_TIMEOUT`]; all are asked
//! at once); a replica that does not answer in time is shown as `down`;
//! when no replica answers at all, the command fails with the addresses it
//! tried. Read-only: a Status request changes nothing on a replica.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use chorus_replication_shell::api::NodeStatus;
use comfy_table::{presets, Cell, ContentArrangement, Table};

/// How long a replica may take to answer before it is reported down.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(12);

/// Where the cluster is: certificates and every replica's address.
pub struct Target {
    pub certs: PathBuf,
    pub peers: Vec<SocketAddr>,
}

/// Resolves `--certs`/`--server` and the `--data`/`--port` shortcut (the
/// layout `chorus up` writes: DATA/certs, DATA/replicas, ports PORT..).
pub fn target(certs: Option<PathBuf>, server: Vec<SocketAddr>, data: Option<PathBuf>, port: u16) -> anyhow::Result<Target> {
    let certs = match (certs, &data) {
        (Some(c), _) => c,
        (None, Some(d)) => d.join("certs"),
        (None, None) => bail!("give --certs DIR and --server A,B,C, or --data DATA (a `chorus up` data folder)"),
    };
    let peers = if !server.is_empty() {
        server
    } else if let Some(d) = &data {
        let marker = d.join("replicas");
        let s = std::fs::read_to_string(&marker)
            .with_context(|| format!("cannot read {} (is {} a `chorus up` data folder?)", marker.display(), d.display()))?;
        let n: usize = s.trim().parse().with_context(|| format!("{} is damaged", marker.display()))?;
        if n == 0 || n > 63 {
            bail!("{} names {n} replicas", marker.display());
        }
        (0..n)
            .map(|i| {
                let p = port.checked_add(i as u16).context("--port too large for that many replicas")?;
                Ok(SocketAddr::from(([127, 0, 0, 1], p)))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        bail!("give --server A,B,C (every replica's address, in id order) or --data DATA");
    };
    Ok(Target { certs, peers })
}

/// Asks every replica at once; `None` where it did not answer in time.
pub async fn query(t: &Target) -> anyhow::Result<Vec<Option<NodeStatus>>> {
    if !t.certs.join("ca.pem").exists() {
        bail!("no cluster certificates in {} (ca.pem missing)", t.certs.display());
    }
    // The shell client always presents the `client` certificate (it has no
    // way to choose the admin role); replicas answer Status to any client.
    let cluster = chorus_replication_shell::client::Cluster::new(&t.certs, t.peers.clone())
        .map_err(|e| anyhow::anyhow!("cannot use the client certificate in {}: {e}", t.certs.display()))?;
    let tasks: Vec<_> = (0..t.peers.len())
        .map(|i| {
            let cluster = cluster.clone();
            tokio::spawn(async move { tokio::time::timeout(REPLICA_TIMEOUT, cluster.status(i)).await.ok().flatten() })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.ok().flatten());
    }
    cluster.shutdown().await;
    Ok(out)
}

/// The (view, leader) that a majority of all replicas report while normal.
pub fn majority_view(statuses: &[Option<NodeStatus>]) -> Option<(u64, u8, usize)> {
    let mut counts: Vec<((u64, u8), usize)> = Vec::new();
    for s in statuses.iter().flatten().filter(|s| s.status == "normal") {
        match counts.iter_mut().find(|(k, _)| *k == (s.view, s.leader)) {
            Some((_, c)) => *c += 1,
            None => counts.push(((s.view, s.leader), 1)),
        }
    }
    counts.into_iter().find(|(_, c)| *c > statuses.len() / 2).map(|((v, l), c)| (v, l, c))
}

/// The report: the majority's view line, then the table.
pub fn render(peers: &[SocketAddr], statuses: &[Option<NodeStatus>]) -> String {
    let n = peers.len();
    let headline = match majority_view(statuses) {
        Some((view, leader, agree)) => {
            let addr = peers.get(leader as usize).map(|a| a.to_string()).unwrap_or_else(|| "?".into());
            format!("view {view}, leader {leader} ({addr}) — as {agree} of {n} replicas see it")
        }
        None => format!("no majority of the {n} replicas agrees on a view and leader (view change in progress, or too many down)"),
    };
    let max_commit = statuses.iter().flatten().map(|s| s.commit_op).max().unwrap_or(0);
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
    table.set_header([
        "id",
        "address",
        "up",
        "status",
        "view",
        "leader",
        "op",
        "commit_op",
        "applied_op",
        "durable_op",
        "lag",
        "clients",
        "checkpoint",
        "transfer",
        "digest",
    ]);
    for (i, (addr, s)) in peers.iter().zip(statuses).enumerate() {
        let row: Vec<Cell> = match s {
            Some(s) => vec![
                Cell::new(s.id),
                Cell::new(addr),
                Cell::new("up"),
                Cell::new(&s.status),
                Cell::new(s.view),
                Cell::new(s.leader),
                Cell::new(s.op),
                Cell::new(s.commit_op),
                Cell::new(s.applied_op),
                Cell::new(s.durable_op),
                Cell::new(max_commit - s.commit_op),
                Cell::new(s.clients),
                Cell::new(checkpoint_cell(s)),
                Cell::new(transfer_cell(s)),
                Cell::new(format!("{:016x}", s.digest)),
            ],
            None => {
                let mut r = vec![Cell::new(i), Cell::new(addr), Cell::new("down")];
                r.extend((0..12).map(|_| Cell::new("-")));
                r
            }
        };
        table.add_row(row);
    }
    format!("{headline}\n{table}\n")
}

/// "op N, age" of the newest checkpoint, or "none".
fn checkpoint_cell(s: &NodeStatus) -> String {
    if s.checkpoint_op == 0 {
        return "none".into();
    }
    let age_s = s.checkpoint_age_ms / 1000;
    let age = if age_s >= 3600 {
        format!("{}h{:02}m", age_s / 3600, age_s % 3600 / 60)
    } else if age_s >= 60 {
        format!("{}m{:02}s", age_s / 60, age_s % 60)
    } else {
        format!("{age_s}s")
    };
    format!("op {}, {age} ago", s.checkpoint_op)
}

/// Progress of a running state transfer, or "-".
fn transfer_cell(s: &NodeStatus) -> String {
    if !s.transfer_active || s.transfer_bytes_total == 0 {
        return "-".into();
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    format!("{:.0}% of {:.1} MiB", 100.0 * s.transfer_bytes_done as f64 / s.transfer_bytes_total as f64, mib(s.transfer_bytes_total))
}

/// `chorus status`: prints the report; fails when no replica answers.
pub fn run(rt: &tokio::runtime::Runtime, t: Target) -> anyhow::Result<()> {
    let statuses = rt.block_on(query(&t))?;
    if statuses.iter().all(Option::is_none) {
        let tried = t.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
        bail!("no replica answered within {REPLICA_TIMEOUT:?} (tried {tried})");
    }
    print!("{}", render(&t.peers, &statuses));
    Ok(())
}
