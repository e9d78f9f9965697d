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
//!   `pending_requests_max` requests and `pending_bytes_max` payload bytes
//!   wait (beyond either the client gets Busy; an empty queue always takes
//!   one request, so a large one is never refused for good).
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
    /// Sum of `payload_bytes` over `pending`.
    pending_bytes: usize,
    limit: usize,
}

impl Sequencer {
    /// A queue bounded by `pending_requests_max` (and, per push, by bytes).
    pub fn new(limit: usize) -> Sequencer {
        Sequencer { pending: VecDeque::new(), pending_bytes: 0, limit }
    }

    /// Queues a request; `false` when full (the client is told Busy): when
    /// `limit` requests wait, or when the request would take the queued
    /// payload beyond `bytes_max` (an empty queue takes any one request).
    /// Why bytes too: a count alone lets 4096 requests of 16 MiB (64 GiB)
    /// wait at the leader.
    pub fn push(&mut self, request: Request, bytes_max: usize) -> bool {
        if self.pending.len() >= self.limit {
            return false;
        }
        let bytes = request.payload_bytes();
        if !self.pending.is_empty() && self.pending_bytes + bytes > bytes_max {
            return false;
        }
        self.pending_bytes += bytes;
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
        let batch: Vec<Request> = self.pending.drain(..n).collect();
        self.pending_bytes -= batch.iter().map(Request::payload_bytes).sum::<usize>();
        debug_assert_eq!(self.pending_bytes, self.pending.iter().map(Request::payload_bytes).sum::<usize>());
        batch
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Number of requests waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Payload bytes waiting.
    pub fn bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Drops everything (the view ended; clients retry).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }
}

/// Whether two requests are the same request (a retry of one another).
pub fn same_request(a: &Request, b: &Request) -> bool {
    a.client == b.client && a.session == b.session && a.seq == b.seq
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Durable;
    use crate::message::{Action, Event, Operation, Outcome, Reply};
    use crate::sim::kv::{KvCommand, KvStore};
    use crate::{Config, Replica};

    fn write(session: u64, seq: u64, bytes: usize) -> Request {
        Request { client: 7, session, seq, low_water: 0, epoch: 0, operation: Operation::Write(vec![0; bytes]) }
    }

    /// A one-replica leader (Normal, its writes durable) and a registered session.
    fn leader_with_session(config: Config) -> (Replica<KvStore>, u64, u64) {
        let mut replica = Replica::new(config, 0, Durable::initial(0, 1), KvStore::new(), 1, 0);
        let mut now = 0;
        while !(replica.status().status == crate::Status::Normal && replica.status().lease_holds) {
            now += 5;
            assert!(now < 10_000, "the single replica never leads: {:?}", replica.status());
            replica.step(now, Event::Tick);
            land_writes(&mut replica, now);
        }
        let register = Request { client: 7, session: 0, seq: 42, low_water: 0, epoch: 0, operation: Operation::Register };
        replica.step(now, Event::Request(register));
        let replies = land_writes(&mut replica, now);
        let session = replies
            .iter()
            .find_map(|r| match r.outcome {
                Outcome::Registered(s) => Some(s),
                _ => None,
            })
            .expect("registered");
        (replica, session, now)
    }

    /// Makes every write durable until none is left; returns the replies.
    fn land_writes(replica: &mut Replica<KvStore>, now: u64) -> Vec<Reply> {
        let mut all = Vec::new();
        loop {
            let (persists, replies) = drain(replica);
            all.extend(replies);
            let Some(&seq) = persists.last() else { return all };
            replica.step(now, Event::Persisted { seq });
        }
    }

    /// (Persist seqs, replies) among the actions.
    fn drain(replica: &mut Replica<KvStore>) -> (Vec<u64>, Vec<Reply>) {
        let mut persists = Vec::new();
        let mut replies = Vec::new();
        for action in replica.poll_actions() {
            match action {
                Action::Persist { seq, .. } => persists.push(seq),
                Action::Reply { reply, .. } => replies.push(reply),
                _ => {}
            }
        }
        (persists, replies)
    }

    #[test]
    fn push_refuses_beyond_the_byte_bound_but_an_empty_queue_takes_one() {
        let mut sequencer = Sequencer::new(100);
        assert!(sequencer.push(write(1, 1, 5_000), 1_000), "an empty queue takes any one request");
        assert!(!sequencer.push(write(1, 2, 10), 1_000));
        let batch = sequencer.take_batch(10, 1 << 20);
        assert_eq!(batch.len(), 1);
        assert_eq!(sequencer.bytes(), 0);
        assert!(sequencer.push(write(1, 3, 400), 1_000)); // 448 bytes with the header
        assert!(sequencer.push(write(1, 4, 400), 1_000)); // 896
        assert!(!sequencer.push(write(1, 5, 400), 1_000)); // would be 1344
        assert_eq!(sequencer.bytes(), 896);
        sequencer.clear();
        assert_eq!(sequencer.bytes(), 0);
    }

    /// Issue 10 #5: the leader's queue is bounded in bytes, not only in
    /// requests. With the pipeline full (no write ever lands), 100 writes of
    /// 1 MiB used to all wait at the leader (the count bound is 4096).
    #[test]
    fn the_leader_answers_busy_beyond_pending_bytes_max() {
        let config = Config::new(1);
        let (mut replica, session, now) = leader_with_session(config.clone());
        let mut busy = 0;
        for seq in 1..=100 {
            replica.step(now + 1, Event::Request(write(session, seq, 1 << 20)));
            let (_, replies) = drain(&mut replica);
            busy += replies.iter().filter(|r| r.outcome == Outcome::Busy).count();
        }
        // 8 entries of one request in the pipeline, then 64 MiB of queue.
        let queued = 100 - config.pipeline_depth_max as usize - busy;
        assert!(busy > 0, "no request was refused: 100 MiB waited at the leader");
        assert!(queued * ((1 << 20) + 48) <= config.pending_bytes_max, "{queued} requests of 1 MiB queued");
        assert!(queued + 1 > config.pending_bytes_max / ((1 << 20) + 48), "the bound refused too early: {queued} queued");
    }

    /// Issue 10 #5: a request on a session the applied table does not hold
    /// is answered SessionUnknown at once, without a log entry.
    #[test]
    fn the_leader_refuses_an_unknown_session_without_ordering_it() {
        let (mut replica, session, now) = leader_with_session(Config::new(1));
        let op = replica.status().op;
        let stranger = session ^ 0x5a5a;
        let read = Request { operation: Operation::Read(KvCommand::Read { key: 1 }.encode()), ..write(stranger, 1, 0) };
        let append = Request { operation: Operation::Write(KvCommand::Append { key: 1, value: 9 }.encode()), ..write(stranger, 2, 0) };
        for request in [append, read] {
            replica.step(now + 2, Event::Request(request.clone()));
            let (persists, replies) = drain(&mut replica);
            assert!(persists.is_empty(), "{request:?} was ordered");
            assert_eq!(replies.len(), 1, "{request:?} got {replies:?}");
            assert!(replies.iter().all(|r| r.outcome == Outcome::SessionUnknown));
        }
        assert_eq!(replica.status().op, op, "nothing entered the log");
        // The registered session still gets its write ordered.
        let ok = Request { operation: Operation::Write(KvCommand::Append { key: 1, value: 9 }.encode()), ..write(session, 1, 0) };
        replica.step(now + 3, Event::Request(ok));
        let (persists, _) = drain(&mut replica);
        assert_eq!(persists.len(), 1);
    }
}
