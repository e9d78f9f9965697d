//! The client's network backend: FUSE worker threads call into it blocking;
//! it forwards each request over one QUIC connection (mutual TLS) and waits.
//!
//! Guarantees: queries that fail because the connection died are retried
//! once on a fresh connection (they are side-effect free). Mutations are not
//! retried here: without the session protocol a retry could execute twice,
//! so the caller sees EIO instead. Every call is bounded by `CALL_TIMEOUT`.
//! The single-server [`RemoteBackend`] grants no callbacks (the mount caches
//! nothing: every kernel TTL is 0); the [`ReplicatedBackend`] caches under
//! the leader's callbacks (see its comment).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_client::CacheInfo;
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
///
/// Callbacks (DESIGN.md §5): all sessions share the mount id (a caching
/// client id, `Cluster::caching`), whose link task follows the leader. A
/// read's lease is counted from before the read was first sent and trusted
/// for 90% of it (clock-rate drift); the shell client passes on only grants
/// of a leader this mount has reset with. A write's `changed` goes up to the
/// FUSE layer, which drops those objects itself (the writer gets no recall).
/// Recalls and new leaders reach the mount's cache through the
/// `CacheControl` it attaches; before that, nothing is cached and they are
/// acknowledged at once. A write whose outcome is unknown (it may have run,
/// changing objects without this mount learning which) drops the whole
/// cache.
pub struct ReplicatedBackend {
    runtime: tokio::runtime::Handle,
    cluster: Arc<chorus_replication_shell::client::Cluster>,
    sessions: Vec<tokio::sync::Mutex<Option<chorus_replication_shell::client::Session>>>,
    /// The keepalive's own session: a keepalive stuck in a failover must
    /// never hold a slot that a file-system request waits for (the CI run
    /// at 6cd455b+ saw a 2 s writer stall, about twice a failover).
    keepalive_session: tokio::sync::Mutex<Option<chorus_replication_shell::client::Session>>,
    next: std::sync::atomic::AtomicUsize,
    /// The mount's cache, once attached.
    cache: Arc<Mutex<Option<chorus_client::CacheControl>>>,
}

/// Sessions per mount: concurrent requests in flight.
pub const SESSIONS_PER_MOUNT: usize = 8;

/// Default interval of a mount's keepalive: well inside the servers'
/// default session timeout (120 s), so a live mount never loses its open
/// files and locks to a quiet spell.
pub const KEEPALIVE_MS_DEFAULT: u64 = 10_000;

/// The share of a lease a mount trusts (counted from before it sent the
/// read): the rest covers clock-rate drift between it and the leader.
const LEASE_TRUST_NUM: u64 = 9;
const LEASE_TRUST_DEN: u64 = 10;

/// Until when a read sent at `sent` may be cached, for a grant of `lease_ms`.
fn lease_until(sent: Instant, lease_ms: u64) -> Option<Instant> {
    (lease_ms > 0).then(|| sent + Duration::from_millis(lease_ms.saturating_mul(LEASE_TRUST_NUM) / LEASE_TRUST_DEN))
}

impl ReplicatedBackend {
    /// Opens the mount's sessions; every `keepalive` after that, an idle
    /// mount commits a no-op so one of its sessions stays active (its
    /// handles and locks are released only when its last session ends).
    pub async fn connect(certs: &std::path::Path, peers: Vec<SocketAddr>, keepalive: Duration) -> anyhow::Result<Arc<Self>> {
        let (cluster, events) = chorus_replication_shell::client::Cluster::caching(certs, peers)?;
        let cache: Arc<Mutex<Option<chorus_client::CacheControl>>> = Arc::default();
        tokio::spawn(forward_cache_events(events, cache.clone()));
        // Every session now: a dead cluster is reported at mount time, and a
        // mount that holds its sessions keeps working while another client
        // floods the session table (new registrations are then refused
        // until the flood's sessions have idled, docs/protocol.md R4b).
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut sessions = Vec::with_capacity(SESSIONS_PER_MOUNT);
        for _ in 0..SESSIONS_PER_MOUNT {
            sessions.push(tokio::sync::Mutex::new(Some(cluster.session(deadline).await?)));
        }
        let backend = Arc::new(ReplicatedBackend {
            runtime: tokio::runtime::Handle::current(),
            cluster,
            sessions,
            keepalive_session: tokio::sync::Mutex::new(None),
            next: std::sync::atomic::AtomicUsize::new(0),
            cache,
        });
        tokio::spawn(keep_alive(Arc::downgrade(&backend), keepalive));
        Ok(backend)
    }

    /// Gives the leader back every callback of this mount (it was unmounted).
    fn release_callbacks(&self) {
        let cluster = self.cluster.clone();
        let _ = self.runtime.block_on(async move { tokio::time::timeout(Duration::from_secs(1), cluster.release_callbacks()).await });
    }

    /// A write that may or may not have run changed objects this mount
    /// cannot name: it stops trusting everything it cached.
    fn drop_cache(&self) {
        if let Some(c) = self.cache.lock().clone() {
            c.drop_all(|| {});
        }
    }

    async fn call_async(&self, req: &Request) -> (Result<OpResult, Errno>, CacheInfo) {
        let slot = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.sessions.len();
        self.call_on(&self.sessions[slot], req).await
    }

    /// [`ReplicatedBackend::call_async`] on one session slot.
    async fn call_on(
        &self,
        slot: &tokio::sync::Mutex<Option<chorus_replication_shell::client::Session>>,
        req: &Request,
    ) -> (Result<OpResult, Errno>, CacheInfo) {
        use chorus_replication::Outcome;
        use chorus_replication_shell::client::ClientError;
        let none = CacheInfo::default();
        let Ok(bytes) = chorus_server::machine::encode_request(req) else { return (Err(Errno(libc::EINVAL)), none) };
        let is_query = matches!(req, Request::Query { .. });
        // A keepalive whose outcome is unknown changed nothing either way.
        let changes_nothing = is_query || matches!(req, Request::Mutate { op: chorus_fs::ops::Op::KeepAlive, .. });
        let mut guard = slot.lock().await;
        let deadline = Instant::now() + CALL_TIMEOUT;
        for _attempt in 0..2 {
            if guard.is_none() {
                match self.cluster.session(deadline).await {
                    Ok(s) => *guard = Some(s),
                    Err(e) => {
                        warn!(error = %e, "cannot open a session");
                        return (Err(Errno(libc::EIO)), none);
                    }
                }
            }
            let session = guard.as_mut().expect("session just opened");
            // Before the first transmission: the lease runs from the
            // leader's answer, which comes after any copy was sent.
            let sent = Instant::now();
            let result = if is_query {
                session.read_leased(bytes.clone(), deadline).await.map(|r| {
                    let info = CacheInfo { lease_until: lease_until(sent, r.lease_ms), changed: Vec::new() };
                    (r.answer, info)
                })
            } else {
                session
                    .write_tracked(bytes.clone(), deadline)
                    .await
                    .map(|w| (w.answer, CacheInfo { lease_until: None, changed: w.changed }))
            };
            match result {
                Ok((reply, info)) => {
                    let decoded = chorus_server::machine::decode_result(&reply).map_err(|e| {
                        warn!(error = %e, "undecodable reply");
                        Errno(libc::EIO)
                    });
                    return match decoded {
                        Ok(r) => (Ok(r), info),
                        // The write ran, but what it changed is still known.
                        Err(e) => (Err(e), CacheInfo { lease_until: None, changed: info.changed }),
                    };
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
                    if !changes_nothing {
                        self.drop_cache();
                    }
                    return (Err(Errno(libc::EIO)), none);
                }
                Err(e) => {
                    warn!(error = %e, "replicated call failed");
                    *guard = None;
                    if !changes_nothing {
                        self.drop_cache();
                    }
                    return (Err(Errno(libc::EIO)), none);
                }
            }
        }
        (Err(Errno(libc::EIO)), none)
    }
}

/// Commits a no-op every `interval` while the backend lives. Cheap (one
/// small log entry) and sent even when the mount is busy: simpler than
/// tracking idleness, and a busy mount's sessions are active anyway.
async fn keep_alive(backend: std::sync::Weak<ReplicatedBackend>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: the sessions are new
    loop {
        tick.tick().await;
        let Some(backend) = backend.upgrade() else { return };
        let request = Request::Mutate { caller: chorus_fs::ops::Caller::root(), op: chorus_fs::ops::Op::KeepAlive };
        if let (Err(e), _) = backend.call_on(&backend.keepalive_session, &request).await {
            tracing::debug!(errno = e.0, "keepalive failed; the next one retries");
        }
    }
}

/// Hands the link's cache events to the mount's cache; before a mount is
/// attached nothing is cached, so they are acknowledged at once. Never
/// blocks on the mount (the cache only queues), so the link is never slowed
/// by the kernel.
async fn forward_cache_events(
    mut events: tokio::sync::mpsc::Receiver<chorus_replication_shell::client::CacheEvent>,
    cache: Arc<Mutex<Option<chorus_client::CacheControl>>>,
) {
    use chorus_replication_shell::client::CacheEvent;
    while let Some(event) = events.recv().await {
        let control = cache.lock().clone();
        match (event, control) {
            (CacheEvent::Recall { objects, ack }, Some(c)) => c.recall(&objects, move || ack.done()),
            (CacheEvent::Reset { ack }, Some(c)) => c.drop_all(move || ack.done()),
            (event, None) => event.into_ack().done(),
        }
    }
}

impl chorus_client::Backend for ReplicatedBackend {
    fn call(&self, req: Request) -> OpResult {
        self.call_leased(req).0
    }

    fn call_leased(&self, req: Request) -> (OpResult, CacheInfo) {
        let (r, info) = self.runtime.block_on(self.call_async(&req));
        (r.unwrap_or_else(Err), info)
    }

    fn attach(&self, cache: chorus_client::CacheControl) {
        *self.cache.lock() = Some(cache);
    }

    fn release(&self) {
        self.release_callbacks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_trusted_for_nine_tenths_from_the_send() {
        let t = Instant::now();
        assert_eq!(lease_until(t, 0), None, "no grant, no caching");
        assert_eq!(lease_until(t, 5_000), Some(t + Duration::from_millis(4_500)));
        assert_eq!(lease_until(t, 1), Some(t), "rounds down");
        assert!(lease_until(t, u64::MAX).is_some(), "no overflow");
    }
}
