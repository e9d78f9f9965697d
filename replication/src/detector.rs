//! Failure detector: heartbeats and adaptive suspicion timeouts.
//!
//! Guarantees: a peer that keeps sending (at least one message per heartbeat
//! interval reaching us) is eventually never suspected once delays settle,
//! because the timeout follows the observed inter-arrival mean plus four
//! deviations (Jacobson/Karels, as TCP does for its retransmission timer),
//! clamped to `[suspicion_timeout_min_ms, suspicion_timeout_max_ms]`. A peer
//! that falls silent is suspected within `suspicion_timeout_max_ms` plus
//! jitter. Suspicion is only a hint: safety never depends on it, only the
//! liveness of view changes does.
//!
//! Assumes: the leader sends something (Prepare or Commit) to every replica of
//! U at least every `heartbeat_interval_ms`; the jitter comes from the
//! replica's seeded random source.
//!
//! Messages: none of its own; every message received counts as a heartbeat
//! from its sender, and the leader's `Commit` is the explicit heartbeat.

use crate::{Config, Millis, ReplicaId};

/// Inter-arrival statistics of one peer, in milliseconds scaled by 8
/// (integer arithmetic keeps the core deterministic across platforms).
#[derive(Clone, Copy, Debug, Default)]
struct Peer {
    last_heard_ms: Option<Millis>,
    mean_x8: u64,
    deviation_x8: u64,
    samples: u64,
}

/// Per-peer heartbeat bookkeeping.
#[derive(Clone, Debug)]
pub struct Detector {
    peers: Vec<Peer>,
    timeout_min_ms: Millis,
    timeout_max_ms: Millis,
    heartbeat_interval_ms: Millis,
    jitter_ms: Millis,
}

impl Detector {
    /// A detector over U with a fixed `jitter_ms` (drawn by the caller from
    /// its seeded random source).
    pub fn new(config: &Config, jitter_ms: Millis) -> Detector {
        Detector {
            peers: vec![Peer::default(); config.replica_count as usize],
            timeout_min_ms: config.suspicion_timeout_min_ms,
            timeout_max_ms: config.suspicion_timeout_max_ms,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            jitter_ms,
        }
    }

    /// Re-draws the jitter (after each view change, so that the same replica
    /// is not always the first to time out).
    pub fn set_jitter(&mut self, jitter_ms: Millis) {
        self.jitter_ms = jitter_ms;
    }

    /// The random extra currently added to every timeout.
    pub fn jitter_ms(&self) -> Millis {
        self.jitter_ms
    }

    /// Records a message from `peer` at `now_ms`.
    pub fn heard(&mut self, peer: ReplicaId, now_ms: Millis) {
        let p = &mut self.peers[peer as usize];
        if let Some(last) = p.last_heard_ms {
            let sample_x8 = now_ms.saturating_sub(last) * 8;
            if p.samples == 0 {
                p.mean_x8 = sample_x8;
                p.deviation_x8 = sample_x8 / 2;
            } else {
                let error = sample_x8.abs_diff(p.mean_x8);
                // mean += (sample - mean) / 8; deviation += (|error| - deviation) / 4
                p.mean_x8 = (p.mean_x8 * 7 + sample_x8) / 8;
                p.deviation_x8 = (p.deviation_x8 * 3 + error) / 4;
            }
            p.samples += 1;
        }
        p.last_heard_ms = Some(now_ms);
    }

    /// Forgets the past of `peer` and starts its clock at `now_ms` (a new
    /// leader, or a view change: give it a full timeout before suspecting it).
    pub fn reset(&mut self, peer: ReplicaId, now_ms: Millis) {
        let p = &mut self.peers[peer as usize];
        p.last_heard_ms = Some(now_ms);
    }

    /// The current suspicion timeout for `peer`.
    pub fn timeout_ms(&self, peer: ReplicaId) -> Millis {
        let p = &self.peers[peer as usize];
        let adaptive = if p.samples < 4 {
            // Too few samples to trust: assume the nominal heartbeat rate.
            self.heartbeat_interval_ms * 4
        } else {
            (p.mean_x8 + 4 * p.deviation_x8) / 8 + self.heartbeat_interval_ms
        };
        adaptive.clamp(self.timeout_min_ms, self.timeout_max_ms) + self.jitter_ms
    }

    /// When `peer` becomes suspected if nothing more arrives.
    pub fn deadline_ms(&self, peer: ReplicaId) -> Option<Millis> {
        self.peers[peer as usize].last_heard_ms.map(|t| t + self.timeout_ms(peer))
    }

    /// Whether `peer` is suspected at `now_ms`.
    pub fn suspects(&self, peer: ReplicaId, now_ms: Millis) -> bool {
        match self.deadline_ms(peer) {
            Some(deadline) => now_ms >= deadline,
            None => true,
        }
    }

    /// Last time anything arrived from `peer`.
    pub fn last_heard_ms(&self, peer: ReplicaId) -> Option<Millis> {
        self.peers[peer as usize].last_heard_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_adapts_to_jitter_and_is_clamped() {
        let mut config = Config::new(3);
        config.heartbeat_interval_ms = 10;
        config.suspicion_timeout_min_ms = 30;
        config.suspicion_timeout_max_ms = 500;
        let mut d = Detector::new(&config, 0);
        let mut t = 0;
        for _ in 0..50 {
            t += 10;
            d.heard(1, t);
        }
        let steady = d.timeout_ms(1);
        assert_eq!(steady, 30, "regular heartbeats sit at the floor");
        for i in 0..50 {
            t += if i % 2 == 0 { 5 } else { 80 };
            d.heard(1, t);
        }
        assert!(d.timeout_ms(1) > 100, "jittery arrivals widen the timeout");
        assert!(!d.suspects(1, t + 50));
        assert!(d.suspects(1, t + 600));
    }
}
