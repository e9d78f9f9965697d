//! Mutual TLS 1.3 configurations for QUIC, and the transport parameters.
//!
//! Guarantees:
//! - A server built from [`server_config`] requires a client certificate
//!   that chains to the cluster CA (rustls `WebPkiClientVerifier`); any other
//!   certificate, or none, fails the handshake.
//! - A client built from [`client_config`] accepts only a server whose
//!   certificate chains to the cluster CA and names [`SERVER_NAME`].
//! - There is no code path that skips certificate verification, in tests or
//!   otherwise.
//! - A server built with a [`RevocationList`] ([`server_config_revoking`])
//!   also refuses, in the handshake, a certificate the list names (TLS alert
//!   certificate_revoked), checked after the CA and expiry checks.
//! - Cryptography is always rustls' ring provider, passed explicitly: the
//!   process-wide default provider is never consulted (so linking a crate that
//!   installs another provider changes nothing here).
//! - Both sides negotiate the ALPN [`ALPN`]; a peer of another protocol is
//!   refused in the handshake.
//!
//! Transport parameters (why): file data moves in 1–4 MiB payloads, so
//! receive windows are generous (16 MiB per stream, 64 MiB per connection
//! for what a client receives); keep-alives every second with a 5 s idle
//! timeout let either side notice a dead peer within seconds, which failure
//! detection and failover rely on. A server grants a connection
//! [`SERVER_CONNECTION_RECEIVE_WINDOW_BYTES`] (16 MiB, one whole frame) until
//! it knows the peer is another replica ([`widen_for_peer`]): QUIC's flow
//! control is what bounds the bytes a client can make a server buffer below
//! the application (docs/architecture.md, "Security"). A client may open up
//! to [`BIDI_STREAMS_MAX`] streams, but the bytes the server reads from all
//! of them are bounded together (`rpc::Budget`), so more streams do not buy
//! more server memory.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::certs::Identity;
pub use crate::certs::SERVER_NAME;
use crate::error::WireError;
use crate::revoke::RevocationList;

/// The application protocol name both sides must agree on.
pub const ALPN: &[u8] = b"chorus/1";
/// Per-stream receive window.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Per-connection receive window (and send window).
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 64 * 1024 * 1024;
/// Per-connection receive window a server grants before it knows the peer
/// is a replica (clients keep it): what one client connection can make the
/// server's QUIC stack buffer.
pub const SERVER_CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Interval of QUIC keep-alive pings.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A connection with no traffic (not even keep-alive answers) for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent bidirectional streams a peer may open.
pub const BIDI_STREAMS_MAX: u32 = 64;
/// Concurrent unidirectional streams a peer may open.
pub const UNI_STREAMS_MAX: u32 = 64;

/// The crypto provider used everywhere in this crate: rustls with ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The QUIC transport parameters used by both sides.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    transport_config_receiving(CONNECTION_RECEIVE_WINDOW_BYTES)
}

/// The shared transport parameters with a connection receive window of
/// `receive_window_bytes`.
fn transport_config_receiving(receive_window_bytes: u32) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(STREAM_RECEIVE_WINDOW_BYTES.into());
    t.receive_window(receive_window_bytes.into());
    t.send_window(CONNECTION_RECEIVE_WINDOW_BYTES as u64);
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("5 s is a valid idle timeout")));
    t.max_concurrent_bidi_streams(BIDI_STREAMS_MAX.into());
    t.max_concurrent_uni_streams(UNI_STREAMS_MAX.into());
    Arc::new(t)
}

fn roots(id: &Identity) -> Result<Arc<RootCertStore>, WireError> {
    let mut roots = RootCertStore::empty();
    roots.add(id.ca.clone()).map_err(|e| WireError::Tls(format!("cluster CA certificate unusable: {e}")))?;
    Ok(Arc::new(roots))
}

/// The cluster-CA verifier, then the revocation list.
#[derive(Debug)]
struct RevokingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevocationList>,
}

impl ClientCertVerifier for RevokingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.is_revoked_cert(end_entity) {
            tracing::warn!(fingerprint = %crate::certs::fingerprint(end_entity), list = %self.revoked.path().display(), "refused a revoked certificate");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls server configuration (exposed for tests and non-QUIC uses).
pub fn rustls_server_config(id: &Identity) -> Result<rustls::ServerConfig, WireError> {
    rustls_server_config_revoking(id, None)
}

/// [`rustls_server_config`] that also refuses the certificates `revoked` names.
pub fn rustls_server_config_revoking(id: &Identity, revoked: Option<Arc<RevocationList>>) -> Result<rustls::ServerConfig, WireError> {
    let provider = provider();
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots(id)?, provider.clone())
        .build()
        .map_err(|e| WireError::Tls(format!("client verifier: {e}")))?;
    if let Some(revoked) = revoked {
        verifier = Arc::new(RevokingVerifier { inner: verifier, revoked });
    }
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| WireError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| WireError::Tls(format!("server certificate or key unusable: {e}")))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Gives a connection accepted by a server the full connection receive
/// window ([`CONNECTION_RECEIVE_WINDOW_BYTES`]) once its certificate shows a
/// replica of the cluster (view-change and state-transfer messages are large).
pub fn widen_for_peer(conn: &quinn::Connection) {
    conn.set_receive_window(CONNECTION_RECEIVE_WINDOW_BYTES.into());
}

/// The transport parameters of a server endpoint: [`transport_config`]
/// with the smaller connection receive window.
pub fn server_transport_config() -> Arc<quinn::TransportConfig> {
    transport_config_receiving(SERVER_CONNECTION_RECEIVE_WINDOW_BYTES)
}

/// Server side: requires a client certificate chaining to the cluster CA.
pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, WireError> {
    server_config_revoking(id, None)
}

/// [`server_config`] that also refuses the certificates `revoked` names
/// (servers pass their certificates folder's list, [`RevocationList::in_certs_dir`]).
pub fn server_config_revoking(id: &Identity, revoked: Option<Arc<RevocationList>>) -> Result<quinn::ServerConfig, WireError> {
    let crypto = QuicServerConfig::try_from(rustls_server_config_revoking(id, revoked)?)
        .map_err(|e| WireError::Tls(format!("QUIC server TLS: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(server_transport_config());
    Ok(cfg)
}

/// Turns a verified rustls client configuration into a quinn one. Public so
/// tests can build a client that presents no certificate; the server is
/// still verified, since every `rustls::ClientConfig` reachable without the
/// `dangerous()` API verifies it.
pub fn quinn_client_config(cfg: rustls::ClientConfig) -> Result<quinn::ClientConfig, WireError> {
    let crypto = QuicClientConfig::try_from(cfg).map_err(|e| WireError::Tls(format!("QUIC client TLS: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// The rustls client configuration (exposed for tests and non-QUIC uses).
pub fn rustls_client_config(id: &Identity) -> Result<rustls::ClientConfig, WireError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| WireError::Tls(e.to_string()))?
        .with_root_certificates(roots(id)?)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| WireError::Tls(format!("client certificate or key unusable: {e}")))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Client side: verifies the server chains to the cluster CA (the server
/// name is given at connect time: [`SERVER_NAME`]) and presents our certificate.
pub fn client_config(id: &Identity) -> Result<quinn::ClientConfig, WireError> {
    quinn_client_config(rustls_client_config(id)?)
}
