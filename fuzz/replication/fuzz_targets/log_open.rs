//! The replication shell's durable log (`replication/shell/src/log.rs`,
//! `disk.rs`) opened on files of arbitrary bytes: up to four segment files
//! (named by fuzzer-chosen first indexes) and optionally a superblock and a
//! leftover `superblock.tmp`, written into an empty directory.
//!
//! Fails on: a panic or abort anywhere in `SegmentLog::open`, reading the
//! records it recovered, or `disk::open` (the replay of the records through
//! the core's `Durable`); an allocation beyond the RSS limit (a hostile
//! length field); and on these properties:
//! - a log that opened reads back every record between its first and last
//!   index (they passed the scan);
//! - the superblock it returns is present iff the file was written, and is
//!   the file's payload;
//! - recovery is idempotent: opening again finds no torn bytes and the same
//!   records;
//! - the recovered log is usable: a record appended after it, synced and
//!   read after another open, is there, after the same records.
//!
//! Input: `[flags][superblock part if flags&1][tmp part if flags&2]` then
//! per segment (`(flags>>2 & 3) + 1` of them) `[first index u64 LE][part]`;
//! a part is `[len u16 LE][bytes]`, the last segment's is the rest. Seeds:
//! `fuzz/replication/make_seeds.py`.

#![no_main]

mod common;

use chorus_replication_shell::disk;
use chorus_replication_shell::log::SegmentLog;
use common::Parts;
use libfuzzer_sys::fuzz_target;

const SEGMENT_BYTES: u64 = 4096;

fn records(log: &mut SegmentLog) -> Vec<(u64, Vec<u8>)> {
    if log.is_empty() {
        return Vec::new();
    }
    (log.first_index()..=log.last_index())
        .map(|i| {
            (
                i,
                log.read(i)
                    .unwrap_or_else(|e| panic!("record {i} of an opened log does not read: {e}")),
            )
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch("log_open").join("log");
    common::clear(&dir);
    let mut input = Parts(data);
    let flags = input.byte();
    let superblock = (flags & 1 != 0).then(|| input.sized());
    if let Some(sb) = superblock {
        std::fs::write(dir.join("superblock"), sb).unwrap();
    }
    if flags & 2 != 0 {
        std::fs::write(dir.join("superblock.tmp"), input.sized()).unwrap();
    }
    let segments = usize::from(flags >> 2 & 3) + 1;
    for i in 0..segments {
        let first = input.u64();
        let bytes = if i + 1 == segments {
            input.rest()
        } else {
            input.sized()
        };
        // The name the log gives a segment; two equal first indexes make one file.
        std::fs::write(dir.join(format!("{first:020}.seg")), bytes).unwrap();
    }

    let opened = SegmentLog::open(&dir, SEGMENT_BYTES);
    let (before, superblock_read) = match opened {
        Err(_) => {
            // Nothing was repaired: the replica's open refuses it too.
            assert!(
                disk::open(&dir, SEGMENT_BYTES, 0, 3).is_err(),
                "disk::open accepted a log SegmentLog::open refused"
            );
            return;
        }
        Ok((mut log, recovered)) => {
            // Opened, so a superblock file passed its checks: 16 header bytes, then the payload.
            assert_eq!(
                recovered.superblock,
                superblock.map(|sb| sb[16..].to_vec()),
                "superblock"
            );
            (records(&mut log), recovered.superblock)
        }
    };
    assert!(
        !dir.join("superblock.tmp").exists(),
        "a leftover superblock.tmp survived open"
    );

    // The replica's open: replays the records into the core's Durable.
    let _ = disk::open(&dir, SEGMENT_BYTES, 0, 3);

    // Idempotent: a second open sees a clean log with the same records.
    let (mut log, recovered) =
        SegmentLog::open(&dir, SEGMENT_BYTES).expect("second open of an opened log");
    assert_eq!(recovered.torn_bytes, 0, "torn bytes after recovery");
    assert_eq!(recovered.superblock, superblock_read);
    assert_eq!(records(&mut log), before, "records differ on a second open");

    // Usable: append one record, sync, open again.
    let next = if log.is_empty() {
        log.first_index()
    } else {
        log.last_index() + 1
    };
    if next == 0 || next == u64::MAX {
        return; // append asserts index >= 1; u64::MAX leaves no next index
    }
    log.append(next, b"after recovery")
        .expect("append after recovery");
    log.sync().expect("sync after recovery");
    drop(log);
    let (mut log, recovered) = SegmentLog::open(&dir, SEGMENT_BYTES).expect("open after an append");
    assert_eq!(recovered.torn_bytes, 0);
    let mut expected = before;
    expected.push((next, b"after recovery".to_vec()));
    assert_eq!(
        records(&mut log),
        expected,
        "records after an append and reopen"
    );
});
