//! A trivial deterministic state machine for the shell's tests and
//! benchmark: a map of registers.
//!
//! Command: `[key u64 LE][value bytes]` — sets register `key` to `value`;
//! replies with the number of commands applied so far (u64 LE), which makes
//! every command's position visible to the client.
//! Query: `[key u64 LE]` → the register's value (empty if unset); the empty
//! query → `[applied commands u64 LE][digest u64 LE][registers u64 LE]`.
//!
//! Deterministic: no clock, no randomness; `BTreeMap` for a stable digest.

use std::collections::BTreeMap;

use chorus_replication::{fnv64, ApplyContext, CheckpointError, Op, StateMachine};
use serde::{Deserialize, Serialize};

/// Map of registers (see the module doc for the command format).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registers {
    registers: BTreeMap<u64, Vec<u8>>,
    applied_commands: u64,
    applied_op: Op,
}

/// Builds a command setting `key` to `value`.
pub fn command(key: u64, value: &[u8]) -> Vec<u8> {
    let mut c = key.to_le_bytes().to_vec();
    c.extend_from_slice(value);
    c
}

/// Decoded answer of the empty query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Commands applied.
    pub applied_commands: u64,
    /// Digest of the registers.
    pub digest: u64,
    /// Number of registers set.
    pub registers: u64,
}

impl Summary {
    /// Parses the empty query's answer.
    pub fn decode(bytes: &[u8]) -> Option<Summary> {
        if bytes.len() != 24 {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        Some(Summary { applied_commands: word(0), digest: word(1), registers: word(2) })
    }
}

impl Registers {
    /// Empty map.
    pub fn new() -> Registers {
        Registers::default()
    }
}

impl StateMachine for Registers {
    fn apply(&mut self, context: ApplyContext, command: &[u8]) -> Vec<u8> {
        assert!(context.op >= self.applied_op, "apply went back");
        self.applied_op = context.op;
        if command.len() >= 8 {
            let key = u64::from_le_bytes(command[..8].try_into().unwrap());
            self.registers.insert(key, command[8..].to_vec());
        }
        self.applied_commands += 1;
        self.applied_commands.to_le_bytes().to_vec()
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        if query.len() == 8 {
            let key = u64::from_le_bytes(query.try_into().unwrap());
            return self.registers.get(&key).cloned().unwrap_or_default();
        }
        let mut out = self.applied_commands.to_le_bytes().to_vec();
        out.extend_from_slice(&self.digest().to_le_bytes());
        out.extend_from_slice(&(self.registers.len() as u64).to_le_bytes());
        out
    }

    fn applied_index(&self) -> Op {
        self.applied_op
    }

    fn checkpoint(&self) -> Vec<u8> {
        bincode::serialize(self).expect("encode registers")
    }

    fn restore(&mut self, index: Op, checkpoint: &[u8]) -> Result<(), CheckpointError> {
        let state: Registers = bincode::deserialize(checkpoint).map_err(|e| CheckpointError(e.to_string()))?;
        if state.applied_op > index {
            return Err(CheckpointError(format!("registers at op {} labelled {index}", state.applied_op)));
        }
        *self = state;
        Ok(())
    }

    fn digest(&self) -> u64 {
        fnv64(&bincode::serialize(&self.registers).expect("encode registers"))
    }
}
