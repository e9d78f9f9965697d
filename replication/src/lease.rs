//! Leader lease: linearizable reads served from the leader's applied state
//! without a trip through the log.
//!
//! Guarantees: while [`Lease::holds`] is true at the leader of view v, no
//! other view can have been installed, so the leader's committed state is
//! the latest; a read served then is linearizable.
//!
//! How: a follower that receives a Prepare or Commit from the leader of its
//! view at local time r promises not to send DoViewChange for a view led by
//! anyone else before r + `lease_ms` (the promise is kept in memory, and a
//! restarted replica waits a full `lease_ms` before voting, which covers a
//! promise it forgot). The follower echoes the leader's send time s in
//! PrepareOk. A leader holding echoes of send times s_i from a majority of U
//! (itself included) holds the lease until the majority-th largest s_i +
//! `lease_ms` - `lease_drift_margin_ms`: any new view needs a DoViewChange
//! from one of those promisers, and since s_i ≤ r_i, their promises outlast
//! the lease as long as clock rates differ by less than the margin.
//!
//! Assumes: bounded clock-rate drift (not synchronized clocks); the leader
//! also requires, before serving, that every entry of its starting log is
//! committed (so its applied state includes everything committed earlier).
//!
//! Messages: rides on Prepare/Commit (`sent_at_ms`) and PrepareOk (`echo_ms`).

use crate::membership::Members;
use crate::{Config, Millis, ReplicaId};

/// Lease state of one replica, as leader (echoes) and as follower (promise).
#[derive(Clone, Debug)]
pub struct Lease {
    echoes_ms: Vec<Option<Millis>>,
    lease_ms: Millis,
    margin_ms: Millis,
    /// As a follower: do not vote for another leader before this time.
    vote_not_before_ms: Millis,
    /// The leader the promise was made to.
    promised_to: Option<ReplicaId>,
}

impl Lease {
    /// No lease, and no promise beyond `vote_not_before_ms` (a restarting
    /// replica passes `now + lease_ms` to cover promises it forgot).
    pub fn new(config: &Config, vote_not_before_ms: Millis) -> Lease {
        Lease {
            echoes_ms: vec![None; config.replica_count as usize],
            lease_ms: config.lease_ms,
            margin_ms: config.lease_drift_margin_ms,
            vote_not_before_ms,
            promised_to: None,
        }
    }

    /// Drops all echoes (new view: the old view's acknowledgements say
    /// nothing about promises to this leader in this view).
    pub fn clear_echoes(&mut self) {
        self.echoes_ms.iter_mut().for_each(|e| *e = None);
    }

    /// Forgets the echo of one replica (it lost its memory).
    pub fn forget(&mut self, replica: ReplicaId) {
        self.echoes_ms[replica as usize] = None;
    }

    /// Leader side: `replica` echoed send time `echo_ms`.
    pub fn record_echo(&mut self, replica: ReplicaId, echo_ms: Millis) {
        let slot = &mut self.echoes_ms[replica as usize];
        *slot = Some(slot.map_or(echo_ms, |old| old.max(echo_ms)));
    }

    /// Leader side: the lease expiry, given the view's members and a majority size.
    pub fn expiry_ms(&self, me: ReplicaId, members: Members, majority: usize, now_ms: Millis) -> Millis {
        let mut times: Vec<Millis> =
            members.iter().map(|m| if m == me { now_ms } else { self.echoes_ms[m as usize].unwrap_or(0) }).collect();
        if times.len() < majority {
            return 0;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        let s = times[majority - 1];
        if s == 0 {
            return 0;
        }
        (s + self.lease_ms).saturating_sub(self.margin_ms)
    }

    /// Leader side: whether the lease holds at `now_ms`.
    pub fn holds(&self, me: ReplicaId, members: Members, majority: usize, now_ms: Millis) -> bool {
        now_ms < self.expiry_ms(me, members, majority, now_ms)
    }

    /// Follower side: heard from `leader` at `now_ms`.
    pub fn promise(&mut self, leader: ReplicaId, now_ms: Millis) {
        self.vote_not_before_ms = self.vote_not_before_ms.max(now_ms + self.lease_ms);
        self.promised_to = Some(leader);
    }

    /// Whether a DoViewChange for a view led by `new_leader` may be sent now;
    /// otherwise the time when it may.
    pub fn vote_allowed(&self, new_leader: ReplicaId, now_ms: Millis) -> Result<(), Millis> {
        if self.promised_to == Some(new_leader) || now_ms >= self.vote_not_before_ms {
            Ok(())
        } else {
            Err(self.vote_not_before_ms)
        }
    }
}
