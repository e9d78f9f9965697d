//! The durable log damaged after the fact: a valid log is made with the
//! crate's own API, then fuzzer-chosen damage is applied to its files (bit
//! flips, truncations, zeroed or garbage tails, overwritten ranges, removed
//! segments), then it is opened again.
//!
//! Two kinds of log:
//! - raw: `SegmentLog` records of known payloads, with rolls, suffix and
//!   prefix truncations, small segments (so there are several);
//! - disk: the replica's own log (`disk::init`, then the core's writes
//!   through `CoreJournal`, checkpoints becoming snapshot records at fresh
//!   segments, older segments dropped), opened with `disk::open`.
//!
//! Fails on: a panic or abort while opening or reading; and on
//! - damage never yields a different entry: every record a raw log returns is
//!   the one written at that index, at most the last index written, and it
//!   starts where the written log started unless a segment was removed; a
//!   disk log recovers one of the states the writes passed through (or the
//!   "disk lost" state of an empty log), never another;
//! - a torn tail is not an error: if the only damage was cutting or zeroing
//!   the end of the last segment, the open succeeds;
//! - a recovered disk log takes the next write and reads it back.

#![no_main]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use chorus_replication::{Checkpoint, Durable, Entry, Operation, Request, Superblock, Write};
use chorus_replication_shell::disk::{self, CoreJournal};
use chorus_replication_shell::log::SegmentLog;
use chorus_replication_shell::writer::Journal;
use libfuzzer_sys::fuzz_target;

const STEPS_MAX: usize = 32;
const DAMAGE_MAX: usize = 4;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Segment size: 64 + 16 × this bytes (small: many segments).
    segment_bytes: u8,
    log: Kind,
    damage: Vec<Damage>,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Raw { start: u8, steps: Vec<RawStep> },
    Disk { writes: Vec<WriteStep> },
}

#[derive(Arbitrary, Debug)]
enum RawStep {
    /// Appends a record of this many payload bytes.
    Append(u8),
    Roll,
    Sync,
    /// `truncate_suffix(last - n)`.
    TruncateSuffix(u8),
    /// `truncate_prefix(first + n)`.
    TruncatePrefix(u8),
}

/// One write of the core, made consistent with the state before it.
#[derive(Arbitrary, Debug)]
struct WriteStep {
    truncate_back: Option<u8>,
    checkpoint_back: Option<u8>,
    entries: u8,
    view_bump: Option<u8>,
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Flip {
        segment: u8,
        at: u16,
        xor: u8,
    },
    Truncate {
        segment: u8,
        keep: u16,
    },
    ZeroTail {
        segment: u8,
        bytes: u8,
    },
    Garbage {
        segment: u8,
        bytes: Vec<u8>,
    },
    Overwrite {
        segment: u8,
        at: u16,
        bytes: Vec<u8>,
    },
    Remove {
        segment: u8,
    },
}

fn payload(index: u64, len: u8) -> Vec<u8> {
    (0..len)
        .map(|j| (index as u8).wrapping_mul(31) ^ j.wrapping_mul(7) ^ 0x5a)
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Applies the damage; returns whether it was only a torn tail (cut or
/// zeroed bytes at the end of the last segment) or nothing at all.
fn damage(dir: &Path, damage: &[Damage]) -> (bool, bool) {
    let (mut torn_only, mut removed) = (true, false);
    for d in damage.iter().take(DAMAGE_MAX) {
        let segs = segments(dir);
        if segs.is_empty() {
            break;
        }
        let pick = |s: u8| {
            (
                usize::from(s) % segs.len(),
                &segs[usize::from(s) % segs.len()],
            )
        };
        let open = |p: &Path| OpenOptions::new().read(true).write(true).open(p).unwrap();
        match d {
            Damage::Flip { segment, at, xor } => {
                let (_, p) = pick(*segment);
                let f = open(p);
                let len = f.metadata().unwrap().len();
                if len == 0 || *xor == 0 {
                    continue;
                }
                let at = u64::from(*at) % len;
                let mut b = [0u8];
                f.read_exact_at(&mut b, at).unwrap();
                b[0] ^= xor;
                f.write_all_at(&b, at).unwrap();
                torn_only = false;
            }
            Damage::Truncate { segment, keep } => {
                let (i, p) = pick(*segment);
                let f = open(p);
                let len = f.metadata().unwrap().len();
                f.set_len(u64::from(*keep).min(len)).unwrap();
                torn_only &= i + 1 == segs.len();
            }
            Damage::ZeroTail { segment, bytes } => {
                let (i, p) = pick(*segment);
                let f = open(p);
                let len = f.metadata().unwrap().len();
                f.write_all_at(&vec![0u8; usize::from(*bytes)], len)
                    .unwrap();
                torn_only &= i + 1 == segs.len();
            }
            Damage::Garbage { segment, bytes } => {
                let (_, p) = pick(*segment);
                let f = open(p);
                let len = f.metadata().unwrap().len();
                f.write_all_at(&bytes[..bytes.len().min(512)], len).unwrap();
                torn_only = false;
            }
            Damage::Overwrite { segment, at, bytes } => {
                let (_, p) = pick(*segment);
                let f = open(p);
                let len = f.metadata().unwrap().len();
                if len == 0 || bytes.is_empty() {
                    continue;
                }
                f.write_all_at(&bytes[..bytes.len().min(64)], u64::from(*at) % len)
                    .unwrap();
                torn_only = false;
            }
            Damage::Remove { segment } => {
                let (_, p) = pick(*segment);
                std::fs::remove_file(p).unwrap();
                torn_only = false;
                removed = true;
            }
        }
    }
    (torn_only, removed)
}

fn raw(dir: &Path, segment_bytes: u64, start: u8, steps: &[RawStep], harm: &[Damage]) {
    let (mut log, _) = SegmentLog::open(dir, segment_bytes).expect("open an empty log");
    // index → payload of every record the log holds.
    let mut model: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    let mut first_append = true;
    for step in steps.iter().take(STEPS_MAX) {
        match *step {
            RawStep::Append(len) => {
                let index = if first_append {
                    u64::from(start).max(1)
                } else if log.is_empty() {
                    log.first_index()
                } else {
                    log.last_index() + 1
                };
                first_append = false;
                let p = payload(index, len);
                log.append(index, &p).expect("append");
                model.insert(index, p);
            }
            RawStep::Roll => log.roll().expect("roll"),
            RawStep::Sync => log.sync().expect("sync"),
            RawStep::TruncateSuffix(n) => {
                let last_kept = log.last_index().saturating_sub(u64::from(n));
                log.truncate_suffix(last_kept).expect("truncate_suffix");
                model.retain(|&i, _| i <= last_kept);
            }
            RawStep::TruncatePrefix(n) => {
                let first = log
                    .truncate_prefix(log.first_index() + u64::from(n))
                    .expect("truncate_prefix");
                model.retain(|&i, _| i >= first);
            }
        }
    }
    log.sync().expect("sync");
    let (written_first, written_last) = (log.first_index(), log.last_index());
    drop(log);
    let (torn_only, removed) = damage(dir, harm);
    let (mut log, _) = match SegmentLog::open(dir, segment_bytes) {
        Ok(x) => x,
        Err(e) => {
            assert!(!torn_only, "a torn tail refused: {e}");
            return;
        }
    };
    if log.is_empty() {
        return;
    }
    if !removed {
        assert_eq!(log.first_index(), written_first, "the log starts elsewhere");
    }
    assert!(
        log.last_index() <= written_last,
        "records beyond the last written: {} > {written_last}",
        log.last_index()
    );
    for i in log.first_index()..=log.last_index() {
        let got = log
            .read(i)
            .unwrap_or_else(|e| panic!("record {i} of an opened log does not read: {e}"));
        assert_eq!(
            Some(&got),
            model.get(&i),
            "record {i} differs from what was written"
        );
    }
}

/// The last op a durable state holds (0 for none).
fn last_op(d: &Durable) -> u64 {
    d.entries
        .last()
        .map(|e| e.op)
        .or(d.checkpoint.as_ref().map(|c| c.op))
        .unwrap_or(0)
}

fn entry(op: u64, view: u64, requests: u8) -> Entry {
    let requests = (0..requests % 3)
        .map(|r| Request {
            client: 7,
            session: 1,
            seq: op * 3 + u64::from(r),
            low_water: op,
            epoch: view,
            operation: if r == 1 {
                Operation::Register
            } else {
                Operation::Write(payload(op, (op % 40) as u8))
            },
        })
        .collect();
    Entry {
        op,
        view,
        timestamp_ms: 1000 + op,
        requests,
    }
}

fn write_for(state: &Durable, step: &WriteStep) -> Write {
    let mut w = Write::default();
    let mut tmp = state.clone();
    if let Some(back) = step.truncate_back {
        w.truncate_after = Some(last_op(&tmp).saturating_sub(u64::from(back % 8)));
        tmp.apply(&Write {
            truncate_after: w.truncate_after,
            ..Default::default()
        });
    }
    if let Some(back) = step.checkpoint_back {
        let op = last_op(&tmp).saturating_sub(u64::from(back % 4));
        w.checkpoint = Some(Checkpoint {
            op,
            timestamp_ms: 1000 + op,
            state: payload(op, back),
        });
        tmp.apply(&Write {
            checkpoint: w.checkpoint.clone(),
            ..Default::default()
        });
    }
    let view = state.superblock.map_or(0, |s| s.view);
    let view = view + step.view_bump.map_or(0, |b| u64::from(b % 3));
    let next = last_op(&tmp) + 1;
    w.entries = (next..next + u64::from(step.entries % 4))
        .map(|op| entry(op, view, step.entries >> 2))
        .collect();
    if step.view_bump.is_some() {
        w.superblock = Some(Superblock {
            replica: 0,
            replica_count: 3,
            view,
            last_normal_view: view,
        });
    }
    w
}

fn disk_log(dir: &Path, segment_bytes: u64, steps: &[WriteStep], harm: &[Damage]) {
    disk::init(dir, segment_bytes, 0, 3).expect("init");
    let (mut log, initial) = disk::open(dir, segment_bytes, 0, 3).expect("open after init");
    let mut states = vec![Durable::default(), initial.clone()];
    let mut journal = CoreJournal::new(initial.clone());
    let mut mirror = initial;
    for step in steps.iter().take(STEPS_MAX) {
        let w = write_for(&mirror, step);
        mirror.apply(&w);
        journal.apply(&mut log, w).expect("journal write");
        states.push(mirror.clone());
    }
    log.sync().expect("sync");
    drop(log);
    let (torn_only, _) = damage(dir, harm);
    let (mut log, state) = match disk::open(dir, segment_bytes, 0, 3) {
        Ok(x) => x,
        Err(e) => {
            assert!(!torn_only, "a torn tail refused: {e}");
            return;
        }
    };
    assert!(
        states.contains(&state),
        "recovered a state no prefix of the writes made: {state:?}"
    );
    // The recovered log takes the next write: the next entry, or, from a
    // lost disk, what the core writes when it recovers from a group that has
    // no checkpoint yet (replica.rs, recovery: the whole log replaced).
    let w = if state.superblock.is_none() {
        Write {
            truncate_after: Some(0),
            checkpoint: None,
            entries: vec![entry(1, 1, 1), entry(2, 1, 1)],
            superblock: Some(Superblock {
                replica: 0,
                replica_count: 3,
                view: 1,
                last_normal_view: 1,
            }),
        }
    } else {
        write_for(
            &state,
            &WriteStep {
                truncate_back: None,
                checkpoint_back: None,
                entries: 1,
                view_bump: None,
            },
        )
    };
    let mut expected = state.clone();
    expected.apply(&w);
    CoreJournal::new(state)
        .apply(&mut log, w)
        .expect("write after recovery");
    log.sync().expect("sync after recovery");
    drop(log);
    let (_, again) =
        disk::open(dir, segment_bytes, 0, 3).expect("open after a write after recovery");
    assert_eq!(again, expected, "the write after recovery did not land");
}

fuzz_target!(|input: Input| {
    let dir = common::scratch("log_damage").join("log");
    common::clear(&dir);
    let segment_bytes = 64 + 16 * u64::from(input.segment_bytes);
    match &input.log {
        Kind::Raw { start, steps } => raw(&dir, segment_bytes, *start, steps, &input.damage),
        Kind::Disk { writes } => disk_log(&dir, segment_bytes, writes, &input.damage),
    }
});
