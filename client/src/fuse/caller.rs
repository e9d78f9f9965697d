//! Who is asking: the credentials FUSE puts in every request header, plus the
//! supplementary groups, which FUSE does not carry.
//!
//! Groups come from `/proc/<pid>/status` ("Groups:" line). Reading it costs a
//! file open per request, so it is done only for operations whose outcome can
//! depend on them in the state machine (setattr: chown to a group, setgid
//! clearing on chmod; create-type operations: the group of a new node). The
//! kernel already did the rwx checks (default_permissions), so every other
//! request carries an empty list. If the process is gone (pid 0 for
//! kernel-internal requests, or it exited), the list is empty: the state
//! machine then decides from uid/gid alone, which errs on the strict side.

use std::io::Read;

use chorus_fs::ops::Caller;

/// Longest /proc status file we read: the Groups line comes early and a
/// process has at most NGROUPS_MAX (65536) groups, ~7 bytes each.
const STATUS_READ_MAX_BYTES: u64 = 512 * 1024;
/// Most supplementary groups we pass on (Linux NGROUPS_MAX).
const GROUPS_MAX: usize = 65_536;

/// The caller of a FUSE request, without supplementary groups.
pub fn caller(req: &fuser::Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid(), pid: req.pid(), groups: Vec::new() }
}

/// The caller with its supplementary groups read from /proc.
pub fn caller_with_groups(req: &fuser::Request) -> Caller {
    let mut c = caller(req);
    // Root passes every permission check anyway: skip the file read.
    if c.uid != 0 && c.pid != 0 {
        c.groups = groups_of(c.pid);
    }
    c
}

fn groups_of(pid: u32) -> Vec<u32> {
    let Ok(f) = std::fs::File::open(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    let mut text = String::new();
    if f.take(STATUS_READ_MAX_BYTES).read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    parse_groups(&text)
}

/// Parses the "Groups:" line of a /proc status file; absent or malformed
/// entries give an empty list or are skipped.
pub fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| rest.split_whitespace().filter_map(|g| g.parse().ok()).take(GROUPS_MAX).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_line() {
        let s = "Name:\tbash\nUid:\t0\t0\t0\t0\nGroups:\t4 24 27 1000 \nNgid:\t0\n";
        assert_eq!(parse_groups(s), vec![4, 24, 27, 1000]);
        assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Name: x\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Groups: 1 x 3"), vec![1, 3]);
    }

    #[test]
    fn reads_own_groups_without_panicking() {
        let _ = groups_of(std::process::id());
        assert!(groups_of(u32::MAX).is_empty());
    }
}
