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
        Ok(Arc::new(RemoteBackend {
            runtime: tokio::runtime::Handle::current(),
            endpoint,
            server,
            rpc: Mutex::new(rpc),
        }))
    }

    fn client(&self) -> Result<RpcClient, Errno> {
        let current = self.rpc.lock().clone();
        if !current.is_closed() {
            return Ok(current);
        }
        let fresh = self
            .runtime
            .block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, RpcClient::connect(&self.endpoint, self.server)).await
            })
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
