//! Shared by the targets of this crate: the scratch directory (../../scratch.rs)
//! and a reader of length-prefixed parts.

#![allow(dead_code)] // each target uses a part

#[path = "../../../scratch.rs"]
mod scratch;
pub use scratch::{clear, scratch};

/// Splits raw fuzz input into parts: `[len u16 LE][bytes]` each, the last
/// part taking the rest. Short input gives short (or empty) parts.
pub struct Parts<'a>(pub &'a [u8]);

impl<'a> Parts<'a> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u64(&mut self) -> u64 {
        let n = self.0.len().min(8);
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(b)
    }

    pub fn sized(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte()) | usize::from(self.byte()) << 8;
        let len = len.min(self.0.len());
        let (part, rest) = self.0.split_at(len);
        self.0 = rest;
        part
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}
