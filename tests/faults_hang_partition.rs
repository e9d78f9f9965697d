//! Real-process fault tests of the replicated mount (`chorus up --replicas
//! 3`): a hung (SIGSTOPped) leader or follower, a leader cut off from the
//! two other replicas by iptables rules on loopback, and a leader SIGKILLed
//! right after it acknowledged a change.
//!
//! Every test is bounded (hard deadlines on every wait) and cleans up in
//! `Drop`, also when it fails: SIGCONT to the processes it stopped, removal
//! of exactly the iptables rules it added (tagged with a comment naming this
//! test process), SIGKILL by PID of the replica processes serving its own
//! data folders and of the processes it started, and a detach-unmount of
//! its mounts. Servers listen on 127.0.0.1 only.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_fs::ops::{Caller, Errno, OpResult, Query, Request as FsRequest, ROOT_INO};
use chorus_replication::{Operation, Outcome, Request as CoreRequest};
use chorus_replication_shell::api::{NodeRequest, NodeResponse, NodeStatus};
use chorus_replication_shell::client::Cluster as ShellCluster;

use common::*;

const REPLICAS: usize = 3;

fn content(i: usize) -> Vec<u8> {
    format!("fault test write number {i}\n").repeat(1 + i % 5).into_bytes()
}

/// The tag on every iptables rule this test process adds.
fn rule_comment() -> String {
    format!("chorus-test-{}", std::process::id())
}

fn iptables_usable() -> bool {
    Command::new("iptables").args(["-w", "5", "-L", "INPUT", "-n"]).output().is_ok_and(|o| o.status.success())
}

/// A `chorus up --replicas 3` cluster, a status client, and everything this
/// test started or changed, undone on drop.
struct Rig {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    data: PathBuf,
    port: u16,
    peers: Vec<SocketAddr>,
    up: Option<Proc>,
    /// Processes started by the test besides `up` (restarted replicas,
    /// second mounts); SIGKILLed on drop.
    extra: Vec<Proc>,
    extra_mounts: Vec<PathBuf>,
    /// PIDs we SIGSTOPped and not yet continued.
    stopped: Vec<i32>,
    /// iptables rule specs (after `-I INPUT`) we added and not yet deleted.
    rules: Vec<Vec<String>>,
    /// Whether this test added iptables rules at all (then, on drop, an
    /// `ip filter` table left empty is deleted: iptables-nft leaves it).
    used_iptables: bool,
    rt: Option<tokio::runtime::Runtime>,
    cluster: Option<Arc<ShellCluster>>,
}

impl Rig {
    fn start(name: &str) -> Rig {
        assert!(can_mount(), "{name}: needs root and /dev/fuse (a FUSE mount)");
        let dir = tempfile::Builder::new().prefix(&format!("chorus-{name}")).tempdir_in("/var/tmp").unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let data = dir.path().join("data");
        let port = free_port().clamp(20000, 60000);
        let peers: Vec<SocketAddr> = (0..REPLICAS as u16).map(|i| SocketAddr::from(([127, 0, 0, 1], port + i))).collect();
        let mut rig = Rig {
            dir,
            mnt,
            data,
            port,
            peers,
            up: None,
            extra: Vec::new(),
            extra_mounts: Vec::new(),
            stopped: Vec::new(),
            rules: Vec::new(),
            used_iptables: false,
            rt: None,
            cluster: None,
        };
        let port_s = port.to_string();
        let log = rig.dir.path().join("up.log");
        let args = [
            "up".as_ref(),
            rig.mnt.as_os_str(),
            "--data".as_ref(),
            rig.data.as_os_str(),
            "--port".as_ref(),
            port_s.as_ref(),
            "--replicas".as_ref(),
            "3".as_ref(),
        ];
        rig.up = Some(spawn("up", &args, &log));
        let mnt = rig.mnt.clone();
        wait_until("replicated mount", Duration::from_secs(90), || is_mounted(&mnt));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let certs = rig.data.join("certs");
        let peers = rig.peers.clone();
        let cluster = rt.block_on(async { ShellCluster::new(&certs, peers) }).expect("shell client");
        rig.rt = Some(rt);
        rig.cluster = Some(cluster);
        rig
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().unwrap()
    }

    fn cluster(&self) -> &Arc<ShellCluster> {
        self.cluster.as_ref().unwrap()
    }

    fn replica_dir(&self, i: usize) -> PathBuf {
        self.data.join(format!("replica-{i}"))
    }

    fn replica_pid(&self, i: usize) -> i32 {
        pid_of_replica(&self.replica_dir(i)).unwrap_or_else(|| panic!("no process serves replica {i}"))
    }

    /// Every replica's status, asked at once (None: no answer within 2 s).
    fn statuses(&self) -> Vec<Option<NodeStatus>> {
        let cluster = self.cluster().clone();
        self.rt().block_on(async move {
            let tasks: Vec<_> = (0..REPLICAS)
                .map(|i| {
                    let c = cluster.clone();
                    tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(2), c.status(i)).await.ok().flatten() })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.ok().flatten());
            }
            out
        })
    }

    /// The leader of the view a majority of replicas report as normal.
    fn majority_leader(statuses: &[Option<NodeStatus>]) -> Option<(u64, usize)> {
        common::majority_leader(statuses)
    }

    /// The leader by the replicas' status RPC: a majority names it in a
    /// normal view and it names itself leader of that view.
    fn leader(&self, timeout: Duration) -> (u64, usize) {
        let start = Instant::now();
        loop {
            let st = self.statuses();
            if let Some((v, l)) = Self::majority_leader(&st) {
                if st[l].as_ref().is_some_and(|s| s.status == "normal" && s.view == v && s.leader as usize == l) {
                    return (v, l);
                }
            }
            assert!(start.elapsed() < timeout, "no majority agrees on a leader within {timeout:?}: {st:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn brief(st: &[Option<NodeStatus>]) -> String {
        st.iter()
            .map(|s| match s {
                Some(s) => format!("[{} {} v{} L{} op{} c{} {:016x}]", s.id, s.status, s.view, s.leader, s.op, s.commit_op, s.digest),
                None => "[down]".into(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Waits until all replicas answer, are normal in the same view and
    /// report the same commit point and digest; panics after `timeout`.
    fn wait_converged(&self, timeout: Duration) -> (Duration, NodeStatus) {
        let start = Instant::now();
        let mut last;
        loop {
            last = self.statuses();
            let all: Vec<&NodeStatus> = last.iter().flatten().collect();
            if all.len() == REPLICAS
                && all.iter().all(|s| s.status == "normal")
                && all.iter().all(|s| {
                    (s.view, s.leader, s.commit_op, s.digest) == (all[0].view, all[0].leader, all[0].commit_op, all[0].digest)
                        && s.digest_op == s.applied_op
                })
            {
                return (start.elapsed(), all[0].clone());
            }
            assert!(
                start.elapsed() < timeout,
                "replicas did not converge (all normal, same view, commit point and digest) within {timeout:?}: {}\n{}",
                Self::brief(&last),
                self.replica_log_tails(40)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Like `wait_until`, but a timeout panics with every replica's status
    /// and the tails of the replica and mount logs.
    fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; statuses: {}\n{}",
                    Self::brief(&self.statuses()),
                    self.replica_log_tails(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Per replica: its process (or none) and, per thread, the scheduler
    /// state and the kernel function it sleeps in; tells a crash from a hang.
    fn process_report(&self) -> String {
        let mut s = String::new();
        for i in 0..REPLICAS {
            let Some(pid) = pid_of_replica(&self.replica_dir(i)) else {
                s += &format!("replica {i}: no process\n");
                continue;
            };
            let state = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("")
                .to_string();
            s += &format!("replica {i}: pid {pid} {state}\n");
            let mut threads: Vec<String> = Vec::new();
            for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
                let p = t.path();
                let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default().trim().to_string();
                let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
                let st = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("?").to_string();
                let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
                threads.push(format!("{comm}:{st}:{wchan}"));
            }
            threads.sort();
            s += &format!("  threads: {}\n", threads.join(" "));
        }
        s
    }

    fn replica_log_tails(&self, lines: usize) -> String {
        let mut s = self.process_report();
        let up = std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default();
        let all: Vec<&str> = up.lines().collect();
        s += &format!("--- up.log (mount; last {lines} lines) ---\n");
        for l in &all[all.len().saturating_sub(lines)..] {
            s += l;
            s.push('\n');
        }
        for i in 0..REPLICAS {
            let log = std::fs::read_to_string(self.replica_dir(i).join("server.log")).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            s += &format!("--- replica-{i}/server.log (last {lines} lines) ---\n");
            for l in &all[all.len().saturating_sub(lines)..] {
                s += l;
                s.push('\n');
            }
        }
        s
    }

    /// `chorus status` (the CLI): every replica's row says `up`; prints it.
    fn cli_status_all_up(&self) {
        let report = run_ok(Command::new(chorus_bin()).args(["status", "--port", &self.port.to_string(), "--data"]).arg(&self.data));
        eprintln!("{report}");
        for p in &self.peers {
            let line = report
                .lines()
                .find(|l| l.contains(&p.to_string()) && l.contains('┆'))
                .unwrap_or_else(|| panic!("`chorus status` does not name {p}:\n{report}"));
            assert!(
                line.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == "up"),
                "`chorus status` does not show {p} up:\n{report}"
            );
        }
    }

    fn sigstop(&mut self, pid: i32) {
        self.stopped.push(pid);
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP {pid}");
    }

    fn sigcont(&mut self, pid: i32) {
        unsafe { libc::kill(pid, libc::SIGCONT) };
        self.stopped.retain(|p| *p != pid);
    }

    fn add_rule(&mut self, spec: &[&str]) {
        let mut full: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
        full.extend(["-m", "comment", "--comment", &rule_comment(), "-j", "DROP"].map(String::from));
        // Recorded first: a rule that was added although the command failed
        // is still removed on drop.
        self.rules.push(full.clone());
        self.used_iptables = true;
        run_ok(Command::new("iptables").args(["-w", "5", "-I", "INPUT"]).args(&full));
    }

    fn remove_rules(&mut self) {
        for spec in std::mem::take(&mut self.rules) {
            let _ = Command::new("iptables").args(["-w", "5", "-D", "INPUT"]).args(&spec).output();
        }
        // Belt and braces: any rule still carrying our tag.
        if let Ok(out) = Command::new("iptables").args(["-w", "5", "-S", "INPUT"]).output() {
            let tag = rule_comment();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.starts_with("-A INPUT") && line.split_whitespace().any(|w| w == tag) {
                    let args: Vec<&str> = line.split_whitespace().skip(2).collect();
                    let _ = Command::new("iptables").args(["-w", "5", "-D", "INPUT"]).args(&args).output();
                }
            }
        }
    }

    /// Deletes the `ip filter` table if no rule and no chain of its own is
    /// left in it (iptables-nft leaves the empty table behind); a table
    /// with anyone's rules in it is left alone.
    fn delete_empty_filter_table(&self) {
        let Ok(out) = Command::new("iptables").args(["-w", "5", "-S"]).output() else { return };
        if out.status.success() && String::from_utf8_lossy(&out.stdout).lines().all(|l| l.starts_with("-P ")) {
            let _ = Command::new("nft").args(["delete", "table", "ip", "filter"]).output();
        }
    }

    /// Restarts replica `i` (its process is gone) as our own child, without
    /// --init-new-cluster: it recovers from its log and from the group.
    fn restart_replica(&mut self, i: usize) {
        let certs = self.data.join("certs");
        let dir = self.replica_dir(i);
        let peer_list = self.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let id = i.to_string();
        let log = self.dir.path().join(format!("restarted-{i}.log"));
        let p = spawn(
            "restarted replica",
            &[
                "server".as_ref(),
                "--certs".as_ref(),
                certs.as_os_str(),
                "--data".as_ref(),
                dir.as_os_str(),
                "--id".as_ref(),
                id.as_ref(),
                "--peers".as_ref(),
                peer_list.as_ref(),
            ],
            &log,
        );
        self.extra.push(p);
    }

    /// A second, fresh mount of the cluster (no kernel cache shared with the
    /// first one): what it shows comes from the replicas.
    fn fresh_mount(&mut self, name: &str) -> PathBuf {
        let m = self.dir.path().join(name);
        std::fs::create_dir(&m).unwrap();
        let certs = self.data.join("certs");
        let servers = self.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let log = self.dir.path().join(format!("{name}.log"));
        let p = spawn(
            name,
            &["mount".as_ref(), "--certs".as_ref(), certs.as_os_str(), "--server".as_ref(), servers.as_ref(), m.as_os_str()],
            &log,
        );
        self.extra.push(p);
        self.extra_mounts.push(m.clone());
        let mm = m.clone();
        wait_until(&format!("fresh mount {name} (log {})", log.display()), Duration::from_secs(60), || is_mounted(&mm));
        m
    }

    /// Stops `chorus up` cleanly (unmount, replicas stopped) and checks it.
    fn stop_cleanly(&mut self) {
        for mut p in std::mem::take(&mut self.extra) {
            let st = p.term(Duration::from_secs(30));
            assert!(st.success(), "{} exited with {st}", p.name);
        }
        for m in std::mem::take(&mut self.extra_mounts) {
            assert!(!is_mounted(&m), "{} still mounted after its mount process stopped", m.display());
        }
        let log = self.dir.path().join("up.log");
        let mut up = self.up.take().unwrap();
        let st = up.term(Duration::from_secs(30));
        assert!(st.success(), "chorus up exited with {st}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        assert!(!is_mounted(&self.mnt));
        for i in 0..REPLICAS {
            assert!(pid_of_replica(&self.replica_dir(i)).is_none(), "replica {i} still running after up stopped");
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.remove_rules();
        if self.used_iptables {
            self.delete_empty_filter_table();
        }
        for pid in std::mem::take(&mut self.stopped) {
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        self.cluster.take();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        for m in std::mem::take(&mut self.extra_mounts) {
            detach_unmount(&m);
        }
        for p in self.extra.iter_mut() {
            if p.running() {
                p.kill9();
            }
        }
        if let Some(up) = self.up.as_mut() {
            if up.running() {
                up.kill9();
            }
        }
        for i in 0..REPLICAS {
            if let Some(pid) = pid_of_replica(&self.replica_dir(i)) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        detach_unmount(&self.mnt);
    }
}

/// One create+write+fsync+close of the writer.
#[derive(Clone, Debug)]
struct OpRec {
    i: usize,
    start: Instant,
    end: Instant,
    err: Option<String>,
}

/// A thread streaming fsync'd creates of small files into `dir`.
struct Writer {
    recs: Arc<Mutex<Vec<OpRec>>>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(dir: PathBuf) -> Writer {
        let recs: Arc<Mutex<Vec<OpRec>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let handle = {
            let (recs, stop, done) = (recs.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(180);
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                        break;
                    }
                    let start = Instant::now();
                    let r = (|| -> std::io::Result<()> {
                        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(dir.join(format!("f{i}")))?;
                        f.write_all(&content(i))?;
                        f.sync_all()
                    })();
                    let end = Instant::now();
                    recs.lock().unwrap().push(OpRec { i, start, end, err: r.err().map(|e| e.to_string()) });
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        Writer { recs, stop, done, handle: Some(handle) }
    }

    fn count(&self) -> usize {
        self.recs.lock().unwrap().len()
    }

    fn count_after(&self, t: Instant) -> usize {
        self.recs.lock().unwrap().iter().filter(|r| r.start > t).count()
    }

    fn wait_for(&self, what: &str, n: usize, timeout: Duration) {
        wait_until(what, timeout, || self.count() >= n);
    }

    /// Stops the stream; an op stuck in the mount is waited for (bounded:
    /// the client gives up after 30 s), then the thread is joined.
    fn finish(&mut self) -> Vec<OpRec> {
        self.stop.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while !self.done.load(Ordering::SeqCst) {
            assert!(start.elapsed() < Duration::from_secs(45), "the writer is stuck in a file-system call for over 45 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.handle.take().unwrap().join().unwrap();
        self.recs.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Not joined: if it hangs in the mount, the rig's drop kills the
        // mount and the call returns.
    }
}

/// The writer's longest stall around `fault`: the largest gap between
/// consecutive completions (the first measured from the last completion
/// before `fault`) among ops that started before `until`; and the largest
/// single-op latency among them.
fn stall_after(recs: &[OpRec], fault: Instant, until: Instant) -> (Duration, Duration, usize) {
    let mut prev = recs.iter().filter(|r| r.end <= fault).map(|r| r.end).max().unwrap_or(fault);
    let (mut gap, mut lat, mut n) = (Duration::ZERO, Duration::ZERO, 0);
    for r in recs.iter().filter(|r| r.end > fault && r.start < until) {
        gap = gap.max(r.end.duration_since(prev));
        lat = lat.max(r.end.duration_since(r.start));
        prev = r.end;
        n += 1;
    }
    (gap, lat, n)
}

/// The longest stretch without a completed op from `fault` to `until`: the
/// ops that completed in that window, and from the last of them to `until`
/// (an op that starts before `until` and ends after it is the return's
/// doing, measured by [`stall_after`] from `until` on).
fn stall_within(recs: &[OpRec], fault: Instant, until: Instant) -> Duration {
    let mut prev = recs.iter().filter(|r| r.end <= fault).map(|r| r.end).max().unwrap_or(fault);
    let mut gap = Duration::ZERO;
    for r in recs.iter().filter(|r| r.end > fault && r.end <= until) {
        gap = gap.max(r.end.duration_since(prev));
        prev = r.end;
    }
    gap.max(until.saturating_duration_since(prev))
}

/// The same measure over a quiet stretch (ops completed between `from` and
/// `to`), for comparison.
fn baseline(recs: &[OpRec], from: Instant, to: Instant) -> (Duration, Duration) {
    let win: Vec<&OpRec> = recs.iter().filter(|r| r.start >= from && r.end <= to).collect();
    let mut gap = Duration::ZERO;
    for w in win.windows(2) {
        gap = gap.max(w[1].end.duration_since(w[0].end));
    }
    let mean = if win.is_empty() { Duration::ZERO } else { win.iter().map(|r| r.end - r.start).sum::<Duration>() / win.len() as u32 };
    (gap, mean)
}

fn assert_no_errors(recs: &[OpRec]) {
    let failed: Vec<&OpRec> = recs.iter().filter(|r| r.err.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} writer ops failed (an application must not see a replica fault), first: {:?}",
        failed.len(),
        recs.len(),
        failed.first()
    );
}

/// Every acknowledged file has its content, read under `dir`.
fn verify_files(dir: &Path, recs: &[OpRec]) {
    for r in recs.iter().filter(|r| r.err.is_none()) {
        let mut got = Vec::new();
        std::fs::File::open(dir.join(format!("f{}", r.i)))
            .and_then(|mut f| f.read_to_end(&mut got))
            .unwrap_or_else(|e| panic!("acknowledged file f{} unreadable under {}: {e}", r.i, dir.display()));
        assert!(got == content(r.i), "acknowledged file f{} has wrong content under {}", r.i, dir.display());
    }
}

/// The promise (README, docs/architecture.md, docs/operations.md): a failed
/// leader stalls the mount about half a second (the client's 500 ms
/// attempt timeout, then the view change, ~50 ms).
const FAILOVER_STALL_PROMISED: Duration = Duration::from_millis(500);
/// Margin on top of a promise for scheduling noise on a loaded 2-core
/// machine (measured: 0.51-0.56 s for a SIGSTOPped leader).
const FAILOVER_STALL_MARGIN: Duration = Duration::from_millis(500);
/// A hung follower must not stall the writer beyond the quiet stretch's
/// longest gap plus this margin (the leader commits with the other follower).
const NO_FAILOVER_STALL_MARGIN: Duration = Duration::from_millis(250);
/// ... and never reaches the client's 500 ms attempt timeout, which would
/// mean a request went unanswered as if the leader had failed.
const CLIENT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// A leader cut off from both followers is a failed leader to them and to
/// the mount (its requests time out there): the same promise as a crash.
const PARTITION_STALL_PROMISED: Duration = FAILOVER_STALL_PROMISED;
/// Margin as for a crash.
const PARTITION_STALL_MARGIN: Duration = FAILOVER_STALL_MARGIN;

/// SIGSTOPs the leader or a follower during the write stream for at least
/// 6 s, measures the writer's longest stall, SIGCONTs it, and checks that
/// the group converges and that every acknowledged file is intact. A
/// stopped leader must be replaced (a newer view, another leader) within
/// the promised stall plus margin; a stopped follower must not move the
/// group while stopped (same view and leader), must leave the same leader
/// after its return, and must stall the writer no more than the quiet
/// stretch before it plus a margin.
fn hang_one_replica(name: &str, stop_leader: bool) {
    let mut rig = Rig::start(name);
    let stream = rig.mnt.join("stream");
    std::fs::create_dir(&stream).unwrap();
    let mut writer = Writer::start(stream.clone());
    writer.wait_for("100 acknowledged creates", 100, Duration::from_secs(60));
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let (view, leader) = rig.leader(Duration::from_secs(10));
    let victim = if stop_leader { leader } else { (leader + 1) % REPLICAS };
    let pid = rig.replica_pid(victim);
    let fault = Instant::now();
    rig.sigstop(pid);
    eprintln!("{name}: view {view} leader {leader}; SIGSTOPped replica {victim} (pid {pid})");
    // Keep it stopped for at least 6 s (several lease and suspicion
    // timeouts) and until 100 more ops completed after the stop.
    let stopped_for = Instant::now();
    rig.wait("100 creates after the SIGSTOP", Duration::from_secs(60), || writer.count_after(fault) >= 100);
    while stopped_for.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = rig.statuses();
    eprintln!("{name}: while replica {victim} is stopped: {}", Rig::brief(&during));
    let until = Instant::now();
    rig.sigcont(pid);
    let resumed = Instant::now();
    // The writer keeps going while the stopped replica comes back.
    rig.wait("100 creates after the SIGCONT", Duration::from_secs(60), || writer.count_after(resumed) >= 100);
    std::thread::sleep(Duration::from_secs(2));
    let recs = writer.finish();
    let (q_gap, q_mean) = baseline(&recs, quiet_from, fault);
    let (stall, lat, n) = stall_after(&recs, fault, until);
    let stopped_stall = stall_within(&recs, fault, until);
    let (c_stall, c_lat, c_n) = stall_after(&recs, resumed, Instant::now());
    let limit = if stop_leader {
        FAILOVER_STALL_PROMISED + FAILOVER_STALL_MARGIN
    } else {
        (q_gap + NO_FAILOVER_STALL_MARGIN).min(CLIENT_ATTEMPT_TIMEOUT)
    };
    eprintln!(
        "MEASURED {name}: SIGSTOP of {} {victim}: longest writer stall {stall:?} (longest op {lat:?}, {n} ops while stopped); \
         quiet before: longest gap {q_gap:?}, mean op {q_mean:?}; while stopped (ops completed before SIGCONT): {stopped_stall:?}; \
         after SIGCONT: longest stall {c_stall:?} (longest op {c_lat:?}, {c_n} ops); limit {limit:?}",
        if stop_leader { "leader" } else { "follower" }
    );
    assert_no_errors(&recs);
    let majority_during = Rig::majority_leader(&during);
    let after = rig.wait_converged(Duration::from_secs(60));
    eprintln!(
        "{name}: converged {:?} after the writer stopped: view {} leader {} commit_op {} digest {:016x}",
        after.0, after.1.view, after.1.leader, after.1.commit_op, after.1.digest
    );
    if stop_leader {
        let (v, l) = majority_during.unwrap_or_else(|| panic!("no majority leader while the leader was stopped: {}", Rig::brief(&during)));
        assert!(
            v > view && l != victim,
            "no failover while leader {victim} was stopped: majority view {v} leader {l} (before: view {view})"
        );
        assert_ne!(after.1.leader as usize, victim, "the stopped leader is still the leader: no failover happened");
    } else {
        assert_eq!(
            majority_during,
            Some((view, leader)),
            "a stopped follower moved the group while it was stopped: {}",
            Rig::brief(&during)
        );
        // On its return the straggler may Join, and the leader then moves
        // the group to the next view it leads (docs/protocol.md V1b): a
        // newer view is allowed, another leader is not.
        assert_eq!(
            after.1.leader as usize, leader,
            "the follower's return moved the group to another leader (view {} -> {})",
            view, after.1.view
        );
    }
    rig.cli_status_all_up();
    verify_files(&stream, &recs);
    let fresh = rig.fresh_mount("fresh");
    verify_files(&fresh.join("stream"), &recs);
    if stop_leader {
        assert!(
            stall <= limit,
            "the writer stalled {stall:?} while replica {victim} was SIGSTOPped (limit {limit:?}; quiet longest gap {q_gap:?})"
        );
    } else {
        assert!(
            stopped_stall <= limit,
            "the writer stalled {stopped_stall:?} while replica {victim} was SIGSTOPped (limit {limit:?}; quiet longest gap {q_gap:?})"
        );
        // The follower's return may move the group through new views (its
        // own view changes, then a Join; the leader stays), and each new
        // view makes the mount drop its callback cache and reset with the
        // leader before its requests go on (docs/protocol.md §15 C4): as
        // long as a failover, not as a hung follower. Measured 0.44 s once
        // (CI, 2026-11-30); before callbacks, tens of milliseconds.
        let return_limit = FAILOVER_STALL_PROMISED + FAILOVER_STALL_MARGIN;
        assert!(c_stall <= return_limit, "the writer stalled {c_stall:?} after replica {victim} came back (limit {return_limit:?})");
    }
    rig.stop_cleanly();
}

#[test]
fn leader_sigstopped_stalls_writes_about_half_a_second() {
    hang_one_replica("leader-sigstop", true);
}

#[test]
fn follower_sigstopped_does_not_stall_writes() {
    hang_one_replica("follower-sigstop", false);
}

/// A client session of our own, sent directly to one replica (no redirects).
struct DirectSession {
    client: u64,
    session: u64,
    seq: u64,
}

fn direct(rig: &Rig, replica: usize, req: CoreRequest) -> Option<NodeResponse> {
    let cluster = rig.cluster().clone();
    rig.rt().block_on(async move { cluster.call(replica, &NodeRequest::Call(req)).await })
}

fn register_direct(rig: &Rig, replica: usize, client: u64) -> Option<DirectSession> {
    let req = CoreRequest { client, session: 0, seq: client, low_water: 0, epoch: 0, operation: Operation::Register };
    match direct(rig, replica, req)? {
        NodeResponse::Reply(r) => match r.outcome {
            Outcome::Registered(session) => Some(DirectSession { client, session, seq: 0 }),
            _ => None,
        },
        _ => None,
    }
}

fn lookup_direct(rig: &Rig, replica: usize, s: &mut DirectSession, name: &str) -> Result<OpResult, String> {
    s.seq += 1;
    let q = FsRequest::Query { caller: Caller::root(), query: Query::Lookup { parent: ROOT_INO, name: name.as_bytes().to_vec() } };
    let bytes = chorus_server::machine::encode_request(&q).unwrap();
    let req =
        CoreRequest { client: s.client, session: s.session, seq: s.seq, low_water: s.seq - 1, epoch: 0, operation: Operation::Read(bytes) };
    match direct(rig, replica, req) {
        None => Err("no answer".into()),
        Some(NodeResponse::Reply(r)) => match r.outcome {
            Outcome::Done(b) => Ok(chorus_server::machine::decode_result(&b).map_err(|e| format!("undecodable: {e}"))?),
            other => Err(format!("{other:?}")),
        },
        Some(other) => Err(format!("{other:?}")),
    }
}

#[test]
fn minority_partition_old_leader_stops_new_leader_serves() {
    let test = "minority_partition_old_leader_stops_new_leader_serves";
    if !usable_or_skip(test, iptables_usable(), "`iptables -w 5 -L INPUT -n` does not run here") {
        return;
    }
    let name = "partition";
    let mut rig = Rig::start(name);
    let stream = rig.mnt.join("stream");
    std::fs::create_dir(&stream).unwrap();
    let mut writer = Writer::start(stream.clone());
    writer.wait_for("100 acknowledged creates", 100, Duration::from_secs(60));
    let (view, old) = rig.leader(Duration::from_secs(10));
    // A session of our own, registered at the leader before the partition,
    // to probe the old leader directly during it.
    let client_base = 0x7e57_0000_0000_0000u64 | ((std::process::id() as u64) << 16);
    let mut probe = register_direct(&rig, old, client_base).expect("register a probe session at the leader");
    std::thread::sleep(Duration::from_secs(1));
    let quiet_to = Instant::now();
    // Cut the old leader off from both other replicas. Replicas send from
    // their listening socket, so peer traffic is exactly (port_i <-> port_j);
    // the mount's client (an ephemeral port) still reaches the old leader,
    // which must then refuse or ignore it, never acknowledge.
    let lp = rig.peers[old].port().to_string();
    for other in (0..REPLICAS).filter(|&j| j != old) {
        let op = rig.peers[other].port().to_string();
        rig.add_rule(&["-i", "lo", "-p", "udp", "--sport", &lp, "--dport", &op]);
        rig.add_rule(&["-i", "lo", "-p", "udp", "--sport", &op, "--dport", &lp]);
    }
    let fault = Instant::now();
    eprintln!("{name}: view {view} leader {old}; partitioned it from the other two (rules tagged {})", rule_comment());

    // Past the lease (300 ms) and the followers' promise, the majority has a
    // new leader; a marker created through the mount is then acknowledged
    // by the new majority.
    rig.wait("50 creates after the partition", Duration::from_secs(60), || writer.count_after(fault) >= 50);
    let marker = rig.mnt.join("marker-after-partition");
    {
        let mut f = std::fs::File::create(&marker).expect("create marker during the partition");
        f.write_all(b"committed by the majority").unwrap();
        f.sync_all().expect("fsync marker during the partition");
    }
    let marker_acked = Instant::now();
    let majority: Vec<Option<NodeStatus>> = rig.statuses();
    eprintln!("{name}: during the partition: {}", Rig::brief(&majority));
    let new = Rig::majority_leader(&majority);

    // Probe the old leader directly, well past its lease: it must not
    // acknowledge a write (a session registration is a log write) nor
    // answer a read that misses the marker the majority committed.
    let mut probes = Vec::new();
    let mut violations = Vec::new();
    for k in 1..=4u64 {
        if let Some(s) = register_direct(&rig, old, client_base + k) {
            violations.push(format!("the isolated old leader acknowledged a session registration (session {})", s.session));
        }
        match lookup_direct(&rig, old, &mut probe, "marker-after-partition") {
            Ok(Err(Errno(e))) if e == libc::ENOENT => {
                violations.push("the isolated old leader answered a read without the majority's acknowledged marker (stale read)".into())
            }
            other => probes.push(format!("{other:?}")),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("{name}: old leader {old} probed directly {:?} after the partition: read answers {probes:?}", fault.elapsed());

    rig.wait("150 creates after the partition", Duration::from_secs(60), || writer.count_after(fault) >= 150);
    let until = Instant::now();
    rig.remove_rules();
    let healed = Instant::now();
    eprintln!("{name}: partition removed after {:?}", healed.duration_since(fault));
    rig.wait("100 creates after healing", Duration::from_secs(60), || writer.count_after(healed) >= 100);
    std::thread::sleep(Duration::from_secs(2));
    let recs = writer.finish();
    let (q_gap, q_mean) = baseline(&recs, quiet_to - Duration::from_secs(3), quiet_to);
    let (stall, lat, n) = stall_after(&recs, fault, until);
    let (h_stall, h_lat, h_n) = stall_after(&recs, healed, Instant::now());
    eprintln!(
        "MEASURED {name}: leader {old} partitioned: longest writer stall {stall:?} (longest op {lat:?}, {n} ops during the partition); \
         quiet before: longest gap {q_gap:?}, mean op {q_mean:?}; after healing: longest stall {h_stall:?} (longest op {h_lat:?}, {h_n} ops); \
         marker acknowledged {:?} after the partition",
        marker_acked.duration_since(fault)
    );
    assert!(violations.is_empty(), "linearizability violations by the isolated old leader: {violations:#?}");
    assert_no_errors(&recs);
    let (new_view, new_leader) = new.expect("no majority agreed on a leader during the partition");
    assert_ne!(new_leader, old, "the majority still names the isolated replica {old} leader (view {new_view})");
    assert!(new_view > view, "the majority's view {new_view} did not advance past {view}");
    let after = rig.wait_converged(Duration::from_secs(60));
    eprintln!(
        "{name}: old leader caught up {:?} after the writer stopped: view {} leader {} commit_op {} digest {:016x}",
        after.0, after.1.view, after.1.leader, after.1.commit_op, after.1.digest
    );
    rig.cli_status_all_up();
    verify_files(&stream, &recs);
    let fresh = rig.fresh_mount("fresh");
    verify_files(&fresh.join("stream"), &recs);
    assert_eq!(std::fs::read(fresh.join("marker-after-partition")).unwrap(), b"committed by the majority");
    let limit = PARTITION_STALL_PROMISED + PARTITION_STALL_MARGIN;
    assert!(
        stall <= limit,
        "the writer stalled {stall:?} after the leader was partitioned; promised about {PARTITION_STALL_PROMISED:?} (limit with margin {limit:?})"
    );
    rig.stop_cleanly();
}

#[test]
fn reply_then_crash_change_survives() {
    let name = "reply-then-crash";
    let mut rig = Rig::start(name);
    // Some history first, so the log is not trivially short.
    std::fs::create_dir(rig.mnt.join("warm")).unwrap();
    for i in 0..20 {
        std::fs::write(rig.mnt.join("warm").join(format!("w{i}")), content(i)).unwrap();
    }
    let (view, leader) = rig.leader(Duration::from_secs(10));
    let pid = rig.replica_pid(leader);
    // The changes; each call returned OK, then the leader dies at once.
    let dir = rig.mnt.join("made-just-before-the-crash");
    std::fs::create_dir(&dir).expect("mkdir");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join("file")).expect("create");
    f.write_all(b"acknowledged then the leader crashed").expect("write");
    f.sync_all().expect("fsync");
    std::fs::rename(rig.mnt.join("warm/w0"), rig.mnt.join("renamed-w0")).expect("rename");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = Instant::now();
    drop(f);
    eprintln!("{name}: view {view} leader {leader} (pid {pid}) SIGKILLed right after the acknowledgements");

    // After failover: visible through the mount (a new create forces the
    // mount through the failover) and through a fresh mount (no kernel cache).
    std::fs::write(rig.mnt.join("after-failover"), b"x").expect("a create after the failover");
    let failover = killed.elapsed();
    let (new_view, new_leader) = rig.leader(Duration::from_secs(30));
    let limit = FAILOVER_STALL_PROMISED + FAILOVER_STALL_MARGIN;
    eprintln!("MEASURED {name}: first create after the kill acknowledged {failover:?} later (limit {limit:?}); new view {new_view} leader {new_leader}");
    assert_ne!(new_leader, leader, "the killed replica {leader} is still named leader");
    assert!(new_view > view, "the view did not change after the leader was killed: {new_view} (before {view})");
    assert!(failover <= limit, "the first create after killing the leader took {failover:?}; the docs promise about {FAILOVER_STALL_PROMISED:?} (limit with margin {limit:?})");
    let check = |root: &Path| {
        let d = root.join("made-just-before-the-crash");
        assert!(d.is_dir(), "the acknowledged mkdir is gone under {}", root.display());
        assert_eq!(
            std::fs::read(d.join("file")).unwrap_or_else(|e| panic!("the acknowledged create is gone under {}: {e}", root.display())),
            b"acknowledged then the leader crashed"
        );
        assert!(
            root.join("renamed-w0").exists() && !root.join("warm/w0").exists(),
            "the acknowledged rename is lost under {}",
            root.display()
        );
        for i in 1..20 {
            assert_eq!(std::fs::read(root.join("warm").join(format!("w{i}"))).unwrap(), content(i));
        }
    };
    check(&rig.mnt);
    let fresh = rig.fresh_mount("fresh");
    check(&fresh);

    rig.restart_replica(leader);
    let (took, st) = rig.wait_converged(Duration::from_secs(60));
    eprintln!(
        "MEASURED {name}: restarted replica {leader} converged in {took:?}: view {} leader {} commit_op {} digest {:016x}",
        st.view, st.leader, st.commit_op, st.digest
    );
    rig.cli_status_all_up();
    check(&rig.mnt);
    let fresh2 = rig.fresh_mount("fresh2");
    check(&fresh2);
    rig.stop_cleanly();
}
