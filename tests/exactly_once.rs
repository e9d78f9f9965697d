//! Real-process test of exactly-once execution across a failover: a mutation
//! whose reply is lost while the leader dies is retried by the mount's
//! client (same session and seq) and takes effect exactly once; the retry
//! returns success (a retried O_EXCL create does not see EEXIST, a retried
//! unlink does not see ENOENT, an append is not applied twice).
//!
//! How: three `chorus server` replicas and one `chorus mount`, all started
//! here. For each operation (create O_EXCL, mkdir, rename, unlink, append +
//! fsync) the three replicas are restarted with the test hook
//! `CHORUS_FAULT_DROP_REPLIES=1` (replication/shell/src/driver.rs; compiled in
//! only with the cargo feature `fault-injection`, which this package's
//! dev-dependency enables for test builds): whichever
//! replica leads commits and applies the next write but does not send its
//! reply. The test issues the operation through the mount in a thread, waits
//! until a replica's log says it dropped the reply (so the write is
//! committed and unanswered), SIGKILLs that replica, and requires the
//! operation to return success and to have taken effect once. (The new
//! leader is armed too, so the retry's cached reply is lost once more before
//! one gets through: two lost replies per operation.) At the end the killed
//! replica is restarted without the hook and all three must reach the same
//! commit point and state digest. Bounded in time; kills only processes it
//! started, by PID.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const DROP_LINE: &str = "fault injection: dropped a write reply";
const OP_TIMEOUT: Duration = Duration::from_secs(45);

/// The three replica processes, restarted as a group or one at a time.
struct Replicas {
    dir: PathBuf,
    certs: PathBuf,
    peers: Vec<SocketAddr>,
    procs: Vec<Option<Proc>>,
    round: usize,
}

impl Replicas {
    fn data(&self, i: usize) -> PathBuf {
        self.dir.join(format!("replica-{i}"))
    }

    fn log(&self, i: usize, round: usize) -> PathBuf {
        self.dir.join(format!("replica-{i}.round-{round}.log"))
    }

    fn peer_list(&self) -> String {
        self.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Starts replica `i` (logging to this round's file), with the reply-drop
    /// hook if `drop_replies` is given.
    fn start(&mut self, i: usize, init_new_cluster: bool, drop_replies: Option<&str>) {
        let (data, peers, id) = (self.data(i), self.peer_list(), i.to_string());
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "server".as_ref(),
            "--certs".as_ref(),
            self.certs.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            "--id".as_ref(),
            id.as_ref(),
            "--peers".as_ref(),
            peers.as_ref(),
        ];
        if init_new_cluster {
            args.push("--init-new-cluster".as_ref());
        }
        let env: Vec<(&str, &str)> = drop_replies.map(|n| ("CHORUS_FAULT_DROP_REPLIES", n)).into_iter().collect();
        let p = spawn_env(&format!("replica {i}"), &args, &self.log(i, self.round), &env);
        self.procs[i] = Some(p);
    }

    /// SIGTERM to every running replica, each waited for (bounded).
    fn stop_all(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            if p.running() {
                p.term(Duration::from_secs(30));
            }
        }
        for p in &mut self.procs {
            *p = None;
        }
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.kill9();
        }
    }

    /// How many replies each replica dropped in the current round (from its log).
    fn drops(&self) -> Vec<usize> {
        (0..self.peers.len())
            .map(|i| std::fs::read_to_string(self.log(i, self.round)).unwrap_or_default().matches(DROP_LINE).count())
            .collect()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for i in 0..self.peers.len() {
            let log = std::fs::read_to_string(self.log(i, self.round)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            s += &format!("--- replica {i}, round {} (last 30 lines) ---\n", self.round);
            for l in tail.into_iter().rev() {
                s += l;
                s += "\n";
            }
        }
        s
    }
}

/// Detaches the mount on drop (also when the test fails); the processes are
/// SIGKILLed by their own `Proc` drops.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        detach_unmount(&self.0);
    }
}

/// Waits (bounded) until all replicas answer, are normal and in one view;
/// with `converged`, also at the same commit point and digest.
fn wait_for_group(
    rt: &tokio::runtime::Runtime,
    cluster: &Arc<chorus_replication_shell::client::Cluster>,
    replicas: &Replicas,
    converged: bool,
    timeout: Duration,
) -> chorus_replication_shell::api::NodeStatus {
    let start = Instant::now();
    loop {
        let last = statuses(rt, cluster);
        let all: Vec<_> = last.iter().flatten().collect();
        if all.len() == last.len()
            && all.iter().all(|s| s.status == "normal" && s.view == all[0].view)
            && (!converged
                || all.iter().all(|s| (s.commit_op, s.digest) == (all[0].commit_op, all[0].digest) && s.digest_op == s.applied_op))
        {
            return all[0].clone();
        }
        if start.elapsed() > timeout {
            let brief: Vec<_> = last.iter().map(|s| s.as_ref().map(|s| (s.status.clone(), s.view, s.commit_op, s.digest))).collect();
            let fresh = std::process::Command::new(chorus_bin())
                .args(["status", "--certs"])
                .arg(&replicas.certs)
                .args(["--server", &replicas.peer_list()])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
                .unwrap_or_default();
            panic!(
                "replicas not {} within {timeout:?}: (status, view, commit_op, digest) = {brief:?}\n`chorus status`:\n{fresh}\n{}",
                if converged { "converged" } else { "normal in one view" },
                replicas.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One operation under test: runs through the mount, then checks its effect.
struct Case {
    name: &'static str,
    run: Box<dyn FnOnce() -> std::io::Result<()> + Send>,
    check: Box<dyn FnOnce()>,
}

#[test]
#[allow(clippy::assertions_on_constants)] // the point: fail loudly in a build without the hooks
fn mutations_whose_reply_is_lost_while_the_leader_dies_take_effect_exactly_once() {
    assert!(
        chorus_replication_shell::driver::FAULT_INJECTION_BUILT,
        "this test needs the fault hooks: chorus-replication-shell's `fault-injection` feature (a dev-dependency feature of the root package)"
    );
    let started = Instant::now();
    let mut dir = tempfile::Builder::new().prefix("chorus-once").tempdir_in("/var/tmp").unwrap();
    // CHORUS_KEEP_TEST_DIR=1 keeps the replicas' logs for a post-mortem.
    dir.disable_cleanup(std::env::var_os("CHORUS_KEEP_TEST_DIR").is_some());
    eprintln!("test folder {}", dir.path().display());
    let certs = dir.path().join("certs");
    init_certs(&certs);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 3 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let peers: Vec<SocketAddr> = ports.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
    let mut replicas =
        Replicas { dir: dir.path().to_path_buf(), certs: certs.clone(), peers: peers.clone(), procs: vec![None, None, None], round: 0 };
    for i in 0..3 {
        replicas.start(i, true, None);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let cluster = rt.block_on(async { chorus_replication_shell::client::Cluster::new(&certs, peers.clone()) }).expect("shell client");
    wait_for_group(&rt, &cluster, &replicas, false, Duration::from_secs(60));

    let _unmount = Unmount(mnt.clone());
    let server_list = replicas.peer_list();
    let mount_log = dir.path().join("mount.log");
    let mut mount = spawn(
        "mount",
        // Keepalives (writes) would take the reply the replicas are armed to
        // drop: one well inside the session timeout but rarer than a case.
        &[
            "mount".as_ref(),
            "--certs".as_ref(),
            certs.as_os_str(),
            "--server".as_ref(),
            server_list.as_ref(),
            "--keepalive-ms".as_ref(),
            "100000".as_ref(),
            mnt.as_os_str(),
        ],
        &mount_log,
    );
    wait_until("replicated mount", Duration::from_secs(60), || is_mounted(&mnt));

    // Preconditions, made before any reply is dropped.
    let root = mnt.join("once");
    std::fs::create_dir(&root).unwrap();
    let write_synced = |p: &Path, data: &[u8]| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(p).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    };
    write_synced(&root.join("rename-src"), b"renamed content\n");
    write_synced(&root.join("unlink-me"), b"doomed\n");
    write_synced(&root.join("append"), b"base line\n");
    // Opened now so the lost reply is the write's, not the open's.
    let append_fd = std::fs::OpenOptions::new().append(true).open(root.join("append")).unwrap();

    let r = root.clone();
    let cases: Vec<Case> = vec![
        Case {
            name: "create O_EXCL",
            run: Box::new({
                let r = r.clone();
                move || std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(r.join("created")).map(drop)
            }),
            check: Box::new({
                let r = r.clone();
                move || {
                    let m = std::fs::metadata(r.join("created")).expect("created file missing");
                    assert!(m.is_file() && m.len() == 0, "created file: {m:?}");
                    let again = std::fs::OpenOptions::new().write(true).create_new(true).open(r.join("created"));
                    assert_eq!(again.err().and_then(|e| e.raw_os_error()), Some(libc::EEXIST), "a second O_EXCL create must fail");
                }
            }),
        },
        Case {
            name: "mkdir",
            run: Box::new({
                let r = r.clone();
                move || std::fs::create_dir(r.join("made"))
            }),
            check: Box::new({
                let r = r.clone();
                move || {
                    assert!(std::fs::metadata(r.join("made")).expect("made dir missing").is_dir());
                    assert_eq!(std::fs::read_dir(r.join("made")).unwrap().count(), 0);
                }
            }),
        },
        Case {
            name: "rename",
            run: Box::new({
                let r = r.clone();
                move || std::fs::rename(r.join("rename-src"), r.join("rename-dst"))
            }),
            check: Box::new({
                let r = r.clone();
                move || {
                    assert!(!r.join("rename-src").exists(), "rename source still there");
                    assert_eq!(std::fs::read(r.join("rename-dst")).expect("rename target missing"), b"renamed content\n");
                }
            }),
        },
        Case {
            name: "unlink",
            run: Box::new({
                let r = r.clone();
                move || std::fs::remove_file(r.join("unlink-me"))
            }),
            check: Box::new({
                let r = r.clone();
                move || assert!(!r.join("unlink-me").exists(), "unlinked file still there")
            }),
        },
        Case {
            name: "append + fsync",
            run: Box::new(move || {
                let mut f = append_fd;
                f.write_all(b"appended once\n")?;
                f.sync_all()
            }),
            check: Box::new({
                let r = r.clone();
                move || {
                    let got = std::fs::read(r.join("append")).expect("append file missing");
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        "base line\nappended once\n",
                        "the appended bytes must be there exactly once"
                    );
                }
            }),
        },
    ];

    let mut killed = None;
    for case in cases {
        // Restart the whole group with the hook armed on every replica, so
        // whichever leads loses the reply to the next write. The kernel sends
        // some requests in the background (the RELEASE after a close): let
        // them finish first, and start over if one still took the drop.
        let mut attempt = 0;
        let before = loop {
            std::thread::sleep(Duration::from_millis(500));
            replicas.stop_all();
            replicas.round += 1;
            for i in 0..3 {
                replicas.start(i, false, Some("1"));
            }
            wait_for_group(&rt, &cluster, &replicas, false, Duration::from_secs(60));
            assert!(mount.running(), "mount exited: {}", std::fs::read_to_string(&mount_log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(300));
            let before = replicas.drops();
            if before.iter().all(|&n| n == 0) {
                break before;
            }
            attempt += 1;
            eprintln!("{}: a background write took the dropped reply ({before:?}); arming again", case.name);
            assert!(attempt < 3, "{}: background writes keep taking the dropped reply", case.name);
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let run = case.run;
        let op_started = Instant::now();
        std::thread::spawn(move || {
            let _ = tx.send(run());
        });
        let mut leader = None;
        wait_until(&format!("a replica to drop the reply to {}", case.name), Duration::from_secs(30), || {
            leader = replicas.drops().iter().zip(&before).position(|(now, was)| now > was);
            leader.is_some()
        });
        let leader = leader.unwrap();
        // Committed and applied (the reply exists), unanswered: kill -9 the leader.
        replicas.kill9(leader);
        killed = Some(leader);
        let result = rx
            .recv_timeout(OP_TIMEOUT)
            .unwrap_or_else(|_| panic!("{} did not return within {OP_TIMEOUT:?} of the leader's death\n{}", case.name, replicas.logs()));
        let took = op_started.elapsed();
        if let Err(e) = &result {
            panic!(
                "{}: retried after a lost reply and the leader's death, it failed with {e} (errno {:?}); it must succeed exactly once\n{}",
                case.name,
                e.raw_os_error(),
                replicas.logs()
            );
        }
        eprintln!("{}: reply dropped by leader {leader}, which was killed; the retry succeeded after {took:?}", case.name);
        (case.check)();
    }

    // Restart the last killed replica without the hook; all three converge.
    let killed = killed.unwrap();
    replicas.start(killed, false, None);
    let st = wait_for_group(&rt, &cluster, &replicas, true, Duration::from_secs(60));
    eprintln!("replica {killed} restarted; all three at commit_op {} digest {:016x}", st.commit_op, st.digest);
    drop(cluster);
    drop(rt);
    let report = run_ok(std::process::Command::new(chorus_bin()).args(["status", "--certs"]).arg(&certs).args(["--server", &server_list]));
    eprintln!("{report}");

    let st = mount.term(Duration::from_secs(30));
    assert!(st.success(), "mount exited with {st}: {}", std::fs::read_to_string(&mount_log).unwrap_or_default());
    replicas.stop_all();
    eprintln!("exactly_once: done in {:?}", started.elapsed());
}
