//! Client access: sessions, the replicated reply cache, exactly-once.
//!
//! Guarantees:
//! - A request (session, seq) is executed at most once, ever, on the
//!   replicated state: the session table and its cached replies are part of
//!   the state (applied in log order, checkpointed and transferred with it),
//!   so they survive failover, restarts and state transfer. A retry whose
//!   request already ran gets the original reply; a retry older than the
//!   cache gets `TooOld`, never a second execution.
//! - Sessions are opened by a committed `Register`. The id is derived from
//!   the op and the client's random registration nonce, so it is unique and
//!   cannot be guessed by another client (it is the session's credential);
//!   a retried `Register` (same client and nonce) gets the same session, it
//!   never opens a second one. Sessions expire after `session_timeout_ms`
//!   of leader-stamped inactivity. The table holds at most `sessions_max`:
//!   a new session may evict the least recently active one only if that one
//!   has been idle `session_evict_idle_ms` (longer than any client retries a
//!   request), else the registration is refused with `Busy`. So a flood of
//!   registrations cannot evict a session whose client is still retrying.
//! - When the last session of a client ends (expiry or eviction), the
//!   machine hears it ([`StateMachine::client_gone`]) at that point of the
//!   log, so it can release what the client owned (handles, locks): a
//!   client that lives keeps one session active.
//! - Session time is a clock of the log, not of any one machine: it
//!   advances by the difference of consecutive entries' timestamps only
//!   while both come from the same view (one leader process, one monotonic
//!   clock), and not at all across a view change. A new leader whose wall
//!   clock is hours ahead therefore cannot expire or evict anything early;
//!   what the session clock loses is the view-change gaps (expiry comes
//!   late, which is safe). Within a view, a leader clock that runs fast by
//!   the assumed drift (< 10 %) shortens a timeout by that much.
//!   A request on an unknown session gets `SessionUnknown` and is not
//!   executed; the client may take that as "nothing ran" only for a request
//!   it has transmitted once (see the shell's client).
//! - Only commands' replies are cached: a query ordered through the log (a
//!   read barrier without the lease) leaves no trace but the session's
//!   activity, because its answer may depend on the replica (statfs) and
//!   the replicated state must be a function of the log alone.
//! - At most `session_replies_max` replies are cached per session; the
//!   client's low-water mark lets the cache drop replies it has seen.
//! - Everything here is a deterministic function of the log.
//!
//! Assumes: the inner [`StateMachine`] is deterministic; a client does not
//! reuse a sequence number for a different request.
//!
//! Messages: none; the replica feeds it committed entries. Epochs (view
//! numbers) and redirection to the leader are handled by the replica, which
//! stamps its view and leader on every reply.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::message::{is_caching_client, ClientId, Entry, ObjectId, Operation, Outcome, SessionId};
use crate::state_machine::{ApplyContext, CheckpointError, StateMachine};
use crate::{fnv64, Config, Millis, Op};

/// Whether an executed request's reply enters the replicated cache.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    Reply,
    Nothing,
}

/// One client session in the replicated table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    client: ClientId,
    /// The `seq` (a random nonce) of the Register that opened it.
    nonce: u64,
    last_active_ms: Millis,
    /// Requests at or below this seq are refused as too old.
    low_water: u64,
    /// Replies of executed requests above `low_water`.
    replies: BTreeMap<u64, Vec<u8>>,
    /// The objects each of those commands changed (callbacks): a retry
    /// answered from the cache must tell the writer's mount too, else it
    /// keeps a stale copy that no recall will ever reach.
    changed: BTreeMap<u64, Vec<ObjectId>>,
}

#[derive(Serialize, Deserialize)]
struct Image {
    applied_op: Op,
    timestamp_ms: Millis,
    session_clock: SessionClock,
    table: BTreeMap<SessionId, Session>,
    #[serde(with = "serde_bytes")]
    machine: Vec<u8>,
}

/// The session layer's clock (see the module comment): derived from the
/// log's (view, timestamp) pairs alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SessionClock {
    now_ms: Millis,
    last_view: u64,
    last_timestamp_ms: Millis,
}

impl SessionClock {
    fn advance(&mut self, view: u64, timestamp_ms: Millis) -> Millis {
        if view == self.last_view {
            self.now_ms += timestamp_ms.saturating_sub(self.last_timestamp_ms);
        }
        self.last_view = view;
        self.last_timestamp_ms = timestamp_ms;
        self.now_ms
    }
}

/// The user's state machine wrapped in the session layer.
pub struct Sessions<S> {
    machine: S,
    table: BTreeMap<SessionId, Session>,
    by_activity: BTreeSet<(Millis, SessionId)>,
    /// (client, registration nonce) → session, to answer retried Registers.
    by_nonce: BTreeMap<(ClientId, u64), SessionId>,
    /// Sessions per client (derived from `table`).
    sessions_of: BTreeMap<ClientId, u32>,
    /// Clients whose last session ended, not yet told to the machine.
    gone: Vec<ClientId>,
    applied_op: Op,
    timestamp_ms: Millis,
    clock: SessionClock,
    sessions_max: usize,
    replies_max: usize,
    timeout_ms: Millis,
    evict_idle_ms: Millis,
    forget_reply_cache: bool,
}

/// The session id a Register at (`op`, `index`) by `client` with `nonce`
/// gets, unless that value is taken (then the next free one).
pub(crate) fn derive_session_id(op: Op, index: usize, client: ClientId, nonce: u64) -> SessionId {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&op.to_le_bytes());
    bytes[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    bytes[16..24].copy_from_slice(&client.to_le_bytes());
    bytes[24..].copy_from_slice(&nonce.to_le_bytes());
    fnv64(&bytes).rotate_left(29) ^ fnv64(&bytes[8..])
}

/// The state machine's part of a checkpoint image (a core `Checkpoint`'s
/// `state`), for tools that inspect checkpoints on disk.
pub fn machine_part(image: &[u8]) -> Option<Vec<u8>> {
    bincode::deserialize::<Image>(image).ok().map(|image| image.machine)
}

impl<S: StateMachine> Sessions<S> {
    /// Wraps a state machine in its initial state (applied op 0).
    pub fn new(machine: S, config: &Config) -> Sessions<S> {
        Sessions {
            machine,
            table: BTreeMap::new(),
            by_activity: BTreeSet::new(),
            by_nonce: BTreeMap::new(),
            sessions_of: BTreeMap::new(),
            gone: Vec::new(),
            applied_op: 0,
            timestamp_ms: 0,
            clock: SessionClock::default(),
            sessions_max: config.sessions_max,
            replies_max: config.session_replies_max,
            timeout_ms: config.session_timeout_ms,
            evict_idle_ms: config.session_evict_idle_ms,
            forget_reply_cache: config.bugs().forget_reply_cache,
        }
    }

    /// The last op applied.
    pub fn applied_op(&self) -> Op {
        self.applied_op
    }

    /// Leader timestamp of the last op applied.
    pub fn timestamp_ms(&self) -> Millis {
        self.timestamp_ms
    }

    /// The wrapped state machine.
    pub fn machine(&self) -> &S {
        &self.machine
    }

    /// The caching mounts with a session here (those a new leader waits for).
    pub fn caching_clients(&self) -> BTreeSet<ClientId> {
        self.table.values().map(|s| s.client).filter(|&c| is_caching_client(c)).collect()
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.table.len()
    }

    /// Pre-check at the leader, from applied state: the cached reply of a
    /// request that already ran, or `TooOld`; `None` if it must be ordered.
    pub fn precheck(&self, session: SessionId, seq: u64) -> Option<Outcome> {
        if self.forget_reply_cache {
            return None;
        }
        let s = self.table.get(&session)?;
        if seq <= s.low_water {
            return Some(Outcome::TooOld);
        }
        s.replies.get(&seq).map(|r| Outcome::Done(r.clone()))
    }

    /// The objects the cached command (session, seq) changed (empty when
    /// not cached).
    pub fn cached_changed(&self, session: SessionId, seq: u64) -> Vec<ObjectId> {
        self.table.get(&session).and_then(|s| s.changed.get(&seq).cloned()).unwrap_or_default()
    }

    /// Answers a read-only query from applied state.
    pub fn query(&self, query: &[u8]) -> Vec<u8> {
        self.machine.query(query)
    }

    /// Applies the next committed entry; returns one outcome per request.
    pub fn apply_entry(&mut self, entry: &Entry) -> Vec<Outcome> {
        self.apply_entry_tracked(entry).into_iter().map(|(outcome, _)| outcome).collect()
    }

    /// [`Sessions::apply_entry`], with the objects each request changed
    /// (`StateMachine::take_changed`; empty for a reply from the cache).
    pub fn apply_entry_tracked(&mut self, entry: &Entry) -> Vec<(Outcome, Vec<ObjectId>)> {
        assert_eq!(entry.op, self.applied_op + 1, "entries apply in order, exactly once");
        assert!(entry.timestamp_ms >= self.timestamp_ms, "leader clock went back in the log");
        let session_now_ms = self.clock.advance(entry.view, entry.timestamp_ms);
        self.expire(session_now_ms);
        self.tell_gone(entry);
        let mut outcomes = Vec::with_capacity(entry.requests.len());
        for (index, request) in entry.requests.iter().enumerate() {
            let context = ApplyContext { op: entry.op, timestamp_ms: entry.timestamp_ms, client: request.client };
            let outcome = match &request.operation {
                Operation::Register => {
                    let outcome = self.register(entry.op, index, request.client, request.seq, session_now_ms);
                    self.tell_gone(entry);
                    outcome
                }
                Operation::Write(command) => {
                    let outcome = self.execute(request.session, request.seq, request.low_water, session_now_ms, Cache::Reply, |m| {
                        let reply = m.apply(context, command);
                        (reply, m.take_changed())
                    });
                    let changed = self.cached_changed(request.session, request.seq);
                    outcomes.push((outcome, changed));
                    continue;
                }
                // A query changes nothing, and its answer may depend on the
                // replica (statfs: its own disk's free space): it must not
                // enter the replicated reply cache. A retry runs it again,
                // which is still linearizable (a read is idempotent).
                Operation::Read(query) => {
                    self.execute(request.session, request.seq, request.low_water, session_now_ms, Cache::Nothing, |m| {
                        (m.query(query), Vec::new())
                    })
                }
            };
            outcomes.push((outcome, Vec::new()));
        }
        self.applied_op = entry.op;
        self.timestamp_ms = entry.timestamp_ms;
        outcomes
    }

    /// Tells the machine of every client whose last session just ended.
    fn tell_gone(&mut self, entry: &Entry) {
        for client in std::mem::take(&mut self.gone) {
            self.machine.client_gone(ApplyContext { op: entry.op, timestamp_ms: entry.timestamp_ms, client });
            // Nobody can hold a cached copy of what a gone client owned
            // alone; what else it changed is not a client's to be told.
            let _ = self.machine.take_changed();
        }
    }

    fn execute(
        &mut self,
        session: SessionId,
        seq: u64,
        low_water: u64,
        now_ms: Millis,
        cache: Cache,
        run: impl FnOnce(&mut S) -> (Vec<u8>, Vec<ObjectId>),
    ) -> Outcome {
        let Some(s) = self.table.get(&session) else { return Outcome::SessionUnknown };
        let last_active_ms = s.last_active_ms;
        if !self.forget_reply_cache {
            if seq <= s.low_water {
                return Outcome::TooOld;
            }
            if let Some(reply) = s.replies.get(&seq) {
                return Outcome::Done(reply.clone());
            }
        }
        let (reply, changed) = run(&mut self.machine);
        self.by_activity.remove(&(last_active_ms, session));
        self.by_activity.insert((now_ms, session));
        let replies_max = self.replies_max;
        let s = self.table.get_mut(&session).expect("session present");
        s.last_active_ms = now_ms;
        if cache == Cache::Reply {
            s.replies.insert(seq, reply.clone());
            if !changed.is_empty() {
                s.changed.insert(seq, changed);
            }
        }
        // The client has seen everything up to its mark; never drop the reply
        // of the request being answered now.
        s.low_water = s.low_water.max(low_water.min(seq.saturating_sub(1)));
        let low = s.low_water;
        s.replies.retain(|k, _| *k > low);
        while s.replies.len() > replies_max {
            let (oldest, _) = s.replies.pop_first().expect("non-empty");
            s.low_water = s.low_water.max(oldest);
        }
        let low = s.low_water;
        s.changed.retain(|k, _| *k > low);
        Outcome::Done(reply)
    }

    fn register(&mut self, op: Op, index: usize, client: ClientId, nonce: u64, now_ms: Millis) -> Outcome {
        if let Some(&id) = self.by_nonce.get(&(client, nonce)) {
            return Outcome::Registered(id); // a retried Register
        }
        if self.table.len() >= self.sessions_max {
            let oldest = self.by_activity.first().copied();
            match oldest {
                Some((last_active_ms, victim)) if last_active_ms.saturating_add(self.evict_idle_ms) <= now_ms => self.remove(victim),
                // Every session is in use: refuse rather than evict a
                // session whose client may be retrying a request that ran.
                _ => return Outcome::Busy,
            }
        }
        let id = self.fresh_id(op, index, client, nonce);
        let session = Session { client, nonce, last_active_ms: now_ms, low_water: 0, replies: BTreeMap::new(), changed: BTreeMap::new() };
        assert!(self.table.insert(id, session).is_none(), "fresh_id returns an unused id");
        self.by_activity.insert((now_ms, id));
        self.by_nonce.insert((client, nonce), id);
        *self.sessions_of.entry(client).or_insert(0) += 1;
        Outcome::Registered(id)
    }

    /// A session id nobody can guess without the client's nonce: a hash of
    /// the op, the place in its batch, the client and its random nonce. The
    /// rare collision (or 0, which means "no session") moves to the next
    /// free value, deterministically.
    fn fresh_id(&self, op: Op, index: usize, client: ClientId, nonce: u64) -> SessionId {
        let mut id = derive_session_id(op, index, client, nonce);
        while id == 0 || self.table.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        id
    }

    fn remove(&mut self, id: SessionId) {
        if let Some(s) = self.table.remove(&id) {
            self.by_activity.remove(&(s.last_active_ms, id));
            self.by_nonce.remove(&(s.client, s.nonce));
            let count = self.sessions_of.get_mut(&s.client).expect("every session's client is counted");
            *count -= 1;
            if *count == 0 {
                self.sessions_of.remove(&s.client);
                self.gone.push(s.client);
            }
        }
    }

    fn expire(&mut self, now_ms: Millis) {
        while let Some(&(last_active_ms, id)) = self.by_activity.first() {
            if last_active_ms.saturating_add(self.timeout_ms) >= now_ms {
                break;
            }
            self.remove(id);
        }
    }

    /// A self-contained image of the sessions and the machine.
    pub fn checkpoint(&self) -> Vec<u8> {
        let image = Image {
            applied_op: self.applied_op,
            timestamp_ms: self.timestamp_ms,
            session_clock: self.clock,
            table: self.table.clone(),
            machine: self.machine.checkpoint(),
        };
        bincode::serialize(&image).expect("serialize session image")
    }

    /// The machine's part of a checkpoint image (None if it does not decode;
    /// `restore` then reports the error).
    pub fn machine_checkpoint(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        machine_part(bytes)
    }

    /// See [`StateMachine::has_checkpoint`].
    pub fn has_machine_checkpoint(&self, machine_part: &[u8]) -> bool {
        self.machine.has_checkpoint(machine_part)
    }

    /// Gives back the state machine (its state as it is).
    pub fn into_inner(self) -> S {
        self.machine
    }

    /// Replaces everything by a checkpoint image.
    pub fn restore(&mut self, op: Op, bytes: &[u8]) -> Result<(), CheckpointError> {
        let image: Image = bincode::deserialize(bytes).map_err(|e| CheckpointError(e.to_string()))?;
        if image.applied_op != op {
            return Err(CheckpointError(format!("image at op {} labelled {}", image.applied_op, op)));
        }
        self.machine.restore(op, &image.machine)?;
        self.by_activity = image.table.iter().map(|(id, s)| (s.last_active_ms, *id)).collect();
        self.by_nonce = image.table.iter().map(|(id, s)| ((s.client, s.nonce), *id)).collect();
        self.sessions_of.clear();
        for s in image.table.values() {
            *self.sessions_of.entry(s.client).or_insert(0) += 1;
        }
        self.gone.clear();
        self.table = image.table;
        self.applied_op = image.applied_op;
        self.timestamp_ms = image.timestamp_ms;
        self.clock = image.session_clock;
        Ok(())
    }

    /// The digest as a job to run off the event loop (see
    /// [`StateMachine::digest_job`]); the session part is taken now.
    pub fn digest_job(&self) -> Box<dyn FnOnce() -> u64 + Send + 'static> {
        let table = fnv64(&bincode::serialize(&(self.applied_op, self.clock, &self.table)).expect("serialize table"));
        match self.machine.digest_job() {
            Some(job) => Box::new(move || table ^ job().rotate_left(17)),
            None => {
                let machine = self.machine.digest();
                Box::new(move || table ^ machine.rotate_left(17))
            }
        }
    }

    /// Digest of the replicated state (sessions and machine).
    pub fn digest(&self) -> u64 {
        let table = bincode::serialize(&(self.applied_op, self.clock, &self.table)).expect("serialize table");
        fnv64(&table) ^ self.machine.digest().rotate_left(17)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::message::Request;
    use crate::sim::kv::{KvCommand, KvStore};

    fn config() -> Config {
        let mut c = Config::new(3);
        c.sessions_max = 3;
        c.session_replies_max = 2;
        c.session_timeout_ms = 500;
        c.session_evict_idle_ms = 200;
        c
    }

    /// A random log: registrations, appends (with retries: seq reuse), reads.
    fn entries(script: &[(u8, u8, u8)]) -> Vec<Entry> {
        let mut sessions: Vec<SessionId> = Vec::new();
        let mut out = Vec::new();
        for (i, (kind, who, key)) in script.iter().enumerate() {
            let op = i as Op + 1;
            let operation = match kind % 4 {
                0 => Operation::Register,
                1 | 2 => Operation::Write(KvCommand::Append { key: key % 2, value: op }.encode()),
                _ => Operation::Read(KvCommand::Read { key: key % 2 }.encode()),
            };
            // seq repeats now and then: a retry of an earlier request.
            let seq = (*key as u64 % 5) + 1;
            if matches!(operation, Operation::Register) {
                // First (only) request of the batch; a retried Register
                // (same client and nonce) names a session that never opens.
                sessions.push(derive_session_id(op, 0, *who as u64, seq));
            }
            let session = sessions.get(*who as usize % sessions.len().max(1)).copied().unwrap_or(7);
            let request = Request { client: *who as u64, session, seq, low_water: 0, epoch: 0, operation };
            out.push(Entry { op, view: 0, timestamp_ms: op * 50, requests: vec![request] });
        }
        out
    }

    proptest! {
        #[test]
        fn deterministic_and_checkpoint_transparent(script in proptest::collection::vec((0u8..8, 0u8..4, 0u8..16), 1..60), cut in 0usize..60) {
            let log = entries(&script);
            let mut a = Sessions::new(KvStore::new(), &config());
            let mut b = Sessions::new(KvStore::new(), &config());
            let cut = cut.min(log.len());
            let mut replies_a = Vec::new();
            let mut replies_b = Vec::new();
            for e in &log { replies_a.push(a.apply_entry(e)); }
            for e in &log[..cut] { replies_b.push(b.apply_entry(e)); }
            // b restarts from its checkpoint into a fresh machine, then goes on.
            let image = b.checkpoint();
            let mut c = Sessions::new(KvStore::new(), &config());
            c.restore(b.applied_op(), &image).unwrap();
            prop_assert_eq!(c.digest(), b.digest());
            for e in &log[cut..] { replies_b.push(c.apply_entry(e)); }
            prop_assert_eq!(replies_a, replies_b);
            prop_assert_eq!(a.digest(), c.digest());
            // Exactly once: every appended value (the op) appears at most once.
            for list in a.machine().lists().values() {
                let mut seen = std::collections::BTreeSet::new();
                for v in list { prop_assert!(seen.insert(*v)); }
            }
            prop_assert!(a.session_count() <= 3);
        }
    }

    /// A machine whose queries answer from the host (like `statfs`, the free
    /// space of the replica's own disk): the answer differs per replica.
    struct HostDependent {
        inner: KvStore,
        host: u8,
    }

    impl StateMachine for HostDependent {
        fn apply(&mut self, context: ApplyContext, command: &[u8]) -> Vec<u8> {
            self.inner.apply(context, command)
        }
        fn query(&self, _query: &[u8]) -> Vec<u8> {
            vec![self.host]
        }
        fn applied_index(&self) -> Op {
            self.inner.applied_index()
        }
        fn checkpoint(&self) -> Vec<u8> {
            self.inner.checkpoint()
        }
        fn restore(&mut self, index: Op, checkpoint: &[u8]) -> Result<(), CheckpointError> {
            self.inner.restore(index, checkpoint)
        }
        fn digest(&self) -> u64 {
            self.inner.digest()
        }
    }

    /// Issue 12, finding 4: a query ordered through the log (no lease) must
    /// not put its host-dependent answer into the replicated reply cache.
    #[test]
    fn ordered_queries_leave_the_replicated_state_a_function_of_the_log() {
        let mut a = Sessions::new(HostDependent { inner: KvStore::new(), host: 1 }, &config());
        let mut b = Sessions::new(HostDependent { inner: KvStore::new(), host: 2 }, &config());
        let reg = Request { client: 1, session: 0, seq: 1, low_water: 0, epoch: 0, operation: Operation::Register };
        let reg_entry = Entry { op: 1, view: 0, timestamp_ms: 1, requests: vec![reg] };
        let Outcome::Registered(id) = a.apply_entry(&reg_entry)[0] else { panic!() };
        b.apply_entry(&reg_entry);
        let read = |seq| Request { client: 1, session: id, seq, low_water: seq - 1, epoch: 0, operation: Operation::Read(vec![]) };
        let e2 = Entry { op: 2, view: 0, timestamp_ms: 2, requests: vec![read(1)] };
        assert_eq!(a.apply_entry(&e2), vec![Outcome::Done(vec![1])]);
        assert_eq!(b.apply_entry(&e2), vec![Outcome::Done(vec![2])]);
        assert_eq!(a.digest(), b.digest(), "replicated state depends on the host");
        assert_eq!(a.checkpoint(), b.checkpoint());
        // A retry of the read runs the query again (a read is idempotent).
        let e3 = Entry { op: 3, view: 0, timestamp_ms: 3, requests: vec![read(1)] };
        assert_eq!(a.apply_entry(&e3), vec![Outcome::Done(vec![1])]);
        assert_eq!(a.precheck(id, 1), None);
        // The next request moves the low-water mark past it.
        let e4 = Entry { op: 4, view: 0, timestamp_ms: 4, requests: vec![read(2)] };
        a.apply_entry(&e4);
        assert_eq!(a.precheck(id, 1), Some(Outcome::TooOld));
    }

    fn register(s: &mut Sessions<KvStore>, op: Op, client: u64, nonce: u64, at_ms: Millis) -> Outcome {
        let reg = Request { client, session: 0, seq: nonce, low_water: 0, epoch: 0, operation: Operation::Register };
        s.apply_entry(&Entry { op, view: 0, timestamp_ms: at_ms, requests: vec![reg] }).remove(0)
    }

    /// Issue 12, finding 3 / issue 10, finding 4: a flood of registrations
    /// by other clients never evicts a session in use; it is refused instead.
    #[test]
    fn registrations_never_evict_a_session_in_use() {
        let mut s = Sessions::new(KvStore::new(), &config()); // 3 sessions, evict after 200 ms idle
        let Outcome::Registered(victim) = register(&mut s, 1, 1, 11, 10) else { panic!() };
        let append = |seq| Request {
            client: 1,
            session: victim,
            seq,
            low_water: seq - 1,
            epoch: 0,
            operation: Operation::Write(KvCommand::Append { key: 0, value: seq }.encode()),
        };
        // The victim's append runs; its reply is lost; it will retry.
        s.apply_entry(&Entry { op: 2, view: 0, timestamp_ms: 20, requests: vec![append(1)] });
        let mut refused = 0;
        for i in 0..100u64 {
            match register(&mut s, 3 + i, 1_000 + i, 99, 30 + i) {
                Outcome::Registered(_) => {}
                Outcome::Busy => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(refused >= 98, "only {refused} registrations refused");
        // The retry still gets the original reply, and nothing ran twice.
        let retry = s.apply_entry(&Entry { op: 103, view: 0, timestamp_ms: 150, requests: vec![append(1)] });
        assert_eq!(retry, vec![Outcome::Done(bincode::serialize(&1u64).unwrap())]);
        assert_eq!(s.machine().lists()[&0], vec![1]);
        // Once idle long enough, the session may go to make room.
        assert!(matches!(register(&mut s, 104, 5_000, 1, 10_000), Outcome::Registered(_)));
    }

    #[test]
    fn retried_register_gets_the_same_session_and_ids_are_not_sequential() {
        let mut s = Sessions::new(KvStore::new(), &config());
        let first = register(&mut s, 1, 7, 0xfeed, 1);
        let again = register(&mut s, 2, 7, 0xfeed, 2);
        assert_eq!(first, again, "a retried Register opened a second session");
        assert_eq!(s.session_count(), 1);
        let Outcome::Registered(a) = first else { panic!() };
        let Outcome::Registered(b) = register(&mut s, 3, 7, 0xbeef, 3) else { panic!() };
        assert_ne!(a, b);
        assert!(a.abs_diff(b) > 1 << 32, "ids {a:#x} and {b:#x} look sequential");
        // Without the nonce the id cannot be derived from the op alone.
        assert_ne!(derive_session_id(3, 0, 7, 0xbeef), derive_session_id(3, 0, 7, 0xbeee));
    }

    /// Issue 12, finding 3: a new leader whose clock is far ahead (or a
    /// cluster back after hours down) must not expire sessions at once.
    #[test]
    fn a_clock_jump_at_a_view_change_expires_nothing() {
        let mut s = Sessions::new(KvStore::new(), &config()); // timeout 500 ms
        let Outcome::Registered(id) = register(&mut s, 1, 1, 5, 1_000) else { panic!() };
        let append = |seq| Request {
            client: 1,
            session: id,
            seq,
            low_water: seq - 1,
            epoch: 0,
            operation: Operation::Write(KvCommand::Append { key: 0, value: seq }.encode()),
        };
        // View 1's leader stamps ten hours later than view 0's.
        let later = 1_000 + 36_000_000;
        let out = s.apply_entry(&Entry { op: 2, view: 1, timestamp_ms: later, requests: vec![append(1)] });
        assert_eq!(out, vec![Outcome::Done(bincode::serialize(&1u64).unwrap())], "the session expired at the view change");
        // Within view 1, time counts again: 600 ms idle expires it.
        let out = s.apply_entry(&Entry { op: 3, view: 1, timestamp_ms: later + 600, requests: vec![append(2)] });
        assert_eq!(out, vec![Outcome::SessionUnknown]);
    }

    #[test]
    fn retry_gets_original_reply_and_old_gets_too_old() {
        let mut s = Sessions::new(KvStore::new(), &config());
        let reg = Request { client: 1, session: 0, seq: 1, low_water: 0, epoch: 0, operation: Operation::Register };
        let out = s.apply_entry(&Entry { op: 1, view: 0, timestamp_ms: 1, requests: vec![reg] });
        let Outcome::Registered(id) = out[0] else { panic!("{out:?}") };
        let append = |seq, low_water| Request {
            client: 1,
            session: id,
            seq,
            low_water,
            epoch: 0,
            operation: Operation::Write(KvCommand::Append { key: 0, value: seq }.encode()),
        };
        let first = s.apply_entry(&Entry { op: 2, view: 0, timestamp_ms: 2, requests: vec![append(1, 0)] });
        let retry = s.apply_entry(&Entry { op: 3, view: 1, timestamp_ms: 3, requests: vec![append(1, 0)] });
        assert_eq!(first, retry, "a retry gets the original reply");
        assert_eq!(s.machine().lists()[&0], vec![1], "and does not run again");
        s.apply_entry(&Entry { op: 4, view: 1, timestamp_ms: 4, requests: vec![append(2, 1)] });
        assert_eq!(s.precheck(id, 1), Some(Outcome::TooOld));
        let old = s.apply_entry(&Entry { op: 5, view: 1, timestamp_ms: 5, requests: vec![append(1, 0)] });
        assert_eq!(old, vec![Outcome::TooOld]);
        assert_eq!(s.machine().lists()[&0], vec![1, 2]);
        let late = s.apply_entry(&Entry { op: 6, view: 1, timestamp_ms: 10_000, requests: vec![append(3, 2)] });
        assert_eq!(late, vec![Outcome::SessionUnknown], "expired by leader time");
    }

    /// Handles and locks of a dead client are released when its last
    /// session ends, at one point of the log: not while another of its
    /// sessions lives, once, by expiry as by eviction.
    #[test]
    fn the_machine_hears_a_client_gone_when_its_last_session_ends() {
        let mut s = Sessions::new(KvStore::new(), &config()); // 3 sessions, timeout 500 ms, evict after 200 ms idle
        let Outcome::Registered(a1) = register(&mut s, 1, 7, 1, 0) else { panic!() };
        let Outcome::Registered(_a2) = register(&mut s, 2, 7, 2, 0) else { panic!() };
        let touch = |seq| Request {
            client: 7,
            session: a1,
            seq,
            low_water: seq - 1,
            epoch: 0,
            operation: Operation::Write(KvCommand::Append { key: 0, value: seq }.encode()),
        };
        // Client 7 keeps one session active; its other one expires: nothing gone.
        s.apply_entry(&Entry { op: 3, view: 0, timestamp_ms: 300, requests: vec![touch(1)] });
        s.apply_entry(&Entry { op: 4, view: 0, timestamp_ms: 700, requests: vec![touch(2)] });
        assert_eq!(s.session_count(), 1);
        assert!(s.machine().gone().is_empty(), "{:?}", s.machine().gone());
        // Then it falls silent: the entry after its timeout tells the machine, once.
        register(&mut s, 5, 8, 1, 1_300);
        assert_eq!(s.machine().gone(), &[(5, 7)]);
        register(&mut s, 6, 9, 1, 1_400);
        assert_eq!(s.machine().gone(), &[(5, 7)]);
        // Eviction by a registration ends a client too (8 idle 200 ms, table full).
        register(&mut s, 7, 10, 1, 1_450);
        register(&mut s, 8, 11, 1, 1_550);
        assert_eq!(s.machine().gone(), &[(5, 7), (8, 8)]);
        // A restore rebuilds the per-client counts: the same as never restored.
        let mut t = Sessions::new(KvStore::new(), &config());
        t.restore(8, &s.checkpoint()).unwrap();
        for (i, at) in [(9u64, 1_700u64), (10, 2_500)] {
            register(&mut s, i, 20 + i, 1, at);
            register(&mut t, i, 20 + i, 1, at);
        }
        assert_eq!(s.machine().gone(), t.machine().gone());
        assert_eq!(s.digest(), t.digest());
        assert!(s.machine().gone().len() > 2, "{:?}", s.machine().gone());
    }
}
