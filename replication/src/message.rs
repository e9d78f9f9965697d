//! The vocabulary of the core: client requests and replies, log entries,
//! replica-to-replica messages, and the events in / actions out of
//! [`crate::Replica::step`].
//!
//! Which protocol sends which message:
//!
//! | message            | from → to                  | protocol (module)            |
//! |--------------------|----------------------------|------------------------------|
//! | `Prepare`          | leader → members           | total order ([`crate::order`]) |
//! | `PrepareOk`        | member → leader            | stability ([`crate::stability`]) |
//! | `Commit`           | leader → all of U          | heartbeat + commit point ([`crate::detector`]) |
//! | `RequestPrepares`  | follower → leader          | log repair ([`crate::order`]) |
//! | `StartViewChange`  | any → all of U             | view change ([`crate::membership`]) |
//! | `DoViewChange`     | any → new leader           | view change ([`crate::membership`]) |
//! | `StartView`        | new leader → members       | view change ([`crate::membership`]) |
//! | `Join`             | non-member/straggler → leader | membership ([`crate::membership`]) |
//! | `GetState`         | lagging replica → leader   | state transfer ([`crate::recovery`]) |
//! | `NewState`         | leader → lagging replica   | state transfer ([`crate::recovery`]) |
//! | `Recovery`         | disk-less replica → all    | recovery ([`crate::recovery`]) |
//! | `RecoveryResponse` | normal replica → recovering| recovery ([`crate::recovery`]) |
//!
//! Every message is bounded: Prepare carries at most
//! `entries_per_message_max` entries; DoViewChange and StartView carry the
//! log above a commit point (the sender's, the receiving member's, or the new
//! leader's when it asks: normally the pipeline plus the commit lag); log
//! suffixes never exceed the retained log (at most about two checkpoint
//! intervals plus the pipeline); checkpoints are the state machine's own size.

use serde::{Deserialize, Serialize};

use crate::log::{Checkpoint, Write};
use crate::membership::Members;
use crate::{Millis, Op, ReplicaId, ViewNumber};

/// Network identity of a client (where replies go); chosen by the client.
/// A mount uses one id for all its sessions (its mount id, which outlives
/// them); ids with [`CACHING_CLIENT_BIT`] set are mounts that cache under
/// callbacks.
pub type ClientId = u64;

/// Set in the [`ClientId`] of a client that caches under callbacks: only
/// such clients are granted callbacks, and a new leader waits for exactly
/// these (the ones in its session table) to reset their caches, or for the
/// longest lease to pass, before it lets a change be seen. Kept in the id
/// rather than in `Register` so the replicated session table already
/// records it.
pub const CACHING_CLIENT_BIT: ClientId = 1 << 63;

/// Whether `client` caches under callbacks (see [`CACHING_CLIENT_BIT`]).
pub fn is_caching_client(client: ClientId) -> bool {
    client & CACHING_CLIENT_BIT != 0
}

/// A cached object (for the file system: an inode number; a directory's
/// entries, negative ones included, belong to the directory's object).
pub type ObjectId = u64;
/// One recall of callbacks, numbered by the leader that sent it.
pub type RecallId = u64;
/// A session in the replicated session table; assigned by a committed
/// [`Operation::Register`] and never reused.
pub type SessionId = u64;

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Open a session; the reply is [`Outcome::Registered`].
    Register,
    /// A command that may change the state: executed at most once per
    /// (session, seq), in log order.
    Write(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A read-only query: served under the leader lease, else ordered
    /// through the log like a write (the read barrier).
    Read(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A client request. `(session, seq)` names it across retries and failover.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    /// Where the reply goes.
    pub client: ClientId,
    /// The session (0 for `Register`).
    pub session: SessionId,
    /// Per-session sequence number, increasing; for `Register` a client nonce.
    pub seq: u64,
    /// The client has seen the replies of all its requests with seq at or
    /// below this mark, so the session may forget them.
    pub low_water: u64,
    /// The view the client believes current (its epoch).
    pub epoch: ViewNumber,
    /// What to do.
    pub operation: Operation,
}

impl Request {
    /// Bytes of the command or query it carries (what batch and message
    /// bounds count), plus a fixed allowance for the header.
    pub fn payload_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 48;
        HEADER_BYTES
            + match &self.operation {
                Operation::Register => 0,
                Operation::Write(bytes) | Operation::Read(bytes) => bytes.len(),
            }
    }
}

impl Entry {
    /// Payload bytes of all its requests (see [`Request::payload_bytes`]).
    pub fn payload_bytes(&self) -> usize {
        self.requests.iter().map(Request::payload_bytes).sum()
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The state machine's reply (from the cache if this was a retry).
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A new session was opened.
    Registered(SessionId),
    /// This replica is not the leader of a normal view; `Reply::view` and
    /// `Reply::leader` say whom to try.
    NotLeader,
    /// The session is not in the table (expired or evicted): register again.
    /// The request was not executed.
    SessionUnknown,
    /// The request is older than the session's cache (the client already
    /// acknowledged it, or too many newer requests followed); it is refused,
    /// never re-executed.
    TooOld,
    /// The leader's queue is full; retry later. The request was not queued.
    Busy,
}

/// A reply to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Session of the request (0 for `Register`).
    pub session: SessionId,
    /// Sequence number of the request.
    pub seq: u64,
    /// The replier's view: the client's new epoch.
    pub view: ViewNumber,
    /// The leader of that view, for redirection.
    pub leader: ReplicaId,
    /// The answer.
    pub outcome: Outcome,
    /// A read answered under a callback: the leader promises to recall the
    /// objects this read returned before any of them changes, for this long
    /// (counted by the client from when it sent the request). 0: no
    /// callback, do not cache.
    pub lease_ms: Millis,
    /// A write: the objects it changed. The writer's own mount gets no
    /// recall for its own change; it drops these from its cache itself.
    pub changed: Vec<ObjectId>,
}

/// One log entry: a batch of client requests at position `op`, sequenced by
/// the leader of `view` at leader time `timestamp_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log.
    pub op: Op,
    /// View in which the leader first sequenced this entry. Two logs holding
    /// an entry with the same (op, view) are identical up to it.
    pub view: ViewNumber,
    /// Leader-stamped time, non-decreasing along the log: the only clock the
    /// state machine ever sees (session expiry, file times).
    pub timestamp_ms: Millis,
    /// The batch.
    pub requests: Vec<Request>,
}

/// A contiguous run of entries `(base, base + entries.len()]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSuffix {
    /// Everything at or below `base` is committed (covered by a checkpoint
    /// or by the receiver's own committed prefix).
    pub base: Op,
    /// Entries `base + 1 ..`.
    pub entries: Vec<Entry>,
}

impl LogSuffix {
    /// The op of the last entry (or `base` when empty).
    pub fn op(&self) -> Op {
        self.base + self.entries.len() as Op
    }
}

/// Everything a replica needs to take over the leader's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTransfer {
    /// Members of the view.
    pub members: Members,
    /// The sender's commit point.
    pub commit: Op,
    /// Present when the receiver cannot splice `log` onto its own committed
    /// prefix: then `log.base == checkpoint.op` and the receiver replaces its
    /// state machine by the checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// The sender's log above `log.base`.
    pub log: LogSuffix,
}

/// Replica-to-replica messages. Every message carries the sender's view;
/// messages of an older view than the receiver's are dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// New entries (or a repair run) from the leader, with its commit point.
    Prepare {
        /// Leader's view.
        view: ViewNumber,
        /// Leader's commit point.
        commit: Op,
        /// Leader clock at sending; echoed back for the lease.
        sent_at_ms: Millis,
        /// Contiguous entries.
        entries: Vec<Entry>,
    },
    /// "My log in `view` is durable up to `op`."
    PrepareOk {
        /// View.
        view: ViewNumber,
        /// Highest op durable in this view (never more than that).
        op: Op,
        /// Latest `sent_at_ms` received from the leader.
        echo_ms: Millis,
    },
    /// Heartbeat and commit point, to every replica of U.
    Commit {
        /// Leader's view.
        view: ViewNumber,
        /// Leader's commit point.
        commit: Op,
        /// Leader's last op.
        op: Op,
        /// Members of the view (a replica left out learns it must Join).
        members: Members,
        /// Leader clock at sending.
        sent_at_ms: Millis,
    },
    /// "Resend me entries from `from`" (gap in the log). From the leader of
    /// a view still being formed to a voter: "my commit point is `from - 1`;
    /// vote again with your log above it".
    RequestPrepares {
        /// View.
        view: ViewNumber,
        /// First missing op.
        from: Op,
    },
    /// "I am moving to `view`."
    StartViewChange {
        /// The new view.
        view: ViewNumber,
    },
    /// My vote and my log, to the new leader.
    DoViewChange {
        /// The new view.
        view: ViewNumber,
        /// The last view in which the sender was normal.
        last_normal_view: ViewNumber,
        /// The sender's commit point.
        commit: Op,
        /// The sender's log above its commit point, or above the new
        /// leader's commit point if that is lower and the leader asked for it
        /// with RequestPrepares of this view (never below the sender's base).
        log: LogSuffix,
    },
    /// The new view is installed: adopt this log.
    StartView {
        /// The new view.
        view: ViewNumber,
        /// Its members.
        members: Members,
        /// The leader's commit point.
        commit: Op,
        /// The leader's log above the commit point the receiver reported in
        /// its DoViewChange (never below the leader's base).
        log: LogSuffix,
    },
    /// A caught-up non-member asks to be included in the next view; or a
    /// replica stuck in a view nobody formed asks the leader of a lower view
    /// to move the group above it.
    Join {
        /// The view it caught up in (or is stuck in).
        view: ViewNumber,
    },
    /// "I am behind in `view`; my commit point is `commit`."
    GetState {
        /// View.
        view: ViewNumber,
        /// Requester's commit point.
        commit: Op,
    },
    /// The answer to GetState.
    NewState {
        /// View.
        view: ViewNumber,
        /// The state.
        state: StateTransfer,
    },
    /// A replica that lost its disk asks for the group's state.
    Recovery {
        /// Fresh random number naming this attempt.
        nonce: u64,
    },
    /// Answer to Recovery; only the leader includes its state.
    RecoveryResponse {
        /// Responder's view.
        view: ViewNumber,
        /// The request's nonce.
        nonce: u64,
        /// The leader's state, `None` from followers.
        state: Option<StateTransfer>,
    },
}

impl Message {
    /// Short name, for traces and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::PrepareOk { .. } => "prepare_ok",
            Message::Commit { .. } => "commit",
            Message::RequestPrepares { .. } => "request_prepares",
            Message::StartViewChange { .. } => "start_view_change",
            Message::DoViewChange { .. } => "do_view_change",
            Message::StartView { .. } => "start_view",
            Message::Join { .. } => "join",
            Message::GetState { .. } => "get_state",
            Message::NewState { .. } => "new_state",
            Message::Recovery { .. } => "recovery",
            Message::RecoveryResponse { .. } => "recovery_response",
        }
    }
}

/// Inputs to [`crate::Replica::step`].
#[derive(Clone, Debug)]
pub enum Event {
    /// The timer set by the last [`Action::SetTimer`] fired (or any wake-up:
    /// ticks are idempotent).
    Tick,
    /// A message from another replica.
    Message {
        /// Sender.
        from: ReplicaId,
        /// The message.
        message: Message,
    },
    /// A client request.
    Request(Request),
    /// The write with this sequence number and every earlier one are durable.
    Persisted {
        /// Sequence number from [`Action::Persist`].
        seq: u64,
    },
    /// `client` dropped the objects of recall `recall` from its cache.
    RecallAck {
        /// The mount.
        client: ClientId,
        /// From [`Action::Recall`].
        recall: RecallId,
    },
    /// `client` (a caching mount) dropped everything it cached under
    /// earlier leaders and trusts nothing granted before this view.
    CacheReset {
        /// The mount.
        client: ClientId,
    },
    /// `client` holds nothing at all any more (it was unmounted): its
    /// callbacks go, no change waits for it.
    Release {
        /// The mount.
        client: ClientId,
    },
}

/// Outputs of the core, drained with [`crate::Replica::poll_actions`].
#[derive(Clone, Debug)]
pub enum Action {
    /// Send a message to a replica (best effort; loss is tolerated).
    Send {
        /// Receiver.
        to: ReplicaId,
        /// The message.
        message: Message,
    },
    /// Make `write` durable, after every earlier write, then report
    /// [`Event::Persisted`] with `seq`. Writes are atomic.
    Persist {
        /// Increasing sequence number.
        seq: u64,
        /// What to write.
        write: Write,
    },
    /// Deliver a reply to a client. Only ever for committed entries (or a
    /// lease read of committed state): uniform output.
    Reply {
        /// Receiver.
        client: ClientId,
        /// The reply.
        reply: Reply,
    },
    /// Tell `client` to drop `objects` from its cache, then answer with
    /// [`Event::RecallAck`]. Best effort: an unanswered recall ends when the
    /// client's callbacks expire.
    Recall {
        /// The mount.
        client: ClientId,
        /// Names this recall in the acknowledgement.
        recall: RecallId,
        /// What to drop.
        objects: Vec<ObjectId>,
    },
    /// Call `step(now, Event::Tick)` at (or after) this time.
    SetTimer {
        /// When.
        at_ms: Millis,
    },
    /// The state machine cannot restore `checkpoint` (a reference to files it
    /// does not hold, see [`crate::StateMachine::has_checkpoint`]): fetch
    /// what it refers to from `from`, then the core's next state request
    /// installs it. Idempotent; the core repeats it while it still needs it.
    FetchCheckpoint {
        /// The replica whose checkpoint it is.
        from: ReplicaId,
        /// The state machine's part of the checkpoint.
        checkpoint: Vec<u8>,
    },
}
