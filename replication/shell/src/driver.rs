//! The event loop: feeds `(now, event)` to the core and executes its actions.
//!
//! Guarantees:
//! - Nothing protocol-shaped happens here. Inbound messages, client calls,
//!   timer expiries and "durable through write `seq`" notifications become
//!   [`Event`]s; [`Action`]s become peer sends, log submissions and client
//!   replies. The core decides what may be acknowledged; the driver only
//!   ever reports `Persisted{seq}` for writes the log writer has fsynced
//!   ([`crate::writer`]), so "ack only what is on disk" holds end to end.
//! - Writes reach the disk in `seq` order (one writer, FIFO submissions); all
//!   writes produced by one wake-up go to the writer as one submission,
//!   which the writer may merge with others into one fdatasync.
//! - Time given to the core never goes back: a wall-clock anchor taken at
//!   start plus a monotonic `Instant` offset (so leader time stamps are
//!   roughly wall time, yet monotonic within the process).
//! - Every queue is bounded: events drained per wake-up
//!   ([`EVENTS_PER_WAKE_MAX`]), client calls waiting
//!   ([`CLIENT_CALLS_QUEUE_MAX`]), replies awaited ([`WAITERS_MAX`]).
//! - A log writer failure stops the driver with an error (a replica that
//!   cannot persist must not keep acknowledging anything).
//!
//! - Test hook, compiled only with the cargo feature `fault-injection`
//!   (which only the tests enable, as a dev-dependency feature):
//!   [`FAULT_DROP_REPLIES_ENV`] makes the replica lose the replies to its
//!   next n client writes (see [`FaultDropReplies`]). A build without the
//!   feature (the shipped `chorus`) ignores the variable and says so.
//!
//! Assumes: the core is correct (it asserts its own invariants); one driver
//! per data directory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_replication::{
    Action, ClientId, Config, Durable, Event, Message, Millis, Operation, Outcome, Replica, ReplicaId, Reply, Request, SessionId,
    StateMachine, Status, Write,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::api::{NodeStatus, Push};
use crate::checkpoint::Fetcher;
use crate::disk::CoreJournal;
use crate::log::SegmentLog;
use crate::transport::{Outgoing, Transport};
use crate::writer::{Durable as LogDurable, LogWriter};

/// Events taken from the channels per wake-up before actions are executed.
pub const EVENTS_PER_WAKE_MAX: usize = 1024;
/// Client calls queued for the driver.
pub const CLIENT_CALLS_QUEUE_MAX: usize = 16384;
/// Client calls awaiting a reply from the core.
pub const WAITERS_MAX: usize = 65536;
/// A driver turn slower than this is logged (it delays every replica).
pub const SLOW_TURN: Duration = Duration::from_millis(50);
/// How often abandoned waiters (their caller timed out) are swept.
pub const WAITER_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A call into the driver from a client connection.
pub enum Call {
    /// A client request; the reply goes to the sender.
    Request(Request, oneshot::Sender<Reply>),
    /// A status query.
    Status(oneshot::Sender<NodeStatus>),
    /// The status without the digest (answered at once).
    Progress(oneshot::Sender<NodeStatus>),
    /// Take a checkpoint now; answers the newest checkpoint's op.
    Checkpoint(oneshot::Sender<chorus_replication::Op>),
    /// A mount's callback message (`Event::RecallAck`, `Event::CacheReset`).
    Callback(Event),
}

/// The connection each subscribed mount receives recalls on (server push),
/// by mount id; shared between the node's connection tasks (which insert on
/// `Subscribe`) and the driver (which pushes `Action::Recall`).
pub type Subscribers = Arc<std::sync::Mutex<HashMap<ClientId, chorus_wire::rpc::ServerConn>>>;

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The log writer failed: nothing more can be made durable.
    #[error("log writer failed: {0}")]
    Log(String),
}

type WaiterKey = (ClientId, SessionId, u64);

/// Fault injection for tests, compiled in only with the cargo feature
/// `fault-injection`, and OFF unless this variable is set when the replica
/// starts (read once): `CHORUS_FAULT_DROP_REPLIES=<n>` makes this
/// replica not send the replies to the next `n` client writes it answers
/// with `Done` (as leader). The write is committed and applied and its reply
/// cached exactly as usual; only that one reply is lost, as if the network
/// dropped it: the caller's channel is held open, so the caller times out
/// and retries instead of seeing an error. Each drop is logged at warn
/// ("fault injection: dropped a write reply"). Used by tests/exactly_once.rs;
/// documented in docs/operations.md ("Fault injection for tests").
pub const FAULT_DROP_REPLIES_ENV: &str = "CHORUS_FAULT_DROP_REPLIES";

/// Whether this build has the fault-injection hooks (cargo feature
/// `fault-injection`; tests that need them assert it).
pub const FAULT_INJECTION_BUILT: bool = cfg!(feature = "fault-injection");

/// The state of the [`FAULT_DROP_REPLIES_ENV`] hook (inert when `left == 0`).
#[derive(Default)]
struct FaultDropReplies {
    /// Write replies still to drop.
    left: u64,
    /// Write requests taken while armed (so reads and registrations are never dropped).
    writes: HashSet<WaiterKey>,
    /// Callers of dropped replies, held open until they give up.
    held: Vec<oneshot::Sender<Reply>>,
}

impl FaultDropReplies {
    fn from_env() -> FaultDropReplies {
        Self::from_value(std::env::var(FAULT_DROP_REPLIES_ENV).ok().as_deref())
    }

    /// The hook for the variable's value (`None`: unset).
    #[cfg(feature = "fault-injection")]
    fn from_value(value: Option<&str>) -> FaultDropReplies {
        let left = value.and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        if left > 0 {
            warn!(left, "fault injection armed: {FAULT_DROP_REPLIES_ENV} (test only)");
        }
        FaultDropReplies { left, ..Default::default() }
    }

    /// Without the `fault-injection` feature the hook is never armed.
    #[cfg(not(feature = "fault-injection"))]
    fn from_value(value: Option<&str>) -> FaultDropReplies {
        if value.is_some() {
            warn!("{FAULT_DROP_REPLIES_ENV} is set but ignored: this build has no fault injection (cargo feature fault-injection)");
        }
        FaultDropReplies::default()
    }

    /// Whether the reply to `key` is to be dropped (consumes one drop).
    fn drops(&mut self, key: &WaiterKey, reply: &Reply) -> bool {
        if !self.writes.remove(key) || self.left == 0 || !matches!(reply.outcome, Outcome::Done(_)) {
            return false;
        }
        self.left -= 1;
        if self.left == 0 {
            self.writes.clear();
        }
        warn!(session = reply.session, seq = reply.seq, left = self.left, "fault injection: dropped a write reply");
        true
    }
}

/// Runs replica `id` until `shutdown` fires or the log fails.
#[allow(clippy::too_many_arguments)]
pub async fn run<S: StateMachine + Send + 'static>(
    config: Config,
    id: ReplicaId,
    durable: Durable,
    log: SegmentLog,
    machine: S,
    seed: u64,
    transport: Arc<Transport<Message>>,
    mut inbound: mpsc::Receiver<(ReplicaId, Message)>,
    mut calls: mpsc::Receiver<Call>,
    mut shutdown: watch::Receiver<bool>,
    fetcher: Option<Arc<Fetcher>>,
    disk: crate::disk_space::DiskGuard,
    subscribers: Subscribers,
) -> Result<(), DriverError> {
    let clock = Clock::new();
    let mut writer = LogWriter::start(log, CoreJournal::new(durable.clone()));
    let mut durable_rx = writer.durable();
    let mut replica = Replica::new(config, id, durable, machine, seed, clock.now_ms());
    let mut exec = Executor {
        transport,
        waiters: HashMap::new(),
        in_flight: VecDeque::new(),
        writes: 0,
        syncs: 0,
        sync_us_total: 0,
        fault: FaultDropReplies::from_env(),
        fetcher,
        clock_ms: clock.now_ms(),
        digests: Arc::new(std::sync::Mutex::new(DigestCache::default())),
        disk,
        subscribers,
        recalls_unsent: 0,
    };
    let mut last_sweep = Instant::now();
    let mut last_view = (replica.status().view, replica.status().status);
    info!(replica = id, status = ?replica.status(), "replica started");
    exec.execute(&mut replica, &mut writer).await?;

    loop {
        let wake_at = replica.poll_timeout().map(|at| clock.instant_of(at));
        let turn_started;
        let sleep = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let what;
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            changed = durable_rx.changed() => {
                if changed.is_err() {
                    return Err(DriverError::Log("log writer thread exited".into()));
                }
                let d: LogDurable = durable_rx.borrow_and_update().clone();
                if let Some(e) = d.error {
                    error!(error = %e, "stopping: the log cannot persist");
                    return Err(DriverError::Log(e.to_string()));
                }
                turn_started = Instant::now();
                what = "persisted";
                exec.syncs = d.syncs;
                exec.sync_us_total = d.sync_us_total;
                if let Some(seq) = exec.persisted_through(d.ticket) {
                    replica.step(clock.now_ms(), Event::Persisted { seq });
                }
            }
            Some((from, message)) = inbound.recv() => {
                turn_started = Instant::now();
                what = "messages";
                replica.step(clock.now_ms(), Event::Message { from, message });
                for _ in 1..EVENTS_PER_WAKE_MAX {
                    let Ok((from, message)) = inbound.try_recv() else { break };
                    replica.step(clock.now_ms(), Event::Message { from, message });
                }
            }
            Some(call) = calls.recv() => {
                turn_started = Instant::now();
                what = "calls";
                exec.take_call(&mut replica, &clock, call);
                for _ in 1..EVENTS_PER_WAKE_MAX {
                    let Ok(call) = calls.try_recv() else { break };
                    exec.take_call(&mut replica, &clock, call);
                }
            }
            _ = sleep => {
                turn_started = Instant::now();
                what = "tick";
                replica.step(clock.now_ms(), Event::Tick);
            }
        }
        let stepped = turn_started.elapsed();
        let report = replica.status();
        if (report.view, report.status) != last_view {
            info!(replica = id, view = report.view, status = ?report.status, leader = report.leader, "view/status changed");
            last_view = (report.view, report.status);
        }
        exec.execute(&mut replica, &mut writer).await?;
        let turn = turn_started.elapsed();
        if turn >= SLOW_TURN {
            warn!(replica = id, what, step_ms = stepped.as_millis() as u64, turn_ms = turn.as_millis() as u64, "slow driver turn");
        }
        if last_sweep.elapsed() >= WAITER_SWEEP_INTERVAL {
            exec.waiters.retain(|_, ws| {
                ws.retain(|w| !w.is_closed());
                !ws.is_empty()
            });
            exec.fault.held.retain(|w| !w.is_closed());
            last_sweep = Instant::now();
        }
    }
    info!(replica = id, "driver stopping");
    writer.shutdown();
    Ok(())
}

/// The shell's clock: wall-clock anchor + monotonic offset, in ms.
struct Clock {
    start: Instant,
    anchor_ms: Millis,
}

impl Clock {
    fn new() -> Clock {
        let anchor_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0);
        Clock { start: Instant::now(), anchor_ms }
    }

    fn now_ms(&self) -> Millis {
        self.anchor_ms + self.start.elapsed().as_millis() as Millis
    }

    fn instant_of(&self, at_ms: Millis) -> Instant {
        self.start + Duration::from_millis(at_ms.saturating_sub(self.anchor_ms))
    }
}

/// Status requests may arrive from any client: each used to start its own
/// digest, which reads the whole state on a blocking thread (issue 10 #5:
/// a client could keep every core hashing). Now at most one digest runs;
/// requests arriving meanwhile wait for it (at most
/// [`STATUS_DIGEST_WAITERS_MAX`]); a request at the same applied op gets
/// the last digest (exact); and a new digest starts at most
/// [`DigestCache::spacing`] after the previous one finished (the last
/// snapshot answers in between), so digests take at most a fifth of one
/// core whatever the clients do.
#[derive(Default)]
struct DigestCache {
    /// The last computed status with its digest.
    last: Option<NodeStatus>,
    /// When it finished, and how long it took.
    finished: Option<Instant>,
    took: Duration,
    /// Whether a digest is being computed, and who waits for it.
    running: bool,
    waiters: Vec<oneshot::Sender<NodeStatus>>,
    /// Digests computed since start.
    computed: u64,
}

/// Status requests waiting for the running digest; more get NoReply.
pub const STATUS_DIGEST_WAITERS_MAX: usize = 1024;
/// Least time between the end of one digest and the start of the next.
pub const STATUS_DIGEST_SPACING_MIN: Duration = Duration::from_millis(500);
/// The next digest waits at least this many times the last one's duration.
pub const STATUS_DIGEST_DUTY_FACTOR: u32 = 4;

impl DigestCache {
    fn spacing(&self) -> Duration {
        STATUS_DIGEST_SPACING_MIN.max(self.took * STATUS_DIGEST_DUTY_FACTOR)
    }
}

struct Executor {
    transport: Arc<Transport<Message>>,
    waiters: HashMap<WaiterKey, Vec<oneshot::Sender<Reply>>>,
    /// (writer ticket, last core seq in it), in order.
    in_flight: VecDeque<(u64, u64)>,
    writes: u64,
    syncs: u64,
    sync_us_total: u64,
    fault: FaultDropReplies,
    /// Fetches checkpoint files for state transfer (None: the machine's
    /// checkpoints are images, nothing to fetch).
    fetcher: Option<Arc<Fetcher>>,
    /// Wall time of the last status request (checkpoint age).
    clock_ms: Millis,
    /// The last state digest and the one being computed (see [`DigestCache`]).
    digests: Arc<std::sync::Mutex<DigestCache>>,
    /// This replica's disk reserve (sampled before client writes).
    disk: crate::disk_space::DiskGuard,
    /// Where recalls go.
    subscribers: Subscribers,
    /// Recalls that found no subscribed connection (or a full one): they
    /// end when the callbacks expire.
    recalls_unsent: u64,
}

impl Executor {
    fn take_call<S: StateMachine>(&mut self, replica: &mut Replica<S>, clock: &Clock, call: Call) {
        match call {
            Call::Checkpoint(tx) => {
                let _ = tx.send(replica.checkpoint_now());
            }
            Call::Progress(tx) => {
                self.clock_ms = clock.now_ms();
                let _ = tx.send(self.status(replica));
            }
            Call::Status(tx) => {
                self.clock_ms = clock.now_ms();
                let status = self.status(replica);
                let mut cache = self.digests.lock().unwrap_or_else(|e| e.into_inner());
                let status = NodeStatus { digests_computed: cache.computed, ..status };
                if let Some(last) = cache.last.as_ref().filter(|l| l.digest_op == status.applied_op) {
                    // Same applied op, same state: the digest is exact.
                    let _ = tx.send(NodeStatus { digest: last.digest, digest_op: last.digest_op, ..status });
                    return;
                }
                if cache.running {
                    if cache.waiters.len() < STATUS_DIGEST_WAITERS_MAX {
                        cache.waiters.push(tx); // answered by the running digest
                    }
                    return; // else dropped: the node answers NoReply
                }
                if let Some((last, finished)) = cache.last.as_ref().zip(cache.finished) {
                    if finished.elapsed() < cache.spacing() {
                        // Too soon for another: the status as it is now,
                        // with the last digest, of `digest_op` (at most a
                        // spacing old). The fields must stay fresh: callers
                        // compare commit points across replicas while
                        // clients write (a whole old snapshot made replicas
                        // look forever apart under load).
                        let _ = tx.send(NodeStatus {
                            digest: last.digest,
                            digest_op: last.digest_op,
                            digests_computed: cache.computed,
                            ..status
                        });
                        return;
                    }
                }
                cache.running = true;
                cache.waiters.push(tx);
                drop(cache);
                // The digest may read the whole state: never on this loop.
                let job = replica.state().digest_job();
                let digests = self.digests.clone();
                tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let digest = job();
                    let mut cache = digests.lock().unwrap_or_else(|e| e.into_inner());
                    cache.running = false;
                    cache.computed += 1;
                    cache.took = started.elapsed();
                    cache.finished = Some(Instant::now());
                    let done = NodeStatus { digest, digest_op: status.applied_op, digests_computed: cache.computed, ..status };
                    for waiter in cache.waiters.drain(..) {
                        let _ = waiter.send(done.clone());
                    }
                    cache.last = Some(done);
                });
            }
            Call::Request(request, tx) => {
                if self.waiters.len() >= WAITERS_MAX {
                    let report = replica.status();
                    let _ = tx.send(Reply {
                        session: request.session,
                        seq: request.seq,
                        view: report.view,
                        leader: report.leader,
                        outcome: Outcome::Busy,
                        lease_ms: 0,
                        changed: Vec::new(),
                    });
                    return;
                }
                let key = (request.client, request.session, request.seq);
                if self.fault.left > 0 && matches!(request.operation, Operation::Write(_)) {
                    self.fault.writes.insert(key);
                }
                self.waiters.entry(key).or_default().push(tx);
                if matches!(request.operation, Operation::Write(_)) {
                    replica.set_disk_low(self.disk.low());
                }
                replica.step(clock.now_ms(), Event::Request(request));
            }
            Call::Callback(event) => replica.step(clock.now_ms(), event),
        }
    }

    fn status<S: StateMachine>(&self, replica: &Replica<S>) -> NodeStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let r = replica.status();
        let progress = self.fetcher.as_ref().map(|f| &*f.progress);
        NodeStatus {
            id: r.id,
            status: match r.status {
                Status::Normal => "normal",
                Status::ViewChange => "view_change",
                Status::Recovering => "recovering",
            }
            .to_string(),
            view: r.view,
            leader: r.leader,
            op: r.op,
            commit_op: r.commit_op,
            applied_op: r.applied_op,
            clients: 0, // the node fills it in (it owns the connections)
            durable_op: r.durable_op,
            digest: 0, // filled in off the loop, see take_call
            digest_op: 0,
            digests_computed: 0, // filled in from the DigestCache
            log_syncs: self.syncs,
            log_sync_us_total: self.sync_us_total,
            log_writes: self.writes,
            messages_dropped: self.transport.stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
            checkpoint_op: r.checkpoint_op,
            checkpoint_age_ms: if r.checkpoint_timestamp_ms == 0 { 0 } else { self.clock_ms.saturating_sub(r.checkpoint_timestamp_ms) },
            transfer_active: progress.is_some_and(|p| p.active.load(Relaxed)),
            transfer_bytes_done: progress.map_or(0, |p| p.bytes_done.load(Relaxed)),
            transfer_bytes_total: progress.map_or(0, |p| p.bytes_total.load(Relaxed)),
            transfers_done: progress.map_or(0, |p| p.fetches_done.load(Relaxed)),
        }
    }

    /// The highest core seq covered by writer ticket `ticket`.
    fn persisted_through(&mut self, ticket: u64) -> Option<u64> {
        let mut seq = None;
        while let Some(&(t, s)) = self.in_flight.front() {
            if t > ticket {
                break;
            }
            self.in_flight.pop_front();
            seq = Some(s);
        }
        seq
    }

    async fn execute<S: StateMachine>(&mut self, replica: &mut Replica<S>, writer: &mut LogWriter<CoreJournal>) -> Result<(), DriverError> {
        let mut writes: Vec<Write> = Vec::new();
        let mut last_seq = None;
        // The core sends the same Prepare to each member as separate actions:
        // share one copy so it is encoded once.
        let mut last_prepare: Option<Arc<Outgoing<Message>>> = None;
        for action in replica.poll_actions() {
            match action {
                Action::Send { to, message } => {
                    if let Some(shared) = &last_prepare {
                        if same_prepare(shared.message(), &message) {
                            self.transport.send_shared(to, shared.clone());
                            continue;
                        }
                    }
                    let out = Outgoing::new(message);
                    last_prepare = matches!(out.message(), Message::Prepare { .. }).then(|| out.clone());
                    self.transport.send_shared(to, out);
                }
                Action::Persist { seq, write } => {
                    if let Some(prev) = last_seq {
                        assert!(seq > prev, "persist seqs must increase");
                    }
                    last_seq = Some(seq);
                    self.writes += 1;
                    writes.push(write);
                }
                Action::Reply { client, reply } => {
                    let key = (client, reply.session, reply.seq);
                    if let Some(ws) = self.waiters.remove(&key) {
                        if self.fault.left > 0 && self.fault.drops(&key, &reply) {
                            self.fault.held.extend(ws);
                            continue;
                        }
                        for w in ws {
                            let _ = w.send(reply.clone());
                        }
                    }
                }
                Action::Recall { client, recall, objects } => {
                    let conn = self.subscribers.lock().expect("subscribers lock").get(&client).cloned();
                    let view = replica.status().view;
                    let sent = conn.is_some_and(|c| c.try_push(&Push::Recall { recall, objects, view }).is_ok());
                    if !sent {
                        self.recalls_unsent += 1;
                        debug!(client, recall, "recall not delivered; it ends when the callbacks expire");
                    }
                }
                Action::SetTimer { .. } => {} // the loop asks poll_timeout() each turn
                Action::FetchCheckpoint { from, checkpoint } => match &self.fetcher {
                    Some(fetcher) => fetcher.request(from, checkpoint),
                    None => warn!(from, "the core asked to fetch a checkpoint, but this node has no checkpoint directory"),
                },
            }
        }
        if let Some(seq) = last_seq {
            let ticket = writer.submit(writes).await.map_err(|e| DriverError::Log(e.to_string()))?;
            self.in_flight.push_back((ticket, seq));
        }
        Ok(())
    }
}

/// Whether two Prepares are the same message: same view, commit point,
/// send time and entry range. Entries with equal (op, view) are equal (the
/// core's log-matching rule), so comparing the range is enough.
fn same_prepare(a: &Message, b: &Message) -> bool {
    match (a, b) {
        (
            Message::Prepare { view: va, commit: ca, sent_at_ms: sa, entries: ea },
            Message::Prepare { view: vb, commit: cb, sent_at_ms: sb, entries: eb },
        ) => {
            let ends = |e: &[chorus_replication::Entry]| e.first().zip(e.last()).map(|(f, l)| (f.op, f.view, l.op, l.view));
            va == vb && ca == cb && sa == sb && ea.len() == eb.len() && ends(ea) == ends(eb)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_replication::Entry;

    fn prepare(view: u64, commit: u64, ops: std::ops::RangeInclusive<u64>) -> Message {
        let entries = ops.map(|op| Entry { op, view, timestamp_ms: op, requests: vec![] }).collect();
        Message::Prepare { view, commit, sent_at_ms: 7, entries }
    }

    /// The shipped build (no `fault-injection` feature) ignores the variable.
    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn fault_injection_is_not_built_without_the_feature() {
        assert!(!FAULT_INJECTION_BUILT);
        assert_eq!(FaultDropReplies::from_value(Some("3")).left, 0);
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn fault_injection_arms_with_the_feature() {
        const { assert!(FAULT_INJECTION_BUILT) };
        assert_eq!(FaultDropReplies::from_value(Some("3")).left, 3);
        assert_eq!(FaultDropReplies::from_value(None).left, 0);
    }

    #[test]
    fn same_prepare_matches_only_the_same_message() {
        assert!(same_prepare(&prepare(3, 10, 11..=12), &prepare(3, 10, 11..=12)));
        assert!(!same_prepare(&prepare(3, 10, 11..=12), &prepare(3, 11, 11..=12)));
        assert!(!same_prepare(&prepare(3, 10, 11..=12), &prepare(3, 10, 11..=13)));
        assert!(!same_prepare(&prepare(3, 10, 11..=12), &prepare(4, 10, 11..=12)));
        assert!(!same_prepare(&prepare(3, 10, 11..=12), &Message::StartViewChange { view: 3 }));
    }
}
