//! Benchmark client of a shell cluster (driven by `bench/replication.sh`).
//!
//! Many closed-loop sessions submit 100-byte commands to a running cluster;
//! after a warm-up, committed ops/s and latency percentiles are measured over
//! a fixed window. Then, with the load still running, the leader process is
//! killed with SIGKILL (its PID is given on the command line: this tool only
//! kills a process it was told about) and the failover time is measured:
//! kill → first command committed in a newer view, as a client sees it, plus
//! kill → a survivor reports itself normal leader of a newer view.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_replication_shell::client::Cluster;
use chorus_replication_shell::machine::command;
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    certs: PathBuf,
    #[arg(long, value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// Concurrent sessions (one command in flight each).
    #[arg(long, default_value_t = 256)]
    sessions: usize,
    /// Bytes per command.
    #[arg(long, default_value_t = 100)]
    command_bytes: usize,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// PIDs of the replica processes, by id: enables the failover phase.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<i32>,
    /// Distinct registers written (bounds the state, hence checkpoint cost).
    #[arg(long, default_value_t = 4096)]
    keys: u64,
    /// Send each request as its own RPC instead of batching the requests
    /// of concurrent sessions into shared RPCs.
    #[arg(long)]
    no_client_batching: bool,
    /// Only print every replica's status and exit.
    #[arg(long)]
    status: bool,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_AFTER: u8 = 2;
/// Longest wait for the failover to show.
const FAILOVER_WAIT: Duration = Duration::from_secs(15);

struct Shared {
    phase: AtomicU8,
    stop: AtomicBool,
    start: Instant,
    /// View the leader had when it was killed (u64::MAX = not yet killed).
    killed_view: AtomicU64,
    /// ns since `start` of the first commit in a newer view after the kill.
    first_new_commit_ns: AtomicU64,
    errors: AtomicU64,
    /// Latencies (µs) of commands started and finished inside the window.
    latencies_us: std::sync::Mutex<Vec<u32>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cluster = if args.no_client_batching {
        Cluster::new(&args.certs, args.peers.clone())?
    } else {
        Cluster::batching(&args.certs, args.peers.clone())?
    };
    if args.status {
        for id in 0..cluster.replica_count() {
            println!("replica {id}: {:?}", cluster.status(id).await);
        }
        return Ok(());
    }
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(PHASE_WARMUP),
        stop: AtomicBool::new(false),
        start: Instant::now(),
        killed_view: AtomicU64::new(u64::MAX),
        first_new_commit_ns: AtomicU64::new(u64::MAX),
        errors: AtomicU64::new(0),
        latencies_us: std::sync::Mutex::new(Vec::with_capacity(1 << 20)),
    });
    let value_bytes = args.command_bytes.saturating_sub(8);
    let mut tasks = Vec::new();
    for s in 0..args.sessions {
        let cluster = cluster.clone();
        let shared = shared.clone();
        let keys = args.keys.max(1);
        tasks.push(tokio::spawn(async move {
            let mut session = match cluster.session(Instant::now() + Duration::from_secs(30)).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("session {s}: {e}");
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let mut key = (s as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let value = vec![b'x'; value_bytes];
            while !shared.stop.load(Ordering::Relaxed) {
                key = key.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let phase_before = shared.phase.load(Ordering::Relaxed);
                let t0 = Instant::now();
                match session.write_in_view(command(key % keys, &value), Instant::now() + Duration::from_secs(20)).await {
                    Ok((_, view)) => {
                        let done = Instant::now();
                        if phase_before == PHASE_MEASURE && shared.phase.load(Ordering::Relaxed) == PHASE_MEASURE {
                            let us = (done - t0).as_micros().min(u32::MAX as u128) as u32;
                            shared.latencies_us.lock().unwrap().push(us);
                        }
                        let killed_view = shared.killed_view.load(Ordering::Relaxed);
                        if killed_view != u64::MAX && view > killed_view {
                            let ns = (done - shared.start).as_nanos() as u64;
                            shared.first_new_commit_ns.fetch_min(ns, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if shared.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("session {s}: {e}");
                        }
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    let before = stats(&cluster).await;
    let cpu_before = cpu_ticks(&args.pids);
    shared.phase.store(PHASE_MEASURE, Ordering::Relaxed);
    let t_measure = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    shared.phase.store(PHASE_AFTER, Ordering::Relaxed);
    let window = t_measure.elapsed();
    let cpu_after = cpu_ticks(&args.pids);
    let after = stats(&cluster).await;

    let mut latencies: Vec<u32> = std::mem::take(&mut *shared.latencies_us.lock().unwrap());
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        latencies[((latencies.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
    };
    let ops = latencies.len() as f64 / window.as_secs_f64();
    println!(
        "sessions={} command_bytes={} client_batching={} window_s={:.1}",
        args.sessions,
        args.command_bytes,
        !args.no_client_batching,
        window.as_secs_f64()
    );
    println!("committed_ops_per_s={:.0}", ops);
    println!("latency_ms p50={:.2} p90={:.2} p99={:.2} p999={:.2} max={:.2}", pct(0.5), pct(0.9), pct(0.99), pct(0.999), pct(1.0));
    if let (Some(b), Some(a)) = (before, after) {
        let writes = a.1.saturating_sub(b.1);
        let syncs = a.2.saturating_sub(b.2);
        let ops_committed = a.0.saturating_sub(b.0);
        let sync_ms = a.3.saturating_sub(b.3) as f64 / 1000.0;
        println!(
            "leader: log_writes={} fdatasyncs={} writes_per_fsync={:.1} commands_per_entry={:.1} fsyncs_per_s={:.0} fsync_ms_avg={:.2} fsync_busy={:.0}%",
            writes,
            syncs,
            writes as f64 / syncs.max(1) as f64,
            latencies.len() as f64 / ops_committed.max(1) as f64,
            syncs as f64 / window.as_secs_f64(),
            sync_ms / syncs.max(1) as f64,
            sync_ms / 10.0 / window.as_secs_f64()
        );
    }
    if !args.pids.is_empty() {
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let pct = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / hz / window.as_secs_f64() * 100.0;
        let parts: Vec<String> =
            cpu_after
                .iter()
                .zip(&cpu_before)
                .enumerate()
                .map(|(i, (a, b))| {
                    if i < args.pids.len() {
                        format!("replica{i}={:.0}%", pct(*a, *b))
                    } else {
                        format!("bench_client={:.0}%", pct(*a, *b))
                    }
                })
                .collect();
        println!("cpu (of one core) during the window: {}", parts.join(" "));
    }
    let failover = if args.pids.is_empty() { None } else { Some(kill_leader(&cluster, &shared, &args.pids).await?) };
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    if let Some((client_ms, view_ms)) = failover {
        println!("failover_ms kill_to_first_new_commit={client_ms:.0} kill_to_new_leader_normal={view_ms:.0}");
    }
    println!("errors={}", shared.errors.load(Ordering::Relaxed));
    Ok(())
}

/// (commit_op, log_writes, log_syncs, log_sync_us_total) of the current leader.
async fn stats(cluster: &Arc<Cluster>) -> Option<(u64, u64, u64, u64)> {
    for id in 0..cluster.replica_count() {
        if let Some(s) = cluster.status(id).await {
            if s.status == "normal" && s.leader as usize == id {
                return Some((s.commit_op, s.log_writes, s.log_syncs, s.log_sync_us_total));
            }
        }
    }
    None
}

/// Kills the leader; returns (kill → first new-view commit seen by a client,
/// kill → a survivor is normal leader of a newer view), in ms.
async fn kill_leader(cluster: &Arc<Cluster>, shared: &Arc<Shared>, pids: &[i32]) -> anyhow::Result<(f64, f64)> {
    anyhow::ensure!(pids.len() == cluster.replica_count(), "one PID per replica");
    let mut leader = None;
    let search_until = Instant::now() + Duration::from_secs(10);
    while leader.is_none() && Instant::now() < search_until {
        for id in 0..cluster.replica_count() {
            if let Some(s) = cluster.status(id).await {
                if s.status == "normal" && s.leader as usize == id {
                    leader = Some((id, s.view));
                }
            }
        }
    }
    let (leader, view) = leader.ok_or_else(|| anyhow::anyhow!("no leader to kill"))?;
    shared.killed_view.store(view, Ordering::Relaxed);
    let killed_at = Instant::now();
    // SAFETY: kill(2) on a PID the operator handed us; no memory is involved.
    let rc = unsafe { libc::kill(pids[leader], libc::SIGKILL) };
    anyhow::ensure!(rc == 0, "kill {} failed: {}", pids[leader], std::io::Error::last_os_error());
    eprintln!("killed replica {leader} (pid {}) leading view {view}", pids[leader]);
    let killed_ns = (killed_at - shared.start).as_nanos() as u64;
    let mut view_ms = f64::NAN;
    let survivors: Vec<usize> = (0..cluster.replica_count()).filter(|&i| i != leader).collect();
    while killed_at.elapsed() < FAILOVER_WAIT {
        if view_ms.is_nan() {
            for &id in &survivors {
                if let Some(s) = cluster.status(id).await {
                    if s.status == "normal" && s.leader as usize == id && s.view > view {
                        view_ms = killed_at.elapsed().as_secs_f64() * 1000.0;
                    }
                }
            }
        }
        let first = shared.first_new_commit_ns.load(Ordering::Relaxed);
        if first != u64::MAX && !view_ms.is_nan() {
            return Ok(((first.saturating_sub(killed_ns)) as f64 / 1e6, view_ms));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = shared.first_new_commit_ns.load(Ordering::Relaxed);
    let client_ms = if first == u64::MAX { f64::NAN } else { first.saturating_sub(killed_ns) as f64 / 1e6 };
    Ok((client_ms, view_ms))
}

/// utime + stime (clock ticks) of each PID, then of this process.
fn cpu_ticks(pids: &[i32]) -> Vec<u64> {
    let read = |path: String| -> u64 {
        let Ok(text) = std::fs::read_to_string(path) else { return 0 };
        // Fields after the command name (which is in parentheses).
        let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let mut v: Vec<u64> = pids.iter().map(|p| read(format!("/proc/{p}/stat"))).collect();
    v.push(read("/proc/self/stat".to_string()));
    v
}
