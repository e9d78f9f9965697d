//! Replica-to-replica messages over QUIC with mutual TLS (chorus-wire).
//!
//! Guarantees:
//! - Only peers presenting a certificate of this cluster for `replica-j`
//!   (j in U, j ≠ self) are heard; the outgoing connection to replica j
//!   verifies the server as `replica-j.chorus`, so a message is never handed
//!   to the wrong replica, and an inbound message's sender is the verified
//!   certificate's replica id, never a field the peer chose.
//! - Best effort, in order per peer while a connection lasts: each replica
//!   keeps one outgoing connection per peer with one long-lived
//!   unidirectional stream carrying bounded frames ([`chorus_wire::frame`]).
//!   A message that cannot be queued (the peer's queue of
//!   [`PEER_QUEUE_MESSAGES_MAX`] is full, e.g. the peer is down) is dropped
//!   and counted: the replication protocol tolerates loss and retransmits.
//! - Reconnection with bounded exponential backoff
//!   ([`RECONNECT_BACKOFF_MIN`]..[`RECONNECT_BACKOFF_MAX`]), each attempt
//!   bounded by [`CONNECT_TIMEOUT`].
//! - Inbound messages reach the driver through one bounded channel
//!   ([`INBOUND_MESSAGES_MAX`]); when it is full the reading task waits, so
//!   QUIC flow control slows the sender (backpressure, not unbounded memory).
//! - A malformed frame or undecodable message closes that connection only.
//!
//! Assumes: a tokio runtime; `M` encodes with chorus-wire's codec within
//! its frame bound (the core bounds every message).
//!
//! Why one uni stream per direction, not RPC: replica messages are one-way
//! (answers are other messages, possibly to someone else), and a single
//! ordered stream per peer batches many small messages per packet.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chorus_wire::certs::Role;
use chorus_wire::{codec, frame};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Replica ids, as in the core.
pub type PeerId = u8;

/// Messages queued for one peer before new ones are dropped.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;
/// Messages received from all peers and not yet taken by the driver.
pub const INBOUND_MESSAGES_MAX: usize = 8192;
/// Bytes of frames gathered into one write on a peer stream.
pub const WRITE_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Largest replica message (see [`frame::PEER_PAYLOAD_BYTES_MAX`]).
pub const PEER_MESSAGE_BYTES_MAX: usize = frame::PEER_PAYLOAD_BYTES_MAX - 1024;
/// Messages at least this large are traced (view change carries logs).
pub const LARGE_MESSAGE_BYTES: usize = 1024 * 1024;
/// Longest wait for one connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait after a failed connection attempt.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest wait between connection attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Counters for status and benchmarks.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages dropped because a peer queue was full.
    pub dropped: AtomicU64,
    /// Messages handed to a peer queue.
    pub queued: AtomicU64,
    /// Messages received and delivered to the driver.
    pub received: AtomicU64,
    /// Messages not sent because a later queued one superseded them.
    pub superseded: AtomicU64,
    /// Outgoing connections established (first + reconnects).
    pub connects: AtomicU64,
}

/// Messages taken from a peer queue per write (then superseded ones dropped).
pub const PEER_BATCH_MESSAGES_MAX: usize = 256;

/// Says which queued messages a later one makes useless: messages with the
/// same key, queued for the same peer, are collapsed to the last one before
/// encoding. `None`: never superseded. Why: a replica retransmits its view
/// change messages (which carry logs, megabytes) every retry interval; if a
/// slow link or a slow peer lets them pile up, encoding and sending stale
/// copies only delays the fresh one.
pub type SupersedeKey<M> = fn(&M) -> Option<u64>;

/// Encodes a message into a frame payload (e.g. `chorus_wire::codec::to_bytes`,
/// or a faster byte-identical encoder, see [`crate::fastenc`]).
pub type Encoder<M> = fn(&M) -> Result<Vec<u8>, chorus_wire::WireError>;

/// A message on its way to one or more peers, with its frame encoded at
/// most once.
pub struct Outgoing<M> {
    message: M,
    frame: std::sync::OnceLock<Option<Vec<u8>>>,
}

impl<M> Outgoing<M> {
    /// Wraps a message for [`Transport::send_shared`].
    pub fn new(message: M) -> Arc<Outgoing<M>> {
        Arc::new(Outgoing { message, frame: std::sync::OnceLock::new() })
    }

    /// The message.
    pub fn message(&self) -> &M {
        &self.message
    }
}

/// Sending half: one bounded queue per peer.
pub struct Transport<M> {
    me: PeerId,
    outboxes: Vec<Option<mpsc::Sender<Arc<Outgoing<M>>>>>,
    inbound: mpsc::Sender<(PeerId, M)>,
    /// Shared counters.
    pub stats: Arc<TransportStats>,
    _marker: PhantomData<fn(M)>,
}

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts one sender task per peer on `endpoint` (which must carry a
    /// client configuration with this replica's certificate) and returns the
    /// transport plus the receiver of inbound messages. `peers[j]` is
    /// replica j's address; `peers[me]` is ours and unused.
    pub fn start(
        endpoint: quinn::Endpoint,
        me: PeerId,
        peers: &[SocketAddr],
        supersede: SupersedeKey<M>,
        encode: Encoder<M>,
    ) -> (Arc<Transport<M>>, mpsc::Receiver<(PeerId, M)>) {
        assert!((me as usize) < peers.len(), "replica id outside the peer list");
        let stats = Arc::new(TransportStats::default());
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_MESSAGES_MAX);
        let outboxes = peers
            .iter()
            .enumerate()
            .map(|(j, addr)| {
                if j == me as usize {
                    return None;
                }
                let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
                tokio::spawn(peer_sender::<M>(endpoint.clone(), j as PeerId, *addr, rx, stats.clone(), supersede, encode));
                Some(tx)
            })
            .collect();
        let transport = Transport { me, outboxes, inbound: inbound_tx, stats, _marker: PhantomData };
        (Arc::new(transport), inbound_rx)
    }

    /// Queues `message` for peer `to`; drops it if the queue is full. The
    /// peer's task encodes it, off the caller's thread.
    pub fn send(&self, to: PeerId, message: M) {
        self.send_shared(to, Outgoing::new(message));
    }

    /// Like [`send`](Self::send) for a message going to several peers: it
    /// is encoded once, by whichever peer task gets to it first.
    pub fn send_shared(&self, to: PeerId, message: Arc<Outgoing<M>>) {
        let Some(Some(outbox)) = self.outboxes.get(to as usize) else {
            debug_assert!(false, "send to unknown peer {to}");
            return;
        };
        match outbox.try_send(message) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Serves an accepted connection whose verified certificate is replica
    /// `from`: reads its unidirectional streams until it closes.
    pub async fn serve_peer(self: Arc<Self>, conn: quinn::Connection, from: PeerId) {
        if from == self.me || from as usize >= self.outboxes.len() {
            warn!(from, "connection from a replica outside U (or ourselves); closed");
            conn.close(chorus_wire::rpc::CLOSE_PROTOCOL_VIOLATION, b"replica outside the universe");
            return;
        }
        loop {
            let mut recv = match conn.accept_uni().await {
                Ok(r) => r,
                Err(e) => {
                    debug!(from, error = %e, "peer connection closed");
                    return;
                }
            };
            loop {
                let payload = match frame::read_frame_max(&mut recv, frame::PEER_PAYLOAD_BYTES_MAX).await {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(e) => {
                        debug!(from, error = %e, "peer stream failed");
                        if matches!(e, chorus_wire::WireError::Frame(_)) {
                            conn.close(chorus_wire::rpc::CLOSE_PROTOCOL_VIOLATION, b"malformed frame");
                            return;
                        }
                        break;
                    }
                };
                let message: M = match codec::from_bytes_max(&payload, PEER_MESSAGE_BYTES_MAX) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(from, error = %e, "undecodable message from replica; closing its connection");
                        conn.close(chorus_wire::rpc::CLOSE_PROTOCOL_VIOLATION, b"undecodable message");
                        return;
                    }
                };
                if self.inbound.send((from, message)).await.is_err() {
                    return; // the driver is gone
                }
                self.stats.received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Keeps a connection and a stream to one peer and writes its queue.
async fn peer_sender<M: Serialize + Send + Sync>(
    endpoint: quinn::Endpoint,
    to: PeerId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Arc<Outgoing<M>>>,
    stats: Arc<TransportStats>,
    supersede: SupersedeKey<M>,
    encode: Encoder<M>,
) {
    let server_name = Role::Replica(to as usize).dns_name();
    let mut backoff = RECONNECT_BACKOFF_MIN;
    loop {
        if queue.is_closed() {
            return; // the transport was dropped: release the endpoint
        }
        let connecting = match endpoint.connect(addr, &server_name) {
            Ok(c) => c,
            Err(e) => {
                warn!(to, %addr, error = %e, "cannot start connecting to peer");
                tokio::time::sleep(RECONNECT_BACKOFF_MAX).await;
                continue;
            }
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!(to, %addr, error = %e, "connect to peer failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                if queue.is_closed() {
                    return;
                }
                continue;
            }
            Err(_) => {
                debug!(to, %addr, "connect to peer timed out");
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                continue;
            }
        };
        let mut send = match conn.open_uni().await {
            Ok(s) => s,
            Err(e) => {
                debug!(to, error = %e, "open stream to peer failed");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        backoff = RECONNECT_BACKOFF_MIN;
        debug!(to, %addr, "connected to peer");
        let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut messages: Vec<Arc<Outgoing<M>>> = Vec::with_capacity(PEER_BATCH_MESSAGES_MAX);
        'stream: loop {
            batch.clear();
            messages.clear();
            tokio::select! {
                next = queue.recv() => match next {
                    Some(m) => messages.push(m),
                    None => {
                        let _ = send.finish();
                        return;
                    }
                },
                reason = conn.closed() => {
                    debug!(to, %reason, "peer connection lost");
                    break 'stream;
                }
            }
            while messages.len() < PEER_BATCH_MESSAGES_MAX {
                match queue.try_recv() {
                    Ok(m) => messages.push(m),
                    Err(_) => break,
                }
            }
            let keys: Vec<Option<u64>> = messages.iter().map(|m| supersede(&m.message)).collect();
            for (i, m) in messages.iter().enumerate() {
                let superseded = keys[i].is_some() && keys[i + 1..].contains(&keys[i]);
                if superseded {
                    stats.superseded.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                append_frame(&mut batch, to, m, &stats, encode);
                if batch.len() >= WRITE_BATCH_BYTES_MAX {
                    if let Err(e) = send.write_all(&batch).await {
                        debug!(to, error = %e, "write to peer failed; reconnecting");
                        break 'stream;
                    }
                    batch.clear();
                }
            }
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = send.write_all(&batch).await {
                debug!(to, error = %e, "write to peer failed; reconnecting");
                break;
            }
        }
        conn.close(chorus_wire::rpc::CLOSE_NORMAL, b"reconnecting");
    }
}

/// Appends the frame of `out` to `batch`, encoding it if no other peer task
/// did yet; a message that does not fit a frame is dropped with a warning
/// (the core bounds its messages, so this is a bug to report, but one the
/// protocol survives).
fn append_frame<M: Serialize>(batch: &mut Vec<u8>, to: PeerId, out: &Outgoing<M>, stats: &TransportStats, encode: Encoder<M>) {
    let frame = out.frame.get_or_init(|| {
        let started = std::time::Instant::now();
        match encode(&out.message).and_then(|b| Ok(frame::encode_max(&b, frame::PEER_PAYLOAD_BYTES_MAX)?)) {
            Ok(f) => {
                if f.len() >= LARGE_MESSAGE_BYTES {
                    debug!(to, bytes = f.len(), encode_ms = started.elapsed().as_millis() as u64, "large message");
                }
                Some(f)
            }
            Err(e) => {
                warn!(to, error = %e, "message cannot be framed; dropped");
                None
            }
        }
    });
    match frame {
        Some(f) => batch.extend_from_slice(f),
        None => {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
