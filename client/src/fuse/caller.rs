//! Who is asking: the credentials FUSE puts in every request header, plus the
//! supplementary groups, which FUSE does not carry.
//!
//! The state machine repeats Linux's permission checks (search permission on
//! every lookup, write permission on create/unlink, group rules of chown and
//! chmod, xattr namespaces), so for a non-root caller it needs the same
//! supplementary groups the kernel used, or it would refuse what the kernel
//! allowed (pjdfstest runs many cases with `-g gid,group2,...`). Groups come
//! from `/proc/<pid>/status` ("Groups:"), a file read per request, so only
//! where the answer can depend on them ([`op_needs_groups`],
//! [`query_needs_groups`]): not for writes (checked at open), handle
//! bookkeeping (release, fsync, fallocate) or getattr/readlink/statfs, and
//! never for root, who passes every check anyway. If the process is gone
//! (pid 0 for kernel-internal requests, or it exited) the list is empty and
//! the state machine decides from uid/gid alone: strict, never laxer.

use std::io::Read;

use chorus_fs::ops::{Caller, Op, Query};

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

/// Whether the state machine's answer to `op` can depend on the caller's
/// supplementary groups.
pub fn op_needs_groups(op: &Op) -> bool {
    !matches!(
        op,
        Op::Write { .. }
            | Op::Release { .. }
            | Op::Fsync { .. }
            | Op::Fallocate { .. }
            | Op::SetLock { .. }
            | Op::GetLock { .. }
            | Op::KeepAlive
    )
}

/// Same for queries: lookups (search permission), read and readdir (read
/// permission: the server checks queries too, see chorus-fs `perm`), xattrs.
pub fn query_needs_groups(q: &Query) -> bool {
    !matches!(q, Query::GetAttr { .. } | Query::ReadLink { .. } | Query::StatFs)
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
