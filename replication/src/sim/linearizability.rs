//! A linearizability checker for per-key append-list histories, in the style
//! of Wing & Gong with the memoization of Lowe (as in Knossos/Porcupine).
//!
//! The history of one key is a set of operations with invocation and
//! completion times. It is linearizable if there is a total order of the
//! completed operations, plus any subset of the pending (never answered)
//! appends, that respects real time (an operation that completed before
//! another was invoked comes first) and in which every operation's result is
//! what the sequential list would give. Pending reads say nothing and are
//! dropped. The search tries every operation that may come next (no
//! unlinearized operation completed before it was invoked), and remembers
//! (linearized set, list) states already explored.

use std::collections::HashSet;

use crate::fnv64;

/// What an operation did and what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Appended `value`; `len` is the reported new length, if answered.
    Append {
        /// The unique value.
        value: u64,
        /// Reported length of the list after the append.
        len: Option<u64>,
    },
    /// Read the list; `list` is the answer, if answered.
    Read {
        /// The list returned.
        list: Option<Vec<u64>>,
    },
}

/// One operation of a key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryOp {
    /// When the client first sent it.
    pub invoke_ms: u64,
    /// When the client got the answer (None: never).
    pub complete_ms: Option<u64>,
    /// What it was.
    pub kind: Kind,
}

/// Operations per key the search accepts (the linearized set is a bit mask).
pub const OPS_PER_KEY_MAX: usize = 128;

/// Checks one key's history; `Err` explains the first contradiction found.
pub fn check(history: &[HistoryOp]) -> Result<(), String> {
    check_with_final(history, None)
}

/// Like [`check`], also given the key's final list (read after every
/// operation ended, once the group converged). It decides each pending
/// append (it ran if and only if its value is in the final list) and fixes
/// the order of all appends (the list's order), which keeps the search
/// linear where unknown fates would make it exponential. The final list is
/// an observation like any read: a wrong one makes the check fail.
pub fn check_with_final(history: &[HistoryOp], final_list: Option<&[u64]>) -> Result<(), String> {
    let in_final = |value: &u64| final_list.is_none_or(|l| l.contains(value));
    let ops: Vec<&HistoryOp> = history
        .iter()
        .filter(|op| !matches!(op.kind, Kind::Read { list: None }))
        .filter(|op| op.complete_ms.is_some() || !matches!(op.kind, Kind::Append { value, .. } if !in_final(&value)))
        .collect();
    assert!(ops.len() <= OPS_PER_KEY_MAX, "history too long for the checker");
    let completed: u128 =
        ops.iter().enumerate().filter(|(_, op)| op.complete_ms.is_some() || final_list.is_some()).fold(0, |m, (i, _)| m | (1u128 << i));
    let mut search = Search { ops: &ops, completed, seen: HashSet::new(), steps: 0, final_list };
    if search.explore(0, &mut Vec::new()) {
        Ok(())
    } else {
        Err(format!("no linearization of {} operations: {:?}", ops.len(), ops))
    }
}

struct Search<'a> {
    ops: &'a [&'a HistoryOp],
    completed: u128,
    seen: HashSet<(u128, u64)>,
    steps: u64,
    final_list: Option<&'a [u64]>,
}

impl Search<'_> {
    fn explore(&mut self, done: u128, list: &mut Vec<u64>) -> bool {
        if done & self.completed == self.completed {
            return true;
        }
        let key = (done, fnv64(&list.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()));
        if !self.seen.insert(key) {
            return false;
        }
        self.steps += 1;
        // No operation may go before one that completed before it started.
        let horizon =
            (0..self.ops.len()).filter(|i| done & (1 << i) == 0).filter_map(|i| self.ops[i].complete_ms).min().unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            if done & (1 << i) != 0 || self.ops[i].invoke_ms > horizon {
                continue;
            }
            match &self.ops[i].kind {
                Kind::Append { value, len } => {
                    if len.is_some_and(|l| l != list.len() as u64 + 1) {
                        continue;
                    }
                    if self.final_list.is_some_and(|f| f.get(list.len()) != Some(value)) {
                        continue;
                    }
                    list.push(*value);
                    let ok = self.explore(done | (1 << i), list);
                    list.pop();
                    if ok {
                        return true;
                    }
                }
                Kind::Read { list: Some(seen) } => {
                    if seen != list {
                        continue;
                    }
                    if self.explore(done | (1 << i), list) {
                        return true;
                    }
                }
                Kind::Read { list: None } => unreachable!("pending reads were dropped"),
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(value: u64, invoke_ms: u64, complete_ms: Option<u64>, len: Option<u64>) -> HistoryOp {
        HistoryOp { invoke_ms, complete_ms, kind: Kind::Append { value, len } }
    }

    fn read(invoke_ms: u64, complete_ms: u64, list: Vec<u64>) -> HistoryOp {
        HistoryOp { invoke_ms, complete_ms: Some(complete_ms), kind: Kind::Read { list: Some(list) } }
    }

    #[test]
    fn concurrent_appends_may_go_either_way() {
        let h = vec![append(1, 0, Some(10), Some(2)), append(2, 1, Some(9), Some(1)), read(11, 12, vec![2, 1])];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn stale_read_is_caught() {
        let h = vec![append(1, 0, Some(5), Some(1)), read(6, 7, vec![])];
        assert!(check(&h).is_err());
    }

    #[test]
    fn pending_append_may_or_may_not_happen() {
        let h = vec![append(1, 0, None, None), read(6, 7, vec![]), read(8, 9, vec![1])];
        assert!(check(&h).is_ok());
        let h = vec![append(1, 0, None, None), read(6, 7, vec![1]), read(8, 9, vec![])];
        assert!(check(&h).is_err());
    }

    #[test]
    fn double_execution_is_caught() {
        let h = vec![append(1, 0, Some(5), Some(1)), read(6, 7, vec![1, 1])];
        assert!(check(&h).is_err());
    }
}
