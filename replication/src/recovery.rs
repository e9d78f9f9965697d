//! Recovery, catch-up and state transfer.
//!
//! Three ways back into the group:
//! - Restart with the disk intact: the replica loads its superblock,
//!   checkpoint and log (see [`crate::Replica::new`]); its commit point
//!   restarts at the checkpoint and is re-learnt from the leader, so nothing
//!   uncommitted is applied. A replica that led its view before the crash
//!   does not lead it again (it could not know which ops it had handed out
//!   and lost): it starts a view change instead. It waits `lease_ms` before
//!   voting, covering a lease promise it forgot.
//! - Catch-up (state transfer) when it learns of a newer view than its own,
//!   or cannot splice a StartView onto its committed prefix: it sends
//!   GetState(view, commit) to the leader, which answers NewState with its
//!   log above the requester's commit point or, if that was compacted away,
//!   its newest checkpoint plus the log above it. The install is atomic
//!   (one durable write), and only then does the replica become normal in
//!   that view, with `last_normal_view` = that view.
//! - Recovery when the disk is lost (no superblock): the replica must not
//!   vote or acknowledge anything. It sends Recovery(nonce) to all; normal
//!   replicas answer with their view, the leader also with its state. Once it
//!   has answers from a majority of U including the leader of the highest view
//!   among them, it installs the leader's state and becomes normal in that
//!   view (Viewstamped Replication revisited, section 4.3). Recovery is
//!   idempotent: a crash during recovery just starts it again.
//!
//! Guarantees: a replica never votes, acknowledges or answers recovery
//! before its state is that of a view's leader (or its own durable state);
//! installed state is durable before any message reveals it.
//!
//! Assumes: a majority of U other than the recovering replica is up and
//! normal, one of them the leader (liveness only).
//!
//! Messages: GetState / NewState, Recovery / RecoveryResponse.

use crate::message::StateTransfer;
use crate::{Millis, ReplicaId, ViewNumber};

/// A recovery in progress.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// Names this attempt; answers with another nonce are stale.
    pub nonce: u64,
    /// When Recovery was last broadcast.
    pub sent_ms: Millis,
    /// Answers by responder: its view and, from a leader, its state.
    pub responses: Vec<Option<(ViewNumber, Option<StateTransfer>)>>,
}

impl Recovery {
    /// A fresh attempt.
    pub fn new(nonce: u64, replica_count: u8, now_ms: Millis) -> Recovery {
        Recovery { nonce, sent_ms: now_ms, responses: vec![None; replica_count as usize] }
    }

    /// Records an answer (a later answer from the same replica replaces an
    /// earlier one only if its view is at least as high).
    pub fn record(&mut self, from: ReplicaId, view: ViewNumber, state: Option<StateTransfer>) {
        let slot = &mut self.responses[from as usize];
        if slot.as_ref().is_none_or(|(v, _)| view >= *v) {
            *slot = Some((view, state));
        }
    }

    /// The state to install: needs `majority` answers, one of them from the
    /// leader of the highest view answered, carrying its state.
    pub fn decide(&self, majority: usize, leader_of: impl Fn(ViewNumber) -> ReplicaId) -> Option<(ViewNumber, &StateTransfer)> {
        let answered = self.responses.iter().filter(|r| r.is_some()).count();
        if answered < majority {
            return None;
        }
        let view = self.responses.iter().flatten().map(|(v, _)| *v).max()?;
        let leader = leader_of(view);
        match &self.responses[leader as usize] {
            Some((v, Some(state))) if *v == view => Some((view, state)),
            _ => None,
        }
    }
}
