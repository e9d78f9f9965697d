//! The revocation list: certificates a server refuses although the cluster
//! CA signed them.
//!
//! Guarantees:
//! - The list is a text file, [`REVOKED_FILE`] in a server's certificates
//!   folder: one certificate [`crate::certs::fingerprint`] (SHA-256 of the
//!   DER, 64 hex digits, `:` allowed between bytes) per line; `#` starts a
//!   comment. A missing file revokes nothing.
//! - [`RevocationList::is_revoked`] sees a change of the file within
//!   [`RELOAD_INTERVAL`] of it (the file's mtime, size and inode are looked
//!   at no more often than that; it is re-read only when they change), so a
//!   server picks up a revocation without a restart.
//! - A line that is not a fingerprint is reported (logged, once per reload)
//!   and skipped; the other lines still count.
//! - [`append`] adds fingerprints without rewriting existing lines (append,
//!   then fsync).
//!
//! Assumes: every server of a cluster is given the same file (the operator
//! copies it, see docs/operations.md); the file is trusted input (it lives
//! beside the server's own key).

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::error::WireError;

/// Name of the revocation list in a certificates folder.
pub const REVOKED_FILE: &str = "revoked";
/// A change of the file is seen at most this long after it.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The fingerprints of a revocation list file, re-read when it changes.
#[derive(Debug)]
pub struct RevocationList {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    checked: Option<Instant>,
    /// (mtime, size, inode) of the file last read; None: no file.
    stamp: Option<(SystemTime, u64, u64)>,
    revoked: HashSet<String>,
}

impl RevocationList {
    /// The list in `path` (need not exist yet).
    pub fn new(path: PathBuf) -> RevocationList {
        RevocationList { path, inner: Mutex::new(Inner::default()) }
    }

    /// The list of a certificates folder: `certs_dir/revoked`.
    pub fn in_certs_dir(certs_dir: &Path) -> RevocationList {
        RevocationList::new(certs_dir.join(REVOKED_FILE))
    }

    /// The file this list reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the certificate with this fingerprint (lowercase hex) is revoked.
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        let mut inner = self.inner.lock();
        if inner.checked.is_none_or(|t| t.elapsed() >= RELOAD_INTERVAL) {
            self.reload(&mut inner);
        }
        inner.revoked.contains(fingerprint)
    }

    /// Whether `cert` is revoked.
    pub fn is_revoked_cert(&self, cert: &rustls::pki_types::CertificateDer<'_>) -> bool {
        self.is_revoked(&crate::certs::fingerprint(cert))
    }

    fn reload(&self, inner: &mut Inner) {
        inner.checked = Some(Instant::now());
        let stamp = std::fs::metadata(&self.path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()));
        if stamp == inner.stamp {
            return;
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                // Keep what we had: an unreadable list must not un-revoke.
                tracing::error!(file = %self.path.display(), error = %e, "cannot read the revocation list; keeping the previous one");
                return;
            }
        };
        let (revoked, bad) = parse(&text);
        for line in bad {
            tracing::warn!(file = %self.path.display(), line, "revocation list: not a certificate fingerprint; line ignored");
        }
        if revoked != inner.revoked {
            tracing::info!(file = %self.path.display(), revoked = revoked.len(), "revocation list loaded");
        }
        inner.revoked = revoked;
        inner.stamp = stamp;
    }
}

/// A fingerprint in canonical form (64 lowercase hex digits), from hex with
/// optional `:` separators; None if it is not one.
pub fn normalize(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The fingerprints of a list's text, and the lines that are not one.
pub fn parse(text: &str) -> (HashSet<String>, Vec<String>) {
    let mut revoked = HashSet::new();
    let mut bad = Vec::new();
    for line in text.lines() {
        let content = line.split('#').next().unwrap_or("").trim();
        let Some(first) = content.split_whitespace().next() else { continue };
        match normalize(first) {
            Some(fp) => {
                revoked.insert(fp);
            }
            None => bad.push(line.to_string()),
        }
    }
    (revoked, bad)
}

/// Appends `fingerprint` (with `comment`) to the list in `path` unless it is
/// there already; true if it was added.
pub fn append(path: &Path, fingerprint: &str, comment: &str) -> Result<bool, WireError> {
    let io = |source| WireError::Io { path: path.to_path_buf(), source };
    let fp = normalize(fingerprint)
        .ok_or_else(|| WireError::CertGen(format!("{fingerprint:?} is not a SHA-256 fingerprint (64 hex digits)")))?;
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    if parse(&existing).0.contains(&fp) {
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    let sep = if existing.is_empty() || existing.ends_with('\n') { "" } else { "\n" };
    let comment = comment.replace('\n', " ");
    file.write_all(format!("{sep}{fp}  # {comment}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aa00000000000000000000000000000000000000000000000000000000000001";
    const B: &str = "bb00000000000000000000000000000000000000000000000000000000000002";

    #[test]
    fn parses_fingerprints_comments_and_bad_lines() {
        let text = format!("# revoked\n{A}  # host web-1\n\n  {}\nnot-a-fingerprint\n", B.to_uppercase());
        let (set, bad) = parse(&text);
        assert_eq!(set, HashSet::from([A.to_string(), B.to_string()]));
        assert_eq!(bad, vec!["not-a-fingerprint".to_string()]);
        let colons: Vec<String> = A.as_bytes().chunks(2).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
        assert_eq!(normalize(&colons.join(":")).as_deref(), Some(A));
        assert_eq!(normalize("abc"), None);
    }

    #[test]
    fn append_is_idempotent_and_reload_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let list = RevocationList::in_certs_dir(dir.path());
        assert!(!list.is_revoked(A), "no file revokes nothing");
        assert!(append(list.path(), A, "web-1").unwrap());
        assert!(!append(list.path(), A, "web-1 again").unwrap());
        // Seen within the reload interval, without any restart.
        let start = Instant::now();
        while !list.is_revoked(A) {
            assert!(start.elapsed() < RELOAD_INTERVAL * 3, "the change was not seen");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!list.is_revoked(B));
        std::fs::remove_file(list.path()).unwrap();
        let start = Instant::now();
        while list.is_revoked(A) {
            assert!(start.elapsed() < RELOAD_INTERVAL * 3, "the removal was not seen");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(append(list.path(), "not hex", "x").is_err());
    }
}
