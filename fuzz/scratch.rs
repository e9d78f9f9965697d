//! One scratch directory per fuzzing process, shared by the fuzz crates
//! (`#[path]`-included): `chorus-fuzz-TARGET-PID` on tmpfs when there is one.
//!
//! libFuzzer ends a timed run with `exit`, which runs no destructors (a
//! `TempDir` in a static is never removed: each fs_apply run used to leave
//! its two RocksDBs, ~140 MB, in /dev/shm). So the directory is removed by an
//! `atexit` handler; a crash (abort) leaves it for inspection, and the next
//! process of the same target removes those of processes that are gone.

#![allow(dead_code)] // each target uses a part

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// This process's scratch directory (made empty on first use).
pub fn scratch(target: &str) -> &'static Path {
    SCRATCH.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let prefix = format!("chorus-fuzz-{target}-");
        // Leftovers of crashed processes of this target.
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                    continue;
                };
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        // SAFETY: registers a plain function without arguments.
        unsafe { libc::atexit(remove_scratch) };
        dir
    })
}

/// Empties `dir` (creating it if needed).
pub fn clear(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("clear {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(dir).expect("create a scratch subdirectory");
}
