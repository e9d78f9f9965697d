//! Per-client quotas: what one client certificate may hold on one server.
//!
//! "A client" is a certificate, named by its fingerprint: every holder of
//! the same certificate (the cluster's shared `client` certificate of
//! `chorus init`, or one host's certificate from `chorus cert issue`) is one
//! client here, and shares one set of quotas.
//!
//! Guarantees (per certificate, per server process):
//! - at most [`Limits::connections`] connections at once; more are refused
//!   after the handshake ([`Quotas::connect`]);
//! - one [`crate::rpc::Budget`] shared by all its connections: at most
//!   [`Limits::requests`] requests and [`Limits::request_bytes`] bytes of
//!   requests held by the server at once (read, decoded, handled or being
//!   answered), so more connections do not buy more server memory;
//! - at most [`Limits::waiters`] requests waiting for the replication core
//!   at once ([`CertQuota::waiters`], used by the replicated node);
//! - registrations through a token bucket ([`CertQuota::try_register`]):
//!   a burst of [`Limits::register_burst`], then [`Limits::registers_per_sec`].
//!   The bucket outlives the certificate's connections (reconnecting does
//!   not refill it).
//!
//! These are local admission decisions taken before a request is ordered;
//! nothing here enters the replicated state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::rpc::Budget;

/// What one certificate may hold on one server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Connections at once.
    pub connections: usize,
    /// Requests held by the server at once, all its connections together.
    pub requests: usize,
    /// Bytes of requests held by the server at once, all its connections together.
    pub request_bytes: usize,
    /// Requests waiting for the replication core's reply at once.
    pub waiters: usize,
    /// Registrations allowed at once after a quiet period.
    pub register_burst: u32,
    /// Registrations allowed per second after the burst.
    pub registers_per_sec: u32,
}

/// Connections one certificate may hold on one server.
pub const CONNECTIONS_PER_CERT_MAX: usize = 32;
/// Requests one certificate may have held by one server at once.
pub const REQUESTS_PER_CERT_MAX: usize = 1024;
/// Bytes of requests one certificate may have held by one server at once
/// (half of the leader's queue bound, `pending_bytes_max`, 64 MiB).
pub const REQUEST_BYTES_PER_CERT_MAX: usize = 32 * 1024 * 1024;
/// Requests of one certificate waiting for the replication core at once
/// (a quarter of the leader's queue bound, `pending_requests_max`, 4096).
pub const WAITERS_PER_CERT_MAX: usize = 1024;
/// Session registrations one certificate may make at once.
pub const REGISTER_BURST: u32 = 256;
/// Session registrations per second one certificate may make after its burst.
pub const REGISTERS_PER_SEC: u32 = 2;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: CONNECTIONS_PER_CERT_MAX,
            requests: REQUESTS_PER_CERT_MAX,
            request_bytes: REQUEST_BYTES_PER_CERT_MAX,
            waiters: WAITERS_PER_CERT_MAX,
            register_burst: REGISTER_BURST,
            registers_per_sec: REGISTERS_PER_SEC,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this client certificate already holds {held} connections (at most {max})")]
pub struct TooManyConnections {
    /// Connections it holds.
    pub held: usize,
    /// The bound.
    pub max: usize,
}

/// One certificate's quotas.
#[derive(Debug)]
pub struct CertQuota {
    connections: AtomicUsize,
    budget: Arc<Budget>,
    waiters: Arc<Semaphore>,
    registers: Mutex<Bucket>,
    limits: Limits,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl CertQuota {
    fn new(limits: Limits) -> CertQuota {
        CertQuota {
            connections: AtomicUsize::new(0),
            budget: Budget::new(limits.requests, limits.request_bytes),
            waiters: Arc::new(Semaphore::new(limits.waiters.max(1))),
            registers: Mutex::new(Bucket { tokens: limits.register_burst as f64, at: Instant::now() }),
            limits,
        }
    }

    /// The budget all connections of this certificate share.
    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }

    /// Requests of this certificate waiting for the core: a request takes
    /// a permit (a batch one per request) until its reply or its wait ends.
    pub fn waiters(&self) -> Arc<Semaphore> {
        self.waiters.clone()
    }

    /// Takes a registration token; false: this certificate registered too
    /// many sessions lately (answer Busy, do not order it).
    pub fn try_register(&self) -> bool {
        let mut bucket = self.registers.lock();
        self.refill(&mut bucket, Instant::now());
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Connections held now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.limits.registers_per_sec as f64).min(self.limits.register_burst as f64);
        bucket.at = now;
    }

    /// Nothing held and a full bucket: forgetting it changes nothing.
    fn is_fresh(&self, now: Instant) -> bool {
        if self.connections() > 0 {
            return false;
        }
        let mut bucket = self.registers.lock();
        self.refill(&mut bucket, now);
        bucket.tokens >= self.limits.register_burst as f64
    }
}

/// A connection's place in its certificate's quota; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    quota: Arc<CertQuota>,
}

impl ConnectionSlot {
    /// The certificate's quotas.
    pub fn quota(&self) -> &Arc<CertQuota> {
        &self.quota
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.quota.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The quotas of every certificate seen by one server.
#[derive(Debug, Default)]
pub struct Quotas {
    by_cert: Mutex<HashMap<String, Arc<CertQuota>>>,
    limits: Limits,
}

impl Quotas {
    /// Quotas with `limits` for every certificate.
    pub fn new(limits: Limits) -> Arc<Quotas> {
        Arc::new(Quotas { by_cert: Mutex::default(), limits })
    }

    /// A place for one more connection of the certificate `fingerprint`.
    pub fn connect(&self, fingerprint: &str) -> Result<ConnectionSlot, TooManyConnections> {
        let now = Instant::now();
        let mut map = self.by_cert.lock();
        // Forget certificates that hold nothing (bounded by the certificates in use).
        if map.len() > 64 {
            map.retain(|_, q| !q.is_fresh(now));
        }
        let quota = map.entry(fingerprint.to_string()).or_insert_with(|| Arc::new(CertQuota::new(self.limits))).clone();
        drop(map);
        let held = quota.connections.fetch_add(1, Ordering::Relaxed);
        let slot = ConnectionSlot { quota };
        if held >= self.limits.connections {
            return Err(TooManyConnections { held, max: self.limits.connections });
        }
        Ok(slot)
    }

    /// The limits every certificate has.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { connections: 2, requests: 4, request_bytes: 0, waiters: 4, register_burst: 3, registers_per_sec: 1 }
    }

    #[test]
    fn connections_are_counted_per_certificate_and_freed_on_drop() {
        let q = Quotas::new(limits());
        let a1 = q.connect("a").unwrap();
        let _a2 = q.connect("a").unwrap();
        assert_eq!(q.connect("a").unwrap_err(), TooManyConnections { held: 2, max: 2 });
        let _b = q.connect("b").expect("another certificate is not affected");
        drop(a1);
        let a3 = q.connect("a").expect("a freed place is reusable");
        assert!(Arc::ptr_eq(a3.quota(), _a2.quota()), "one certificate, one budget");
        assert!(!Arc::ptr_eq(a3.quota(), _b.quota()));
    }

    #[test]
    fn registrations_are_a_token_bucket_that_survives_reconnecting() {
        let q = Quotas::new(limits());
        let slot = q.connect("a").unwrap();
        assert!((0..3).all(|_| slot.quota().try_register()));
        assert!(!slot.quota().try_register(), "the burst is spent");
        drop(slot);
        let again = q.connect("a").unwrap();
        assert!(!again.quota().try_register(), "reconnecting does not refill the bucket");
        assert!(q.connect("b").unwrap().quota().try_register(), "another certificate has its own bucket");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(again.quota().try_register(), "one token per second comes back");
    }

    #[test]
    fn the_shared_budget_holds_at_least_one_frame() {
        let q = Quotas::new(limits());
        let slot = q.connect("a").unwrap();
        assert_eq!(slot.quota().budget().bytes_available(), crate::frame::PAYLOAD_BYTES_MAX);
    }
}
