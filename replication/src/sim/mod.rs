//! Deterministic simulator of a replica group, in the spirit of TigerBeetle's
//! VOPR and quinn-proto's `Pair`: N [`Replica`]s of the core plus clients,
//! virtual time, a simulated network and disk, and one seeded random source
//! from which everything (configuration, faults, workload, the replicas' own
//! seeds) is drawn. A seed replays exactly.
//!
//! Faults, during the first part of a run: message loss, duplication,
//! reordering (random delays), delay, partitions (two-way, one-way, splits),
//! crash with the disk intact, crash losing unsynced writes (a random prefix
//! of the in-flight writes lands), crash wiping the disk (the replica comes
//! back through recovery), crash with a checkpoint that no longer restores
//! (the replica recovers from the group while its disk keeps its view),
//! restart, slow replicas (slow disk and links), a stalled disk (writes wait
//! up to 250 ms while the replica keeps sending: messages leave before the
//! sender's own writes are durable, as in the shell).
//! Then the faults stop ("heal") and the group must make progress.
//!
//! Checkers ([`Checker`]): committed prefixes agree; no acknowledged command
//! is lost; per-key client histories are linearizable; no command executes
//! twice; after the heal, every client finishes and all replicas converge
//! within a bounded virtual time.

pub mod kv;
pub mod linearizability;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::log::{Durable, Write};
use crate::message::{
    is_caching_client, Action, Event, Message, ObjectId, Operation, Outcome, RecallId, Reply, Request, SessionId, CACHING_CLIENT_BIT,
};
use crate::replica::{Replica, Status};
use crate::{fnv64, Bugs, Config, Millis, Op, ReplicaId};

use kv::{KvCommand, KvStore};
use linearizability::{HistoryOp, Kind};

/// How hard the run hits the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultProfile {
    /// No fault at all (a smoke test).
    None,
    /// The default mix.
    Standard,
    /// More crashes and partitions, longer; used to shake out injected bugs.
    Aggressive,
}

/// What one run looks like.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed everything derives from.
    pub seed: u64,
    /// Fault mix.
    pub faults: FaultProfile,
    /// Injected bugs.
    pub bugs: Bugs,
    /// Each replica's clock runs at (1 ± up to this) × real time, in parts
    /// per million. The lease assumes relative drift under 10 %
    /// (`lease_drift_margin_ms` = lease / 10): the default, ±5 % per clock,
    /// reaches that bound between two clocks.
    pub clock_drift_ppm_max: i64,
}

/// Default [`Options::clock_drift_ppm_max`]: ±5 % per clock, so two clocks
/// drift apart by up to 10 %, the bound the lease is built for.
pub const CLOCK_DRIFT_PPM_DEFAULT: i64 = 50_000;

impl Options {
    /// No bug; one seed in four runs the aggressive fault mix, the rest the
    /// standard one (derived from the seed, so the seed alone replays it).
    pub fn new(seed: u64) -> Options {
        let faults = if seed % 4 == 3 { FaultProfile::Aggressive } else { FaultProfile::Standard };
        Options { seed, faults, bugs: Bugs::NONE, clock_drift_ppm_max: CLOCK_DRIFT_PPM_DEFAULT }
    }
}

/// The properties the simulator checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Checker {
    /// Two replicas applied different entries at the same op.
    PrefixAgreement,
    /// A command acknowledged to a client is missing from the final state.
    AckedLost,
    /// A key's client history has no linearization.
    Linearizability,
    /// A command executed twice.
    DoubleExecution,
    /// After the heal, the group did not finish the work and converge in time.
    Progress,
    /// A session ended (SessionUnknown) though its client used it well
    /// within the eviction and expiry times of real time.
    SessionExpiry,
}

/// One checker failure.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which checker.
    pub checker: Checker,
    /// What it saw.
    pub detail: String,
}

/// Result of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Checker failures (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Replicas in U.
    pub replicas: u8,
    /// Virtual time at the end.
    pub end_ms: Millis,
    /// Events processed.
    pub events: u64,
    /// Client operations completed.
    pub completed_ops: usize,
    /// Highest view reached.
    pub view: u64,
    /// Crashes injected (all kinds).
    pub crashes: u32,
    /// Disk wipes among them.
    pub wipes: u32,
    /// Crashes that left a checkpoint that cannot be restored.
    pub damaged_checkpoints: u32,
    /// Partitions formed.
    pub partitions: u32,
    /// Messages dropped by loss or a partition.
    pub drops: u64,
    /// Disk stalls injected.
    pub disk_stalls: u32,
    /// Ops committed.
    pub commit_op: Op,
    /// Replica messages delivered, by kind.
    pub messages: BTreeMap<&'static str, u64>,
    /// Reads caching clients answered from their cache.
    pub cached_reads: u64,
    /// Recalls the leaders sent.
    pub recalls_sent: u64,
}

impl Report {
    /// Whether a given checker failed.
    pub fn failed(&self, checker: Checker) -> bool {
        self.violations.iter().any(|v| v.checker == checker)
    }
}

/// The configuration the simulator runs the core with: short timeouts, tiny
/// bounds (so batching, pipelining, checkpoints and state transfer all happen
/// within a few hundred virtual milliseconds).
pub fn sim_config(replica_count: u8, bugs: Bugs) -> Config {
    Config {
        replica_count,
        heartbeat_interval_ms: 10,
        suspicion_timeout_min_ms: 40,
        suspicion_timeout_max_ms: 200,
        suspicion_jitter_ms: 30,
        view_change_timeout_ms: 120,
        view_change_gather_ms: 5,
        retry_interval_ms: 20,
        lease_ms: 50,
        lease_drift_margin_ms: 5,
        batch_requests_max: 4,
        batch_bytes_max: 4096,
        pipeline_depth_max: 4,
        pending_requests_max: 32,
        pending_bytes_max: 2048,
        entries_per_message_max: 8,
        repair_bytes_max: 8192,
        checkpoint_interval_ops: 8,
        checkpoint_interval_bytes: 1 << 20,
        sessions_max: 16,
        session_replies_max: 4,
        session_timeout_ms: 1_000_000,
        session_evict_idle_ms: 150,
        callback_lease_ms: 140,
        callbacks_max: 10_000,
        parked_reads_max: 64,
        bugs,
    }
}

/// The command line that replays `seed` exactly.
pub fn replay_command(seed: u64) -> String {
    format!("CHORUS_SIM_SEED={seed} cargo test -p chorus-replication --lib sim::tests::simulate_seeds -- --nocapture")
}

/// Runs one seed.
pub fn run(options: &Options) -> Report {
    let mut sim = Sim::new(options);
    sim.run();
    sim.finish()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Addr {
    Replica(ReplicaId),
    Client(usize),
}

#[derive(Clone, Debug)]
enum Payload {
    Replica(Message),
    Request(Request),
    Reply(Reply),
    /// Leader → caching client.
    Recall {
        recall: RecallId,
        objects: Vec<ObjectId>,
    },
    /// Caching client → the replica that recalled.
    RecallAck {
        client: u64,
        recall: RecallId,
    },
    /// Caching client → a new leader it met.
    CacheReset {
        client: u64,
    },
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        from: Addr,
        to: Addr,
        payload: Payload,
    },
    DiskDone {
        replica: ReplicaId,
        incarnation: u64,
        seq: u64,
    },
    Timer {
        replica: ReplicaId,
        incarnation: u64,
    },
    ClientWake {
        client: usize,
        token: u64,
        wake: Wake,
    },
    Fault,
    /// A crash aimed at a moment (a new leader's install in flight).
    CrashAt {
        replica: ReplicaId,
        incarnation: u64,
    },
    Restart {
        replica: ReplicaId,
    },
    Heal,
    Check,
}

struct Scheduled {
    at_ms: Millis,
    id: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.id) == (other.at_ms, other.id)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.id).cmp(&(other.at_ms, other.id))
    }
}

/// Why a client wakes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// No answer in time: resend to the next replica.
    Timeout,
    /// Resend to the current target (after a redirect or Busy).
    Resend,
    /// Start the next operation.
    Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    Intact,
    LoseUnsynced,
    Wipe,
    DamageCheckpoint,
}

struct Node {
    replica: Option<Replica<KvStore>>,
    /// This replica's clock: local = offset + t × (1 + ppm / 10⁶), for
    /// virtual (real) time t. Different offsets model wall clocks that
    /// disagree; the rate models drift.
    clock_offset_ms: Millis,
    clock_ppm: i64,
    incarnation: u64,
    durable: Durable,
    /// In-flight writes: (seq, write, completion time).
    pending: VecDeque<(u64, Write, Millis)>,
    timer_ms: Option<Millis>,
    slow: bool,
    /// Writes submitted before this time complete no earlier than it.
    disk_stalled_until_ms: Millis,
    /// Highest view this node was seen leading.
    led_view: u64,
    /// Lost its disk and has not yet durably recovered.
    wiped: bool,
    down_since_ms: Millis,
    applied_seen: Op,
}

struct PendingOp {
    request: Request,
    history: Option<usize>,
    /// Times this request was sent: a `SessionUnknown` answer proves that
    /// nothing ran only if it answers the one and only transmission.
    transmissions: u32,
    /// When it was first sent: if it ran, it ran after this.
    first_sent_ms: Millis,
    /// The client's recall count when it was created: a read answered
    /// after a recall (or a cache reset) may return a state older than the
    /// recall, so it is not cached.
    recalls_seen: u64,
}

/// Local time of a clock with `offset` and `ppm` at virtual time `t`.
fn clock_local(offset: Millis, ppm: i64, t: Millis) -> Millis {
    offset + (t as i128 * (1_000_000 + ppm) as i128 / 1_000_000) as Millis
}

/// The first virtual time at which that clock reads at least `local`.
fn clock_virtual(offset: Millis, ppm: i64, local: Millis) -> Millis {
    let rate = (1_000_000 + ppm) as i128;
    let t = ((local.saturating_sub(offset) as i128) * 1_000_000 + rate - 1) / rate;
    let mut t = t as Millis;
    while clock_local(offset, ppm, t) < local {
        t += 1;
    }
    t
}

struct Client {
    id: u64,
    session: Option<SessionId>,
    /// Virtual time of the last answer that showed the session alive.
    session_seen_ms: Millis,
    next_seq: u64,
    ops_left: u32,
    known_view: u64,
    target: ReplicaId,
    current: Option<PendingOp>,
    token: u64,
    /// An operation refused with SessionUnknown that provably did not run:
    /// sent again in the next session, as the real client does.
    rerun: Option<(Operation, Option<usize>)>,
    /// Caches reads under callbacks (a mount), as the real mount does:
    /// key → (list, trusted until), trusting 9/10 of the lease from the
    /// first send of the read.
    cache: Option<BTreeMap<u8, (Vec<u64>, Millis)>>,
    /// Recalls and cache resets so far.
    recalls_seen: u64,
}

struct Record {
    key: u8,
    kind: Kind,
    invoke_ms: Millis,
    complete_ms: Option<Millis>,
}

struct Sim {
    rng: ChaCha8Rng,
    faults: FaultProfile,
    config: Config,
    now_ms: Millis,
    next_id: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    history: Vec<Record>,
    keys: u8,
    // network faults
    blocked: Vec<Vec<bool>>,
    loss: f64,
    duplication: f64,
    delay_max_ms: Millis,
    fault_until_ms: Millis,
    healed: bool,
    deadline_ms: Millis,
    /// op → (hash of the entry applied there, replica that applied it first).
    applied: BTreeMap<Op, (u64, ReplicaId)>,
    violations: Vec<Violation>,
    events: u64,
    crashes: u32,
    wipes: u32,
    damaged_checkpoints: u32,
    partitions: u32,
    drops: u64,
    disk_stalls: u32,
    done: bool,
    messages: BTreeMap<&'static str, u64>,
    cached_reads: u64,
    recalls_sent: u64,
}

/// Virtual time allowed after the heal for every client to finish and every
/// replica to converge.
const PROGRESS_BOUND_MS: Millis = 4_000;
/// A client resends to another replica after this long without an answer.
const CLIENT_RETRY_MS: Millis = 60;

impl Sim {
    fn new(options: &Options) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let replicas: u8 = if rng.gen_bool(0.2) { 5 } else { 3 };
        let mut config = sim_config(replicas, options.bugs);
        if options.seed % 3 == 2 {
            // Every third seed runs with byte bounds small enough to bind
            // (one request per batch, short repairs, checkpoints by bytes);
            // decided by the seed alone so replays stay exact.
            config.batch_bytes_max = 64;
            config.repair_bytes_max = 96;
            config.checkpoint_interval_bytes = 160;
        }
        let aggressive = options.faults == FaultProfile::Aggressive;
        let mut client_count = rng.gen_range(2..=4);
        if options.seed % 5 == 4 {
            // Every fifth seed: more clients than the session table holds,
            // and sessions that expire during the faults, so eviction,
            // refused registrations and expiry under retries all happen.
            client_count = rng.gen_range(4..=6);
            config.sessions_max = 3;
            config.session_timeout_ms = 400;
        }
        let mut ops = if aggressive { rng.gen_range(15..=30) } else { rng.gen_range(8..=20) };
        if client_count > 4 {
            ops = ops.min(20); // the checker takes at most 128 ops per key
        }
        let fault_until_ms = match options.faults {
            FaultProfile::None => 0,
            FaultProfile::Standard => rng.gen_range(300..=1_000),
            FaultProfile::Aggressive => rng.gen_range(800..=2_000),
        };
        let (loss, duplication) = match options.faults {
            FaultProfile::None => (0.0, 0.0),
            _ => (rng.gen_range(0.0..0.05), rng.gen_range(0.0..0.03)),
        };
        let delay_max_ms = rng.gen_range(1..=12);
        let mut sim = Sim {
            faults: options.faults,
            now_ms: 0,
            next_id: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            clients: Vec::new(),
            history: Vec::new(),
            keys: rng.gen_range(1..=3),
            blocked: vec![vec![false; replicas as usize]; replicas as usize],
            loss,
            duplication,
            delay_max_ms,
            fault_until_ms,
            healed: false,
            deadline_ms: fault_until_ms + PROGRESS_BOUND_MS,
            applied: BTreeMap::new(),
            violations: Vec::new(),
            events: 0,
            crashes: 0,
            wipes: 0,
            damaged_checkpoints: 0,
            partitions: 0,
            drops: 0,
            disk_stalls: 0,
            done: false,
            messages: BTreeMap::new(),
            cached_reads: 0,
            recalls_sent: 0,
            config,
            rng,
        };
        // Clocks come from their own stream, so the rest of a seed's
        // schedule does not depend on them.
        let mut clocks = ChaCha8Rng::seed_from_u64(options.seed ^ 0xc10c_c10c_c10c_c10c);
        let drift = options.clock_drift_ppm_max;
        for id in 0..replicas {
            let durable = Durable::initial(id, replicas);
            let seed = sim.rng.gen();
            let clock_offset_ms = clocks.gen_range(0..=5_000);
            let clock_ppm = if drift > 0 { clocks.gen_range(-drift..=drift) } else { 0 };
            let now = clock_local(clock_offset_ms, clock_ppm, 0);
            let replica = Replica::new(sim.config.clone(), id, durable.clone(), KvStore::new(), seed, now);
            sim.nodes.push(Node {
                clock_offset_ms,
                clock_ppm,
                replica: Some(replica),
                incarnation: 0,
                durable,
                pending: VecDeque::new(),
                timer_ms: None,
                slow: false,
                disk_stalled_until_ms: 0,
                led_view: 0,
                wiped: false,
                down_since_ms: 0,
                applied_seen: 0,
            });
        }
        for id in 0..replicas {
            sim.drain(id);
        }
        for c in 0..client_count {
            let target = sim.rng.gen_range(0..replicas);
            // Every other client caches under callbacks, like a mount.
            let caching = c % 2 == 1;
            sim.clients.push(Client {
                id: (1_000 + c as u64) | if caching { CACHING_CLIENT_BIT } else { 0 },
                cache: caching.then(BTreeMap::new),
                recalls_seen: 0,
                session: None,
                session_seen_ms: 0,
                next_seq: 1,
                ops_left: ops,
                known_view: 0,
                target,
                current: None,
                token: 0,
                rerun: None,
            });
            let start = sim.rng.gen_range(0..30);
            sim.schedule(start, Ev::ClientWake { client: c, token: 0, wake: Wake::Next });
        }
        if options.faults != FaultProfile::None {
            let first = sim.rng.gen_range(10..60);
            sim.schedule(first, Ev::Fault);
        }
        sim.schedule(fault_until_ms, Ev::Heal);
        sim
    }

    fn schedule(&mut self, at_ms: Millis, ev: Ev) {
        self.next_id += 1;
        self.queue.push(Reverse(Scheduled { at_ms: at_ms.max(self.now_ms), id: self.next_id, ev }));
    }

    fn run(&mut self) {
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at_ms > self.deadline_ms || self.done {
                break;
            }
            self.now_ms = next.at_ms;
            self.events += 1;
            match next.ev {
                Ev::Deliver { from, to, payload } => self.deliver(from, to, payload),
                Ev::DiskDone { replica, incarnation, seq } => self.disk_done(replica, incarnation, seq),
                Ev::Timer { replica, incarnation } => self.timer(replica, incarnation),
                Ev::ClientWake { client, token, wake } => self.client_wake(client, token, wake),
                Ev::Fault => self.fault(),
                Ev::CrashAt { replica, incarnation } => {
                    let node = &self.nodes[replica as usize];
                    if !self.healed && node.replica.is_some() && node.incarnation == incarnation {
                        self.crash(replica as usize, Crash::LoseUnsynced);
                    }
                }
                Ev::Restart { replica } => {
                    if !self.healed && self.nodes[replica as usize].replica.is_none() {
                        self.restart(replica as usize);
                    }
                }
                Ev::Heal => self.heal(),
                Ev::Check => self.check_done(),
            }
        }
        if !self.done {
            let unfinished: Vec<String> = self
                .clients
                .iter()
                .filter(|c| c.ops_left > 0 || c.current.is_some() || c.rerun.is_some())
                .map(|c| {
                    let doing = match c.current.as_ref().map(|p| &p.request.operation) {
                        None => "nothing",
                        Some(Operation::Register) => "register",
                        Some(Operation::Write(_)) => "write",
                        Some(Operation::Read(_)) => "read",
                    };
                    format!("{} ({} left, session {}, doing {doing})", c.id, c.ops_left, c.session.is_some())
                })
                .collect();
            let detail = format!(
                "no progress within {PROGRESS_BOUND_MS} ms of the heal at {} ms: clients unfinished: {unfinished:?}; replicas: {}",
                self.fault_until_ms,
                self.describe_replicas()
            );
            self.violate(Checker::Progress, detail);
        }
    }

    fn describe_replicas(&self) -> String {
        self.nodes
            .iter()
            .map(|n| match &n.replica {
                None => "down".to_string(),
                Some(r) => {
                    let s = r.status();
                    format!(
                        "[{} {:?} v{} lnv{} op{} commit{} durable{} members{:b}{}]",
                        s.id,
                        s.status,
                        s.view,
                        s.last_normal_view,
                        s.op,
                        s.commit_op,
                        s.durable_op,
                        s.members.0,
                        if s.needs_state { " needs-state" } else { "" }
                    )
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn violate(&mut self, checker: Checker, detail: String) {
        if self.violations.len() < 16 {
            self.violations.push(Violation { checker, detail });
        }
    }

    // ------------------------------------------------------------ replicas

    /// Replica `id`'s clock now.
    fn local_now(&self, id: ReplicaId) -> Millis {
        let node = &self.nodes[id as usize];
        clock_local(node.clock_offset_ms, node.clock_ppm, self.now_ms)
    }

    fn step(&mut self, id: ReplicaId, event: Event) {
        let now = self.local_now(id);
        let Some(replica) = self.nodes[id as usize].replica.as_mut() else { return };
        replica.step(now, event);
        self.drain(id);
    }

    /// Executes the actions of replica `id` and observes what it applied.
    fn drain(&mut self, id: ReplicaId) {
        let node = &mut self.nodes[id as usize];
        let Some(replica) = node.replica.as_mut() else { return };
        let actions = replica.poll_actions();
        let incarnation = node.incarnation;
        for action in actions {
            match action {
                Action::Send { to, message } => self.send(Addr::Replica(id), Addr::Replica(to), Payload::Replica(message)),
                Action::Reply { client, reply } => {
                    let c = ((client & !CACHING_CLIENT_BIT) - 1_000) as usize;
                    self.send(Addr::Replica(id), Addr::Client(c), Payload::Reply(reply));
                }
                Action::Recall { client, recall, objects } => {
                    assert!(is_caching_client(client), "a recall for a client that caches nothing");
                    let c = ((client & !CACHING_CLIENT_BIT) - 1_000) as usize;
                    self.recalls_sent += 1;
                    self.send(Addr::Replica(id), Addr::Client(c), Payload::Recall { recall, objects });
                }
                Action::Persist { seq, write } => {
                    let latency = self.rng.gen_range(1..=3) * if self.nodes[id as usize].slow { 8 } else { 1 };
                    let node = &mut self.nodes[id as usize];
                    let start = node.pending.back().map(|p| p.2).unwrap_or(0).max(self.now_ms).max(node.disk_stalled_until_ms);
                    node.pending.push_back((seq, write, start + latency));
                    self.schedule(start + latency, Ev::DiskDone { replica: id, incarnation, seq });
                }
                Action::FetchCheckpoint { .. } => {
                    panic!("the simulated machines checkpoint by image: nothing to fetch")
                }
                Action::SetTimer { at_ms } => {
                    let node = &mut self.nodes[id as usize];
                    node.timer_ms = Some(at_ms);
                    let at = clock_virtual(node.clock_offset_ms, node.clock_ppm, at_ms);
                    self.schedule(at, Ev::Timer { replica: id, incarnation });
                }
            }
        }
        self.observe(id);
    }

    /// Prefix agreement, checked online: whatever any replica applied at an
    /// op must be what every other replica applied there.
    fn observe(&mut self, id: ReplicaId) {
        let node = &mut self.nodes[id as usize];
        let Some(replica) = node.replica.as_ref() else { return };
        let status = replica.status();
        if status.status == Status::Normal && status.leader == id && status.view > node.led_view {
            // A view change is where unsynced state matters most: now and
            // then the new leader crashes within a few ms of its install
            // (often before the install is durable) and comes back soon.
            node.led_view = status.view;
            let incarnation = node.incarnation;
            if self.faults != FaultProfile::None && !self.healed && self.rng.gen_bool(0.2) {
                // Its disk hangs meanwhile, so the install is still in flight
                // (while its messages go out) when it dies.
                let at = self.now_ms + self.rng.gen_range(0..=30);
                node.disk_stalled_until_ms = node.disk_stalled_until_ms.max(at + 1);
                self.schedule(at, Ev::CrashAt { replica: id, incarnation });
                let back = at + self.rng.gen_range(10..=80);
                self.schedule(back, Ev::Restart { replica: id });
            }
        }
        let node = &mut self.nodes[id as usize];
        let Some(replica) = node.replica.as_ref() else { return };
        if status.recovering {
            node.wiped = node.wiped || status.status == Status::Recovering;
        } else {
            node.wiped = false;
        }
        let from = node.applied_seen + 1;
        node.applied_seen = status.applied_op;
        let mut conflicts = Vec::new();
        for op in from..=status.applied_op {
            let Some(entry) = replica.entry(op) else { continue };
            let hash = fnv64(&bincode::serialize(entry).expect("encode entry"));
            match self.applied.get(&op) {
                None => {
                    self.applied.insert(op, (hash, id));
                }
                Some(&(h, first)) if h != hash => {
                    conflicts.push(format!("op {op}: replica {id} applied {entry:?}, replica {first} applied something else"))
                }
                Some(_) => {}
            }
        }
        for c in conflicts {
            self.violate(Checker::PrefixAgreement, c);
        }
    }

    fn timer(&mut self, id: ReplicaId, incarnation: u64) {
        let node = &self.nodes[id as usize];
        if node.replica.is_none() || node.incarnation != incarnation {
            return;
        }
        match node.timer_ms {
            Some(t) if t <= self.local_now(id) => self.step(id, Event::Tick),
            _ => {}
        }
    }

    fn disk_done(&mut self, id: ReplicaId, incarnation: u64, seq: u64) {
        let node = &mut self.nodes[id as usize];
        if node.incarnation != incarnation || node.replica.is_none() {
            return;
        }
        while let Some((s, _, _)) = node.pending.front() {
            if *s > seq {
                break;
            }
            let (_, write, _) = node.pending.pop_front().expect("front");
            node.durable.apply(&write);
        }
        self.step(id, Event::Persisted { seq });
    }

    // ------------------------------------------------------------- network

    fn send(&mut self, from: Addr, to: Addr, payload: Payload) {
        if self.is_blocked(from, to) || (self.loss > 0.0 && self.rng.gen_bool(self.loss)) {
            self.drops += 1;
            return;
        }
        let copies = if self.duplication > 0.0 && self.rng.gen_bool(self.duplication) { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = 1 + self.rng.gen_range(0..=self.delay_max_ms);
            if self.is_slow(from) || self.is_slow(to) {
                delay += self.rng.gen_range(0..=20);
            }
            self.schedule(self.now_ms + delay, Ev::Deliver { from, to, payload: payload.clone() });
        }
    }

    fn is_blocked(&self, from: Addr, to: Addr) -> bool {
        match (from, to) {
            (Addr::Replica(a), Addr::Replica(b)) => self.blocked[a as usize][b as usize],
            _ => false,
        }
    }

    fn is_slow(&self, addr: Addr) -> bool {
        matches!(addr, Addr::Replica(r) if self.nodes[r as usize].slow)
    }

    fn deliver(&mut self, from: Addr, to: Addr, payload: Payload) {
        if self.is_blocked(from, to) {
            return; // a partition formed while it was in flight
        }
        match (to, payload) {
            (Addr::Replica(r), Payload::Replica(message)) => {
                let Addr::Replica(f) = from else { return };
                if self.nodes[r as usize].replica.is_some() {
                    *self.messages.entry(message.kind()).or_default() += 1;
                }
                self.step(r, Event::Message { from: f, message });
            }
            (Addr::Replica(r), Payload::Request(request)) => self.step(r, Event::Request(request)),
            (Addr::Client(c), Payload::Reply(reply)) => self.client_reply(c, reply),
            (Addr::Client(c), Payload::Recall { recall, objects }) => {
                let Addr::Replica(r) = from else { return };
                let client = &mut self.clients[c];
                if let Some(cache) = &mut client.cache {
                    for o in &objects {
                        cache.remove(&(*o as u8));
                    }
                }
                client.recalls_seen += 1;
                let id = client.id;
                self.send(Addr::Client(c), Addr::Replica(r), Payload::RecallAck { client: id, recall });
            }
            (Addr::Replica(r), Payload::RecallAck { client, recall }) => self.step(r, Event::RecallAck { client, recall }),
            (Addr::Replica(r), Payload::CacheReset { client }) => self.step(r, Event::CacheReset { client }),
            _ => {}
        }
    }

    // -------------------------------------------------------------- clients

    fn client_wake(&mut self, c: usize, token: u64, wake: Wake) {
        let client = &mut self.clients[c];
        if token != client.token {
            return;
        }
        match wake {
            Wake::Timeout if client.current.is_some() => {
                client.target = (client.target + 1) % self.config.replica_count;
                self.client_send(c);
            }
            Wake::Resend if client.current.is_some() => self.client_send(c),
            Wake::Next if client.current.is_none() => self.client_next(c),
            _ => {}
        }
    }

    /// Starts the client's next operation (registering first).
    fn client_next(&mut self, c: usize) {
        let now = self.now_ms;
        let keys = self.keys;
        let client = &mut self.clients[c];
        let mut history = None;
        let (operation, record) = match client.session {
            None => (Operation::Register, None),
            Some(_) if client.rerun.is_some() => {
                let (operation, h) = client.rerun.take().expect("checked");
                history = h;
                (operation, None)
            }
            Some(_) if client.ops_left == 0 => return,
            Some(_) => {
                client.ops_left -= 1;
                let key = self.rng.gen_range(0..keys);
                // Some caching clients mostly read: they keep answering
                // from their cache across faults, which is where stale
                // copies would show.
                let write_share = if client.cache.is_some() && c % 4 == 1 { 0.1 } else { 0.6 };
                if self.rng.gen_bool(write_share) {
                    let value = (client.id << 32) | client.next_seq;
                    let op = Operation::Write(KvCommand::Append { key, value }.encode());
                    (op, Some(Record { key, kind: Kind::Append { value, len: None }, invoke_ms: now, complete_ms: None }))
                } else if let Some((list, _)) = client.cache.as_ref().and_then(|c| c.get(&key)).filter(|(_, until)| *until > now) {
                    // Answered from the cache, at once: the linearizability
                    // checker judges it like any other read.
                    let list = list.clone();
                    self.cached_reads += 1;
                    self.history.push(Record { key, kind: Kind::Read { list: Some(list) }, invoke_ms: now, complete_ms: Some(now) });
                    let token = client.token;
                    let think = self.rng.gen_range(0..5);
                    self.schedule(now + think, Ev::ClientWake { client: c, token, wake: Wake::Next });
                    if self.healed {
                        self.check_done();
                    }
                    return;
                } else {
                    let op = Operation::Read(KvCommand::Read { key }.encode());
                    (op, Some(Record { key, kind: Kind::Read { list: None }, invoke_ms: now, complete_ms: None }))
                }
            }
        };
        let client = &mut self.clients[c];
        let seq = client.next_seq;
        client.next_seq += 1;
        let request = Request {
            client: client.id,
            session: client.session.unwrap_or(0),
            seq,
            low_water: seq - 1,
            epoch: client.known_view,
            operation,
        };
        if let Some(r) = record {
            self.history.push(r);
            history = Some(self.history.len() - 1);
        }
        let recalls_seen = self.clients[c].recalls_seen;
        self.clients[c].current = Some(PendingOp { request, history, transmissions: 0, first_sent_ms: now, recalls_seen });
        self.client_send(c);
    }

    fn client_send(&mut self, c: usize) {
        let client = &mut self.clients[c];
        let Some(current) = client.current.as_mut() else { return };
        current.transmissions += 1;
        client.token += 1;
        let (target, token, request) = (client.target, client.token, current.request.clone());
        self.send(Addr::Client(c), Addr::Replica(target), Payload::Request(request));
        self.schedule(self.now_ms + CLIENT_RETRY_MS, Ev::ClientWake { client: c, token, wake: Wake::Timeout });
    }

    fn client_reply(&mut self, c: usize, reply: Reply) {
        let now = self.now_ms;
        let n = self.config.replica_count;
        let client = &mut self.clients[c];
        let Some(current) = client.current.as_ref() else { return };
        if (reply.session, reply.seq) != (current.request.session, current.request.seq) {
            return; // an answer to an earlier attempt or request
        }
        if reply.view > client.known_view {
            client.known_view = reply.view;
            // A new leader knows none of our callbacks: drop everything,
            // then tell it (it holds changes back until we do, or a lease).
            if let Some(cache) = &mut client.cache {
                cache.clear();
                client.recalls_seen += 1;
                let (id, leader) = (client.id, reply.leader);
                self.send(Addr::Client(c), Addr::Replica(leader), Payload::CacheReset { client: id });
            }
        }
        let client = &mut self.clients[c];
        let current = client.current.as_ref().expect("checked above");
        if let (Some(cache), Outcome::Done(bytes)) = (&mut client.cache, &reply.outcome) {
            for o in &reply.changed {
                cache.remove(&(*o as u8));
            }
            // A grant from an older view than the newest this client has
            // reset for is not trusted: that leader's successor counts on
            // the reset.
            let unchanged = current.recalls_seen == client.recalls_seen && reply.view >= client.known_view;
            if let (Operation::Read(query), true, true) = (&current.request.operation, reply.lease_ms > 0, unchanged) {
                if let Ok(KvCommand::Read { key }) = bincode::deserialize::<KvCommand>(query) {
                    let list: Vec<u64> = bincode::deserialize(bytes).expect("list");
                    cache.insert(key, (list, current.first_sent_ms + reply.lease_ms * 9 / 10));
                }
            }
        }
        let history = current.history;
        let sent_once = current.transmissions == 1 || self.config.bugs().trust_session_unknown;
        // The session was last active no earlier than this (a cached reply
        // may answer a request that ran long before the answer came).
        let active_since_ms = current.first_sent_ms;
        let retry_after = match reply.outcome {
            Outcome::Registered(session) => {
                client.session = Some(session);
                client.session_seen_ms = active_since_ms;
                client.current = None;
                None
            }
            Outcome::Done(bytes) => {
                // Leased reads are answered without touching the session:
                // only a write that ran shows the session alive.
                if matches!(current.request.operation, Operation::Write(_)) {
                    client.session_seen_ms = active_since_ms;
                }
                client.current = None;
                if let Some(h) = history {
                    let record = &mut self.history[h];
                    record.complete_ms = Some(now);
                    match &mut record.kind {
                        Kind::Append { len, .. } => *len = Some(bincode::deserialize(&bytes).expect("length")),
                        Kind::Read { list } => *list = Some(bincode::deserialize(&bytes).expect("list")),
                    }
                }
                None
            }
            Outcome::NotLeader => {
                client.target = if reply.view >= client.known_view { reply.leader } else { (client.target + 1) % n };
                Some(2)
            }
            Outcome::Busy => {
                // A new leader waiting for our reset answers Busy: the reset
                // (or an earlier one) may have been lost, send it again.
                if client.cache.is_some() && reply.view == client.known_view {
                    let (id, leader) = (client.id, reply.leader);
                    self.send(Addr::Client(c), Addr::Replica(leader), Payload::CacheReset { client: id });
                }
                Some(10)
            }
            Outcome::SessionUnknown => {
                // Sessions end only after `session_evict_idle_ms` or
                // `session_timeout_ms` of inactivity in log time; half of
                // the shorter one in real time leaves room for drift and
                // message delays, not for a clock that jumped.
                let idle_ms = now - client.session_seen_ms;
                let floor_ms = self.config.session_evict_idle_ms.min(self.config.session_timeout_ms) / 2;
                if idle_ms < floor_ms {
                    let id = client.id;
                    self.violations.push(Violation {
                        checker: Checker::SessionExpiry,
                        detail: format!("client {id}: session ended after {idle_ms} ms idle (real time), less than {floor_ms}"),
                    });
                }
                let client = &mut self.clients[c];
                let current = client.current.as_ref().expect("checked above");
                // The answer to its only transmission: nothing ran. After
                // retransmissions an earlier copy may have run before the
                // session expired: unknown fate, it stays pending. Either
                // way the client registers again for its next operation.
                if sent_once {
                    client.rerun = Some((current.request.operation.clone(), history));
                }
                client.session = None;
                client.current = None;
                None
            }
            Outcome::TooOld => {
                // Unknown fate: it stays pending in the history.
                client.current = None;
                None
            }
        };
        let client = &mut self.clients[c];
        client.token += 1;
        let token = client.token;
        match retry_after {
            Some(delay) => self.schedule(now + delay, Ev::ClientWake { client: c, token, wake: Wake::Resend }),
            None => {
                let think = self.rng.gen_range(0..5);
                self.schedule(now + think, Ev::ClientWake { client: c, token, wake: Wake::Next });
            }
        }
        if self.healed {
            self.check_done();
        }
    }

    // --------------------------------------------------------------- faults

    fn fault(&mut self) {
        if self.healed || self.now_ms >= self.fault_until_ms {
            return;
        }
        let n = self.config.replica_count as usize;
        let f = n / 2;
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=24 => self.partition(),
            25..=39 => self.blocked.iter_mut().for_each(|row| row.iter_mut().for_each(|b| *b = false)),
            40..=64 => {
                let up: Vec<usize> = (0..n).filter(|&i| self.nodes[i].replica.is_some()).collect();
                if !up.is_empty() {
                    // Half the time the victim is one with writes in flight:
                    // the crash points where unsynced state can be lost.
                    let writing: Vec<usize> = up.iter().copied().filter(|&i| !self.nodes[i].pending.is_empty()).collect();
                    let victim = if !writing.is_empty() && self.rng.gen_bool(0.5) {
                        writing[self.rng.gen_range(0..writing.len())]
                    } else {
                        up[self.rng.gen_range(0..up.len())]
                    };
                    let unhealthy = self.nodes.iter().filter(|n| n.wiped).count();
                    let kind = match self.rng.gen_range(0..10) {
                        0..=3 => Crash::Intact,
                        4..=7 => Crash::LoseUnsynced,
                        8 if unhealthy < f && !self.nodes[victim].wiped => Crash::Wipe,
                        9 if unhealthy < f && !self.nodes[victim].wiped => Crash::DamageCheckpoint,
                        _ => Crash::LoseUnsynced,
                    };
                    self.crash(victim, kind);
                }
            }
            65..=84 => {
                let down: Vec<usize> =
                    (0..n).filter(|&i| self.nodes[i].replica.is_none() && self.nodes[i].down_since_ms + 10 <= self.now_ms).collect();
                if !down.is_empty() {
                    let r = down[self.rng.gen_range(0..down.len())];
                    self.restart(r);
                }
            }
            85..=89 => {
                let r = self.rng.gen_range(0..n);
                self.nodes[r].slow = !self.nodes[r].slow;
            }
            90..=94 => {
                // The disk hangs for a while; the replica keeps running.
                let r = self.rng.gen_range(0..n);
                self.disk_stalls += 1;
                self.nodes[r].disk_stalled_until_ms = self.now_ms + self.rng.gen_range(20..=250);
            }
            _ => self.loss = self.rng.gen_range(0.0..0.1),
        }
        let gap = match self.faults {
            FaultProfile::Aggressive => self.rng.gen_range(20..80),
            _ => self.rng.gen_range(30..150),
        };
        self.schedule(self.now_ms + gap, Ev::Fault);
    }

    fn partition(&mut self) {
        self.partitions += 1;
        let n = self.config.replica_count as usize;
        for row in self.blocked.iter_mut() {
            row.iter_mut().for_each(|b| *b = false);
        }
        match self.rng.gen_range(0..3) {
            0 => {
                // Isolate one replica both ways.
                let r = self.rng.gen_range(0..n);
                for i in 0..n {
                    self.blocked[r][i] = true;
                    self.blocked[i][r] = true;
                }
            }
            1 => {
                // One-way: a cannot reach b (b still reaches a).
                let a = self.rng.gen_range(0..n);
                let b = self.rng.gen_range(0..n);
                self.blocked[a][b] = a != b;
            }
            _ => {
                // Random split in two groups.
                let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                for i in 0..n {
                    for j in 0..n {
                        self.blocked[i][j] = side[i] != side[j];
                    }
                }
            }
        }
    }

    fn crash(&mut self, r: usize, kind: Crash) {
        self.crashes += 1;
        let keep = {
            let node = &self.nodes[r];
            match kind {
                Crash::Intact | Crash::DamageCheckpoint => node.pending.len(),
                Crash::LoseUnsynced => self.rng.gen_range(0..=node.pending.len()),
                Crash::Wipe => 0,
            }
        };
        let node = &mut self.nodes[r];
        node.replica = None;
        node.incarnation += 1;
        node.timer_ms = None;
        node.down_since_ms = self.now_ms;
        for (_, write, _) in node.pending.drain(..).take(keep) {
            node.durable.apply(&write);
        }
        if kind == Crash::Wipe {
            self.wipes += 1;
            node.durable = Durable::default();
            node.wiped = true;
        }
        if kind == Crash::DamageCheckpoint {
            if let Some(c) = node.durable.checkpoint.as_mut() {
                // Restore fails on restart: the replica recovers from the
                // group, counted as unhealthy until it has.
                self.damaged_checkpoints += 1;
                c.state.truncate(c.state.len() / 2);
                node.wiped = true;
            }
        }
    }

    fn restart(&mut self, r: usize) {
        let seed = self.rng.gen();
        let node = &mut self.nodes[r];
        let now = clock_local(node.clock_offset_ms, node.clock_ppm, self.now_ms);
        let replica = Replica::new(self.config.clone(), r as ReplicaId, node.durable.clone(), KvStore::new(), seed, now);
        node.applied_seen = replica.status().applied_op;
        node.replica = Some(replica);
        node.timer_ms = None;
        self.drain(r as ReplicaId);
    }

    fn heal(&mut self) {
        self.healed = true;
        self.loss = 0.0;
        self.duplication = 0.0;
        for row in self.blocked.iter_mut() {
            row.iter_mut().for_each(|b| *b = false);
        }
        for r in 0..self.nodes.len() {
            self.nodes[r].slow = false;
            self.nodes[r].disk_stalled_until_ms = 0;
            if self.nodes[r].replica.is_none() {
                self.restart(r);
            }
        }
        self.schedule(self.now_ms + 10, Ev::Check);
    }

    /// After the heal: finished when every client is done and every replica
    /// is normal in one view with the same applied state.
    fn check_done(&mut self) {
        if !self.healed || self.done {
            return;
        }
        let clients_done = self.clients.iter().all(|c| c.ops_left == 0 && c.current.is_none() && c.rerun.is_none() && c.session.is_some());
        if clients_done && self.converged() {
            self.done = true;
            return;
        }
        if !clients_done {
            return; // the next client reply checks again
        }
        self.schedule(self.now_ms + 10, Ev::Check);
    }

    fn converged(&self) -> bool {
        let mut reference = None;
        for node in &self.nodes {
            let Some(replica) = node.replica.as_ref() else { return false };
            let s = replica.status();
            if s.status != Status::Normal || s.recovering || s.applied_op != s.op {
                return false;
            }
            let key = (s.view, s.applied_op, replica.state().digest());
            match reference {
                None => reference = Some(key),
                Some(k) if k != key => return false,
                Some(_) => {}
            }
        }
        true
    }

    // -------------------------------------------------------------- checks

    fn finish(mut self) -> Report {
        self.check_final_state();
        self.check_linearizability();
        let view = self.nodes.iter().filter_map(|n| n.replica.as_ref()).map(|r| r.status().view).max().unwrap_or(0);
        let commit_op = self.nodes.iter().filter_map(|n| n.replica.as_ref()).map(|r| r.status().commit_op).max().unwrap_or(0);
        Report {
            violations: self.violations,
            replicas: self.config.replica_count,
            end_ms: self.now_ms,
            events: self.events,
            completed_ops: self.history.iter().filter(|r| r.complete_ms.is_some()).count(),
            view,
            crashes: self.crashes,
            wipes: self.wipes,
            damaged_checkpoints: self.damaged_checkpoints,
            partitions: self.partitions,
            drops: self.drops,
            disk_stalls: self.disk_stalls,
            commit_op,
            messages: self.messages,
            cached_reads: self.cached_reads,
            recalls_sent: self.recalls_sent,
        }
    }

    /// No acknowledged append lost, none executed twice, on every replica.
    fn check_final_state(&mut self) {
        let acked: Vec<(u8, u64)> = self
            .history
            .iter()
            .filter(|r| r.complete_ms.is_some())
            .filter_map(|r| match r.kind {
                Kind::Append { value, .. } => Some((r.key, value)),
                _ => None,
            })
            .collect();
        let mut found = Vec::new();
        for node in &self.nodes {
            let Some(replica) = node.replica.as_ref() else { continue };
            let s = replica.status();
            let lists = replica.state().machine().lists();
            for (key, list) in lists {
                let mut seen = std::collections::BTreeSet::new();
                for v in list {
                    if !seen.insert(*v) {
                        found.push((Checker::DoubleExecution, format!("replica {}: value {v:#x} twice under key {key}: {list:?}", s.id)));
                    }
                }
            }
            if s.status != Status::Normal || s.recovering {
                continue;
            }
            for (key, value) in &acked {
                let present = lists.get(key).is_some_and(|l| l.contains(value));
                if !present {
                    found.push((
                        Checker::AckedLost,
                        format!("replica {} (applied {}): acknowledged append {value:#x} to key {key} missing", s.id, s.applied_op),
                    ));
                }
            }
        }
        for (checker, detail) in found {
            self.violate(checker, detail);
        }
    }

    fn check_linearizability(&mut self) {
        let mut found = Vec::new();
        // The final lists, from the most advanced healthy replica, once the
        // group converged (otherwise unknown: the plain search decides).
        let finals = self
            .done
            .then(|| {
                self.nodes
                    .iter()
                    .filter_map(|n| n.replica.as_ref())
                    .max_by_key(|r| r.status().applied_op)
                    .map(|r| r.state().machine().lists().clone())
            })
            .flatten();
        for key in 0..self.keys {
            let ops: Vec<HistoryOp> = self
                .history
                .iter()
                .filter(|r| r.key == key)
                .map(|r| HistoryOp { invoke_ms: r.invoke_ms, complete_ms: r.complete_ms, kind: r.kind.clone() })
                .collect();
            let final_list = finals.as_ref().map(|f| f.get(&key).map(|l| l.as_slice()).unwrap_or(&[]));
            if let Err(e) = linearizability::check_with_final(&ops, final_list) {
                found.push(format!("key {key}: {e}"));
            }
        }
        for detail in found {
            self.violate(Checker::Linearizability, detail);
        }
    }
}

#[cfg(test)]
mod manual;
#[cfg(test)]
mod restart;
#[cfg(test)]
mod tests;
