//! The interface the file system (or any replicated service) implements.
//!
//! Guarantees (given by the core to the implementation):
//! - `apply` is called only for committed commands, in log order, exactly
//!   once per command on a given incarnation of the state (a restore resets
//!   the incarnation to the checkpoint's index).
//! - `apply` never sees a duplicate of a client request: the session layer
//!   ([`crate::access`]) answers retries from its reply cache.
//!
//! Assumes (required from the implementation):
//! - `apply` is deterministic: the same commands from the same state give
//!   the same replies and the same state on every replica. Time comes only
//!   from [`ApplyContext::timestamp_ms`], which the leader stamped into the log.
//! - `checkpoint` then `restore` gives back a state with the same `digest`.
//! - `query` does not change the state.

use serde::{Deserialize, Serialize};

use crate::{Millis, Op};

/// Where in the log a command sits, the leader-stamped time, and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyContext {
    /// The log entry (batch) holding the command.
    pub op: Op,
    /// Leader-stamped time of that entry: the only clock a state machine may use.
    pub timestamp_ms: Millis,
    /// The client whose session sent the command (for [`StateMachine::client_gone`]:
    /// what it owns, such as open handles and locks). Trustworthy: a session's
    /// client is fixed by its committed registration.
    pub client: crate::message::ClientId,
}

/// A checkpoint that the state machine could not restore.
#[derive(Debug, thiserror::Error)]
#[error("cannot restore checkpoint: {0}")]
pub struct CheckpointError(pub String);

/// A deterministic replicated state machine.
pub trait StateMachine {
    /// Applies one committed command and returns its reply.
    fn apply(&mut self, context: ApplyContext, command: &[u8]) -> Vec<u8>;

    /// Answers a read-only query from the current state.
    fn query(&self, query: &[u8]) -> Vec<u8>;

    /// The op of the entry holding the last command applied or restored (0
    /// for the initial state). Entries without a command for the state
    /// machine (session registrations, reads) need not move it.
    fn applied_index(&self) -> Op;

    /// A self-contained image of the state at `applied_index()`.
    fn checkpoint(&self) -> Vec<u8>;

    /// Replaces the state by a checkpoint taken at `index`.
    fn restore(&mut self, index: Op, checkpoint: &[u8]) -> Result<(), CheckpointError>;

    /// A digest of the state; equal states give equal digests.
    fn digest(&self) -> u64;

    /// The objects a read-only `query` that gave `answer` returned (what a
    /// client may cache under a callback; see DESIGN.md §5). Only the
    /// leader asks. The default: none (nothing is cached).
    fn read_set(&self, query: &[u8], answer: &[u8]) -> Vec<crate::message::ObjectId> {
        let _ = (query, answer);
        Vec::new()
    }

    /// The last session of `client` ended (it expired or was evicted, in
    /// log order, so on every replica at the same point): release what the
    /// client owned (open handles, locks). `context.client` is `client`.
    /// The default: nothing is owned.
    fn client_gone(&mut self, context: ApplyContext) {
        let _ = context;
    }

    /// The objects the last `apply` changed (every one whose cached copy it
    /// makes stale), taken once right after it. The default: none.
    fn take_changed(&mut self) -> Vec<crate::message::ObjectId> {
        Vec::new()
    }

    /// A job computing `digest()` off the replica's event loop, for a
    /// machine whose digest reads its whole state (seconds for gigabytes: the
    /// loop must keep heartbeating meanwhile). It may see a later state than
    /// the one at the call; callers compare digests of a quiet cluster.
    /// None (the default): `digest()` is cheap, call it directly.
    fn digest_job(&self) -> Option<Box<dyn FnOnce() -> u64 + Send + 'static>> {
        None
    }

    /// Whether `restore(_, checkpoint)` can run with what this replica holds.
    /// A machine whose checkpoints are images always can (the default). A
    /// machine whose checkpoints are references to files (a store's
    /// checkpoint directory) says no until the shell has fetched the files
    /// from the replica that made it ([`crate::Action::FetchCheckpoint`]):
    /// the core stays free of I/O, and large states never travel inside
    /// protocol messages.
    fn has_checkpoint(&self, checkpoint: &[u8]) -> bool {
        let _ = checkpoint;
        true
    }

    /// The reply to `command` while the leader's disk is below its reserve,
    /// if running it would make the state grow; `None`: it may run (it frees
    /// or keeps space, so a full cluster can still be cleaned up). Asked at
    /// the leader before a command is ordered, never in `apply` (the answer
    /// depends on one host's disk, not on the log).
    fn refusal_when_disk_low(&self, command: &[u8]) -> Option<Vec<u8>> {
        let _ = command;
        None
    }
}
