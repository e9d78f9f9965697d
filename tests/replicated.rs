//! Real-process test of the replicated mount: `chorus up --replicas 3`
//! (three `chorus server` processes with the replication core, one FUSE
//! mount), the leader killed with SIGKILL during a stream of fsync'd
//! creates. Bounded in time; kills only processes it started, by PID.

mod common;

use std::io::Write;
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

/// PID of the `chorus server` process serving `replica_dir`.
fn pid_of_replica(replica_dir: &Path) -> Option<i32> {
    let needle = replica_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "server") && args.iter().any(|a| *a == needle) {
            return Some(pid);
        }
    }
    None
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
    let port = free_port().min(60000).to_string();
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
    let st = up.term(Duration::from_secs(30));
    assert!(st.success(), "chorus up exited with {st}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(!is_mounted(&mnt));
    for i in 0..3 {
        assert!(pid_of_replica(&data.join(format!("replica-{i}"))).is_none(), "replica {i} still running after up stopped");
    }
}
