//! Real-process test of the replicated mount: `chorus up --replicas 3`
//! (three `chorus server` processes with the replication core, one FUSE
//! mount), the leader killed with SIGKILL during a stream of fsync'd
//! creates; then the killed replica is restarted (without
//! --init-new-cluster) and must catch up: all three replicas report the same
//! commit point and state digest, and `chorus status` shows them all up.
//! Bounded in time; kills only processes it started, by PID.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The replica that most recently reported itself Normal as leader, from the
/// replicas' logs: (timestamp, leader id).
fn current_leader(data: &Path, replicas: usize) -> Option<usize> {
    let mut best: Option<(String, usize)> = None;
    for i in 0..replicas {
        let log = std::fs::read_to_string(data.join(format!("replica-{i}/server.log"))).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("status=Normal")) {
            let ts = line.split_whitespace().next().unwrap_or("").to_string();
            let Some(leader) = line.split("leader=").nth(1).and_then(|s| s.split_whitespace().next()?.parse().ok()) else {
                continue;
            };
            if best.as_ref().is_none_or(|(t, _)| ts > *t) {
                best = Some((ts, leader));
            }
        }
    }
    best.map(|(_, l)| l)
}


/// On drop (also when the test fails): SIGKILLs, by PID, any replica
/// process still serving one of this test's replica folders (the children
/// of a `chorus up` that was itself killed), and detaches the mount.
struct Cleanup {
    data: PathBuf,
    mnt: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for i in 0..3 {
            if let Some(pid) = pid_of_replica(&self.data.join(format!("replica-{i}"))) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        detach_unmount(&self.mnt);
    }
}


fn content(i: usize) -> Vec<u8> {
    format!("replicated write number {i}\n").repeat(1 + i % 7).into_bytes()
}

#[test]
fn leader_killed_during_fsynced_creates_loses_nothing() {
    let dir = tempfile::Builder::new().prefix("chorus-repl").tempdir_in("/var/tmp").unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data: PathBuf = dir.path().join("data");
    let port_n = free_port().min(60000);
    let port = port_n.to_string();
    let _cleanup = Cleanup { data: data.clone(), mnt: mnt.clone() };
    let log = dir.path().join("up.log");
    let args = [
        "up".as_ref(),
        mnt.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--port".as_ref(),
        port.as_ref(),
        "--replicas".as_ref(),
        "3".as_ref(),
    ];
    let mut up = spawn("up", &args, &log);
    wait_until("replicated mount", Duration::from_secs(90), || is_mounted(&mnt));
    let stream = mnt.join("stream");
    std::fs::create_dir(&stream).unwrap();

    let acked: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, stream) = (acked.clone(), stop.clone(), stream.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut errors = 0;
            for i in 0.. {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let r = (|| -> std::io::Result<()> {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(stream.join(format!("f{i}")))?;
                    f.write_all(&content(i))?;
                    f.sync_all()
                })();
                match r {
                    Ok(()) => acked.lock().unwrap().push((i, Instant::now())),
                    Err(e) => {
                        errors += 1;
                        eprintln!("write {i} failed: {e}");
                    }
                }
            }
            errors
        })
    };
    wait_until("100 acknowledged creates", Duration::from_secs(60), || acked.lock().unwrap().len() >= 100);
    let leader = current_leader(&data, 3).expect("a leader in the logs");
    let leader_dir = data.join(format!("replica-{leader}"));
    let pid = pid_of_replica(&leader_dir).expect("leader process");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed_at = Instant::now();
    let acked_at_kill = acked.lock().unwrap().len();
    wait_until("100 more creates after the kill", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= acked_at_kill + 100
    });
    stop.store(true, Ordering::SeqCst);
    let errors = writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    // The first acknowledgement after the kill: how long the mount stalled.
    let resumed = acked.iter().find(|(_, t)| *t > killed_at).map(|(_, t)| t.duration_since(killed_at));
    eprintln!("leader {leader} killed; first create acknowledged {resumed:?} later");
    assert_eq!(errors, 0, "a create failed across the failover (FUSE must not see a transient leader change)");
    for (i, _) in &acked {
        let got = std::fs::read(stream.join(format!("f{i}")))
            .unwrap_or_else(|e| panic!("acknowledged file f{i} missing after failover: {e}"));
        assert!(got == content(*i), "acknowledged file f{i} has wrong content after failover");
    }

    // Restart the killed replica as our own process, WITHOUT
    // --init-new-cluster: it recovers from its log and from the group. The
    // state stays small (a few hundred tiny files), far below the 16 MiB
    // state-transfer frame limit.
    let certs = data.join("certs");
    let peers: Vec<SocketAddr> = (0..3u16).map(|i| SocketAddr::from(([127, 0, 0, 1], port_n + i))).collect();
    let peer_list = peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let leader_id = leader.to_string();
    let restarted_log = dir.path().join("restarted.log");
    let mut restarted = spawn(
        "restarted replica",
        &[
            "server".as_ref(),
            "--certs".as_ref(),
            certs.as_os_str(),
            "--data".as_ref(),
            leader_dir.as_os_str(),
            "--id".as_ref(),
            leader_id.as_ref(),
            "--peers".as_ref(),
            peer_list.as_ref(),
        ],
        &restarted_log,
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let cluster = rt
        .block_on(async { chorus_replication_shell::client::Cluster::new(&certs, peers.clone()) })
        .expect("shell client");
    let restarted_at = Instant::now();
    let mut last;
    let converged = loop {
        assert!(restarted.running(), "restarted replica exited: {}", std::fs::read_to_string(&restarted_log).unwrap_or_default());
        last = statuses(&rt, &cluster);
        let brief: Vec<_> = last.iter().map(|s| s.as_ref().map(|s| (s.status.clone(), s.view, s.commit_op))).collect();
        eprintln!("after {:?}: (status, view, commit_op) = {brief:?}", restarted_at.elapsed());
        let all: Vec<_> = last.iter().flatten().collect();
        if all.len() == 3
            && all.iter().all(|s| s.status == "normal")
            && all.iter().all(|s| (s.view, s.commit_op, s.digest) == (all[0].view, all[0].commit_op, all[0].digest))
        {
            break true;
        }
        if restarted_at.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        converged,
        "replicas did not reach the same commit point and digest within 60 s of restarting replica {leader}: {last:#?}\n{}",
        std::fs::read_to_string(&restarted_log).unwrap_or_default()
    );
    eprintln!(
        "replica {leader} restarted; all three at commit_op {} digest {:016x} after {:?}",
        last[0].as_ref().unwrap().commit_op,
        last[0].as_ref().unwrap().digest,
        restarted_at.elapsed()
    );
    drop(cluster);
    drop(rt);
    let report = run_ok(std::process::Command::new(chorus_bin()).args(["status", "--port", &port, "--data"]).arg(&data));
    eprintln!("{report}");
    for p in &peers {
        let line = report
            .lines()
            .find(|l| l.contains(&p.to_string()) && l.contains('┆')) // a table row, not the headline
            .unwrap_or_else(|| panic!("`chorus status` does not name {p}:\n{report}"));
        assert!(
            line.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == "up"),
            "`chorus status` does not show {p} up:\n{report}"
        );
    }
    let st = restarted.term(Duration::from_secs(30));
    assert!(st.success(), "restarted replica exited with {st}");
    let st = up.term(Duration::from_secs(30));
    assert!(st.success(), "chorus up exited with {st}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(!is_mounted(&mnt));
    for i in 0..3 {
        assert!(pid_of_replica(&data.join(format!("replica-{i}"))).is_none(), "replica {i} still running after up stopped");
    }
}
