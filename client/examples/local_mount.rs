//! Mounts a local `FsStore` directly (no server, no network) through the FUSE
//! frontend, for poking at the frontend with real tools (pjdfstest, fsx,
//! shells) while the rest of the system is elsewhere:
//!
//!     cargo run -p chorus-client --example local_mount -- STORE_DIR MOUNTPOINT
//!
//! Serves until SIGINT or SIGTERM, then unmounts. Same backend as the tests
//! (tests/support): mutations applied in order under a lock, queries direct.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;

use chorus_client::{mount, Backend, MountOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: local_mount STORE_DIR MOUNTPOINT");
        std::process::exit(2);
    }
    let (store, mnt) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    // Block SIGINT/SIGTERM before any thread exists, so all threads inherit
    // the mask and sigwait below receives them.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::fs::create_dir_all(&store).expect("create store dir");
    let backend: Arc<dyn Backend> = Arc::new(support::StoreBackend::open(&store));
    let mut handle = match mount(backend, &mnt, MountOptions::default()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!("mounted {} at {}", store.display(), mnt.display());
    let mut sig = 0;
    unsafe { libc::sigwait(&set, &mut sig) };
    if let Err(e) = handle.unmount() {
        eprintln!("{e}");
        std::process::exit(1);
    }
    println!("unmounted");
}
