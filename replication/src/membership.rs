//! Membership: views of a majority of U, and the view change (the flush).
//!
//! A view is (number, leader, members). The leader of view v is replica
//! `v mod n`; members are the replicas whose DoViewChange the leader used
//! (always a majority of U, leader included). Only a view formed by a
//! majority exists at all: the primary partition.
//!
//! Guarantees:
//! - View numbers are durable and monotonic on every replica: a replica moves
//!   to a view only by persisting a superblock with it, and messages that
//!   reveal the new view (DoViewChange, StartView) are held until that
//!   superblock is durable.
//! - The view change is a flush. The new leader collects DoViewChange from a
//!   majority (its own included), takes the log of the one with the highest
//!   (last normal view, op), and installs it as the view's log; every entry
//!   committed in any earlier view is in it, because a commit quorum and a
//!   view-change quorum intersect, and a replica with last normal view u has
//!   a prefix of u's leader log at least as long as u's starting log. Only
//!   then does the leader send StartView and resume ordering.
//! - A replica out of the current view (it missed StartView, it lost its disk,
//!   it was not among the DoViewChange senders) rejects messages of older
//!   views, catches up by state transfer, and becomes a member again only
//!   when the leader starts a new view that it takes part in (Join).
//! - One replica's suspicion does not move a healthy group: a Normal leader,
//!   and a Normal follower that does not suspect its leader, ignore
//!   StartViewChange of a higher view; a replica left alone in a view nobody
//!   formed sends Join to the leader of the lower view once it hears it, and
//!   that leader moves the group to a view it leads above the straggler's
//!   (docs/protocol.md V1b).
//!
//! Assumes: a majority of U eventually stays up and connected for a view
//! change timeout (liveness only).
//!
//! Messages: StartViewChange (any → all), DoViewChange (any → new leader),
//! StartView (new leader → members), Join (non-member → leader).

use serde::{Deserialize, Serialize};

use crate::message::LogSuffix;
use crate::{Millis, Op, ReplicaId, ViewNumber};

/// A set of replicas of U (bit i = replica i).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Members(pub u64);

impl Members {
    /// The whole universe of `n` replicas.
    pub fn all(n: u8) -> Members {
        Members(if n >= 64 { u64::MAX } else { (1u64 << n) - 1 })
    }

    /// No replica.
    pub fn empty() -> Members {
        Members(0)
    }

    /// Whether `r` is in the set.
    pub fn contains(&self, r: ReplicaId) -> bool {
        self.0 & (1 << r) != 0
    }

    /// Adds `r`.
    pub fn insert(&mut self, r: ReplicaId) {
        self.0 |= 1 << r;
    }

    /// Number of replicas in the set.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The replicas in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        let bits = self.0;
        (0..64u8).filter(move |r| bits & (1 << r) != 0)
    }
}

impl FromIterator<ReplicaId> for Members {
    fn from_iter<I: IntoIterator<Item = ReplicaId>>(iter: I) -> Members {
        let mut m = Members::empty();
        for r in iter {
            m.insert(r);
        }
        m
    }
}

/// The leader of `view` in a universe of `n`.
pub fn leader_of(view: ViewNumber, n: u8) -> ReplicaId {
    (view % n as u64) as ReplicaId
}

/// The smallest view above `view` that `me` leads (a leader that wants to
/// admit a joiner moves the group there and stays leader).
pub fn next_view_led_by(view: ViewNumber, me: ReplicaId, n: u8) -> ViewNumber {
    let mut v = view + 1;
    while leader_of(v, n) != me {
        v += 1;
    }
    v
}

/// One DoViewChange as received by the new leader.
#[derive(Clone, Debug)]
pub struct Vote {
    /// Sender's last normal view.
    pub last_normal_view: ViewNumber,
    /// Sender's commit point.
    pub commit: Op,
    /// Sender's log above a point at or below its commit point (see
    /// `Replica::try_vote`); `log.op()` is its last op.
    pub log: LogSuffix,
}

/// The state of a view change in progress on one replica.
#[derive(Clone, Debug, Default)]
pub struct ViewChange {
    /// The view being formed.
    pub view: ViewNumber,
    /// When this replica entered it.
    pub started_ms: Millis,
    /// Who sent StartViewChange for it (self included).
    pub started_by: Members,
    /// Whether this replica has sent (or queued) its DoViewChange.
    pub voted: bool,
    /// New leader only: the votes received, by sender.
    pub votes: Vec<Option<Vote>>,
    /// New leader only: once a majority voted, install at this time even if
    /// the rest have not.
    pub install_at_ms: Option<Millis>,
    /// Voter only: the lowest commit point the new leader reported (through
    /// RequestPrepares in this view) when it could not splice our vote; our
    /// DoViewChange then carries the log above it instead of above our own
    /// commit point.
    pub leader_commit: Option<Op>,
    /// New leader only: when it last asked the best voter for the entries
    /// between its own commit point and that vote's base.
    pub fetch_sent_ms: Option<Millis>,
}

impl ViewChange {
    /// Starts collecting for `view`.
    pub fn new(view: ViewNumber, n: u8, now_ms: Millis) -> ViewChange {
        ViewChange {
            view,
            started_ms: now_ms,
            started_by: Members::empty(),
            voted: false,
            votes: vec![None; n as usize],
            install_at_ms: None,
            leader_commit: None,
            fetch_sent_ms: None,
        }
    }

    /// Senders of the votes received.
    pub fn voters(&self) -> Members {
        self.votes.iter().enumerate().filter(|(_, v)| v.is_some()).map(|(i, _)| i as ReplicaId).collect()
    }

    /// The most advanced vote: highest (last normal view, op), ties to the
    /// lowest replica id so the choice is deterministic.
    pub fn best(&self) -> Option<(ReplicaId, &Vote)> {
        let mut best: Option<(ReplicaId, &Vote)> = None;
        for (i, vote) in self.votes.iter().enumerate() {
            let Some(vote) = vote else { continue };
            let better = match best {
                None => true,
                Some((_, b)) => (vote.last_normal_view, vote.log.op()) > (b.last_normal_view, b.log.op()),
            };
            if better {
                best = Some((i as ReplicaId, vote));
            }
        }
        best
    }

    /// Highest commit point among the votes.
    pub fn max_commit(&self) -> Op {
        self.votes.iter().flatten().map(|v| v.commit).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Entry;

    fn vote(lnv: ViewNumber, ops: Op) -> Vote {
        let entries = (1..=ops).map(|op| Entry { op, view: lnv, timestamp_ms: 0, requests: vec![] }).collect();
        Vote { last_normal_view: lnv, commit: 0, log: LogSuffix { base: 0, entries } }
    }

    #[test]
    fn best_prefers_last_normal_view_then_op() {
        let mut vc = ViewChange::new(4, 3, 0);
        vc.votes[0] = Some(vote(2, 9));
        vc.votes[1] = Some(vote(3, 4));
        vc.votes[2] = Some(vote(3, 4));
        assert_eq!(vc.best().unwrap().0, 1);
        assert_eq!(next_view_led_by(4, 1, 3), 7);
        assert_eq!(leader_of(7, 3), 1);
    }
}
