//! Total order: the leader sequences client requests into batches and
//! pipelines them to the members.
//!
//! Guarantees:
//! - Only the leader of a normal view assigns ops, consecutively, each entry
//!   tagged with the view; so two logs holding an entry with the same (op,
//!   view) agree up to it, and a follower normal in a view holds a prefix of
//!   that view's leader log.
//! - At most `pipeline_depth_max` entries are prepared and not committed; at
//!   most `batch_requests_max` requests per entry; at most
//!   `pending_requests_max` requests wait (beyond that the client gets Busy).
//!   Requests pile up while the pipeline is full and leave as one bigger
//!   batch: group commit.
//! - The leader stamps each entry with its clock, never going back.
//!
//! Assumes: followers accept Prepares only from the leader of their current
//! view, only in order (a gap makes them ask with RequestPrepares), and only
//! once their log is that leader's (after StartView or NewState).
//!
//! Messages: Prepare (leader → members; also the repair answer to
//! RequestPrepares), RequestPrepares (follower → leader).

use std::collections::VecDeque;

use crate::message::Request;

/// The leader's queue of client requests not yet in the log.
#[derive(Clone, Debug, Default)]
pub struct Sequencer {
    pending: VecDeque<Request>,
    limit: usize,
}

impl Sequencer {
    /// A queue bounded by `pending_requests_max`.
    pub fn new(limit: usize) -> Sequencer {
        Sequencer { pending: VecDeque::new(), limit }
    }

    /// Queues a request; `false` when full (the client is told Busy).
    pub fn push(&mut self, request: Request) -> bool {
        if self.pending.len() >= self.limit {
            return false;
        }
        self.pending.push_back(request);
        true
    }

    /// Whether the same request (client, session, seq) is already queued.
    pub fn contains(&self, request: &Request) -> bool {
        self.pending.iter().any(|r| same_request(r, request))
    }

    /// Takes the next batch of at most `max` requests and `bytes_max`
    /// payload bytes (always at least one request, so a large one still goes).
    pub fn take_batch(&mut self, max: usize, bytes_max: usize) -> Vec<Request> {
        let mut n = 0;
        let mut bytes = 0;
        for request in self.pending.iter().take(max) {
            bytes += request.payload_bytes();
            if n > 0 && bytes > bytes_max {
                break;
            }
            n += 1;
        }
        self.pending.drain(..n).collect()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Number of requests waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Drops everything (the view ended; clients retry).
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// Whether two requests are the same request (a retry of one another).
pub fn same_request(a: &Request, b: &Request) -> bool {
    a.client == b.client && a.session == b.session && a.seq == b.seq
}
