//! Request/response RPC multiplexed on one QUIC connection, plus a
//! server-to-client push path.
//!
//! Wire format: every frame (see [`crate::frame`]) carries an envelope
//! `[u8 kind][u64 BE id][bincode body]`:
//! - `REQUEST` (client → server, bidi stream): id = request id, body = `Req`.
//! - `RESPONSE` (server → client, same stream): id = request id, body = `Resp`.
//! - `FAILURE` (server → client): id = request id, body = UTF-8 text; the
//!   handler panicked or its response could not be encoded.
//! - `PUSH` (server → client, on a unidirectional stream the server opens):
//!   id = push sequence number, body = the pushed message.
//!
//! Guarantees:
//! - Many concurrent calls share one long-lived bidirectional stream; each
//!   call gets exactly its own answer (matched by request id), and at most
//!   [`CALLS_IN_FLIGHT_MAX`] calls are in flight per client (more wait).
//! - A call never hangs on a dead connection: when the connection or stream
//!   fails, every pending call fails with the reason (e.g.
//!   [`WireError::CertRejectedByServer`], [`WireError::ConnectionLost`]).
//! - Cancelling a call (dropping its future, e.g. on a caller's timeout)
//!   never corrupts the stream: frames are written whole by one writer task,
//!   and the pending entry is removed.
//! - The server runs at most [`SERVER_REQUESTS_IN_FLIGHT_MAX`] handlers, holding
//!   at most [`SERVER_REQUEST_BYTES_IN_FLIGHT_MAX`] bytes of requests, per
//!   connection at once (or within a [`Budget`] shared by several
//!   connections, [`serve_connection_with`]). A request's bytes are reserved
//!   when its frame header arrives, before its payload is read, and held
//!   until its reply is written: frames being read on any number of
//!   streams, decoded requests, handlers and queued replies all count.
//!   Beyond that it stops reading, so QUIC flow control pushes back on the
//!   client. Replies go out as they complete (not in order).
//! - A server may close a connection that had no request in flight for a
//!   while ([`ServeOptions::idle_close`], [`CLOSE_IDLE`]); clients reconnect.
//! - Malformed input (bad frame, oversized length, wrong version, unknown
//!   envelope kind, undecodable body) closes THAT connection with
//!   [`CLOSE_PROTOCOL_VIOLATION`] and a warning naming the peer; nothing else
//!   is affected.
//! - Every queue is bounded: write queues [`WRITE_QUEUE_FRAMES_MAX`], push
//!   queues [`PUSH_QUEUE_FRAMES_MAX`].
//!
//! Assumes: both ends are this crate (same frame version, same bincode
//! options); a handler's future is `Send` and may run on any worker thread.
//! Dropping the last clone of an [`RpcClient`] closes its connection.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bincode::Options;
use parking_lot::Mutex;
use quinn::VarInt;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::certs::{peer_role, Role, SERVER_NAME};
use crate::codec;
use crate::error::WireError;
use crate::frame::{self, FRAME_HEADER_BYTES};

/// Envelope kind: a request.
pub const KIND_REQUEST: u8 = 0;
/// Envelope kind: a successful response.
pub const KIND_RESPONSE: u8 = 1;
/// Envelope kind: the server failed to produce a response.
pub const KIND_FAILURE: u8 = 2;
/// Envelope kind: a server-initiated message.
pub const KIND_PUSH: u8 = 3;
/// Bytes of the envelope header inside a frame payload: kind + id.
pub const ENVELOPE_HEADER_BYTES: usize = 1 + 8;

/// Calls one client may have in flight; further calls wait for a slot.
pub const CALLS_IN_FLIGHT_MAX: usize = 1024;
/// Handlers one server connection may run at once.
pub const SERVER_REQUESTS_IN_FLIGHT_MAX: usize = 1024;
/// Bytes of requests (being read, decoded, handled, or answered and not yet
/// written back) one server connection may hold (a frame is at most
/// 16 MiB, so one request always fits).
pub const SERVER_REQUEST_BYTES_IN_FLIGHT_MAX: usize = 64 * 1024 * 1024;
/// Encoded frames waiting for a stream's writer task.
pub const WRITE_QUEUE_FRAMES_MAX: usize = 256;
/// Pushed messages waiting (on either side) before the pusher is slowed.
pub const PUSH_QUEUE_FRAMES_MAX: usize = 256;
/// Bytes of close reason kept (QUIC close frames must fit in a packet).
const CLOSE_REASON_BYTES_MAX: usize = 200;
/// How long a client whose request stream failed waits for the connection's
/// own close reason before closing it itself (see `client_writer`).
const WRITER_CLOSE_REASON_WAIT: Duration = Duration::from_millis(250);

/// Application close code: orderly close.
pub const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);
/// Application close code: the peer sent malformed input.
pub const CLOSE_PROTOCOL_VIOLATION: VarInt = VarInt::from_u32(1);
/// Application close code: a local failure (a writer could not write).
pub const CLOSE_INTERNAL: VarInt = VarInt::from_u32(2);

// ---------------------------------------------------------------------------
// Envelope encoding

/// Encodes `[frame header][kind][id][bincode msg]` into one buffer, sized
/// exactly, with the message limit enforced before anything is allocated.
fn encode_envelope<T: Serialize + ?Sized>(kind: u8, id: u64, msg: &T) -> Result<Vec<u8>, WireError> {
    let body_bytes = codec::options().serialized_size(msg).map_err(|e| WireError::Encode(e.to_string()))? as usize;
    let payload_bytes = ENVELOPE_HEADER_BYTES + body_bytes;
    let header = frame::encode_header(payload_bytes)?;
    let mut buf = Vec::with_capacity(FRAME_HEADER_BYTES + payload_bytes);
    buf.extend_from_slice(&header);
    buf.push(kind);
    buf.extend_from_slice(&id.to_be_bytes());
    codec::options().serialize_into(&mut buf, msg).map_err(|e| WireError::Encode(e.to_string()))?;
    debug_assert_eq!(buf.len(), FRAME_HEADER_BYTES + payload_bytes);
    Ok(buf)
}

/// Encodes an envelope whose body is raw bytes (FAILURE text).
fn encode_raw_envelope(kind: u8, id: u64, body: &[u8]) -> Result<Vec<u8>, WireError> {
    Ok(frame::encode_parts(&[&[kind], &id.to_be_bytes(), body])?)
}

/// Splits a frame payload into (kind, id); the body is `payload[ENVELOPE_HEADER_BYTES..]`.
/// Public for the fuzz targets (fuzz/wire); never panics.
pub fn parse_envelope(payload: &[u8]) -> Result<(u8, u64), String> {
    if payload.len() < ENVELOPE_HEADER_BYTES {
        return Err(format!("envelope of {} bytes is shorter than its {ENVELOPE_HEADER_BYTES}-byte header", payload.len()));
    }
    let kind = payload[0];
    let id = u64::from_be_bytes(payload[1..ENVELOPE_HEADER_BYTES].try_into().expect("length checked"));
    Ok((kind, id))
}

fn close_with(conn: &quinn::Connection, code: VarInt, reason: &str) {
    let mut end = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    conn.close(code, &reason.as_bytes()[..end]);
}

/// Closes `conn` for a protocol violation, with a warning naming the peer.
fn violation(conn: &quinn::Connection, reason: String) -> WireError {
    let peer = conn.remote_address();
    tracing::warn!(%peer, %reason, "closing connection: protocol violation");
    close_with(conn, CLOSE_PROTOCOL_VIOLATION, &format!("protocol violation: {reason}"));
    WireError::Protocol { peer, reason }
}

/// A frame read error: malformed frames are violations, I/O is connection loss.
fn read_failure(conn: &quinn::Connection, err: WireError) -> WireError {
    match err {
        WireError::Frame(fe) => violation(conn, fe.to_string()),
        other => match conn.close_reason() {
            Some(ce) => WireError::from_connection(&ce),
            None => other,
        },
    }
}

// ---------------------------------------------------------------------------
// Client

/// A reply as the reader task hands it to the waiting call.
enum Reply {
    /// The whole frame payload; the body starts at `ENVELOPE_HEADER_BYTES`.
    Ok(Vec<u8>),
    Failed(String),
}

/// State shared between the client handle and its background tasks. The
/// tasks hold only this (not the handle), so dropping the last handle closes
/// the connection.
struct Shared {
    conn: quinn::Connection,
    /// Pending calls by request id; `None` once the connection has failed, so
    /// that a call starting after the failure cannot wait forever.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>,
    /// Why the client stopped working, when we know better than quinn
    /// (e.g. we closed because the server sent garbage).
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn lost_error(&self) -> WireError {
        if let Some(reason) = self.failure.lock().clone() {
            return WireError::ConnectionLost(reason);
        }
        match self.conn.close_reason() {
            Some(ce) => WireError::from_connection(&ce),
            None => WireError::ConnectionLost("the RPC stream ended".into()),
        }
    }

    /// Fails every pending call (their senders are dropped) and refuses new ones.
    fn fail_all(&self, reason: Option<String>) {
        if let Some(reason) = reason {
            self.failure.lock().get_or_insert(reason);
        }
        let pending = self.pending.lock().take();
        drop(pending);
    }
}

/// Removes a call's pending entry if the call is dropped before its reply.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(map) = self.shared.pending.lock().as_mut() {
            map.remove(&self.id);
        }
    }
}

struct ClientHandle {
    shared: Arc<Shared>,
    write_tx: mpsc::Sender<Vec<u8>>,
    next_id: AtomicU64,
    in_flight: Semaphore,
    push_rx: Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        close_with(&self.shared.conn, CLOSE_NORMAL, "client closed");
    }
}

/// Client half of one connection. Cheap to clone; all clones share the
/// connection, which is closed when the last clone is dropped.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientHandle>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").field("peer", &self.inner.shared.conn.remote_address()).finish()
    }
}

impl RpcClient {
    /// Connects to the replica at `addr` (verified as [`SERVER_NAME`]) through
    /// `endpoint`, which must carry a client configuration from
    /// [`crate::tls::client_config`].
    pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<RpcClient, WireError> {
        RpcClient::connect_named(endpoint, addr, SERVER_NAME).await
    }

    /// Like [`RpcClient::connect`], but verifies the server under
    /// `server_name`, e.g. `replica-2.chorus` to insist on one replica.
    pub async fn connect_named(endpoint: &quinn::Endpoint, addr: SocketAddr, server_name: &str) -> Result<RpcClient, WireError> {
        let connecting = endpoint.connect(addr, server_name).map_err(|e| WireError::Connect { addr, reason: e.to_string() })?;
        let conn = connecting.await.map_err(|e| WireError::from_connection(&e))?;
        RpcClient::from_connection(conn).await
    }

    /// Runs the RPC client over an established connection.
    pub async fn from_connection(conn: quinn::Connection) -> Result<RpcClient, WireError> {
        let (send, recv) = conn.open_bi().await.map_err(|e| WireError::from_connection(&e))?;
        let shared = Arc::new(Shared { conn: conn.clone(), pending: Mutex::new(Some(HashMap::new())), failure: Mutex::new(None) });
        let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE_FRAMES_MAX);
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE_FRAMES_MAX);
        tokio::spawn(client_writer(shared.clone(), send, write_rx));
        tokio::spawn(client_reader(shared.clone(), recv));
        tokio::spawn(client_push_acceptor(conn, push_tx));
        Ok(RpcClient {
            inner: Arc::new(ClientHandle {
                shared,
                write_tx,
                next_id: AtomicU64::new(1),
                in_flight: Semaphore::new(CALLS_IN_FLIGHT_MAX),
                push_rx: Mutex::new(Some(push_rx)),
            }),
        })
    }

    /// Sends `req` and waits for its response. Fails with the connection's
    /// fate if it dies first; a timeout is the caller's business
    /// (`tokio::time::timeout`), and cancelling is safe.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(&self, req: &Req) -> Result<Resp, WireError> {
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let _permit = inner.in_flight.acquire().await.expect("semaphore never closed");
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_envelope(KIND_REQUEST, id, req)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        match shared.pending.lock().as_mut() {
            Some(map) => {
                map.insert(id, reply_tx);
            }
            None => return Err(shared.lost_error()),
        }
        let _guard = PendingGuard { shared, id };
        inner.write_tx.send(frame).await.map_err(|_| shared.lost_error())?;
        match reply_rx.await {
            Ok(Reply::Ok(payload)) => codec::from_bytes(&payload[ENVELOPE_HEADER_BYTES..]),
            Ok(Reply::Failed(reason)) => Err(WireError::Remote(reason)),
            Err(_) => Err(shared.lost_error()),
        }
    }

    /// True once the connection has failed or been closed; calls will fail.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.pending.lock().is_none() || self.inner.shared.conn.close_reason().is_some()
    }

    /// Why the client is closed, if it is.
    pub fn close_error(&self) -> Option<WireError> {
        self.is_closed().then(|| self.inner.shared.lost_error())
    }

    /// Closes the connection now (pending calls fail).
    pub fn close(&self) {
        close_with(&self.inner.shared.conn, CLOSE_NORMAL, "client closed");
    }

    /// The underlying connection (for addresses, statistics, peer identity).
    pub fn connection(&self) -> &quinn::Connection {
        &self.inner.shared.conn
    }

    /// The receiver of messages the server pushes on this connection. Only
    /// one subscriber per connection ([`WireError::AlreadySubscribed`]).
    /// Until someone subscribes, up to [`PUSH_QUEUE_FRAMES_MAX`] pushes are
    /// buffered, then the server's pushes are slowed by flow control.
    pub fn subscribe<T: DeserializeOwned>(&self) -> Result<PushReceiver<T>, WireError> {
        let rx = self.inner.push_rx.lock().take().ok_or(WireError::AlreadySubscribed)?;
        Ok(PushReceiver { rx, _marker: PhantomData })
    }
}

/// Receives server-pushed messages of type `T` (see [`RpcClient::subscribe`]).
pub struct PushReceiver<T> {
    rx: mpsc::Receiver<Vec<u8>>,
    _marker: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> PushReceiver<T> {
    /// The next pushed message; `None` once the connection is gone. A push
    /// that does not decode as `T` is returned as an error and the stream of
    /// pushes continues.
    pub async fn recv(&mut self) -> Option<Result<T, WireError>> {
        let payload = self.rx.recv().await?;
        Some(codec::from_bytes(&payload[ENVELOPE_HEADER_BYTES..]))
    }
}

async fn client_writer(shared: Arc<Shared>, mut send: quinn::SendStream, mut write_rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = write_rx.recv().await {
        if let Err(err) = send.write_all(&frame).await {
            let conn = &shared.conn;
            if !matches!(err, quinn::WriteError::ConnectionLost(_)) && conn.close_reason().is_none() {
                // A stream-level failure while the connection dies (the
                // server refusing our certificate, say) can reach us before
                // the connection's own reason does. Wait for that reason a
                // little: closing locally first would hide it from every
                // pending call behind "closed locally".
                let _ = tokio::time::timeout(WRITER_CLOSE_REASON_WAIT, conn.closed()).await;
            }
            match conn.close_reason() {
                Some(ce) => {
                    let err = WireError::from_connection(&ce);
                    tracing::debug!(peer = %conn.remote_address(), %err, "rpc client writer stopped");
                    shared.fail_all(None);
                }
                None => {
                    let reason = format!("the request stream failed: {err}");
                    tracing::debug!(peer = %conn.remote_address(), %reason, "rpc client writer stopped");
                    shared.fail_all(Some(reason));
                    close_with(conn, CLOSE_INTERNAL, "client writer failed");
                }
            }
            return;
        }
    }
    // Every handle is gone: tell the server no more requests are coming.
    let _ = send.finish();
}

async fn client_reader(shared: Arc<Shared>, mut recv: quinn::RecvStream) {
    let conn = &shared.conn;
    let reason = loop {
        let payload = match frame::read_frame(&mut recv).await {
            Ok(Some(payload)) => payload,
            Ok(None) => break Some("the server ended the RPC stream".to_string()),
            Err(err) => {
                let err = read_failure(conn, err);
                break matches!(err, WireError::Protocol { .. }).then(|| err.to_string());
            }
        };
        let (kind, id) = match parse_envelope(&payload) {
            Ok(header) => header,
            Err(reason) => break Some(violation(conn, reason).to_string()),
        };
        let reply = match kind {
            KIND_RESPONSE => Reply::Ok(payload),
            KIND_FAILURE => Reply::Failed(String::from_utf8_lossy(&payload[ENVELOPE_HEADER_BYTES..]).into_owned()),
            other => break Some(violation(conn, format!("unexpected envelope kind {other} on the RPC stream")).to_string()),
        };
        let waiter = shared.pending.lock().as_mut().and_then(|map| map.remove(&id));
        if let Some(waiter) = waiter {
            // The call may have been cancelled meanwhile: nothing to do then.
            let _ = waiter.send(reply);
        }
        // No waiter: the call was cancelled (timeout) before its reply came.
    };
    tracing::debug!(peer = %conn.remote_address(), ?reason, "rpc client reader stopped");
    shared.fail_all(reason);
}

/// Accepts the server's push streams and forwards their messages.
async fn client_push_acceptor(conn: quinn::Connection, push_tx: mpsc::Sender<Vec<u8>>) {
    while let Ok(recv) = conn.accept_uni().await {
        tokio::spawn(client_push_reader(conn.clone(), recv, push_tx.clone()));
    }
}

async fn client_push_reader(conn: quinn::Connection, mut recv: quinn::RecvStream, push_tx: mpsc::Sender<Vec<u8>>) {
    loop {
        let payload = match frame::read_frame(&mut recv).await {
            Ok(Some(payload)) => payload,
            Ok(None) => return,
            Err(err) => {
                read_failure(&conn, err);
                return;
            }
        };
        match parse_envelope(&payload) {
            Ok((KIND_PUSH, _seq)) => {}
            Ok((other, _)) => {
                violation(&conn, format!("unexpected envelope kind {other} on a push stream"));
                return;
            }
            Err(reason) => {
                violation(&conn, reason);
                return;
            }
        }
        if push_tx.send(payload).await.is_err() {
            // The subscriber (or the whole client) is gone: stop reading so
            // flow control tells the server.
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Server

/// Polls a future, turning a panic into an error instead of unwinding
/// through the server (a panicking handler fails its call, not the process).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "handler panicked".to_string()
    }
}

/// Longest a server lets one handshake take ([`Handshakes`]): a client that
/// keeps a handshake alive with keep-alives but never finishes it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes one server runs at once ([`Handshakes`]).
pub const HANDSHAKES_MAX: usize = 1024;

/// Application close code: the server holds as many connections as it (or
/// this client certificate's quota) allows.
pub const CLOSE_BUSY: VarInt = VarInt::from_u32(4);

/// Bounds the handshakes a server runs at once and how long each may take.
/// A server takes its connection slots only after a handshake succeeded, so
/// peers that never finish a handshake (they need no certificate to start
/// one) cannot keep authenticated clients out of the slots; they can only
/// fill this bound, and only for [`HANDSHAKE_TIMEOUT`] each. Beyond half of
/// it, a peer must first prove its address (a QUIC Retry, stateless).
#[derive(Clone, Debug)]
pub struct Handshakes {
    running: Arc<Semaphore>,
    max: usize,
}

/// A handshake admitted by [`Handshakes::admit`].
pub struct Handshake {
    incoming: quinn::Incoming,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Handshakes {
    /// At most `max` handshakes at once.
    pub fn new(max: usize) -> Handshakes {
        Handshakes { running: Arc::new(Semaphore::new(max)), max }
    }

    /// Handshakes running now.
    pub fn running(&self) -> usize {
        self.max - self.running.available_permits()
    }

    /// Admits `incoming` into the running handshakes, or refuses it (None):
    /// all taken, or past half of them with an unvalidated address (then a
    /// Retry is sent; the peer's next attempt carries the proof).
    pub fn admit(&self, incoming: quinn::Incoming) -> Option<Handshake> {
        if self.running.available_permits() < self.max / 2 && !incoming.remote_address_validated() && incoming.may_retry() {
            let _ = incoming.retry();
            return None;
        }
        match self.running.clone().try_acquire_owned() {
            Ok(permit) => Some(Handshake { incoming, _permit: permit }),
            Err(_) => {
                tracing::warn!(peer = %incoming.remote_address(), "too many handshakes at once; refusing one");
                incoming.refuse();
                None
            }
        }
    }
}

impl Handshake {
    /// Completes it within [`HANDSHAKE_TIMEOUT`] (see [`accept`]).
    pub async fn complete(self) -> Result<quinn::Connection, WireError> {
        let peer = self.incoming.remote_address();
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(self.incoming)).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "a handshake took too long; dropped");
                Err(WireError::ConnectionLost(format!("handshake with {peer} took longer than {HANDSHAKE_TIMEOUT:?}")))
            }
        }
    }
}

/// Completes the handshake of an incoming connection. A peer whose
/// certificate is refused (another cluster's, none at all) is logged with its
/// address and reported as [`WireError::PeerRefused`].
pub async fn accept(incoming: quinn::Incoming) -> Result<quinn::Connection, WireError> {
    let peer = incoming.remote_address();
    match incoming.await {
        Ok(conn) => Ok(conn),
        Err(err) => {
            let err = WireError::from_incoming(peer, &err);
            tracing::warn!(%peer, %err, "refused incoming connection");
            Err(err)
        }
    }
}

/// What the handlers of the connections that share it may hold at once:
/// one connection's own ([`Budget::per_connection`]), or every connection
/// of one client certificate ([`crate::quota`]). The bytes of a request are
/// reserved when its frame header arrives, before its payload is read, and
/// given back when its reply has been written to the stream: a payload
/// being read, a decoded request, a running handler and its queued reply
/// all count, however many streams carry them.
#[derive(Debug)]
pub struct Budget {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl Budget {
    /// At most `requests_max` requests and `bytes_max` bytes of requests
    /// (at least one whole frame: [`frame::PAYLOAD_BYTES_MAX`]).
    pub fn new(requests_max: usize, bytes_max: usize) -> Arc<Budget> {
        let bytes_max = bytes_max.clamp(frame::PAYLOAD_BYTES_MAX, u32::MAX as usize);
        Arc::new(Budget { requests: Arc::new(Semaphore::new(requests_max.max(1))), bytes: Arc::new(Semaphore::new(bytes_max)) })
    }

    /// [`SERVER_REQUESTS_IN_FLIGHT_MAX`] and [`SERVER_REQUEST_BYTES_IN_FLIGHT_MAX`].
    pub fn per_connection() -> Arc<Budget> {
        Budget::new(SERVER_REQUESTS_IN_FLIGHT_MAX, SERVER_REQUEST_BYTES_IN_FLIGHT_MAX)
    }

    /// Request bytes not reserved now (for tests and status).
    pub fn bytes_available(&self) -> usize {
        self.bytes.available_permits()
    }

    async fn reserve(&self, payload_bytes: usize) -> (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit) {
        let request = self.requests.clone().acquire_owned().await.expect("semaphore never closed");
        // payload_bytes <= PAYLOAD_BYTES_MAX <= the semaphore's size, far below u32::MAX.
        let bytes = self.bytes.clone().acquire_many_owned(payload_bytes as u32).await.expect("semaphore never closed");
        (request, bytes)
    }
}

/// How [`serve_connection_with`] serves one connection.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// What its requests may hold (shared with other connections or not).
    pub budget: Arc<Budget>,
    /// Close the connection ([`CLOSE_IDLE`]) when it has had no request and
    /// no request in flight for this long. QUIC keep-alives keep a live
    /// peer's connection open forever otherwise. None: never.
    pub idle_close: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions { budget: Budget::per_connection(), idle_close: None }
    }
}

/// Application close code: the connection was idle (the client reconnects
/// when it needs the server again).
pub const CLOSE_IDLE: VarInt = VarInt::from_u32(3);

/// When a connection last had a request, and how many are in flight.
struct Activity {
    started: tokio::time::Instant,
    last_ms: AtomicU64,
    in_flight: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.started.elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed))))
    }
}

/// Serves RPCs on one incoming connection until it closes: accepts its
/// bidirectional streams and runs `handler` for each request concurrently
/// (at most [`SERVER_REQUESTS_IN_FLIGHT_MAX`] at once, holding at most
/// [`SERVER_REQUEST_BYTES_IN_FLIGHT_MAX`] bytes of requests), writing replies
/// as they complete.
///
/// Returns `Ok(())` when the peer closes the connection or the server closes
/// it locally; [`WireError::Protocol`] when the peer sent malformed input (the
/// connection has then been closed with [`CLOSE_PROTOCOL_VIOLATION`]); the
/// connection's error otherwise (timeout, reset).
pub async fn serve_connection<Req, Resp, H, Fut>(conn: quinn::Connection, handler: H) -> Result<(), WireError>
where
    H: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    serve_connection_with(conn, ServeOptions::default(), handler).await
}

/// [`serve_connection`] within `options`' budget (e.g. one shared by every
/// connection of a client certificate), closing it when idle if asked.
pub async fn serve_connection_with<Req, Resp, H, Fut>(conn: quinn::Connection, options: ServeOptions, handler: H) -> Result<(), WireError>
where
    H: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    let handler = Arc::new(handler);
    let budget = options.budget;
    let activity = Arc::new(Activity { started: tokio::time::Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicU64::new(0) });
    let idle_close = options.idle_close.unwrap_or(Duration::MAX);
    let idle_check = (idle_close / 4).clamp(Duration::from_millis(10), Duration::from_secs(3600));
    let mut idle_timer = tokio::time::interval(idle_check);
    idle_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Stream tasks are bounded by the transport's concurrent-stream limit,
    // and what they hold by the budget.
    let mut streams: JoinSet<Result<(), WireError>> = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    activity.touch();
                    streams.spawn(serve_stream(conn.clone(), send, recv, handler.clone(), budget.clone(), activity.clone()));
                }
                Err(err) => {
                    // A stream task may have closed the connection for a violation.
                    while let Some(joined) = streams.join_next().await {
                        if let Ok(Err(e @ WireError::Protocol { .. })) = joined {
                            return Err(e);
                        }
                    }
                    return match err {
                        quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed => Ok(()),
                        other => Err(WireError::from_connection(&other)),
                    };
                }
            },
            Some(joined) = streams.join_next(), if !streams.is_empty() => {
                if let Ok(Err(e @ WireError::Protocol { .. })) = joined {
                    streams.abort_all();
                    return Err(e);
                }
            }
            _ = idle_timer.tick(), if options.idle_close.is_some() => {
                if activity.idle_for().is_some_and(|idle| idle >= idle_close) {
                    tracing::debug!(peer = %conn.remote_address(), ?idle_close, "closing an idle connection");
                    close_with(&conn, CLOSE_IDLE, "idle connection closed by the server");
                    streams.abort_all();
                    return Ok(());
                }
            }
        }
    }
}

/// What one request holds from its frame header until its reply is
/// written (or it is dropped): its share of the budget, and a count in its
/// connection's activity.
struct Held {
    _permits: (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit),
    activity: Arc<Activity>,
}

impl Held {
    fn new(permits: (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit), activity: Arc<Activity>) -> Held {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Held { _permits: permits, activity }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity.touch();
    }
}

/// A reply frame and what its request held, given back once written.
type Outgoing = (Vec<u8>, Held);

/// Serves one bidirectional stream: reads requests, spawns handlers, and
/// feeds their replies to this stream's writer task.
async fn serve_stream<Req, Resp, H, Fut>(
    conn: quinn::Connection,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    handler: Arc<H>,
    budget: Arc<Budget>,
    activity: Arc<Activity>,
) -> Result<(), WireError>
where
    H: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    let (write_tx, write_rx) = mpsc::channel::<Outgoing>(WRITE_QUEUE_FRAMES_MAX);
    let writer = tokio::spawn(server_writer(conn.clone(), send, write_rx));
    let result = loop {
        let payload_bytes = match frame::read_header_max(&mut recv, frame::PAYLOAD_BYTES_MAX).await {
            Ok(Some(payload_bytes)) => payload_bytes,
            Ok(None) => break Ok(()), // the client finished its requests
            Err(err) => break Err(read_failure(&conn, err)),
        };
        // Waiting here, before the payload is read (not spawning or reading
        // unboundedly), is the backpressure: QUIC flow control then stops
        // the client within the connection's receive window.
        let held = Held::new(budget.reserve(payload_bytes).await, activity.clone());
        let payload = match frame::read_payload(&mut recv, payload_bytes).await {
            Ok(payload) => payload,
            Err(err) => break Err(read_failure(&conn, err)),
        };
        let (kind, id) = match parse_envelope(&payload) {
            Ok(header) => header,
            Err(reason) => break Err(violation(&conn, reason)),
        };
        if kind != KIND_REQUEST {
            break Err(violation(&conn, format!("unexpected envelope kind {kind} from a client")));
        }
        let req: Req = match codec::from_bytes(&payload[ENVELOPE_HEADER_BYTES..]) {
            Ok(req) => req,
            Err(err) => break Err(violation(&conn, format!("request {id}: {err}"))),
        };
        drop(payload);
        let fut = CatchUnwind(Box::pin(handler(req)));
        let write_tx = write_tx.clone();
        tokio::spawn(async move {
            let frame = match fut.await {
                Ok(resp) => encode_envelope(KIND_RESPONSE, id, &resp).or_else(|err| {
                    tracing::error!(request = id, %err, "response could not be encoded");
                    encode_raw_envelope(KIND_FAILURE, id, err.to_string().as_bytes())
                }),
                Err(panic) => {
                    let text = panic_text(&*panic);
                    tracing::error!(request = id, panic = %text, "rpc handler panicked");
                    encode_raw_envelope(KIND_FAILURE, id, format!("handler panicked: {text}").as_bytes())
                }
            };
            if let Ok(frame) = frame {
                // An error means the stream is gone; the client learns that from the connection.
                let _ = write_tx.send((frame, held)).await;
            }
        });
    };
    drop(write_tx);
    if result.is_err() {
        writer.abort();
    } else {
        // The writer finishes once every in-flight handler of this stream replied.
        let _ = writer.await;
    }
    result
}

async fn server_writer(conn: quinn::Connection, mut send: quinn::SendStream, mut write_rx: mpsc::Receiver<Outgoing>) {
    while let Some((frame, held)) = write_rx.recv().await {
        let written = frame::write_encoded(&mut send, &frame).await;
        drop(held);
        if let Err(err) = written {
            tracing::debug!(peer = %conn.remote_address(), %err, "rpc server writer stopped");
            return;
        }
    }
    let _ = send.finish();
}

// ---------------------------------------------------------------------------
// Server push

/// The server's handle on one client connection, for pushing messages
/// (e.g. callback recalls) to that client. Cheap to clone; pushes from all
/// clones go out in order on one unidirectional stream, opened on first use.
#[derive(Clone)]
pub struct ServerConn {
    conn: quinn::Connection,
    push_tx: mpsc::Sender<Vec<u8>>,
    next_seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn").field("peer", &self.conn.remote_address()).finish()
    }
}

impl ServerConn {
    /// Wraps an accepted connection (call inside a tokio runtime). Clone the
    /// connection before handing it to [`serve_connection`].
    pub fn new(conn: quinn::Connection) -> ServerConn {
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE_FRAMES_MAX);
        tokio::spawn(push_writer(conn.clone(), push_rx));
        ServerConn { conn, push_tx, next_seq: Arc::new(AtomicU64::new(1)) }
    }

    /// Queues `msg` for the client, waiting while the push queue is full.
    pub async fn push<T: Serialize>(&self, msg: &T) -> Result<(), WireError> {
        let frame = encode_envelope(KIND_PUSH, self.next_seq.fetch_add(1, Ordering::Relaxed), msg)?;
        self.push_tx.send(frame).await.map_err(|_| self.lost())
    }

    /// Queues `msg` without waiting: [`WireError::QueueFull`] if the client is
    /// not keeping up.
    pub fn try_push<T: Serialize>(&self, msg: &T) -> Result<(), WireError> {
        let frame = encode_envelope(KIND_PUSH, self.next_seq.fetch_add(1, Ordering::Relaxed), msg)?;
        self.push_tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WireError::QueueFull("push queue"),
            mpsc::error::TrySendError::Closed(_) => self.lost(),
        })
    }

    /// The peer's role, from its verified certificate.
    pub fn peer_role(&self) -> Option<Role> {
        peer_role(&self.conn)
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The underlying connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    fn lost(&self) -> WireError {
        match self.conn.close_reason() {
            Some(ce) => WireError::from_connection(&ce),
            None => WireError::ConnectionLost("push stream failed".into()),
        }
    }
}

async fn push_writer(conn: quinn::Connection, mut push_rx: mpsc::Receiver<Vec<u8>>) {
    let Some(first) = push_rx.recv().await else { return };
    let mut send = match conn.open_uni().await {
        Ok(send) => send,
        Err(err) => {
            tracing::debug!(peer = %conn.remote_address(), %err, "cannot open push stream");
            return;
        }
    };
    let mut next = Some(first);
    while let Some(frame) = next {
        if let Err(err) = frame::write_encoded(&mut send, &frame).await {
            tracing::debug!(peer = %conn.remote_address(), %err, "push writer stopped");
            return;
        }
        next = push_rx.recv().await;
    }
    let _ = send.finish();
}
