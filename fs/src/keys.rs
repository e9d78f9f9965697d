//! The tables (RocksDB column families) of the state and the byte layout of
//! their keys.
//!
//! Guarantees: every integer in a key is big-endian, so RocksDB's bytewise key
//! order is numeric order: the blocks of an inode are contiguous and in block
//! order, the entries of a directory by cookie are in cookie order. Every
//! decoder checks lengths and fails with `StoreError::Corrupt`, never panics.

use crate::error::StoreError;
use crate::ops::Ino;

/// One column family. The order of [`Table::ALL`] is the digest order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Table {
    /// `META_KEY` → `Meta` (applied index, counters, format version);
    /// `TAG_KEY` → `AppliedTag` (replicated stores only).
    Meta,
    /// ino → `Inode`.
    Inodes,
    /// (parent, name) → `Dirent` (ino, kind, cookie).
    Dirents,
    /// (parent, cookie) → `DirSlot` (name, ino, kind): readdir order.
    DirIndex,
    /// (ino, block index) → bytes of the block (missing bytes read as zeros).
    Blocks,
    /// fh → `Handle` (ino, open flags, owning client).
    Handles,
    /// (ino, name) → value.
    Xattrs,
    /// ino → `Vec<LockRecord>`: the byte-range locks held on a file.
    Locks,
}

impl Table {
    pub(crate) const ALL: [Table; 8] =
        [Table::Meta, Table::Inodes, Table::Dirents, Table::DirIndex, Table::Blocks, Table::Handles, Table::Xattrs, Table::Locks];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Inodes => "inodes",
            Table::Dirents => "dirents",
            Table::DirIndex => "dirindex",
            Table::Blocks => "blocks",
            Table::Handles => "handles",
            Table::Xattrs => "xattrs",
            Table::Locks => "locks",
        }
    }
}

/// The key of the counters in the `meta` table.
pub(crate) const META_KEY: &[u8] = b"meta";
/// The key of the [`crate::AppliedTag`] in the `meta` table (replicated stores only).
pub(crate) const TAG_KEY: &[u8] = b"tag";

pub(crate) fn u64_key(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

/// (a, b) as 16 big-endian bytes.
pub(crate) fn pair_key(a: u64, b: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&a.to_be_bytes());
    key.extend_from_slice(&b.to_be_bytes());
    key
}

/// (a, bytes) as 8 big-endian bytes followed by the bytes.
pub(crate) fn named_key(a: u64, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len());
    key.extend_from_slice(&a.to_be_bytes());
    key.extend_from_slice(name);
    key
}

/// Key range [from, to) covering every key that starts with `a`'s 8 bytes.
pub(crate) fn prefix_range(a: u64) -> (Vec<u8>, Vec<u8>) {
    let from = u64_key(a);
    // a + 1 cannot overflow for real inode numbers (allocated from 1 upwards).
    let to = if a == u64::MAX { vec![0xff; 9] } else { u64_key(a + 1) };
    (from, to)
}

pub(crate) fn inode_key(ino: Ino) -> Vec<u8> {
    u64_key(ino)
}

pub(crate) fn block_key(ino: Ino, block: u64) -> Vec<u8> {
    pair_key(ino, block)
}

/// Splits a 16-byte pair key; the table name is for the error message.
pub(crate) fn split_pair_key(table: Table, key: &[u8]) -> Result<(u64, u64), StoreError> {
    if key.len() != 16 {
        return Err(corrupt(table, key, format!("pair key of {} bytes, expected 16", key.len())));
    }
    let a = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let b = u64::from_be_bytes(key[8..].try_into().expect("8 bytes"));
    Ok((a, b))
}

/// Splits an (u64, name) key; returns the name part.
pub(crate) fn split_named_key(table: Table, key: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    if key.len() < 8 {
        return Err(corrupt(table, key, format!("named key of {} bytes, expected >= 8", key.len())));
    }
    let a = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    Ok((a, &key[8..]))
}

pub(crate) fn corrupt(table: Table, key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt { table: table.name(), key_hex: hex::encode(key), reason }
}
