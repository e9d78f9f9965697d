//! The replica: ties detector, membership, order, stability, log, recovery,
//! access and lease into one sans-IO state machine.
//!
//! Guarantees (the rules of `docs/protocol.md`, asserted here densely):
//! - commit point never decreases; applied == committed after every step;
//!   committed ≤ op; the leader's commit point ≤ the op durable on a majority.
//! - view numbers never decrease; a normal replica's last normal view is its view.
//! - a reply leaves only for an applied (hence committed) entry, or for a
//!   read under the lease: uniform output.
//!
//! Assumes: the shell executes actions in order — `Persist` writes in `seq`
//! order, reporting `Persisted` — delivers messages best effort, and calls
//! `step(now, Tick)` no later than asked by `SetTimer` (earlier is harmless).
//!
//! Messages: all of [`crate::message::Message`]; see the table there.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use std::collections::BTreeSet;

use crate::access::Sessions;
use crate::callbacks::Callbacks;
use crate::detector::Detector;
use crate::lease::Lease;
use crate::log::{Checkpoint, Durable, Journal, Log, Superblock, Write};
use crate::membership::{leader_of, next_view_led_by, Members, ViewChange, Vote};
use crate::message::{Action, Entry, Event, LogSuffix, Message, ObjectId, Operation, Outcome, Reply, Request, StateTransfer};
use crate::order::{same_request, Sequencer};
use crate::recovery::Recovery;
use crate::stability::AckTracker;
use crate::state_machine::StateMachine;
use crate::{Config, Millis, Op, ReplicaId, ViewNumber};

/// Where a replica is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Serving its view (as leader or follower).
    Normal,
    /// Forming a new view, or waiting for the state of a view it learnt of.
    ViewChange,
    /// Lost its disk; getting the group's state before it may take part.
    Recovering,
}

/// A snapshot of a replica's protocol state, for `chorus status` and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    /// This replica.
    pub id: ReplicaId,
    /// Its status.
    pub status: Status,
    /// Current view.
    pub view: ViewNumber,
    /// Last view in which it was normal.
    pub last_normal_view: ViewNumber,
    /// Leader of the current view.
    pub leader: ReplicaId,
    /// Members of the current view as known here.
    pub members: Members,
    /// Last op in the log.
    pub op: Op,
    /// Commit point.
    pub commit_op: Op,
    /// Applied op (always equals the commit point between steps).
    pub applied_op: Op,
    /// Log durable up to here.
    pub durable_op: Op,
    /// Log base (covered by a checkpoint).
    pub log_base: Op,
    /// Op of the newest checkpoint (0: none yet).
    pub checkpoint_op: Op,
    /// Leader time stamp of that op (0: none), for its age.
    pub checkpoint_timestamp_ms: Millis,
    /// Whether it holds the leader lease now.
    pub lease_holds: bool,
    /// Whether it is waiting for a state transfer.
    pub needs_state: bool,
    /// Recovering, or its installed state is not yet durable: it must not be
    /// counted as a healthy copy of the data.
    pub recovering: bool,
}

/// Assert an invariant, unless an injected bug is on (then the simulator's
/// checkers, not a panic, must report the damage).
macro_rules! invariant {
    ($self:ident, $cond:expr, $($arg:tt)+) => {
        if !$self.config.bugs().any() {
            assert!($cond, "replica {}: {}", $self.id, format!($($arg)+));
        }
    };
}

/// A NewState carrying a checkpoint goes to one replica at most once per
/// this many retry intervals.
const STATE_RESEND_RETRIES: Millis = 10;

/// One replica of the group, generic over the state machine it replicates.
pub struct Replica<S: StateMachine> {
    config: Config,
    id: ReplicaId,
    rng: ChaCha8Rng,
    now_ms: Millis,

    status: Status,
    view: ViewNumber,
    last_normal_view: ViewNumber,
    members: Members,
    /// Leader only: the op its log had when the view was installed.
    view_start_op: Op,
    commit_op: Op,
    /// Follower: waiting for GetState's answer before it can be normal.
    needs_state: bool,

    log: Log,
    journal: Journal,
    machine: Sessions<S>,
    /// Newest checkpoint taken or installed (its write may be in flight).
    checkpoint: Option<Checkpoint>,
    /// Command bytes applied since that checkpoint (checkpoint trigger).
    applied_bytes_since_checkpoint: u64,

    detector: Detector,
    lease: Lease,
    sequencer: Sequencer,
    acks: AckTracker,
    view_change: ViewChange,
    recovery: Option<Recovery>,
    /// The view of a superblock still on disk while recovering (a damaged
    /// checkpoint is recovered from the group, but the disk's view stands).
    recovery_view_floor: ViewNumber,

    /// Latest `sent_at_ms` from the leader of this view (echoed in PrepareOk).
    leader_sent_at_ms: Millis,
    heartbeat_sent_ms: Millis,
    /// Leader: when it installed its current view (its first heartbeat in
    /// the view waits for the install to be durable).
    view_installed_ms: Millis,
    /// Leader: how far its clock was behind the log's last time stamp when
    /// it installed the view (added to its clock for new stamps).
    clock_behind_ms: Millis,
    repair_sent_ms: Option<Millis>,
    /// (view, op): the highest op this follower saw its leader hold.
    leader_op_seen: (ViewNumber, Op),
    /// The first op of the repair run last asked for (to spot its answer).
    repair_from: Option<Op>,
    state_request_sent_ms: Option<Millis>,
    /// Leader: when a NewState with a checkpoint last went to each replica.
    state_sent_ms: Vec<Option<Millis>>,
    join_sent_ms: Option<Millis>,
    view_change_retry_ms: Millis,

    /// Messages waiting for the write with this seq (and all before) to be durable.
    held: Vec<(u64, ReplicaId, Message)>,
    /// Callbacks granted by this replica as leader (empty otherwise).
    callbacks: Callbacks,
    /// The view whose leadership `callbacks` belongs to.
    callbacks_view: Option<ViewNumber>,
    /// The shell's latest word on the disk (see `set_disk_low`).
    disk_low: bool,
    actions: Vec<Action>,
    timer_ms: Option<Millis>,
}

impl<S: StateMachine> Replica<S> {
    /// Starts a replica from what its disk holds. `machine` must be in its
    /// initial state (the core restores the checkpoint into it); `seed` feeds
    /// the replica's only random source.
    pub fn new(config: Config, id: ReplicaId, durable: Durable, machine: S, seed: u64, now_ms: Millis) -> Replica<S> {
        config.validate().expect("valid config");
        let n = config.replica_count;
        assert!(id < n, "replica id outside U");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let jitter_ms = rng.gen_range(0..=config.suspicion_jitter_ms);
        let mut machine = Sessions::new(machine, &config);
        let mut durable = durable;
        let mut recovery_view_floor = 0;
        if let (Some(sb), Some(c)) = (durable.superblock, &durable.checkpoint) {
            if let Err(e) = machine.restore(c.op, &c.state) {
                // A damaged or missing checkpoint: everything above it is
                // useless, and what this replica acknowledged before is
                // unknown, exactly as after a lost disk. Recover from the
                // group (state transfer) instead of starting wrong.
                tracing::error!(replica = id, checkpoint_op = c.op, error = %e,
                    "the durable checkpoint cannot be restored; recovering from the other replicas");
                durable.superblock = None;
                // The disk still holds that superblock: whatever recovery
                // writes must not take its view back.
                recovery_view_floor = sb.view;
                machine = Sessions::new(machine.into_inner(), &config);
            }
        }
        let wiped = durable.superblock.is_none();
        let (log, checkpoint) = if wiped {
            (Log::new(0, 0, Vec::new()), None)
        } else {
            match durable.checkpoint {
                Some(c) => {
                    let entries = durable.entries.into_iter().filter(|e| e.op > c.op).collect();
                    (Log::new(c.op, c.timestamp_ms, entries), Some(c))
                }
                None => (Log::new(0, 0, durable.entries), None),
            }
        };
        let base = log.base();
        let callbacks = Callbacks::new(config.callback_lease_ms, config.callbacks_max, config.parked_reads_max);
        let mut replica = Replica {
            detector: Detector::new(&config, jitter_ms),
            // A restarted replica may have forgotten a lease promise: wait.
            lease: Lease::new(&config, now_ms + config.lease_ms),
            sequencer: Sequencer::new(config.pending_requests_max),
            acks: AckTracker::new(n),
            view_change: ViewChange::new(0, n, now_ms),
            journal: Journal::new(log.op(), durable.superblock),
            config,
            id,
            rng,
            now_ms,
            status: Status::Normal,
            view: 0,
            last_normal_view: 0,
            members: Members::all(n),
            view_start_op: 0,
            commit_op: base,
            needs_state: false,
            log,
            machine,
            checkpoint,
            applied_bytes_since_checkpoint: 0,
            recovery: None,
            recovery_view_floor,
            leader_sent_at_ms: 0,
            heartbeat_sent_ms: 0,
            view_installed_ms: 0,
            clock_behind_ms: 0,
            repair_sent_ms: None,
            leader_op_seen: (0, 0),
            repair_from: None,
            state_request_sent_ms: None,
            state_sent_ms: vec![None; n as usize],
            join_sent_ms: None,
            view_change_retry_ms: now_ms,
            held: Vec::new(),
            disk_low: false,
            callbacks,
            callbacks_view: None,
            actions: Vec::new(),
            timer_ms: None,
        };
        match durable.superblock {
            None => replica.start_recovery(),
            Some(sb) => {
                assert_eq!((sb.replica, sb.replica_count), (id, n), "superblock of another replica or universe");
                replica.view = sb.view;
                replica.last_normal_view = sb.last_normal_view;
                let leader = replica.leader();
                if sb.view == sb.last_normal_view && leader != id {
                    // Connections to the peers take a moment after a restart:
                    // suspecting a live leader in that moment would push the
                    // healthy majority into a needless view change.
                    let grace_ms = replica.config.suspicion_timeout_max_ms;
                    replica.detector.reset(leader, now_ms + grace_ms);
                } else if sb.view == sb.last_normal_view {
                    // It led this view but cannot know which ops it handed out
                    // and lost with unsynced writes: never lead it again.
                    replica.start_view_change(sb.view + 1);
                } else if leader == id && !replica.config.bugs().reveal_view_before_durable {
                    // It was forming this view and never made the install
                    // durable: whatever it may have revealed of that attempt
                    // is not on its disk, so forming the view again could
                    // hand out different entries at the same ops. Move on.
                    replica.start_view_change(sb.view + 1);
                } else {
                    replica.enter_view_change(sb.view, true);
                }
            }
        }
        replica.update_timer();
        replica
    }

    /// Feeds one event at time `now_ms`.
    pub fn step(&mut self, now_ms: Millis, event: Event) {
        invariant!(self, now_ms >= self.now_ms, "time went back");
        self.now_ms = self.now_ms.max(now_ms);
        let (view_before, commit_before) = (self.view, self.commit_op);
        match event {
            Event::Tick => self.on_tick(),
            Event::Message { from, message } => self.on_message(from, message),
            Event::Request(request) => self.on_request(request),
            Event::Persisted { seq } => self.on_persisted(seq),
            Event::RecallAck { client, recall } => {
                if self.is_leader_normal() {
                    self.callbacks.on_ack(client, recall);
                }
            }
            Event::CacheReset { client } => {
                if self.is_leader_normal() {
                    self.ensure_callbacks_view();
                    self.callbacks.on_cache_reset(client);
                }
            }
            Event::Release { client } => {
                if self.is_leader_normal() {
                    self.ensure_callbacks_view();
                    self.callbacks.on_release(client);
                }
            }
        }
        self.release_callbacks();
        invariant!(self, self.view >= view_before, "view went back");
        invariant!(self, self.commit_op >= commit_before, "commit point went back");
        self.check_invariants();
        self.update_timer();
    }

    /// Drains the actions produced so far.
    pub fn poll_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// When the core next wants a Tick.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.timer_ms
    }

    /// Tells the core whether this replica's disk is below its reserve (the
    /// shell samples it): while it is, the leader refuses commands that
    /// would grow the state (`StateMachine::refusal_when_disk_low`) before
    /// the replicas run out.
    pub fn set_disk_low(&mut self, low: bool) {
        self.disk_low = low;
    }

    /// A snapshot of the protocol state.
    pub fn status(&self) -> StatusReport {
        let lease_holds = self.is_leader_normal() && self.lease.holds(self.id, self.members, self.config.majority(), self.now_ms);
        StatusReport {
            id: self.id,
            status: self.status,
            view: self.view,
            last_normal_view: self.last_normal_view,
            leader: self.leader(),
            members: self.members,
            op: self.log.op(),
            commit_op: self.commit_op,
            applied_op: self.machine.applied_op(),
            durable_op: self.journal.durable_op(),
            log_base: self.log.base(),
            checkpoint_op: self.checkpoint_op(),
            checkpoint_timestamp_ms: self.checkpoint.as_ref().map_or(0, |c| c.timestamp_ms),
            lease_holds,
            needs_state: self.needs_state,
            recovering: self.status == Status::Recovering || self.journal.durable_superblock().is_none(),
        }
    }

    /// Takes a checkpoint of the applied state now (an operator's request),
    /// unless the newest one already covers it or the replica is not in a
    /// settled state. Returns the newest checkpoint's op afterwards.
    pub fn checkpoint_now(&mut self) -> Op {
        let settled = self.status == Status::Normal && !self.needs_state && self.machine.applied_op() == self.commit_op;
        if settled && self.machine.applied_op() > self.checkpoint_op() {
            self.take_checkpoint();
        }
        self.checkpoint_op()
    }

    /// The replicated state (sessions and the user's machine).
    pub fn state(&self) -> &Sessions<S> {
        &self.machine
    }

    /// The entry at `op` if still held in memory.
    pub fn entry(&self, op: Op) -> Option<&Entry> {
        self.log.get(op)
    }

    // ----------------------------------------------------------------- helpers

    fn n(&self) -> u8 {
        self.config.replica_count
    }

    fn leader(&self) -> ReplicaId {
        leader_of(self.view, self.n())
    }

    fn is_leader(&self) -> bool {
        self.leader() == self.id
    }

    fn is_leader_normal(&self) -> bool {
        self.status == Status::Normal && self.is_leader()
    }

    fn superblock(&self) -> Superblock {
        Superblock { replica: self.id, replica_count: self.n(), view: self.view, last_normal_view: self.last_normal_view }
    }

    /// Whether our disk holds the install of the current view (superblock
    /// with this view as the last normal one). Until it does, a leader
    /// reveals nothing of the view: no Commit, Prepare or state answer may
    /// let another replica become normal in a view that a crash of ours
    /// could make us form a second time (docs/protocol.md, rule V5).
    fn view_durable(&self) -> bool {
        if self.config.bugs().reveal_view_before_durable {
            return true;
        }
        self.journal.durable_superblock().is_some_and(|sb| sb.view == self.view && sb.last_normal_view == self.view)
    }

    fn checkpoint_op(&self) -> Op {
        self.checkpoint.as_ref().map(|c| c.op).unwrap_or(0)
    }

    fn send(&mut self, to: ReplicaId, message: Message) {
        // D2b, asserted where it is kept: a leader reveals its view to no
        // one before the install is durable.
        if self.is_leader() && self.status == Status::Normal {
            let reveals = match &message {
                Message::Prepare { view, .. }
                | Message::Commit { view, .. }
                | Message::StartView { view, .. }
                | Message::NewState { view, .. } => *view == self.view,
                _ => false,
            };
            invariant!(
                self,
                !reveals || self.view_durable(),
                "view {} revealed ({}) before its install is durable",
                self.view,
                message.kind()
            );
        }
        if to != self.id {
            self.actions.push(Action::Send { to, message });
        }
    }

    fn broadcast(&mut self, message: Message) {
        for to in 0..self.n() {
            if to != self.id {
                self.send(to, message.clone());
            }
        }
    }

    /// Sends once everything written so far is durable: for messages that
    /// reveal a view or a log the sender must never forget.
    fn send_after_durable(&mut self, to: ReplicaId, message: Message) {
        let seq = self.journal.last_seq();
        if seq <= self.journal.persisted_seq() {
            self.send(to, message);
        } else if to != self.id {
            self.held.push((seq, to, message));
        }
    }

    fn persist(&mut self, write: Write) -> u64 {
        let seq = self.journal.submit(&write, self.log.op());
        self.actions.push(Action::Persist { seq, write });
        seq
    }

    fn persist_superblock(&mut self) {
        let superblock = Some(self.superblock());
        self.persist(Write { superblock, ..Default::default() });
    }

    fn reply(&mut self, request: &Request, outcome: Outcome) {
        let reply = self.reply_to(request, outcome, 0, Vec::new());
        self.actions.push(Action::Reply { client: request.client, reply });
    }

    fn reply_to(&self, request: &Request, outcome: Outcome, lease_ms: Millis, changed: Vec<ObjectId>) -> Reply {
        Reply { session: request.session, seq: request.seq, view: self.view, leader: self.leader(), outcome, lease_ms, changed }
    }

    // -------------------------------------------------------------- callbacks

    /// The registry belongs to one leadership: a leader that starts a view
    /// starts with none and in grace (see `callbacks`).
    fn ensure_callbacks_view(&mut self) {
        if self.is_leader_normal() && self.callbacks_view != Some(self.view) {
            self.callbacks.start_leading(self.now_ms);
            if self.config.bugs().skip_callback_grace {
                self.callbacks.end_grace();
            }
            self.callbacks_view = Some(self.view);
        }
    }

    fn in_callback_grace(&mut self) -> bool {
        self.ensure_callbacks_view();
        let complete = self.commit_op >= self.view_start_op;
        let machine = &self.machine;
        self.callbacks.in_grace(self.now_ms, complete, || machine.caching_clients())
    }

    /// Answers a lease read under callbacks: parked while the grace holds
    /// or one of the objects it returns is being recalled.
    fn lease_read_with_callbacks(&mut self, request: Request, query: &[u8]) {
        if self.in_callback_grace() {
            self.park_read(request);
            return;
        }
        let answer = self.machine.query(query);
        let objects = self.machine.machine().read_set(query, &answer);
        if self.callbacks.recalling_any(&objects) {
            self.park_read(request);
            return;
        }
        let lease_ms = self.callbacks.grant(request.client, &objects, self.now_ms);
        let reply = self.reply_to(&request, Outcome::Done(answer), lease_ms, Vec::new());
        self.actions.push(Action::Reply { client: request.client, reply });
    }

    fn park_read(&mut self, request: Request) {
        if !self.callbacks.park(request.clone()) {
            self.reply(&request, Outcome::Busy);
        }
    }

    /// The reply to an applied request: a write recalls other mounts'
    /// callbacks on what it changed; a reply that reveals an object under
    /// recall, or any reply in the grace, is held until that ends.
    fn reply_after_apply(&mut self, request: &Request, outcome: Outcome, changed: Vec<ObjectId>) {
        if !self.callbacks.enabled() {
            let reply = self.reply_to(request, outcome, 0, changed);
            self.actions.push(Action::Reply { client: request.client, reply });
            return;
        }
        let grace = self.in_callback_grace();
        let waits_for = match &request.operation {
            Operation::Register => BTreeSet::new(),
            Operation::Write(_) => {
                let (waits_for, orders) = self.callbacks.on_change(request.client, &changed, self.now_ms);
                for o in orders {
                    self.actions.push(Action::Recall { client: o.client, recall: o.recall, objects: o.objects });
                }
                if self.config.bugs().skip_recall_wait {
                    BTreeSet::new()
                } else {
                    waits_for
                }
            }
            Operation::Read(query) => match &outcome {
                Outcome::Done(answer) => self.callbacks.covering(&self.machine.machine().read_set(query, answer)),
                _ => BTreeSet::new(),
            },
        };
        let reply = self.reply_to(request, outcome, 0, changed);
        if waits_for.is_empty() && (!grace || request.operation == Operation::Register) {
            self.actions.push(Action::Reply { client: request.client, reply });
        } else {
            self.callbacks.hold(waits_for, request.client, reply);
        }
    }

    /// Sends the replies whose recalls ended and runs parked reads again;
    /// a replica that stopped leading forgets its callbacks.
    fn release_callbacks(&mut self) {
        if !self.is_leader_normal() {
            if self.callbacks_view.take().is_some() {
                self.callbacks.clear();
            }
            return;
        }
        if !self.callbacks.enabled() || self.callbacks_view.is_none() {
            return;
        }
        self.callbacks.tick(self.now_ms);
        let grace = self.in_callback_grace();
        let (replies, parked) = self.callbacks.release(grace);
        for (client, reply) in replies {
            self.actions.push(Action::Reply { client, reply });
        }
        for request in parked {
            self.on_request(request);
        }
    }
    fn update_timer(&mut self) {
        let next = self.next_deadline();
        if next != self.timer_ms {
            self.timer_ms = next;
            if let Some(at_ms) = next {
                self.actions.push(Action::SetTimer { at_ms });
            }
        }
    }

    fn next_deadline(&self) -> Option<Millis> {
        let retry = self.config.retry_interval_ms;
        let mut at: Vec<Millis> = Vec::with_capacity(4);
        match self.status {
            Status::Recovering => {
                if let Some(r) = &self.recovery {
                    at.push(r.sent_ms + retry);
                }
            }
            // A leader whose install is not durable yet is woken by Persisted.
            Status::Normal if self.is_leader() && !self.view_durable() => {}
            Status::Normal if self.is_leader() => {
                at.push(self.heartbeat_sent_ms + self.config.heartbeat_interval_ms);
                at.extend(self.callbacks.next_deadline());
            }
            Status::Normal => {
                if let Some(d) = self.detector.deadline_ms(self.leader()) {
                    at.push(d);
                }
            }
            Status::ViewChange => {
                at.push(self.view_change_deadline());
                at.push(self.view_change_retry_ms + retry);
                if let Some(t) = self.view_change.install_at_ms {
                    at.push(t);
                }
                if !self.view_change.voted {
                    if let Err(t) = self.lease.vote_allowed(self.leader(), self.now_ms) {
                        at.push(t);
                    }
                }
            }
        }
        // A deadline already passed was handled by the tick that just ran (or
        // is waiting on something else): never ask to be woken in the past.
        at.into_iter().min().map(|t| t.max(self.now_ms + 1))
    }

    fn view_change_deadline(&self) -> Millis {
        self.view_change.started_ms + self.config.view_change_timeout_ms + self.detector.jitter_ms()
    }

    fn check_invariants(&self) {
        invariant!(
            self,
            self.machine.applied_op() == self.commit_op,
            "applied {} != committed {}",
            self.machine.applied_op(),
            self.commit_op
        );
        invariant!(self, self.commit_op <= self.log.op(), "committed {} beyond op {}", self.commit_op, self.log.op());
        invariant!(self, self.log.base() <= self.commit_op, "log base above the commit point");
        invariant!(self, self.last_normal_view <= self.view, "last normal view above view");
        invariant!(self, self.status != Status::Normal || self.last_normal_view == self.view, "normal outside its view");
        if let Some(sb) = self.journal.durable_superblock() {
            invariant!(self, sb.view <= self.view, "memory behind the durable view");
        }
        if self.is_leader_normal() && self.commit_op >= self.view_start_op {
            invariant!(self, self.log.op() - self.commit_op <= self.config.pipeline_depth_max, "pipeline overfull");
        }
    }

    // ------------------------------------------------------------------ events

    fn on_tick(&mut self) {
        let now = self.now_ms;
        match self.status {
            Status::Recovering => {
                let retry = self.config.retry_interval_ms;
                let due = self.recovery.as_ref().is_some_and(|r| now >= r.sent_ms + retry);
                if due {
                    let nonce = self.recovery.as_mut().map(|r| {
                        r.sent_ms = now;
                        r.nonce
                    });
                    if let Some(nonce) = nonce {
                        self.broadcast(Message::Recovery { nonce });
                    }
                }
            }
            Status::Normal if self.is_leader() => {
                if now >= self.heartbeat_sent_ms + self.config.heartbeat_interval_ms {
                    self.send_heartbeat();
                }
            }
            Status::Normal => {
                let leader = self.leader();
                if !self.config.bugs().ignore_suspicion && self.detector.suspects(leader, now) {
                    self.start_view_change(self.view + 1);
                }
            }
            Status::ViewChange => self.view_change_tick(),
        }
    }

    fn view_change_tick(&mut self) {
        let now = self.now_ms;
        if now >= self.view_change_deadline() {
            let leader = self.leader();
            if self.needs_state && !self.detector.suspects(leader, now) {
                // The view exists and its leader is alive: keep asking.
                self.view_change.started_ms = now;
                self.request_state();
            } else {
                self.start_view_change(self.view + 1);
            }
            return;
        }
        if now >= self.view_change_retry_ms + self.config.retry_interval_ms {
            self.view_change_retry_ms = now;
            if self.needs_state {
                self.request_state();
            } else {
                // StartViewChange and DoViewChange may have been lost.
                self.broadcast(Message::StartViewChange { view: self.view });
                if self.view_change.voted && !self.is_leader() {
                    self.view_change.voted = false;
                }
            }
        }
        self.try_vote();
        self.try_install();
    }

    fn on_message(&mut self, from: ReplicaId, message: Message) {
        if from >= self.n() || from == self.id {
            return;
        }
        if self.status == Status::Recovering {
            if let Message::RecoveryResponse { view, nonce, state } = message {
                self.on_recovery_response(from, view, nonce, state);
            }
            return;
        }
        match message {
            Message::Prepare { view, commit, sent_at_ms, entries } => self.on_prepare(from, view, commit, sent_at_ms, entries),
            Message::PrepareOk { view, op, echo_ms } => self.on_prepare_ok(from, view, op, echo_ms),
            Message::Commit { view, commit, op, members, sent_at_ms } => self.on_commit(from, view, commit, op, members, sent_at_ms),
            Message::RequestPrepares { view, from: first } => self.on_request_prepares(from, view, first),
            Message::StartViewChange { view } => self.on_start_view_change(from, view),
            Message::DoViewChange { view, last_normal_view, commit, log } => {
                self.on_do_view_change(from, view, Vote { last_normal_view, commit, log })
            }
            Message::StartView { view, members, commit, log } => self.on_start_view(from, view, members, commit, log),
            Message::Join { view } => self.on_join(from, view),
            Message::GetState { view, commit } => self.on_get_state(from, view, commit),
            Message::NewState { view, state } => self.on_new_state(from, view, state),
            Message::Recovery { nonce } => self.on_recovery(from, nonce),
            Message::RecoveryResponse { .. } => {}
        }
    }

    fn on_persisted(&mut self, seq: u64) {
        if !self.journal.persisted(seq) {
            return;
        }
        let durable = self.journal.persisted_seq();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held).into_iter().partition(|(s, _, _)| *s <= durable);
        self.held = waiting;
        for (_, to, message) in ready {
            self.send(to, message);
        }
        if self.is_leader_normal() {
            if self.view_durable() && self.heartbeat_sent_ms < self.view_installed_ms {
                // The install just became durable: announce the view now.
                self.send_heartbeat();
            }
            self.advance_commit();
            self.prepare_batches();
        } else if self.status == Status::Normal {
            self.send_prepare_ok();
        }
    }

    // -------------------------------------------------------- client requests

    fn on_request(&mut self, request: Request) {
        if self.status == Status::Recovering {
            return;
        }
        if !self.is_leader_normal() {
            self.reply(&request, Outcome::NotLeader);
            return;
        }
        // A Write or Read on a session absent from the applied table is
        // refused before it costs a log entry or a local read (issue 10 #5),
        // but only when applied state is
        // known to be complete: the commit point has reached the op this
        // view started with (else a Register committed by the previous
        // leader may not be applied here yet) and the lease holds (else
        // a newer view may have registered it). A session id is only
        // learnt from an applied Register, and a session never comes
        // back once gone, so apply would answer SessionUnknown as well
        // (R3); the request did not run, which R4d needs.
        // `precheck(session, 0)` answers TooOld exactly for a session in
        // the table (every low-water mark is ≥ 0).
        let applied_state_complete =
            self.commit_op >= self.view_start_op && self.lease.holds(self.id, self.members, self.config.majority(), self.now_ms);
        if request.operation != Operation::Register
            && applied_state_complete
            && !self.config.bugs().forget_reply_cache
            && self.machine.precheck(request.session, 0).is_none()
        {
            self.reply(&request, Outcome::SessionUnknown);
            return;
        }
        if self.callbacks.is_held(request.session, request.seq) {
            return; // ran; its reply waits for a recall and goes with it
        }
        if self.callbacks.enabled() && request.operation != Operation::Register {
            self.ensure_callbacks_view();
            if self.callbacks.awaits_reset(request.client) {
                // C4: this mount must drop what older leaders let it cache
                // first; the reply's view tells it so.
                self.reply(&request, Outcome::Busy);
                return;
            }
        }
        if let Operation::Read(query) = &request.operation {
            if self.can_read_locally() && self.callbacks.enabled() {
                let query = query.clone();
                self.lease_read_with_callbacks(request, &query);
                return;
            }
            if self.can_read_locally() {
                let answer = self.machine.query(query);
                self.reply(&request, Outcome::Done(answer));
                return;
            }
        }
        if request.operation != Operation::Register {
            if let Some(outcome) = self.machine.precheck(request.session, request.seq) {
                let changed = self.machine.cached_changed(request.session, request.seq);
                let reply = self.reply_to(&request, outcome, 0, changed);
                self.actions.push(Action::Reply { client: request.client, reply });
                return;
            }
        }
        if self.sequencer.contains(&request) || self.in_uncommitted_log(&request) {
            return; // already on its way; the reply follows the commit
        }
        if let (true, Operation::Write(command)) = (self.disk_low, &request.operation) {
            // After the reply cache and the in-flight checks: a retry of a
            // command that ran, or is running, still gets its real answer.
            if let Some(refusal) = self.machine.machine().refusal_when_disk_low(command) {
                self.reply(&request, Outcome::Done(refusal));
                return;
            }
        }
        if !self.sequencer.push(request.clone(), self.config.pending_bytes_max) {
            self.reply(&request, Outcome::Busy);
            return;
        }
        self.prepare_batches();
    }

    fn can_read_locally(&self) -> bool {
        if self.config.bugs().read_without_lease {
            return true;
        }
        // Everything the view started with must be committed, else an entry
        // committed (and answered) by the previous leader may be missing.
        self.commit_op >= self.view_start_op && self.lease.holds(self.id, self.members, self.config.majority(), self.now_ms)
    }

    fn in_uncommitted_log(&self, request: &Request) -> bool {
        (self.commit_op + 1..=self.log.op()).filter_map(|op| self.log.get(op)).any(|e| e.requests.iter().any(|r| same_request(r, request)))
    }

    // ------------------------------------------------------- normal operation

    fn prepare_batches(&mut self) {
        while self.is_leader_normal()
            && self.view_durable()
            && !self.sequencer.is_empty()
            && self.log.op() - self.commit_op < self.config.pipeline_depth_max
        {
            let requests = self.sequencer.take_batch(self.config.batch_requests_max, self.config.batch_bytes_max);
            let entry = Entry {
                op: self.log.op() + 1,
                view: self.view,
                timestamp_ms: (self.now_ms + self.clock_behind_ms).max(self.log.last_timestamp_ms()),
                requests,
            };
            self.log.append(entry.clone());
            self.persist(Write { entries: vec![entry.clone()], ..Default::default() });
            let message = Message::Prepare { view: self.view, commit: self.commit_op, sent_at_ms: self.now_ms, entries: vec![entry] };
            for m in self.members.iter().collect::<Vec<_>>() {
                self.send(m, message.clone());
            }
        }
    }

    fn send_heartbeat(&mut self) {
        if !self.view_durable() {
            return; // on_persisted sends it once the install is durable
        }
        self.heartbeat_sent_ms = self.now_ms;
        let message =
            Message::Commit { view: self.view, commit: self.commit_op, op: self.log.op(), members: self.members, sent_at_ms: self.now_ms };
        self.broadcast(message);
    }

    fn on_prepare(&mut self, from: ReplicaId, view: ViewNumber, commit: Op, sent_at_ms: Millis, entries: Vec<Entry>) {
        if !self.accept_from_leader(from, view) {
            return;
        }
        self.heard_from_leader(sent_at_ms);
        if let Some(last) = entries.last() {
            self.note_leader_op(last.op);
        }
        let answers_repair = entries.first().is_some_and(|e| Some(e.op) == self.repair_from);
        let mut appended = Vec::new();
        for entry in entries {
            if entry.op <= self.log.op() {
                if let Some(mine) = self.log.get(entry.op) {
                    invariant!(self, mine.view == entry.view, "log diverged from the leader's at op {}", entry.op);
                }
                continue;
            }
            if entry.op != self.log.op() + 1 {
                self.request_prepares();
                break;
            }
            self.log.append(entry.clone());
            appended.push(entry);
        }
        let repaired = answers_repair && !appended.is_empty();
        if !appended.is_empty() {
            self.persist(Write { entries: appended, ..Default::default() });
            if self.config.bugs().ack_before_durable {
                self.send_prepare_ok();
            }
        }
        self.learn_commit(commit);
        if repaired && self.log.op() < self.leader_op_seen.1 {
            // Repair made progress and more is missing: ask for the next run
            // now, not a retry interval later (a replica far behind would
            // otherwise catch up at one message per interval).
            self.repair_sent_ms = None;
            self.request_prepares();
        } else if repaired {
            self.repair_from = None;
        }
    }

    fn note_leader_op(&mut self, op: Op) {
        if self.leader_op_seen.0 != self.view {
            self.leader_op_seen = (self.view, 0);
        }
        self.leader_op_seen.1 = self.leader_op_seen.1.max(op);
    }

    fn on_commit(&mut self, from: ReplicaId, view: ViewNumber, commit: Op, op: Op, members: Members, sent_at_ms: Millis) {
        if !self.accept_from_leader(from, view) {
            return;
        }
        self.heard_from_leader(sent_at_ms);
        self.note_leader_op(op);
        self.members = members;
        self.learn_commit(commit);
        if self.log.op() < op {
            self.request_prepares();
        }
        self.send_prepare_ok();
    }

    /// Common gate for Prepare and Commit: from the leader of our normal view.
    fn accept_from_leader(&mut self, from: ReplicaId, view: ViewNumber) -> bool {
        if view < self.view {
            // A deposed leader: rejected. But if we are forming a view that
            // nobody installed (our suspicion was ours alone), the leader of
            // the older view is alive and normal: ask it to admit us (V1b).
            if self.status == Status::ViewChange && !self.needs_state && from == leader_of(view, self.n()) {
                self.ask_to_join(from);
            }
            return false;
        }
        if view > self.view {
            self.catch_up_to(view);
            return false;
        }
        if from != self.leader() || self.is_leader() {
            return false;
        }
        if self.status != Status::Normal {
            // The view is installed and its leader is alive: count it as
            // heard (V1c), so that waiting for its state never makes us
            // suspect it and start a view change of our own.
            self.detector.heard(from, self.now_ms);
            self.lease.promise(from, self.now_ms);
            // The view is installed and we missed StartView.
            if !self.needs_state {
                self.needs_state = true;
                self.view_change.voted = true;
            }
            self.request_state();
            return false;
        }
        true
    }

    fn heard_from_leader(&mut self, sent_at_ms: Millis) {
        self.leader_sent_at_ms = self.leader_sent_at_ms.max(sent_at_ms);
        let leader = self.leader();
        // Only a leader doing its job counts as alive: a leader that lost its
        // disk still sends Recovery, and must be replaced all the same.
        self.detector.heard(leader, self.now_ms);
        self.lease.promise(leader, self.now_ms);
    }

    fn learn_commit(&mut self, commit: Op) {
        // Our log is a prefix of the leader's, so its commit point applies to
        // every entry we hold up to it.
        let point = commit.min(self.log.op());
        if point > self.commit_op {
            self.commit_op = point;
            self.apply_committed();
        }
    }

    fn send_prepare_ok(&mut self) {
        if self.status != Status::Normal || self.is_leader() {
            return;
        }
        if !self.members.contains(self.id) {
            self.maybe_join();
            return;
        }
        let op = if self.config.bugs().ack_before_durable {
            self.log.op()
        } else {
            // Only a view whose superblock is on disk may be acknowledged in.
            match self.journal.durable_superblock() {
                Some(sb) if sb.view == self.view && sb.last_normal_view == self.view => {}
                _ => return,
            }
            self.journal.durable_op()
        };
        let message = Message::PrepareOk { view: self.view, op, echo_ms: self.leader_sent_at_ms };
        let leader = self.leader();
        self.send(leader, message);
    }

    fn request_prepares(&mut self) {
        if self.repair_sent_ms.is_some_and(|t| self.now_ms < t + self.config.retry_interval_ms) {
            return;
        }
        self.repair_sent_ms = Some(self.now_ms);
        self.repair_from = Some(self.log.op() + 1);
        let message = Message::RequestPrepares { view: self.view, from: self.log.op() + 1 };
        let leader = self.leader();
        self.send(leader, message);
    }

    fn on_request_prepares(&mut self, from: ReplicaId, view: ViewNumber, first: Op) {
        if view == self.view && self.status == Status::ViewChange && from == self.leader() && !self.is_leader() {
            // The new leader could not splice our vote: it lacks committed
            // entries below our vote's base. Resend the vote from its commit point.
            let commit = first.saturating_sub(1);
            let lowest = self.view_change.leader_commit.map_or(commit, |c| c.min(commit));
            self.view_change.leader_commit = Some(lowest);
            if self.view_change.voted && !self.needs_state {
                self.view_change.voted = false;
                self.try_vote();
            }
            return;
        }
        if view != self.view || !self.is_leader_normal() || !self.view_durable() || first > self.log.op() {
            return;
        }
        if first <= self.log.base() {
            // Compacted away: the follower needs a state transfer.
            self.send_state(from, None);
            return;
        }
        let entries = self.log.entries_from(first, self.config.entries_per_message_max, self.config.repair_bytes_max);
        let message = Message::Prepare { view: self.view, commit: self.commit_op, sent_at_ms: self.now_ms, entries };
        self.send(from, message);
    }

    fn on_prepare_ok(&mut self, from: ReplicaId, view: ViewNumber, op: Op, echo_ms: Millis) {
        if view != self.view || !self.is_leader_normal() || !self.members.contains(from) {
            return;
        }
        invariant!(self, op <= self.log.op(), "ack for op {} beyond the leader's log {}", op, self.log.op());
        self.acks.record(from, op.min(self.log.op()));
        self.lease.record_echo(from, echo_ms);
        self.advance_commit();
    }

    fn advance_commit(&mut self) {
        if !self.is_leader_normal() {
            return;
        }
        let bugs = self.config.bugs();
        let own = if bugs.ack_before_durable { self.log.op() } else { self.journal.durable_op() };
        let point = self.acks.commit_point(self.id, own, self.members, self.config.majority(), bugs.commit_on_one_ack).min(self.log.op());
        if point > self.commit_op {
            // Pair assertion with the commit rule: a majority of U (leader
            // included) holds every op up to the new point durably in this view.
            let holders = self.members.iter().filter(|&m| if m == self.id { own >= point } else { self.acks.acked(m) >= point }).count();
            invariant!(self, holders >= self.config.majority(), "commit {} held durably by only {}", point, holders);
            self.commit_op = point;
            self.apply_committed();
            self.prepare_batches();
        }
    }

    fn apply_committed(&mut self) {
        while self.machine.applied_op() < self.commit_op {
            let op = self.machine.applied_op() + 1;
            let Some(entry) = self.log.get(op) else {
                invariant!(self, false, "committed op {} missing from the log", op);
                return;
            };
            self.applied_bytes_since_checkpoint += entry.payload_bytes() as u64;
            let outcomes = self.machine.apply_entry_tracked(entry);
            if self.status == Status::Normal && leader_of(self.view, self.config.replica_count) == self.id {
                // Uniform output: the entry is committed, so the reply may go
                // (once the callbacks on what it changed are recalled).
                let requests: Vec<Request> = entry.requests.clone();
                for (request, (outcome, changed)) in requests.iter().zip(outcomes) {
                    self.reply_after_apply(request, outcome, changed);
                }
            }
            if op.is_multiple_of(self.config.checkpoint_interval_ops)
                || self.applied_bytes_since_checkpoint >= self.config.checkpoint_interval_bytes
            {
                self.take_checkpoint();
            }
        }
    }

    fn take_checkpoint(&mut self) {
        let checkpoint =
            Checkpoint { op: self.machine.applied_op(), timestamp_ms: self.machine.timestamp_ms(), state: self.machine.checkpoint() };
        // Keep one interval of entries below the new checkpoint in memory, so
        // slightly lagging replicas catch up by entries, not by a checkpoint.
        let keep_from = self.checkpoint_op().max(self.log.base());
        self.log.compact_through(keep_from);
        self.checkpoint = Some(checkpoint.clone());
        self.applied_bytes_since_checkpoint = 0;
        self.persist(Write { checkpoint: Some(checkpoint), ..Default::default() });
    }

    // ---------------------------------------------------------- view change

    /// Moves to view `view` (higher than ours) and starts changing to it.
    fn start_view_change(&mut self, view: ViewNumber) {
        invariant!(self, view > self.view, "view change to {} from {}", view, self.view);
        self.enter_view_change(view, true);
    }

    /// Enters `view` in view-change status, durably. `announce` broadcasts
    /// StartViewChange (not when the view is already installed elsewhere and
    /// we only need its state).
    fn enter_view_change(&mut self, view: ViewNumber, announce: bool) {
        self.view = view;
        self.status = Status::ViewChange;
        self.needs_state = false;
        self.view_change = ViewChange::new(view, self.n(), self.now_ms);
        self.view_change.started_by.insert(self.id);
        self.view_change_retry_ms = self.now_ms;
        self.sequencer.clear();
        self.acks.reset();
        self.lease.clear_echoes();
        let jitter_ms = self.rng.gen_range(0..=self.config.suspicion_jitter_ms);
        self.detector.set_jitter(jitter_ms);
        let leader = self.leader();
        self.detector.reset(leader, self.now_ms);
        self.persist_superblock();
        if announce {
            self.broadcast(Message::StartViewChange { view });
            self.try_vote();
        }
    }

    fn on_start_view_change(&mut self, from: ReplicaId, view: ViewNumber) {
        if view < self.view {
            return;
        }
        if view > self.view && self.status == Status::Normal {
            // V1b: a Normal replica does not leave its view for one other
            // replica's suspicion (it restarted, is behind, or is cut off
            // from the leader) while its leader is alive: the leader ignores
            // it, a follower that does not suspect the leader too. The
            // straggler comes back through Join once it hears the leader
            // (`accept_from_leader`, `on_join`).
            if self.is_leader() {
                return;
            }
            if from != self.leader() && !self.detector.suspects(self.leader(), self.now_ms) {
                return;
            }
        }
        if view > self.view {
            self.start_view_change(view);
        }
        match self.status {
            Status::ViewChange if !self.needs_state => {
                self.view_change.started_by.insert(from);
                self.try_vote();
            }
            Status::Normal if self.is_leader() => {
                let commit = self.view_change.votes[from as usize].as_ref().map(|v| v.commit);
                self.send_start_view(from, commit)
            }
            _ => {}
        }
    }

    /// Sends our DoViewChange once a majority has started the view change and
    /// no lease promise to another leader forbids it.
    fn try_vote(&mut self) {
        if self.status != Status::ViewChange
            || self.needs_state
            || self.view_change.voted
            || self.view_change.started_by.len() < self.config.majority()
        {
            return;
        }
        let leader = self.leader();
        if self.lease.vote_allowed(leader, self.now_ms).is_err() {
            return;
        }
        self.view_change.voted = true;
        let vote = Vote { last_normal_view: self.last_normal_view, commit: self.commit_op, log: self.vote_log() };
        if leader == self.id {
            self.record_vote(self.id, vote);
        } else {
            let message =
                Message::DoViewChange { view: self.view, last_normal_view: vote.last_normal_view, commit: vote.commit, log: vote.log };
            self.send_after_durable(leader, message);
        }
    }

    /// The log our DoViewChange carries: everything above our commit point,
    /// or above the (lower) commit point the new leader asked from (V2). The
    /// entries at or below the base are committed, so identical on every
    /// replica that holds them, and the leader splices only on top of its own
    /// committed prefix (`can_splice`). Bounded by the retained log; normally
    /// the uncommitted pipeline plus the commit lag.
    fn vote_log(&self) -> LogSuffix {
        let mut from = self.commit_op;
        if let Some(c) = self.view_change.leader_commit {
            from = from.min(c);
        }
        self.log.suffix_after(from.clamp(self.log.base(), self.log.op()))
    }

    fn on_do_view_change(&mut self, from: ReplicaId, view: ViewNumber, vote: Vote) {
        if view < self.view {
            return;
        }
        if view > self.view {
            self.start_view_change(view);
        }
        if self.is_leader_normal() {
            self.send_start_view(from, Some(vote.commit)); // a voter that missed StartView
            return;
        }
        if self.status != Status::ViewChange || self.needs_state || !self.is_leader() {
            return;
        }
        self.view_change.started_by.insert(from);
        self.record_vote(from, vote);
        self.try_vote();
    }

    fn record_vote(&mut self, from: ReplicaId, vote: Vote) {
        self.view_change.votes[from as usize] = Some(vote);
        let voters = self.view_change.voters().len();
        if voters >= self.config.majority() && self.view_change.install_at_ms.is_none() {
            self.view_change.install_at_ms = Some(self.now_ms + self.config.view_change_gather_ms);
        }
        self.try_install();
    }

    /// New leader: install the view once a majority (ideally all) voted.
    fn try_install(&mut self) {
        if self.status != Status::ViewChange || !self.is_leader() || self.view_change.votes[self.id as usize].is_none() {
            return;
        }
        let voters = self.view_change.voters();
        if voters.len() < self.config.majority() {
            return;
        }
        let all_voted = voters.len() == self.n() as usize;
        if !all_voted && self.view_change.install_at_ms.is_some_and(|t| self.now_ms < t) {
            return;
        }
        let (best_id, best) = self.view_change.best().expect("a majority voted");
        let max_commit = self.view_change.max_commit();
        let best_log = best.log.clone();
        if best_id != self.id && !self.config.bugs().skip_view_change_flush {
            // The flush: the view's log is the most advanced of the majority.
            if !self.can_splice(&best_log) {
                // The vote starts above our commit point: ask its sender for
                // the log above our commit point (it answers with a new
                // DoViewChange). If it no longer holds that much, we are too
                // far behind and the view-change timeout moves on to the next
                // leader.
                self.view_change.install_at_ms = None;
                self.fetch_vote_log(best_id);
                return;
            }
        }
        self.last_normal_view = self.view;
        self.status = Status::Normal;
        self.members = voters;
        if best_id != self.id && !self.config.bugs().skip_view_change_flush {
            self.splice(&best_log);
        } else {
            self.persist_superblock();
        }
        self.view_start_op = self.log.op();
        self.view_installed_ms = self.now_ms;
        // A leader whose clock is behind the log's last stamp continues from
        // that stamp at its own rate, instead of stamping it again until its
        // clock catches up (which would stop the session clock, and with it
        // expiry and eviction, for as long as the clocks disagree).
        self.clock_behind_ms = self.log.last_timestamp_ms().saturating_sub(self.now_ms);
        self.acks.reset();
        self.lease.clear_echoes();
        self.sequencer.clear();
        self.view_change.install_at_ms = None;
        for m in 0..self.n() {
            self.detector.reset(m, self.now_ms);
        }
        self.learn_commit(max_commit);
        for m in voters.iter().collect::<Vec<_>>() {
            let commit = self.view_change.votes[m as usize].as_ref().map(|v| v.commit);
            self.send_start_view(m, commit);
        }
        self.send_heartbeat();
        self.advance_commit();
    }

    /// New leader: ask voter `to` to resend its DoViewChange with the log
    /// above our commit point (RequestPrepares of the view being formed, at
    /// most once per `retry_interval_ms`).
    fn fetch_vote_log(&mut self, to: ReplicaId) {
        if to == self.id || self.view_change.fetch_sent_ms.is_some_and(|t| self.now_ms < t + self.config.retry_interval_ms) {
            return;
        }
        self.view_change.fetch_sent_ms = Some(self.now_ms);
        let from = self.commit_op.max(self.log.base()) + 1;
        self.send(to, Message::RequestPrepares { view: self.view, from });
    }

    /// StartView (or NewState to a non-member). A member gets the log above
    /// the commit point it reported (`commit`, from its DoViewChange): it
    /// already holds the committed prefix up to there; if it no longer does
    /// (it restarted), it cannot splice and asks for state (V4).
    fn send_start_view(&mut self, to: ReplicaId, commit: Option<Op>) {
        if to == self.id {
            return;
        }
        let message = if self.members.contains(to) {
            let from = commit.unwrap_or(self.log.base()).clamp(self.log.base(), self.log.op());
            Message::StartView { view: self.view, members: self.members, commit: self.commit_op, log: self.log.suffix_after(from) }
        } else {
            Message::NewState { view: self.view, state: self.state_transfer(None) }
        };
        self.send_after_durable(to, message);
    }

    /// Whether `suffix` can replace our log above our committed prefix.
    fn can_splice(&self, suffix: &LogSuffix) -> bool {
        let keep = self.log.base().max(suffix.base);
        // Our entries up to `keep` must be committed (hence equal to the
        // sender's), and the suffix must reach that far.
        suffix.base <= self.commit_op.max(self.log.base()) && keep <= suffix.op()
    }

    /// Makes our log equal to `suffix` above our committed prefix, durably
    /// and atomically with the superblock.
    fn splice(&mut self, suffix: &LogSuffix) {
        invariant!(self, self.can_splice(suffix), "splice precondition");
        let floor = self.log.base().max(suffix.base);
        let mut keep = floor;
        for entry in suffix.entries.iter().filter(|e| e.op > floor) {
            // Same (op, view) means same entry and same prefix.
            match self.log.get(entry.op) {
                Some(mine) if mine.view == entry.view => keep = entry.op,
                _ => break,
            }
        }
        let truncating = self.log.op() > keep;
        invariant!(self, !truncating || keep >= self.commit_op, "splice would drop committed entries");
        self.log.truncate_after(keep);
        self.journal.note_truncation(keep);
        let appended: Vec<Entry> = suffix.entries.iter().filter(|e| e.op > keep).cloned().collect();
        for entry in &appended {
            self.log.append(entry.clone());
        }
        // The disk holds nothing at or below its checkpoint: never rewrite there.
        let disk_floor = self.checkpoint_op();
        let write = Write {
            truncate_after: if truncating { Some(keep.max(disk_floor)) } else { None },
            checkpoint: None,
            entries: appended.into_iter().filter(|e| e.op > disk_floor).collect(),
            superblock: Some(self.superblock()),
        };
        self.persist(write);
    }

    fn on_start_view(&mut self, from: ReplicaId, view: ViewNumber, members: Members, commit: Op, log: LogSuffix) {
        if view < self.view || (view == self.view && self.status == Status::Normal) || from != leader_of(view, self.n()) {
            return;
        }
        if !self.can_splice(&log) {
            self.catch_up_to(view);
            return;
        }
        self.view = view;
        self.become_normal_follower(members);
        self.splice(&log);
        self.learn_commit(commit);
    }

    fn become_normal_follower(&mut self, members: Members) {
        self.status = Status::Normal;
        self.last_normal_view = self.view;
        self.needs_state = false;
        self.members = members;
        self.sequencer.clear();
        let leader = self.leader();
        self.detector.reset(leader, self.now_ms);
        self.lease.promise(leader, self.now_ms);
        self.leader_sent_at_ms = 0;
        self.repair_sent_ms = None;
        self.state_request_sent_ms = None;
    }

    fn maybe_join(&mut self) {
        if self.join_sent_ms.is_some_and(|t| self.now_ms < t + self.config.retry_interval_ms) {
            return;
        }
        self.join_sent_ms = Some(self.now_ms);
        let leader = self.leader();
        self.send(leader, Message::Join { view: self.view });
    }

    /// Join from a replica stuck in a higher view that nobody formed: sent to
    /// the normal leader of our older view, which then moves the group to a
    /// view above ours that it leads again (V1b).
    fn ask_to_join(&mut self, leader: ReplicaId) {
        if self.join_sent_ms.is_some_and(|t| self.now_ms < t + self.config.retry_interval_ms) {
            return;
        }
        self.join_sent_ms = Some(self.now_ms);
        self.send(leader, Message::Join { view: self.view });
    }

    fn on_join(&mut self, from: ReplicaId, view: ViewNumber) {
        if view > self.view && self.is_leader_normal() {
            // A straggler in a view nobody formed (V1b): move the group to
            // the first view at or above it that we lead, so it takes part.
            let next = next_view_led_by(view - 1, self.id, self.n());
            self.start_view_change(next);
            return;
        }
        if view != self.view || !self.is_leader_normal() || self.members.contains(from) {
            return;
        }
        // Admit the joiner through a new view that we lead again.
        let next = next_view_led_by(self.view, self.id, self.n());
        self.start_view_change(next);
    }

    // ------------------------------------------------- catch-up and recovery

    /// We learnt that view `view` exists and is ahead of us: wait in it for
    /// the leader's state, voting in nothing meanwhile.
    fn catch_up_to(&mut self, view: ViewNumber) {
        if view > self.view {
            self.enter_view_change(view, false);
        }
        self.needs_state = true;
        self.view_change.voted = true;
        self.request_state();
    }

    fn request_state(&mut self) {
        if self.state_request_sent_ms.is_some_and(|t| self.now_ms < t + self.config.retry_interval_ms) {
            return;
        }
        self.state_request_sent_ms = Some(self.now_ms);
        let leader = self.leader();
        self.send(leader, Message::GetState { view: self.view, commit: self.commit_op });
    }

    fn on_get_state(&mut self, from: ReplicaId, view: ViewNumber, commit: Op) {
        // Not before the install is durable (V5): the asker retries.
        if view != self.view || !self.is_leader_normal() || !self.view_durable() {
            return;
        }
        self.send_state(from, Some(commit));
    }

    /// NewState to `to`. One that carries a checkpoint (and up to an interval
    /// of log) goes to a replica at most once per `STATE_RESEND_RETRIES`
    /// retry intervals: the asker retries every interval while it installs
    /// (or fetches the checkpoint's files), and each answer would otherwise
    /// cost a whole state (issue 12, finding 6).
    fn send_state(&mut self, to: ReplicaId, commit: Option<Op>) {
        let state = self.state_transfer(commit);
        if state.checkpoint.is_some() {
            let gap_ms = self.config.retry_interval_ms * STATE_RESEND_RETRIES;
            let last = &mut self.state_sent_ms[to as usize];
            if last.is_some_and(|t| self.now_ms < t + gap_ms) {
                return;
            }
            *last = Some(self.now_ms);
        }
        self.send(to, Message::NewState { view: self.view, state });
    }

    /// Our state for a replica whose commit point is `commit` (None: unknown).
    fn state_transfer(&self, commit: Option<Op>) -> StateTransfer {
        let (checkpoint, log) = match commit {
            Some(c) if c >= self.log.base() && c <= self.log.op() => (None, self.log.suffix_after(c)),
            _ => match &self.checkpoint {
                Some(c) if c.op >= self.log.base() && c.op <= self.log.op() => (Some(c.clone()), self.log.suffix_after(c.op)),
                _ => (None, self.log.suffix()),
            },
        };
        StateTransfer { members: self.members, commit: self.commit_op, checkpoint, log }
    }

    fn on_new_state(&mut self, from: ReplicaId, view: ViewNumber, state: StateTransfer) {
        if view < self.view || from != leader_of(view, self.n()) || from == self.id {
            return;
        }
        // A normal follower takes it only to get past the leader's compaction
        // (its log is a prefix of the leader's, so the state extends it).
        let behind = state.log.op() > self.log.op() && state.checkpoint.as_ref().is_some_and(|c| c.op > self.log.op());
        if view == self.view && self.status == Status::Normal && !behind {
            return;
        }
        if view > self.view {
            self.enter_view_change(view, false);
        }
        if !self.install_state(from, &state) {
            self.needs_state = true;
            self.view_change.voted = true;
            self.request_state();
            return;
        }
        self.learn_commit(state.commit);
    }

    /// Installs a leader's state (splice or checkpoint); false if impossible.
    fn install_state(&mut self, from: ReplicaId, state: &StateTransfer) -> bool {
        match &state.checkpoint {
            None => {
                if !self.can_splice(&state.log) {
                    return false;
                }
                self.become_normal_follower(state.members);
                self.splice(&state.log);
            }
            Some(checkpoint) => {
                if checkpoint.op <= self.commit_op && self.can_splice(&state.log) {
                    self.become_normal_follower(state.members);
                    self.splice(&state.log);
                    return true;
                }
                if checkpoint.op < self.commit_op || state.log.base != checkpoint.op {
                    return false;
                }
                if !self.checkpoint_at_hand(from, checkpoint) {
                    return false;
                }
                if let Err(e) = self.machine.restore(checkpoint.op, &checkpoint.state) {
                    // Damaged local files (the machine drops them): the next
                    // request fetches them again. The state is unchanged.
                    tracing::error!(replica = self.id, error = %e, "cannot install the leader's checkpoint; asking again");
                    return false;
                }
                self.applied_bytes_since_checkpoint = 0;
                self.log = Log::new(checkpoint.op, checkpoint.timestamp_ms, state.log.entries.clone());
                self.journal.note_truncation(checkpoint.op);
                self.commit_op = checkpoint.op;
                self.checkpoint = Some(checkpoint.clone());
                self.become_normal_follower(state.members);
                let write = Write {
                    truncate_after: Some(checkpoint.op),
                    checkpoint: Some(checkpoint.clone()),
                    entries: state.log.entries.clone(),
                    superblock: Some(self.superblock()),
                };
                self.persist(write);
            }
        }
        true
    }

    /// Whether the machine can restore `checkpoint` from what it holds; if
    /// not, asks the shell to fetch it from `from` (the checkpoint's owner).
    fn checkpoint_at_hand(&mut self, from: ReplicaId, checkpoint: &Checkpoint) -> bool {
        match self.machine.machine_checkpoint(&checkpoint.state) {
            Some(machine_part) if !self.machine.has_machine_checkpoint(&machine_part) => {
                self.actions.push(Action::FetchCheckpoint { from, checkpoint: machine_part });
                false
            }
            _ => true,
        }
    }

    fn start_recovery(&mut self) {
        self.status = Status::Recovering;
        let nonce = self.rng.gen();
        self.recovery = Some(Recovery::new(nonce, self.n(), self.now_ms));
        self.broadcast(Message::Recovery { nonce });
    }

    fn on_recovery(&mut self, from: ReplicaId, nonce: u64) {
        if self.status != Status::Normal {
            return;
        }
        let state = if self.is_leader() {
            // Whatever it acknowledged is gone with its disk.
            self.acks.forget(from);
            self.lease.forget(from);
            Some(self.state_transfer(None))
        } else {
            None
        };
        self.send_after_durable(from, Message::RecoveryResponse { view: self.view, nonce, state });
    }

    fn on_recovery_response(&mut self, from: ReplicaId, view: ViewNumber, nonce: u64, state: Option<StateTransfer>) {
        let n = self.n();
        let majority = self.config.majority();
        let Some(recovery) = self.recovery.as_mut() else { return };
        if nonce != recovery.nonce {
            return;
        }
        recovery.record(from, view, state);
        let Some((view, state)) = recovery.decide(majority, |v| leader_of(v, n)) else { return };
        let state = state.clone();
        if let Some(c) = &state.checkpoint {
            if !self.checkpoint_at_hand(leader_of(view, n), c) {
                // Keep recovering: the retries bring fresh responses, and
                // one of them finds the fetched files.
                return;
            }
        }
        self.recovery = None;
        self.view = view;
        let (base, base_ms) = match &state.checkpoint {
            Some(c) => {
                if let Err(e) = self.machine.restore(c.op, &c.state) {
                    // Stay Recovering; a later answer finds fetched files.
                    tracing::error!(replica = self.id, error = %e, "cannot install the leader's checkpoint; still recovering");
                    self.recovery = Some(Recovery::new(self.rng.gen(), self.n(), self.now_ms));
                    return;
                }
                self.applied_bytes_since_checkpoint = 0;
                (c.op, c.timestamp_ms)
            }
            None => (0, 0),
        };
        invariant!(self, state.log.base == base, "recovery state without its checkpoint");
        self.log = Log::new(base, base_ms, state.log.entries.clone());
        self.commit_op = base;
        self.checkpoint = state.checkpoint.clone();
        self.become_normal_follower(state.members);
        // Views never go back on disk: a replica whose damaged checkpoint
        // sent it here may have entered a view above the group's (alone,
        // while cut off). It keeps that view number and rejoins from there.
        let floor = std::mem::take(&mut self.recovery_view_floor);
        let mut superblock = self.superblock();
        superblock.view = superblock.view.max(floor);
        let write = Write {
            // Whatever the disk held (a replica whose checkpoint was
            // damaged still has its old log) is replaced as a whole.
            truncate_after: Some(0),
            checkpoint: state.checkpoint.clone(),
            entries: state.log.entries.clone(),
            superblock: Some(superblock),
        };
        self.persist(write);
        self.learn_commit(state.commit);
        if floor > self.view {
            // Like a straggler in a view nobody formed (V1b): the group's
            // leader admits it through a view above `floor` (ask_to_join).
            self.start_view_change(floor);
        }
    }
}
