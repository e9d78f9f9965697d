//! `chorus-wire`: the transport every ChorusFS component uses.
//!
//! Guarantees: all traffic is QUIC (quinn) with mutual TLS 1.3 (rustls,
//! ring) against one cluster CA made by [`certs::init_cluster`]; unknown
//! certificates are refused in the handshake and no code path skips
//! verification. Messages travel in bounded, versioned frames
//! ([`frame`]) encoded with one fixed set of bincode options ([`codec`]);
//! [`rpc`] multiplexes many concurrent request/response calls on one
//! connection and lets a server push messages to a client. Malformed input
//! closes only the offending connection.
//!
//! Assumes: a tokio runtime. The crate is generic: it knows nothing of
//! ChorusFS messages; any `Serialize + DeserializeOwned` type travels.
//!
//! Typical use:
//! ```no_run
//! # async fn demo(dir: &std::path::Path) -> Result<(), chorus_wire::WireError> {
//! use chorus_wire::{certs, endpoint, rpc, tls};
//! let server_id = certs::load_identity(dir, certs::Role::Replica(0))?;
//! let server = endpoint::server("127.0.0.1:7000".parse().unwrap(), tls::server_config(&server_id)?)?;
//! tokio::spawn(async move {
//!     while let Some(incoming) = server.accept().await {
//!         tokio::spawn(async move {
//!             let conn = rpc::accept(incoming).await?; // refused certificates are logged here
//!             let push = chorus_wire::ServerConn::new(conn.clone()); // optional: server-to-client messages
//!             let role = push.peer_role(); // Some(Role::Client) etc., from the verified certificate
//!             rpc::serve_connection(conn, |n: u64| async move { n + 1 }).await
//!         });
//!     }
//! });
//! let client_id = certs::load_identity(dir, certs::Role::Client)?;
//! let target = "127.0.0.1:7000".parse().unwrap();
//! let ep = endpoint::client(tls::client_config(&client_id)?, endpoint::client_bind_for(target))?;
//! let client = rpc::RpcClient::connect(&ep, target).await?;
//! let answer: u64 = client.call(&41u64).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod blob;
pub mod certs;
pub mod codec;
pub mod endpoint;
mod error;
pub mod frame;
pub mod quota;
pub mod revoke;
pub mod rpc;
pub mod tls;

pub use blob::Blob;
pub use certs::{Identity, Role};
pub use error::WireError;
pub use frame::FrameError;
pub use rpc::{PushReceiver, RpcClient, ServerConn};
