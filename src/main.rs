//! `chorus`: the ChorusFS command line. CLI only: parsing, wiring and clear
//! errors; every capability lives in the crates (fs, wire, server, client).

mod remote;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "chorus",
    version,
    about = "ChorusFS: a replicated POSIX file system over QUIC, mounted with FUSE",
    after_help = "Examples:\n  chorus up /mnt/chorus                 # local cluster, data in ./chorus-data, mounted at /mnt/chorus\n  chorus init --certs ./certs            # cluster CA + certificates\n  chorus server --certs ./certs --data ./r0 --listen 127.0.0.1:7870\n  chorus mount --certs ./certs --server 127.0.0.1:7870 /mnt/chorus"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a cluster CA and certificates for replicas, clients and an admin.
    #[command(after_help = "Example:\n  chorus init --certs ./certs --replicas 3")]
    Init {
        /// Folder to write the certificates to (must not hold a cluster CA yet).
        #[arg(long, default_value = "chorus-data/certs")]
        certs: PathBuf,
        /// Number of replica certificates to create.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
    /// Run one replica server.
    #[command(after_help = "Example:\n  chorus server --certs ./certs --data ./replica0 --id 0 --listen 127.0.0.1:7870")]
    Server {
        #[arg(long)]
        certs: PathBuf,
        /// This replica's data folder.
        #[arg(long)]
        data: PathBuf,
        /// Replica number (selects the certificate replica-<id>).
        #[arg(long, default_value_t = 0)]
        id: usize,
        #[arg(long, default_value = "127.0.0.1:7870")]
        listen: SocketAddr,
    },
    /// Mount a ChorusFS cluster at a folder (runs until unmounted or Ctrl-C).
    #[command(after_help = "Example:\n  chorus mount --certs ./certs --server 127.0.0.1:7870 /mnt/chorus")]
    Mount {
        #[arg(long)]
        certs: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7870")]
        server: SocketAddr,
        /// Where to mount (an existing, empty, unmounted folder).
        mountpoint: PathBuf,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// One command: a local cluster with its data under a folder, mounted at DIR.
    /// Ctrl-C or SIGTERM unmounts and stops cleanly; running it again on the
    /// same data finds the files again.
    #[command(after_help = "Example:\n  chorus up /mnt/chorus --data ./chorus-data")]
    Up {
        /// Where to mount.
        mountpoint: PathBuf,
        /// Data folder (certificates and replica state); created if missing.
        #[arg(long, default_value = "chorus-data")]
        data: PathBuf,
        /// Port of the replica on 127.0.0.1.
        #[arg(long, default_value_t = 7870)]
        port: u16,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // One line (plus causes) a user can act on; never a panic backtrace.
        eprintln!("chorus: error: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("chorus-rt")
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { certs, replicas } => {
            if replicas == 0 || replicas % 2 == 0 {
                bail!("--replicas must be odd and at least 1 (got {replicas})");
            }
            chorus_wire::certs::init_cluster(&certs, replicas)
                .with_context(|| format!("cannot create certificates in {}", certs.display()))?;
            println!("created cluster CA and certificates for {replicas} replicas, a client and an admin in {}", certs.display());
            Ok(())
        }
        Command::Server { certs, data, id, listen } => {
            let rt = runtime()?;
            rt.block_on(async move {
                let cfg = chorus_server::ServerConfig { data_dir: data, certs_dir: certs, replica_id: id, listen };
                chorus_server::run(cfg, shutdown_signal()).await
            })
        }
        Command::Mount { certs, server, mountpoint, threads } => {
            let rt = runtime()?;
            let backend = rt.block_on(connect_client(&certs, server))?;
            let opts = chorus_client::MountOptions { threads, ..Default::default() };
            serve_mount(&rt, backend, &mountpoint, opts, None)
        }
        Command::Up { mountpoint, data, port } => up(mountpoint, data, port),
    }
}

async fn connect_client(certs: &Path, server: SocketAddr) -> anyhow::Result<Arc<remote::RemoteBackend>> {
    let identity = chorus_wire::certs::load_identity(certs, chorus_wire::certs::Role::Client)
        .with_context(|| format!("cannot load the client certificate from {}", certs.display()))?;
    let cfg = chorus_wire::tls::client_config(&identity)?;
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let endpoint = chorus_wire::endpoint::client(cfg, bind)?;
    remote::RemoteBackend::connect(endpoint, server)
        .await
        .with_context(|| format!("cannot connect to the ChorusFS server at {server}"))
}

/// Mounts and blocks until Ctrl-C / SIGTERM or an external unmount; then
/// unmounts and, for `up`, stops the in-process server.
fn serve_mount(
    rt: &tokio::runtime::Runtime,
    backend: Arc<remote::RemoteBackend>,
    mountpoint: &Path,
    opts: chorus_client::MountOptions,
    server_stop: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>)>,
) -> anyhow::Result<()> {
    let mut handle = chorus_client::mount(backend, mountpoint, opts)?;
    println!("ChorusFS mounted at {} (Ctrl-C to unmount and stop)", mountpoint.display());
    let mp = mountpoint.to_path_buf();
    rt.block_on(async {
        let gone = async {
            // Someone ran `umount DIR`: stop too, instead of serving nothing.
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                if !is_mounted(&mp) {
                    break;
                }
            }
        };
        tokio::select! {
            _ = shutdown_signal() => info!("signal received; unmounting"),
            _ = gone => info!("mount point was unmounted externally"),
        }
    });
    handle.unmount().context("unmount failed")?;
    if let Some((stop, task)) = server_stop {
        let _ = stop.send(());
        rt.block_on(task).context("server task panicked")??;
    }
    println!("unmounted {}; stopped", mountpoint.display());
    Ok(())
}

fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    info.lines().any(|l| l.split(' ').nth(4) == Some(canon.to_string_lossy().as_ref()))
}

fn up(mountpoint: PathBuf, data: PathBuf, port: u16) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create data folder {}", data.display()))?;
    let certs = data.join("certs");
    if !certs.join("ca.pem").exists() {
        chorus_wire::certs::init_cluster(&certs, 3)
            .with_context(|| format!("cannot create certificates in {}", certs.display()))?;
        info!(certs = %certs.display(), "created cluster certificates");
    }
    let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let rt = runtime()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = chorus_server::ServerConfig {
        data_dir: data.join("replica-0"),
        certs_dir: certs.clone(),
        replica_id: 0,
        listen,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = rt.spawn(async move {
        let _ = ready_tx.send(());
        chorus_server::run(cfg, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let _ = ready_rx.recv();
    // Fail fast with the server's own error (port in use, bad certs) instead
    // of a confusing connection timeout.
    let backend = loop {
        if server.is_finished() {
            return match rt.block_on(server) {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => bail!("server stopped unexpectedly"),
                Err(e) => bail!("server task failed: {e}"),
            };
        }
        match rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(2), connect_client(&certs, listen)).await
        }) {
            Ok(Ok(b)) => break b,
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    serve_mount(&rt, backend, &mountpoint, chorus_client::MountOptions::default(), Some((stop_tx, server)))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
