//! One replica process: QUIC endpoint, peer transport, client RPC, driver.
//!
//! Guarantees:
//! - One UDP socket per replica serves everything: peers (certificate
//!   `replica-j`) get the replica transport, clients and admins (any other
//!   certificate of the cluster) get RPC; unknown certificates never get
//!   past the TLS handshake (chorus-wire).
//! - Certificates on the certificates folder's revocation list
//!   (`chorus_wire::revoke`) are refused in the handshake, and a client
//!   connection whose certificate is revoked later is closed at its next
//!   request; [`NodeConfig::admit`] maps every client request (what its
//!   certificate may claim) before the core sees it.
//! - Per client certificate ([`chorus_wire::quota`]): at most 32
//!   connections, one budget of request bytes shared by its connections,
//!   at most 1024 requests waiting for the core, and registrations through
//!   a token bucket; beyond, `Busy` before anything is ordered (local
//!   admission, never replicated state). Connection slots are taken after
//!   the handshake; handshakes are bounded apart ([`rpc::Handshakes`]); a
//!   client connection idle for [`CLIENT_IDLE_CLOSE`] is closed.
//! - At most [`CONNECTIONS_MAX`] client connections at once; each client call
//!   waits at most [`CLIENT_REPLY_WAIT`] for the core's reply, then answers
//!   [`NodeResponse::NoReply`] (the client retries with the same seq).
//!
//! Assumes: `data_dir` was initialized with [`crate::disk::init`] for a
//! brand-new universe; an uninitialized directory is treated as a lost disk
//! (the core recovers it from the group).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chorus_replication::{Config, Event, Message, Operation, ReplicaId, StateMachine};
use chorus_wire::certs::{self, CertInfo, Role};
use chorus_wire::quota::{CertQuota, Limits, Quotas};
use chorus_wire::revoke::RevocationList;
use chorus_wire::{endpoint, rpc, tls};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{info, warn};

use crate::api::{NodeRequest, NodeResponse, NodeStatus, BATCH_REQUESTS_MAX};
use crate::checkpoint::Fetcher;
use crate::driver::{self, Call, Subscribers, CLIENT_CALLS_QUEUE_MAX};
use crate::log::SEGMENT_BYTES_DEFAULT;
use crate::transport::Transport;

/// Client connections served at once.
pub const CONNECTIONS_MAX: usize = 1024;
/// Longest a client request waits for its certificate's waiter quota
/// ([`chorus_wire::quota::Limits::waiters`]) before it is answered Busy.
pub const QUOTA_WAIT: Duration = Duration::from_millis(400);
/// A client connection with no request for this long is closed (clients
/// reconnect on demand); keep-alives alone would keep it open forever.
pub const CLIENT_IDLE_CLOSE: Duration = Duration::from_secs(600);
/// Longest a client call waits for the core's reply.
pub const CLIENT_REPLY_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for a status answer: its digest reads the whole state (off
/// the event loop), about a second per GiB.
pub const STATUS_REPLY_WAIT: Duration = Duration::from_secs(10);
/// Longest a batch waits for the core's replies; shorter than the client's
/// attempt timeout, so the client gets the replies that did come and retries
/// only the rest.
pub const BATCH_REPLY_WAIT: Duration = Duration::from_millis(400);

/// Application close code of a connection whose certificate was revoked.
pub const CLOSE_REVOKED: u32 = 0x52;

/// Checkpoint interval the shell runs the core with (the core's default is
/// 4096). Why smaller: the core's view-change messages (DoViewChange,
/// StartView) carry the whole retained log, which is one to two checkpoint
/// intervals long. At 4096 entries of ~16 commands that is ~9 MB per message,
/// and encoding, sending and decoding it takes longer than the view-change
/// timeout on this 2-core machine: a failover under load then never
/// converges (measured: hundreds of views). 512 keeps those messages near
/// 1 MB at the price of more frequent (small) checkpoints.
pub const CHECKPOINT_INTERVAL_OPS: u64 = 512;

/// The core configuration the shell uses for a universe of `replicas`: the
/// core's defaults (timeouts included) except [`CHECKPOINT_INTERVAL_OPS`].
pub fn core_config(replicas: u8) -> Config {
    let mut config = Config::new(replicas);
    config.checkpoint_interval_ops = CHECKPOINT_INTERVAL_OPS;
    // Repair runs are bounded by bytes (repair_bytes_max); many small
    // entries per message let a replica far behind catch up quickly.
    config.entries_per_message_max = 512;
    config
}

/// Collapses queued copies of the large view-change and state-transfer
/// messages (see [`crate::transport::SupersedeKey`]): a later DoViewChange or
/// StartView for the same view, or NewState, makes an earlier queued one useless.
pub fn supersede_key(message: &Message) -> Option<u64> {
    const VIEW_BITS: u64 = (1 << 56) - 1;
    match message {
        Message::DoViewChange { view, .. } => Some((1 << 56) | (view & VIEW_BITS)),
        Message::StartView { view, .. } => Some((2 << 56) | (view & VIEW_BITS)),
        Message::NewState { view, .. } => Some((3 << 56) | (view & VIEW_BITS)),
        _ => None,
    }
}

/// Everything a node needs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This replica.
    pub id: ReplicaId,
    /// Address of every replica of U, by id.
    pub peers: Vec<SocketAddr>,
    /// Directory of the cluster certificates.
    pub certs_dir: PathBuf,
    /// Directory of this replica's log.
    pub data_dir: PathBuf,
    /// The core's configuration.
    pub core: Config,
    /// Seed of the core's random source.
    pub seed: u64,
    /// Where the state machine keeps checkpoints by reference (see
    /// [`crate::checkpoint`]): served to other replicas, fetched into for
    /// state transfer. None for machines whose checkpoints are images.
    pub checkpoints_dir: Option<PathBuf>,
    /// Free bytes this replica keeps in reserve on the disk of `data_dir`:
    /// below it, as leader, it refuses commands that would grow the state
    /// (ENOSPC for the file system), so replicas do not run out.
    pub disk_reserve_bytes: u64,
    /// Maps every client request's operation before the core sees it, given
    /// the client's (verified) certificate: e.g. the file system squashes
    /// root for certificates not trusted as root. None: passed as sent.
    pub admit: Option<AdmitFn>,
}

/// See [`NodeConfig::admit`]. Must be a pure function of its arguments (a
/// retried request must map to the same bytes).
pub type AdmitFn = fn(&CertInfo, &mut Operation);

/// Default [`NodeConfig::disk_reserve_bytes`].
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Runs a node until `shutdown` becomes true.
pub async fn run<S: StateMachine + Send + 'static>(cfg: NodeConfig, machine: S, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let n = cfg.peers.len();
    anyhow::ensure!(n == cfg.core.replica_count as usize, "{} peer addresses for a universe of {}", n, cfg.core.replica_count);
    let identity = certs::load_identity(&cfg.certs_dir, Role::Replica(cfg.id as usize))?;
    let listen = cfg.peers[cfg.id as usize];
    let revoked = Arc::new(RevocationList::in_certs_dir(&cfg.certs_dir));
    let mut ep = endpoint::server(listen, tls::server_config_revoking(&identity, Some(revoked.clone()))?)?;
    ep.set_default_client_config(tls::client_config(&identity)?);

    let (log, durable) = {
        let dir = cfg.data_dir.clone();
        let (id, count) = (cfg.id, cfg.core.replica_count);
        tokio::task::spawn_blocking(move || crate::disk::open(&dir, SEGMENT_BYTES_DEFAULT, id, count)).await??
    };
    info!(replica = cfg.id, %listen, entries = durable.entries.len(), superblock = ?durable.superblock, "log recovered");

    let (transport, inbound) = Transport::<Message>::start(ep.clone(), cfg.id, &cfg.peers, supersede_key, crate::fastenc::encode_message);
    let (calls_tx, calls_rx) = mpsc::channel(CLIENT_CALLS_QUEUE_MAX);
    let fetcher = cfg.checkpoints_dir.clone().map(|root| Fetcher::new(root, ep.clone(), cfg.peers.clone()));
    let subscribers: Subscribers = Arc::default();
    let clients = ClientPolicy { admit: cfg.admit, revoked };
    let accept =
        tokio::spawn(accept_loop(ep.clone(), transport.clone(), calls_tx, cfg.checkpoints_dir.clone(), subscribers.clone(), clients));
    let disk = crate::disk_space::DiskGuard::new(cfg.data_dir.clone(), cfg.disk_reserve_bytes);
    let result =
        driver::run(cfg.core, cfg.id, durable, log, machine, cfg.seed, transport, inbound, calls_rx, shutdown, fetcher, disk, subscribers)
            .await;
    accept.abort();
    ep.close(0u32.into(), b"replica stopping");
    result.map_err(Into::into)
}

/// What client connections are held to.
#[derive(Clone)]
struct ClientPolicy {
    admit: Option<AdmitFn>,
    revoked: Arc<RevocationList>,
}

impl ClientPolicy {
    /// None: the certificate was revoked since the handshake (the caller
    /// closes the connection); otherwise `req` with every request mapped.
    fn admit(&self, cert: &CertInfo, mut req: NodeRequest) -> Option<NodeRequest> {
        if self.revoked.is_revoked(&cert.fingerprint) {
            return None;
        }
        if let Some(admit) = self.admit {
            match &mut req {
                NodeRequest::Call(request) => admit(cert, &mut request.operation),
                NodeRequest::Batch(requests) => requests.iter_mut().for_each(|r| admit(cert, &mut r.operation)),
                _ => {}
            }
        }
        Some(req)
    }
}

async fn accept_loop(
    ep: quinn::Endpoint,
    transport: Arc<Transport<Message>>,
    calls: mpsc::Sender<Call>,
    checkpoints: Option<PathBuf>,
    subscribers: Subscribers,
    policy: ClientPolicy,
) {
    let clients = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    // Slots are taken after the handshake; handshakes are bounded apart.
    let handshakes = rpc::Handshakes::new(rpc::HANDSHAKES_MAX);
    let quotas = Quotas::new(Limits::default());
    while let Some(incoming) = ep.accept().await {
        let Some(handshake) = handshakes.admit(incoming) else { continue };
        let quotas = quotas.clone();
        let transport = transport.clone();
        let calls = calls.clone();
        let clients = clients.clone();
        let checkpoints = checkpoints.clone();
        let subscribers = subscribers.clone();
        let policy = policy.clone();
        tokio::spawn(async move {
            let Ok(conn) = handshake.complete().await else { return };
            match certs::peer_role(&conn) {
                Some(Role::Replica(j)) if j <= u8::MAX as usize => {
                    tls::widen_for_peer(&conn);
                    // Checkpoint files travel on bidirectional streams of
                    // the same kind of connection, beside the messages.
                    if let Some(root) = checkpoints {
                        tokio::spawn(crate::checkpoint::serve(conn.clone(), root));
                    }
                    transport.serve_peer(conn, j as u8).await
                }
                Some(role) => {
                    let admin = role == Role::Admin;
                    let clients_in_use = clients.clone();
                    let Ok(_permit) = clients.try_acquire_owned() else {
                        warn!("too many client connections; refusing one");
                        conn.close(rpc::CLOSE_BUSY, b"too many connections");
                        return;
                    };
                    let peer = conn.remote_address();
                    let Some(cert) = certs::peer_cert(&conn) else {
                        conn.close(rpc::CLOSE_PROTOCOL_VIOLATION, b"no certificate");
                        return;
                    };
                    // Per-client quotas: a client is its certificate.
                    let slot = match quotas.connect(&cert.fingerprint) {
                        Ok(slot) => slot,
                        Err(e) => {
                            warn!(%peer, cert = %cert.label(), error = %e, "refusing a client connection");
                            conn.close(rpc::CLOSE_BUSY, e.to_string().as_bytes());
                            return;
                        }
                    };
                    let quota = slot.quota().clone();
                    let options = rpc::ServeOptions { budget: quota.budget(), idle_close: Some(CLIENT_IDLE_CLOSE) };
                    // Recalls for a mount subscribed here go out on this
                    // connection (server push).
                    let push = rpc::ServerConn::new(conn.clone());
                    let handler = move |req: NodeRequest| {
                        let calls = calls.clone();
                        let clients = clients_in_use.clone();
                        let (push, subscribers, quota) = (push.clone(), subscribers.clone(), quota.clone());
                        let req = policy.admit(&cert, req);
                        let label = cert.label();
                        async move {
                            let Some(req) = req else {
                                warn!(%peer, cert = %label, "closing the connection of a revoked certificate");
                                push.connection().close(CLOSE_REVOKED.into(), b"this client's certificate was revoked");
                                return NodeResponse::Refused("this client's certificate was revoked".into());
                            };
                            match handle(calls, req, admin, Some(push), &subscribers, &quota).await {
                                NodeResponse::Status(s) => NodeResponse::Status(NodeStatus {
                                    clients: (CONNECTIONS_MAX - clients.available_permits()) as u64,
                                    ..s
                                }),
                                other => other,
                            }
                        }
                    };
                    if let Err(e) = rpc::serve_connection_with(conn, options, handler).await {
                        warn!(%peer, error = %e, "client connection closed with error");
                    }
                    drop(slot);
                }
                None => conn.close(rpc::CLOSE_PROTOCOL_VIOLATION, b"no role"),
            }
        });
    }
}

/// Whether this node leads a normal view now (registration quotas are
/// spent only where a Register would be ordered).
async fn leads(calls: &mpsc::Sender<Call>) -> bool {
    let (tx, rx) = oneshot::channel();
    if calls.send(Call::Progress(tx)).await.is_err() {
        return false;
    }
    match tokio::time::timeout(CLIENT_REPLY_WAIT, rx).await {
        Ok(Ok(status)) => status.status == "normal" && status.leader == status.id,
        _ => false,
    }
}

/// A `Busy` answer from this node's admission (the request was not queued):
/// no view or leader is claimed (the leader id is out of range).
fn busy(request: &chorus_replication::Request) -> chorus_replication::Reply {
    chorus_replication::Reply {
        session: request.session,
        seq: request.seq,
        view: request.epoch,
        leader: ReplicaId::MAX,
        outcome: chorus_replication::Outcome::Busy,
        lease_ms: 0,
        changed: Vec::new(),
    }
}

async fn callback(calls: mpsc::Sender<Call>, event: Event) -> NodeResponse {
    match calls.send(Call::Callback(event)).await {
        Ok(()) => NodeResponse::Ack,
        Err(_) => NodeResponse::NoReply,
    }
}

async fn handle(
    calls: mpsc::Sender<Call>,
    req: NodeRequest,
    admin: bool,
    push: Option<rpc::ServerConn>,
    subscribers: &Subscribers,
    quota: &CertQuota,
) -> NodeResponse {
    match req {
        NodeRequest::Checkpoint if !admin => {
            NodeResponse::Refused("taking a checkpoint needs the admin certificate (certs/admin.*)".into())
        }
        NodeRequest::Checkpoint => {
            let (tx, rx) = oneshot::channel();
            if calls.send(Call::Checkpoint(tx)).await.is_err() {
                return NodeResponse::NoReply;
            }
            match tokio::time::timeout(STATUS_REPLY_WAIT, rx).await {
                Ok(Ok(op)) => NodeResponse::Checkpoint(op),
                _ => NodeResponse::NoReply,
            }
        }
        NodeRequest::Call(request) => {
            // Admission before ordering (local, never in the replicated
            // state): this certificate's registrations and waiters.
            if request.operation == Operation::Register && leads(&calls).await && !quota.try_register() {
                return NodeResponse::Reply(busy(&request));
            }
            let Ok(Ok(_waiter)) = tokio::time::timeout(QUOTA_WAIT, quota.waiters().acquire_owned()).await else {
                return NodeResponse::Reply(busy(&request));
            };
            let (tx, rx) = oneshot::channel();
            if calls.send(Call::Request(request, tx)).await.is_err() {
                return NodeResponse::NoReply;
            }
            match tokio::time::timeout(CLIENT_REPLY_WAIT, rx).await {
                Ok(Ok(reply)) => NodeResponse::Reply(reply),
                _ => NodeResponse::NoReply,
            }
        }
        NodeRequest::Batch(requests) => {
            let deadline = tokio::time::Instant::now() + BATCH_REPLY_WAIT;
            let count = requests.len().min(BATCH_REQUESTS_MAX);
            let mut replies = Vec::with_capacity(count);
            let Ok(Ok(_waiters)) = tokio::time::timeout(QUOTA_WAIT, quota.waiters().acquire_many_owned(count as u32)).await else {
                replies.resize(count, None);
                return NodeResponse::Batch(replies);
            };
            let mut waiting = Vec::with_capacity(count);
            // Only the leader spends registrations (a follower's core answers NotLeader).
            let leader = requests.iter().any(|r| r.operation == Operation::Register) && leads(&calls).await;
            for request in requests.into_iter().take(BATCH_REQUESTS_MAX) {
                if leader && request.operation == Operation::Register && !quota.try_register() {
                    waiting.push(Err(busy(&request)));
                    continue;
                }
                let (tx, rx) = oneshot::channel();
                if calls.send(Call::Request(request, tx)).await.is_err() {
                    break;
                }
                waiting.push(Ok(rx));
            }
            for waiter in waiting {
                replies.push(match waiter {
                    Ok(rx) => tokio::time::timeout_at(deadline, rx).await.ok().and_then(Result::ok),
                    Err(busy) => Some(busy),
                });
            }
            replies.resize(count, None);
            NodeResponse::Batch(replies)
        }
        NodeRequest::Progress => {
            let (tx, rx) = oneshot::channel();
            if calls.send(Call::Progress(tx)).await.is_err() {
                return NodeResponse::NoReply;
            }
            match tokio::time::timeout(CLIENT_REPLY_WAIT, rx).await {
                Ok(Ok(status)) => NodeResponse::Status(status),
                _ => NodeResponse::NoReply,
            }
        }
        NodeRequest::Subscribe { client } => {
            let Some(push) = push else { return NodeResponse::Refused("this connection cannot take pushes".into()) };
            if !chorus_replication::is_caching_client(client) {
                return NodeResponse::Refused(format!("client {client:#x} is not a caching client id"));
            }
            let mut subs = subscribers.lock().expect("subscribers lock");
            // Bounded like the connections: closed ones go first.
            subs.retain(|_, c| !c.is_closed());
            if subs.len() >= CONNECTIONS_MAX && !subs.contains_key(&client) {
                return NodeResponse::Refused("too many subscribed mounts".into());
            }
            subs.insert(client, push);
            NodeResponse::Ack
        }
        NodeRequest::RecallAck { client, recall } => callback(calls, Event::RecallAck { client, recall }).await,
        NodeRequest::CacheReset { client } => callback(calls, Event::CacheReset { client }).await,
        NodeRequest::Release { client } => callback(calls, Event::Release { client }).await,
        NodeRequest::Status => {
            let (tx, rx) = oneshot::channel();
            if calls.send(Call::Status(tx)).await.is_err() {
                return NodeResponse::NoReply;
            }
            match tokio::time::timeout(STATUS_REPLY_WAIT, rx).await {
                Ok(Ok(status)) => NodeResponse::Status(status),
                _ => NodeResponse::NoReply,
            }
        }
    }
}
