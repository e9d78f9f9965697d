//! Real-process tests of issue 10 finding 5: bounds on what a client can
//! make a replica spend. Each starts its own `chorus server` processes on
//! 127.0.0.1 (ports picked by the OS), talks to them with the client
//! certificate, and kills only the processes it started.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

/// A one-replica replicated cluster (`chorus init --replicas 1`, one
/// `chorus server --init-new-cluster`): the replica leads at once.
fn one_replica(dir: &Path) -> (Proc, Vec<SocketAddr>) {
    let certs = dir.join("certs");
    run_ok(std::process::Command::new(chorus_bin()).args(["init", "--replicas", "1", "--certs"]).arg(&certs));
    let peers = vec![SocketAddr::from(([127, 0, 0, 1], free_port()))];
    let (data, list) = (dir.join("replica-0"), peers[0].to_string());
    let args: Vec<&std::ffi::OsStr> = vec![
        "server".as_ref(),
        "--certs".as_ref(),
        certs.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--id".as_ref(),
        "0".as_ref(),
        "--peers".as_ref(),
        list.as_ref(),
        "--init-new-cluster".as_ref(),
    ];
    (spawn("replica 0", &args, &dir.join("replica-0.log")), peers)
}

/// `Status` hashes the whole store on a blocking thread. Any client may ask
/// for it, so a burst of them must not start a digest each: 200 concurrent
/// requests from one client are served by a handful of digests, all equal.
#[test]
fn a_burst_of_status_requests_computes_few_digests() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, peers) = one_replica(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = rt
        .block_on(async { chorus_replication_shell::client::Cluster::new(&dir.path().join("certs"), peers.clone()) })
        .expect("shell client");
    wait_until("the replica answers its status", Duration::from_secs(60), || {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), cluster.status(0)).await.ok().flatten() })
            .is_some_and(|s| s.status == "normal")
    });
    let before = rt.block_on(cluster.status(0)).expect("status").digests_computed;
    let answers: Vec<_> = rt.block_on(async {
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let c = cluster.clone();
                tokio::spawn(async move { c.status(0).await })
            })
            .collect();
        let mut out = Vec::new();
        for call in calls {
            out.push(call.await.unwrap());
        }
        out
    });
    let answers: Vec<_> = answers.into_iter().map(|a| a.expect("every status request is answered")).collect();
    let after = rt.block_on(cluster.status(0)).expect("status").digests_computed;
    let digests: std::collections::BTreeSet<(u64, u64)> = answers.iter().map(|s| (s.applied_op, s.digest)).collect();
    assert_eq!(digests.len(), 1, "one state, one digest: {digests:?}");
    assert!(after - before <= 3, "200 status requests computed {} digests", after - before);
}
