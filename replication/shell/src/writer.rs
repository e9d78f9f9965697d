//! Group commit: one OS thread owns the [`SegmentLog`] and turns every
//! submission waiting in its queue into one batch, one `fdatasync`.
//!
//! What a submitted item means for the log is up to a [`Journal`]: raw
//! [`LogOp`]s ([`RawOps`]), or the replication core's writes
//! ([`crate::disk::CoreJournal`]). Encoding happens on the writer thread, so
//! the driver's thread never serializes what goes to disk.
//!
//! Guarantees:
//! - Submissions are applied in the order they were submitted, and a
//!   submission's ticket is published in [`Durable`] only after everything up
//!   to and including it is on disk. Tickets are published in order, so
//!   "durable through ticket t" covers every earlier ticket.
//! - An IO error stops the writer for good and is published in
//!   [`Durable::error`]; nothing submitted after it is ever reported durable.
//!   The driver must then stop the replica (it cannot acknowledge anything).
//!
//! Assumes: a single submitter (the driver) — tickets are numbered by it.
//!
//! Why a thread and not a tokio task: `fdatasync` blocks for milliseconds;
//! on a dedicated thread it never stalls the runtime, and the next batch
//! accumulates in the queue while the current one syncs, which is exactly
//! what makes the group commit large under load. Why a watch channel for the
//! result: the driver only ever needs the newest durable point, so the
//! notifications coalesce by construction and the channel is bounded.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use crate::log::{LogError, SegmentLog};

/// Submissions waiting for the writer; the driver waits (backpressure) beyond.
pub const WRITER_QUEUE_SUBMISSIONS_MAX: usize = 4096;
/// Largest number of submissions made durable by one fdatasync.
pub const BATCH_SUBMISSIONS_MAX: usize = 4096;
/// Buffered bytes after which a batch stops taking submissions and syncs.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A batch slower than this (apply + sync) is logged.
pub const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(50);

/// Turns submitted items into changes of the log (on the writer thread).
pub trait Journal: Send + 'static {
    /// What is submitted.
    type Item: Send + 'static;
    /// Applies one item to the log (buffered; the writer syncs after the batch).
    fn apply(&mut self, log: &mut SegmentLog, item: Self::Item) -> Result<(), LogError>;
}

/// The plain journal: items are [`LogOp`]s.
pub struct RawOps;

impl Journal for RawOps {
    type Item = LogOp;
    fn apply(&mut self, log: &mut SegmentLog, op: LogOp) -> Result<(), LogError> {
        match op {
            LogOp::Append { index, payload } => log.append(index, &payload)?,
            LogOp::TruncateSuffix { last_kept } => log.truncate_suffix(last_kept)?,
            LogOp::Roll => log.roll()?,
            LogOp::TruncatePrefix { first_needed } => {
                log.truncate_prefix(first_needed)?;
            }
            LogOp::Superblock(bytes) => log.write_superblock(&bytes)?,
        }
        Ok(())
    }
}

/// One change to the durable state.
#[derive(Debug, Clone)]
#[allow(missing_docs)] // the fields are named for what they hold
pub enum LogOp {
    /// Append a record (index = last + 1, or any index on an empty log).
    Append { index: u64, payload: Vec<u8> },
    /// Discard every record after `last_kept`.
    TruncateSuffix { last_kept: u64 },
    /// Start a new segment for the next append.
    Roll,
    /// Drop whole segments entirely below `first_needed` (after syncing).
    TruncatePrefix { first_needed: u64 },
    /// Replace the superblock (durable view state).
    Superblock(Vec<u8>),
}

/// The newest durable point of the log.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Every submission with a ticket ≤ this is durable.
    pub ticket: u64,
    /// Last index in the log at that point.
    pub last_index: u64,
    /// First index kept in the log.
    pub first_index: u64,
    /// Number of fdatasync batches so far (to measure group commit).
    pub syncs: u64,
    /// Time spent in sync calls so far, in µs.
    pub sync_us_total: u64,
    /// Set once the writer failed; it then stops.
    pub error: Option<Arc<String>>,
}

/// Handle of the writer thread.
pub struct LogWriter<J: Journal = RawOps> {
    queue: mpsc::Sender<(u64, Vec<J::Item>)>,
    ticket_next: u64,
    durable: watch::Receiver<Durable>,
    thread: Option<JoinHandle<()>>,
}

impl<J: Journal> LogWriter<J> {
    /// Starts the writer thread on an opened log.
    pub fn start(log: SegmentLog, journal: J) -> LogWriter<J> {
        let (queue_tx, queue_rx) = mpsc::channel(WRITER_QUEUE_SUBMISSIONS_MAX);
        let initial =
            Durable { ticket: 0, last_index: log.last_index(), first_index: log.first_index(), syncs: 0, sync_us_total: 0, error: None };
        let (durable_tx, durable_rx) = watch::channel(initial);
        let thread = std::thread::Builder::new()
            .name("chorus-log-writer".into())
            .spawn(move || writer_loop(log, journal, queue_rx, durable_tx))
            .expect("spawn log writer thread");
        LogWriter { queue: queue_tx, ticket_next: 1, durable: durable_rx, thread: Some(thread) }
    }

    /// Queues `ops` as one submission; returns its ticket. Waits while the
    /// queue is full. Fails only if the writer has stopped.
    pub async fn submit(&mut self, ops: Vec<J::Item>) -> Result<u64, WriterStopped> {
        let ticket = self.ticket_next;
        self.queue.send((ticket, ops)).await.map_err(|_| WriterStopped)?;
        self.ticket_next += 1;
        Ok(ticket)
    }

    /// Like [`submit`](Self::submit) but never waits: `Err(ops)` back if full.
    pub fn try_submit(&mut self, ops: Vec<J::Item>) -> Result<u64, Vec<J::Item>> {
        let ticket = self.ticket_next;
        match self.queue.try_send((ticket, ops)) {
            Ok(()) => {
                self.ticket_next += 1;
                Ok(ticket)
            }
            Err(mpsc::error::TrySendError::Full((_, ops)) | mpsc::error::TrySendError::Closed((_, ops))) => Err(ops),
        }
    }

    /// The durable point; `changed().await` on it wakes after each batch.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    /// Ticket of the last submission made.
    pub fn last_ticket(&self) -> u64 {
        self.ticket_next - 1
    }

    /// Stops accepting work, lets the thread finish what is queued, joins it.
    pub fn shutdown(mut self) {
        let (dead_tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, dead_tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread is gone (it failed or was shut down).
#[derive(Debug, thiserror::Error)]
#[error("the log writer has stopped")]
pub struct WriterStopped;

fn writer_loop<J: Journal>(
    mut log: SegmentLog,
    mut journal: J,
    mut queue: mpsc::Receiver<(u64, Vec<J::Item>)>,
    durable: watch::Sender<Durable>,
) {
    let mut syncs = 0u64;
    let mut sync_us_total = 0u64;
    while let Some(first) = queue.blocking_recv() {
        let batch_started = std::time::Instant::now();
        let mut ticket = first.0;
        let mut result = apply(&mut log, &mut journal, first.1);
        let mut submissions = 1usize;
        while result.is_ok() && submissions < BATCH_SUBMISSIONS_MAX && log.buffered_bytes() < BATCH_BYTES_MAX {
            let Ok((t, items)) = queue.try_recv() else { break };
            assert_eq!(t, ticket + 1, "tickets must be consecutive");
            ticket = t;
            submissions += 1;
            result = apply(&mut log, &mut journal, items);
        }
        let applied = batch_started.elapsed();
        let buffered_bytes = log.buffered_bytes();
        let sync_started = std::time::Instant::now();
        let result = result.and_then(|()| log.sync());
        syncs += 1;
        sync_us_total += sync_started.elapsed().as_micros() as u64;
        if batch_started.elapsed() >= SLOW_BATCH {
            tracing::warn!(
                submissions,
                buffered_bytes,
                apply_ms = applied.as_millis() as u64,
                total_ms = batch_started.elapsed().as_millis() as u64,
                "slow log batch"
            );
        }
        match result {
            Ok(()) => {
                durable.send_replace(Durable {
                    ticket,
                    last_index: log.last_index(),
                    first_index: log.first_index(),
                    syncs,
                    sync_us_total,
                    error: None,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "log writer failed; no further write will be acknowledged");
                durable.send_modify(|d| d.error = Some(Arc::new(e.to_string())));
                return;
            }
        }
    }
}

fn apply<J: Journal>(log: &mut SegmentLog, journal: &mut J, items: Vec<J::Item>) -> Result<(), LogError> {
    for item in items {
        journal.apply(log, item)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_batches_and_orders() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        let mut writer = LogWriter::start(log, RawOps);
        let mut durable = writer.durable();
        let n = 2000u64;
        for i in 1..=n {
            writer.submit(vec![LogOp::Append { index: i, payload: vec![i as u8; 100] }]).await.unwrap();
        }
        let last = writer.last_ticket();
        let d = durable.wait_for(|d| d.ticket >= last).await.unwrap().clone();
        assert_eq!(d.last_index, n);
        assert!(d.syncs < n, "group commit must batch: {} syncs for {n} appends", d.syncs);
        writer.submit(vec![LogOp::TruncateSuffix { last_kept: 10 }, LogOp::Superblock(b"v9".to_vec())]).await.unwrap();
        let last = writer.last_ticket();
        let d = durable.wait_for(|d| d.ticket >= last).await.unwrap().clone();
        assert_eq!(d.last_index, 10);
        writer.shutdown();
        let (mut log, rec) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.superblock.as_deref(), Some(&b"v9"[..]));
        assert_eq!(log.last_index(), 10);
        assert_eq!(log.read(7).unwrap(), vec![7u8; 100]);
    }
}
