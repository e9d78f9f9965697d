//! Checkpoints by reference: a checkpoint is a directory of immutable files
//! (e.g. a RocksDB checkpoint: hard links to SST and blob files plus small
//! copies) described by a [`Manifest`] that names every file with its size
//! and CRC32C. The manifest, not the files, travels inside the replication
//! core's messages; the files travel here, over their own QUIC streams.
//!
//! Guarantees:
//! - A checkpoint directory counts only once it is complete: its files were
//!   written, checked against the manifest and fsynced, then the manifest was
//!   written into it ([`MANIFEST_FILE`]) and the directory renamed into
//!   place. A crash at any point leaves either no checkpoint or a whole one;
//!   leftovers (`*.tmp`, `*.partial`) are reused or removed.
//! - Nothing is restored from a file whose size or CRC32C differs from the
//!   manifest ([`verify`]): a flipped byte is reported with the file's name.
//! - Transfers are resumable: a fetched file is written to the partial
//!   directory as it arrives, and a retry continues at its length. Files the
//!   joiner already holds (same name, size and CRC in another complete local
//!   checkpoint) are hard-linked instead of fetched, so following a donor's
//!   newer checkpoint costs only the files that changed.
//! - Donors serve only complete checkpoints, only to replicas of the cluster
//!   (the connection's certificate), and only names that stay inside the
//!   checkpoint root. Serving runs on its own tasks and streams: the donor's
//!   event loop never waits for it.
//! - Every wait is bounded ([`CHUNK_TIMEOUT`]); one fetch runs at a time.
//!
//! Assumes: checkpoint files are never modified after the manifest is made
//! (RocksDB never rewrites SST/blob files; the small ones are copies).
//!
//! Why not inside the core's messages: a state of gigabytes cannot be a
//! message, and the replica's event loop must keep serving while a joiner
//! copies it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_replication::{Op, ReplicaId};
use chorus_wire::certs::Role;
use chorus_wire::{codec, frame};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The manifest's file name inside a complete checkpoint directory.
pub const MANIFEST_FILE: &str = "CHORUS-MANIFEST";
/// Bytes per read/write while copying or hashing.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Longest wait for a donor to answer or send the next chunk.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a connection to a donor (a dead one never answers).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Files in one manifest.
pub const FILES_MAX: usize = 100_000;
/// Attempts per fetch before giving up (the core asks again later).
pub const FETCH_ATTEMPTS_MAX: u32 = 3;
/// Files fetched at once (one QUIC stream each).
pub const FETCH_STREAMS_MAX: usize = 4;
const MANIFEST_VERSION: u8 = 1;
const FETCH_STREAM_TAG: u8 = 0xC7;

/// One immutable file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Plain file name (no directories).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC32C of the whole file.
    pub crc32c: u32,
}

/// What a checkpoint holds; the state machine's checkpoint "state" bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u8,
    /// Directory name under the checkpoint root (unique per creator and op).
    pub name: String,
    /// The state machine's applied entry at the checkpoint.
    pub op: Op,
    /// Every file, sorted by name.
    pub files: Vec<FileEntry>,
}

/// A checkpoint that is missing, incomplete or damaged.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFileError {
    /// I/O on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest bytes do not decode or break a rule.
    #[error("bad checkpoint manifest: {0}")]
    BadManifest(String),
    /// A file's size or checksum differs from the manifest.
    #[error("checkpoint {checkpoint}: file {file} is damaged ({detail}); it will not be used")]
    Damaged {
        /// Checkpoint directory name.
        checkpoint: String,
        /// File name.
        file: String,
        /// What differs.
        detail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointFileError + '_ {
    move |source| CheckpointFileError::Io { path: path.display().to_string(), source }
}

fn safe_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl Manifest {
    /// Encodes the manifest (what the core carries).
    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serialize(self).expect("manifest encodes")
    }

    /// Decodes and checks a manifest (names are plain, files bounded).
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, CheckpointFileError> {
        let m: Manifest = bincode::deserialize(bytes).map_err(|e| CheckpointFileError::BadManifest(e.to_string()))?;
        if m.version != MANIFEST_VERSION {
            return Err(CheckpointFileError::BadManifest(format!("version {} (expected {MANIFEST_VERSION})", m.version)));
        }
        if !safe_name(&m.name) || m.files.len() > FILES_MAX || m.files.iter().any(|f| !safe_name(&f.name) || f.name == MANIFEST_FILE) {
            return Err(CheckpointFileError::BadManifest(format!("unsafe or too many names in {}", m.name)));
        }
        // The total must be a number ([`Manifest::bytes`]): sizes that
        // overflow it come only from damage or a hostile peer (fuzz C3).
        if m.files.iter().try_fold(0u64, |total, f| total.checked_add(f.bytes)).is_none() {
            return Err(CheckpointFileError::BadManifest(format!("file sizes of {} overflow their total", m.name)));
        }
        Ok(m)
    }

    /// Total bytes of its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// CRC32C and length of a file.
pub fn file_crc(path: &Path) -> Result<(u64, u32), CheckpointFileError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let (mut crc, mut bytes) = (0u32, 0u64);
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok((bytes, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        bytes += n as u64;
    }
}

fn fsync_dir(dir: &Path) -> Result<(), CheckpointFileError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// What a cached checksum belongs to: one file (device and inode, which
/// every hard link of it shares), at one size and modification time. Not
/// its name: a store restored from another checkpoint (or another
/// replica's) numbers its new files from that checkpoint's counter, so one
/// name can hold different bytes of the same size over a replica's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    bytes: u64,
    mtime_ns: i128,
}

impl FileIdentity {
    fn of(meta: &fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            bytes: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

/// CRC32C sums of immutable files already read, so sealing a checkpoint
/// reads only the files that are new since the last one.
pub type CrcCache = std::collections::HashMap<FileIdentity, u32>;

/// Drops the sums of files no complete checkpoint under `root` holds any
/// more (their inodes may be reused).
pub fn forget_unkept(root: &Path, cache: &mut CrcCache) {
    let mut kept = std::collections::HashSet::new();
    for m in list(root) {
        for f in &m.files {
            if let Ok(meta) = fs::metadata(root.join(&m.name).join(&f.name)) {
                kept.insert(FileIdentity::of(&meta));
            }
        }
    }
    cache.retain(|k, _| kept.contains(k));
}

/// Makes `tmp_dir` (a finished checkpoint's files) the complete checkpoint
/// `name` under `root`: checksums every file (reusing `known` sums of the
/// same immutable files, see [`FileIdentity`]), fsyncs them, writes the
/// manifest, renames the directory into place. Returns the manifest.
pub fn seal(root: &Path, tmp_dir: &Path, name: &str, op: Op, known: &mut CrcCache) -> Result<Manifest, CheckpointFileError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(tmp_dir).map_err(io(tmp_dir))? {
        let entry = entry.map_err(io(tmp_dir))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let meta = fs::metadata(&path).map_err(io(&path))?;
        let (bytes, identity) = (meta.len(), FileIdentity::of(&meta));
        let immutable = file_name.ends_with(".sst") || file_name.ends_with(".blob");
        let crc = match known.get(&identity) {
            Some(&crc) if immutable => crc,
            _ => {
                let (len, crc) = file_crc(&path)?;
                assert_eq!(len, bytes, "{} changed size while being summed", path.display());
                if immutable {
                    known.insert(identity, crc);
                }
                crc
            }
        };
        File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
        files.push(FileEntry { name: file_name, bytes, crc32c: crc });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let manifest = Manifest { version: MANIFEST_VERSION, name: name.to_string(), op, files };
    write_manifest_and_rename(root, tmp_dir, &manifest)?;
    Ok(manifest)
}

fn write_manifest_and_rename(root: &Path, dir: &Path, manifest: &Manifest) -> Result<(), CheckpointFileError> {
    let path = dir.join(MANIFEST_FILE);
    let mut f = File::create(&path).map_err(io(&path))?;
    f.write_all(&manifest.to_bytes()).and_then(|_| f.sync_all()).map_err(io(&path))?;
    fsync_dir(dir)?;
    let target = root.join(&manifest.name);
    if target.exists() {
        fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    fs::rename(dir, &target).map_err(io(&target))?;
    fsync_dir(root)
}

/// Whether `root` holds the complete checkpoint `manifest` describes
/// (cheap: compares the stored manifest; [`verify`] reads the files).
pub fn is_complete(root: &Path, manifest: &Manifest) -> bool {
    fs::read(root.join(&manifest.name).join(MANIFEST_FILE)).is_ok_and(|b| b == manifest.to_bytes())
}

/// Checks every file of a complete local checkpoint against its manifest.
pub fn verify(root: &Path, manifest: &Manifest) -> Result<PathBuf, CheckpointFileError> {
    let dir = root.join(&manifest.name);
    if !is_complete(root, manifest) {
        return Err(CheckpointFileError::Damaged {
            checkpoint: manifest.name.clone(),
            file: MANIFEST_FILE.into(),
            detail: "missing or different from the expected manifest".into(),
        });
    }
    for f in &manifest.files {
        let (bytes, crc) = file_crc(&dir.join(&f.name)).map_err(|e| CheckpointFileError::Damaged {
            checkpoint: manifest.name.clone(),
            file: f.name.clone(),
            detail: e.to_string(),
        })?;
        if bytes != f.bytes || crc != f.crc32c {
            return Err(CheckpointFileError::Damaged {
                checkpoint: manifest.name.clone(),
                file: f.name.clone(),
                detail: format!("{bytes} bytes crc32c {crc:08x}, manifest says {} bytes crc32c {:08x}", f.bytes, f.crc32c),
            });
        }
    }
    Ok(dir)
}

/// The complete checkpoints under `root`, oldest first (by op, then name).
pub fn list(root: &Path) -> Vec<Manifest> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(root) else { return out };
    for entry in entries.flatten() {
        if let Ok(bytes) = fs::read(entry.path().join(MANIFEST_FILE)) {
            if let Ok(m) = Manifest::from_bytes(&bytes) {
                if entry.file_name().to_string_lossy() == m.name {
                    out.push(m);
                }
            }
        }
    }
    out.sort_by(|a, b| (a.op, &a.name).cmp(&(b.op, &b.name)));
    out
}

/// Removes all but the newest `keep` complete checkpoints (never `pinned`)
/// and any leftover `*.tmp` directory.
pub fn prune(root: &Path, keep: usize, pinned: &str) {
    let all = list(root);
    let excess = all.len().saturating_sub(keep);
    for m in all.iter().take(excess) {
        if m.name != pinned {
            let _ = fs::remove_dir_all(root.join(&m.name));
        }
    }
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

// ---------------------------------------------------------------- transfer

/// A donor's answer to one file request.
#[derive(Debug, Serialize, Deserialize)]
enum FileAnswer {
    /// The raw bytes from the requested offset to the end follow.
    Ok { bytes_total: u64 },
    /// Not served (no such complete checkpoint or file).
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct FileRequest {
    checkpoint: String,
    file: String,
    offset: u64,
}

/// Serves checkpoint files on the bidirectional streams of `conn` (a
/// connection from another replica) until it closes.
pub async fn serve(conn: quinn::Connection, root: PathBuf) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let root = root.clone();
        tokio::spawn(async move {
            let mut tag = [0u8; 1];
            if recv.read_exact(&mut tag).await.is_err() || tag[0] != FETCH_STREAM_TAG {
                return;
            }
            let Ok(Ok(Some(payload))) = tokio::time::timeout(CHUNK_TIMEOUT, frame::read_frame(&mut recv)).await else { return };
            let Ok(request) = codec::from_bytes::<FileRequest>(&payload) else { return };
            let path = root.join(&request.checkpoint).join(&request.file);
            let opened = (|| {
                if !safe_name(&request.checkpoint) || !safe_name(&request.file) {
                    return Err("unsafe name".to_string());
                }
                if !root.join(&request.checkpoint).join(MANIFEST_FILE).exists() {
                    return Err(format!("no complete checkpoint {}", request.checkpoint));
                }
                let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let total = f.metadata().map_err(|e| e.to_string())?.len();
                f.seek(SeekFrom::Start(request.offset.min(total))).map_err(|e| e.to_string())?;
                Ok((f, total))
            })();
            let (file, total) = match opened {
                Ok(x) => x,
                Err(reason) => {
                    let answer = codec::to_bytes(&FileAnswer::Refused(reason)).expect("answer encodes");
                    let _ = frame::write_frame(&mut send, &answer).await;
                    let _ = send.finish();
                    return;
                }
            };
            let answer = codec::to_bytes(&FileAnswer::Ok { bytes_total: total }).expect("answer encodes");
            if frame::write_frame(&mut send, &answer).await.is_err() {
                return;
            }
            let mut file = file;
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
            // Disk reads on a blocking thread, network writes here.
            let reader = tokio::task::spawn_blocking(move || loop {
                let mut buf = vec![0u8; CHUNK_BYTES];
                match file.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(buf).is_err() {
                            return;
                        }
                    }
                }
            });
            while let Some(chunk) = rx.recv().await {
                if tokio::time::timeout(CHUNK_TIMEOUT, send.write_all(&chunk)).await.map_or(true, |r| r.is_err()) {
                    break;
                }
            }
            drop(rx);
            let _ = reader.await;
            let _ = send.finish();
        });
    }
}

/// Progress of the current (or last) checkpoint fetch, for status and
/// `chorus recover`.
#[derive(Debug, Default)]
pub struct FetchProgress {
    /// Whether a fetch runs now.
    pub active: AtomicBool,
    /// Bytes of the checkpoint being fetched.
    pub bytes_total: AtomicU64,
    /// Bytes present so far (reused and fetched).
    pub bytes_done: AtomicU64,
    /// Bytes fetched over the network by all fetches.
    pub bytes_fetched_total: AtomicU64,
    /// Complete fetches.
    pub fetches_done: AtomicU64,
}

/// Fetches the checkpoints the core asks for, one at a time, into `root`.
pub struct Fetcher {
    root: PathBuf,
    endpoint: quinn::Endpoint,
    peers: Vec<SocketAddr>,
    busy: Mutex<Option<String>>,
    /// The checkpoint the core asked for last: a running fetch of another
    /// one gives up between attempts (its donor is likely gone).
    latest: Mutex<Option<String>>,
    /// Progress, shared with status.
    pub progress: Arc<FetchProgress>,
}

impl Fetcher {
    /// A fetcher writing under `root`, connecting with `endpoint` (whose
    /// default client config carries this replica's identity).
    pub fn new(root: PathBuf, endpoint: quinn::Endpoint, peers: Vec<SocketAddr>) -> Arc<Fetcher> {
        Arc::new(Fetcher { root, endpoint, peers, busy: Mutex::new(None), latest: Mutex::new(None), progress: Arc::default() })
    }

    /// Starts fetching `manifest_bytes` from replica `from` unless a fetch
    /// runs (the core repeats its request, so a later one gets its turn).
    pub fn request(self: &Arc<Self>, from: ReplicaId, manifest_bytes: Vec<u8>) {
        let manifest = match Manifest::from_bytes(&manifest_bytes) {
            Ok(m) => m,
            Err(e) => {
                warn!(from, error = %e, "refusing to fetch a checkpoint with a bad manifest");
                return;
            }
        };
        if is_complete(&self.root, &manifest) {
            return;
        }
        *self.latest.lock().expect("fetcher lock") = Some(manifest.name.clone());
        {
            let mut busy = self.busy.lock().expect("fetcher lock");
            if busy.is_some() {
                return;
            }
            *busy = Some(manifest.name.clone());
        }
        let Some(&addr) = self.peers.get(from as usize) else { return };
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            this.progress.active.store(true, Ordering::Relaxed);
            this.progress.bytes_total.store(manifest.bytes(), Ordering::Relaxed);
            this.progress.bytes_done.store(0, Ordering::Relaxed);
            let mut result = Err(anyhow::anyhow!("not attempted"));
            for attempt in 1..=FETCH_ATTEMPTS_MAX {
                if attempt > 1 && this.latest.lock().expect("fetcher lock").as_deref() != Some(manifest.name.as_str()) {
                    info!(from, checkpoint = %manifest.name, "the core now wants another checkpoint; leaving this one");
                    break;
                }
                this.progress.bytes_done.store(0, Ordering::Relaxed);
                result = this.fetch_once(from, addr, &manifest).await;
                match &result {
                    Ok(fetched) => {
                        info!(from, checkpoint = %manifest.name, bytes = manifest.bytes(), fetched, ms = started.elapsed().as_millis() as u64,
                            "checkpoint fetched and verified");
                        this.progress.fetches_done.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        warn!(from, checkpoint = %manifest.name, attempt, error = %e, "checkpoint fetch failed; resuming");
                        tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                    }
                }
            }
            if result.is_err() {
                warn!(from, checkpoint = %manifest.name, "giving up on this donor for now; the core will ask again");
            }
            this.progress.active.store(false, Ordering::Relaxed);
            *this.busy.lock().expect("fetcher lock") = None;
        });
    }

    async fn fetch_once(&self, from: ReplicaId, addr: SocketAddr, manifest: &Manifest) -> anyhow::Result<u64> {
        let root = self.root.clone();
        let partial = root.join(format!("{}.partial", manifest.name));
        // Reuse what is already here: files of other complete checkpoints
        // with the same name, size and checksum (hard links, no copy).
        {
            let (root, partial, manifest) = (root.clone(), partial.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || link_known_files(&root, &partial, &manifest)).await??;
        }
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(addr, &Role::Replica(from as usize).dns_name())?).await??;
        // Up to FETCH_STREAMS_MAX files at once, each on its own stream.
        let mut tasks: tokio::task::JoinSet<anyhow::Result<(String, FetchedFile)>> = tokio::task::JoinSet::new();
        let mut fetched = 0u64;
        let mut checked = std::collections::HashSet::new();
        for file in &manifest.files {
            let path = partial.join(&file.name);
            let have = fs::metadata(&path).ok().map(|m| m.len());
            if have == Some(file.bytes) {
                self.progress.bytes_done.fetch_add(file.bytes, Ordering::Relaxed);
                continue;
            }
            let offset = match have {
                Some(h) if h < file.bytes => h,
                _ => 0,
            };
            while tasks.len() >= FETCH_STREAMS_MAX {
                let (name, f) = tasks.join_next().await.expect("non-empty")??;
                fetched += f.bytes;
                if f.checked {
                    checked.insert(name);
                }
            }
            let (conn, name, file, progress) = (conn.clone(), manifest.name.clone(), file.clone(), self.progress.clone());
            tasks.spawn(async move {
                let f = fetch_file(&conn, &name, &file, &path, offset, &progress).await?;
                anyhow::Ok((file.name, f))
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (name, f) = r??;
            fetched += f.bytes;
            if f.checked {
                checked.insert(name);
            }
        }
        conn.close(0u32.into(), b"done");
        // Everything is here: check every file, then seal.
        let (root2, partial2, manifest2) = (root.clone(), partial.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for f in &manifest2.files {
                let path = partial2.join(&f.name);
                if checked.contains(&f.name) {
                    File::open(&path)?.sync_all()?;
                    continue;
                }
                let (bytes, crc) = file_crc(&path)?;
                if bytes != f.bytes || crc != f.crc32c {
                    let _ = fs::remove_file(&path);
                    anyhow::bail!(
                        "fetched file {} of {} is damaged (crc32c {crc:08x}, expected {:08x}); fetching it again",
                        f.name,
                        manifest2.name,
                        f.crc32c
                    );
                }
                File::open(&path)?.sync_all()?;
            }
            write_manifest_and_rename(&root2, &partial2, &manifest2)?;
            Ok(())
        })
        .await??;
        self.progress.bytes_fetched_total.fetch_add(fetched, Ordering::Relaxed);
        Ok(fetched)
    }
}

/// Fetches `file` of checkpoint `checkpoint` from `offset` to its end into
/// `path`, on a stream of its own; returns the bytes received.
async fn fetch_file(
    conn: &quinn::Connection,
    checkpoint: &str,
    file: &FileEntry,
    path: &Path,
    offset: u64,
    progress: &FetchProgress,
) -> anyhow::Result<FetchedFile> {
    let (mut send, mut recv) = tokio::time::timeout(CHUNK_TIMEOUT, conn.open_bi()).await??;
    send.write_all(&[FETCH_STREAM_TAG]).await?;
    let request = FileRequest { checkpoint: checkpoint.to_string(), file: file.name.clone(), offset };
    frame::write_frame(&mut send, &codec::to_bytes(&request)?).await?;
    let _ = send.finish();
    let answer = tokio::time::timeout(CHUNK_TIMEOUT, frame::read_frame(&mut recv))
        .await??
        .ok_or_else(|| anyhow::anyhow!("donor closed the stream"))?;
    match codec::from_bytes::<FileAnswer>(&answer)? {
        FileAnswer::Ok { bytes_total } if bytes_total == file.bytes => {}
        FileAnswer::Ok { bytes_total } => anyhow::bail!("donor has {} at {bytes_total} bytes, manifest says {}", file.name, file.bytes),
        FileAnswer::Refused(reason) => anyhow::bail!("donor refused {}: {reason}", file.name),
    }
    let mut out = OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
    out.set_len(offset)?;
    out.seek(SeekFrom::Start(offset))?;
    progress.bytes_done.fetch_add(offset, Ordering::Relaxed);
    let mut got = 0u64;
    let mut crc = 0u32;
    let mut buf = vec![0u8; CHUNK_BYTES];
    while offset + got < file.bytes {
        let n = tokio::time::timeout(CHUNK_TIMEOUT, recv.read(&mut buf)).await??;
        let Some(n) = n else { anyhow::bail!("donor ended {} at {} of {} bytes", file.name, offset + got, file.bytes) };
        let n = n.min((file.bytes - offset - got) as usize);
        // Small synchronous writes to the page cache; fsync at the seal.
        out.write_all(&buf[..n])?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        got += n as u64;
        progress.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
    }
    if offset == 0 && crc != file.crc32c {
        drop(out);
        let _ = fs::remove_file(path);
        anyhow::bail!("received {} with crc32c {crc:08x}, manifest says {:08x}; fetching it again", file.name, file.crc32c);
    }
    Ok(FetchedFile { bytes: got, checked: offset == 0 })
}

/// What [`fetch_file`] did.
struct FetchedFile {
    bytes: u64,
    /// Its CRC32C was checked as it arrived (no need to read it again).
    checked: bool,
}

/// Hard-links into `partial` the files of `manifest` that a complete local
/// checkpoint already holds (same name, size and CRC32C per its manifest).
fn link_known_files(root: &Path, partial: &Path, manifest: &Manifest) -> Result<(), CheckpointFileError> {
    fs::create_dir_all(partial).map_err(io(partial))?;
    // Other unfinished fetches (the donor moved on to a newer checkpoint
    // while we copied an older one): their whole immutable files of the
    // right size carry over (checked against the manifest at the seal), so
    // progress survives a donor's pruning under heavy writes; then they go.
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") && entry.path() != partial {
                for f in manifest.files.iter().filter(|f| f.name.ends_with(".sst") || f.name.ends_with(".blob")) {
                    let (from, to) = (entry.path().join(&f.name), partial.join(&f.name));
                    if !to.exists() && fs::metadata(&from).is_ok_and(|m| m.len() == f.bytes) {
                        let _ = fs::hard_link(&from, &to);
                    }
                }
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let local = list(root);
    for f in &manifest.files {
        let target = partial.join(&f.name);
        if target.exists() {
            continue;
        }
        let immutable = f.name.ends_with(".sst") || f.name.ends_with(".blob");
        if !immutable {
            continue;
        }
        if let Some(source) = local.iter().find(|m| m.files.iter().any(|g| g == f) && root.join(&m.name).exists()) {
            // Linked only once its bytes are checked: a local file that does
            // not match its own manifest would otherwise be linked again at
            // every attempt, and the fetch would never finish.
            let from = root.join(&source.name).join(&f.name);
            match file_crc(&from) {
                Ok((bytes, crc)) if bytes == f.bytes && crc == f.crc32c => {
                    let _ = fs::hard_link(&from, &target);
                }
                _ => {
                    warn!(checkpoint = %source.name, file = %f.name, "a local checkpoint's file differs from its manifest; setting it aside");
                    set_aside_damaged(root, &source.name);
                }
            }
        }
    }
    Ok(())
}

/// Moves the complete checkpoint `name` out of use (to `<name>.damaged`,
/// for inspection; an older one of that name goes). Never used again.
pub fn set_aside_damaged(root: &Path, name: &str) {
    let aside = root.join(format!("{name}.damaged"));
    let _ = fs::remove_dir_all(&aside);
    if fs::rename(root.join(name), &aside).is_err() {
        let _ = fs::remove_dir_all(root.join(name));
    }
}

/// Builds a fresh directory `dest` holding the files of the verified local
/// checkpoint `manifest`: immutable files hard-linked, the others copied
/// (a store opened there may append to them).
pub fn materialize(root: &Path, manifest: &Manifest, dest: &Path) -> Result<(), CheckpointFileError> {
    let source = verify(root, manifest)?;
    if dest.exists() {
        fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    fs::create_dir_all(dest).map_err(io(dest))?;
    for f in &manifest.files {
        let (from, to) = (source.join(&f.name), dest.join(&f.name));
        if f.name.ends_with(".sst") || f.name.ends_with(".blob") {
            fs::hard_link(&from, &to).map_err(io(&to))?;
        } else {
            fs::copy(&from, &to).map_err(io(&to))?;
        }
    }
    fsync_dir(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(root: &Path, name: &str, files: &[(&str, &[u8])]) -> Manifest {
        let tmp = root.join(format!("{name}.tmp"));
        fs::create_dir_all(&tmp).unwrap();
        for (n, b) in files {
            fs::write(tmp.join(n), b).unwrap();
        }
        seal(root, &tmp, name, 7, &mut Default::default()).unwrap()
    }

    #[test]
    fn sealed_checkpoint_verifies_and_a_flipped_byte_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let m = make(dir.path(), "cp-7", &[("000001.sst", b"hello world"), ("CURRENT", b"MANIFEST-1\n")]);
        assert!(is_complete(dir.path(), &m));
        verify(dir.path(), &m).unwrap();
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
        let path = dir.path().join("cp-7").join("000001.sst");
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        let err = verify(dir.path(), &m).unwrap_err().to_string();
        assert!(err.contains("000001.sst") && err.contains("damaged"), "{err}");
        let dest = dir.path().join("live");
        assert!(materialize(dir.path(), &m, &dest).is_err(), "a damaged checkpoint is never used");
    }

    /// CI failure of 2026-11-30: after a restore from another checkpoint a
    /// replica's RocksDB reused an SST name; the new file had the old one's
    /// size, and the sum cached by (name, size) went into the manifest, so
    /// the checkpoint could never be fetched or restored.
    #[test]
    fn a_reused_file_name_of_the_same_size_is_summed_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut known = Default::default();
        let tmp = dir.path().join("cp-1.tmp");
        fs::create_dir_all(&tmp).unwrap();
        fs::write(tmp.join("000134.sst"), b"first content").unwrap();
        seal(dir.path(), &tmp, "cp-1", 1, &mut known).unwrap();
        let tmp = dir.path().join("cp-2.tmp");
        fs::create_dir_all(&tmp).unwrap();
        fs::write(tmp.join("000134.sst"), b"other content").unwrap();
        let m = seal(dir.path(), &tmp, "cp-2", 2, &mut known).unwrap();
        verify(dir.path(), &m).expect("the manifest describes the files it names");
    }

    /// The same failure seen from the joiner: a local file that differs from
    /// its manifest is not linked into a fetch (which then fetches it) and
    /// its checkpoint is set aside, so the next attempt cannot link it again.
    #[test]
    fn a_local_file_that_differs_from_its_manifest_is_not_linked() {
        let dir = tempfile::tempdir().unwrap();
        let m = make(dir.path(), "cp-7", &[("000001.sst", b"hello world")]);
        fs::write(dir.path().join("cp-7").join("000001.sst"), b"HELLO WORLD").unwrap();
        let wanted = Manifest { name: "cp-9".into(), op: 9, ..m.clone() };
        let partial = dir.path().join("cp-9.partial");
        link_known_files(dir.path(), &partial, &wanted).unwrap();
        assert!(!partial.join("000001.sst").exists(), "a damaged file was linked");
        assert!(list(dir.path()).is_empty(), "the damaged checkpoint is still in use");
        assert!(dir.path().join("cp-7.damaged").exists());
        // A good one is linked.
        let good = make(dir.path(), "cp-8", &[("000001.sst", b"hello world")]);
        let wanted = Manifest { name: "cp-10".into(), op: 10, ..good };
        let partial = dir.path().join("cp-10.partial");
        link_known_files(dir.path(), &partial, &wanted).unwrap();
        assert_eq!(fs::read(partial.join("000001.sst")).unwrap(), b"hello world");
    }

    #[test]
    fn manifests_with_escaping_names_are_refused() {
        let m = Manifest { version: MANIFEST_VERSION, name: "../x".into(), op: 1, files: vec![] };
        assert!(Manifest::from_bytes(&m.to_bytes()).is_err());
        let m = Manifest {
            version: MANIFEST_VERSION,
            name: "cp".into(),
            op: 1,
            files: vec![FileEntry { name: "a/b".into(), bytes: 0, crc32c: 0 }],
        };
        assert!(Manifest::from_bytes(&m.to_bytes()).is_err());
        assert!(Manifest::from_bytes(b"garbage").is_err());
        // Sizes whose total overflows (fuzz C3: the fetch task panicked in bytes()).
        let files = vec![FileEntry { name: "a".into(), bytes: u64::MAX, crc32c: 0 }, FileEntry { name: "b".into(), bytes: 1, crc32c: 0 }];
        let m = Manifest { version: MANIFEST_VERSION, name: "cp".into(), op: 1, files };
        assert!(Manifest::from_bytes(&m.to_bytes()).is_err());
    }

    #[test]
    fn prune_keeps_the_newest_and_materialize_links_immutable_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut names = vec![];
        for i in 0..4u64 {
            let tmp = dir.path().join(format!("cp-{i}.tmp"));
            fs::create_dir_all(&tmp).unwrap();
            fs::write(tmp.join("000001.sst"), b"x").unwrap();
            let m = seal(dir.path(), &tmp, &format!("cp-{i}"), i, &mut Default::default()).unwrap();
            names.push(m);
        }
        fs::create_dir_all(dir.path().join("junk.tmp")).unwrap();
        prune(dir.path(), 2, "cp-0");
        let left: Vec<String> = list(dir.path()).into_iter().map(|m| m.name).collect();
        assert_eq!(left, vec!["cp-0", "cp-2", "cp-3"]);
        assert!(!dir.path().join("junk.tmp").exists());
        let dest = dir.path().join("live");
        materialize(dir.path(), &names[3], &dest).unwrap();
        assert_eq!(fs::read(dest.join("000001.sst")).unwrap(), b"x");
    }
}
