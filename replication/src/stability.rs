//! Stability: who has persisted what, and the commit point.
//!
//! Guarantees: the leader's commit point never exceeds the highest op that a
//! majority of U holds durably *in the current view*; since every replica
//! normal in a view holds a prefix of that view's leader log, this means the
//! entries up to the commit point are durable on a majority, and the view
//! change ([`crate::membership`]) carries them into every later view. The
//! commit point never decreases.
//!
//! Assumes: PrepareOk reports only durable ops (the replica computes it from
//! [`crate::log::Journal::durable_op`]) and is sent only once the superblock
//! of its view is durable; acknowledgements from an older view are dropped.
//!
//! Messages: receives PrepareOk (via the replica); the commit point goes out
//! on Prepare and Commit.

use crate::membership::Members;
use crate::{Op, ReplicaId};

/// Per-replica durable op, as acknowledged in the current view.
#[derive(Clone, Debug)]
pub struct AckTracker {
    durable: Vec<Op>,
}

impl AckTracker {
    /// Nobody has acknowledged anything.
    pub fn new(replica_count: u8) -> AckTracker {
        AckTracker { durable: vec![0; replica_count as usize] }
    }

    /// A new view: acknowledgements from the old one do not count.
    pub fn reset(&mut self) {
        self.durable.iter_mut().for_each(|d| *d = 0);
    }

    /// `replica` reports its log durable up to `op` in the current view.
    pub fn record(&mut self, replica: ReplicaId, op: Op) {
        let slot = &mut self.durable[replica as usize];
        *slot = (*slot).max(op);
    }

    /// `replica` lost its disk: what it acknowledged is gone.
    pub fn forget(&mut self, replica: ReplicaId) {
        self.durable[replica as usize] = 0;
    }

    /// What `replica` has acknowledged.
    pub fn acked(&self, replica: ReplicaId) -> Op {
        self.durable[replica as usize]
    }

    /// The highest op durable on `majority` members, counting the leader
    /// `me` with its own `own_durable`. With `one_ack` (an injected bug) the
    /// highest op durable anywhere.
    pub fn commit_point(&self, me: ReplicaId, own_durable: Op, members: Members, majority: usize, one_ack: bool) -> Op {
        let mut ops: Vec<Op> = members.iter().map(|m| if m == me { own_durable } else { self.durable[m as usize] }).collect();
        ops.sort_unstable_by(|a, b| b.cmp(a));
        if one_ack {
            return ops.first().copied().unwrap_or(0);
        }
        if ops.len() < majority {
            return 0;
        }
        ops[majority - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_needs_a_majority_of_u() {
        let members = Members::all(5);
        let mut acks = AckTracker::new(5);
        acks.record(1, 7);
        assert_eq!(acks.commit_point(0, 9, members, 3, false), 0);
        acks.record(2, 5);
        assert_eq!(acks.commit_point(0, 9, members, 3, false), 5);
        assert_eq!(acks.commit_point(0, 9, members, 3, true), 9);
        let three = Members::from_iter([0, 1, 2]);
        acks.record(3, 9);
        assert_eq!(acks.commit_point(0, 9, three, 3, false), 5, "non-members do not count");
    }
}
