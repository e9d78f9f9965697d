//! Errors of the transport, worded for the person who has to fix the problem.
//!
//! Guarantees: every failure the crate can report is a variant here, with a
//! message that says what went wrong and, where we can guess, what to check
//! (wrong cluster certificates, port in use, peer gone). Connection-level
//! failures from quinn are translated once, in [`WireError::from_connection`],
//! so that every caller sees the same wording for the same cause.
//! Assumes: TLS alerts reach us as QUIC crypto error codes (0x100 + alert),
//! which is how RFC 9001 §4.8 carries them.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::frame::FrameError;

/// Everything that can go wrong in `chorus-wire`.
#[derive(thiserror::Error, Debug)]
pub enum WireError {
    /// A file of the cluster's certificate directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// `init_cluster` refuses to overwrite an existing cluster CA.
    #[error("{0} already holds a cluster CA (ca.pem or ca.key); refusing to overwrite it — pick an empty directory or remove the old cluster's certificates first")]
    CaExists(PathBuf),

    /// Certificate or key generation failed (rcgen).
    #[error("could not generate certificates: {0}")]
    CertGen(String),

    /// A certificate or key file exists but is not usable.
    #[error("{path}: {reason}")]
    CertLoad {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Building a TLS configuration failed (bad key, unsupported algorithm...).
    #[error("TLS configuration error: {0}")]
    Tls(String),

    /// The UDP port is taken by another process.
    #[error("port {} on {} is in use — is another chorus server (or another program) already running there?", .0.port(), .0.ip())]
    AddrInUse(SocketAddr),

    /// Any other failure to bind a UDP socket.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The connection attempt could not even start (bad address, no client config...).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },

    /// The server refused our certificate during the TLS handshake.
    #[error("certificate rejected by server: {reason}")]
    CertRejectedByServer {
        /// The TLS alert, in words, and what to do about it.
        reason: String,
    },

    /// The server requires a client certificate and we presented none.
    #[error(
        "server requires a client certificate and none was presented — load this cluster's client.pem/client.key (made by `chorus init`)"
    )]
    ClientCertRequired,

    /// We refused the server's certificate during the TLS handshake.
    #[error("server certificate rejected: {reason} — is this server part of this cluster (certificates from the same `chorus init`)?")]
    ServerCertRejected {
        /// What rustls said.
        reason: String,
    },

    /// (Server side) an incoming connection's handshake failed: typically its
    /// certificate is not from this cluster, or it presented none.
    #[error("refused connection from {peer}: {reason}")]
    PeerRefused {
        /// The peer's address.
        peer: SocketAddr,
        /// Why, in words.
        reason: String,
    },

    /// The connection is gone (peer closed, crashed, timed out, or was closed locally).
    #[error("connection lost: {0}")]
    ConnectionLost(String),

    /// The peer sent something that violates the framing or RPC protocol.
    #[error("protocol violation by {peer}: {reason}")]
    Protocol {
        /// The offending peer.
        peer: SocketAddr,
        /// What it did.
        reason: String,
    },

    /// A frame could not be encoded or decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),

    /// A message could not be serialized (or would exceed the payload bound).
    #[error("cannot encode message: {0}")]
    Encode(String),

    /// A payload could not be deserialized into the expected type.
    #[error("cannot decode message: {0}")]
    Decode(String),

    /// The server's handler failed (panicked) while serving this request.
    #[error("the server failed while handling the request: {0}")]
    Remote(String),

    /// A push subscription was requested twice on the same connection.
    #[error("this connection already has a push subscriber")]
    AlreadySubscribed,

    /// A bounded queue was full and the caller asked not to wait.
    #[error("queue full: {0}")]
    QueueFull(&'static str),
}

/// QUIC transport error code of a TLS alert (RFC 9001 §4.8).
fn crypto_alert(code: u64) -> Option<u8> {
    if (0x100..0x200).contains(&code) {
        Some((code - 0x100) as u8)
    } else {
        None
    }
}

/// Words for the TLS alerts a certificate problem produces.
fn alert_words(alert: u8) -> String {
    match alert {
        0x28 => "handshake failure".into(),
        0x29 | 0x74 => "certificate required".into(),
        0x2a => "bad certificate".into(),
        0x2b => "unsupported certificate (wrong key usage or purpose)".into(),
        0x2c => "certificate revoked".into(),
        0x2d => "certificate expired or not yet valid".into(),
        0x2e => "certificate unknown".into(),
        0x30 => "unknown CA".into(),
        0x31 => "access denied".into(),
        0x33 => "bad signature (signed by a different CA with the same name?)".into(),
        0x78 => "no common application protocol (is the peer a chorus component of the same version?)".into(),
        other => format!("TLS alert {other:#x}"),
    }
}

/// What a client whose certificate drew `alert` should do.
fn client_hint(alert: u8) -> String {
    let what = alert_words(alert);
    match alert {
        0x2c => {
            format!("{what} — this certificate is on the cluster's revocation list; ask the operator for a new one (`chorus cert issue`)")
        }
        0x2d => format!("{what} — ask the operator for a new certificate (`chorus cert issue`), or check this machine's clock"),
        _ => format!("{what} — was this client's certificate made by `chorus init` (or `chorus cert issue`) of this cluster?"),
    }
}

/// What a server log says about a peer whose certificate it refused with `alert`.
fn server_hint(alert: u8) -> &'static str {
    match alert {
        0x2c => "it is on this server's revocation list (certs/revoked)",
        0x2d => "it expired (or is not valid yet: check the clocks)",
        _ => "it was not made by this cluster's `chorus init`",
    }
}

/// True for alerts that mean "your certificate is not acceptable".
fn is_cert_alert(alert: u8) -> bool {
    matches!(alert, 0x2a..=0x2e | 0x30 | 0x31 | 0x33)
}

impl WireError {
    /// Translates why a QUIC connection ended into a user-facing error.
    pub fn from_connection(err: &quinn::ConnectionError) -> WireError {
        use quinn::ConnectionError as C;
        match err {
            // The peer closed the connection with a TLS alert: it refused us.
            C::ConnectionClosed(close) => {
                let code = u64::from(close.error_code);
                match crypto_alert(code) {
                    Some(0x74) | Some(0x29) => WireError::ClientCertRequired,
                    Some(alert) if is_cert_alert(alert) => WireError::CertRejectedByServer { reason: client_hint(alert) },
                    Some(alert) => WireError::ConnectionLost(format!("TLS handshake aborted by peer: {}", alert_words(alert))),
                    None => WireError::ConnectionLost(format!("aborted by peer: {close}")),
                }
            }
            // We detected the problem ourselves: during the handshake that means
            // we refused the server's certificate.
            C::TransportError(te) => {
                let code = u64::from(te.code);
                match crypto_alert(code) {
                    Some(alert) if is_cert_alert(alert) => {
                        WireError::ServerCertRejected { reason: if te.reason.is_empty() { alert_words(alert) } else { te.reason.clone() } }
                    }
                    _ => WireError::ConnectionLost(format!("transport error: {te}")),
                }
            }
            C::ApplicationClosed(close) => {
                let reason = String::from_utf8_lossy(&close.reason);
                WireError::ConnectionLost(format!("closed by peer (code {}): {reason}", close.error_code))
            }
            C::TimedOut => WireError::ConnectionLost("peer timed out (no answer to keep-alives)".into()),
            C::Reset => WireError::ConnectionLost("reset by peer (it probably restarted)".into()),
            C::LocallyClosed => WireError::ConnectionLost("closed locally".into()),
            C::VersionMismatch => WireError::ConnectionLost("peer speaks no QUIC version we support".into()),
            C::CidsExhausted => WireError::ConnectionLost("connection ids exhausted".into()),
        }
    }

    /// Translates a failed incoming handshake (server side): a certificate
    /// alert we raised means we refused the peer's certificate.
    pub fn from_incoming(peer: SocketAddr, err: &quinn::ConnectionError) -> WireError {
        let reason = match err {
            quinn::ConnectionError::TransportError(te) => match crypto_alert(u64::from(te.code)) {
                Some(0x74) | Some(0x29) => "it presented no client certificate".to_string(),
                Some(alert) if is_cert_alert(alert) => {
                    format!("its certificate was refused ({}: {}) — {}", alert_words(alert), te.reason, server_hint(alert))
                }
                _ => format!("handshake failed: {te}"),
            },
            other => format!("handshake failed: {}", WireError::from_connection(other)),
        };
        WireError::PeerRefused { peer, reason }
    }

    /// True when the error means the connection can no longer be used.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            WireError::ConnectionLost(_)
                | WireError::CertRejectedByServer { .. }
                | WireError::ServerCertRejected { .. }
                | WireError::ClientCertRequired
                | WireError::Protocol { .. }
        )
    }
}

impl From<quinn::ConnectionError> for WireError {
    fn from(err: quinn::ConnectionError) -> Self {
        WireError::from_connection(&err)
    }
}
