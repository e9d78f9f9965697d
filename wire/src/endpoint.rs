//! QUIC endpoints: one UDP socket each, bound with errors a user understands.
//!
//! Guarantees: a port already taken is reported as
//! [`WireError::AddrInUse`] ("port 7000 on 127.0.0.1 is in use"), not as a
//! bare errno; a client endpoint binds an ephemeral port of the family the
//! caller asks for and carries the cluster client configuration as default.
//! Assumes: called inside a tokio runtime (quinn's runtime-tokio needs one).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::WireError;

fn bind_err(addr: SocketAddr, source: std::io::Error) -> WireError {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        WireError::AddrInUse(addr)
    } else {
        WireError::Bind { addr, source }
    }
}

/// Binds a server endpoint on `addr`.
pub fn server(addr: SocketAddr, cfg: quinn::ServerConfig) -> Result<quinn::Endpoint, WireError> {
    quinn::Endpoint::server(cfg, addr).map_err(|e| bind_err(addr, e))
}

/// A client endpoint bound on `bind` (use [`client_bind_for`] to pick
/// `127.0.0.1:0` / `0.0.0.0:0` / `[::]:0` for a target), with `cfg` as the
/// default client configuration.
pub fn client(cfg: quinn::ClientConfig, bind: SocketAddr) -> Result<quinn::Endpoint, WireError> {
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| bind_err(bind, e))?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

/// An ephemeral local address able to reach `target`: loopback for a
/// loopback target (so tests never touch other interfaces), otherwise the
/// unspecified address of the target's family.
pub fn client_bind_for(target: SocketAddr) -> SocketAddr {
    let ip = match target.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}
