//! Fast serde for byte buffers (file data, checkpoint chunks).
//!
//! Why: serde serializes a plain `Vec<u8>` as a sequence of `u8`, one call
//! per byte; for the 1–4 MiB payloads file data moves in, that costs tens of
//! milliseconds per message in bincode. Marked as bytes (`serialize_bytes`),
//! the same data is one length prefix plus one copy, and the encoding is
//! identical to bincode's `Vec<u8>` encoding (length then bytes), so the
//! choice does not change the wire format.
//!
//! Use on a field: `#[serde(with = "chorus_wire::blob")] data: Vec<u8>`, or
//! the [`Blob`] newtype. Decoding stays bounded by the codec's byte limit.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serializes a byte slice as bytes (for `#[serde(with = "chorus_wire::blob")]`).
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserializes bytes into a `Vec<u8>` (for `#[serde(with = "chorus_wire::blob")]`).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte buffer")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    // Self-describing formats (e.g. JSON in tools) may present bytes as a sequence.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// A byte buffer that serializes as bytes (see the module comment).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Blob(pub Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        deserialize(deserializer).map(Blob)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Blob(v)
    }
}

impl From<Blob> for Vec<u8> {
    fn from(b: Blob) -> Vec<u8> {
        b.0
    }
}

impl std::ops::Deref for Blob {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        data: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Marked {
        #[serde(with = "crate::blob")]
        data: Vec<u8>,
    }

    #[test]
    fn same_encoding_as_plain_vec() {
        let data: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        let plain = codec::to_bytes(&Plain { data: data.clone() }).unwrap();
        let marked = codec::to_bytes(&Marked { data: data.clone() }).unwrap();
        assert_eq!(plain, marked);
        assert_eq!(codec::from_bytes::<Marked>(&plain).unwrap().data, data);
        assert_eq!(codec::from_bytes::<Blob>(&codec::to_bytes(&Blob(data.clone())).unwrap()).unwrap().0, data);
    }

    #[test]
    fn hostile_length_is_refused() {
        // varint tag 0xfd = u64 follows; claims 2^40 bytes.
        let bytes = [0xfd, 0, 0, 0, 0, 0, 1, 0, 0];
        assert!(codec::from_bytes::<Blob>(&bytes).is_err());
    }
}
