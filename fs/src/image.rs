//! [`StoreImage`]: the whole state of a store as one self-contained value,
//! for the replication core's checkpoint/restore (state transfer).
//!
//! Guarantees:
//! - An image holds every pair of every table (the `meta` table with the
//!   counters and the [`AppliedTag`] included), read from ONE snapshot, and
//!   the digest of exactly those pairs; [`FsStore::digest`] of a store that
//!   imported it equals that digest.
//! - A `StoreImage` only exists validated: built by `export`, or decoded by
//!   [`StoreImage::from_bytes`], which checks the format version, the tables
//!   (names, order, strictly increasing keys), the meta record and tag, and
//!   recomputes the digest, so a torn or altered image is refused before the
//!   store is touched. Decoding is bounded by [`IMAGE_BYTES_MAX`].
//!
//! Assumes: the state fits in memory (twice, during import). This is the
//! simple, O(state) first step; checkpoints by reference to a RocksDB
//! checkpoint (hard links, streamed files) replace it in the "Recovery"
//! issue.
//!
//! [`FsStore::digest`]: crate::FsStore::digest

use bincode::Options;
use rocksdb::{WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::keys::{Table, META_KEY, TAG_KEY};
use crate::records::{decode, AppliedTag, Meta, FORMAT_VERSION};
use crate::view::{cf, Db, SnapView};

/// Largest image we build or decode (bytes). Beyond it a full image is the
/// wrong tool anyway: checkpoints by reference are the next step.
pub const IMAGE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Bytes an image spends per pair besides key and value (two length prefixes).
const PAIR_OVERHEAD_BYTES: u64 = 16;

/// The digest of a state: SHA-256 over every table in a fixed order, every
/// pair in key order, each length-prefixed. Shared by `FsStore::digest` and
/// image validation so both hash exactly the same way.
pub(crate) struct StateHasher(Sha256);

impl StateHasher {
    pub(crate) fn new() -> StateHasher {
        StateHasher(Sha256::new())
    }
    pub(crate) fn begin_table(&mut self, name: &str) {
        self.0.update((name.len() as u64).to_be_bytes());
        self.0.update(name.as_bytes());
    }
    pub(crate) fn pair(&mut self, key: &[u8], value: &[u8]) {
        self.0.update((key.len() as u64).to_be_bytes());
        self.0.update(key);
        self.0.update((value.len() as u64).to_be_bytes());
        self.0.update(value);
    }
    pub(crate) fn end_table(&mut self) {
        self.0.update(b"end");
    }
    pub(crate) fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct TableImage {
    name: String,
    pairs: Vec<(ByteBuf, ByteBuf)>,
}

/// The whole state of a store; see the module comment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoreImage {
    format_version: u32,
    digest: [u8; 32],
    tables: Vec<TableImage>,
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().reject_trailing_bytes().with_limit(IMAGE_BYTES_MAX)
}

fn invalid<T>(reason: impl Into<String>) -> Result<T, StoreError> {
    Err(StoreError::Image(reason.into()))
}

impl StoreImage {
    /// The encoded image (bincode, fixed-width integers).
    pub fn to_bytes(&self) -> Vec<u8> {
        // An image within IMAGE_BYTES_MAX always encodes; failing is a bug.
        codec().serialize(self).expect("store image encodes")
    }

    /// Decodes and validates an image (see the module comment).
    pub fn from_bytes(bytes: &[u8]) -> Result<StoreImage, StoreError> {
        if bytes.len() as u64 > IMAGE_BYTES_MAX {
            return invalid(format!("{} bytes exceed {IMAGE_BYTES_MAX}", bytes.len()));
        }
        let image: StoreImage = codec().deserialize(bytes).map_err(|e| StoreError::Image(e.to_string()))?;
        image.validate()?;
        Ok(image)
    }

    /// SHA-256 digest of the state the image holds (as `FsStore::digest`).
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The tag the image holds (`None` for an untagged store).
    pub fn tag(&self) -> Option<AppliedTag> {
        self.meta_and_tag().expect("a StoreImage is validated").1
    }

    /// The store's command index the image holds.
    pub fn applied_index(&self) -> u64 {
        self.meta_and_tag().expect("a StoreImage is validated").0.applied_index
    }

    fn table(&self, table: Table) -> &TableImage {
        let position = Table::ALL.iter().position(|t| *t == table).expect("table in ALL");
        &self.tables[position]
    }

    /// The meta record and tag, decoded from the `meta` table.
    fn meta_and_tag(&self) -> Result<(Meta, Option<AppliedTag>), StoreError> {
        let mut meta = None;
        let mut tag = None;
        for (key, value) in &self.table(Table::Meta).pairs {
            if key.as_slice() == META_KEY {
                meta = Some(decode::<Meta>(Table::Meta, key, value)?);
            } else if key.as_slice() == TAG_KEY {
                tag = Some(decode::<AppliedTag>(Table::Meta, key, value)?);
            } else {
                return invalid(format!("unknown meta key {}", hex::encode(key)));
            }
        }
        let Some(meta) = meta else {
            return invalid("no meta record");
        };
        if meta.format_version != FORMAT_VERSION {
            return Err(StoreError::FormatVersion { found: meta.format_version, expected: FORMAT_VERSION });
        }
        Ok((meta, tag))
    }

    fn validate(&self) -> Result<(), StoreError> {
        if self.format_version != FORMAT_VERSION {
            return Err(StoreError::FormatVersion { found: self.format_version, expected: FORMAT_VERSION });
        }
        if self.tables.len() != Table::ALL.len() {
            return invalid(format!("{} tables, expected {}", self.tables.len(), Table::ALL.len()));
        }
        let mut hasher = StateHasher::new();
        for (table, image) in Table::ALL.iter().zip(&self.tables) {
            if image.name != table.name() {
                return invalid(format!("table {} where {} belongs", image.name, table.name()));
            }
            hasher.begin_table(&image.name);
            let mut previous: Option<&[u8]> = None;
            for (key, value) in &image.pairs {
                // RocksDB's bytewise order is slice order: strictly increasing
                // keys mean no duplicates and the digest order of a real store.
                if previous.is_some_and(|p| p >= key.as_slice()) {
                    return invalid(format!("keys of table {} out of order", image.name));
                }
                previous = Some(key);
                hasher.pair(key, value);
            }
            hasher.end_table();
        }
        if hasher.finish() != self.digest {
            return invalid("digest does not match the contents");
        }
        self.meta_and_tag()?;
        Ok(())
    }
}

/// Reads the whole state from one snapshot.
pub(crate) fn export(view: &SnapView) -> Result<StoreImage, StoreError> {
    let mut tables = Vec::with_capacity(Table::ALL.len());
    let mut hasher = StateHasher::new();
    let mut bytes: u64 = 0;
    for table in Table::ALL {
        hasher.begin_table(table.name());
        let mut pairs = Vec::new();
        view.for_each(table, |key, value| {
            bytes = bytes.saturating_add(key.len() as u64 + value.len() as u64 + PAIR_OVERHEAD_BYTES);
            // Past the bound, only count: the image is refused below.
            if bytes <= IMAGE_BYTES_MAX {
                hasher.pair(key, value);
                pairs.push((ByteBuf::from(key.to_vec()), ByteBuf::from(value.to_vec())));
            }
        })?;
        if bytes > IMAGE_BYTES_MAX {
            return invalid(format!("state of more than {IMAGE_BYTES_MAX} bytes"));
        }
        hasher.end_table();
        tables.push(TableImage { name: table.name().to_string(), pairs });
    }
    let image = StoreImage { format_version: FORMAT_VERSION, digest: hasher.finish(), tables };
    debug_assert!(image.validate().is_ok(), "an exported image validates");
    Ok(image)
}

/// Replaces the database's contents by the image in one fsynced WriteBatch;
/// returns the new meta record and tag. The caller holds the applier lock.
pub(crate) fn import(db: &Db, image: &StoreImage) -> Result<(Meta, Option<AppliedTag>), StoreError> {
    let (meta, tag) = image.meta_and_tag()?;
    let mut batch = WriteBatch::default();
    for table in Table::ALL {
        let handle = cf(db, table);
        // Everything in [first, last] goes: one range tombstone plus the last key.
        let mut iter = db.raw_iterator_cf(handle);
        iter.seek_to_first();
        let first = iter.key().map(<[u8]>::to_vec);
        iter.seek_to_last();
        let last = iter.key().map(<[u8]>::to_vec);
        iter.status()?;
        if let (Some(first), Some(last)) = (first, last) {
            batch.delete_range_cf(handle, &first, &last);
            batch.delete_cf(handle, &last);
        }
        // Later writes in a batch win over the tombstones above.
        for (key, value) in &image.table(table).pairs {
            batch.put_cf(handle, key, value);
        }
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo)?;
    Ok((meta, tag))
}
