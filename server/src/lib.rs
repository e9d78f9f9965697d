//! chorus-server: one ChorusFS replica serving the file-system state machine
//! over the wire protocol.
//!
//! Guarantees (single replica, before replication lands): every mutation is
//! stamped with a leader time that never goes backwards, given the next log
//! index and applied exactly once, in the order the server received it; a
//! reply is sent only after the command is applied; `Op::Fsync` replies only
//! after the store's write-ahead log is on disk. Queries read applied state.
//!
//! Client certificates on the certificates folder's revocation list are
//! refused in the handshake, and a connection whose certificate is revoked
//! later is closed at its next request; each request's caller is mapped by
//! what the connection's certificate may claim ([`admission`]: root squash)
//! before it is applied or answered.
//!
//! Assumes: the caller of [`Replica::open`] owns the data folder exclusively
//! (RocksDB's LOCK file enforces it).

pub mod admission;
pub mod machine;
pub mod replicated;
pub mod sequencer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use chorus_fs::ops::{OpResult, Request};
use chorus_fs::{FsStore, StoreOptions};
use tracing::{info, warn};

pub use sequencer::Sequencer;

/// Connections one replica serves at once; more are closed after their
/// handshake ([`chorus_wire::rpc::CLOSE_BUSY`]).
pub const CONNECTIONS_MAX: usize = 256;
/// A client connection with no request for this long is closed (the mount
/// reconnects at its next request); keep-alives alone would keep it forever.
pub const CLIENT_IDLE_CLOSE: std::time::Duration = std::time::Duration::from_secs(600);

/// How to run one replica.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Folder that holds this replica's state store.
    pub data_dir: PathBuf,
    /// Folder made by `chorus init` (CA and certificates).
    pub certs_dir: PathBuf,
    /// Which replica certificate to present.
    pub replica_id: usize,
    /// Address to listen on (loopback for local clusters).
    pub listen: SocketAddr,
}

/// A replica's state: the store plus the sequencer that orders mutations.
pub struct Replica {
    store: Arc<FsStore>,
    sequencer: Sequencer,
}

impl Replica {
    /// Opens (or creates) the replica's state under `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Arc<Replica>> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data folder {}", data_dir.display()))?;
        let store = FsStore::open(&data_dir.join("state"), StoreOptions::default())
            .with_context(|| format!("cannot open the state store in {}", data_dir.display()))?;
        let store = Arc::new(store);
        info!(applied_index = store.applied_index(), "state store open");
        Ok(Arc::new(Replica { sequencer: Sequencer::new(store.clone()), store }))
    }

    pub fn store(&self) -> &Arc<FsStore> {
        &self.store
    }

    /// Executes one client request. Mutations go through the sequencer;
    /// queries read applied state directly (RocksDB reads are thread-safe).
    pub fn handle(&self, req: Request) -> OpResult {
        let result = match req {
            Request::Mutate { caller, op } => self.sequencer.submit(caller, op),
            Request::Query { caller, query } => self.store.query(&caller, &query),
        };
        match result {
            Ok(r) => r,
            Err(e) => {
                // A storage failure must never turn into a half-applied entry or
                // a silent success: the client sees EIO and the log says why.
                warn!(error = %e, "storage error");
                Err(chorus_fs::ops::Errno(libc_eio()))
            }
        }
    }
}

fn libc_eio() -> i32 {
    5 // EIO; kept local so this crate needs no libc dependency
}

/// Runs a replica until `shutdown` resolves: binds the QUIC endpoint, serves
/// every connection, then closes the endpoint and flushes the store.
pub async fn run(cfg: ServerConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let identity = chorus_wire::certs::load_identity(&cfg.certs_dir, chorus_wire::certs::Role::Replica(cfg.replica_id))
        .with_context(|| format!("cannot load certificates from {}", cfg.certs_dir.display()))?;
    let revoked = Arc::new(chorus_wire::revoke::RevocationList::in_certs_dir(&cfg.certs_dir));
    let server_cfg = chorus_wire::tls::server_config_revoking(&identity, Some(revoked.clone()))?;
    let replica = tokio::task::block_in_place(|| Replica::open(&cfg.data_dir))?;
    let endpoint = chorus_wire::endpoint::server(cfg.listen, server_cfg)?;
    info!(listen = %cfg.listen, replica = cfg.replica_id, "serving");
    serve(endpoint.clone(), replica.clone(), revoked, shutdown).await;
    endpoint.close(0u32.into(), b"server shutting down");
    endpoint.wait_idle().await;
    tokio::task::block_in_place(|| replica.store().sync())?;
    info!("stopped");
    Ok(())
}

/// Accept loop: one task per connection, each serving requests concurrently.
///
/// A connection takes its slot ([`CONNECTIONS_MAX`], and its certificate's
/// quota, [`chorus_wire::quota`]) only once its handshake succeeded:
/// handshakes are bounded apart ([`chorus_wire::rpc::Handshakes`]), so peers
/// that never finish one (they need no certificate to start) cannot keep
/// authenticated clients out. All connections of one certificate share one
/// budget of request bytes; a connection with no request for
/// [`CLIENT_IDLE_CLOSE`] is closed (clients reconnect on demand).
pub async fn serve(
    endpoint: quinn::Endpoint,
    replica: Arc<Replica>,
    revoked: Arc<chorus_wire::revoke::RevocationList>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let handshakes = chorus_wire::rpc::Handshakes::new(chorus_wire::rpc::HANDSHAKES_MAX);
    let quotas = chorus_wire::quota::Quotas::new(chorus_wire::quota::Limits::default());
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            _ = &mut shutdown => break,
            inc = endpoint.accept() => match inc { Some(i) => i, None => break },
        };
        let Some(handshake) = handshakes.admit(incoming) else { continue };
        let replica = replica.clone();
        let revoked = revoked.clone();
        let connections = connections.clone();
        let quotas = quotas.clone();
        tokio::spawn(async move {
            // Refused handshakes (unknown CA, no certificate, revoked) are logged there.
            let Ok(conn) = handshake.complete().await else { return };
            let peer = conn.remote_address();
            let Ok(_permit) = connections.try_acquire_owned() else {
                warn!(%peer, "too many connections; refusing one");
                conn.close(chorus_wire::rpc::CLOSE_BUSY, b"too many connections");
                return;
            };
            let Some(cert) = chorus_wire::certs::peer_cert(&conn) else { return };
            let slot = match quotas.connect(&cert.fingerprint) {
                Ok(slot) => slot,
                Err(e) => {
                    warn!(%peer, cert = %cert.label(), error = %e, "refusing a connection");
                    conn.close(chorus_wire::rpc::CLOSE_BUSY, e.to_string().as_bytes());
                    return;
                }
            };
            let options = chorus_wire::rpc::ServeOptions { budget: slot.quota().budget(), idle_close: Some(CLIENT_IDLE_CLOSE) };
            let closer = conn.clone();
            let handler = move |mut req: Request| {
                let replica = replica.clone();
                let revoked_now = revoked.is_revoked(&cert.fingerprint);
                admission::admit_request(cert.may_act_as_root(), &mut req);
                let (closer, label) = (closer.clone(), cert.label());
                async move {
                    if revoked_now {
                        warn!(%peer, cert = %label, "closing the connection of a revoked certificate");
                        closer.close(0x52u32.into(), b"this client's certificate was revoked");
                        return Err(chorus_fs::ops::Errno(13)); // EACCES
                    }
                    tokio::task::spawn_blocking(move || replica.handle(req)).await.unwrap_or(Err(chorus_fs::ops::Errno(libc_eio())))
                }
            };
            if let Err(e) = chorus_wire::rpc::serve_connection_with(conn, options, handler).await {
                warn!(%peer, error = %e, "connection closed with error");
            }
            drop(slot);
        });
    }
}
