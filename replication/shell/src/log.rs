//! The durable log: append-only segment files plus a superblock.
//!
//! Guarantees:
//! - A record is durable once [`SegmentLog::sync`] returned after it was
//!   appended (one `fdatasync` of the active segment; an `fsync` of the
//!   directory too whenever segments were created or removed).
//! - Every record carries a CRC32C over its index and payload. On open, the
//!   log is read back completely: corruption in any segment but the last is an
//!   error ([`LogError::Corrupt`]), never silently skipped. In the last segment
//!   the first bad record ends the log and the file is truncated there (a torn
//!   tail of a write that was never acknowledged) — unless a valid record with
//!   the next index is found anywhere behind it: then synced data was damaged
//!   and that is an error too. (A power loss that wrote a later page of an
//!   unsynced batch but not an earlier one also looks like this: the replica
//!   then refuses to start rather than guess; it is repaired by state
//!   transfer. kill -9 cannot cause it: the page cache survives the process.)
//! - Indexes are contiguous: the first record of an empty log may have any
//!   index ≥ 1 (the log may start after a checkpoint), then each record is the
//!   previous + 1. Asserted on append and checked on open.
//! - The superblock (the replica's durable view state, opaque bytes to this
//!   module) is replaced atomically: write temp, fsync, rename, fsync dir.
//!   A restarted replica reads back exactly the last superblock written.
//!
//! Assumes: one process owns the directory (the shell's single writer thread);
//! rename within a directory is atomic (POSIX); `fdatasync` means what it says.
//!
//! Why segment files and not RocksDB: the log is append-only with whole-prefix
//! truncation, so a sequential file is all it needs; one `fdatasync` per group
//! commit is the whole durability cost, with no WAL + memtable + compaction
//! behind it, recovery is a linear scan we control (and test with torn and
//! flipped bytes), and the crate does not pull RocksDB's 20-minute C++ build.
//!
//! Record layout (little endian):
//! `[len u32][crc32c u32 over index ++ payload][index u64][payload: len bytes]`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Size at which the active segment is closed and a new one started.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Largest payload of one record; anything bigger is refused on append and
/// treated as corruption on read (a garbage length must not make us allocate).
/// Large enough for a snapshot record (checkpoint image + retained entries).
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Bytes of the record header: len, crc, index.
pub const RECORD_HEADER_BYTES: u64 = 16;
/// Largest superblock payload.
pub const SUPERBLOCK_BYTES_MAX: usize = 64 * 1024;

const SEGMENT_SUFFIX: &str = ".seg";
const SUPERBLOCK_NAME: &str = "superblock";
const SUPERBLOCK_TMP_NAME: &str = "superblock.tmp";
/// Magic + version of the superblock file format.
const SUPERBLOCK_MAGIC: &[u8; 8] = b"CHRSB\0\0\x01";

/// Errors of the durable log. IO errors are fatal to the replica: a log that
/// cannot persist must stop acknowledging.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are named for what they hold
pub enum LogError {
    /// A system call failed.
    #[error("log io error at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A record fails its checksum or is out of sequence (not a torn tail).
    #[error("corrupt log segment {path} at byte {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    /// The superblock fails its checksum or format check.
    #[error("corrupt superblock {path}: {reason}")]
    CorruptSuperblock { path: PathBuf, reason: String },
    /// Refused on append.
    #[error("record payload of {len_bytes} bytes exceeds the maximum {RECORD_PAYLOAD_BYTES_MAX}")]
    RecordTooLarge { len_bytes: usize },
    /// Refused on write.
    #[error("superblock of {len_bytes} bytes exceeds the maximum {SUPERBLOCK_BYTES_MAX}")]
    SuperblockTooLarge { len_bytes: usize },
    /// A read outside the log.
    #[error("index {index} is not in the log (first {first}, last {last})")]
    OutOfRange { index: u64, first: u64, last: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

/// One segment file: records with indexes `first_index ..= first_index + offsets.len() - 1`.
struct Segment {
    path: PathBuf,
    file: File,
    first_index: u64,
    /// Byte offset of each record, in index order.
    offsets: Vec<u64>,
    /// Bytes on disk (after the last whole record), excluding `pending`.
    written_bytes: u64,
}

impl Segment {
    fn last_index(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first_index + self.offsets.len() as u64 - 1)
    }
}

/// The durable log of one replica. Single-threaded: the shell's log writer
/// thread owns it (see [`crate::writer`]).
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Sorted by first index; never empty; the last one is active.
    segments: Vec<Segment>,
    /// Encoded records appended to the active segment but not yet written.
    pending: Vec<u8>,
    /// Records in `pending` (their offsets are already in `offsets`).
    pending_records: usize,
    /// Segments were created or removed since the last directory fsync.
    dir_dirty: bool,
}

/// What [`SegmentLog::open`] found on disk.
pub struct Recovered {
    /// Records after a torn tail that were cut off (0 after a clean shutdown).
    pub torn_bytes: u64,
    /// The superblock, if one was ever written.
    pub superblock: Option<Vec<u8>>,
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`, verifying every record.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(SegmentLog, Recovered), LogError> {
        assert!(segment_bytes > RECORD_HEADER_BYTES, "segment size too small");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let _ = fs::remove_file(dir.join(SUPERBLOCK_TMP_NAME));
        let superblock = read_superblock(dir)?;

        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else { continue };
            let Ok(first) = stem.parse::<u64>() else { continue };
            // Indexes start at 1 and a segment must have room for its
            // records: a name of 0 (one flipped bit of ...01.seg) or near
            // u64::MAX is damage, reported, never an overflow (fuzz C1).
            if first == 0 || first > u64::MAX / 2 {
                return Err(LogError::Corrupt {
                    path: entry.path(),
                    offset: 0,
                    reason: format!("segment name {first} is not a possible first index"),
                });
            }
            names.push((first, entry.path()));
        }
        names.sort();

        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: Vec::new(),
            pending: Vec::new(),
            pending_records: 0,
            dir_dirty: false,
        };
        let mut torn_bytes = 0;
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == count;
            if let Some(prev) = log.segments.last() {
                let expected = prev.last_index().map_or(prev.first_index, |l| l + 1);
                if first != expected {
                    return Err(LogError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!("segment starts at index {first}, expected {expected}"),
                    });
                }
            }
            let (segment, torn) = scan_segment(path, first, is_last)?;
            torn_bytes += torn;
            log.segments.push(segment);
        }
        if log.segments.is_empty() {
            log.create_segment(1)?;
        }
        if torn_bytes > 0 {
            let active = log.segments.last().unwrap();
            active.file.sync_data().map_err(io_err(&active.path))?;
        }
        log.sync_dir()?;
        Ok((log, Recovered { torn_bytes, superblock }))
    }

    /// Index of the first record kept, or the index the next append must
    /// have if the log is empty.
    pub fn first_index(&self) -> u64 {
        self.segments[0].first_index
    }

    /// Index of the last record, or `first_index() - 1` if the log is empty.
    pub fn last_index(&self) -> u64 {
        let active = self.segments.last().unwrap();
        active.last_index().unwrap_or(active.first_index - 1)
    }

    /// True if the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.last_index() < self.first_index()
    }

    /// Appends one record (buffered until [`sync`](Self::sync) or the buffer
    /// is flushed). `index` must be `last_index() + 1`, or anything ≥ 1 when
    /// the log is empty (the log then restarts at `index`).
    pub fn append(&mut self, index: u64, payload: &[u8]) -> Result<(), LogError> {
        if payload.len() > RECORD_PAYLOAD_BYTES_MAX as usize {
            return Err(LogError::RecordTooLarge { len_bytes: payload.len() });
        }
        assert!(index >= 1, "log indexes start at 1");
        if self.is_empty() {
            if index != self.first_index() {
                // Restart an empty log at a new index: replace every segment.
                self.flush()?;
                self.remove_segments_from(0)?;
                self.create_segment(index)?;
            }
        } else {
            assert_eq!(index, self.last_index() + 1, "log indexes must be contiguous");
        }
        let record_bytes = RECORD_HEADER_BYTES + payload.len() as u64;
        let active_bytes = self.active_bytes();
        if active_bytes > 0 && active_bytes + record_bytes > self.segment_bytes {
            self.flush()?;
            self.create_segment(index)?;
        }
        let offset = self.active_bytes();
        encode_record(&mut self.pending, index, payload);
        self.pending_records += 1;
        let active = self.segments.last_mut().unwrap();
        active.offsets.push(offset);
        debug_assert_eq!(active.last_index(), Some(index));
        Ok(())
    }

    /// Closes the active segment (if it holds anything): the next append
    /// starts a new segment, so everything before it can later be dropped
    /// whole by [`truncate_prefix`](Self::truncate_prefix).
    pub fn roll(&mut self) -> Result<(), LogError> {
        if self.active_bytes() == 0 {
            return Ok(());
        }
        self.flush()?;
        let active = self.segments.last().unwrap();
        active.file.sync_data().map_err(io_err(&active.path))?;
        self.create_segment(self.last_index() + 1)
    }

    /// Writes buffered records and makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.flush()?;
        let active = self.segments.last().unwrap();
        active.file.sync_data().map_err(io_err(&active.path))?;
        if self.dir_dirty {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Reads the payload of record `index`.
    pub fn read(&mut self, index: u64) -> Result<Vec<u8>, LogError> {
        if index < self.first_index() || index > self.last_index() {
            return Err(LogError::OutOfRange { index, first: self.first_index(), last: self.last_index() });
        }
        self.flush()?;
        let seg_pos = self.segments.partition_point(|s| s.first_index <= index) - 1;
        let segment = &self.segments[seg_pos];
        let offset = segment.offsets[(index - segment.first_index) as usize];
        let mut header = [0u8; RECORD_HEADER_BYTES as usize];
        segment.file.read_exact_at(&mut header, offset).map_err(io_err(&segment.path))?;
        let (len, crc, stored_index) = decode_header(&header);
        let mut payload = vec![0u8; len as usize];
        segment.file.read_exact_at(&mut payload, offset + RECORD_HEADER_BYTES).map_err(io_err(&segment.path))?;
        if stored_index != index || record_crc(stored_index, &payload) != crc {
            return Err(LogError::Corrupt {
                path: segment.path.clone(),
                offset,
                reason: format!("record {index} fails its checksum on read"),
            });
        }
        Ok(payload)
    }

    /// Discards every record after `last_kept` (an uncommitted suffix a view
    /// change replaced). Durable when this returns.
    pub fn truncate_suffix(&mut self, last_kept: u64) -> Result<(), LogError> {
        if last_kept >= self.last_index() {
            return Ok(());
        }
        self.flush()?;
        if last_kept < self.first_index() {
            // Everything goes; the log stays empty at its current first index.
            let first = self.first_index();
            self.remove_segments_from(0)?;
            self.create_segment(first)?;
            return self.sync();
        }
        let seg_pos = self.segments.partition_point(|s| s.first_index <= last_kept + 1) - 1;
        self.remove_segments_from(seg_pos + 1)?;
        let segment = self.segments.last_mut().unwrap();
        let keep = (last_kept + 1 - segment.first_index) as usize;
        let cut_at = segment.offsets[keep];
        segment.offsets.truncate(keep);
        segment.file.set_len(cut_at).map_err(io_err(&segment.path))?;
        segment.written_bytes = cut_at;
        segment.file.sync_data().map_err(io_err(&segment.path))?;
        self.sync_dir()?;
        debug_assert_eq!(self.last_index(), last_kept);
        Ok(())
    }

    /// Drops whole segments whose records all precede `first_needed` (after a
    /// checkpoint). The active segment is always kept, so records below
    /// `first_needed` may remain. Everything appended so far is made durable
    /// first, so the records that supersede the dropped ones are on disk
    /// before those go. Returns the new first index.
    pub fn truncate_prefix(&mut self, first_needed: u64) -> Result<u64, LogError> {
        self.sync()?;
        let mut drop_count = 0;
        while drop_count + 1 < self.segments.len() && self.segments[drop_count + 1].first_index <= first_needed {
            drop_count += 1;
        }
        for segment in self.segments.drain(..drop_count) {
            fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
            self.dir_dirty = true;
        }
        if self.dir_dirty {
            self.sync_dir()?;
        }
        Ok(self.first_index())
    }

    /// Replaces the superblock atomically and durably.
    pub fn write_superblock(&mut self, payload: &[u8]) -> Result<(), LogError> {
        write_superblock(&self.dir, payload)
    }

    /// Bytes appended but not yet written to the file.
    pub fn buffered_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active_bytes(&self) -> u64 {
        self.segments.last().unwrap().written_bytes + self.pending.len() as u64
    }

    fn flush(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let active = self.segments.last_mut().unwrap();
        active.file.write_all_at(&self.pending, active.written_bytes).map_err(io_err(&active.path))?;
        active.written_bytes += self.pending.len() as u64;
        self.pending.clear();
        self.pending_records = 0;
        Ok(())
    }

    fn create_segment(&mut self, first_index: u64) -> Result<(), LogError> {
        assert!(self.pending.is_empty(), "flush before rolling a segment");
        let path = self.dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(io_err(&path))?;
        self.segments.push(Segment { path, file, first_index, offsets: Vec::new(), written_bytes: 0 });
        self.dir_dirty = true;
        Ok(())
    }

    fn remove_segments_from(&mut self, pos: usize) -> Result<(), LogError> {
        for segment in self.segments.drain(pos..) {
            fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
            self.dir_dirty = true;
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), LogError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        self.dir_dirty = false;
        Ok(())
    }
}

fn record_crc(index: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&index.to_le_bytes()), payload)
}

fn encode_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&record_crc(index, payload).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
}

fn decode_header(h: &[u8; RECORD_HEADER_BYTES as usize]) -> (u32, u32, u64) {
    let len = u32::from_le_bytes(h[0..4].try_into().unwrap());
    let crc = u32::from_le_bytes(h[4..8].try_into().unwrap());
    let index = u64::from_le_bytes(h[8..16].try_into().unwrap());
    (len, crc, index)
}

/// Parses the record at `pos` of `data` if it is whole, has index
/// `expected_index` and a good checksum. Returns its total length.
fn parse_record(data: &[u8], pos: usize, expected_index: u64) -> Result<usize, String> {
    let rest = &data[pos..];
    if rest.len() < RECORD_HEADER_BYTES as usize {
        return Err(format!("short header ({} bytes)", rest.len()));
    }
    let (len, crc, index) = decode_header(rest[..RECORD_HEADER_BYTES as usize].try_into().unwrap());
    if len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(format!("length {len} exceeds the maximum"));
    }
    let total = RECORD_HEADER_BYTES as usize + len as usize;
    if rest.len() < total {
        return Err(format!("short record ({} of {total} bytes)", rest.len()));
    }
    if index != expected_index {
        return Err(format!("index {index}, expected {expected_index}"));
    }
    if record_crc(index, &rest[RECORD_HEADER_BYTES as usize..total]) != crc {
        return Err(format!("checksum mismatch in record {index}"));
    }
    Ok(total)
}

/// Reads a whole segment back. See the module doc for the torn-tail rule.
fn scan_segment(path: PathBuf, first_index: u64, is_last: bool) -> Result<(Segment, u64), LogError> {
    let mut file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err(&path))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io_err(&path))?;
    let mut offsets = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let expected = first_index + offsets.len() as u64;
        match parse_record(&data, pos, expected) {
            Ok(total) => {
                offsets.push(pos as u64);
                pos += total;
            }
            Err(reason) => {
                let corrupt = || LogError::Corrupt { path: path.clone(), offset: pos as u64, reason: reason.clone() };
                if !is_last {
                    return Err(corrupt());
                }
                // A torn write leaves garbage only at the end; a valid next
                // record anywhere behind the bad one means synced data was
                // damaged (even a flipped length byte cannot hide it).
                let next_found = (pos + 1..data.len().saturating_sub(RECORD_HEADER_BYTES as usize - 1))
                    .any(|q| parse_record(&data, q, expected + 1).is_ok());
                if next_found {
                    return Err(corrupt());
                }
                break;
            }
        }
    }
    let torn = (data.len() - pos) as u64;
    if torn > 0 {
        tracing::warn!(path = %path.display(), offset = pos, torn_bytes = torn, "truncating torn log tail");
        file.set_len(pos as u64).map_err(io_err(&path))?;
    }
    Ok((Segment { path, file, first_index, offsets, written_bytes: pos as u64 }, torn))
}

fn read_superblock(dir: &Path) -> Result<Option<Vec<u8>>, LogError> {
    let path = dir.join(SUPERBLOCK_NAME);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::Io { path, source: e }),
    };
    let corrupt = |reason: &str| LogError::CorruptSuperblock { path: path.clone(), reason: reason.to_string() };
    if data.len() < 16 || &data[..8] != SUPERBLOCK_MAGIC {
        return Err(corrupt("bad magic or version"));
    }
    let len = u32::from_le_bytes(data[8..12].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(data[12..16].try_into().unwrap());
    if len > SUPERBLOCK_BYTES_MAX || data.len() != 16 + len {
        return Err(corrupt("bad length"));
    }
    let payload = &data[16..];
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(Some(payload.to_vec()))
}

fn write_superblock(dir: &Path, payload: &[u8]) -> Result<(), LogError> {
    if payload.len() > SUPERBLOCK_BYTES_MAX {
        return Err(LogError::SuperblockTooLarge { len_bytes: payload.len() });
    }
    let tmp = dir.join(SUPERBLOCK_TMP_NAME);
    let path = dir.join(SUPERBLOCK_NAME);
    let mut data = Vec::with_capacity(16 + payload.len());
    data.extend_from_slice(SUPERBLOCK_MAGIC);
    data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    data.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    data.extend_from_slice(payload);
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&data).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry-{i}-{}", "x".repeat((i % 7) as usize)).into_bytes()
    }

    fn fill(log: &mut SegmentLog, from: u64, to: u64) {
        for i in from..=to {
            log.append(i, &payload(i)).unwrap();
        }
        log.sync().unwrap();
    }

    fn check(log: &mut SegmentLog, from: u64, to: u64) {
        assert_eq!(log.first_index(), from);
        assert_eq!(log.last_index(), to);
        for i in from..=to {
            assert_eq!(log.read(i).unwrap(), payload(i), "record {i}");
        }
    }

    fn segment_paths(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
        v.sort();
        v
    }

    #[test]
    fn append_reopen_and_roll_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, rec) = SegmentLog::open(dir.path(), 256).unwrap();
            assert_eq!(rec.torn_bytes, 0);
            assert!(log.is_empty());
            fill(&mut log, 1, 100);
            assert!(log.segment_count() > 5);
            check(&mut log, 1, 100);
        }
        let (mut log, rec) = SegmentLog::open(dir.path(), 256).unwrap();
        assert_eq!(rec.torn_bytes, 0);
        check(&mut log, 1, 100);
        fill(&mut log, 101, 120);
        check(&mut log, 1, 120);
    }

    #[test]
    fn torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
            fill(&mut log, 1, 10);
        }
        let seg = segment_paths(dir.path()).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        // Tear the last record in half, as a crash mid-write would.
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
        let (mut log, rec) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert!(rec.torn_bytes > 0);
        check(&mut log, 1, 9);
        fill(&mut log, 10, 12);
        drop(log);
        let (mut log, rec) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.torn_bytes, 0);
        check(&mut log, 1, 12);
    }

    #[test]
    fn zero_filled_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
            fill(&mut log, 1, 5);
        }
        let seg = segment_paths(dir.path()).pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        let (mut log, rec) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.torn_bytes, 100);
        check(&mut log, 1, 5);
    }

    #[test]
    fn flipped_byte_in_last_record_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
            fill(&mut log, 1, 10);
        }
        let seg = segment_paths(dir.path()).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        flip(&seg, len - 2);
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        check(&mut log, 1, 9);
    }

    #[test]
    fn flipped_byte_mid_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
            fill(&mut log, 1, 10);
        }
        let seg = segment_paths(dir.path()).pop().unwrap();
        // Records 1..=3 are 25, 26, 27 bytes: record 4 starts at byte 78.
        for (what, offset) in [("length", 78 + 2), ("crc", 78 + 5), ("index", 78 + 8), ("payload", 78 + 20)] {
            flip(&seg, offset);
            match SegmentLog::open(dir.path(), 1 << 20) {
                Err(LogError::Corrupt { offset: 78, .. }) => {}
                other => panic!("flipped {what}: expected corruption at 78, got {:?}", other.map(|_| ())),
            }
            flip(&seg, offset);
        }
        let (mut log, rec) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.torn_bytes, 0);
        check(&mut log, 1, 10);
    }

    #[test]
    fn flipped_byte_in_older_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = SegmentLog::open(dir.path(), 256).unwrap();
            fill(&mut log, 1, 50);
        }
        let first = segment_paths(dir.path()).remove(0);
        flip(&first, 20);
        match SegmentLog::open(dir.path(), 256) {
            Err(LogError::Corrupt { path, .. }) => assert_eq!(path, first),
            other => panic!("expected corruption, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn truncate_suffix_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 256).unwrap();
        fill(&mut log, 1, 60);
        log.truncate_suffix(23).unwrap();
        check(&mut log, 1, 23);
        fill(&mut log, 24, 30);
        drop(log);
        let (mut log, _) = SegmentLog::open(dir.path(), 256).unwrap();
        check(&mut log, 1, 30);
        log.truncate_suffix(0).unwrap();
        assert!(log.is_empty());
        assert_eq!(log.first_index(), 1);
        fill(&mut log, 1, 3);
        check(&mut log, 1, 3);
    }

    #[test]
    fn truncate_prefix_drops_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 256).unwrap();
        fill(&mut log, 1, 60);
        let before = log.segment_count();
        let first = log.truncate_prefix(40).unwrap();
        assert!(first <= 40 && first > 1, "first {first}");
        assert!(log.segment_count() < before);
        check(&mut log, first, 60);
        drop(log);
        let (mut log, _) = SegmentLog::open(dir.path(), 256).unwrap();
        check(&mut log, first, 60);
        // Roll, then drop everything before the new segment.
        log.roll().unwrap();
        fill(&mut log, 61, 61);
        assert_eq!(log.truncate_prefix(61).unwrap(), 61);
        assert_eq!(log.segment_count(), 1);
        check(&mut log, 61, 61);
        // Beyond the end: the active segment stays.
        log.truncate_prefix(1000).unwrap();
        assert_eq!(log.last_index(), 61);
    }

    #[test]
    fn empty_log_restarts_at_any_index() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 256).unwrap();
        fill(&mut log, 500, 520);
        drop(log);
        let (mut log, _) = SegmentLog::open(dir.path(), 256).unwrap();
        check(&mut log, 500, 520);
    }

    #[test]
    fn superblock_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, rec) = SegmentLog::open(dir.path(), 256).unwrap();
        assert!(rec.superblock.is_none());
        log.write_superblock(b"view 1").unwrap();
        log.write_superblock(b"view 2").unwrap();
        drop(log);
        let (mut log, rec) = SegmentLog::open(dir.path(), 256).unwrap();
        assert_eq!(rec.superblock.as_deref(), Some(&b"view 2"[..]));
        // A leftover temp file from a crash mid-write is ignored.
        fs::write(dir.path().join(SUPERBLOCK_TMP_NAME), b"garbage").unwrap();
        log.write_superblock(b"view 3").unwrap();
        drop(log);
        flip(&dir.path().join(SUPERBLOCK_NAME), 17);
        assert!(matches!(SegmentLog::open(dir.path(), 256), Err(LogError::CorruptSuperblock { .. })));
    }

    fn flip(path: &Path, offset: u64) {
        let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).unwrap();
        b[0] ^= 0x40;
        f.write_all_at(&b, offset).unwrap();
    }
}
