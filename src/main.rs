//! `chorus`: the ChorusFS command line. CLI only: parsing, wiring and clear
//! errors; every capability lives in the crates (fs, wire, server, client).

mod cert;
mod recover;
mod remote;
mod status;

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
    #[command(
        after_help = "Examples:\n  chorus server --certs ./certs --data ./replica0 --listen 127.0.0.1:7870            # one replica\n  chorus server --certs ./certs --data ./r1 --id 1 --peers 127.0.0.1:7870,127.0.0.1:7871,127.0.0.1:7872 --init-new-cluster"
    )]
    Server {
        #[arg(long)]
        certs: PathBuf,
        /// This replica's data folder.
        #[arg(long)]
        data: PathBuf,
        /// Replica number (selects the certificate replica-<id> and, with
        /// --peers, this replica's address in the list).
        #[arg(long, default_value_t = 0)]
        id: usize,
        /// Address to listen on (single-replica mode).
        #[arg(long, default_value = "127.0.0.1:7870")]
        listen: SocketAddr,
        /// Every replica's address, in id order: runs this server as one
        /// replica of a replicated cluster (listening on its own entry).
        #[arg(long, value_delimiter = ',')]
        peers: Vec<SocketAddr>,
        /// With --peers: write the initial log of a NEW cluster if this
        /// replica has none. Never give it to a replica that lost its disk:
        /// that one must recover from the others.
        #[arg(long)]
        init_new_cluster: bool,
        /// With --peers: take a checkpoint every this many log entries...
        #[arg(long, default_value_t = chorus_server::replicated::CHECKPOINT_INTERVAL_OPS_DEFAULT)]
        checkpoint_interval_ops: u64,
        /// ...or after this many bytes of commands (at most 24 MiB).
        #[arg(long, default_value_t = chorus_server::replicated::CHECKPOINT_INTERVAL_BYTES_DEFAULT)]
        checkpoint_interval_bytes: u64,
        /// With --peers: MiB kept free on the data folder's disk; below it
        /// the leader refuses writes that need space (ENOSPC) so replicas
        /// never run out mid-entry. Deleting files still works.
        #[arg(long, default_value_t = chorus_replication_shell::node::DISK_RESERVE_BYTES_DEFAULT >> 20)]
        disk_reserve_mib: u64,
        /// With --peers: how long a mount may cache what it read before the
        /// leader must recall it (a change waits for the recall, at most
        /// this long when a mount does not answer); 0 turns client caching
        /// off. Every replica of a cluster must use the same value.
        #[arg(long, default_value_t = chorus_server::replicated::CALLBACK_LEASE_MS_DEFAULT)]
        callback_lease_ms: u64,
        /// With --peers: a mount silent this long (crashed, or cut off from
        /// the cluster) loses its open files and locks; live mounts send a
        /// keepalive more often (chorus mount --keepalive-ms). Every replica
        /// of a cluster (and `chorus recover`) must use the same value: it
        /// decides when sessions end in the replicated state.
        #[arg(long, default_value_t = chorus_server::replicated::SESSION_TIMEOUT_MS_DEFAULT)]
        session_timeout_ms: u64,
    },
    /// Mount a ChorusFS cluster at a folder (runs until unmounted or Ctrl-C).
    #[command(
        after_help = "Examples:\n  chorus mount --certs ./certs --server 127.0.0.1:7870 /mnt/chorus\n  chorus mount --certs ./certs --server 127.0.0.1:7870,127.0.0.1:7871,127.0.0.1:7872 /mnt/chorus"
    )]
    Mount {
        #[arg(long)]
        certs: PathBuf,
        /// The server, or every replica of a replicated cluster (in id order).
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7870")]
        server: Vec<SocketAddr>,
        /// Where to mount (an existing, empty, unmounted folder).
        mountpoint: PathBuf,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// With several servers: how often an idle mount tells the cluster
        /// it is alive. Must be well below the servers' --session-timeout-ms
        /// (a mount silent that long loses its open files and locks).
        #[arg(long, default_value_t = remote::KEEPALIVE_MS_DEFAULT)]
        keepalive_ms: u64,
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
        /// Port of the first replica on 127.0.0.1 (the others use the next ones).
        #[arg(long, default_value_t = 7870)]
        port: u16,
        /// Replicas: 3 (or any odd number) runs that many `chorus server`
        /// processes with replication; 1 runs one server in this process.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
    /// Bring a failed replica back: verify its log and newest checkpoint,
    /// replay, catch up from the others (or, with --from-peer, rebuild it by
    /// state transfer), showing progress; then keep serving as the replica.
    #[command(
        after_help = "Examples:\n  chorus recover --certs ./certs --data ./r2 --id 2 --peers 127.0.0.1:7870,127.0.0.1:7871,127.0.0.1:7872\n  chorus recover --certs ./certs --data ./r2 --id 2 --peers 127.0.0.1:7870,127.0.0.1:7871,127.0.0.1:7872 --from-peer\n  chorus recover --up-data ./chorus-data --id 2 --from-peer     # a replica of `chorus up --replicas 3`"
    )]
    Recover {
        /// Certificates folder (default with --up-data: DATA/certs).
        #[arg(long)]
        certs: Option<PathBuf>,
        /// This replica's data folder (default with --up-data: DATA/replica-<id>).
        #[arg(long)]
        data: Option<PathBuf>,
        /// A `chorus up` data folder: fills in --certs, --data and --peers.
        #[arg(long)]
        up_data: Option<PathBuf>,
        /// With --up-data: port of the first replica.
        #[arg(long, default_value_t = 7870)]
        port: u16,
        /// Replica number.
        #[arg(long)]
        id: u8,
        /// Every replica's address, in id order.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<SocketAddr>,
        /// Do not use the local log and checkpoints: move them aside and
        /// rebuild this replica from the others by state transfer.
        #[arg(long)]
        from_peer: bool,
        /// Checkpoint every this many log entries (as for `chorus server`).
        #[arg(long, default_value_t = chorus_server::replicated::CHECKPOINT_INTERVAL_OPS_DEFAULT)]
        checkpoint_interval_ops: u64,
        /// ...or after this many bytes of commands.
        #[arg(long, default_value_t = chorus_server::replicated::CHECKPOINT_INTERVAL_BYTES_DEFAULT)]
        checkpoint_interval_bytes: u64,
        /// The cluster's session timeout (as given to `chorus server`): it
        /// decides when sessions end in the replicated state, so every
        /// replica must use the same value.
        #[arg(long, default_value_t = chorus_server::replicated::SESSION_TIMEOUT_MS_DEFAULT)]
        session_timeout_ms: u64,
    },
    /// Take a checkpoint now on every replica (or one); needs the admin certificate.
    #[command(
        after_help = "Examples:\n  chorus checkpoint --certs ./certs --server 127.0.0.1:7870,127.0.0.1:7871,127.0.0.1:7872\n  chorus checkpoint --data ./chorus-data --replica 1"
    )]
    Checkpoint {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Only this replica.
        #[arg(long)]
        replica: Option<usize>,
    },
    /// Per-host client certificates: issue a client bundle (no CA key), list, revoke.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Show every replica's protocol status (view, leader, commit point,
    /// digest) of a replicated cluster.
    #[command(
        after_help = "Examples:\n  chorus status --certs ./certs --server 127.0.0.1:7870,127.0.0.1:7871,127.0.0.1:7872\n  chorus status --data ./chorus-data            # a `chorus up --replicas 3` cluster"
    )]
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

// Where a replicated cluster is, for the commands that talk to all of it
// (a plain comment: clap would take a doc comment as their about text).
#[derive(clap::Args)]
struct ClusterArgs {
    /// Certificates folder (default with --data: DATA/certs).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Every replica's address, in id order.
    #[arg(long, value_delimiter = ',')]
    server: Vec<SocketAddr>,
    /// A `chorus up` data folder: certificates from DATA/certs and the
    /// replicas from DATA/replicas on 127.0.0.1, ports --port and up.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: port of the first replica.
    #[arg(long, default_value_t = 7870)]
    port: u16,
}

impl ClusterArgs {
    fn target(self) -> anyhow::Result<status::Target> {
        status::target(self.certs, self.server, self.data, self.port)
    }
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
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("chorus-rt").build().context("cannot start the async runtime")
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
            println!(
                "the `client` certificate may act as root; for other client hosts issue their own (root squashed): chorus cert issue --certs {} --name HOST --out DIR",
                certs.display()
            );
            Ok(())
        }
        Command::Server {
            certs,
            data,
            id,
            listen,
            peers,
            init_new_cluster,
            checkpoint_interval_ops,
            checkpoint_interval_bytes,
            disk_reserve_mib,
            callback_lease_ms,
            session_timeout_ms,
        } => {
            let rt = runtime()?;
            if peers.is_empty() {
                rt.block_on(async move {
                    let cfg = chorus_server::ServerConfig { data_dir: data, certs_dir: certs, replica_id: id, listen };
                    chorus_server::run(cfg, shutdown_signal()).await
                })
            } else {
                let id = u8::try_from(id).context("--id too large")?;
                if id as usize >= peers.len() {
                    bail!("--id {id} has no address in --peers (which lists {} replicas)", peers.len());
                }
                rt.block_on(async move {
                    let cfg = chorus_server::replicated::ReplicaConfig {
                        id,
                        peers,
                        certs_dir: certs,
                        data_dir: data,
                        init_new_cluster,
                        checkpoint_interval_ops,
                        checkpoint_interval_bytes,
                        disk_reserve_bytes: disk_reserve_mib << 20,
                        callback_lease_ms,
                        session_timeout_ms,
                    };
                    chorus_server::replicated::run(cfg, shutdown_signal()).await
                })
            }
        }
        Command::Mount { certs, server, mountpoint, threads, keepalive_ms } => {
            let rt = runtime()?;
            let backend: Arc<dyn chorus_client::Backend> = if server.len() == 1 {
                rt.block_on(connect_client(&certs, server[0]))?
            } else {
                rt.block_on(connect_replicated(&certs, server, keepalive_ms))?
            };
            let opts = chorus_client::MountOptions { threads, ..Default::default() };
            serve_mount(&rt, backend, &mountpoint, opts, Stop::Nothing)
        }
        Command::Up { mountpoint, data, port, replicas } => {
            if replicas == 1 {
                up(mountpoint, data, port)
            } else {
                up_replicated(mountpoint, data, port, replicas)
            }
        }
        Command::Recover {
            certs,
            data,
            up_data,
            port,
            id,
            peers,
            from_peer,
            checkpoint_interval_ops,
            checkpoint_interval_bytes,
            session_timeout_ms,
        } => {
            let (certs, data, peers) = match up_data {
                Some(up) => {
                    let t = status::target(certs.clone(), peers.clone(), Some(up.clone()), port)?;
                    (t.certs, data.unwrap_or_else(|| up.join(format!("replica-{id}"))), t.peers)
                }
                None => {
                    let certs = certs.context("give --certs (or --up-data for a `chorus up` cluster)")?;
                    let data = data.context("give --data, this replica's data folder (or --up-data)")?;
                    if peers.is_empty() {
                        bail!("give --peers A,B,C: every replica's address, in id order");
                    }
                    (certs, data, peers)
                }
            };
            let args = recover::RecoverArgs {
                certs,
                data,
                id,
                peers,
                from_peer,
                checkpoint_interval_ops,
                checkpoint_interval_bytes,
                session_timeout_ms,
            };
            recover::run(&runtime()?, args, shutdown_signal())
        }
        Command::Checkpoint { cluster, replica } => {
            let target = cluster.target()?;
            recover::checkpoint(&runtime()?, &target.certs, target.peers, replica)
        }
        Command::Cert(command) => cert::run(command),
        Command::Status { cluster } => {
            let target = cluster.target()?;
            status::run(&runtime()?, target)
        }
    }
}

async fn connect_replicated(certs: &Path, peers: Vec<SocketAddr>, keepalive_ms: u64) -> anyhow::Result<Arc<remote::ReplicatedBackend>> {
    anyhow::ensure!(keepalive_ms >= 100, "--keepalive-ms must be at least 100");
    remote::ReplicatedBackend::connect(certs, peers.clone(), std::time::Duration::from_millis(keepalive_ms))
        .await
        .with_context(|| format!("cannot open a session with the cluster {peers:?}"))
}

async fn connect_client(certs: &Path, server: SocketAddr) -> anyhow::Result<Arc<remote::RemoteBackend>> {
    let identity = chorus_wire::certs::load_identity(certs, chorus_wire::certs::Role::Client)
        .with_context(|| format!("cannot load the client certificate from {}", certs.display()))?;
    let cfg = chorus_wire::tls::client_config(&identity)?;
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let endpoint = chorus_wire::endpoint::client(cfg, bind)?;
    remote::RemoteBackend::connect(endpoint, server).await.with_context(|| format!("cannot connect to the ChorusFS server at {server}"))
}

/// Mounts and blocks until Ctrl-C / SIGTERM or an external unmount; then
/// unmounts and, for `up`, stops the in-process server.
fn serve_mount(
    rt: &tokio::runtime::Runtime,
    backend: Arc<dyn chorus_client::Backend>,
    mountpoint: &Path,
    opts: chorus_client::MountOptions,
    stop: Stop,
) -> anyhow::Result<()> {
    let mut handle = match chorus_client::mount(backend.clone(), mountpoint, opts) {
        Ok(h) => h,
        Err(e) => {
            finish(rt, stop)?;
            return Err(e.into());
        }
    };
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
    let unmounted = handle.unmount().context("unmount failed");
    // Unmounted: nothing is cached any more; give the callbacks back so no
    // change waits for a recall this mount would never answer.
    backend.release();
    finish(rt, stop)?;
    unmounted?;
    println!("unmounted {}; stopped", mountpoint.display());
    Ok(())
}

/// What to stop after unmounting.
enum Stop {
    Nothing,
    /// The in-process server of a one-replica `up`.
    Task(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>),
    /// The replica processes of a replicated `up`.
    Processes(Vec<std::process::Child>),
}

fn finish(rt: &tokio::runtime::Runtime, stop: Stop) -> anyhow::Result<()> {
    match stop {
        Stop::Nothing => Ok(()),
        Stop::Task(stop, task) => {
            let _ = stop.send(());
            rt.block_on(task).context("server task panicked")?
        }
        Stop::Processes(children) => {
            stop_children(children);
            Ok(())
        }
    }
}

/// SIGTERM to each replica we started, then a bounded wait, then SIGKILL.
fn stop_children(mut children: Vec<std::process::Child>) {
    for c in &children {
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for c in &mut children {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if std::time::Instant::now() > deadline => {
                    tracing::warn!(pid = c.id(), "replica did not stop in 10 s; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    info.lines().any(|l| l.split(' ').nth(4) == Some(canon.to_string_lossy().as_ref()))
}

fn up(mountpoint: PathBuf, data: PathBuf, port: u16) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create data folder {}", data.display()))?;
    check_layout(&data, 1)?;
    let certs = data.join("certs");
    if !certs.join("ca.pem").exists() {
        chorus_wire::certs::init_cluster(&certs, 3).with_context(|| format!("cannot create certificates in {}", certs.display()))?;
        info!(certs = %certs.display(), "created cluster certificates");
    }
    let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let rt = runtime()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = chorus_server::ServerConfig { data_dir: data.join("replica-0"), certs_dir: certs.clone(), replica_id: 0, listen };
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
        match rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(2), connect_client(&certs, listen)).await }) {
            Ok(Ok(b)) => break b,
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    serve_mount(&rt, backend, &mountpoint, chorus_client::MountOptions::default(), Stop::Task(stop_tx, server))
}

/// Records how many replicas a data folder was made for, so `up` never
/// mixes a one-replica store with a replicated cluster's logs.
fn check_layout(data: &Path, replicas: usize) -> anyhow::Result<bool> {
    let marker = data.join("replicas");
    match std::fs::read_to_string(&marker) {
        Ok(s) => {
            let had: usize = s.trim().parse().with_context(|| format!("{} is damaged", marker.display()))?;
            if had != replicas {
                bail!("{} holds a {had}-replica cluster; run `chorus up` with --replicas {had} (or use another --data)", data.display());
            }
            Ok(false)
        }
        Err(_) => {
            let fresh = !data.join("replica-0").exists();
            if !fresh && replicas != 1 {
                bail!("{} holds a 1-replica cluster; run `chorus up` with --replicas 1 (or use another --data)", data.display());
            }
            std::fs::write(&marker, format!("{replicas}\n")).with_context(|| format!("cannot write {}", marker.display()))?;
            Ok(fresh)
        }
    }
}

fn up_replicated(mountpoint: PathBuf, data: PathBuf, port: u16, replicas: usize) -> anyhow::Result<()> {
    if replicas.is_multiple_of(2) || replicas > 63 {
        bail!("--replicas must be odd and at most 63 (got {replicas})");
    }
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create data folder {}", data.display()))?;
    let fresh = check_layout(&data, replicas)?;
    let certs = data.join("certs");
    if !certs.join("ca.pem").exists() {
        chorus_wire::certs::init_cluster(&certs, replicas).with_context(|| format!("cannot create certificates in {}", certs.display()))?;
    }
    let peers: Vec<SocketAddr> = (0..replicas).map(|i| SocketAddr::from(([127, 0, 0, 1], port + i as u16))).collect();
    let peer_list = peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let exe = std::env::current_exe().context("cannot find the chorus executable")?;
    let mut children = Vec::new();
    for i in 0..replicas {
        let dir = data.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .with_context(|| format!("cannot open {}/server.log", dir.display()))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("server").arg("--certs").arg(&certs).arg("--data").arg(&dir);
        cmd.args(["--id", &i.to_string(), "--peers", &peer_list]);
        if fresh {
            cmd.arg("--init-new-cluster");
        }
        cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                stop_children(children);
                return Err(e).context("cannot start a replica process");
            }
        }
    }
    info!(replicas, %peer_list, "replicas started; logs in <data>/replica-N/server.log");
    let rt = runtime()?;
    let backend = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                connect_replicated(&certs, peers.clone(), remote::KEEPALIVE_MS_DEFAULT),
            )
            .await
            {
                Ok(Ok(b)) => break Ok(b),
                Ok(Err(e)) if tokio::time::Instant::now() > deadline => break Err(e),
                _ if tokio::time::Instant::now() > deadline => break Err(anyhow::anyhow!("the cluster did not answer within 60 s")),
                _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    });
    let backend = match backend {
        Ok(b) => b,
        Err(e) => {
            stop_children(children);
            return Err(e).context("replicas started but no session could be opened (see <data>/replica-N/server.log)");
        }
    };
    serve_mount(&rt, backend, &mountpoint, chorus_client::MountOptions::default(), Stop::Processes(children))
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
