//! The simulator's state machine: per-key append-only lists of unique values.
//!
//! Chosen because every failure the checkers look for shows in it: a lost
//! append is a value missing from the final list, a double execution is a
//! value present twice, and reads return whole lists, which pins down the
//! order the linearizability checker must explain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state_machine::{ApplyContext, CheckpointError, StateMachine};
use crate::{fnv64, Op};

/// A command (or query) for [`KvStore`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Append `value` to the list under `key`; replies with the new length.
    Append {
        /// Key.
        key: u8,
        /// Value (unique per run).
        value: u64,
    },
    /// Read the list under `key`; replies with the list.
    Read {
        /// Key.
        key: u8,
    },
}

impl KvCommand {
    /// Wire form.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("encode command")
    }
}

/// Per-key append-only lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    lists: BTreeMap<u8, Vec<u64>>,
    applied: Op,
    /// The last clients whose sessions all ended, with the op where the
    /// machine heard it: in the digest, so replicas that disagree on when a
    /// client went away (and so on what it still owned) are caught.
    gone: Vec<(Op, crate::message::ClientId)>,
    /// The key the last apply appended to (callbacks: what changed).
    #[serde(skip)]
    changed: Option<u8>,
}

impl KvStore {
    /// Empty store.
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// All lists.
    pub fn lists(&self) -> &BTreeMap<u8, Vec<u64>> {
        &self.lists
    }

    /// The last clients the machine heard were gone, with the op.
    pub fn gone(&self) -> &[(Op, crate::message::ClientId)] {
        &self.gone
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, context: ApplyContext, command: &[u8]) -> Vec<u8> {
        self.applied = context.op;
        match bincode::deserialize::<KvCommand>(command) {
            Ok(KvCommand::Append { key, value }) => {
                let list = self.lists.entry(key).or_default();
                list.push(value);
                self.changed = Some(key);
                bincode::serialize(&(list.len() as u64)).expect("encode")
            }
            Ok(KvCommand::Read { key }) => self.query(&KvCommand::Read { key }.encode()),
            Err(_) => Vec::new(),
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match bincode::deserialize::<KvCommand>(query) {
            Ok(KvCommand::Read { key }) => {
                let list = self.lists.get(&key).cloned().unwrap_or_default();
                bincode::serialize(&list).expect("encode")
            }
            _ => Vec::new(),
        }
    }

    fn applied_index(&self) -> Op {
        self.applied
    }

    fn read_set(&self, query: &[u8], _answer: &[u8]) -> Vec<crate::message::ObjectId> {
        match bincode::deserialize::<KvCommand>(query) {
            Ok(KvCommand::Read { key }) => vec![key as u64],
            _ => Vec::new(),
        }
    }

    fn client_gone(&mut self, context: ApplyContext) {
        const GONE_KEPT_MAX: usize = 64;
        self.gone.push((context.op, context.client));
        if self.gone.len() > GONE_KEPT_MAX {
            self.gone.remove(0);
        }
    }

    fn take_changed(&mut self) -> Vec<crate::message::ObjectId> {
        self.changed.take().map(|k| vec![k as u64]).unwrap_or_default()
    }

    fn checkpoint(&self) -> Vec<u8> {
        bincode::serialize(self).expect("encode store")
    }

    fn restore(&mut self, index: Op, checkpoint: &[u8]) -> Result<(), CheckpointError> {
        let store: KvStore = bincode::deserialize(checkpoint).map_err(|e| CheckpointError(e.to_string()))?;
        if store.applied > index {
            return Err(CheckpointError(format!("store at {} labelled {}", store.applied, index)));
        }
        *self = store;
        Ok(())
    }

    fn digest(&self) -> u64 {
        fnv64(&bincode::serialize(&(&self.lists, &self.gone)).expect("encode lists"))
    }
}
