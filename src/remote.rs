//! The client's network backend: FUSE worker threads call into it blocking;
//! it forwards each request over one QUIC connection (mutual TLS) and waits.
//!
//! Guarantees: queries that fail because the connection died are retried
//! once on a fresh connection (they are side-effect free). Mutations are not
//! retried here: without the session protocol a retry could execute twice,
//! so the caller sees EIO instead. Every call is bounded by `CALL_TIMEOUT`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chorus_fs::ops::{Errno, OpResult, Request};
use chorus_wire::rpc::RpcClient;
use parking_lot::Mutex;
use tracing::warn;

/// Longest wait for one answer before the FUSE call fails with EIO.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RemoteBackend {
    runtime: tokio::runtime::Handle,
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    rpc: Mutex<RpcClient>,
}

impl RemoteBackend {
    pub async fn connect(endpoint: quinn::Endpoint, server: SocketAddr) -> anyhow::Result<Arc<Self>> {
        let rpc = RpcClient::connect(&endpoint, server).await?;
        Ok(Arc::new(RemoteBackend { runtime: tokio::runtime::Handle::current(), endpoint, server, rpc: Mutex::new(rpc) }))
    }

    fn client(&self) -> Result<RpcClient, Errno> {
        let current = self.rpc.lock().clone();
        if !current.is_closed() {
            return Ok(current);
        }
        let fresh = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, RpcClient::connect(&self.endpoint, self.server)).await })
            .map_err(|_| Errno(libc::EIO))?
            .map_err(|e| {
                warn!(error = %e, "reconnect failed");
                Errno(libc::EIO)
            })?;
        *self.rpc.lock() = fresh.clone();
        Ok(fresh)
    }

    fn call_once(&self, req: &Request) -> Result<OpResult, Errno> {
        let rpc = self.client()?;
        match self.runtime.block_on(async { tokio::time::timeout(CALL_TIMEOUT, rpc.call::<Request, OpResult>(req)).await }) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                warn!(error = %e, "call failed");
                Err(Errno(libc::EIO))
            }
            Err(_) => Err(Errno(libc::EIO)),
        }
    }
}

impl chorus_client::Backend for RemoteBackend {
    fn call(&self, req: Request) -> OpResult {
        match self.call_once(&req) {
            Ok(r) => r,
            Err(e) if matches!(req, Request::Query { .. }) => self.call_once(&req).unwrap_or(Err(e)),
            Err(e) => Err(e),
        }
    }
}

/// The client of a replicated cluster: FUSE requests become requests of a
/// replication session, so a request in flight during a failover is
/// retransmitted to the next leader and executed exactly once (the reply
/// cache of the replicated session table answers the retry).
///
/// Concurrency: a session runs one request at a time (its sequence numbers
/// order them), so the backend keeps a small pool of sessions; concurrent
/// FUSE requests use different sessions. A session that expired while the
/// mount was idle is refused as unknown *before* anything executes, so it is
/// replaced and the request sent again; if the session ended while a
/// request was being retransmitted, an earlier copy may have run, and the
/// call fails with EIO instead of running it a second time.
pub struct ReplicatedBackend {
    runtime: tokio::runtime::Handle,
    cluster: Arc<chorus_replication_shell::client::Cluster>,
    sessions: Vec<tokio::sync::Mutex<Option<chorus_replication_shell::client::Session>>>,
    next: std::sync::atomic::AtomicUsize,
}

/// Sessions per mount: concurrent requests in flight.
pub const SESSIONS_PER_MOUNT: usize = 8;

impl ReplicatedBackend {
    pub async fn connect(certs: &std::path::Path, peers: Vec<SocketAddr>) -> anyhow::Result<Arc<Self>> {
        let cluster = chorus_replication_shell::client::Cluster::new(certs, peers)?;
        // Every session now: a dead cluster is reported at mount time, and a
        // mount that holds its sessions keeps working while another client
        // floods the session table (new registrations are then refused
        // until the flood's sessions have idled, docs/protocol.md R4b).
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        let mut sessions = Vec::with_capacity(SESSIONS_PER_MOUNT);
        for _ in 0..SESSIONS_PER_MOUNT {
            sessions.push(tokio::sync::Mutex::new(Some(cluster.session(deadline).await?)));
        }
        Ok(Arc::new(ReplicatedBackend {
            runtime: tokio::runtime::Handle::current(),
            cluster,
            sessions,
            next: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    async fn call_async(&self, req: &Request) -> Result<OpResult, Errno> {
        use chorus_replication::Outcome;
        use chorus_replication_shell::client::ClientError;
        let bytes = chorus_server::machine::encode_request(req).map_err(|_| Errno(libc::EINVAL))?;
        let is_query = matches!(req, Request::Query { .. });
        let slot = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.sessions.len();
        let mut guard = self.sessions[slot].lock().await;
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        for _attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.cluster.session(deadline).await.map_err(|e| {
                    warn!(error = %e, "cannot open a session");
                    Errno(libc::EIO)
                })?);
            }
            let session = guard.as_mut().expect("session just opened");
            let result = if is_query { session.read(bytes.clone(), deadline).await } else { session.write(bytes.clone(), deadline).await };
            match result {
                Ok(reply) => {
                    return chorus_server::machine::decode_result(&reply).map_err(|e| {
                        warn!(error = %e, "undecodable reply");
                        Errno(libc::EIO)
                    })
                }
                Err(ClientError::Refused(Outcome::SessionUnknown)) => {
                    // The answer to the request's only transmission: the
                    // session expired while idle and nothing ran. A fresh
                    // session retries.
                    *guard = None;
                }
                Err(ClientError::OutcomeUnknown) => {
                    // The session ended while this request was retried: it
                    // may have run. Running it again could run it twice.
                    warn!("the session ended during a retry; the operation's outcome is unknown (EIO)");
                    *guard = None;
                    return Err(Errno(libc::EIO));
                }
                Err(e) => {
                    warn!(error = %e, "replicated call failed");
                    *guard = None;
                    return Err(Errno(libc::EIO));
                }
            }
        }
        Err(Errno(libc::EIO))
    }
}

impl chorus_client::Backend for ReplicatedBackend {
    fn call(&self, req: Request) -> OpResult {
        self.runtime.block_on(self.call_async(&req)).unwrap_or_else(Err)
    }
}
