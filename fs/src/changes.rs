//! Which inodes one command changed: what a client caching under a callback
//! must drop (callbacks, issue 9).
//!
//! The object of an inode is everything a query answers from it: its
//! attributes; for a file its data, xattrs and symlink target; for a
//! directory also its entries (so a negative lookup, "no such name in D", is
//! D's). The set is read off the command's pending writes, not reported by
//! each operation, so an operation that forgets to report cannot make a
//! client read stale data.
//!
//! Guarantees:
//! - Complete: every inode whose record, entries (`dirents`, `dirindex`:
//!   keyed by the parent), data blocks or xattrs the command writes or
//!   deletes is in the set, new and freed inodes included.
//! - Precise where it is cheap: an inode record rewritten with only its open
//!   count changed (open, release, create of an existing name without
//!   O_TRUNC) does not count: no query answers the open count, so no cached
//!   copy goes stale. Handles and counters belong to no object.
//! - Deterministic: sorted, without duplicates; a function of the committed
//!   state and the command's writes only.

use std::collections::BTreeSet;

use crate::error::StoreError;
use crate::keys::{corrupt, Table};
use crate::ops::Ino;
use crate::records::{decode, Inode};
use crate::view::Tx;

/// The inodes whose cached copies the pending writes of `tx` make stale.
pub(crate) fn changed_inos(tx: &Tx) -> Result<Vec<Ino>, StoreError> {
    let mut changed = BTreeSet::new();
    for (table, key, value) in tx.pending() {
        // No wildcard: a new table must be classified here, or it is missed.
        match table {
            // Locks are never cached: every lock request is a command.
            Table::Meta | Table::Handles | Table::Locks => continue,
            Table::Inodes => {
                if !inode_record_changed(tx, key, value)? {
                    continue;
                }
            }
            Table::Dirents | Table::DirIndex | Table::Blocks | Table::Xattrs => {}
        }
        changed.insert(owner(table, key)?);
    }
    Ok(changed.into_iter().collect())
}

/// The inode a key of `table` belongs to: its first 8 bytes (see `keys`).
fn owner(table: Table, key: &[u8]) -> Result<Ino, StoreError> {
    match key.get(..8) {
        Some(prefix) => Ok(u64::from_be_bytes(prefix.try_into().expect("8 bytes"))),
        None => Err(corrupt(table, key, format!("key of {} bytes has no inode prefix", key.len()))),
    }
}

/// Whether writing `new` over the committed inode record changes what any
/// query can see (everything but the open count).
fn inode_record_changed(tx: &Tx, key: &[u8], new: Option<&[u8]>) -> Result<bool, StoreError> {
    let old = tx.committed(Table::Inodes, key)?;
    match (old, new) {
        (None, None) => Ok(false),
        (Some(old), Some(new)) => {
            let old: Inode = decode(Table::Inodes, key, &old)?;
            let mut new: Inode = decode(Table::Inodes, key, new)?;
            new.open_count = old.open_count;
            Ok(new != old)
        }
        _ => Ok(true),
    }
}
