//! Real-process tests of one replica: `chorus server` and `chorus mount` as
//! child processes, a kernel FUSE mount, kill -9, restart. Each test is
//! bounded by explicit timeouts and cleans up what it started.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn content(i: usize) -> Vec<u8> {
    // Distinct, size-varying content so a lost or torn write cannot pass.
    let len = 1000 + (i * 7919) % 70000;
    (0..len).map(|j| ((i * 31 + j * 7) % 251) as u8).collect()
}

/// Kill -9 the server in the middle of a stream of fsync'd writes, restart
/// it: the store opens and every write whose fsync returned is there.
#[test]
fn kill9_mid_write_stream_keeps_fsynced_writes() {
    let mut c = Cluster::new();
    c.start_server();
    c.start_mount();
    let dir = c.mnt.join("stream");
    std::fs::create_dir(&dir).unwrap();

    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        let dir = dir.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            for i in 0.. {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let r = (|| -> std::io::Result<()> {
                    let mut f =
                        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(dir.join(format!("f{i}")))?;
                    f.write_all(&content(i))?;
                    f.sync_all()?;
                    Ok(())
                })();
                match r {
                    Ok(()) => acked.lock().unwrap().push(i),
                    Err(_) => {
                        // The server is gone: everything acked so far must survive.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        })
    };
    wait_until("50 acknowledged writes", Duration::from_secs(60), || acked.lock().unwrap().len() >= 50);
    c.server.as_mut().unwrap().kill9();
    let acked_at_kill: Vec<usize> = acked.lock().unwrap().clone();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    c.start_server();
    // The mount reconnects on the next query; give it a bounded time.
    let check = |i: usize| -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        std::fs::File::open(dir.join(format!("f{i}")))?.read_to_end(&mut buf)?;
        Ok(buf)
    };
    wait_until("mount to reach the restarted server", Duration::from_secs(30), || check(acked_at_kill[0]).is_ok());
    for &i in &acked_at_kill {
        let got = check(i).unwrap_or_else(|e| panic!("acknowledged file f{i} missing after restart: {e}\n{}", c.logs()));
        assert!(got == content(i), "acknowledged file f{i} has wrong content after restart");
    }
}

/// Garbage, an oversized length prefix and a wrong version on other
/// connections close those connections only; the mounted client keeps working.
#[test]
fn malformed_frames_close_only_that_connection() {
    let mut c = Cluster::new();
    c.start_server();
    c.start_mount();
    std::fs::write(c.mnt.join("before"), b"hello").unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let payloads: Vec<Vec<u8>> = vec![
        b"this is not a frame at all, just garbage bytes".to_vec(),
        {
            let mut v = u32::MAX.to_be_bytes().to_vec();
            v.extend_from_slice(&[1, 0, 0, 0]);
            v
        },
        {
            let mut v = 8u32.to_be_bytes().to_vec();
            v.push(99); // unknown version
            v.extend_from_slice(&[0; 7]);
            v
        },
        {
            let mut v = 20u32.to_be_bytes().to_vec();
            v.push(1);
            v.extend_from_slice(&[0xff; 19]); // right version, undecodable payload
            v
        },
    ];
    for payload in payloads {
        let closed = rt.block_on(async {
            let id = chorus_wire::certs::load_identity(&c.certs, chorus_wire::certs::Role::Client).unwrap();
            let cfg = chorus_wire::tls::client_config(&id).unwrap();
            let ep = chorus_wire::endpoint::client(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
            let conn = ep.connect(c.addr, "server.chorus").unwrap().await.expect("handshake with valid certs");
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(&payload).await.unwrap();
            let _ = send.finish();
            // The server must close this connection within a bounded time.
            let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
            ep.close(0u32.into(), b"");
            closed.is_ok()
        });
        assert!(closed, "server did not close a connection that sent a malformed frame");
        // The mount still works: write and read a new file.
        std::fs::write(c.mnt.join("after"), b"still serving").unwrap();
        assert_eq!(std::fs::read(c.mnt.join("after")).unwrap(), b"still serving");
    }
    assert_eq!(std::fs::read(c.mnt.join("before")).unwrap(), b"hello");
    assert!(c.server.as_mut().unwrap().running(), "server died");
    let log = std::fs::read_to_string(c.log("server")).unwrap();
    assert!(log.contains("WARN"), "server logged no warning for malformed frames:\n{log}");
}

/// A client whose certificate comes from another cluster's CA is refused,
/// with a one-line error.
#[test]
fn wrong_certificate_is_refused() {
    let mut c = Cluster::new();
    c.start_server();
    let other = c.dir.path().join("other-certs");
    init_certs(&other);
    let out = Command::new(chorus_bin())
        .args(["mount", "--certs"])
        .arg(&other)
        .args(["--server", &c.addr.to_string()])
        .arg(&c.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chorus: error:"), "no clear error: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    assert!(!is_mounted(&c.mnt));
}

/// Clear one-line errors for a missing mount point, a busy mount point and
/// a port in use.
#[test]
fn clear_errors_for_bad_setup() {
    let mut c = Cluster::new();
    c.start_server();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(chorus_bin()).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("chorus: error:") && !err.contains("panicked"), "unclear error for {args:?}: {err}");
        err
    };
    let addr = c.addr.to_string();
    let missing = c.dir.path().join("no-such-dir");
    let err = run(&["mount".as_ref(), "--certs".as_ref(), c.certs.as_os_str(), "--server".as_ref(), addr.as_ref(), missing.as_os_str()]);
    assert!(err.contains("does not exist"), "{err}");

    // Port in use: a second server on the same address.
    let data2 = c.dir.path().join("data2");
    let err = run(&[
        "server".as_ref(),
        "--certs".as_ref(),
        c.certs.as_os_str(),
        "--data".as_ref(),
        data2.as_os_str(),
        "--listen".as_ref(),
        addr.as_ref(),
    ]);
    assert!(err.contains("in use"), "{err}");

    // Busy mount point: mount twice at the same folder.
    c.start_mount();
    let err = run(&["mount".as_ref(), "--certs".as_ref(), c.certs.as_os_str(), "--server".as_ref(), addr.as_ref(), c.mnt.as_os_str()]);
    assert!(err.contains("busy") || err.contains("already"), "{err}");
}

/// `chorus up` twice on the same data finds the files again; SIGTERM
/// unmounts and stops cleanly.
#[test]
fn up_restart_finds_files_again() {
    let dir = tempfile::Builder::new().prefix("chorus-up").tempdir_in("/var/tmp").unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let log = dir.path().join("up.log");
    for round in 0..2 {
        let mut up = spawn_up(&mnt, &data, port, 1, &log);
        wait_until("chorus up to mount", Duration::from_secs(60), || is_mounted(&mnt));
        if round == 0 {
            std::fs::create_dir(mnt.join("d")).unwrap();
            std::fs::write(mnt.join("d/file"), b"persisted").unwrap();
        } else {
            assert_eq!(std::fs::read(mnt.join("d/file")).unwrap(), b"persisted");
        }
        let st = up.term(Duration::from_secs(20));
        assert!(st.success(), "chorus up exited with {st}: {}", std::fs::read_to_string(&log).unwrap());
        assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
    }
}

/// A non-owner may write to a set-ID file it has write permission on; the
/// write clears the set-ID bits (as on ext4) instead of failing with EPERM.
#[test]
fn non_owner_write_clears_set_id_bits() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::new();
    // nobody must be able to reach the mount point.
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    c.start_server();
    c.start_mount();
    let f = c.mnt.join("setid");
    std::fs::write(&f, b"").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6777)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!("echo hi >> {}", f.display()))
        .output()
        .expect("setpriv (util-linux) is installed");
    assert!(out.status.success(), "non-owner write failed: {}", String::from_utf8_lossy(&out.stderr));
    let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o777, "set-ID bits not cleared by a non-owner write: {mode:o}");
    assert_eq!(std::fs::read(&f).unwrap(), b"hi\n");
}
