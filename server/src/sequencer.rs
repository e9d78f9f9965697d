//! The sequencer: turns client mutations into log commands.
//!
//! Guarantees: commands get consecutive indexes starting at the store's
//! applied index + 1, and leader time stamps that never go backwards even if
//! the wall clock does (NTP step), so file times never run backwards across
//! a sequence of operations. Stamping, numbering and applying happen under
//! one lock, so the log order is the apply order.
//!
//! Assumes: this process is the only writer of the store. With replication
//! this becomes the leader's sequencing step and `apply` moves behind commit.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chorus_fs::ops::{Caller, Command, Op, OpResult, Timestamp};
use chorus_fs::{FsStore, StoreError};
use parking_lot::Mutex;

pub struct Sequencer {
    store: Arc<FsStore>,
    last_stamp: Mutex<Timestamp>,
}

impl Sequencer {
    pub fn new(store: Arc<FsStore>) -> Self {
        Sequencer { store, last_stamp: Mutex::new(Timestamp::default()) }
    }

    /// Stamps, numbers and applies one mutation; returns its reply.
    pub fn submit(&self, caller: Caller, op: Op) -> Result<OpResult, StoreError> {
        let mut last = self.last_stamp.lock();
        let now = wall_clock().max(*last);
        *last = now;
        let index = self.store.applied_index() + 1;
        let cmd = Command { now, caller, op };
        let reply = self.store.apply(index, &cmd)?;
        assert_eq!(self.store.applied_index(), index, "apply must advance the index by one");
        Ok(reply)
    }
}

fn wall_clock() -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp::new(d.as_secs() as i64, d.subsec_nanos())
}
