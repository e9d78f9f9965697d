//! A client of a shell cluster: finds the leader, keeps a session, retries.
//!
//! Guarantees:
//! - Exactly-once across failover: a write keeps its (session, seq) over
//!   every retry, on any replica, so the core's session layer never runs it
//!   twice; a `Done` answer is for a committed write.
//! - Every call is bounded: one RPC attempt by [`ATTEMPT_TIMEOUT`], a whole
//!   operation by the caller's deadline ([`Session::write`]).
//! - Connections (one per replica) are shared by all sessions of a
//!   [`Cluster`] and re-established when they fail.
//!
//! - A caching mount ([`Cluster::caching`], DESIGN.md §5) uses one client id
//!   with [`CACHING_CLIENT_BIT`] for all its sessions, and a link task keeps
//!   its callbacks sound: on every leader it has not yet reset with (a reply
//!   or a status showing a newer view) it first has the mount drop its whole
//!   cache ([`CacheEvent::Reset`], waited for), then subscribes on that
//!   leader's current connection (again whenever that connection is
//!   replaced), then sends `CacheReset`; only then are that view's grants
//!   passed on ([`ReadReply::lease_ms`]; 0 otherwise). Recalls pushed on any
//!   connection become [`CacheEvent::Recall`]; the mount acknowledges once it
//!   dropped the objects ([`CacheAck::done`]), and only then is `RecallAck`
//!   sent. Every wait of the link is bounded; an unanswered recall or reset
//!   costs the cluster at most one lease, never safety.
//!
//! Assumes: one request in flight per [`Session`] (a closed loop; the
//! benchmark gets concurrency from many sessions).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chorus_replication::{
    ClientId, Millis, ObjectId, Operation, Outcome, RecallId, Reply, Request, SessionId, ViewNumber, CACHING_CLIENT_BIT,
};
use chorus_wire::certs::{self, Role};
use chorus_wire::rpc::RpcClient;
use chorus_wire::{endpoint, tls, WireError};
use tokio::sync::{mpsc, oneshot, Mutex, Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::api::{NodeRequest, NodeResponse, NodeStatus, Push};

/// Longest wait for one RPC attempt. A dead leader's connection does not
/// fail before QUIC's idle timeout (seconds), so this bounds how long a
/// client keeps waiting on it; a live leader commits far faster. A retry
/// after a spurious timeout is harmless (same session and seq).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a replica that failed an attempt is avoided.
pub const SUSPECT_FOR: Duration = Duration::from_millis(1000);
/// Pause before asking again when no replica names a usable leader.
pub const REDIRECT_PAUSE: Duration = Duration::from_millis(20);
/// Longest wait for a connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Pause after a `Busy` answer or a failed attempt.
pub const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No commit before the deadline.
    #[error("no committed answer within {0:?}")]
    Timeout(Duration),
    /// The core refused the request for good (session unknown, too old).
    /// `Refused(SessionUnknown)` means the request did not run: it answers
    /// the request's only transmission.
    #[error("refused: {0:?}")]
    Refused(Outcome),
    /// The session expired or was evicted while the request was being
    /// retransmitted: an earlier copy may have run before that. Running it
    /// again in a new session could run it twice, so the caller must report
    /// the unknown outcome instead.
    #[error("the session ended while the request was retried: it may or may not have run")]
    OutcomeUnknown,
    /// Setting up the endpoint failed.
    #[error("setup: {0}")]
    Setup(String),
}

/// Requests gathered into one batch RPC.
pub const BATCH_REQUESTS_MAX: usize = 256;
/// Batch RPCs in flight per replica.
pub const BATCHES_IN_FLIGHT_MAX: usize = 16;
/// Requests waiting for a batch slot per replica.
pub const BATCH_QUEUE_MAX: usize = 8192;

type Pending = (Request, oneshot::Sender<Option<Reply>>);

/// Pushed messages waiting for the link task (all connections together);
/// beyond, the connections' readers wait (QUIC flow control slows the node).
pub const PUSH_QUEUE_MAX: usize = 1024;
/// Cache events waiting for the mount; beyond, the link task waits.
pub const CACHE_EVENT_QUEUE_MAX: usize = 1024;
/// How often the link task checks the leader it is subscribed with (one
/// status RPC): a mount that sends nothing still meets a new leader soon,
/// and that leader's wait for caching mounts (its grace) ends early.
pub const LINK_TICK: Duration = Duration::from_millis(500);
/// Longest wait for the mount to drop its whole cache for a new leader;
/// without it the link tries again (and trusts no grant meanwhile).
pub const RESET_WAIT: Duration = Duration::from_secs(10);
/// Pause before the link tries a step again that failed.
pub const LINK_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Least time between two rounds of asking every replica for the leader.
pub const PROBE_SPACING: Duration = Duration::from_millis(200);
/// Longest wait of the link for one status answer: the link meets new
/// leaders by these, and a dead replica must not hold it up for long (a
/// caching mount that has not reset is answered Busy by a new leader).
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(250);
/// After a node refused callbacks, how long the link waits to ask again
/// (the mount works uncached meanwhile).
pub const REFUSED_RETRY: Duration = Duration::from_secs(10);
/// `trusted_view` when no view is trusted.
const NO_VIEW: u64 = u64::MAX;

/// What a caching mount must do (see [`Cluster::caching`]).
#[derive(Debug)]
pub enum CacheEvent {
    /// Drop these objects (inode numbers) from every cache, the kernel's
    /// included, then call [`CacheAck::done`].
    Recall {
        /// What to drop.
        objects: Vec<ObjectId>,
        /// Sends the `RecallAck`.
        ack: CacheAck,
    },
    /// A new leader: drop everything cached (kernel included), then call
    /// [`CacheAck::done`]; no grant of that leader is trusted before.
    Reset {
        /// Lets the link go on to `CacheReset`.
        ack: CacheAck,
    },
}

impl CacheEvent {
    /// The acknowledgement, for a mount with nothing cached (it may answer
    /// at once).
    pub fn into_ack(self) -> CacheAck {
        match self {
            CacheEvent::Recall { ack, .. } | CacheEvent::Reset { ack } => ack,
        }
    }
}

/// The answer to one [`CacheEvent`]. Dropping it without [`done`](Self::done)
/// sends nothing: the node then waits for the lease to run out (safe, slow).
#[derive(Debug)]
pub struct CacheAck(AckKind);

#[derive(Debug)]
enum AckKind {
    Recall { cluster: Weak<Cluster>, runtime: tokio::runtime::Handle, replica: usize, client: ClientId, recall: RecallId },
    Reset(oneshot::Sender<()>),
}

impl CacheAck {
    /// The objects are dropped (kernel included): tell the node. Callable
    /// from any thread; never blocks (the RPC runs on the runtime, bounded
    /// by [`ATTEMPT_TIMEOUT`]).
    pub fn done(self) {
        match self.0 {
            AckKind::Recall { cluster, runtime, replica, client, recall } => {
                runtime.spawn(async move {
                    let Some(cluster) = cluster.upgrade() else { return };
                    match cluster.call(replica, &NodeRequest::RecallAck { client, recall }).await {
                        Some(NodeResponse::Ack) => debug!(replica, recall, "recall acknowledged"),
                        _ => debug!(replica, recall, "recall acknowledgement not delivered; the recall ends when the lease does"),
                    }
                });
            }
            AckKind::Reset(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

/// A read's answer, with what a caching mount may do with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReply {
    /// The state machine's answer.
    pub answer: Vec<u8>,
    /// The view of the leader that answered.
    pub view: ViewNumber,
    /// The callback granted with it, counted from when the read was first
    /// sent (the caller takes that time and trusts 90% of it): 0 unless the
    /// leader granted one and this mount has reset its cache with that
    /// leader (never for a non-caching cluster).
    pub lease_ms: Millis,
}

/// A write's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReply {
    /// The state machine's answer.
    pub answer: Vec<u8>,
    /// The view that committed it.
    pub view: ViewNumber,
    /// The objects it changed: the writer's own mount gets no recall for
    /// them and drops them itself.
    pub changed: Vec<ObjectId>,
}

/// The newest view a caching mount has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Newest {
    view: ViewNumber,
    leader: usize,
    /// Said by that leader itself while leading (its own answer, or its
    /// status): a CacheReset sent to it now counts.
    confirmed: bool,
}

/// The state a caching cluster's link task shares with the request path.
struct Link {
    /// The mount id: the client id of every session.
    client: ClientId,
    /// The newest view any reply or status showed, and the replica named as
    /// its leader (None: no reply yet).
    newest: std::sync::Mutex<Option<Newest>>,
    /// The view whose leader this mount reset its cache with: only its
    /// grants are passed on ([`NO_VIEW`]: none).
    trusted_view: AtomicU64,
    /// Wakes the link task (a newer view, a new connection, a failure).
    wake: Arc<Notify>,
    /// An attempt failed: the link should look for the leader.
    probe: AtomicBool,
    /// The leader of the trusted view answered Busy: it may be in its
    /// grace without our CacheReset (lost, or sent before it led).
    resend_reset: AtomicBool,
    /// Per replica: connections made so far (a subscription is per connection).
    conn_epochs: Vec<AtomicU64>,
    /// Where each new connection's pushes go.
    pushes: mpsc::Sender<(usize, Push)>,
}

/// Connections to every replica of a cluster, shared by sessions.
pub struct Cluster {
    endpoint: quinn::Endpoint,
    peers: Vec<SocketAddr>,
    conns: Vec<Mutex<Option<RpcClient>>>,
    /// Per replica: the queue of its batcher task (when batching).
    batchers: Vec<Option<mpsc::Sender<Pending>>>,
    leader_hint: AtomicUsize,
    client_id: AtomicU64,
    /// Present for a caching mount ([`Cluster::caching`]).
    link: Option<Link>,
    /// The last time a replica refused this client's certificate in the
    /// handshake (revoked, expired, unknown CA): what a session that gets
    /// no answer reports instead of a bare timeout.
    refusal: std::sync::Mutex<Option<String>>,
}

impl Cluster {
    /// A cluster client using the `client` certificate from `certs_dir`;
    /// every request is its own RPC.
    pub fn new(certs_dir: &Path, peers: Vec<SocketAddr>) -> Result<Arc<Cluster>, ClientError> {
        Cluster::build(certs_dir, peers, false, Role::Client)
    }

    /// Like [`new`](Self::new), presenting the admin certificate (operator
    /// requests such as [`NodeRequest::Checkpoint`]).
    pub fn admin(certs_dir: &Path, peers: Vec<SocketAddr>) -> Result<Arc<Cluster>, ClientError> {
        Cluster::build(certs_dir, peers, false, Role::Admin)
    }

    /// Like [`new`](Self::new), but requests of all sessions that wait at
    /// the same time travel together in batch RPCs (at most
    /// [`BATCH_REQUESTS_MAX`] each, [`BATCHES_IN_FLIGHT_MAX`] in flight per
    /// replica). Exactly-once is unaffected: each request keeps its own
    /// session and seq, and the node answers each one separately.
    pub fn batching(certs_dir: &Path, peers: Vec<SocketAddr>) -> Result<Arc<Cluster>, ClientError> {
        Cluster::build(certs_dir, peers, true, Role::Client)
    }

    /// A caching mount's cluster client (DESIGN.md §5): every session uses one
    /// random client id with [`CACHING_CLIENT_BIT`] (the mount id), and a link
    /// task (see the module comment) follows the leader: the receiver gets
    /// what the mount must drop. Until the mount answers the first
    /// [`CacheEvent::Reset`], no grant is passed on. Call inside a runtime.
    pub fn caching(certs_dir: &Path, peers: Vec<SocketAddr>) -> Result<(Arc<Cluster>, mpsc::Receiver<CacheEvent>), ClientError> {
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE_MAX);
        let link = Link {
            client: random_nonce() | CACHING_CLIENT_BIT,
            newest: std::sync::Mutex::new(None),
            trusted_view: AtomicU64::new(NO_VIEW),
            wake: Arc::new(Notify::new()),
            probe: AtomicBool::new(false),
            resend_reset: AtomicBool::new(false),
            conn_epochs: peers.iter().map(|_| AtomicU64::new(0)).collect(),
            pushes: push_tx,
        };
        let wake = link.wake.clone();
        let cluster = Cluster::build_with(certs_dir, peers, false, Role::Client, Some(link))?;
        let (event_tx, event_rx) = mpsc::channel(CACHE_EVENT_QUEUE_MAX);
        tokio::spawn(run_link(Arc::downgrade(&cluster), wake, push_rx, event_tx));
        Ok((cluster, event_rx))
    }

    /// The mount id of a caching cluster (None for others).
    pub fn mount_id(&self) -> Option<ClientId> {
        self.link.as_ref().map(|l| l.client)
    }

    /// Tells the leader this mount holds nothing any more (it was
    /// unmounted): its callbacks go, so no later change waits for a recall
    /// that nobody would answer. Best effort, bounded by [`ATTEMPT_TIMEOUT`]
    /// per replica asked: a lost one costs each such change one lease.
    pub async fn release_callbacks(&self) {
        let Some(link) = &self.link else { return };
        let leader = link.newest.lock().expect("link lock").map(|n| n.leader).unwrap_or_else(|| self.leader_hint());
        let _ = self.call(leader, &NodeRequest::Release { client: link.client }).await;
    }

    /// The newest view any reply (or, for a caching cluster, a status)
    /// showed so far: a higher one means a new leader.
    pub fn newest_view(&self) -> Option<ViewNumber> {
        self.link.as_ref().and_then(|l| l.newest.lock().expect("newest lock").map(|n| n.view))
    }

    /// The view whose grants this caching mount trusts (it reset its cache
    /// with that view's leader), if any.
    pub fn trusted_view(&self) -> Option<ViewNumber> {
        let v = self.link.as_ref()?.trusted_view.load(Ordering::SeqCst);
        (v != NO_VIEW).then_some(v)
    }

    fn trusts(&self, view: ViewNumber) -> bool {
        self.link.as_ref().is_some_and(|l| l.trusted_view.load(Ordering::SeqCst) == view)
    }

    /// A reply showed `view` with `leader` named (`confirmed`: by that
    /// leader itself, leading): a newer view wakes the link.
    fn note_view(&self, view: ViewNumber, leader: usize, confirmed: bool) {
        let Some(link) = &self.link else { return };
        if leader >= self.peers.len() {
            return;
        }
        let mut newest = link.newest.lock().expect("newest lock");
        let newer = newest.is_none_or(|n| view > n.view || (view == n.view && leader == n.leader && confirmed && !n.confirmed));
        if newer {
            *newest = Some(Newest { view, leader, confirmed });
            drop(newest);
            link.wake.notify_one();
        }
    }

    /// A `Busy` answer: from the leader of the view this mount reset with,
    /// it may mean the leader is in its grace without our `CacheReset`
    /// (docs/protocol.md §15 C4): have the link send it again.
    fn note_busy(&self, view: ViewNumber) {
        if let Some(link) = &self.link {
            if link.trusted_view.load(Ordering::SeqCst) == view {
                link.resend_reset.store(true, Ordering::SeqCst);
                link.wake.notify_one();
            }
        }
    }

    /// An attempt failed: the leader may have changed; let the link look.
    fn note_failure(&self) {
        if let Some(link) = &self.link {
            link.probe.store(true, Ordering::SeqCst);
            link.wake.notify_one();
        }
    }

    fn build(certs_dir: &Path, peers: Vec<SocketAddr>, batching: bool, role: Role) -> Result<Arc<Cluster>, ClientError> {
        Cluster::build_with(certs_dir, peers, batching, role, None)
    }

    fn build_with(
        certs_dir: &Path,
        peers: Vec<SocketAddr>,
        batching: bool,
        role: Role,
        link: Option<Link>,
    ) -> Result<Arc<Cluster>, ClientError> {
        let id = certs::load_identity(certs_dir, role).map_err(|e| ClientError::Setup(e.to_string()))?;
        let cfg = tls::client_config(&id).map_err(|e| ClientError::Setup(e.to_string()))?;
        let endpoint = endpoint::client(cfg, endpoint::client_bind_for(peers[0])).map_err(|e| ClientError::Setup(e.to_string()))?;
        let conns = peers.iter().map(|_| Mutex::new(None)).collect();
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        let mut receivers = Vec::new();
        let batchers = peers
            .iter()
            .map(|_| {
                if !batching {
                    return None;
                }
                let (tx, rx) = mpsc::channel(BATCH_QUEUE_MAX);
                receivers.push(rx);
                Some(tx)
            })
            .collect();
        let cluster = Arc::new(Cluster {
            endpoint,
            peers,
            conns,
            batchers,
            leader_hint: AtomicUsize::new(0),
            client_id: AtomicU64::new((seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ random_nonce()) | 1),
            link,
            refusal: std::sync::Mutex::new(None),
        });
        for (replica, rx) in receivers.into_iter().enumerate() {
            // The task holds a weak reference: it ends when the cluster is dropped.
            tokio::spawn(batcher(Arc::downgrade(&cluster), replica, rx));
        }
        Ok(cluster)
    }

    /// One attempt of one client request at `replica` (batched or not).
    async fn request(&self, replica: usize, request: &Request) -> Option<NodeResponse> {
        let Some(Some(queue)) = self.batchers.get(replica) else {
            return self.call(replica, &NodeRequest::Call(request.clone())).await;
        };
        let (tx, rx) = oneshot::channel();
        queue.send((request.clone(), tx)).await.ok()?;
        // The batcher bounds the RPC by ATTEMPT_TIMEOUT; this bounds the queue wait too.
        let reply = tokio::time::timeout(ATTEMPT_TIMEOUT * 2, rx).await.ok()?.ok()??;
        Some(NodeResponse::Reply(reply))
    }

    /// Number of replicas.
    pub fn replica_count(&self) -> usize {
        self.peers.len()
    }

    /// The replica believed to lead.
    pub fn leader_hint(&self) -> usize {
        self.leader_hint.load(Ordering::Relaxed)
    }

    async fn conn(&self, replica: usize) -> Option<RpcClient> {
        let mut slot = self.conns[replica].lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Some(c.clone());
            }
        }
        let fresh = match tokio::time::timeout(CONNECT_TIMEOUT, RpcClient::connect(&self.endpoint, self.peers[replica])).await.ok()? {
            Ok(fresh) => fresh,
            Err(e @ (WireError::CertRejectedByServer { .. } | WireError::ClientCertRequired)) => {
                warn!(replica, error = %e, "the replica refused this client's certificate");
                *self.refusal.lock().expect("refusal lock") = Some(e.to_string());
                return None;
            }
            Err(_) => return None,
        };
        if let Some(link) = &self.link {
            // The only subscriber of this connection's pushes; the forwarder
            // ends with the connection.
            match fresh.subscribe::<Push>() {
                Ok(pushes) => {
                    tokio::spawn(forward_pushes(replica, pushes, link.pushes.clone()));
                }
                Err(e) => warn!(replica, error = %e, "cannot receive pushes on a new connection"),
            }
            link.conn_epochs[replica].fetch_add(1, Ordering::SeqCst);
            link.wake.notify_one();
        }
        *slot = Some(fresh.clone());
        Some(fresh)
    }

    /// One RPC to `replica`, bounded by [`ATTEMPT_TIMEOUT`]; `None` on any failure.
    pub async fn call(&self, replica: usize, req: &NodeRequest) -> Option<NodeResponse> {
        self.call_within(replica, req, ATTEMPT_TIMEOUT).await
    }

    /// One RPC to `replica`, bounded by `timeout`; `None` on any failure.
    pub async fn call_within(&self, replica: usize, req: &NodeRequest, timeout: Duration) -> Option<NodeResponse> {
        let conn = self.conn(replica).await?;
        match tokio::time::timeout(timeout, conn.call::<NodeRequest, NodeResponse>(req)).await {
            Ok(Ok(r)) => Some(r),
            _ => None,
        }
    }

    /// Closes every connection politely (the replicas free them at once
    /// instead of after the idle timeout); bounded by a second.
    pub async fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Status of one replica without its digest (cheap, for polling).
    pub async fn progress(&self, replica: usize) -> Option<NodeStatus> {
        match self.call(replica, &NodeRequest::Progress).await? {
            NodeResponse::Status(s) => Some(s),
            _ => None,
        }
    }

    /// Takes a checkpoint on `replica` now (needs a [`Cluster::admin`]).
    pub async fn checkpoint(&self, replica: usize) -> Result<chorus_replication::Op, String> {
        match self.call_within(replica, &NodeRequest::Checkpoint, crate::node::STATUS_REPLY_WAIT).await {
            Some(NodeResponse::Checkpoint(op)) => Ok(op),
            Some(NodeResponse::Refused(why)) => Err(why),
            Some(_) => Err("unexpected answer".into()),
            None => Err("no answer in time".into()),
        }
    }

    /// Status of one replica.
    pub async fn status(&self, replica: usize) -> Option<NodeStatus> {
        // The digest reads the whole state: allow the node's status wait.
        match self.call_within(replica, &NodeRequest::Status, crate::node::STATUS_REPLY_WAIT).await? {
            NodeResponse::Status(s) => Some(s),
            _ => None,
        }
    }

    /// Sends `request` until a final reply arrives or `deadline` passes,
    /// following NotLeader redirections and rotating on failures. A replica
    /// that just failed an attempt is avoided for [`SUSPECT_FOR`], even if a
    /// follower that has not yet noticed names it as the leader.
    async fn submit(&self, request: Request, deadline: Instant) -> Result<Reply, ClientError> {
        self.submit_counted(request, deadline).await.map(|(reply, _)| reply)
    }

    /// [`submit`](Self::submit), also saying whether the reply answers the
    /// only copy of the request that may have reached a leader (no earlier
    /// attempt went unanswered).
    async fn submit_counted(&self, mut request: Request, deadline: Instant) -> Result<(Reply, bool), ClientError> {
        let mut unanswered_attempts = 0u32;
        let started = Instant::now();
        let n = self.peers.len();
        let mut failed_at: Vec<Option<Instant>> = vec![None; n];
        let suspected = |failed_at: &[Option<Instant>], r: usize| failed_at[r].is_some_and(|t| t.elapsed() < SUSPECT_FOR);
        let next_candidate = |failed_at: &[Option<Instant>], from: usize| {
            (1..=n).map(|k| (from + k) % n).find(|&r| !suspected(failed_at, r)).unwrap_or((from + 1) % n)
        };
        let mut target = self.leader_hint();
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(started.elapsed()));
            }
            match self.request(target, &request).await {
                Some(NodeResponse::Reply(reply)) => {
                    request.epoch = request.epoch.max(reply.view);
                    let by_leader = reply.leader as usize == target && !matches!(reply.outcome, Outcome::NotLeader);
                    self.note_view(reply.view, reply.leader as usize, by_leader);
                    match reply.outcome {
                        Outcome::NotLeader => {
                            let named = reply.leader as usize;
                            if named != target && named < n && !suspected(&failed_at, named) {
                                target = named;
                            } else {
                                // In a view change, or naming a replica that just
                                // failed us: let the view settle, ask another.
                                target = next_candidate(&failed_at, target);
                                tokio::time::sleep(REDIRECT_PAUSE).await;
                            }
                        }
                        Outcome::Busy => {
                            self.note_busy(reply.view);
                            tokio::time::sleep(RETRY_PAUSE).await
                        }
                        _ => {
                            self.leader_hint.store(target, Ordering::Relaxed);
                            return Ok((reply, unanswered_attempts == 0));
                        }
                    }
                }
                _ => {
                    // No answer: this copy may still run (or have run).
                    unanswered_attempts += 1;
                    let failed = target;
                    failed_at[failed] = Some(Instant::now());
                    target = next_candidate(&failed_at, failed);
                    // Steer other sessions away from the failed replica too.
                    let _ = self.leader_hint.compare_exchange(failed, target, Ordering::Relaxed, Ordering::Relaxed);
                    self.note_failure();
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Opens a session (registered through the log).
    pub async fn session(self: &Arc<Self>, deadline: Instant) -> Result<Session, ClientError> {
        let client = match &self.link {
            Some(link) => link.client,
            // One id for all sessions of this cluster handle: what one
            // session opens or locks (handles, locks), another may use and
            // release, and it all goes when the last session ends. Never a
            // caching id by accident: a new leader would wait for this
            // client to reset a cache it does not have.
            None => self.client_id.load(Ordering::Relaxed) & !CACHING_CLIENT_BIT,
        };
        // The nonce makes the session id unguessable (the core derives the
        // id from it) and lets a retried Register find its session.
        let request = Request { client, session: 0, seq: random_nonce(), low_water: 0, epoch: 0, operation: Operation::Register };
        let reply = match self.submit(request, deadline).await {
            Err(ClientError::Timeout(waited)) => match self.refusal.lock().expect("refusal lock").clone() {
                Some(refusal) => {
                    return Err(ClientError::Setup(format!("no answer within {waited:?}; the cluster refused this client: {refusal}")))
                }
                None => return Err(ClientError::Timeout(waited)),
            },
            other => other?,
        };
        match reply.outcome {
            Outcome::Registered(session) => Ok(Session { cluster: self.clone(), client, session, seq: 0, epoch: reply.view }),
            other => Err(ClientError::Refused(other)),
        }
    }
}

/// One client session: one request at a time, exactly once.
pub struct Session {
    cluster: Arc<Cluster>,
    client: u64,
    session: SessionId,
    seq: u64,
    epoch: ViewNumber,
}

impl Session {
    /// The session id.
    pub fn id(&self) -> SessionId {
        self.session
    }

    /// The final reply (its outcome `Done`) to one operation.
    async fn run(&mut self, operation: Operation, deadline: Instant) -> Result<(Vec<u8>, Reply), ClientError> {
        self.seq += 1;
        let request =
            Request { client: self.client, session: self.session, seq: self.seq, low_water: self.seq - 1, epoch: self.epoch, operation };
        let (mut reply, only_copy) = self.cluster.submit_counted(request, deadline).await?;
        self.epoch = self.epoch.max(reply.view);
        match std::mem::replace(&mut reply.outcome, Outcome::Busy) {
            Outcome::Done(bytes) => Ok((bytes, reply)),
            Outcome::SessionUnknown if !only_copy => Err(ClientError::OutcomeUnknown),
            other => Err(ClientError::Refused(other)),
        }
    }

    /// Submits a command; returns the state machine's reply once committed.
    pub async fn write(&mut self, command: Vec<u8>, deadline: Instant) -> Result<Vec<u8>, ClientError> {
        Ok(self.run(Operation::Write(command), deadline).await?.0)
    }

    /// Like [`write`](Self::write), also returning the view that committed it.
    pub async fn write_in_view(&mut self, command: Vec<u8>, deadline: Instant) -> Result<(Vec<u8>, ViewNumber), ClientError> {
        let (answer, reply) = self.run(Operation::Write(command), deadline).await?;
        Ok((answer, reply.view))
    }

    /// Like [`write`](Self::write), also returning what the write changed
    /// (for a caching mount, which is not recalled for its own changes).
    pub async fn write_tracked(&mut self, command: Vec<u8>, deadline: Instant) -> Result<WriteReply, ClientError> {
        let (answer, reply) = self.run(Operation::Write(command), deadline).await?;
        Ok(WriteReply { answer, view: reply.view, changed: reply.changed })
    }

    /// A linearizable read (lease or read barrier at the leader).
    pub async fn read(&mut self, query: Vec<u8>, deadline: Instant) -> Result<Vec<u8>, ClientError> {
        Ok(self.run(Operation::Read(query), deadline).await?.0)
    }

    /// Like [`read`](Self::read), also returning the callback granted with
    /// the answer, if this mount may trust it (see [`ReadReply::lease_ms`]).
    /// The caller takes the lease's start time before calling.
    pub async fn read_leased(&mut self, query: Vec<u8>, deadline: Instant) -> Result<ReadReply, ClientError> {
        let (answer, reply) = self.run(Operation::Read(query), deadline).await?;
        // Checked when the reply arrives: a reset for a newer view first
        // stops all trust, so a grant of a leader this mount has not reset
        // with (or of a deposed one) is never passed on.
        let lease_ms = if reply.lease_ms > 0 && self.cluster.trusts(reply.view) { reply.lease_ms } else { 0 };
        Ok(ReadReply { answer, view: reply.view, lease_ms })
    }
}

/// 64 random bits from the OS (through std's hash seeds: no extra crate).
fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// Hands one connection's pushes to the link task until the connection ends.
async fn forward_pushes(replica: usize, mut pushes: chorus_wire::rpc::PushReceiver<Push>, to: mpsc::Sender<(usize, Push)>) {
    while let Some(push) = pushes.recv().await {
        match push {
            // Waiting here when the link is behind is the backpressure.
            Ok(push) => {
                if to.send((replica, push)).await.is_err() {
                    return;
                }
            }
            Err(e) => warn!(replica, error = %e, "undecodable push from a node; ignored"),
        }
    }
}

/// What the link task has achieved with the current leader.
#[derive(Default)]
struct LinkState {
    /// The newest view the mount dropped its cache for.
    dropped_for: Option<ViewNumber>,
    /// (replica, connection epoch) of the subscription.
    subscribed: Option<(usize, u64)>,
    /// When the leader was last checked (heartbeat) or probed.
    checked_at: Option<Instant>,
    probed_at: Option<Instant>,
    /// A node refused callbacks: ask again only after this.
    refused_until: Option<Instant>,
}

/// The caching mount's link task (see the module comment). Ends when the
/// cluster is dropped or the mount stops listening.
async fn run_link(cluster: Weak<Cluster>, wake: Arc<Notify>, mut pushes: mpsc::Receiver<(usize, Push)>, events: mpsc::Sender<CacheEvent>) {
    let mut state = LinkState::default();
    let mut pause = Duration::ZERO;
    loop {
        // Wait (bounded) for something to do; hold no strong reference to
        // the cluster meanwhile, so dropping it ends this task.
        let push = tokio::select! {
            p = pushes.recv() => match p {
                Some(p) => Some(p),
                None => return,
            },
            _ = wake.notified() => None,
            _ = tokio::time::sleep(if pause.is_zero() { LINK_TICK } else { pause }) => None,
        };
        let Some(cluster) = cluster.upgrade() else { return };
        if let Some((replica, push)) = push {
            if !cluster.on_push(replica, push, &events).await {
                return;
            }
            continue;
        }
        pause = match cluster.link_step(&mut state, &events).await {
            Some(true) => Duration::ZERO,
            Some(false) => LINK_RETRY_PAUSE,
            None => return,
        };
    }
}

impl Cluster {
    fn link(&self) -> &Link {
        self.link.as_ref().expect("only caching clusters run a link")
    }

    /// A push: a recall becomes a [`CacheEvent::Recall`] whose ack answers
    /// the replica that sent it. False when the mount stopped listening.
    async fn on_push(self: &Arc<Self>, replica: usize, push: Push, events: &mpsc::Sender<CacheEvent>) -> bool {
        match push {
            Push::Recall { recall, objects, view } => {
                debug!(replica, recall, view, objects = objects.len(), "recall");
                // Views only grow: a recall shows one too (a new leader may
                // recall before this mount sent it anything).
                self.note_view(view, replica, true);
                let ack = CacheAck(AckKind::Recall {
                    cluster: Arc::downgrade(self),
                    runtime: tokio::runtime::Handle::current(),
                    replica,
                    client: self.link().client,
                    recall,
                });
                events.send(CacheEvent::Recall { objects, ack }).await.is_ok()
            }
        }
    }

    /// Every replica's status at once (each bounded by [`STATUS_TIMEOUT`]);
    /// the newest view in which a replica says it leads becomes `newest`.
    /// Returns at the first such answer: a dead replica does not hold it up.
    async fn probe_leader(self: &Arc<Self>) {
        let mut asks = tokio::task::JoinSet::new();
        for r in 0..self.peers.len() {
            let c = self.clone();
            asks.spawn(async move {
                match c.call_within(r, &NodeRequest::Progress, STATUS_TIMEOUT).await {
                    Some(NodeResponse::Status(s)) => Some(s),
                    _ => None,
                }
            });
        }
        while let Some(answer) = asks.join_next().await {
            if let Ok(Some(s)) = answer {
                if s.status == "normal" && s.leader == s.id {
                    self.note_view(s.view, s.leader as usize, true);
                    return;
                }
            }
        }
    }

    /// One replica's status, bounded by [`STATUS_TIMEOUT`].
    async fn quick_status(&self, replica: usize) -> Option<NodeStatus> {
        match self.call_within(replica, &NodeRequest::Progress, STATUS_TIMEOUT).await? {
            NodeResponse::Status(s) => Some(s),
            _ => None,
        }
    }

    /// One step towards being reset and subscribed with the newest leader.
    /// Some(true): nothing left to do (or done); Some(false): try again
    /// soon; None: the mount stopped listening.
    async fn link_step(self: &Arc<Self>, st: &mut LinkState, events: &mpsc::Sender<CacheEvent>) -> Option<bool> {
        let link = self.link();
        let now = Instant::now();
        let probe_due = st.probed_at.is_none_or(|t| now.duration_since(t) >= PROBE_SPACING);
        let resend = link.resend_reset.load(Ordering::SeqCst);
        if (link.probe.load(Ordering::SeqCst) || resend) && probe_due {
            st.probed_at = Some(now);
            if link.probe.swap(false, Ordering::SeqCst) {
                self.probe_leader().await;
            }
            // A request timed out or was answered Busy: the leader may not
            // have taken an earlier CacheReset (lost, or it was not leading
            // yet) and be in its grace. Sending it again is harmless: this
            // mount holds nothing from earlier leaders.
            link.resend_reset.store(false, Ordering::SeqCst);
            let newest = *link.newest.lock().expect("newest lock");
            if let (Some(trusted), Some(n)) = (self.trusted_view(), newest) {
                if trusted == n.view {
                    let _ = self.call(n.leader, &NodeRequest::CacheReset { client: link.client }).await;
                }
            }
        }
        let Some(Newest { view, leader, confirmed }) = *link.newest.lock().expect("newest lock") else {
            if probe_due {
                st.probed_at = Some(now);
                self.probe_leader().await;
            }
            return Some(false);
        };
        if st.refused_until.is_some_and(|t| now < t) {
            return Some(true);
        }
        // 1. A new leader: stop trusting, and have the mount drop everything.
        if st.dropped_for.is_none_or(|v| v < view) {
            link.trusted_view.store(NO_VIEW, Ordering::SeqCst);
            let (tx, rx) = oneshot::channel();
            events.send(CacheEvent::Reset { ack: CacheAck(AckKind::Reset(tx)) }).await.ok()?;
            match tokio::time::timeout(RESET_WAIT, rx).await {
                Ok(Ok(())) => st.dropped_for = Some(view),
                _ => {
                    warn!(view, "the mount did not drop its cache in time; trying again");
                    return Some(false);
                }
            }
        }
        // 2. Make sure that replica leads that view (a CacheReset sent to a
        //    replica not yet leading is ignored) unless it said so itself;
        //    and on a heartbeat, so an idle mount meets a new leader too.
        let trusted = self.trusted_view() == Some(view);
        let epoch = link.conn_epochs[leader].load(Ordering::SeqCst);
        let subscribed = st.subscribed == Some((leader, epoch)) && self.connected(leader).await;
        let heartbeat_due = st.checked_at.is_none_or(|t| now.duration_since(t) >= LINK_TICK);
        if (!trusted && !confirmed) || heartbeat_due {
            st.checked_at = Some(now);
            match self.quick_status(leader).await {
                Some(s) if s.view == view && s.status == "normal" && s.leader as usize == leader => {
                    self.note_view(view, leader, true);
                }
                Some(s) if s.view > view => {
                    self.note_view(s.view, s.leader as usize, s.status == "normal" && s.leader == s.id);
                    return Some(false);
                }
                _ => {
                    link.probe.store(true, Ordering::SeqCst);
                    return Some(false);
                }
            }
        }
        // 3. Subscribe on the leader's current connection.
        if !subscribed {
            match self.call(leader, &NodeRequest::Subscribe { client: link.client }).await {
                // Only if the call went out on the connection counted
                // before it: otherwise subscribe again next round.
                Some(NodeResponse::Ack) if link.conn_epochs[leader].load(Ordering::SeqCst) == epoch => {
                    st.subscribed = Some((leader, epoch));
                }
                Some(NodeResponse::Refused(why)) => return Some(self.refused(st, leader, &why)),
                _ => return Some(false),
            }
        }
        // 4. CacheReset; from now on this view's grants are trusted.
        if !trusted {
            match self.call(leader, &NodeRequest::CacheReset { client: link.client }).await {
                Some(NodeResponse::Ack) => {
                    link.trusted_view.store(view, Ordering::SeqCst);
                    info!(view, leader, "caching with this leader's callbacks");
                }
                Some(NodeResponse::Refused(why)) => return Some(self.refused(st, leader, &why)),
                _ => return Some(false),
            }
        }
        Some(true)
    }

    fn refused(&self, st: &mut LinkState, leader: usize, why: &str) -> bool {
        warn!(leader, why, "the cluster refused callbacks; the mount works uncached for now");
        st.refused_until = Some(Instant::now() + REFUSED_RETRY);
        st.subscribed = None;
        true
    }

    /// Whether the connection to `replica` is up (without making one).
    async fn connected(&self, replica: usize) -> bool {
        self.conns[replica].lock().await.as_ref().is_some_and(|c| !c.is_closed())
    }
}

/// Gathers the requests waiting for `replica` into batch RPCs.
async fn batcher(cluster: std::sync::Weak<Cluster>, replica: usize, mut queue: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Some(first) = queue.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH_REQUESTS_MAX {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(cluster) = cluster.upgrade() else { return };
        tokio::spawn(async move {
            let _permit = permit;
            let (requests, waiters): (Vec<Request>, Vec<oneshot::Sender<Option<Reply>>>) = batch.into_iter().unzip();
            let replies = match cluster.call(replica, &NodeRequest::Batch(requests)).await {
                Some(NodeResponse::Batch(replies)) => replies,
                _ => Vec::new(),
            };
            let mut replies = replies.into_iter();
            for waiter in waiters {
                let _ = waiter.send(replies.next().flatten());
            }
        });
    }
}
