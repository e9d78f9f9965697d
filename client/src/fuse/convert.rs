//! Pure conversions between the state machine's types (`chorus_fs::ops`) and
//! fuser's types. No I/O, no panics: every input, however odd, maps to some
//! output (out-of-range times saturate, unknown kinds cannot occur because
//! `FileKind` is closed).
//!
//! Times: `Timestamp { sec, nsec }` is a `timespec` (the value is
//! `sec + nsec/1e9`, so -1.2 s is `{ -2, 800_000_000 }`). fuser 0.18 turns a
//! kernel timespec with negative seconds into a `SystemTime` by subtracting
//! `|sec| + nsec` (its own TODO in time.rs), so [`timestamp_from_fuser_input`]
//! undoes exactly that; outgoing attributes use fuser's correct conversion
//! and only need [`system_time`] to be right.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_fs::ops::{Attr, FileKind, SetTime, Timestamp};
use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};

/// Block size reported in `stat` (st_blksize): the I/O size that tools such
/// as `cp` use for buffers. 4 KiB is what the brief and most tools expect.
pub const STAT_BLKSIZE: u32 = 4096;

pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

/// The correct `SystemTime` of a timespec, including before 1970.
/// Saturates instead of overflowing (SystemTime's range is platform-bounded).
pub fn system_time(ts: Timestamp) -> SystemTime {
    let nsec = ts.nsec.min(999_999_999);
    if ts.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(ts.sec as u64, nsec)).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(ts.sec.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(nsec as u64)))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// The correct timespec of a `SystemTime` (the inverse of [`system_time`]).
#[cfg(test)]
pub fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp::new(i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                Timestamp::new(-secs, 0)
            } else {
                Timestamp::new((-secs).saturating_sub(1), 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// The kernel's timespec behind a `SystemTime` that fuser 0.18 decoded from a
/// request (setattr times). fuser computes `EPOCH - (|sec| s + nsec ns)` for
/// negative seconds, so the before-epoch duration's whole seconds are `|sec|`
/// and its fraction is `nsec`.
pub fn timestamp_from_fuser_input(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp::new(i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            Timestamp::new(-i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos())
        }
    }
}

pub fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timestamp_from_fuser_input(t)),
    }
}

pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.crtime),
        kind: file_type(a.kind),
        // The kind travels separately; only permission, setuid, setgid and
        // sticky bits belong here (fuser ORs in the S_IFMT bits itself).
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: STAT_BLKSIZE,
        flags: 0,
    }
}

/// The attributes of a negative entry (inode 0: "no such name", cached by
/// the kernel for the entry TTL). The kernel reads only the inode number.
pub fn negative_entry_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: STAT_BLKSIZE,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_including_before_epoch() {
        for ts in [
            Timestamp::new(0, 0),
            Timestamp::new(1_700_000_000, 123_456_789),
            Timestamp::new(-1, 0),
            Timestamp::new(-2, 800_000_000),
            Timestamp::new(-1_000_000_000, 1),
        ] {
            assert_eq!(timestamp(system_time(ts)), ts, "{ts:?}");
        }
    }

    #[test]
    fn fuser_input_bug_is_undone() {
        // What fuser 0.18 builds for the kernel timespec { -2, 800_000_000 }.
        let fuser_value = UNIX_EPOCH - Duration::new(2, 800_000_000);
        assert_eq!(timestamp_from_fuser_input(fuser_value), Timestamp::new(-2, 800_000_000));
        let after = UNIX_EPOCH + Duration::new(5, 7);
        assert_eq!(timestamp_from_fuser_input(after), Timestamp::new(5, 7));
    }

    #[test]
    fn extreme_times_saturate_without_panic() {
        let _ = system_time(Timestamp::new(i64::MAX, 999_999_999));
        let _ = system_time(Timestamp::new(i64::MIN, 999_999_999));
        let _ = system_time(Timestamp::new(0, u32::MAX));
    }

    #[test]
    fn attr_maps_perm_and_kind() {
        let a = Attr {
            ino: 7,
            kind: FileKind::Dir,
            perm: 0o41777,
            nlink: 2,
            uid: 1,
            gid: 2,
            rdev: 0,
            size: 4096,
            blocks: 8,
            atime: Timestamp::new(1, 2),
            mtime: Timestamp::new(3, 4),
            ctime: Timestamp::new(5, 6),
            crtime: Timestamp::new(0, 0),
            version: 9,
        };
        let f = file_attr(&a);
        assert_eq!(f.perm, 0o1777);
        assert_eq!(f.kind, FileType::Directory);
        assert_eq!(f.ino, INodeNo(7));
        assert_eq!(f.blksize, 4096);
    }
}
