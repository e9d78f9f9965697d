//! ChorusFS group stack: a sans-IO replication core in the style of
//! Viewstamped Replication (revisited), generic over any deterministic
//! [`StateMachine`].
//!
//! The core ([`Replica`]) takes `(now, event)` through [`Replica::step`] and
//! hands back [`Action`]s through [`Replica::poll_actions`]: messages to send,
//! writes to persist, replies to deliver to clients and the next timer. It
//! owns no socket, no clock, no disk and no global randomness; the shell (a
//! later tokio/quinn crate module) and the simulator (`sim`, compiled for
//! tests or with the `sim` feature) execute the actions.
//!
//! One module per protocol, each opening with what it guarantees, what it
//! assumes and the messages it sends and receives:
//!
//! | module         | protocol                                                   |
//! |----------------|------------------------------------------------------------|
//! | [`detector`]   | heartbeat failure detector with adaptive timeouts          |
//! | [`membership`] | views, leader choice, view change (the flush)              |
//! | [`order`]      | sequencing client requests into batches, pipelining        |
//! | [`stability`]  | who has persisted what; the commit point                   |
//! | [`log`]        | the in-memory log, the superblock, durable writes          |
//! | [`recovery`]   | state transfer and recovery of a replica that lost its disk|
//! | [`access`]     | client sessions, the replicated reply cache, epochs        |
//! | [`lease`]      | the leader lease for linearizable local reads              |
//! | [`callbacks`]  | leases on what caching clients hold; recalls before change |
//! | [`replica`]    | ties the protocols together                                |
//!
//! The exact rules are in `docs/protocol.md`.

#![warn(missing_docs)]

pub mod access;
pub mod callbacks;
pub mod detector;
pub mod lease;
pub mod log;
pub mod membership;
pub mod message;
pub mod order;
pub mod recovery;
pub mod replica;
pub mod stability;
pub mod state_machine;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use access::{machine_part, Sessions};
pub use log::{Checkpoint, Durable, Superblock, Write};
pub use membership::Members;
pub use message::{
    is_caching_client, Action, ClientId, Entry, Event, Message, ObjectId, Operation, Outcome, RecallId, Reply, Request, SessionId,
    CACHING_CLIENT_BIT,
};
pub use replica::{Replica, Status, StatusReport};
pub use state_machine::{ApplyContext, CheckpointError, StateMachine};

/// Identifies a replica inside the universe U: `0..replica_count`.
pub type ReplicaId = u8;
/// A log position ("op number"); op 0 is the empty prefix.
pub type Op = u64;
/// A view number; durable and monotonic on every replica.
pub type ViewNumber = u64;
/// Milliseconds on the shell's monotonic clock (virtual in the simulator).
pub type Millis = u64;

/// Deliberately injected bugs, so tests can show that each checker of the
/// simulator catches the bug it is meant to catch. All off by default; outside
/// tests and the `sim` feature the core never reads this field (see
/// [`Config::bugs`]), so production code cannot turn a bug on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// The leader commits an entry as soon as any one replica has it durably.
    pub commit_on_one_ack: bool,
    /// The new leader installs its own log instead of the most advanced log
    /// of the majority that took part in the view change.
    pub skip_view_change_flush: bool,
    /// Replicas acknowledge (and the leader counts itself for) entries before
    /// they are durable, so an "acked" entry can vanish in a crash.
    pub ack_before_durable: bool,
    /// The session layer ignores its reply cache: a retried request runs again.
    pub forget_reply_cache: bool,
    /// The leader answers reads from local state without holding a lease.
    pub read_without_lease: bool,
    /// Followers never suspect the leader, so a dead leader is never replaced.
    pub ignore_suspicion: bool,
    /// A new leader sends Commit, Prepare and state answers before its view
    /// install is durable (issue 12, finding 1): a crash can then make it
    /// form the same view twice with different entries.
    pub reveal_view_before_durable: bool,
    /// The simulated client takes `SessionUnknown` as "nothing ran" even
    /// after retransmissions (issue 12, finding 3): a request that ran before
    /// its session expired runs again in a new session.
    pub trust_session_unknown: bool,
    /// The leader lets a change be seen without waiting for the recall of
    /// other mounts' callbacks on it (callbacks: a cached copy goes stale).
    pub skip_recall_wait: bool,
    /// A new leader lets changes be seen at once, without waiting for old
    /// callbacks to be reset or to expire.
    pub skip_callback_grace: bool,
}

impl Bugs {
    /// No bug at all.
    pub const NONE: Bugs = Bugs {
        commit_on_one_ack: false,
        skip_view_change_flush: false,
        ack_before_durable: false,
        forget_reply_cache: false,
        read_without_lease: false,
        ignore_suspicion: false,
        reveal_view_before_durable: false,
        trust_session_unknown: false,
        skip_recall_wait: false,
        skip_callback_grace: false,
    };

    /// Whether any bug is switched on (internal assertions then stand aside
    /// so that the simulator's checkers, not a panic, report the damage).
    pub fn any(&self) -> bool {
        *self != Bugs::NONE
    }
}

/// Default [`Config::pending_bytes_max`]: 64 MiB, about fifty full batches
/// (`batch_bytes_max` 1.25 MiB) waiting behind a full pipeline: room for
/// group commit under load, while a flood of 16 MiB requests cannot make
/// the leader hold more than this (the count bound alone allowed 4096 × 16 MiB).
pub const PENDING_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;

/// Static configuration of one replica; identical on every replica of U.
#[derive(Clone, Debug)]
pub struct Config {
    /// |U|: the number of replicas in the universe (odd, 1..=63).
    pub replica_count: u8,
    /// How often the leader sends a heartbeat when it has nothing to prepare.
    pub heartbeat_interval_ms: Millis,
    /// Lower clamp of the adaptive suspicion timeout.
    pub suspicion_timeout_min_ms: Millis,
    /// Upper clamp of the adaptive suspicion timeout.
    pub suspicion_timeout_max_ms: Millis,
    /// Random extra added to each suspicion timeout so replicas do not all
    /// start a view change at the same instant.
    pub suspicion_jitter_ms: Millis,
    /// How long a view change may take before moving on to the next view.
    pub view_change_timeout_ms: Millis,
    /// Once a majority has sent DoViewChange, how long the new leader waits
    /// for the rest before installing the view without them.
    pub view_change_gather_ms: Millis,
    /// Retry interval of repair, state-transfer, join and recovery requests.
    pub retry_interval_ms: Millis,
    /// Length of the leader lease (and of the followers' promise not to vote
    /// for another leader after hearing from this one).
    pub lease_ms: Millis,
    /// Safety margin taken off the lease for clock-rate drift between replicas.
    pub lease_drift_margin_ms: Millis,
    /// Client requests per log entry (batch).
    pub batch_requests_max: usize,
    /// Payload bytes per log entry (a batch takes at least one request):
    /// with the pipeline depth this bounds the uncommitted log that view
    /// changes carry.
    pub batch_bytes_max: usize,
    /// Entries the leader may have prepared but not committed (pipeline).
    pub pipeline_depth_max: u64,
    /// Client requests queued at the leader waiting for a batch slot.
    pub pending_requests_max: usize,
    /// Payload bytes of the requests queued at the leader (see
    /// [`PENDING_BYTES_MAX_DEFAULT`]); beyond it a request is answered
    /// `Busy`, except that an empty queue takes any one request.
    pub pending_bytes_max: usize,
    /// Entries carried by one Prepare sent for repair.
    pub entries_per_message_max: usize,
    /// Payload bytes carried by one Prepare sent for repair (at least one entry).
    pub repair_bytes_max: usize,
    /// A checkpoint is taken every this many applied entries...
    pub checkpoint_interval_ops: u64,
    /// ...or once this many command bytes were applied since the last one,
    /// whichever comes first. Bounds the log above a checkpoint, hence
    /// state-transfer messages and the disk log.
    pub checkpoint_interval_bytes: u64,
    /// Client sessions kept in the replicated session table.
    pub sessions_max: usize,
    /// Cached replies kept per session (requests a client may have in flight).
    pub session_replies_max: usize,
    /// A session idle this long (leader-stamped time) expires.
    pub session_timeout_ms: Millis,
    /// When the table is full, a new session may evict only a session idle
    /// at least this long; otherwise the registration is refused (`Busy`).
    /// Must exceed the longest time a client keeps retrying one request, so
    /// a session whose last request ran but whose reply was lost is never
    /// evicted under a client that is still retrying it.
    pub session_evict_idle_ms: Millis,
    /// How long a callback granted with a read lasts (0: no callbacks, no
    /// client caching). Also how long a new leader waits, at most, for
    /// caching mounts to reset before it lets a change be seen. Must be
    /// below `session_evict_idle_ms`.
    pub callback_lease_ms: Millis,
    /// Callbacks the leader holds at most (object × mount); beyond, reads
    /// are answered without one.
    pub callbacks_max: usize,
    /// Reads waiting for a recall to end, at most; beyond, `Busy`.
    pub parked_reads_max: usize,
    /// Injected bugs; only honoured in tests and with the `sim` feature.
    pub bugs: Bugs,
}

impl Config {
    /// Defaults suited to a LAN cluster of `replica_count` replicas.
    pub fn new(replica_count: u8) -> Config {
        Config {
            replica_count,
            heartbeat_interval_ms: 50,
            suspicion_timeout_min_ms: 200,
            suspicion_timeout_max_ms: 2_000,
            suspicion_jitter_ms: 100,
            view_change_timeout_ms: 500,
            view_change_gather_ms: 50,
            retry_interval_ms: 100,
            lease_ms: 300,
            lease_drift_margin_ms: 30,
            batch_requests_max: 64,
            batch_bytes_max: 1_280 * 1024,
            pipeline_depth_max: 8,
            pending_requests_max: 4_096,
            pending_bytes_max: PENDING_BYTES_MAX_DEFAULT,
            entries_per_message_max: 64,
            repair_bytes_max: 16 * 1024 * 1024,
            checkpoint_interval_ops: 4_096,
            checkpoint_interval_bytes: 16 * 1024 * 1024,
            sessions_max: 10_000,
            session_replies_max: 64,
            session_timeout_ms: 3_600_000,
            session_evict_idle_ms: 120_000,
            callback_lease_ms: 5_000,
            callbacks_max: 1_000_000,
            parked_reads_max: 4_096,
            bugs: Bugs::NONE,
        }
    }

    /// Size of a majority of U: the quorum for commit, view change and recovery.
    pub fn majority(&self) -> usize {
        self.replica_count as usize / 2 + 1
    }

    /// Checks the relations the protocols rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.replica_count;
        if n == 0 || n > 63 || n.is_multiple_of(2) {
            return Err(ConfigError("replica_count must be odd and in 1..=63".into()));
        }
        if self.lease_ms <= self.lease_drift_margin_ms {
            return Err(ConfigError("lease_ms must exceed lease_drift_margin_ms".into()));
        }
        if self.suspicion_timeout_min_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError("suspicion timeout must exceed the heartbeat interval".into()));
        }
        if self.suspicion_timeout_max_ms < self.suspicion_timeout_min_ms {
            return Err(ConfigError("suspicion_timeout_max_ms < suspicion_timeout_min_ms".into()));
        }
        if self.batch_requests_max == 0 || self.pipeline_depth_max == 0 {
            return Err(ConfigError("batch and pipeline bounds must be positive".into()));
        }
        if self.pending_requests_max == 0 || self.pending_bytes_max == 0 {
            return Err(ConfigError("pending request bounds must be positive".into()));
        }
        if self.entries_per_message_max == 0
            || self.checkpoint_interval_ops == 0
            || self.checkpoint_interval_bytes == 0
            || self.batch_bytes_max == 0
            || self.repair_bytes_max == 0
        {
            return Err(ConfigError("message and checkpoint bounds must be positive".into()));
        }
        if self.session_evict_idle_ms > self.session_timeout_ms {
            return Err(ConfigError("session_evict_idle_ms must not exceed session_timeout_ms".into()));
        }
        if self.callback_lease_ms >= self.session_evict_idle_ms {
            return Err(ConfigError("callback_lease_ms must be below session_evict_idle_ms".into()));
        }
        if self.sessions_max == 0 || self.session_replies_max == 0 {
            return Err(ConfigError("session bounds must be positive".into()));
        }
        Ok(())
    }

    /// The injected bugs in force: always none outside tests and the `sim`
    /// feature, so the buggy branches compile away in production.
    #[inline]
    pub fn bugs(&self) -> Bugs {
        #[cfg(any(test, feature = "sim"))]
        {
            self.bugs
        }
        #[cfg(not(any(test, feature = "sim")))]
        {
            Bugs::NONE
        }
    }
}

/// A configuration that breaks a relation the protocols rely on.
#[derive(Debug, thiserror::Error)]
#[error("invalid replication config: {0}")]
pub struct ConfigError(pub String);

/// 64-bit FNV-1a: a small, stable, dependency-free hash for digests.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
