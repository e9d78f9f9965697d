//! The replica's disk: the core's durable writes as records of the segment log.
//!
//! Guarantees:
//! - Each `Action::Persist` write of the core is ONE record, so it is atomic
//!   as the core requires (truncation, checkpoint, entries and superblock of
//!   one write land together or not at all): a record is whole and
//!   checksummed, or it is a torn tail that recovery cuts off — and a torn
//!   tail was never reported `Persisted`.
//! - Recovery replays the records through the core's own
//!   [`Durable::apply`], so the shell and the simulator agree exactly on what
//!   a sequence of writes means.
//! - A write carrying a checkpoint becomes a *snapshot* record (the whole
//!   durable state after it: superblock, checkpoint, retained entries) at
//!   the start of a fresh segment; once it is durable, every older segment is
//!   deleted. The log therefore holds at most about one checkpoint interval
//!   of writes plus one snapshot.
//! - A directory that was never initialized reads back as "disk lost"
//!   (`superblock: None`), which makes the core recover from the group
//!   instead of voting with an empty log. [`init`] writes the initial state
//!   of a brand-new universe and refuses a directory that holds a log.
//!
//! Assumes: the core's writes are self-consistent (it asserts them too).
//!
//! Record payload: `[RECORD_VERSION u8][bincode DiskRecord]`.

use std::path::Path;

use chorus_replication::{Durable, ReplicaId, Write};
use serde::{Deserialize, Serialize};

use crate::fastenc::{FastDurable, FastWrite};
use crate::log::{LogError, SegmentLog};
use crate::writer::Journal;

/// Format version of a record payload.
pub const RECORD_VERSION: u8 = 1;

/// Errors reading or initializing a replica's disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The segment log failed or is corrupt.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A record with a good checksum that does not decode: another version
    /// or a bug; never guessed around.
    #[error("log record {index} does not decode: {reason}")]
    BadRecord {
        /// Record index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// `init` on a directory that already holds a log.
    #[error("{0} already holds a replica log; refusing to initialize it again")]
    AlreadyInitialized(String),
    /// The disk belongs to another replica or universe.
    #[error("the log in {dir} belongs to replica {found_replica} of {found_count}, not {replica} of {count}")]
    WrongReplica {
        /// Directory.
        dir: String,
        /// Expected replica.
        replica: ReplicaId,
        /// Expected |U|.
        count: u8,
        /// Found replica.
        found_replica: ReplicaId,
        /// Found |U|.
        found_count: u8,
    },
}

/// Serializes exactly like `DiskRecord` (see [`crate::fastenc`]).
#[derive(Serialize)]
enum DiskRecordRef<'a> {
    Write(FastWrite<'a>),
    Snapshot(FastDurable<'a>),
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
enum DiskRecord {
    Write(Write),
    Snapshot(Durable),
}

/// Encodes a plain write.
pub fn encode_write(write: &Write) -> Vec<u8> {
    encode(&DiskRecordRef::Write(FastWrite(write)))
}

/// Encodes a snapshot of the whole durable state.
pub fn encode_snapshot(state: &Durable) -> Vec<u8> {
    encode(&DiskRecordRef::Snapshot(FastDurable(state)))
}

fn encode(record: &DiskRecordRef<'_>) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    bincode::serialize_into(&mut out, record).expect("encode disk record");
    out
}

/// The journal of the core's writes, run on the log writer thread: keeps a
/// mirror of the durable state (to write snapshots) and encodes each write.
pub struct CoreJournal {
    mirror: Durable,
}

impl CoreJournal {
    /// Starts from the state [`open`] recovered.
    pub fn new(recovered: Durable) -> CoreJournal {
        CoreJournal { mirror: recovered }
    }
}

impl Journal for CoreJournal {
    type Item = Write;

    fn apply(&mut self, log: &mut SegmentLog, write: Write) -> Result<(), LogError> {
        self.mirror.apply(&write);
        let index = log.last_index() + 1;
        if log.is_empty() && index > 1 {
            // The log was emptied (a damaged head snapshot cut as a torn
            // tail: the disk counts as lost): a plain write here would start
            // the log after a dropped prefix, which `open` refuses, and the
            // replica could never start again (fuzz C2). The mirror already
            // holds this write: a snapshot of it says the same.
            log.append(index, &encode_snapshot(&self.mirror))?;
        } else if write.checkpoint.is_some() {
            // Snapshot at a fresh segment; once it is synced, older segments go.
            log.roll()?;
            log.append(index, &encode_snapshot(&self.mirror))?;
            let first = log.truncate_prefix(index)?;
            debug_assert_eq!(first, index);
        } else {
            log.append(index, &encode_write(&write))?;
        }
        Ok(())
    }
}

/// Opens the log in `dir` and replays it into the core's [`Durable`].
pub fn open(dir: &Path, segment_bytes: u64, replica: ReplicaId, count: u8) -> Result<(SegmentLog, Durable), DiskError> {
    let (mut log, recovered) = SegmentLog::open(dir, segment_bytes)?;
    if recovered.torn_bytes > 0 {
        tracing::warn!(torn_bytes = recovered.torn_bytes, "cut a torn tail off the log (writes never acknowledged)");
    }
    let mut state = Durable::default();
    if !log.is_empty() {
        for index in log.first_index()..=log.last_index() {
            let payload = log.read(index)?;
            let bad = |reason: String| DiskError::BadRecord { index, reason };
            if payload.first() != Some(&RECORD_VERSION) {
                return Err(bad(format!("version {:?}, expected {RECORD_VERSION}", payload.first())));
            }
            match bincode::deserialize::<DiskRecord>(&payload[1..]).map_err(|e| bad(e.to_string()))? {
                DiskRecord::Write(write) => {
                    if index == log.first_index() && index > 1 {
                        return Err(bad("the log starts after a dropped prefix without a snapshot".into()));
                    }
                    state.check(&write).map_err(bad)?;
                    state.apply(&write);
                }
                DiskRecord::Snapshot(snapshot) => state = snapshot,
            }
        }
    }
    if let Some(sb) = state.superblock {
        if (sb.replica, sb.replica_count) != (replica, count) {
            return Err(DiskError::WrongReplica {
                dir: dir.display().to_string(),
                replica,
                count,
                found_replica: sb.replica,
                found_count: sb.replica_count,
            });
        }
    }
    Ok((log, state))
}

/// Writes the initial state of replica `replica` of a new universe of
/// `count` replicas (view 0, empty log). Refuses a directory with a log.
pub fn init(dir: &Path, segment_bytes: u64, replica: ReplicaId, count: u8) -> Result<(), DiskError> {
    let (mut log, _) = SegmentLog::open(dir, segment_bytes)?;
    if !log.is_empty() {
        return Err(DiskError::AlreadyInitialized(dir.display().to_string()));
    }
    log.append(log.first_index(), &encode_snapshot(&Durable::initial(replica, count)))?;
    log.sync()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_replication::{Checkpoint, Entry, Superblock};

    fn entry(op: u64) -> Entry {
        Entry { op, view: 0, timestamp_ms: op, requests: vec![] }
    }

    #[test]
    fn uninitialized_disk_reads_as_lost_and_init_is_once() {
        let dir = tempfile::tempdir().unwrap();
        let (_, state) = open(dir.path(), 1 << 20, 1, 3).unwrap();
        assert!(state.superblock.is_none());
        init(dir.path(), 1 << 20, 1, 3).unwrap();
        assert!(matches!(init(dir.path(), 1 << 20, 1, 3), Err(DiskError::AlreadyInitialized(_))));
        let (_, state) = open(dir.path(), 1 << 20, 1, 3).unwrap();
        assert_eq!(state, Durable::initial(1, 3));
        assert!(matches!(open(dir.path(), 1 << 20, 2, 3), Err(DiskError::WrongReplica { .. })));
    }

    #[test]
    fn writes_replay_like_the_core_says() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), 1 << 20, 0, 3).unwrap();
        let (mut log, mut expected) = open(dir.path(), 1 << 20, 0, 3).unwrap();
        let writes = vec![
            Write { entries: (1..=5).map(entry).collect(), ..Default::default() },
            Write {
                truncate_after: Some(3),
                entries: vec![entry(4)],
                superblock: Some(Superblock { replica: 0, replica_count: 3, view: 2, last_normal_view: 2 }),
                ..Default::default()
            },
        ];
        for w in &writes {
            log.append(log.last_index() + 1, &encode_write(w)).unwrap();
            expected.apply(w);
        }
        // A checkpoint write: snapshot at a new segment, older ones dropped.
        let cp = Write { checkpoint: Some(Checkpoint { op: 2, timestamp_ms: 2, state: vec![7; 10] }), ..Default::default() };
        expected.apply(&cp);
        log.roll().unwrap();
        let at = log.last_index() + 1;
        log.append(at, &encode_snapshot(&expected)).unwrap();
        log.truncate_prefix(at).unwrap();
        assert_eq!(log.first_index(), at);
        drop(log);
        let (_, state) = open(dir.path(), 1 << 20, 0, 3).unwrap();
        assert_eq!(state, expected);
        // The fast encoding is the plain serde encoding, byte for byte.
        let plain = bincode::serialize(&DiskRecord::Snapshot(expected.clone())).unwrap();
        assert_eq!(encode_snapshot(&expected)[1..], plain[..]);
        assert_eq!(state.entries.iter().map(|e| e.op).collect::<Vec<_>>(), vec![3, 4]);
    }
}
