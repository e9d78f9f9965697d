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
//! Assumes: one request in flight per [`Session`] (a closed loop; the
//! benchmark gets concurrency from many sessions).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_replication::{Operation, Outcome, Reply, Request, SessionId, ViewNumber};
use chorus_wire::certs::{self, Role};
use chorus_wire::rpc::RpcClient;
use chorus_wire::{endpoint, tls};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};

use crate::api::{NodeRequest, NodeResponse, NodeStatus};

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

/// Connections to every replica of a cluster, shared by sessions.
pub struct Cluster {
    endpoint: quinn::Endpoint,
    peers: Vec<SocketAddr>,
    conns: Vec<Mutex<Option<RpcClient>>>,
    /// Per replica: the queue of its batcher task (when batching).
    batchers: Vec<Option<mpsc::Sender<Pending>>>,
    leader_hint: AtomicUsize,
    client_ids: AtomicU64,
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

    fn build(certs_dir: &Path, peers: Vec<SocketAddr>, batching: bool, role: Role) -> Result<Arc<Cluster>, ClientError> {
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
            client_ids: AtomicU64::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
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
        let fresh = tokio::time::timeout(CONNECT_TIMEOUT, RpcClient::connect(&self.endpoint, self.peers[replica])).await.ok()?.ok()?;
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
                        Outcome::Busy => tokio::time::sleep(RETRY_PAUSE).await,
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
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Opens a session (registered through the log).
    pub async fn session(self: &Arc<Self>, deadline: Instant) -> Result<Session, ClientError> {
        let client = self.client_ids.fetch_add(1, Ordering::Relaxed);
        // The nonce makes the session id unguessable (the core derives the
        // id from it) and lets a retried Register find its session.
        let request = Request { client, session: 0, seq: random_nonce(), low_water: 0, epoch: 0, operation: Operation::Register };
        let reply = self.submit(request, deadline).await?;
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

    async fn run(&mut self, operation: Operation, deadline: Instant) -> Result<(Vec<u8>, ViewNumber), ClientError> {
        self.seq += 1;
        let request =
            Request { client: self.client, session: self.session, seq: self.seq, low_water: self.seq - 1, epoch: self.epoch, operation };
        let (reply, only_copy) = self.cluster.submit_counted(request, deadline).await?;
        self.epoch = self.epoch.max(reply.view);
        match reply.outcome {
            Outcome::Done(bytes) => Ok((bytes, reply.view)),
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
        self.run(Operation::Write(command), deadline).await
    }

    /// A linearizable read (lease or read barrier at the leader).
    pub async fn read(&mut self, query: Vec<u8>, deadline: Instant) -> Result<Vec<u8>, ClientError> {
        Ok(self.run(Operation::Read(query), deadline).await?.0)
    }
}

/// 64 random bits from the OS (through std's hash seeds: no extra crate).
fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
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
