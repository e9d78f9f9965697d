//! The log, the superblock and durability bookkeeping.
//!
//! Guarantees:
//! - The in-memory [`Log`] is contiguous: a base (everything at or below it is
//!   covered by a checkpoint or known committed) plus entries `base+1..=op`.
//! - The [`Journal`] knows exactly which prefix of the in-memory log is on
//!   disk (`durable_op`) and which superblock is on disk, so no message ever
//!   claims more durability than the disk has: acknowledgements are computed
//!   from `durable_op`, and messages that reveal a view are held until the
//!   superblock carrying that view is durable.
//!
//! Assumes (from the shell): writes are executed in `seq` order, each
//! atomically (log truncation, appended entries, checkpoint and superblock of
//! one [`Write`] land together or not at all), and `Persisted{seq}` means
//! every write up to `seq` is durable (fsync'd). A crash may lose any suffix
//! of the writes not yet reported.
//!
//! Messages: none; the core turns [`Write`]s into `Action::Persist`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::message::{Entry, LogSuffix};
use crate::{Millis, Op, ReplicaId, ViewNumber};

/// The small durable record that keeps views from going back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// This replica's id, checked on start.
    pub replica: ReplicaId,
    /// |U|, checked on start.
    pub replica_count: u8,
    /// The highest view this replica has entered. Never decreases.
    pub view: ViewNumber,
    /// The last view in which this replica was in normal status; its log is
    /// a prefix of that view's leader log and reaches at least the log the
    /// view started with.
    pub last_normal_view: ViewNumber,
}

/// A state-machine checkpoint (session table included) at `op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last op covered.
    pub op: Op,
    /// Leader timestamp of that op (so the log's clock stays monotonic).
    pub timestamp_ms: Millis,
    /// Serialized [`crate::access::Sessions`] image.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

/// One atomic durable write. Applied in this order: truncate (entries, and a
/// checkpoint, above `truncate_after`), checkpoint (which drops entries at or
/// below its op), append, superblock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// Drop every entry above this op first.
    pub truncate_after: Option<Op>,
    /// Then store this checkpoint and drop entries it covers.
    pub checkpoint: Option<Checkpoint>,
    /// Then append these (contiguous, following the kept log).
    pub entries: Vec<Entry>,
    /// Then store this superblock.
    pub superblock: Option<Superblock>,
}

/// What a replica finds on disk when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// `None` means the disk was lost (or never initialized): the replica
    /// must recover from the group before it may vote.
    pub superblock: Option<Superblock>,
    /// Newest checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// Entries above the checkpoint, contiguous.
    pub entries: Vec<Entry>,
}

impl Durable {
    /// The state written by `chorus init` on every replica of U: view 0, empty log.
    pub fn initial(replica: ReplicaId, replica_count: u8) -> Durable {
        Durable {
            superblock: Some(Superblock { replica, replica_count, view: 0, last_normal_view: 0 }),
            checkpoint: None,
            entries: Vec::new(),
        }
    }

    /// Whether `write` may follow this state (what [`Durable::apply`]
    /// asserts): its entries continue right after what it keeps and its
    /// superblock's view does not go back. A shell reading writes from disk
    /// checks first, so a record that decodes but cannot follow (damage
    /// that kept a valid checksum) is reported, not a panic (fuzz C4).
    pub fn check(&self, write: &Write) -> Result<(), String> {
        let mut last_entry = self.entries.last().map(|e| e.op);
        let mut checkpoint_op = self.checkpoint.as_ref().map(|c| c.op);
        if let Some(after) = write.truncate_after {
            last_entry = self.entries.iter().rev().find(|e| e.op <= after).map(|e| e.op);
            if checkpoint_op.is_some_and(|c| c > after) {
                checkpoint_op = None;
            }
        }
        if let Some(c) = &write.checkpoint {
            if last_entry.is_some_and(|l| l <= c.op) {
                last_entry = None;
            }
            checkpoint_op = Some(c.op);
        }
        let first = last_entry.map(|l| l + 1).unwrap_or_else(|| checkpoint_op.map_or(1, |c| c + 1));
        for (expected, entry) in (first..).zip(&write.entries) {
            if entry.op != expected {
                return Err(format!("entry {} where {expected} must follow", entry.op));
            }
        }
        if let (Some(new), Some(old)) = (write.superblock, self.superblock) {
            if new.view < old.view {
                return Err(format!("superblock view {} after view {}", new.view, old.view));
            }
        }
        Ok(())
    }

    /// Applies one write, exactly as a shell must (atomically, in this order).
    pub fn apply(&mut self, write: &Write) {
        if let Some(after) = write.truncate_after {
            self.entries.retain(|e| e.op <= after);
            // The disk keeps nothing above `after`: a checkpoint beyond it
            // goes too (recovery replaces a damaged checkpoint's disk by a
            // log that starts lower, when the group has no checkpoint yet).
            if self.checkpoint.as_ref().is_some_and(|c| c.op > after) {
                self.checkpoint = None;
            }
        }
        if let Some(checkpoint) = &write.checkpoint {
            self.entries.retain(|e| e.op > checkpoint.op);
            self.checkpoint = Some(checkpoint.clone());
        }
        for entry in &write.entries {
            let expected = self.entries.last().map(|e| e.op + 1).unwrap_or_else(|| self.checkpoint.as_ref().map(|c| c.op + 1).unwrap_or(1));
            // A write appends right after what it kept; anything else is a
            // bug in the core, and the disk must not silently paper over it.
            assert_eq!(entry.op, expected, "non-contiguous durable append");
            self.entries.push(entry.clone());
        }
        if let Some(superblock) = write.superblock {
            if let Some(old) = self.superblock {
                assert!(superblock.view >= old.view, "durable view went back");
            }
            self.superblock = Some(superblock);
        }
    }
}

/// The in-memory log: `base` plus entries `base+1..=op()`.
#[derive(Clone, Debug, Default)]
pub struct Log {
    base: Op,
    base_timestamp_ms: Millis,
    entries: VecDeque<Entry>,
}

impl Log {
    /// A log starting after `base` (covered by a checkpoint stamped `base_timestamp_ms`).
    pub fn new(base: Op, base_timestamp_ms: Millis, entries: Vec<Entry>) -> Log {
        let log = Log { base, base_timestamp_ms, entries: entries.into() };
        log.check();
        log
    }

    fn check(&self) {
        for (i, e) in self.entries.iter().enumerate() {
            assert_eq!(e.op, self.base + 1 + i as Op, "log not contiguous");
        }
    }

    /// Everything at or below is covered by a checkpoint.
    pub fn base(&self) -> Op {
        self.base
    }

    /// The last op (base when empty).
    pub fn op(&self) -> Op {
        self.base + self.entries.len() as Op
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held above the base.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry at `op`, if held.
    pub fn get(&self, op: Op) -> Option<&Entry> {
        if op <= self.base {
            return None;
        }
        self.entries.get((op - self.base - 1) as usize)
    }

    /// Leader timestamp of the last entry (of the base when empty).
    pub fn last_timestamp_ms(&self) -> Millis {
        self.entries.back().map(|e| e.timestamp_ms).unwrap_or(self.base_timestamp_ms)
    }

    /// Appends the next entry.
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(entry.op, self.op() + 1, "append must be contiguous");
        assert!(entry.timestamp_ms >= self.last_timestamp_ms(), "log clock went back");
        self.entries.push_back(entry);
    }

    /// Drops entries above `op` (not below the base).
    pub fn truncate_after(&mut self, op: Op) {
        assert!(op >= self.base, "cannot truncate below the base");
        while self.op() > op {
            self.entries.pop_back();
        }
    }

    /// Forgets entries at or below `op` (they are covered by a checkpoint).
    pub fn compact_through(&mut self, op: Op) {
        while self.base < op {
            let Some(entry) = self.entries.pop_front() else { break };
            self.base = entry.op;
            self.base_timestamp_ms = entry.timestamp_ms;
        }
    }

    /// Entries from `from` to the end, at most `limit` of them and
    /// `bytes_max` payload bytes (at least one entry if there is one).
    pub fn entries_from(&self, from: Op, limit: usize, bytes_max: usize) -> Vec<Entry> {
        assert!(from > self.base, "entries below the base are gone");
        let skip = (from - self.base - 1) as usize;
        let mut bytes = 0;
        let mut out = Vec::new();
        for entry in self.entries.iter().skip(skip).take(limit) {
            bytes += entry.payload_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// The whole retained log as a suffix.
    pub fn suffix(&self) -> LogSuffix {
        LogSuffix { base: self.base, entries: self.entries.iter().cloned().collect() }
    }

    /// The retained log above `from_base` (which must be at or above the base).
    pub fn suffix_after(&self, from_base: Op) -> LogSuffix {
        assert!(from_base >= self.base && from_base <= self.op());
        let skip = (from_base - self.base) as usize;
        LogSuffix { base: from_base, entries: self.entries.iter().skip(skip).cloned().collect() }
    }
}

/// One write in flight.
#[derive(Clone, Copy, Debug)]
struct Pending {
    seq: u64,
    /// Log op once this write is durable (capped by later truncations).
    op_upto: Op,
    superblock: Option<Superblock>,
}

/// Tracks which writes are durable.
#[derive(Debug)]
pub struct Journal {
    next_seq: u64,
    persisted_seq: u64,
    pending: VecDeque<Pending>,
    durable_op: Op,
    durable_superblock: Option<Superblock>,
}

impl Journal {
    /// A journal over a disk that already holds the log up to `durable_op`.
    pub fn new(durable_op: Op, durable_superblock: Option<Superblock>) -> Journal {
        Journal { next_seq: 1, persisted_seq: 0, pending: VecDeque::new(), durable_op, durable_superblock }
    }

    /// Registers `write`, issued when the in-memory log ends at `log_op`;
    /// returns its sequence number.
    pub fn submit(&mut self, write: &Write, log_op: Op) -> u64 {
        if let Some(after) = write.truncate_after {
            // The disk still holds the old entries above `after` until this
            // write lands, and they differ from memory: no earlier write can
            // vouch for anything above `after` any more.
            for p in self.pending.iter_mut() {
                p.op_upto = p.op_upto.min(after);
            }
            self.durable_op = self.durable_op.min(after);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Pending { seq, op_upto: log_op, superblock: write.superblock });
        seq
    }

    /// Caps durability after an in-memory truncation that needs no disk
    /// write of its own (it is always followed by one).
    pub fn note_truncation(&mut self, op: Op) {
        for p in self.pending.iter_mut() {
            p.op_upto = p.op_upto.min(op);
        }
        self.durable_op = self.durable_op.min(op);
    }

    /// The shell reports writes up to `seq` durable; returns whether anything changed.
    pub fn persisted(&mut self, seq: u64) -> bool {
        let mut changed = false;
        while let Some(p) = self.pending.front().copied() {
            if p.seq > seq {
                break;
            }
            self.pending.pop_front();
            self.persisted_seq = p.seq;
            self.durable_op = p.op_upto;
            if p.superblock.is_some() {
                self.durable_superblock = p.superblock;
            }
            changed = true;
        }
        changed
    }

    /// The log is durable (and equal to memory) up to here.
    pub fn durable_op(&self) -> Op {
        self.durable_op
    }

    /// The superblock on disk.
    pub fn durable_superblock(&self) -> Option<Superblock> {
        self.durable_superblock
    }

    /// Sequence number of the last write submitted (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Sequence number of the last write known durable.
    pub fn persisted_seq(&self) -> u64 {
        self.persisted_seq
    }

    /// Writes in flight.
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: Op) -> Entry {
        Entry { op, view: 0, timestamp_ms: op, requests: vec![] }
    }

    #[test]
    fn truncation_caps_earlier_writes() {
        let mut j = Journal::new(0, None);
        let w1 = Write { entries: (1..=5).map(entry).collect(), ..Default::default() };
        let s1 = j.submit(&w1, 5);
        let w2 = Write { truncate_after: Some(3), entries: vec![entry(4)], ..Default::default() };
        let s2 = j.submit(&w2, 4);
        j.persisted(s1);
        assert_eq!(j.durable_op(), 3, "entries 4..5 on disk are not the ones in memory");
        j.persisted(s2);
        assert_eq!(j.durable_op(), 4);
    }

    #[test]
    fn durable_apply_orders_parts() {
        let mut d = Durable::initial(0, 3);
        d.apply(&Write { entries: (1..=4).map(entry).collect(), ..Default::default() });
        d.apply(&Write {
            truncate_after: Some(2),
            checkpoint: Some(Checkpoint { op: 2, timestamp_ms: 2, state: vec![] }),
            entries: vec![entry(3)],
            superblock: None,
        });
        assert_eq!(d.entries.iter().map(|e| e.op).collect::<Vec<_>>(), vec![3]);
    }
}
