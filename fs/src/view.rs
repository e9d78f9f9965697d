//! Read access to the state, for queries (a RocksDB snapshot) and for the
//! applier (a write overlay on top of the database).
//!
//! Guarantees: a [`SnapView`] sees one committed state for all its reads, so a
//! query never mixes two commands' effects. A [`Tx`] sees the committed state
//! plus its own pending writes (reads-your-writes inside one command), and
//! turns into exactly one `WriteBatch`, so a command is applied atomically.
//! Assumes only one `Tx` exists at a time (the applier lock in `store.rs`), so
//! the database under it does not change while it runs.

use std::collections::BTreeMap;

use rocksdb::{DBWithThreadMode, ReadOptions, SingleThreaded, SnapshotWithThreadMode, WriteBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;
use crate::keys::Table;
use crate::records::{decode, encode};

pub(crate) type Db = DBWithThreadMode<SingleThreaded>;

pub(crate) fn cf(db: &Db, table: Table) -> &rocksdb::ColumnFamily {
    // Every table is created at open; a missing one is a bug.
    db.cf_handle(table.name()).unwrap_or_else(|| panic!("column family {} missing", table.name()))
}

/// A key/value pair read from a table.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// Reads of the state. All scans are bounded by `limit`.
pub(crate) trait View {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Pairs with `from <= key < to`, in key order, at most `limit` of them;
    /// values are left empty unless `values`.
    fn scan_opt(&self, table: Table, from: &[u8], to: &[u8], limit: usize, values: bool) -> Result<Vec<Pair>, StoreError>;

    fn scan(&self, table: Table, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Pair>, StoreError> {
        self.scan_opt(table, from, to, limit, true)
    }

    fn scan_keys(&self, table: Table, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.scan_opt(table, from, to, limit, false)?.into_iter().map(|(key, _)| key).collect())
    }

    fn get_record<T: DeserializeOwned>(&self, table: Table, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get(table, key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(table, key, &bytes)?)),
        }
    }
}

fn scan_db(
    db: &Db,
    snapshot: Option<&SnapshotWithThreadMode<'_, Db>>,
    table: Table,
    from: &[u8],
    to: &[u8],
    limit: usize,
    values: bool,
) -> Result<Vec<Pair>, StoreError> {
    let mut pairs = Vec::new();
    if from >= to || limit == 0 {
        return Ok(pairs);
    }
    let mut readopts = ReadOptions::default();
    readopts.set_iterate_upper_bound(to.to_vec());
    let mut iter = match snapshot {
        Some(snap) => snap.raw_iterator_cf_opt(cf(db, table), readopts),
        None => db.raw_iterator_cf_opt(cf(db, table), readopts),
    };
    iter.seek(from);
    while iter.valid() && pairs.len() < limit {
        let (key, value) = iter.item().expect("valid iterator has an item");
        assert!(key >= from && key < to, "iterator left its bounds");
        pairs.push((key.to_vec(), if values { value.to_vec() } else { Vec::new() }));
        iter.next();
    }
    iter.status()?;
    Ok(pairs)
}

/// A consistent read-only view (one RocksDB snapshot) for queries.
pub(crate) struct SnapView<'a> {
    db: &'a Db,
    snapshot: SnapshotWithThreadMode<'a, Db>,
}

impl<'a> SnapView<'a> {
    pub(crate) fn new(db: &'a Db) -> Self {
        SnapView { db, snapshot: db.snapshot() }
    }
}

impl SnapView<'_> {
    /// Calls `visit` with every pair of `table`, in key order.
    pub(crate) fn for_each(&self, table: Table, mut visit: impl FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        let mut iter = self.snapshot.raw_iterator_cf(cf(self.db, table));
        iter.seek_to_first();
        while let Some((key, value)) = iter.item() {
            visit(key, value);
            iter.next();
        }
        iter.status()?;
        Ok(())
    }
}

impl View for SnapView<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snapshot.get_cf(cf(self.db, table), key)?)
    }
    fn scan_opt(&self, table: Table, from: &[u8], to: &[u8], limit: usize, values: bool) -> Result<Vec<Pair>, StoreError> {
        scan_db(self.db, Some(&self.snapshot), table, from, to, limit, values)
    }
}

/// The pending writes of one command over the committed state.
pub(crate) struct Tx<'a> {
    db: &'a Db,
    /// `None` = delete. BTreeMap: deterministic batch order.
    writes: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(db: &'a Db) -> Self {
        Tx { db, writes: BTreeMap::new() }
    }

    pub(crate) fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((table, key), Some(value));
    }

    pub(crate) fn put_record<T: Serialize>(&mut self, table: Table, key: Vec<u8>, value: &T) {
        self.put(table, key, encode(value));
    }

    pub(crate) fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.writes.insert((table, key), None);
    }

    /// The pending writes in key order; `None` = delete.
    pub(crate) fn pending(&self) -> impl Iterator<Item = (Table, &[u8], Option<&[u8]>)> {
        self.writes.iter().map(|((table, key), value)| (*table, key.as_slice(), value.as_deref()))
    }

    /// The value of `key` before this command (its own writes ignored).
    pub(crate) fn committed(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(cf(self.db, table), key)?)
    }

    /// Forgets every pending write (the command failed).
    pub(crate) fn discard(&mut self) {
        self.writes.clear();
    }

    pub(crate) fn into_batch(self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for ((table, key), value) in self.writes {
            match value {
                Some(value) => batch.put_cf(cf(self.db, table), key, value),
                None => batch.delete_cf(cf(self.db, table), key),
            }
        }
        batch
    }
}

impl View for Tx<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.writes.get(&(table, key.to_vec())) {
            return Ok(pending.clone());
        }
        Ok(self.db.get_cf(cf(self.db, table), key)?)
    }

    fn scan_opt(&self, table: Table, from: &[u8], to: &[u8], limit: usize, values: bool) -> Result<Vec<Pair>, StoreError> {
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let lo = (table, from.to_vec());
        let hi = (table, to.to_vec());
        let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self.writes.range(lo..hi).map(|((_, key), value)| (key, value)).collect();
        // Pending deletes may hide committed keys: read enough to still fill `limit`.
        let deletes = pending.iter().filter(|(_, v)| v.is_none()).count();
        let committed = scan_db(self.db, None, table, from, to, limit.saturating_add(deletes), values)?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = committed.into_iter().collect();
        for (key, value) in pending {
            match value {
                Some(value) => merged.insert(key.clone(), if values { value.clone() } else { Vec::new() }),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}
