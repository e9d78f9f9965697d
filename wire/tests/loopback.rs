//! Loopback tests of the whole transport: real certificates from
//! `init_cluster`, real QUIC endpoints on 127.0.0.1, mutual TLS, RPC.
//! Each test would fail if the property it names were broken.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chorus_wire::certs::{self, Role};
use chorus_wire::rpc::{self, RpcClient, ServerConn};
use chorus_wire::{endpoint, frame, tls, Identity, WireError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Req {
    Echo { n: u64, bytes: Vec<u8> },
    Sleep { ms: u64 },
    Panic,
    Push { count: u32 },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Resp {
    Echo { n: u64, bytes: Vec<u8> },
    Slept,
    Pushed,
}

const STEP_TIMEOUT: Duration = Duration::from_secs(5);

struct TestServer {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    /// What `serve_connection` returned, per finished connection, with the peer's role.
    outcomes: mpsc::Receiver<(Option<Role>, Result<(), WireError>)>,
    /// Handshakes the server refused.
    refused: mpsc::Receiver<WireError>,
}

async fn handle(conn: ServerConn, req: Req) -> Resp {
    match req {
        Req::Echo { n, bytes } => Resp::Echo { n, bytes },
        Req::Sleep { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Resp::Slept
        }
        Req::Panic => panic!("asked to panic"),
        Req::Push { count } => {
            for i in 0..count {
                conn.push(&(i as u64)).await.unwrap();
            }
            Resp::Pushed
        }
    }
}

fn start_server(dir: &Path, replica: usize) -> TestServer {
    start_server_revoking(dir, replica, None)
}

fn start_server_revoking(dir: &Path, replica: usize, revoked: Option<Arc<chorus_wire::revoke::RevocationList>>) -> TestServer {
    let id = certs::load_identity(dir, Role::Replica(replica)).unwrap();
    let endpoint = endpoint::server("127.0.0.1:0".parse().unwrap(), tls::server_config_revoking(&id, revoked).unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (outcome_tx, outcomes) = mpsc::channel(64);
    let (refused_tx, refused) = mpsc::channel(64);
    let accept = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let outcome_tx = outcome_tx.clone();
            let refused_tx = refused_tx.clone();
            tokio::spawn(async move {
                let conn = match rpc::accept(incoming).await {
                    Ok(conn) => conn,
                    Err(err) => {
                        let _ = refused_tx.send(err).await;
                        return;
                    }
                };
                let push = ServerConn::new(conn.clone());
                let role = push.peer_role();
                let result = rpc::serve_connection(conn, move |req: Req| handle(push.clone(), req)).await;
                let _ = outcome_tx.send((role, result)).await;
            });
        }
    });
    TestServer { addr, endpoint, outcomes, refused }
}

fn client_endpoint(id: &Identity, target: SocketAddr) -> quinn::Endpoint {
    endpoint::client(tls::client_config(id).unwrap(), endpoint::client_bind_for(target)).unwrap()
}

async fn connect(dir: &Path, role: Role, server: &TestServer) -> RpcClient {
    let id = certs::load_identity(dir, role).unwrap();
    let ep = client_endpoint(&id, server.addr);
    tokio::time::timeout(STEP_TIMEOUT, RpcClient::connect(&ep, server.addr)).await.unwrap().unwrap()
}

async fn echo(client: &RpcClient, n: u64) -> Result<Resp, WireError> {
    tokio::time::timeout(STEP_TIMEOUT, client.call(&Req::Echo { n, bytes: n.to_le_bytes().to_vec() })).await.expect("call timed out")
}

fn cluster(replicas: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    certs::init_cluster(dir.path(), replicas).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_mutual_tls_and_1000_concurrent_calls() {
    let dir = cluster(3);
    let mut server = start_server(dir.path(), 1);
    let client = connect(dir.path(), Role::Client, &server).await;
    assert_eq!(echo(&client, 7).await.unwrap(), Resp::Echo { n: 7, bytes: 7u64.to_le_bytes().to_vec() });

    let mut calls = tokio::task::JoinSet::new();
    for n in 0..1000u64 {
        let client = client.clone();
        calls.spawn(async move {
            // Varying sizes and a little sleeping so replies come back out of order.
            let bytes = vec![(n % 251) as u8; (n as usize * 37) % 5000];
            let req = Req::Echo { n, bytes: bytes.clone() };
            let resp: Resp = client.call(&req).await.unwrap();
            assert_eq!(resp, Resp::Echo { n, bytes }, "call {n} got someone else's answer");
            n
        });
    }
    let mut seen = vec![false; 1000];
    while let Some(n) = tokio::time::timeout(STEP_TIMEOUT * 2, calls.join_next()).await.unwrap() {
        seen[n.unwrap() as usize] = true;
    }
    assert!(seen.iter().all(|s| *s));

    // A 4 MiB payload, the size file data moves in.
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let resp: Resp = client.call(&Req::Echo { n: 1, bytes: big.clone() }).await.unwrap();
    assert_eq!(resp, Resp::Echo { n: 1, bytes: big });

    // The server knows who called: the client certificate's role.
    client.close();
    let (role, result) = tokio::time::timeout(STEP_TIMEOUT, server.outcomes.recv()).await.unwrap().unwrap();
    assert_eq!(role, Some(Role::Client));
    assert!(result.is_ok(), "{result:?}");

    // Replica and admin certificates work as clients too, and are told apart.
    for role in [Role::Replica(2), Role::Admin] {
        let c = connect(dir.path(), role, &server).await;
        echo(&c, 1).await.unwrap();
        drop(c);
        let (seen_role, _) = tokio::time::timeout(STEP_TIMEOUT, server.outcomes.recv()).await.unwrap().unwrap();
        assert_eq!(seen_role, Some(role));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_certificate_of_another_ca_is_refused() {
    let dir = cluster(1);
    let other = cluster(1);
    let mut server = start_server(dir.path(), 0);
    // Trusts the right CA (so it accepts the server) but presents a leaf of another cluster.
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let foreign =
        Identity::from_pem(&read(dir.path(), "ca.pem"), &read(other.path(), "client.pem"), &read(other.path(), "client.key")).unwrap();
    let ep = client_endpoint(&foreign, server.addr);
    let outcome = async {
        let client = RpcClient::connect(&ep, server.addr).await?;
        client.call::<_, Resp>(&Req::Echo { n: 1, bytes: vec![] }).await
    };
    let err = tokio::time::timeout(STEP_TIMEOUT, outcome).await.unwrap().unwrap_err();
    assert!(matches!(err, WireError::CertRejectedByServer { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("unknown CA") && text.contains("chorus init"), "{text}");
    // The server saw a refused handshake, and served nothing.
    let refused = tokio::time::timeout(STEP_TIMEOUT, server.refused.recv()).await.unwrap().unwrap();
    assert!(matches!(&refused, WireError::PeerRefused { reason, .. } if reason.contains("unknown CA")), "{refused:?}");
    assert!(server.outcomes.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused() {
    let dir = cluster(1);
    let mut server = start_server(dir.path(), 0);
    let id = certs::load_identity(dir.path(), Role::Client).unwrap();
    // A client that verifies the server properly but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.ca_der().clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![tls::ALPN.to_vec()];
    let ep = endpoint::client(tls::quinn_client_config(cfg).unwrap(), endpoint::client_bind_for(server.addr)).unwrap();
    let outcome = async {
        let client = RpcClient::connect(&ep, server.addr).await?;
        client.call::<_, Resp>(&Req::Echo { n: 1, bytes: vec![] }).await
    };
    let err = tokio::time::timeout(STEP_TIMEOUT, outcome).await.unwrap().unwrap_err();
    assert!(matches!(err, WireError::ClientCertRequired), "{err:?}");
    let refused = tokio::time::timeout(STEP_TIMEOUT, server.refused.recv()).await.unwrap().unwrap();
    assert!(matches!(&refused, WireError::PeerRefused { reason, .. } if reason.contains("no client certificate")), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_of_another_cluster_is_refused_by_the_client() {
    let dir = cluster(1);
    let other = cluster(1);
    let server = start_server(other.path(), 0);
    let id = certs::load_identity(dir.path(), Role::Client).unwrap();
    let ep = client_endpoint(&id, server.addr);
    let outcome = async {
        let client = RpcClient::connect(&ep, server.addr).await?;
        client.call::<_, Resp>(&Req::Echo { n: 1, bytes: vec![] }).await
    };
    let err = tokio::time::timeout(STEP_TIMEOUT, outcome).await.unwrap().unwrap_err();
    assert!(matches!(err, WireError::ServerCertRejected { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cannot_pose_as_a_server() {
    // client.pem has no server.chorus name and no serverAuth purpose.
    let dir = cluster(1);
    let id = certs::load_identity(dir.path(), Role::Client).unwrap();
    let ep = endpoint::server("127.0.0.1:0".parse().unwrap(), tls::server_config(&id).unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let accept = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let _ = incoming.await;
        }
    });
    let cid = certs::load_identity(dir.path(), Role::Admin).unwrap();
    let cep = client_endpoint(&cid, addr);
    let err = tokio::time::timeout(STEP_TIMEOUT, RpcClient::connect(&cep, addr)).await.unwrap().unwrap_err();
    assert!(matches!(err, WireError::ServerCertRejected { .. }), "{err:?}");
}

/// Opens a raw QUIC connection with valid certificates, sends `bytes` on a
/// bidi stream, and returns how the server closed the connection.
async fn raw_send(dir: &Path, addr: SocketAddr, bytes: &[u8], finish: bool) -> quinn::ConnectionError {
    let id = certs::load_identity(dir, Role::Client).unwrap();
    let ep = client_endpoint(&id, addr);
    let conn = ep.connect(addr, tls::SERVER_NAME).unwrap().await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    tokio::time::timeout(STEP_TIMEOUT, conn.closed()).await.expect("server did not close the bad connection")
}

fn request_envelope(kind: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = vec![kind];
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(body);
    frame::encode(&payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_connection() {
    let dir = cluster(1);
    let mut server = start_server(dir.path(), 0);
    let good = connect(dir.path(), Role::Client, &server).await;
    // A call that is in flight on the good connection while the bad ones arrive.
    let slow = {
        let good = good.clone();
        tokio::spawn(async move { good.call::<_, Resp>(&Req::Sleep { ms: 300 }).await })
    };

    let mut wrong_version = frame::encode(b"123456789").unwrap();
    wrong_version[4] = 7;
    let valid_echo = {
        let mut body = Vec::new();
        body.extend(bincode_body(&Req::Echo { n: 1, bytes: vec![] }));
        request_envelope(rpc::KIND_REQUEST, 1, &body)
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false),
        ("oversized length prefix", vec![0x7f, 0xff, 0xff, 0xff, frame::FRAME_VERSION, 0, 0], false),
        (
            "length just over the bound",
            {
                let mut h = ((frame::PAYLOAD_BYTES_MAX + 1) as u32).to_be_bytes().to_vec();
                h.push(frame::FRAME_VERSION);
                h
            },
            false,
        ),
        ("wrong version byte", wrong_version, false),
        ("undecodable payload", request_envelope(rpc::KIND_REQUEST, 1, &[0xff; 16]), false),
        ("unknown envelope kind", request_envelope(9, 1, &[]), false),
        ("envelope shorter than its header", frame::encode(&[0, 1, 2]).unwrap(), false),
        ("truncated frame then end of stream", valid_echo[..valid_echo.len() - 1].to_vec(), true),
    ];
    for (name, bytes, finish) in cases {
        let closed = raw_send(dir.path(), server.addr, &bytes, finish).await;
        match &closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, rpc::CLOSE_PROTOCOL_VIOLATION, "{name}: {closed:?}")
            }
            other => panic!("{name}: connection ended by {other:?}, expected a protocol-violation close"),
        }
        let (_, outcome) = tokio::time::timeout(STEP_TIMEOUT, server.outcomes.recv()).await.unwrap().unwrap();
        assert!(matches!(outcome, Err(WireError::Protocol { .. })), "{name}: {outcome:?}");
        // The well-behaved client is unaffected.
        assert!(matches!(echo(&good, 5).await, Ok(Resp::Echo { n: 5, .. })), "{name}");
        assert!(!good.is_closed(), "{name}");
    }
    assert_eq!(slow.await.unwrap().unwrap(), Resp::Slept);
}

fn bincode_body<T: Serialize>(msg: &T) -> Vec<u8> {
    chorus_wire::codec::to_bytes(msg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_reported_as_such() {
    let dir = cluster(1);
    let id = certs::load_identity(dir.path(), Role::Replica(0)).unwrap();
    let first = endpoint::server("127.0.0.1:0".parse().unwrap(), tls::server_config(&id).unwrap()).unwrap();
    let addr = first.local_addr().unwrap();
    let err = endpoint::server(addr, tls::server_config(&id).unwrap()).unwrap_err();
    assert!(matches!(err, WireError::AddrInUse(a) if a == addr), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("port {} on 127.0.0.1 is in use", addr.port())), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_fails_only_that_call() {
    let dir = cluster(1);
    let server = start_server(dir.path(), 0);
    let client = connect(dir.path(), Role::Client, &server).await;
    let err = client.call::<_, Resp>(&Req::Panic).await.unwrap_err();
    assert!(matches!(&err, WireError::Remote(text) if text.contains("asked to panic")), "{err:?}");
    assert!(matches!(echo(&client, 3).await, Ok(Resp::Echo { n: 3, .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_leave_the_connection_usable() {
    let dir = cluster(1);
    let server = start_server(dir.path(), 0);
    let client = connect(dir.path(), Role::Client, &server).await;
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_millis(5), client.call::<_, Resp>(&Req::Sleep { ms: 50 })).await;
        assert!(r.is_err());
        // Also cancel in the middle of a large request being queued/written.
        let big = Req::Echo { n: 9, bytes: vec![1; 2 * 1024 * 1024] };
        let _ = tokio::time::timeout(Duration::from_micros(200), client.call::<_, Resp>(&big)).await;
    }
    for n in 0..50 {
        assert!(matches!(echo(&client, n).await, Ok(Resp::Echo { n: m, .. }) if m == n));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_calls_fail_when_the_server_goes_away() {
    let dir = cluster(1);
    let server = start_server(dir.path(), 0);
    let client = connect(dir.path(), Role::Client, &server).await;
    echo(&client, 1).await.unwrap();
    let pending: Vec<_> = (0..10)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.call::<_, Resp>(&Req::Sleep { ms: 60_000 }).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.endpoint.close(0u32.into(), b"server shutting down");
    for call in pending {
        let err = tokio::time::timeout(STEP_TIMEOUT, call).await.expect("call hung on a dead connection").unwrap().unwrap_err();
        assert!(matches!(&err, WireError::ConnectionLost(text) if text.contains("server shutting down")), "{err:?}");
    }
    assert!(client.is_closed());
    let err = echo(&client, 2).await.unwrap_err();
    assert!(err.is_connection_lost(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pushes_reach_the_subscriber_in_order() {
    let dir = cluster(1);
    let server = start_server(dir.path(), 0);
    let client = connect(dir.path(), Role::Client, &server).await;
    let mut pushes = client.subscribe::<u64>().unwrap();
    assert!(matches!(client.subscribe::<u64>(), Err(WireError::AlreadySubscribed)));
    // More pushes than the queue bound: the reader must keep up, not deadlock.
    let count = rpc::PUSH_QUEUE_FRAMES_MAX as u32 * 2;
    let caller = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, Resp>(&Req::Push { count }).await })
    };
    for expected in 0..count as u64 {
        let got = tokio::time::timeout(STEP_TIMEOUT, pushes.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, expected);
    }
    assert_eq!(caller.await.unwrap().unwrap(), Resp::Pushed);
}

/// A one-client UDP relay in front of `server` that can silently drop
/// everything, as a crashed or partitioned peer would (no close, no reset).
async fn black_hole_proxy(server: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let dropping = Arc::new(AtomicBool::new(false));
    let flag = dropping.clone();
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
            if flag.load(Ordering::Relaxed) {
                continue;
            }
            let to = if from == server {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                server
            };
            let _ = socket.send_to(&buf[..n], to).await;
        }
    });
    (addr, dropping)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_noticed_within_the_idle_timeout() {
    let dir = cluster(1);
    let server = start_server(dir.path(), 0);
    let (proxy, dropping) = black_hole_proxy(server.addr).await;
    let id = certs::load_identity(dir.path(), Role::Client).unwrap();
    let ep = client_endpoint(&id, proxy);
    let client = tokio::time::timeout(STEP_TIMEOUT, RpcClient::connect(&ep, proxy)).await.unwrap().unwrap();
    assert!(matches!(echo(&client, 1).await, Ok(Resp::Echo { n: 1, .. })));
    // Idle for longer than a keep-alive interval: keep-alives hold the connection open.
    tokio::time::sleep(tls::KEEP_ALIVE_INTERVAL * 2).await;
    assert!(!client.is_closed());
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.call::<_, Resp>(&Req::Sleep { ms: 60_000 }).await })
    };
    dropping.store(true, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(tls::IDLE_TIMEOUT + Duration::from_secs(3), pending)
        .await
        .expect("a dead peer was not noticed")
        .unwrap()
        .unwrap_err();
    assert!(matches!(&err, WireError::ConnectionLost(text) if text.contains("timed out")), "{err:?}");
    assert!(started.elapsed() >= tls::IDLE_TIMEOUT - Duration::from_millis(500));
    assert!(client.is_closed());
}

/// Issue 10, finding 3: a certificate on the server's revocation list is
/// refused in the handshake with words that say so, and the server notices
/// the list change without a restart; an expired certificate is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_client_certificates_are_refused_in_the_handshake() {
    let dir = cluster(1);
    let revoked = Arc::new(chorus_wire::revoke::RevocationList::in_certs_dir(dir.path()));
    let mut server = start_server_revoking(dir.path(), 0, Some(revoked));
    let bundle = dir.path().join("bundle-web-1");
    let issued = certs::issue_client(dir.path(), &bundle, &certs::IssueOptions::for_days("web-1", 1, false).unwrap()).unwrap();
    let client = connect(&bundle, Role::Client, &server).await;
    echo(&client, 1).await.expect("an issued certificate is accepted");
    client.close();

    chorus_wire::revoke::append(&dir.path().join(chorus_wire::revoke::REVOKED_FILE), &issued.fingerprint, "web-1").unwrap();
    let id = certs::load_identity(&bundle, Role::Client).unwrap();
    let started = std::time::Instant::now();
    let err = loop {
        let ep = client_endpoint(&id, server.addr);
        let outcome = async {
            let client = RpcClient::connect(&ep, server.addr).await?;
            client.call::<_, Resp>(&Req::Echo { n: 2, bytes: vec![] }).await
        };
        match tokio::time::timeout(STEP_TIMEOUT, outcome).await.unwrap() {
            Ok(_) => {
                assert!(started.elapsed() < chorus_wire::revoke::RELOAD_INTERVAL * 3, "the revocation was not noticed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break e,
        }
    };
    let text = err.to_string();
    assert!(matches!(err, WireError::CertRejectedByServer { .. }) && text.contains("revoked"), "{text}");
    let refused = tokio::time::timeout(STEP_TIMEOUT, server.refused.recv()).await.unwrap().unwrap();
    assert!(refused.to_string().contains("revocation list"), "{refused}");
    // Other certificates still get in.
    let admin = connect(dir.path(), Role::Admin, &server).await;
    echo(&admin, 3).await.unwrap();

    // Expired: made with a past validity (load_identity would refuse it on
    // the client already; from_pem does not check, the server must).
    let old = dir.path().join("bundle-old");
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let opts = certs::IssueOptions { host: "old".into(), trust_root: false, not_before: now - day * 3, not_after: now - day };
    certs::issue_client(dir.path(), &old, &opts).unwrap();
    let read = |f: &str| std::fs::read_to_string(old.join(f)).unwrap();
    let expired = Identity::from_pem(&read("ca.pem"), &read("client.pem"), &read("client.key")).unwrap();
    let ep = client_endpoint(&expired, server.addr);
    let outcome = async {
        let client = RpcClient::connect(&ep, server.addr).await?;
        client.call::<_, Resp>(&Req::Echo { n: 4, bytes: vec![] }).await
    };
    let err = tokio::time::timeout(STEP_TIMEOUT, outcome).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

/// Issue 10, finding 5 ("idle connections live forever"): keep-alives keep
/// a live peer's connection open however long it sends nothing; a server
/// that asks for it closes a connection with no request in flight for its
/// idle bound (CLOSE_IDLE), and never one whose request is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closes_idle_connections_but_not_busy_ones() {
    let dir = cluster(1);
    let id = certs::load_identity(dir.path(), Role::Replica(0)).unwrap();
    let endpoint = endpoint::server("127.0.0.1:0".parse().unwrap(), tls::server_config(&id).unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let accept = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = rpc::accept(incoming).await else { return };
                let push = ServerConn::new(conn.clone());
                let options = rpc::ServeOptions { budget: rpc::Budget::per_connection(), idle_close: Some(Duration::from_millis(400)) };
                let _ = rpc::serve_connection_with(conn, options, move |req: Req| handle(push.clone(), req)).await;
            });
        }
    });
    let id = certs::load_identity(dir.path(), Role::Client).unwrap();
    let ep = client_endpoint(&id, addr);
    let busy = RpcClient::connect(&ep, addr).await.unwrap();
    let idle = RpcClient::connect(&ep, addr).await.unwrap();
    assert!(matches!(echo(&idle, 1).await, Ok(Resp::Echo { n: 1, .. })));
    // A request running longer than the idle bound keeps its connection.
    assert_eq!(tokio::time::timeout(STEP_TIMEOUT, busy.call::<_, Resp>(&Req::Sleep { ms: 1500 })).await.unwrap().unwrap(), Resp::Slept);
    assert!(idle.is_closed(), "a connection idle for 1.5 s (bound 0.4 s) is still open");
    match idle.connection().close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => assert_eq!(close.error_code, rpc::CLOSE_IDLE),
        other => panic!("closed by {other:?}"),
    }
    // The busy one was used 0 s ago; a new connection works.
    assert!(!busy.is_closed());
    let again = RpcClient::connect(&ep, addr).await.unwrap();
    assert!(matches!(echo(&again, 2).await, Ok(Resp::Echo { n: 2, .. })));
}
