//! Real-process identity tests (issue 10, finding 3): per-host client
//! certificates from `chorus cert issue` (a bundle without the CA key),
//! root squash for certificates not trusted as root, read permission on
//! queries, expiry and revocation; in replicated mode (`chorus up
//! --replicas 3` plus a second mount with an issued bundle, and the shell
//! client at the wire level with forged callers) and single-replica mode
//! (`chorus server` and RPC).
//!
//! Bounded: every wait has a deadline; on drop mounts are removed and the
//! processes we started are killed by PID.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use chorus_fs::ops::{Caller, Op, OpResult, Query, Reply, Request, ROOT_INO};
use chorus_replication_shell::client::{Cluster, Session};
use chorus_wire::certs::{self, Role};
use common::*;

const NOBODY: u32 = 65534;

fn issue(certs: &Path, name: &str, out: &Path, trust_root: bool) -> String {
    let mut cmd = Command::new(chorus_bin());
    cmd.args(["cert", "issue", "--certs"]).arg(certs).args(["--name", name, "--out"]).arg(out).args(["--days", "2"]);
    if trust_root {
        cmd.arg("--trust-root");
    }
    run_ok(&mut cmd)
}

fn user_caller(uid: u32) -> Caller {
    Caller { uid, gid: uid, pid: 0, groups: vec![] }
}

/// Runs `sh -c script` as `uid` (setpriv, no supplementary groups); its
/// (success, stderr).
fn as_user(uid: u32, script: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), "sh".into(), "-c".into(), script.into()])
        .output()
        .expect("setpriv");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

struct Replicated {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    mnt2: PathBuf,
    certs: PathBuf,
    peers: Vec<SocketAddr>,
    up: Option<Proc>,
    second: Option<Proc>,
    rt: tokio::runtime::Runtime,
}

impl Replicated {
    fn start(name: &str) -> Replicated {
        let dir = tempfile::Builder::new().prefix(&format!("chorus-{name}")).tempdir_in("/var/tmp").unwrap();
        let mnt = dir.path().join("mnt");
        let mnt2 = dir.path().join("mnt2");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::create_dir(&mnt2).unwrap();
        // Other users must reach the mount points (the temp folder is 0700).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let port = free_port().clamp(20000, 60000);
        let up = spawn_up(&mnt, &data, port, 3, &dir.path().join("up.log"));
        wait_until("replicated mount", Duration::from_secs(90), || is_mounted(&mnt));
        let peers: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], port + i))).collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        Replicated { certs: data.join("certs"), dir, mnt, mnt2, peers, up: Some(up), second: None, rt }
    }

    fn mount_second(&mut self, bundle: &Path) {
        let servers = self.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let args = ["mount".as_ref(), "--certs".as_ref(), bundle.as_os_str(), "--server".as_ref(), servers.as_ref(), self.mnt2.as_os_str()];
        self.second = Some(spawn("mount2", &args, &self.dir.path().join("mount2.log")));
        let mnt2 = self.mnt2.clone();
        wait_until("second mount", Duration::from_secs(30), || is_mounted(&mnt2));
    }

    fn session(&self, certs: &Path) -> Session {
        let cluster = self.rt.block_on(async { Cluster::new(certs, self.peers.clone()) }).expect("shell client");
        self.rt.block_on(async move { cluster.session(Instant::now() + Duration::from_secs(30)).await }).expect("session")
    }

    fn call(&self, session: &mut Session, request: Request) -> OpResult {
        let bytes = chorus_server::machine::encode_request(&request).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let reply = match request {
            Request::Mutate { .. } => self.rt.block_on(session.write(bytes, deadline)),
            Request::Query { .. } => self.rt.block_on(session.read(bytes, deadline)),
        }
        .expect("answered");
        chorus_server::machine::decode_result(&reply).expect("decodable")
    }

    fn log(&self) -> String {
        let mut out = String::new();
        for name in ["up.log", "mount2.log"] {
            out += &format!("--- {name} ---\n{}\n", std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default());
        }
        out
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        if let Some(mut m) = self.second.take() {
            if m.running() {
                let _ = m.term(Duration::from_secs(10));
            }
        }
        detach_unmount(&self.mnt2);
        if let Some(mut up) = self.up.take() {
            let _ = up.term(Duration::from_secs(20));
        }
        detach_unmount(&self.mnt);
    }
}

fn lookup_ino(r: OpResult) -> u64 {
    match r {
        Ok(Reply::Entry(a)) => a.ino,
        other => panic!("expected an entry, got {other:?}"),
    }
}

/// The acceptance test of finding 3 through real mounts and at the wire level.
#[test]
fn issued_certificates_squash_root_reads_check_permission_and_revocation_cuts_off() {
    if !usable_or_skip("identity", can_mount(), "needs root and /dev/fuse") {
        return;
    }
    let mut c = Replicated::start("identity");
    // As root on the cluster's own (trusted) mount: a home for uid 1000
    // with a private file, and a shared folder.
    let home = c.mnt.join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = home.join("secret");
    std::fs::write(&secret, b"alice's secret").unwrap();
    std::os::unix::fs::chown(&secret, Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A bundle for host web-1: no CA key in it.
    let bundle = c.dir.path().join("bundle-web-1");
    let said = issue(&c.certs, "web-1", &bundle, false);
    assert!(said.contains("root on that host is nobody"), "{said}");
    let mut files: Vec<String> = std::fs::read_dir(&bundle).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["ca.pem", "client.key", "client.pem"]);
    c.mount_second(&bundle);
    let secret2 = c.mnt2.join("home/secret");

    // Root on the squashed mount is nobody: it cannot read a 0600 file of
    // uid 1000, and what it creates is owned by nobody.
    let err = std::fs::read(&secret2).expect_err("squashed root read a 0600 file of another user");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}\n{}", c.log());
    std::fs::write(c.mnt2.join("home/by-squashed-root"), b"x").unwrap();
    let meta = std::fs::metadata(c.mnt.join("home/by-squashed-root")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "a file root created through a squashed mount");
    // Root on the trusted mount is root.
    assert_eq!(std::fs::read(&secret).unwrap(), b"alice's secret");

    // Through the second mount as unprivileged users: the owner reads, another user gets EACCES.
    let (ok, stderr) = as_user(1000, &format!("cat {} > /dev/null", secret2.display()));
    assert!(ok, "the owner could not read its file: {stderr}");
    let (ok, stderr) = as_user(1001, &format!("cat {}", secret2.display()));
    assert!(!ok && stderr.contains("Permission denied"), "uid 1001 read a 0600 file of uid 1000: {stderr}");

    // At the wire level, with forged callers (no kernel checks in the way).
    let home_ino = std::fs::metadata(&home).unwrap().ino();
    let secret_ino = std::fs::metadata(&secret).unwrap().ino();
    let read_secret = |caller: Caller| Request::Query { caller, query: Query::Read { ino: secret_ino, offset: 0, size: 64 } };
    let mut squashed = c.session(&bundle);
    assert_eq!(c.call(&mut squashed, read_secret(Caller::root())), Err(chorus_fs::ops::Errno(libc::EACCES)), "forged root read");
    assert_eq!(c.call(&mut squashed, read_secret(user_caller(1001))), Err(chorus_fs::ops::Errno(libc::EACCES)));
    assert!(matches!(c.call(&mut squashed, read_secret(user_caller(1000))), Ok(Reply::Data(_))), "any non-root uid may be claimed");
    let mkdir =
        Request::Mutate { caller: Caller::root(), op: Op::Mkdir { parent: home_ino, name: b"forged".to_vec(), mode: 0o755, umask: 0 } };
    let made = c.call(&mut squashed, mkdir);
    assert!(matches!(&made, Ok(Reply::Entry(a)) if a.uid == NOBODY && a.gid == NOBODY), "mkdir as forged root: {made:?}");
    let mut trusted = c.session(&c.certs);
    assert!(matches!(c.call(&mut trusted, read_secret(Caller::root())), Ok(Reply::Data(d)) if d == b"alice's secret"));
    assert_eq!(c.call(&mut trusted, read_secret(user_caller(1001))), Err(chorus_fs::ops::Errno(libc::EACCES)), "reads check permission");
    let listing =
        Request::Query { caller: user_caller(1001), query: Query::ReadDir { ino: home_ino, cookie: 0, max_entries: 8, plus: false } };
    assert!(matches!(c.call(&mut trusted, listing), Ok(Reply::Dir(_))), "home is 0777");
    assert_eq!(
        lookup_ino(c.call(
            &mut trusted,
            Request::Query { caller: user_caller(1001), query: Query::Lookup { parent: ROOT_INO, name: b"home".to_vec() } }
        )),
        home_ino
    );

    // A bundle issued with --trust-root may act as root.
    let admin_bundle = c.dir.path().join("bundle-admin-box");
    issue(&c.certs, "admin-box", &admin_bundle, true);
    let mut root_ok = c.session(&admin_bundle);
    assert!(matches!(c.call(&mut root_ok, read_secret(Caller::root())), Ok(Reply::Data(_))));

    // Revocation: the servers notice the list within a second or so; the
    // second mount's connections are cut at their next request and its new
    // handshakes are refused; a new mount with the bundle says why.
    let said = run_ok(Command::new(chorus_bin()).args(["cert", "revoke", "--certs"]).arg(&c.certs).args(["--name", "web-1"]));
    assert!(said.contains("revoked"), "{said}");
    let list = run_ok(Command::new(chorus_bin()).args(["cert", "list", "--certs"]).arg(&c.certs));
    assert!(list.lines().any(|l| l.starts_with("web-1") && l.contains("revoked")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("admin-box") && l.contains("valid") && l.contains("root trusted")), "{list}");
    let started = Instant::now();
    loop {
        let probe = c.session_result(&bundle);
        if probe.is_err() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "a revoked certificate still opens sessions");
        std::thread::sleep(Duration::from_millis(200));
    }
    let Err(wire_err) = c.session_result(&bundle) else { panic!("a revoked certificate opened a session") };
    eprintln!("a revoked certificate at the wire level: {wire_err}");
    // The squashed session of before is cut off too.
    let cut =
        c.rt.block_on(squashed.read(
            chorus_server::machine::encode_request(&read_secret(user_caller(1000))).unwrap(),
            Instant::now() + Duration::from_secs(5),
        ));
    assert!(cut.is_err(), "a session over a revoked certificate was still answered: {cut:?}");
    // Others are unaffected.
    assert!(matches!(c.call(&mut root_ok, read_secret(Caller::root())), Ok(Reply::Data(_))));
    assert_eq!(std::fs::read(&secret).unwrap(), b"alice's secret");
    let third = c.dir.path().join("mnt3");
    std::fs::create_dir(&third).unwrap();
    let servers = c.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let out = Command::new(chorus_bin())
        .args(["mount", "--certs"])
        .arg(&bundle)
        .args(["--server", &servers])
        .arg(&third)
        .output()
        .expect("spawn mount");
    detach_unmount(&third);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("revoked"), "a mount with a revoked certificate: {stderr}");
}

impl Replicated {
    fn session_result(&self, certs: &Path) -> Result<Session, String> {
        let cluster = self.rt.block_on(async { Cluster::new(certs, self.peers.clone()) }).map_err(|e| e.to_string())?;
        self.rt.block_on(async move { cluster.session(Instant::now() + Duration::from_secs(3)).await }).map_err(|e| e.to_string())
    }
}

/// Single-replica mode (`chorus server`): the same mapping at the RPC level,
/// and revocation of a connection that is already open.
#[test]
fn single_replica_server_squashes_root_and_revokes() {
    let mut cluster = common::Cluster::new();
    cluster.start_server();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let bundle = cluster.dir.path().join("bundle-web-2");
    issue(&cluster.certs, "web-2", &bundle, false);
    let addr = cluster.addr;
    let connect = |dir: &Path| {
        let id = certs::load_identity(dir, Role::Client).unwrap();
        rt.block_on(async {
            let ep =
                chorus_wire::endpoint::client(chorus_wire::tls::client_config(&id).unwrap(), chorus_wire::endpoint::client_bind_for(addr))
                    .unwrap();
            chorus_wire::RpcClient::connect(&ep, addr).await
        })
    };
    let call = |client: &chorus_wire::RpcClient, req: Request| -> Result<OpResult, chorus_wire::WireError> {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.call::<Request, OpResult>(&req)).await.expect("call timed out")
        })
    };
    let trusted = connect(&cluster.certs).unwrap();
    let squashed = connect(&bundle).unwrap();
    let mkdir_in = |parent: u64, name: &[u8], mode: u32| Request::Mutate {
        caller: Caller::root(),
        op: Op::Mkdir { parent, name: name.to_vec(), mode, umask: 0 },
    };
    let mkdir = |name: &[u8]| mkdir_in(ROOT_INO, name, 0o700);
    // Squashed root is nobody: "/" (0755, root's) is not writable for it.
    assert_eq!(call(&squashed, mkdir(b"denied")).unwrap(), Err(chorus_fs::ops::Errno(libc::EACCES)));
    let open_dir = match call(&trusted, mkdir_in(ROOT_INO, b"tmp", 0o777)).unwrap() {
        Ok(Reply::Entry(a)) => a.ino,
        other => panic!("mkdir tmp: {other:?}"),
    };
    let by_trusted = call(&trusted, mkdir(b"root-dir")).unwrap();
    assert!(matches!(&by_trusted, Ok(Reply::Entry(a)) if a.uid == 0), "{by_trusted:?}");
    let root_dir = match by_trusted {
        Ok(Reply::Entry(a)) => a.ino,
        _ => unreachable!(),
    };
    let by_squashed = call(&squashed, mkdir_in(open_dir, b"nobody-dir", 0o755)).unwrap();
    assert!(matches!(&by_squashed, Ok(Reply::Entry(a)) if a.uid == NOBODY), "{by_squashed:?}");
    let list = Request::Query { caller: Caller::root(), query: Query::ReadDir { ino: root_dir, cookie: 0, max_entries: 8, plus: false } };
    assert_eq!(call(&squashed, list.clone()).unwrap(), Err(chorus_fs::ops::Errno(libc::EACCES)), "squashed root lists a 0700 dir of root");
    assert!(matches!(call(&trusted, list.clone()).unwrap(), Ok(Reply::Dir(_))));

    // Revoke the open connection's certificate: its next request closes it.
    let fp = certs::fingerprint(certs::load_identity(&bundle, Role::Client).unwrap().leaf_der());
    run_ok(Command::new(chorus_bin()).args(["cert", "revoke", "--certs"]).arg(&cluster.certs).args(["--fingerprint", &fp]));
    let started = Instant::now();
    loop {
        match call(&squashed, list.clone()) {
            Ok(Err(chorus_fs::ops::Errno(e))) if e == libc::EACCES && started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(other) => panic!("a revoked connection got {other:?} after {:?}", started.elapsed()),
            Err(_) => break,
        }
    }
    // A new connection with it fails in the handshake (quinn reports the
    // refusal at the first call at the latest).
    let new = connect(&bundle);
    let err = match new {
        Err(e) => e,
        Ok(client) => call(&client, list.clone()).expect_err("a revoked certificate was served"),
    };
    assert!(err.to_string().contains("revoked"), "{err}");
    assert!(matches!(call(&trusted, list).unwrap(), Ok(Reply::Dir(_))), "the trusted connection is unaffected");
    drop(cluster);
}

/// An expired certificate is refused by `chorus mount` itself, with the date.
#[test]
fn mount_with_an_expired_certificate_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    init_certs(&certs_dir);
    let bundle = dir.path().join("old");
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let opts = certs::IssueOptions { host: "old".into(), trust_root: false, not_before: now - day * 3, not_after: now - day };
    certs::issue_client(&certs_dir, &bundle, &opts).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(chorus_bin())
        .args(["mount", "--certs"])
        .arg(&bundle)
        .args(["--server", &format!("127.0.0.1:{}", free_port())])
        .arg(&mnt)
        .output()
        .unwrap();
    detach_unmount(&mnt);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("expired on") && stderr.contains(&certs::day(now - day)), "{stderr}");
}
