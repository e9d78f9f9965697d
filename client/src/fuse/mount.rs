//! Mounting and unmounting: turns the failure modes people actually hit
//! (missing or busy mount point, no /dev/fuse, not root) into one-line
//! errors, runs fuser's multi-threaded session in the background, and makes
//! sure an unmount never hangs the caller forever.
//!
//! Assumes: Linux, running as root. We call mount(2) ourselves, as libfuse
//! does, and give fuser only the /dev/fuse descriptor (`Session::from_fd`):
//! there is no fusermount3 on these machines, hence no AutoUnmount. A daemon
//! killed without unmounting leaves a dead mount ("Transport endpoint is not
//! connected"): [`force_unmount`] clears it.
//!
//! Unmount protocol ([`MountHandle::unmount`]): umount(2); if busy, lazy
//! detach (MNT_DETACH) so the name is free at once; then wait (bounded) for
//! the session threads to see the connection end. If they don't (a process
//! still holds a file open in a detached mount, or a backend call hangs), the
//! connection is aborted through fusectl when it is mounted, and as a last
//! resort the session thread is left behind rather than blocking the caller.
//! The invalidation thread (`super::invalidate`) starts with the session and
//! stops after it (bounded), so recalls are applied until the kernel lets go.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, Notifier, SessionACL};
use thiserror::Error;
use tracing::warn;

use super::fs::ChorusFuse;
use super::invalidate::{ExpireNotifier, Invalidator};
use crate::cache::{CacheControl, Limits, MountCache};
use crate::Backend;

const DEV_FUSE: &str = "/dev/fuse";
/// Where fusectl exposes one folder per FUSE connection (with an `abort` file).
const FUSECTL_DIR: &str = "/sys/fs/fuse/connections";
/// How long unmount waits for the session threads after the kernel let go.
const SESSION_EXIT_WAIT: Duration = Duration::from_secs(5);
/// After a lazy detach (files still open inside) the connection lives on
/// until they close; we are shutting down, so abort after this grace period.
const DETACHED_GRACE: Duration = Duration::from_secs(1);
/// Most FUSE worker threads one mount may ask for (each holds a 16 MiB buffer).
const THREADS_MAX: usize = 64;
/// How long unmount waits for the invalidation thread (a notification stuck
/// in the kernel ends with the connection).
const INVALIDATOR_STOP_WAIT: Duration = Duration::from_secs(2);

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let users other than the mounting one in (pjdfstest switches uids).
    /// The kernel still checks permissions (default_permissions).
    pub allow_other: bool,
    /// FUSE worker threads, each with its own /dev/fuse clone: one slow
    /// request (a network round trip) does not stall the others.
    pub threads: usize,
    /// Cache under the callbacks the backend grants: the kernel keeps
    /// attributes, names and pages for as long as a lease holds. Off (or
    /// with a backend that grants none) every TTL is 0: the kernel asks
    /// every time, and never serves anything stale.
    pub callbacks: bool,
    /// The "source" shown by mount(8) and in /proc/mounts.
    pub fsname: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { allow_other: true, threads: 4, callbacks: true, fsname: "chorusfs".into() }
    }
}

/// Why a mount failed; each message is one line that says what to do.
#[derive(Debug, Error)]
pub enum MountError {
    #[error("mount point {0} does not exist")]
    MissingMountPoint(PathBuf),
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("mount point {path} is busy: {why} (unmount it first: umount -l {path})")]
    Busy { path: PathBuf, why: &'static str },
    #[error("/dev/fuse is missing: load the fuse module or run in a container with /dev/fuse")]
    NoDevFuse,
    #[error("permission denied mounting at {path}: {why}")]
    PermissionDenied { path: PathBuf, why: String },
    #[error("invalid mount options: {0}")]
    InvalidOptions(String),
    #[error("mounting at {path} failed: {source}")]
    Failed { path: PathBuf, source: io::Error },
}

/// Why an unmount was not clean. The mount point is detached in every case
/// but the last: the caller can reuse it.
#[derive(Debug, Error)]
pub enum UnmountError {
    #[error("cannot unmount {path}: {source}")]
    Umount { path: PathBuf, source: io::Error },
    #[error("unmounted {0}, but the FUSE session did not stop within {1:?}; left it running in the background")]
    SessionStuck(PathBuf, Duration),
    #[error("the FUSE session of {path} ended with an error: {source}")]
    Session { path: PathBuf, source: io::Error },
}

/// A live mount. Dropping it unmounts (errors are logged, not lost silently).
pub struct MountHandle {
    session: Option<BackgroundSession>,
    /// Sends the kernel invalidations of recalls and lapsed leases.
    invalidator: Option<Invalidator>,
    notifier: Notifier,
    mountpoint: PathBuf,
    /// fusectl connection number (the mount's minor device number), to abort
    /// a connection whose session would not stop.
    conn_id: Option<u32>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle").field("mountpoint", &self.mountpoint).field("conn_id", &self.conn_id).finish()
    }
}

impl MountHandle {
    /// The mount point as mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Sends kernel cache invalidations (inval_inode / inval_entry). Use it
    /// only from a task of its own, never from inside a FUSE request handler
    /// or while holding a lock a handler may wait for: the kernel may wait
    /// for a handler while processing the notification.
    pub fn notifier(&self) -> Notifier {
        self.notifier.clone()
    }

    /// Unmounts and stops the session threads, then the invalidation
    /// thread. Idempotent.
    pub fn unmount(&mut self) -> Result<(), UnmountError> {
        let r = self.unmount_session();
        if let Some(mut inv) = self.invalidator.take() {
            inv.stop(INVALIDATOR_STOP_WAIT);
        }
        r
    }

    fn unmount_session(&mut self) -> Result<(), UnmountError> {
        let Some(session) = self.session.take() else { return Ok(()) };
        let path = self.mountpoint.clone();
        let mut first_error = None;
        let mut grace = SESSION_EXIT_WAIT;
        if let Err(e) = umount(&path, false) {
            match e.raw_os_error() {
                // Already gone (someone ran umount): fine.
                Some(libc::EINVAL) | Some(libc::ENOENT) => {}
                // Open files inside: detach the name now; the kernel ends
                // the connection when the last user goes.
                _ => {
                    grace = DETACHED_GRACE;
                    if let Err(e2) = umount(&path, true) {
                        if !matches!(e2.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                            first_error = Some(UnmountError::Umount { path: path.clone(), source: e2 });
                        }
                    }
                }
            }
        }
        if !wait_finished(&session, grace) {
            if let Some(id) = self.conn_id {
                abort_connection(id);
            }
            if !wait_finished(&session, SESSION_EXIT_WAIT) {
                // Dropping a BackgroundSession detaches its thread; its fuser
                // Mount then tries umount once more and logs the harmless error.
                drop(session);
                return Err(first_error.unwrap_or(UnmountError::SessionStuck(path, grace + SESSION_EXIT_WAIT)));
            }
        }
        let joined = session.join();
        if let Some(e) = first_error {
            return Err(e);
        }
        joined.map_err(|source| UnmountError::Session { path, source })
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            warn!(error = %e, "unmount on drop failed");
        }
    }
}

fn wait_finished(session: &BackgroundSession, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !session.guard.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Aborts a FUSE connection through fusectl: pending and future requests
/// fail with ENOTCONN and the session threads see the device close. fusectl
/// is often not mounted in containers; as root we mount it on demand (the
/// same thing systemd does at boot).
fn abort_connection(id: u32) {
    let dir = Path::new(FUSECTL_DIR).join(id.to_string());
    if !dir.exists() {
        let src = CString::new("fusectl").expect("static string has no NUL");
        let target = CString::new(FUSECTL_DIR).expect("static string has no NUL");
        // SAFETY: all pointers are valid NUL-terminated strings or null.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            warn!(error = %io::Error::last_os_error(), "cannot mount fusectl to abort a stuck FUSE connection");
        }
    }
    let p = dir.join("abort");
    if let Err(e) = std::fs::write(&p, b"1") {
        warn!(path = %p.display(), error = %e, "cannot abort FUSE connection");
    }
}

fn umount(path: &Path, lazy: bool) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `umount -l PATH`: detaches whatever is mounted there, also a dead FUSE
/// mount left by a killed daemon. For tests' teardown; errors (nothing
/// mounted, no permission) are ignored because teardown must go on.
pub fn force_unmount(path: &Path) {
    if let Err(e) = umount(path, true) {
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            warn!(path = %path.display(), error = %e, "force unmount failed");
        }
    }
}

/// One line of /proc/self/mountinfo that matters here.
struct MountInfo {
    dev_minor: Option<u32>,
    dev_major: Option<u32>,
}

/// Undoes mountinfo's octal escapes (`\040` for space, `\134` for
/// backslash, ...); anything malformed is kept as is.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The mount whose mount point is exactly `path` (the last one, i.e. the
/// top of the stack), from mountinfo text.
fn find_mount(mountinfo: &str, path: &Path) -> Option<MountInfo> {
    let want = path.as_os_str().as_bytes();
    mountinfo.lines().rev().find_map(|line| {
        let mut f = line.split(' ');
        let (_id, _parent, dev, _root, mp) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        if unescape_mountinfo(mp) != want {
            return None;
        }
        let (maj, min) = dev.split_once(':').unzip();
        Some(MountInfo { dev_major: maj.and_then(|m| m.parse().ok()), dev_minor: min.and_then(|m| m.parse().ok()) })
    })
}

fn mounted_at(path: &Path) -> Option<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_mount(&text, path)
}

/// Mounts the file system at `mountpoint` and serves it from background
/// threads until the handle is unmounted or dropped.
pub fn mount(backend: Arc<dyn Backend>, mountpoint: &Path, opts: MountOptions) -> Result<MountHandle, MountError> {
    let given = mountpoint.to_path_buf();
    if opts.threads == 0 || opts.threads > THREADS_MAX {
        return Err(MountError::InvalidOptions(format!("threads must be 1..={THREADS_MAX}, got {}", opts.threads)));
    }
    if opts.fsname.is_empty() || opts.fsname.contains([',', ' ', '\t', '\n', '\\']) {
        return Err(MountError::InvalidOptions(format!(
            "fsname {:?} must be non-empty without commas, blanks or backslashes",
            opts.fsname
        )));
    }

    // stat() first: it tells missing from not-a-directory from a dead FUSE
    // mount (ENOTCONN), which canonicalize() would all report alike.
    match std::fs::metadata(mountpoint) {
        Ok(m) if !m.is_dir() => return Err(MountError::NotADirectory(given)),
        Ok(_) => {}
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => MountError::MissingMountPoint(given),
                Some(libc::ENOTDIR) => MountError::NotADirectory(given),
                Some(libc::ENOTCONN) => MountError::Busy { path: given, why: "a dead FUSE mount is still there" },
                Some(libc::EACCES) | Some(libc::EPERM) => MountError::PermissionDenied { path: given, why: e.to_string() },
                _ => MountError::Failed { path: given, source: e },
            });
        }
    }
    let canon = mountpoint.canonicalize().map_err(|e| MountError::Failed { path: given.clone(), source: e })?;
    if mounted_at(&canon).is_some() {
        return Err(MountError::Busy { path: canon, why: "something is already mounted there" });
    }
    if !Path::new(DEV_FUSE).exists() {
        return Err(MountError::NoDevFuse);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(MountError::PermissionDenied {
            path: canon,
            why: "mounting needs root (there is no fusermount3 helper on this machine)".into(),
        });
    }
    // We mount ourselves and hand fuser only the /dev/fuse descriptor:
    // mount(2)'s errno arrives intact (fuser folds it into text), and fuser
    // holds no mount of its own that it would try to unmount a second time
    // at exit (a noisy warning, and a hazard if something else is mounted
    // there by then).
    let dev = open_dev_fuse(&canon)?;
    sys_mount(&dev, &canon, &opts).map_err(|e| mount_errno(e, &canon))?;
    // A second descriptor of the connection for the notifications fuser
    // does not offer (expiring a name, `super::invalidate`); without it
    // names are dropped instead, which is only slower.
    let expirer = match dev.try_clone() {
        Ok(d) => Some(ExpireNotifier::new(OwnedFd::from(d))),
        Err(e) => {
            warn!(error = %e, "cannot duplicate the /dev/fuse descriptor; a new leader will drop cached names instead of expiring them");
            None
        }
    };
    let mut config = Config::default();
    config.acl = if opts.allow_other { SessionACL::All } else { SessionACL::Owner };
    config.n_threads = Some(opts.threads);
    config.clone_fd = opts.threads > 1;
    let cache = Arc::new(MountCache::new(opts.callbacks, Limits::default()));
    let fs = ChorusFuse::new(backend.clone(), cache.clone());
    // from_fd reads the kernel's INIT (sent at mount) and answers it.
    let session = match fuser::Session::from_fd(fs, OwnedFd::from(dev), config.acl, config) {
        Ok(s) => s,
        Err(e) => {
            force_unmount(&canon);
            return Err(MountError::Failed { path: canon, source: e });
        }
    };
    let notifier = session.notifier();
    let invalidator = match Invalidator::start(cache.clone(), notifier.clone(), expirer) {
        Ok(i) => i,
        Err(e) => {
            force_unmount(&canon);
            return Err(MountError::Failed { path: canon, source: e });
        }
    };
    let session = match session.spawn() {
        Ok(s) => s,
        Err(e) => {
            force_unmount(&canon);
            return Err(MountError::Failed { path: canon, source: e });
        }
    };
    // From now on the backend reports recalls and new leaders here.
    backend.attach(CacheControl::new(cache));
    let conn_id = mounted_at(&canon).and_then(|m| match m.dev_major {
        // fusectl names a connection by its device number; FUSE mounts use
        // anonymous devices (major 0), whose number is the minor.
        Some(0) => m.dev_minor,
        _ => None,
    });
    Ok(MountHandle { session: Some(session), invalidator: Some(invalidator), notifier, mountpoint: canon, conn_id })
}

fn open_dev_fuse(path: &Path) -> Result<std::fs::File, MountError> {
    // std opens with O_CLOEXEC: the descriptor does not leak into children.
    std::fs::OpenOptions::new().read(true).write(true).open(DEV_FUSE).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => MountError::NoDevFuse,
        Some(libc::EACCES) | Some(libc::EPERM) => {
            MountError::PermissionDenied { path: path.to_path_buf(), why: format!("cannot open {DEV_FUSE}: {e}") }
        }
        _ => MountError::Failed { path: path.to_path_buf(), source: e },
    })
}

/// mount(2) of a FUSE file system served through `dev`, as libfuse does it:
/// type "fuse.chorusfs" (shown in /proc/mounts), source = fsname, nosuid and
/// nodev (another client could otherwise plant a setuid binary or a device
/// node here), noatime (an atime update would be a replicated write per
/// read), default_permissions (the kernel does the rwx checks with our
/// attributes), allow_other if asked.
fn sys_mount(dev: &std::fs::File, mountpoint: &Path, opts: &MountOptions) -> io::Result<()> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut data = format!("fd={},rootmode={:o},user_id={uid},group_id={gid},default_permissions", dev.as_raw_fd(), libc::S_IFDIR);
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    let bad = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let source = CString::new(opts.fsname.as_str()).map_err(bad)?;
    let target = CString::new(mountpoint.as_os_str().as_bytes()).map_err(bad)?;
    let fstype = CString::new("fuse.chorusfs").map_err(bad)?;
    let data = CString::new(data).map_err(bad)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Maps mount(2)'s errno onto MountError.
fn mount_errno(e: io::Error, path: &Path) -> MountError {
    let path = path.to_path_buf();
    match e.raw_os_error() {
        Some(libc::EBUSY) => MountError::Busy { path, why: "the kernel reports it busy" },
        Some(libc::ENODEV) => MountError::NoDevFuse,
        Some(libc::ENOENT) => MountError::MissingMountPoint(path),
        Some(libc::ENOTDIR) => MountError::NotADirectory(path),
        Some(libc::EPERM) | Some(libc::EACCES) => MountError::PermissionDenied { path, why: e.to_string() },
        _ => MountError::Failed { path, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
        95 30 0:52 / /tmp/with\\040space rw,nosuid,nodev,relatime - fuse.chorusfs chorusfs rw,user_id=0\n\
        96 30 0:53 / /mnt/x rw - fuse.chorusfs chorusfs rw\n\
        97 96 0:54 / /mnt/x rw - fuse.chorusfs chorusfs rw\n";

    #[test]
    fn finds_mounts_with_escapes_and_stacking() {
        let m = find_mount(INFO, Path::new("/tmp/with space")).unwrap();
        assert_eq!((m.dev_major, m.dev_minor), (Some(0), Some(52)));
        let top = find_mount(INFO, Path::new("/mnt/x")).unwrap();
        assert_eq!(top.dev_minor, Some(54));
        assert!(find_mount(INFO, Path::new("/mnt")).is_none());
        assert!(find_mount("garbage\n\n1 2", Path::new("/")).is_none());
    }

    #[test]
    fn unescape_handles_odd_input() {
        assert_eq!(unescape_mountinfo("a\\134b"), b"a\\b");
        assert_eq!(unescape_mountinfo("tail\\"), b"tail\\");
        assert_eq!(unescape_mountinfo("x\\9zz"), b"x\\9zz");
    }

    #[test]
    fn mount_errors_are_one_line_and_clear() {
        let be: Arc<dyn Backend> = Arc::new(|_req: chorus_fs::ops::Request| Err(chorus_fs::ops::Errno(libc::EIO)));
        let e = mount(be.clone(), Path::new("/definitely/not/here"), MountOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "mount point /definitely/not/here does not exist");
        let f = tempfile_path();
        std::fs::write(&f, b"x").unwrap();
        let e = mount(be.clone(), &f, MountOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), format!("mount point {} is not a directory", f.display()));
        std::fs::remove_file(&f).unwrap();
        // "/" is always a mount point.
        let e = mount(be, Path::new("/"), MountOptions::default()).unwrap_err();
        assert!(matches!(e, MountError::Busy { .. }), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    fn tempfile_path() -> PathBuf {
        std::env::temp_dir().join(format!("chorus-client-notdir-{}", std::process::id()))
    }
}
