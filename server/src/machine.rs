//! [`FsMachine`]: the file-system store ([`FsStore`]) as a
//! [`chorus_replication::StateMachine`], so the replication core (and its
//! session layer, `chorus_replication::Sessions`) can drive it. Not yet wired
//! into the running server (next step of issue "Replicated ChorusFS").
//!
//! Encoding (one codec, [`chorus_wire::codec`], the same bounded bincode
//! options as every client message):
//! - a command is a `Request::Mutate { caller, op }`, exactly the bytes the
//!   client already sends: the time stamp is NOT in the command, it is
//!   derived from the log (below), so the leader never re-encodes requests;
//! - a query is a `Request::Query { caller, query }`;
//! - every reply is an encoded [`OpResult`]. Bytes that do not decode, or the
//!   wrong kind of request, get `Err(Errno(EINVAL))` and change nothing (the
//!   same on every replica, since all see the same bytes).
//!
//! Guarantees:
//! - Determinism: a command's `now` is `max(ctx.timestamp_ms in ns,
//!   last_now + 1 ns)`, where `last_now` is the previous command's `now`,
//!   kept in the store. So file times are a function of the log only, and
//!   strictly increase per command even when the leader's stamp stalls or
//!   repeats (several commands per entry, a leader clock with coarse ticks),
//!   across restarts and state transfer.
//! - Numbering: the core numbers *entries* (`ctx.op`), the store numbers
//!   *commands* (consecutive). Each command is applied at the store's next
//!   command index, and the entry op and `now` are written in the SAME
//!   WriteBatch (`FsStore::apply_tagged`), so after a crash
//!   `applied_index()` (an entry op) and `last_now` describe exactly the
//!   state on disk. An entry holding no valid command does not move them.
//! - `checkpoint()` is a full, self-contained, digest-checked image of the
//!   store (`chorus_fs::StoreImage`, all tables and the tag); `restore`
//!   validates it completely before wiping the store, then loads it in one
//!   WriteBatch; afterwards `digest()` equals the source's.
//! - `digest()` is the first 8 bytes of `FsStore::digest()` (SHA-256 of all
//!   tables, the tag included).
//! - Callbacks: objects are inode numbers; a directory's object holds its
//!   entries too (a negative lookup is its parent's). `read_set` names the
//!   inodes a query's answer came from (none for errors other than a lookup's
//!   ENOENT, nor for StatFs); `take_changed` the inodes the last command
//!   changed (`FsStore::apply_tagged_tracked`; none for a failed or refused
//!   command), once.
//!
//! Assumes:
//! - `ctx.timestamp_ms` is milliseconds since the Unix epoch (it becomes file
//!   times); the shell must stamp entries from the wall clock, made
//!   non-decreasing by the core.
//! - The store is driven only through this adapter (a store written by the
//!   single-replica server's untagged `FsStore::apply` is refused at open:
//!   its times and numbering are not derived from a log).
//! - A storage failure (RocksDB error, corrupt record) while applying or
//!   checkpointing panics: replying EIO would make this replica's state and
//!   replies differ from the others'. The replica restarts and recovers by
//!   state transfer. Queries are local and answer `Err(EIO)` instead.
//!
//! Known limits (next steps):
//! - Checkpoints are O(state) in time and memory (`IMAGE_BYTES_MAX` in
//!   chorus-fs bounds them). Checkpoints by reference to a RocksDB checkpoint
//!   (hard links; state transfer streams the files) are issue "Recovery"
//!   and need a change of the `StateMachine` trait.
//! - Reads ordered through the log (`Operation::Read`) put the query's reply
//!   in the replicated reply cache; `Query::StatFs` reports the host's free
//!   space, which differs between replicas, and would make the session
//!   digests differ. The server should answer reads locally (lease) and
//!   never order StatFs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chorus_replication_shell::checkpoint::{self, Manifest};

use chorus_fs::ops::{Errno, Ino, OpResult, Query, Reply, Request, Timestamp};
use chorus_fs::{AppliedTag, FsStore, StoreError, StoreImage, StoreOptions};
use chorus_replication::{ApplyContext, CheckpointError, ObjectId, Op, StateMachine};
use chorus_wire::WireError;

const NANOS_PER_SEC: u32 = 1_000_000_000;
const NANOS_PER_MILLI: u64 = 1_000_000;

/// Encodes a client request (command or query) for the log.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, WireError> {
    chorus_wire::codec::to_bytes(request)
}

/// Decodes a request; bounded and strict (trailing bytes are refused).
pub fn decode_request(bytes: &[u8]) -> Result<Request, WireError> {
    chorus_wire::codec::from_bytes(bytes)
}

/// Encodes a reply. Every reply of the store fits a message (reads are at
/// most 4 MiB, readdir at most 4096 entries); if one ever did not, all
/// replicas answer the same `Err(EIO)` rather than panic.
pub fn encode_result(result: &OpResult) -> Vec<u8> {
    chorus_wire::codec::to_bytes(result)
        .unwrap_or_else(|_| chorus_wire::codec::to_bytes(&OpResult::Err(Errno(libc::EIO))).expect("errno encodes"))
}

/// Decodes a reply.
pub fn decode_result(bytes: &[u8]) -> Result<OpResult, WireError> {
    chorus_wire::codec::from_bytes(bytes)
}

/// Leader milliseconds since the epoch as a file time stamp.
pub fn timestamp_from_ms(ms: u64) -> Timestamp {
    // ms / 1000 < 2^54, always fits an i64; the remainder is < 10^9 ns.
    Timestamp::new((ms / 1000) as i64, ((ms % 1000) * NANOS_PER_MILLI) as u32)
}

/// The time stamp 1 ns after `t`.
fn next_nanosecond(t: Timestamp) -> Timestamp {
    assert!(t.nsec < NANOS_PER_SEC, "time stamp with nsec {}", t.nsec);
    if t.nsec + 1 < NANOS_PER_SEC {
        Timestamp::new(t.sec, t.nsec + 1)
    } else {
        // 2^63 seconds is not reachable from millisecond stamps.
        Timestamp::new(t.sec.checked_add(1).expect("time stamp overflow"), 0)
    }
}

/// `now` of the next command: the entry's stamp, but strictly after the
/// previous command's `now`.
pub fn command_time(last_now: Timestamp, timestamp_ms: u64) -> Timestamp {
    let now = timestamp_from_ms(timestamp_ms).max(next_nanosecond(last_now));
    assert!(now > last_now);
    now
}

/// Why a store cannot be driven by an [`FsMachine`].
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the store holds {applied_index} commands applied without a log position \
         (written by the single-replica server); it cannot join a replicated group as is"
    )]
    Untagged { applied_index: u64 },
    #[error("{0}")]
    Io(String),
}

/// The file system as a replicated state machine; see the module comment.
pub struct FsMachine {
    /// Shared so the server can answer local reads while the core applies.
    store: Arc<FsStore>,
    /// Checkpoints by reference (a replica); None: checkpoints are images.
    refs: Option<CheckpointRefs>,
    /// Inodes the last command changed, until `take_changed`.
    changed: Vec<Ino>,
}

/// Checkpoints kept on disk (the newest few; older ones are pruned).
pub const CHECKPOINTS_KEPT: usize = 3;

/// Where a replica keeps its live store and its checkpoints.
struct CheckpointRefs {
    replica: u8,
    /// The live store is `live_root/<generation>`; a restore opens the next
    /// generation beside the old one, then removes the old one.
    live_root: PathBuf,
    generation: u64,
    /// Complete checkpoints (own and fetched), see `chorus_replication_shell::checkpoint`.
    checkpoints: PathBuf,
    options: StoreOptions,
    /// CRC32C of immutable files already summed, by (name, size).
    crc_known: Mutex<checkpoint::CrcCache>,
}

impl FsMachine {
    /// Drives `store`, which must be new or tagged (only ever applied to
    /// through an `FsMachine`).
    pub fn new(store: Arc<FsStore>) -> Result<FsMachine, MachineError> {
        if store.tag().is_none() && store.applied_index() != 0 {
            return Err(MachineError::Untagged { applied_index: store.applied_index() });
        }
        Ok(FsMachine { store, refs: None, changed: Vec::new() })
    }

    /// A replica's machine: the live store is derived state, rebuilt at every
    /// start (the folder `state/` is cleared), written without a WAL; its
    /// checkpoints are RocksDB checkpoints under `checkpoints/`, referenced
    /// by manifest (`chorus_replication_shell::checkpoint`), which survive.
    pub fn open_replica(data_dir: &Path, replica: u8) -> Result<FsMachine, MachineError> {
        let live_root = data_dir.join("state");
        let checkpoints = data_dir.join("checkpoints");
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |e: std::io::Error| MachineError::Io(format!("{p}: {e}"))
        };
        if live_root.exists() {
            std::fs::remove_dir_all(&live_root).map_err(io(&live_root))?;
        }
        std::fs::create_dir_all(&live_root).map_err(io(&live_root))?;
        std::fs::create_dir_all(&checkpoints).map_err(io(&checkpoints))?;
        let options = StoreOptions { sync_every_write: false, skip_wal: true };
        let store = Arc::new(FsStore::open(&live_root.join("0"), options.clone())?);
        let refs = CheckpointRefs { replica, live_root, generation: 0, checkpoints, options, crc_known: Mutex::default() };
        Ok(FsMachine { store, refs: Some(refs), changed: Vec::new() })
    }

    /// Folder of this replica's checkpoints (None: image checkpoints).
    pub fn checkpoints_dir(&self) -> Option<PathBuf> {
        self.refs.as_ref().map(|r| r.checkpoints.clone())
    }

    fn checkpoint_by_reference(&self, refs: &CheckpointRefs) -> Result<Vec<u8>, String> {
        let op = self.tag().op;
        let name = format!("cp-{op:020}-r{}", refs.replica);
        let path = refs.checkpoints.join(&name);
        // No command since the last checkpoint: the same files serve again.
        if let Ok(bytes) = std::fs::read(path.join(checkpoint::MANIFEST_FILE)) {
            if let Ok(m) = Manifest::from_bytes(&bytes) {
                if checkpoint::is_complete(&refs.checkpoints, &m) {
                    return Ok(bytes);
                }
            }
        }
        let tmp = refs.checkpoints.join(format!("{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        self.store.checkpoint(&tmp).map_err(|e| e.to_string())?;
        let mut known = refs.crc_known.lock().expect("crc cache lock");
        let manifest = checkpoint::seal(&refs.checkpoints, &tmp, &name, op, &mut known).map_err(|e| e.to_string())?;
        // Forget sums of files no kept checkpoint holds any more.
        checkpoint::prune(&refs.checkpoints, CHECKPOINTS_KEPT, &name);
        checkpoint::forget_unkept(&refs.checkpoints, &mut known);
        Ok(manifest.to_bytes())
    }

    /// The local complete checkpoint to restore for `wanted`: itself, or
    /// any other with the same entry op (the same state: every replica
    /// applied the same commands up to that entry, and none after it until
    /// the checkpoint), e.g. one fetched from another donor.
    fn local_equivalent(refs: &CheckpointRefs, wanted: &Manifest) -> Option<Manifest> {
        if checkpoint::is_complete(&refs.checkpoints, wanted) {
            return Some(wanted.clone());
        }
        checkpoint::list(&refs.checkpoints).into_iter().rev().find(|m| m.op == wanted.op)
    }

    fn restore_by_reference(&mut self, index: Op, bytes: &[u8]) -> Result<(), CheckpointError> {
        let refs = self.refs.as_mut().expect("by reference");
        let wanted = Manifest::from_bytes(bytes).map_err(|e| CheckpointError(e.to_string()))?;
        let manifest = Self::local_equivalent(refs, &wanted).unwrap_or(wanted);
        let next = refs.live_root.join((refs.generation + 1).to_string());
        // Every file is checked against the manifest before the store is
        // touched: a damaged checkpoint is reported and never opened.
        if let Err(e) = checkpoint::materialize(&refs.checkpoints, &manifest, &next) {
            if matches!(e, checkpoint::CheckpointFileError::Damaged { .. }) {
                // Never used again: set aside for inspection (a fetch
                // brings a good copy when one is needed).
                checkpoint::set_aside_damaged(&refs.checkpoints, &manifest.name);
            }
            let _ = std::fs::remove_dir_all(&next);
            return Err(CheckpointError(e.to_string()));
        }
        let store = FsStore::open(&next, refs.options.clone()).map_err(|e| CheckpointError(e.to_string()))?;
        let tag = store.tag().unwrap_or_default();
        if tag.op > index {
            return Err(CheckpointError(format!("checkpoint {} holds entry {} but is labelled {index}", manifest.name, tag.op)));
        }
        let old = refs.live_root.join(refs.generation.to_string());
        refs.generation += 1;
        self.store = Arc::new(store);
        // The old store closes when its last reference goes (now, unless a
        // reader still holds it); its folder goes with the next start if not now.
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Opens (or creates) the store in `dir` and drives it.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<FsMachine, MachineError> {
        FsMachine::new(Arc::new(FsStore::open(dir, options)?))
    }

    /// The store (read-only uses: local queries, sync, digest).
    pub fn store(&self) -> &Arc<FsStore> {
        &self.store
    }

    /// Entry op and time stamp of the last command (zero for a new store).
    pub fn tag(&self) -> AppliedTag {
        self.store.tag().unwrap_or_default()
    }
}

/// The store cannot take a committed entry (disk full, I/O error). Every
/// replica must apply every entry, so this one cannot go on: it stops at
/// once with a clear message, its log intact (the store is derived state,
/// rebuilt from the checkpoint and the log), and once the disk is fixed a
/// restart recovers it by replay. The others keep serving. Not a panic: no
/// backtrace for an operator's disk problem.
fn stop_on_storage_failure(what: &str, e: &dyn std::fmt::Display) -> ! {
    let msg = format!(
        "stopping this replica: the state store cannot {what}: {e}. Free space (or fix the disk) \
         under this replica's data folder and start it again: it recovers from its log and the other replicas."
    );
    tracing::error!("{msg}");
    eprintln!("chorus: {msg}");
    std::process::exit(STORAGE_FAILURE_EXIT)
}

/// Exit status of a replica stopped by [`stop_on_storage_failure`]
/// (EX_IOERR of sysexits.h).
pub const STORAGE_FAILURE_EXIT: i32 = 74;

fn einval() -> Vec<u8> {
    encode_result(&Err(Errno(libc::EINVAL)))
}

/// The inodes `answer` to `query` came from, sorted: what a client may cache
/// under a callback. An answer of an unexpected kind gives none (nothing
/// cached is never stale).
pub fn read_set_of(query: &Query, answer: &OpResult) -> Vec<Ino> {
    let mut objects = match (query, answer) {
        (Query::GetAttr { ino }, Ok(Reply::Attr(attr))) if attr.ino == *ino => vec![*ino],
        (
            Query::Read { ino, .. } | Query::ReadLink { ino } | Query::GetXattr { ino, .. } | Query::ListXattr { ino },
            Ok(Reply::Data(_)),
        ) => {
            vec![*ino]
        }
        (Query::Lookup { parent, .. }, Ok(Reply::Entry(attr))) => vec![*parent, attr.ino],
        // "No such name" is a fact about the directory: its entries.
        (Query::Lookup { parent, .. }, Err(Errno(libc::ENOENT))) => vec![*parent],
        (Query::ReadDir { ino, .. }, Ok(Reply::Dir(entries))) => {
            std::iter::once(*ino).chain(entries.iter().filter_map(|e| e.attr.as_ref().map(|a| a.ino))).collect()
        }
        // StatFs is the host's, not an object's; errors are not cached.
        _ => Vec::new(),
    };
    objects.sort_unstable();
    objects.dedup();
    objects
}

impl StateMachine for FsMachine {
    fn apply(&mut self, context: ApplyContext, command: &[u8]) -> Vec<u8> {
        let previous = self.tag();
        assert!(context.op > 0, "op 0 is the empty prefix, never an entry");
        assert!(context.op >= previous.op, "entry {} applied after entry {}", context.op, previous.op);
        let (caller, op) = match decode_request(command) {
            Ok(Request::Mutate { caller, op }) => (caller, op),
            // A query is not a command (reads come through `query`); garbage
            // is refused. Neither touches the store.
            Ok(Request::Query { .. }) | Err(_) => {
                self.changed.clear();
                return einval();
            }
        };
        let now = command_time(previous.last_now, context.timestamp_ms);
        let tag = AppliedTag { op: context.op, last_now: now };
        let index = self.store.applied_index() + 1;
        let command = chorus_fs::ops::Command { now, caller, op };
        let applied = match self.store.apply_tagged_tracked(index, &command, &tag, context.client) {
            Ok(applied) => applied,
            Err(e) => stop_on_storage_failure(&format!("apply log entry {}", context.op), &e),
        };
        assert_eq!(self.store.applied_index(), index, "one command, one index");
        assert_eq!(self.store.tag(), Some(tag), "the tag lands with the command");
        self.changed = applied.changed;
        encode_result(&applied.result)
    }

    fn client_gone(&mut self, context: ApplyContext) {
        let previous = self.tag();
        assert!(context.op >= previous.op, "entry {} applied after entry {}", context.op, previous.op);
        let now = command_time(previous.last_now, context.timestamp_ms);
        let tag = AppliedTag { op: context.op, last_now: now };
        let index = self.store.applied_index() + 1;
        let applied = match self.store.apply_client_gone(index, now, &tag, context.client) {
            Ok(applied) => applied,
            Err(e) => stop_on_storage_failure(&format!("release what client {:#x} held at log entry {}", context.client, context.op), &e),
        };
        assert_eq!(self.store.applied_index(), index, "one command, one index");
        if let Err(e) = applied.result {
            // Releasing never needs permission and cannot fail on a
            // consistent state; an inconsistent one fails the same way on
            // every replica (the release is dropped whole), so serving on
            // beats a crash that every replay would repeat.
            tracing::error!(client = context.client, errno = e.0, "releasing what a gone client held failed; run fsck");
            debug_assert!(false, "releasing what client {:#x} held failed with {e}", context.client);
        }
        self.changed = applied.changed;
    }

    fn read_set(&self, query: &[u8], answer: &[u8]) -> Vec<ObjectId> {
        let Ok(Request::Query { query, .. }) = decode_request(query) else { return Vec::new() };
        let Ok(answer) = decode_result(answer) else { return Vec::new() };
        read_set_of(&query, &answer)
    }

    fn take_changed(&mut self) -> Vec<ObjectId> {
        std::mem::take(&mut self.changed)
    }

    fn refusal_when_disk_low(&self, command: &[u8]) -> Option<Vec<u8>> {
        use chorus_fs::ops::Op;
        let Ok(Request::Mutate { op, .. }) = decode_request(command) else { return None };
        let grows = matches!(
            op,
            Op::Create { .. }
                | Op::Mknod { .. }
                | Op::Mkdir { .. }
                | Op::Symlink { .. }
                | Op::Link { .. }
                | Op::Write { .. }
                | Op::Fallocate { .. }
                | Op::SetXattr { .. }
        );
        grows.then(|| encode_result(&Err(Errno(libc::ENOSPC))))
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let (caller, query) = match decode_request(query) {
            Ok(Request::Query { caller, query }) => (caller, query),
            Ok(Request::Mutate { .. }) | Err(_) => return einval(),
        };
        let result = self.store.query(&caller, &query).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "storage error answering a query");
            Err(Errno(libc::EIO))
        });
        encode_result(&result)
    }

    fn applied_index(&self) -> Op {
        self.tag().op
    }

    fn checkpoint(&self) -> Vec<u8> {
        if let Some(refs) = &self.refs {
            return self.checkpoint_by_reference(refs).unwrap_or_else(|e| stop_on_storage_failure("take a checkpoint", &e));
        }
        self.store.export_image().unwrap_or_else(|e| stop_on_storage_failure("take a checkpoint", &e)).to_bytes()
    }

    fn restore(&mut self, index: Op, checkpoint: &[u8]) -> Result<(), CheckpointError> {
        // A restore replaces the whole state: no command's set describes it.
        self.changed.clear();
        if self.refs.is_some() {
            return self.restore_by_reference(index, checkpoint);
        }
        // Everything is checked before the store is touched: a refused image
        // leaves the current state as it was.
        let image = StoreImage::from_bytes(checkpoint).map_err(|e| CheckpointError(e.to_string()))?;
        let tag = match image.tag() {
            Some(tag) => tag,
            None if image.applied_index() == 0 => AppliedTag::default(),
            None => return Err(CheckpointError(format!("image of an untagged store with {} commands", image.applied_index()))),
        };
        // Entries after the last command may hold none for the store, so the
        // image may stand before `index`, never after it.
        if tag.op > index {
            return Err(CheckpointError(format!("image at entry {} labelled {index}", tag.op)));
        }
        self.store.import_image(&image).map_err(|e| CheckpointError(e.to_string()))?;
        assert_eq!(self.tag(), tag, "restored tag is the image's");
        Ok(())
    }

    fn digest_job(&self) -> Option<Box<dyn FnOnce() -> u64 + Send + 'static>> {
        let store = self.store.clone();
        Some(Box::new(move || {
            let digest = store.digest().unwrap_or_else(|e| stop_on_storage_failure("compute its digest", &e));
            u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
        }))
    }

    fn has_checkpoint(&self, checkpoint: &[u8]) -> bool {
        match (&self.refs, Manifest::from_bytes(checkpoint)) {
            (Some(refs), Ok(m)) => Self::local_equivalent(refs, &m).is_some(),
            // Images need nothing; bad bytes are restore's to report.
            _ => true,
        }
    }

    fn digest(&self) -> u64 {
        let digest = self.store.digest().unwrap_or_else(|e| stop_on_storage_failure("compute its digest", &e));
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}
