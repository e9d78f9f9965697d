//! Real-process hostile-client tests (issue 10): a process holding the
//! cluster's client certificate attacks a `chorus up --replicas 3` cluster
//! at the wire level, through the shell client the mounts use. After each
//! attack the cluster still serves, every replica's digest (store and
//! session table) is equal, and the victim's data and session are intact.
//!
//! Bounded: every wait has a deadline; on drop the mount is removed and
//! `chorus up` (which stops its replicas) is killed by PID.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_fs::ops::{Caller, Op, OpResult, Reply, Request, ROOT_INO};
use chorus_replication_shell::client::{Cluster, Session};
use common::*;

const REPLICAS: u16 = 3;

struct Up {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    up: Option<Proc>,
    rt: tokio::runtime::Runtime,
    cluster: Arc<Cluster>,
}

impl Up {
    fn start(name: &str) -> Up {
        let dir = tempfile::Builder::new().prefix(&format!("chorus-{name}")).tempdir_in("/var/tmp").unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let data = dir.path().join("data");
        let port = free_port().clamp(20000, 60000);
        let up = spawn_up(&mnt, &data, port, REPLICAS as usize, &dir.path().join("up.log"));
        wait_until("replicated mount", Duration::from_secs(90), || is_mounted(&mnt));
        let peers: Vec<SocketAddr> = (0..REPLICAS).map(|i| SocketAddr::from(([127, 0, 0, 1], port + i))).collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let certs = data.join("certs");
        let cluster = rt.block_on(async { Cluster::new(&certs, peers) }).expect("shell client");
        Up { dir, mnt, up: Some(up), rt, cluster }
    }

    fn session(&self) -> Session {
        let c = self.cluster.clone();
        self.rt.block_on(async move { c.session(Instant::now() + Duration::from_secs(30)).await }).expect("session")
    }

    fn mutate(&self, session: &mut Session, op: Op) -> OpResult {
        let bytes = chorus_server::machine::encode_request(&Request::Mutate { caller: Caller::root(), op }).unwrap();
        let reply = self.rt.block_on(session.write(bytes, Instant::now() + Duration::from_secs(30))).expect("committed");
        chorus_server::machine::decode_result(&reply).expect("decodable")
    }

    /// All replicas normal in one view with equal commit point and digest.
    fn wait_converged(&self, what: &str) {
        let start = Instant::now();
        loop {
            let s = statuses(&self.rt, &self.cluster);
            let all: Vec<_> = s.iter().flatten().collect();
            if all.len() == s.len()
                && all.iter().all(|x| x.status == "normal" && x.commit_op == x.op && x.digest_op == x.applied_op)
                && all.iter().all(|x| (x.view, x.commit_op, x.digest) == (all[0].view, all[0].commit_op, all[0].digest))
            {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{what}: replicas did not converge: {s:#?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        let mut out = std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default();
        for i in 0..REPLICAS {
            let p = self.dir.path().join(format!("data/replica-{i}/server.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(3000)..];
            out += &format!("\n--- replica {i} ---\n{tail}");
        }
        out
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut up) = self.up.take() {
            let _ = up.term(Duration::from_secs(20));
        }
        detach_unmount(&self.mnt);
    }
}

fn entry_ino(r: OpResult) -> u64 {
    match r {
        Ok(Reply::Entry(a)) => a.ino,
        other => panic!("expected an entry, got {other:?}"),
    }
}

/// Issue 10, finding 1, at the wire level: a rename into a directory that
/// was removed while a handle kept it alive used to panic `apply` on every
/// replica (and at every replay): the cluster was down for good. Now it is
/// an error, the cluster serves on, and all replicas agree.
#[test]
fn poison_rename_into_a_removed_directory_is_an_error_not_a_crash() {
    if !usable_or_skip("hostile", can_mount(), "needs root and /dev/fuse") {
        return;
    }
    let up = Up::start("hostile-poison");
    let mut s = up.session();
    let a = entry_ino(up.mutate(&mut s, Op::Mkdir { parent: ROOT_INO, name: b"a".to_vec(), mode: 0o755, umask: 0 }));
    let b = entry_ino(up.mutate(&mut s, Op::Mkdir { parent: a, name: b"b".to_vec(), mode: 0o755, umask: 0 }));
    let opened = up.mutate(&mut s, Op::Open { ino: b, flags: libc::O_RDONLY | libc::O_DIRECTORY });
    assert!(matches!(opened, Ok(Reply::Opened { .. })), "open: {opened:?}");
    assert_eq!(up.mutate(&mut s, Op::Rmdir { parent: a, name: b"b".to_vec() }), Ok(Reply::Ok));
    assert_eq!(up.mutate(&mut s, Op::Rmdir { parent: ROOT_INO, name: b"a".to_vec() }), Ok(Reply::Ok));
    entry_ino(up.mutate(&mut s, Op::Mkdir { parent: ROOT_INO, name: b"c".to_vec(), mode: 0o755, umask: 0 }));
    let poison = up.mutate(&mut s, Op::Rename { parent: ROOT_INO, name: b"c".to_vec(), newparent: b, newname: b"c".to_vec(), flags: 0 });
    assert!(poison.is_err(), "the rename into a removed directory succeeded: {poison:?}");
    eprintln!("poison rename answered {poison:?}");
    // The cluster still serves, through the mount too, and agrees.
    std::fs::write(up.mnt.join("after"), b"still here").unwrap();
    assert_eq!(std::fs::read(up.mnt.join("after")).unwrap(), b"still here");
    up.wait_converged("after the poison rename");
}

/// Issue 12 finding 3 / issue 10 finding 4, through the real client: a flood
/// of registrations by another client neither evicts a session in use nor
/// lets its retried append run twice.
#[test]
fn a_registration_flood_evicts_no_session_in_use() {
    if !usable_or_skip("hostile", can_mount(), "needs root and /dev/fuse") {
        return;
    }
    let up = Up::start("hostile-flood");
    let mut victim = up.session();
    let created = up.mutate(
        &mut victim,
        Op::Create { parent: ROOT_INO, name: b"log".to_vec(), mode: 0o644, umask: 0, flags: libc::O_RDWR, excl: true },
    );
    assert!(matches!(created, Ok(Reply::Created { .. })), "create: {created:?}");
    // More registrations than the session table holds (10,000), from
    // "other clients", in batches of 1024 (one RPC each, no retries). Before
    // R4b the oldest sessions were evicted to make room, the victim's among
    // them; now the flooder's certificate also has a registration quota
    // (tests/hostile_bounds.rs), so most of these are answered Busy.
    const FLOOD: usize = 10_050;
    let c = up.cluster.clone();
    let started = Instant::now();
    let (registered, refused) = up.rt.block_on(async move {
        use chorus_replication::{Operation, Outcome, Request};
        use chorus_replication_shell::api::{NodeRequest, NodeResponse};
        let (mut ok, mut refused) = (0usize, 0usize);
        let mut nonce = started.elapsed().as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        for chunk in (0..FLOOD).collect::<Vec<_>>().chunks(1024) {
            let requests: Vec<Request> = chunk
                .iter()
                .map(|_| {
                    nonce = nonce.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    Request { client: 0xf100d, session: 0, seq: nonce, low_water: 0, epoch: 0, operation: Operation::Register }
                })
                .collect();
            let mut answered = None;
            for replica in 0..c.replica_count() {
                if let Some(NodeResponse::Batch(replies)) =
                    c.call_within(replica, &NodeRequest::Batch(requests.clone()), Duration::from_secs(5)).await
                {
                    if replies.iter().flatten().any(|r| r.outcome != Outcome::NotLeader) {
                        answered = Some(replies);
                        break;
                    }
                }
            }
            let replies = answered.expect("the leader answered a batch of registrations");
            let opened = replies.iter().flatten().filter(|r| matches!(r.outcome, Outcome::Registered(_))).count();
            ok += opened;
            refused += chunk.len() - opened;
        }
        (ok, refused)
    });
    eprintln!("flood: {registered} of {FLOOD} registrations opened a session, {refused} refused, in {:?}", started.elapsed());
    assert!(registered < FLOOD, "every registration succeeded: the table evicted sessions in use");
    // The victim's session is intact: its next request runs normally.
    let r = up.mutate(&mut victim, Op::Mkdir { parent: ROOT_INO, name: b"victim-dir".to_vec(), mode: 0o755, umask: 0 });
    assert!(matches!(r, Ok(Reply::Entry(_))), "the victim's session broke: {r:?}");
    // The mount (which opened its sessions at mount time) still works.
    let seen = std::fs::metadata(up.mnt.join("victim-dir"));
    assert!(seen.as_ref().is_ok_and(|m| m.is_dir()), "the mount does not see the victim's directory: {seen:?}");
    up.wait_converged("after the registration flood");
}
