//! Callbacks: leases on what caching clients hold, kept by the leader
//! (DESIGN.md §5, `docs/protocol.md` §15).
//!
//! Guarantees (with the replica, which calls this module):
//! - A read answered under a callback is granted for `lease_ms` from the
//!   leader's clock at the answer; the client counts from when it sent the
//!   request and trusts 90% of it, so its trust always ends first.
//! - Before a change to an object is seen by anyone (the writer's reply, a
//!   read of it on any mount, a read through the log), every other mount
//!   holding a callback on it has acknowledged the recall or its callback has
//!   expired: replies of the writes and reads involved are held, lease reads
//!   of it are parked, until then. A second write to an object under recall
//!   waits for that recall too. So a cached copy is never read after the
//!   change it misses is visible: linearizable reads from a cache.
//! - The writer's mount is never recalled for its own change: it gets the
//!   changed objects in its reply and drops them itself.
//! - A recall holds back only what touches the recalled objects.
//! - A new leader knows no callbacks: until every caching mount in its
//!   session table has reset its cache (`CacheReset`) or the longest lease an
//!   earlier leader could have granted has passed (counted from when this
//!   one became leader, which is after the old leader's lease ended, plus
//!   the drift margin), it holds every reply and parks every read. A mount
//!   that does not answer therefore costs at most one lease.
//! - Everything is bounded: callbacks (`callbacks_max`, beyond which reads
//!   are answered without one), parked reads (`parked_reads_max`, then
//!   `Busy`), held replies (by the pipeline: one per request in flight).
//!
//! Assumes: the state machine names exactly the objects a query returned and
//! a command changed (`StateMachine::read_set`, `take_changed`); clients
//! with [`crate::message::CACHING_CLIENT_BIT`] follow the client rules above.
//!
//! Deterministic: ordered maps only; time comes in as arguments.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::message::{is_caching_client, ClientId, ObjectId, RecallId, Reply, Request};
use crate::Millis;

/// One recall in progress.
#[derive(Debug)]
struct Recall {
    objects: Vec<ObjectId>,
    /// Mounts that have not acknowledged yet.
    waiting: BTreeSet<ClientId>,
    /// When the last of the recalled callbacks expires: the recall ends then
    /// whatever the mounts do.
    deadline_ms: Millis,
}

/// A reply that may go only once recalls end (and the new-leader grace).
#[derive(Debug)]
struct Held {
    waits_for: BTreeSet<RecallId>,
    client: ClientId,
    reply: Reply,
}

/// A new leader's wait for old callbacks to end.
#[derive(Debug)]
struct Grace {
    until_ms: Millis,
    /// Caching mounts of the session table that have not reset yet; filled
    /// once the applied state is complete (before that, every Register of
    /// the old views may not be applied here).
    waiting: Option<BTreeSet<ClientId>>,
    reset: BTreeSet<ClientId>,
}

/// What a recall of a change asks the shell to send.
#[derive(Debug, PartialEq, Eq)]
pub struct RecallOrder {
    /// The mount.
    pub client: ClientId,
    /// The recall's number.
    pub recall: RecallId,
    /// The objects it must drop.
    pub objects: Vec<ObjectId>,
}

/// The leader's callback registry.
#[derive(Debug)]
pub struct Callbacks {
    lease_ms: Millis,
    callbacks_max: usize,
    parked_max: usize,
    /// object → mount → expiry.
    grants: BTreeMap<ObjectId, BTreeMap<ClientId, Millis>>,
    grant_count: usize,
    recalls: BTreeMap<RecallId, Recall>,
    /// Open recalls covering each object.
    recalling: BTreeMap<ObjectId, BTreeSet<RecallId>>,
    next_recall: RecallId,
    held: Vec<Held>,
    parked: VecDeque<Request>,
    grace: Option<Grace>,
    /// A recall ended or the grace did: parked reads should run again.
    released: bool,
}

impl Callbacks {
    /// An empty registry (no grace: a replica that is not leader grants
    /// nothing; [`Callbacks::start_leading`] begins the grace).
    pub fn new(lease_ms: Millis, callbacks_max: usize, parked_max: usize) -> Callbacks {
        Callbacks {
            lease_ms,
            callbacks_max,
            parked_max,
            grants: BTreeMap::new(),
            grant_count: 0,
            recalls: BTreeMap::new(),
            recalling: BTreeMap::new(),
            next_recall: 1,
            held: Vec::new(),
            parked: VecDeque::new(),
            grace: None,
            released: false,
        }
    }

    /// Whether callbacks are on at all.
    pub fn enabled(&self) -> bool {
        self.lease_ms > 0
    }

    /// Forgets everything (a view change): held replies and parked reads
    /// are dropped, their clients retry with the next leader.
    pub fn clear(&mut self) {
        let (lease_ms, callbacks_max, parked_max) = (self.lease_ms, self.callbacks_max, self.parked_max);
        *self = Callbacks::new(lease_ms, callbacks_max, parked_max);
    }

    /// This replica has just become the leader of a view, at `now_ms`: no
    /// change may be seen until old callbacks are gone.
    pub fn start_leading(&mut self, now_ms: Millis) {
        self.clear();
        if self.enabled() {
            // An earlier leader granted only while its lease held, which
            // ended before this view could start; 10% for clock rates.
            let until_ms = now_ms + self.lease_ms + self.lease_ms / 10 + 1;
            self.grace = Some(Grace { until_ms, waiting: None, reset: BTreeSet::new() });
        }
    }

    /// Whether the new-leader grace still holds. `caching_clients` gives
    /// the caching mounts of the session table; it is asked once, when
    /// `applied_complete` first holds.
    pub fn in_grace(&mut self, now_ms: Millis, applied_complete: bool, caching_clients: impl FnOnce() -> BTreeSet<ClientId>) -> bool {
        let Some(grace) = &mut self.grace else { return false };
        if grace.waiting.is_none() && applied_complete {
            let reset = &grace.reset;
            grace.waiting = Some(caching_clients().into_iter().filter(|&c| is_caching_client(c) && !reset.contains(&c)).collect());
        }
        let all_reset = grace.waiting.as_ref().is_some_and(|w| w.is_empty());
        if now_ms >= grace.until_ms || all_reset {
            self.grace = None;
            self.released = true;
            return false;
        }
        true
    }

    /// Ends the grace at once (only the simulator's injected bug does this).
    pub fn end_grace(&mut self) {
        self.grace = None;
    }

    /// Whether the grace waits for `client` (a caching mount that has not
    /// reset yet): its requests are answered `Busy` at once, whose view tells
    /// it to reset (a held reply would tell it nothing, and the grace would
    /// last a whole lease).
    pub fn awaits_reset(&self, client: ClientId) -> bool {
        is_caching_client(client) && self.grace.as_ref().is_some_and(|g| !g.reset.contains(&client))
    }

    /// `client` dropped everything cached under earlier leaders. (Not what
    /// this leader granted: a client may send it again, e.g. after `Busy`,
    /// while it holds this leader's grants.)
    pub fn on_cache_reset(&mut self, client: ClientId) {
        if let Some(grace) = &mut self.grace {
            grace.reset.insert(client);
            if let Some(waiting) = &mut grace.waiting {
                waiting.remove(&client);
            }
        }
    }

    /// `client` holds nothing at all any more (an unmounted mount): its
    /// callbacks go, and every recall waiting for it counts as answered.
    pub fn on_release(&mut self, client: ClientId) {
        self.on_cache_reset(client);
        let mut count = 0;
        self.grants.retain(|_, holders| {
            holders.remove(&client);
            count += holders.len();
            !holders.is_empty()
        });
        self.grant_count = count;
        let waiting: Vec<RecallId> = self.recalls.iter().filter(|(_, r)| r.waiting.contains(&client)).map(|(&id, _)| id).collect();
        for recall in waiting {
            self.on_ack(client, recall);
        }
    }

    /// Whether any of `objects` is being recalled (a read of it must wait).
    pub fn recalling_any(&self, objects: &[ObjectId]) -> bool {
        objects.iter().any(|o| self.recalling.contains_key(o))
    }

    /// Grants `client` callbacks on `objects` until `now_ms + lease`;
    /// returns the lease (0: none granted, the client must not cache).
    pub fn grant(&mut self, client: ClientId, objects: &[ObjectId], now_ms: Millis) -> Millis {
        if !self.enabled() || !is_caching_client(client) || objects.is_empty() || self.grace.is_some() {
            return 0;
        }
        debug_assert!(!self.recalling_any(objects), "granting on an object under recall");
        if self.grant_count + objects.len() > self.callbacks_max {
            self.expire_grants(now_ms);
            if self.grant_count + objects.len() > self.callbacks_max {
                return 0;
            }
        }
        let expires_ms = now_ms + self.lease_ms;
        for &object in objects {
            if self.grants.entry(object).or_default().insert(client, expires_ms).is_none() {
                self.grant_count += 1;
            }
        }
        self.lease_ms
    }

    fn expire_grants(&mut self, now_ms: Millis) {
        let mut count = 0;
        self.grants.retain(|_, holders| {
            holders.retain(|_, expires_ms| *expires_ms > now_ms);
            count += holders.len();
            !holders.is_empty()
        });
        self.grant_count = count;
    }

    /// `writer`'s command changed `changed` (already applied here). Returns
    /// the recalls its reply must wait for (open ones on these objects and
    /// the new one) and the recall messages to send.
    pub fn on_change(&mut self, writer: ClientId, changed: &[ObjectId], now_ms: Millis) -> (BTreeSet<RecallId>, Vec<RecallOrder>) {
        let mut waits_for: BTreeSet<RecallId> = BTreeSet::new();
        let mut per_client: BTreeMap<ClientId, Vec<ObjectId>> = BTreeMap::new();
        let mut deadline_ms = now_ms;
        for object in changed {
            if let Some(open) = self.recalling.get(object) {
                waits_for.extend(open.iter().copied());
            }
            let Some(holders) = self.grants.remove(object) else { continue };
            self.grant_count -= holders.len();
            for (client, expires_ms) in holders {
                if client != writer && expires_ms > now_ms {
                    per_client.entry(client).or_default().push(*object);
                    deadline_ms = deadline_ms.max(expires_ms);
                }
            }
        }
        if per_client.is_empty() {
            return (waits_for, Vec::new());
        }
        let recall = self.next_recall;
        self.next_recall += 1;
        let objects: Vec<ObjectId> = per_client.values().flatten().copied().collect::<BTreeSet<_>>().into_iter().collect();
        for &object in &objects {
            self.recalling.entry(object).or_default().insert(recall);
        }
        let orders = per_client.iter().map(|(&client, objects)| RecallOrder { client, recall, objects: objects.clone() }).collect();
        self.recalls.insert(recall, Recall { objects, waiting: per_client.into_keys().collect(), deadline_ms });
        waits_for.insert(recall);
        (waits_for, orders)
    }

    /// The recalls a reply that returned `objects` must wait for.
    pub fn covering(&self, objects: &[ObjectId]) -> BTreeSet<RecallId> {
        objects.iter().filter_map(|o| self.recalling.get(o)).flatten().copied().collect()
    }

    /// Keeps `reply` until `waits_for` have ended (and the grace, if any).
    pub fn hold(&mut self, waits_for: BTreeSet<RecallId>, client: ClientId, reply: Reply) {
        self.held.push(Held { waits_for, client, reply });
    }

    /// Whether the reply to (session, seq) is held (a retry must not be
    /// answered from the reply cache before it goes).
    pub fn is_held(&self, session: u64, seq: u64) -> bool {
        self.held.iter().any(|h| h.reply.session == session && h.reply.seq == seq)
    }

    /// Parks a read until a recall (or the grace) ends; false when full.
    pub fn park(&mut self, request: Request) -> bool {
        if self.parked.len() >= self.parked_max {
            return false;
        }
        self.parked.push_back(request);
        true
    }

    /// `client` acknowledged `recall`.
    pub fn on_ack(&mut self, client: ClientId, recall: RecallId) {
        let done = match self.recalls.get_mut(&recall) {
            Some(r) => {
                r.waiting.remove(&client);
                r.waiting.is_empty()
            }
            None => false,
        };
        if done {
            self.finish(recall);
        }
    }

    fn finish(&mut self, recall: RecallId) {
        let Some(r) = self.recalls.remove(&recall) else { return };
        for object in r.objects {
            if let Some(open) = self.recalling.get_mut(&object) {
                open.remove(&recall);
                if open.is_empty() {
                    self.recalling.remove(&object);
                }
            }
        }
        for h in &mut self.held {
            h.waits_for.remove(&recall);
        }
        self.released = true;
    }

    /// Ends recalls whose callbacks have all expired.
    pub fn tick(&mut self, now_ms: Millis) {
        let expired: Vec<RecallId> = self.recalls.iter().filter(|(_, r)| r.deadline_ms <= now_ms).map(|(&id, _)| id).collect();
        for id in expired {
            self.finish(id);
        }
    }

    /// Replies free to go now (`in_grace` false) and, when something ended
    /// since the last call, the parked reads to run again.
    pub fn release(&mut self, in_grace: bool) -> (Vec<(ClientId, Reply)>, Vec<Request>) {
        let mut out = Vec::new();
        if !in_grace {
            let mut i = 0;
            while i < self.held.len() {
                if self.held[i].waits_for.is_empty() {
                    let h = self.held.remove(i);
                    out.push((h.client, h.reply));
                } else {
                    i += 1;
                }
            }
        }
        let parked = if std::mem::take(&mut self.released) { self.parked.drain(..).collect() } else { Vec::new() };
        (out, parked)
    }

    /// When the registry next needs a tick: a recall's or the grace's end.
    pub fn next_deadline(&self) -> Option<Millis> {
        let recalls = self.recalls.values().map(|r| r.deadline_ms).min();
        let grace = self.grace.as_ref().map(|g| g.until_ms);
        recalls.into_iter().chain(grace).min()
    }

    /// Held replies, parked reads, open recalls, callbacks (for status).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (self.held.len(), self.parked.len(), self.recalls.len(), self.grant_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Operation, Outcome, CACHING_CLIENT_BIT};

    const A: ClientId = CACHING_CLIENT_BIT | 1;
    const B: ClientId = CACHING_CLIENT_BIT | 2;
    const C: ClientId = CACHING_CLIENT_BIT | 3;

    fn reply(seq: u64) -> Reply {
        Reply { session: 9, seq, view: 1, leader: 0, outcome: Outcome::Done(vec![]), lease_ms: 0, changed: vec![] }
    }

    fn read(client: ClientId, seq: u64) -> Request {
        Request { client, session: 9, seq, low_water: 0, epoch: 0, operation: Operation::Read(vec![]) }
    }

    fn leading(now: Millis) -> Callbacks {
        let mut c = Callbacks::new(1_000, 100, 4);
        c.start_leading(now);
        assert!(!c.in_grace(now, true, BTreeSet::new), "no caching mount in the table: no grace");
        c.release(false);
        c
    }

    #[test]
    fn a_change_recalls_other_holders_and_its_reply_waits_for_their_ack() {
        let mut c = leading(0);
        assert_eq!(c.grant(B, &[5, 6], 10), 1_000);
        assert_eq!(c.grant(C, &[5], 10), 1_000);
        assert_eq!(c.grant(A, &[5], 10), 1_000);
        let (waits, orders) = c.on_change(A, &[5], 20);
        assert_eq!(orders.len(), 2, "B and C, not the writer A: {orders:?}");
        assert!(orders.iter().all(|o| o.objects == vec![5] && o.client != A));
        c.hold(waits, A, reply(1));
        assert!(c.recalling_any(&[5]) && !c.recalling_any(&[6]), "only the changed object is blocked");
        assert!(c.release(false).0.is_empty());
        let recall = orders[0].recall;
        c.on_ack(B, recall);
        assert!(c.release(false).0.is_empty(), "C has not answered");
        c.on_ack(C, recall);
        let (out, _) = c.release(false);
        assert_eq!(out.len(), 1);
        assert!(!c.recalling_any(&[5]));
    }

    #[test]
    fn an_unanswered_recall_ends_when_the_callback_expires() {
        let mut c = leading(0);
        c.grant(B, &[5], 100);
        let (waits, orders) = c.on_change(A, &[5], 200);
        c.hold(waits, A, reply(1));
        assert_eq!(orders.len(), 1);
        assert_eq!(c.next_deadline(), Some(1_100));
        c.tick(1_099);
        assert!(c.release(false).0.is_empty());
        c.tick(1_100);
        assert_eq!(c.release(false).0.len(), 1);
    }

    #[test]
    fn expired_callbacks_are_not_recalled() {
        let mut c = leading(0);
        c.grant(B, &[5], 0);
        let (waits, orders) = c.on_change(A, &[5], 1_000);
        assert!(orders.is_empty() && waits.is_empty());
    }

    #[test]
    fn a_second_write_waits_for_the_first_recall_and_parked_reads_come_back() {
        let mut c = leading(0);
        c.grant(B, &[5], 0);
        let (w1, orders) = c.on_change(A, &[5], 10);
        c.hold(w1, A, reply(1));
        let (w2, more) = c.on_change(C, &[5], 11);
        assert!(more.is_empty(), "nobody holds a callback any more");
        assert_eq!(w2.len(), 1, "but the open recall covers the object");
        c.hold(w2, C, reply(2));
        assert!(c.park(read(C, 3)));
        assert!(c.release(false).1.is_empty(), "nothing ended yet");
        c.on_ack(B, orders[0].recall);
        let (out, parked) = c.release(false);
        assert_eq!(out.len(), 2);
        assert_eq!(parked.len(), 1);
    }

    #[test]
    fn a_new_leader_waits_for_every_caching_mount_or_one_lease() {
        let mut c = Callbacks::new(1_000, 100, 4);
        c.start_leading(0);
        let table = || [A, B, 7].into_iter().collect::<BTreeSet<_>>();
        assert!(c.in_grace(10, false, table), "applied state incomplete");
        assert_eq!(c.grant(A, &[1], 10), 0, "no grants in grace");
        c.on_cache_reset(A);
        assert!(c.in_grace(20, true, table), "B has not reset (7 is not a caching client)");
        c.on_cache_reset(B);
        assert!(!c.in_grace(30, true, table));
        let mut c = Callbacks::new(1_000, 100, 4);
        c.start_leading(0);
        assert!(c.in_grace(1_100, true, table));
        assert!(!c.in_grace(1_101, true, table), "one lease and 10% passed");
    }

    #[test]
    fn a_release_gives_back_every_callback_and_answers_open_recalls() {
        let mut c = leading(0);
        c.grant(B, &[5, 6], 0);
        c.grant(C, &[6], 0);
        let (waits, orders) = c.on_change(A, &[5], 10);
        assert_eq!(orders.len(), 1);
        c.hold(waits, A, reply(1));
        c.on_cache_reset(B);
        assert!(c.release(false).0.is_empty(), "a reset is not a release: B may hold this leader's grants");
        c.on_release(B);
        assert_eq!(c.release(false).0.len(), 1, "B's release answers the recall");
        let (_, orders) = c.on_change(A, &[6], 20);
        assert_eq!(orders.iter().map(|o| o.client).collect::<Vec<_>>(), vec![C], "B holds nothing any more");
    }

    #[test]
    fn bounds_hold() {
        let mut c = leading(0);
        assert_eq!(c.grant(B, &(0..100).collect::<Vec<_>>(), 0), 1_000);
        assert_eq!(c.grant(B, &[1_000], 0), 0, "registry full");
        assert_eq!(c.grant(B, &[1_000], 1_000), 1_000, "expired ones make room");
        assert_eq!(c.grant(7, &[1], 0), 0, "not a caching client");
        for i in 0..4 {
            assert!(c.park(read(B, i)));
        }
        assert!(!c.park(read(B, 9)));
    }
}
