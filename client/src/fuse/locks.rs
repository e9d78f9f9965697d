//! File locks through the mount: fcntl byte-range locks (F_SETLK, F_SETLKW,
//! F_GETLK, OFD locks) and flock, held by the cluster (see the store's
//! `locks` module), so every mount sees every other mount's locks.
//!
//! Guarantees:
//! - A waiting lock (F_SETLKW, flock without LOCK_NB) never holds a FUSE
//!   worker thread: it waits on a thread of its own, retrying the
//!   non-waiting request with a growing pause (up to
//!   [`LOCK_RETRY_PAUSE_MAX`]), and gives up with EINTR as soon as the
//!   waiting process has a signal to handle or is gone, as a local wait
//!   would be interrupted. At most [`LOCK_WAITERS_MAX`] wait at once
//!   (ENOLCK beyond).
//! - POSIX locks of an owner are dropped when the owner closes the file
//!   (the kernel sends FLUSH and leaves it to us); only owners that took a
//!   lock through this mount cost a round trip at close.
//!
//! Assumes: locks taken through a handle go with its release (the server
//! does it), and a mount that dies loses its locks when its session ends.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chorus_fs::ops::{self, Caller, FileLock, Ino, Op, OpResult, Request};
use parking_lot::Mutex;

use crate::backend::Backend;

/// Most lock requests of one mount waiting for a conflicting lock at once.
pub const LOCK_WAITERS_MAX: usize = 256;
/// Longest pause between two tries of a waiting lock request.
pub const LOCK_RETRY_PAUSE_MAX: Duration = Duration::from_millis(50);
const LOCK_RETRY_PAUSE_FIRST: Duration = Duration::from_millis(1);

/// What the mount knows of its own locks.
#[derive(Default)]
pub struct MountLocks {
    /// (inode, lock owner) pairs that took a lock here: closing the file
    /// must release their POSIX locks.
    owners: Mutex<HashSet<(Ino, u64)>>,
    waiters: AtomicUsize,
}

impl MountLocks {
    /// Records a granted lock request.
    pub fn granted(&self, ino: Ino, lock: &FileLock) {
        if lock.typ != libc::F_UNLCK {
            self.owners.lock().insert((ino, lock.owner));
        }
    }

    /// Whether `owner` may hold locks on `ino` that a close must release
    /// (and forgets it: the release follows).
    pub fn take_owner(&self, ino: Ino, owner: u64) -> bool {
        self.owners.lock().remove(&(ino, owner))
    }

    /// Runs `op` (a SetLock that conflicted) again and again on a thread of
    /// its own until it is granted, fails otherwise, or process `pid` is
    /// interrupted; then calls `done` with the outcome.
    pub fn wait(self: &Arc<Self>, backend: Arc<dyn Backend>, caller: Caller, op: Op, done: impl FnOnce(OpResult) + Send + 'static) {
        if self.waiters.fetch_add(1, Ordering::SeqCst) >= LOCK_WAITERS_MAX {
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            return done(Err(ops::Errno(libc::ENOLCK)));
        }
        let locks = self.clone();
        let pid = caller.pid;
        let spawned = std::thread::Builder::new().name("chorus-lock-wait".into()).spawn(move || {
            let mut pause = LOCK_RETRY_PAUSE_FIRST;
            let result = loop {
                if interrupted(pid) {
                    break Err(ops::Errno(libc::EINTR));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(LOCK_RETRY_PAUSE_MAX);
                match backend.call(Request::Mutate { caller: caller.clone(), op: op.clone() }) {
                    Err(ops::Errno(libc::EAGAIN)) => continue,
                    other => break other,
                }
            };
            if let (Ok(_), Op::SetLock { ino, lock, .. }) = (&result, &op) {
                locks.granted(*ino, lock);
            }
            locks.waiters.fetch_sub(1, Ordering::SeqCst);
            done(result);
        });
        if spawned.is_err() {
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            // No thread to wait on: `done` went with the closure that could
            // not run, and dropping an unanswered FUSE reply answers EIO.
            tracing::warn!("cannot start a thread to wait for a lock");
        }
    }
}

/// Whether process `pid` has an unblocked, unignored signal pending (a
/// local lock wait would return EINTR) or is gone.
fn interrupted(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return true };
    let mask = |name: &str| -> u64 {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_pending_signals_is_not_interrupted_and_a_gone_one_is() {
        assert!(!interrupted(std::process::id()));
        assert!(interrupted(u32::MAX - 1), "no such process");
        assert!(!interrupted(0), "kernel-internal requests wait");
    }

    #[test]
    fn closing_releases_only_owners_that_locked() {
        let locks = MountLocks::default();
        let lock = FileLock { owner: 9, start: 0, end: 10, typ: libc::F_WRLCK, pid: 1 };
        locks.granted(5, &lock);
        locks.granted(5, &FileLock { owner: 10, typ: libc::F_UNLCK, ..lock });
        assert!(!locks.take_owner(5, 10));
        assert!(locks.take_owner(5, 9));
        assert!(!locks.take_owner(5, 9), "once");
    }
}
