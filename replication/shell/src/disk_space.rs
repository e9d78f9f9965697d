//! The free space of a replica's disk, sampled for the core's disk reserve.
//!
//! Guarantees: [`DiskGuard::low`] answers from a `statvfs` of the data
//! folder taken at most once per [`SAMPLE_EVERY`] (a syscall, cheap, but the
//! request path need not pay it per request). An unreadable file system
//! counts as not low: the store's own errors then stop the replica cleanly.
//!
//! Why: a replica that runs out of space mid-entry must stop, and with all
//! replicas on similar disks they would all stop at about the same entry.
//! The leader refuses growing commands while its own disk is below the
//! reserve, well before any replica runs out.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often the free space is read again.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Free-space watch on one folder's file system.
pub struct DiskGuard {
    dir: PathBuf,
    reserve_bytes: u64,
    checked_at: Option<Instant>,
    low: bool,
}

impl DiskGuard {
    /// Watches the file system of `dir`; low below `reserve_bytes` free.
    pub fn new(dir: PathBuf, reserve_bytes: u64) -> DiskGuard {
        DiskGuard { dir, reserve_bytes, checked_at: None, low: false }
    }

    /// Whether the free space is below the reserve (sampled).
    pub fn low(&mut self) -> bool {
        if self.checked_at.is_none_or(|t| t.elapsed() >= SAMPLE_EVERY) {
            self.checked_at = Some(Instant::now());
            let was = self.low;
            self.low = free_bytes(&self.dir).is_some_and(|free| free < self.reserve_bytes);
            if self.low != was {
                if self.low {
                    tracing::warn!(dir = %self.dir.display(), reserve_bytes = self.reserve_bytes,
                        "disk below its reserve: commands that need space are refused (ENOSPC) until space is freed");
                } else {
                    tracing::info!(dir = %self.dir.display(), "disk above its reserve again");
                }
            }
        }
        self.low
    }
}

/// Bytes available to unprivileged writers on the file system of `dir`.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_is_low_and_zero_is_not() {
        let dir = std::env::temp_dir();
        assert!(free_bytes(&dir).is_some_and(|f| f > 0));
        assert!(DiskGuard::new(dir.clone(), u64::MAX).low());
        assert!(!DiskGuard::new(dir, 0).low());
    }
}
