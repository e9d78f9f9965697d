//! Shared helpers for the real-process tests: start `chorus` servers and
//! mounts as child processes, wait for them with bounded timeouts, and clean
//! up (kill what we started, by PID; unmount what we mounted) on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn chorus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chorus"))
}

/// Replica ports come from here, below Linux's ephemeral range (32768 and
/// up, where every client socket's port comes from): a replica killed and
/// restarted on its port must find it free, and a client socket of any
/// other test could take a freed ephemeral port in between (seen once: a
/// restarted replica exited "address in use").
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// How many consecutive ports each [`free_port`] answer reserves: some
/// tests run a cluster on `port`, `port + 1`, `port + 2`.
const PORT_BLOCK: u16 = 4;

/// A UDP port free a moment ago, with the next `PORT_BLOCK - 1` free too,
/// from [`PORTS`]; never the same block twice in one test process, and
/// processes start at different places (by pid).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let blocks = u32::from((PORTS.end - PORTS.start) / PORT_BLOCK);
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id().wrapping_mul(7_919) % blocks, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..blocks {
        let base = PORTS.start + (NEXT.fetch_add(1, Ordering::SeqCst) % blocks) as u16 * PORT_BLOCK;
        if (base..base + PORT_BLOCK).all(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()) {
            return base;
        }
    }
    panic!("no {PORT_BLOCK} free ports together in {PORTS:?}");
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "command failed: {:?}\nstdout: {}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn init_certs(dir: &Path) {
    run_ok(Command::new(chorus_bin()).args(["init", "--replicas", "3", "--certs"]).arg(dir));
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let canon = match path.canonicalize() {
        Ok(c) => c,
        Err(_) => path.to_path_buf(),
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| l.split(' ').nth(4) == Some(canon.to_string_lossy().as_ref()))
}

/// A child process that is SIGKILLed (if still running) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn kill9(&mut self) {
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
    pub fn term(&mut self, timeout: Duration) -> std::process::ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            if start.elapsed() > timeout {
                self.kill9();
                panic!("{} did not stop within {timeout:?} after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// How it ended (None while it runs).
    #[allow(dead_code)] // not every test binary uses it
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            unsafe { libc::kill(self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// `chorus up MNT --data DATA --port PORT --replicas N`, logging to `log`.
pub fn spawn_up(mnt: &Path, data: &Path, port: u16, replicas: usize, log: &Path) -> Proc {
    let (port, replicas) = (port.to_string(), replicas.to_string());
    let args = [
        "up".as_ref(),
        mnt.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--port".as_ref(),
        port.as_ref(),
        "--replicas".as_ref(),
        replicas.as_ref(),
    ];
    spawn("up", &args, log)
}

pub fn spawn(name: &str, args: &[&std::ffi::OsStr], log: &Path) -> Proc {
    let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    let child = Command::new(chorus_bin())
        .args(args)
        .env("CHORUS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("spawn chorus");
    Proc { child, name: name.to_string() }
}

/// One server process plus one mount process over a temp folder.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub data: PathBuf,
    pub mnt: PathBuf,
    pub addr: SocketAddr,
    pub server: Option<Proc>,
    pub mount: Option<Proc>,
}

impl Cluster {
    pub fn new() -> Cluster {
        let dir = tempfile::Builder::new().prefix("chorus-test").tempdir_in("/var/tmp").unwrap();
        let certs = dir.path().join("certs");
        init_certs(&certs);
        let data = dir.path().join("data");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Cluster { dir, certs, data, mnt, addr, server: None, mount: None }
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    pub fn start_server(&mut self) {
        let addr = self.addr.to_string();
        let p = spawn(
            "server",
            &[
                "server".as_ref(),
                "--certs".as_ref(),
                self.certs.as_os_str(),
                "--data".as_ref(),
                self.data.as_os_str(),
                "--listen".as_ref(),
                addr.as_ref(),
            ],
            &self.log("server"),
        );
        self.server = Some(p);
        // Ready when a UDP bind to the port fails (quinn holds it).
        let port = self.addr.port();
        wait_until("server to bind", Duration::from_secs(30), || std::net::UdpSocket::bind(("127.0.0.1", port)).is_err());
    }

    pub fn start_mount(&mut self) {
        let addr = self.addr.to_string();
        let p = spawn(
            "mount",
            &["mount".as_ref(), "--certs".as_ref(), self.certs.as_os_str(), "--server".as_ref(), addr.as_ref(), self.mnt.as_os_str()],
            &self.log("mount"),
        );
        self.mount = Some(p);
        let mnt = self.mnt.clone();
        let log = self.log("mount");
        wait_until(&format!("mount (log {})", log.display()), Duration::from_secs(30), || is_mounted(&mnt));
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in ["server", "mount"] {
            s += &format!("--- {n} ---\n{}\n", std::fs::read_to_string(self.log(n)).unwrap_or_default());
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut m) = self.mount.take() {
            if m.running() {
                unsafe { libc::kill(m.pid(), libc::SIGTERM) };
                let start = Instant::now();
                while m.running() && start.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        if is_mounted(&self.mnt) {
            let c = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()).unwrap();
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        self.server.take();
    }
}

/// Like [`spawn`], with extra environment variables for the child (e.g. a
/// fault-injection hook such as `CHORUS_FAULT_DROP_REPLIES`).
pub fn spawn_env(name: &str, args: &[&std::ffi::OsStr], log: &Path, env: &[(&str, &str)]) -> Proc {
    let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    let child = Command::new(chorus_bin())
        .args(args)
        .env("CHORUS_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("spawn chorus");
    Proc { child, name: name.to_string() }
}

/// PID of the `chorus server` process serving `replica_dir` (by its command
/// line), so a test can signal exactly the replicas it started.
pub fn pid_of_replica(replica_dir: &Path) -> Option<i32> {
    let needle = replica_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "server") && args.contains(&needle) {
            return Some(pid);
        }
    }
    None
}

/// Detaches the mount at `path` if something is mounted there.
pub fn detach_unmount(path: &Path) {
    if is_mounted(path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Every replica's status through the shell client (None: no answer in 2 s).
pub fn statuses(
    rt: &tokio::runtime::Runtime,
    cluster: &std::sync::Arc<chorus_replication_shell::client::Cluster>,
) -> Vec<Option<chorus_replication_shell::api::NodeStatus>> {
    rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..cluster.replica_count() {
            out.push(tokio::time::timeout(Duration::from_secs(2), cluster.status(i)).await.ok().flatten());
        }
        out
    })
}

/// Set to `1` by `.ci/run`: a test that cannot run on this machine (not
/// root, no /dev/fuse, no usable iptables) fails instead of skipping, so a
/// CI run that silently tested nothing cannot be green.
pub const REQUIRE_FAULTS_ENV: &str = "CHORUS_REQUIRE_FAULTS";

/// Whether skips are forbidden (`CHORUS_REQUIRE_FAULTS=1`).
pub fn skips_forbidden() -> bool {
    std::env::var(REQUIRE_FAULTS_ENV).is_ok_and(|v| v.trim() == "1")
}

/// `true`: `test` can run (`usable`). Otherwise it is skipped with a note on
/// stderr (`false`), or, under `CHORUS_REQUIRE_FAULTS=1`, it fails here.
pub fn usable_or_skip(test: &str, usable: bool, missing: &str) -> bool {
    if usable {
        return true;
    }
    assert!(!skips_forbidden(), "{test}: {missing}, and {REQUIRE_FAULTS_ENV}=1 forbids skipping it");
    eprintln!("SKIPPED {test}: {missing} (set {REQUIRE_FAULTS_ENV}=1 to make this a failure)");
    false
}

/// Whether this process can make FUSE mounts (root and /dev/fuse).
pub fn can_mount() -> bool {
    (unsafe { libc::geteuid() }) == 0 && Path::new("/dev/fuse").exists()
}

/// The (view, leader) that a majority of `statuses` report while normal, if
/// any: who leads, by the replicas' own status RPC rather than their logs.
pub fn majority_leader(statuses: &[Option<chorus_replication_shell::api::NodeStatus>]) -> Option<(u64, usize)> {
    let normal: Vec<_> = statuses.iter().flatten().filter(|s| s.status == "normal").collect();
    for s in &normal {
        let agree = normal.iter().filter(|t| (t.view, t.leader) == (s.view, s.leader)).count();
        if agree > statuses.len() / 2 {
            return Some((s.view, s.leader as usize));
        }
    }
    None
}

/// The longest gap between consecutive times in `acks` (sorted) within
/// `(from, until]`, the first one measured from the last time at or before
/// `from` (or from `from`): the longest a stream of operations went without
/// an acknowledgement after a fault at `from`. With no acknowledgement in
/// the window it is the whole window.
pub fn longest_gap(acks: &[Instant], from: Instant, until: Instant) -> Duration {
    let mut prev = acks.iter().copied().filter(|t| *t <= from).max().unwrap_or(from);
    let mut gap = Duration::ZERO;
    let mut any = false;
    for &t in acks.iter().filter(|t| **t > from && **t <= until) {
        gap = gap.max(t.duration_since(prev));
        prev = t;
        any = true;
    }
    // No acknowledgement at all in the window: the stall lasted all of it.
    if !any {
        gap = until.saturating_duration_since(prev);
    }
    gap
}
