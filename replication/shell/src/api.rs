//! What clients and operators send to a node over chorus-wire RPC.
//!
//! Guarantees: a [`NodeResponse::Reply`] is exactly the core's reply (so a
//! `Done` outcome is for a committed request: uniform output);
//! [`NodeResponse::NoReply`] means the node did not answer in time — the
//! request may or may not commit later, and the client retries it with the
//! same (session, seq), which the core's session layer makes exactly-once.

use chorus_replication::{ClientId, ObjectId, Op, RecallId, ReplicaId, Reply, Request, ViewNumber};
use serde::{Deserialize, Serialize};

/// A call to a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum NodeRequest {
    /// A client request for the replication core.
    Call(Request),
    /// The node's protocol status.
    Status,
    /// Several client requests in one RPC (from many sessions of one client
    /// process): amortizes the per-RPC cost, which dominates on a small
    /// machine. At most [`BATCH_REQUESTS_MAX`]; the answer is
    /// [`NodeResponse::Batch`] in the same order. A longer batch does not
    /// decode (the connection is closed as a protocol violation): decoding
    /// is where its memory would be spent, about 10 bytes of `Request` per
    /// byte of the smallest encoded request.
    Batch(#[serde(deserialize_with = "bounded_batch")] Vec<Request>),
    /// Take a checkpoint now (operators: the admin certificate only).
    Checkpoint,
    /// The status without the digest (cheap: for progress polling).
    Progress,
    /// Makes this connection the one the node pushes [`Push`] messages
    /// (callback recalls) for mount `client` on; a later Subscribe of the
    /// same mount on another connection replaces it. Answered `Ack`.
    Subscribe {
        /// The mount (a caching client id).
        client: ClientId,
    },
    /// The mount dropped the objects of a [`Push::Recall`]. Answered `Ack`.
    RecallAck {
        /// The mount.
        client: ClientId,
        /// From the recall.
        recall: RecallId,
    },
    /// The mount dropped everything it cached under earlier leaders (it
    /// sends this to each new leader it meets, before trusting any grant
    /// of that leader). Answered `Ack`.
    CacheReset {
        /// The mount.
        client: ClientId,
    },
    /// The mount was unmounted and holds nothing: the leader drops its
    /// callbacks (no change waits for a recall it would never answer).
    /// Answered `Ack`.
    Release {
        /// The mount.
        client: ClientId,
    },
}

/// What a node pushes to a subscribed mount (server push on the mount's
/// own connection, see `chorus_wire::rpc::ServerConn`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// Drop these objects from your cache (kernel included), then answer
    /// [`NodeRequest::RecallAck`] with `recall`.
    Recall {
        /// Names the recall in the acknowledgement.
        recall: RecallId,
        /// Inode numbers (for the file system).
        objects: Vec<ObjectId>,
        /// The view of the leader that sent it.
        view: ViewNumber,
    },
}

/// Requests in one [`NodeRequest::Batch`], at most (a longer one does not decode).
pub const BATCH_REQUESTS_MAX: usize = 1024;

/// Decodes a sequence of at most [`BATCH_REQUESTS_MAX`] elements: a longer
/// one is an error before it is decoded, whatever its length prefix says.
fn bounded_batch<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a batch of at most {BATCH_REQUESTS_MAX} elements")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > BATCH_REQUESTS_MAX {
                return Err(serde::de::Error::invalid_length(hint, &self));
            }
            let mut out = Vec::with_capacity(hint);
            while let Some(element) = seq.next_element()? {
                if out.len() == BATCH_REQUESTS_MAX {
                    return Err(serde::de::Error::invalid_length(BATCH_REQUESTS_MAX + 1, &self));
                }
                out.push(element);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_seq(Bounded(std::marker::PhantomData))
}

/// A node's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum NodeResponse {
    /// The core's reply.
    Reply(Reply),
    /// No reply within the node's wait bound (retry, possibly elsewhere).
    NoReply,
    /// Answer to [`NodeRequest::Status`].
    Status(NodeStatus),
    /// Answers to [`NodeRequest::Batch`], in order; `None` where no reply
    /// came within the node's wait bound (retry that request).
    Batch(#[serde(deserialize_with = "bounded_batch")] Vec<Option<Reply>>),
    /// Answer to [`NodeRequest::Checkpoint`]: the newest checkpoint's op.
    Checkpoint(Op),
    /// The request needs another role (e.g. the admin certificate).
    Refused(String),
    /// Answer to `Subscribe`, `RecallAck` and `CacheReset`.
    Ack,
}

/// A node's protocol status (a serializable subset of the core's report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Replica id.
    pub id: ReplicaId,
    /// "normal", "view_change" or "recovering".
    pub status: String,
    /// Current view.
    pub view: ViewNumber,
    /// Leader of that view.
    pub leader: ReplicaId,
    /// Last op in the log.
    pub op: Op,
    /// Commit point.
    pub commit_op: Op,
    /// Applied up to here (equals the commit point between steps).
    pub applied_op: Op,
    /// Client connections to this replica now (mounts, tools).
    pub clients: u64,
    /// Log durable up to here.
    pub durable_op: Op,
    /// Digest of the replicated state (sessions + registers) at `applied_op`.
    /// Computed at most once per spacing (shell `driver::DigestCache`): a
    /// `Status` answer may be a snapshot of up to about a second ago, its
    /// fields all of one moment.
    pub digest: u64,
    /// The applied op the digest was computed at: while Status requests
    /// come faster than digests may be computed, the digest lags the other
    /// fields; compare digests only where `digest_op == applied_op`.
    pub digest_op: Op,
    /// Digests this replica computed since it started (bounded whatever
    /// the number of `Status` requests).
    pub digests_computed: u64,
    /// fdatasync batches so far (group commit).
    pub log_syncs: u64,
    /// Time spent in fdatasync so far, µs.
    pub log_sync_us_total: u64,
    /// Writes (Persist actions) so far.
    pub log_writes: u64,
    /// Peer messages dropped on full queues.
    pub messages_dropped: u64,
    /// Op of the newest checkpoint (0: none yet).
    pub checkpoint_op: Op,
    /// Age of that checkpoint by the leader's time stamps, ms (0: none).
    pub checkpoint_age_ms: u64,
    /// Whether a checkpoint is being fetched from a donor (state transfer).
    pub transfer_active: bool,
    /// Bytes of that checkpoint present so far / in total.
    pub transfer_bytes_done: u64,
    /// See `transfer_bytes_done`.
    pub transfer_bytes_total: u64,
    /// State transfers completed since start.
    pub transfers_done: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_replication::Operation;

    fn register(seq: u64) -> Request {
        Request { client: 0, session: 0, seq, low_water: 0, epoch: 0, operation: Operation::Register }
    }

    /// Issue 10, finding 5 ("batch decoding amplifies memory"): the smallest
    /// request encodes in 6 bytes and decodes into a `Request` of about 64,
    /// so one 16 MiB message used to decode into ~2.8 million requests
    /// (~180 MiB before the vector's doubling), all held while the node
    /// used the first 1024. Now a batch longer than the node uses does not
    /// decode at all, and a length prefix alone is refused before anything
    /// is allocated for it.
    #[test]
    fn a_batch_longer_than_the_bound_does_not_decode() {
        let fits = NodeRequest::Batch((0..BATCH_REQUESTS_MAX as u64).map(register).collect());
        let bytes = chorus_wire::codec::to_bytes(&fits).unwrap();
        assert!(
            matches!(chorus_wire::codec::from_bytes::<NodeRequest>(&bytes), Ok(NodeRequest::Batch(b)) if b.len() == BATCH_REQUESTS_MAX)
        );

        let long = NodeRequest::Batch((0..200_000u64).map(|_| register(0)).collect());
        let bytes = chorus_wire::codec::to_bytes(&long).unwrap();
        let decoded_bytes = 200_000 * std::mem::size_of::<Request>();
        assert!(decoded_bytes > 8 * bytes.len(), "{} encoded bytes decode into {decoded_bytes}", bytes.len());
        assert!(chorus_wire::codec::from_bytes::<NodeRequest>(&bytes).is_err(), "a batch of 200,000 requests decoded");

        // Variant 2 (Batch), then a length of 2^62 and nothing else.
        let mut forged = vec![2u8, 0xff];
        forged.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(chorus_wire::codec::from_bytes::<NodeRequest>(&forged).is_err());

        let replies = NodeResponse::Batch(vec![None; BATCH_REQUESTS_MAX + 1]);
        let bytes = chorus_wire::codec::to_bytes(&replies).unwrap();
        assert!(chorus_wire::codec::from_bytes::<NodeResponse>(&bytes).is_err());
    }
}
