//! Runs one replica of a shell cluster with the register-map state machine.
//!
//! `chorus-repl-node certs DIR --replicas N` creates the cluster CA and certificates;
//! `chorus-repl-node init --id I --replicas N --data DIR` writes a fresh replica log;
//! `chorus-repl-node run --id I --peers A0,A1,A2 --certs DIR --data DIR` serves
//! until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use chorus_replication_shell::log::SEGMENT_BYTES_DEFAULT;
use chorus_replication_shell::machine::Registers;
use chorus_replication_shell::node::{self, NodeConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the cluster CA and certificates in DIR.
    Certs {
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
    /// Initialize the log of replica ID of a brand-new universe.
    Init {
        #[arg(long)]
        id: u8,
        #[arg(long, default_value_t = 3)]
        replicas: u8,
        #[arg(long)]
        data: PathBuf,
    },
    /// Run replica ID.
    Run {
        #[arg(long)]
        id: u8,
        /// Addresses of all replicas, by id, comma separated.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<SocketAddr>,
        #[arg(long)]
        certs: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// Client requests per log entry (core default if unset).
        #[arg(long)]
        batch: Option<usize>,
        /// Uncommitted entries in flight (core default if unset).
        #[arg(long)]
        pipeline: Option<u64>,
        /// Entries between checkpoints (shell default if unset).
        #[arg(long)]
        checkpoint_interval: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Certs { dir, replicas } => Ok(chorus_wire::certs::init_cluster(&dir, replicas)?),
        Command::Init { id, replicas, data } => Ok(chorus_replication_shell::disk::init(&data, SEGMENT_BYTES_DEFAULT, id, replicas)?),
        Command::Run { id, peers, certs, data, batch, pipeline, checkpoint_interval } => {
            let mut core = node::core_config(peers.len() as u8);
            if let Some(b) = batch {
                core.batch_requests_max = b;
            }
            if let Some(p) = pipeline {
                core.pipeline_depth_max = p;
            }
            if let Some(c) = checkpoint_interval {
                core.checkpoint_interval_ops = c;
            }
            let cfg = NodeConfig {
                id,
                peers,
                certs_dir: certs,
                data_dir: data,
                core,
                seed: std::process::id() as u64 ^ ((id as u64) << 32),
                checkpoints_dir: None,
                disk_reserve_bytes: chorus_replication_shell::node::DISK_RESERVE_BYTES_DEFAULT,
                admit: None,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    let _ = stop_tx.send(true);
                });
                node::run(cfg, Registers::new(), stop_rx).await
            })
        }
    }
}
