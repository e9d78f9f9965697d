//! Two replicas' transports on loopback with the cluster certificates:
//! messages arrive in order with the sender taken from the verified
//! certificate, and a peer restart is survived by reconnecting.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use chorus_replication_shell::transport::Transport;
use chorus_wire::certs::{self, Role};
use chorus_wire::{endpoint, rpc, tls};

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

type Msg = (u8, u64);

fn start(
    dir: &std::path::Path,
    id: u8,
    peers: &[SocketAddr],
) -> (Arc<Transport<Msg>>, tokio::sync::mpsc::Receiver<(u8, Msg)>, quinn::Endpoint) {
    let identity = certs::load_identity(dir, Role::Replica(id as usize)).unwrap();
    // A restarted replica may find its port still held for a moment by the
    // previous incarnation's tasks winding down: retry the bind, bounded.
    let mut ep = None;
    for _ in 0..100 {
        match endpoint::server(peers[id as usize], tls::server_config(&identity).unwrap()) {
            Ok(e) => {
                ep = Some(e);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut ep = ep.expect("bind within 5 s");
    ep.set_default_client_config(tls::client_config(&identity).unwrap());
    let (transport, inbound) = Transport::<Msg>::start(ep.clone(), id, peers, |_| None, chorus_wire::codec::to_bytes);
    let accept_ep = ep.clone();
    let t = transport.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept_ep.accept().await {
            let t = t.clone();
            tokio::spawn(async move {
                let Ok(conn) = rpc::accept(incoming).await else { return };
                if let Some(Role::Replica(j)) = certs::peer_role(&conn) {
                    t.serve_peer(conn, j as u8).await;
                }
            });
        }
    });
    (transport, inbound, ep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_in_order_from_the_verified_sender() {
    let tmp = tempfile::tempdir().unwrap();
    certs::init_cluster(tmp.path(), 3).unwrap();
    let peers = free_addrs(3);
    let (t0, _in0, _ep0) = start(tmp.path(), 0, &peers);
    let (_t1, mut in1, _ep1) = start(tmp.path(), 1, &peers);
    // Messages sent before the connection exists are queued (bounded).
    for i in 0..1000u64 {
        t0.send(1, (0, i));
    }
    for i in 0..1000u64 {
        let (from, (claimed, n)) = tokio::time::timeout(Duration::from_secs(10), in1.recv()).await.unwrap().unwrap();
        assert_eq!(from, 0, "sender comes from the certificate");
        assert_eq!((claimed, n), (0, i), "in order, none lost on a healthy link");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_peer_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    certs::init_cluster(tmp.path(), 3).unwrap();
    let peers = free_addrs(3);
    let (t0, _in0, _ep0) = start(tmp.path(), 0, &peers);
    let (t1, mut in1, ep1) = start(tmp.path(), 1, &peers);
    t0.send(1, (0, 1));
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), in1.recv()).await.unwrap().unwrap().1, (0, 1));
    // Replica 1 goes away and comes back on the same address.
    ep1.close(0u32.into(), b"restart");
    ep1.wait_idle().await;
    drop((t1, in1, ep1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_t1, mut in1, _ep1) = start(tmp.path(), 1, &peers);
    // Keep sending (the protocol retransmits) until one arrives.
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        let mut i = 100;
        loop {
            t0.send(1, (0, i));
            i += 1;
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), in1.recv()).await {
                return m;
            }
        }
    })
    .await
    .expect("reconnected within the bound");
    assert_eq!(got.0, 0);
    assert!(t0.stats.connects.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}
