//! Message encoding: bincode 1.3 with one explicit set of options.
//!
//! Guarantees: both sides use exactly [`options`] (little endian, varint
//! integers, trailing bytes rejected, a byte limit of [`MESSAGE_BYTES_MAX`]),
//! so an encoded message always fits in a frame and a hostile length prefix
//! inside a message cannot make the decoder allocate more than the limit
//! (bincode counts bytes against the limit and serde pre-allocates
//! cautiously).
//! Assumes: message types are plain serde data (no `deserialize_any`,
//! which bincode does not support).

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::WireError;
use crate::frame::PAYLOAD_BYTES_MAX;

/// Largest encoded message: the frame payload bound minus room for the RPC
/// envelope (kind + request id).
pub const MESSAGE_BYTES_MAX: usize = PAYLOAD_BYTES_MAX - 1024;

/// The bincode options every ChorusFS message is encoded with.
pub fn options() -> impl Options + Copy {
    options_max(MESSAGE_BYTES_MAX)
}

/// [`options`] with another byte limit (the replica transport's larger one).
pub fn options_max(bytes_max: usize) -> impl Options + Copy {
    bincode::DefaultOptions::new().with_limit(bytes_max as u64).with_little_endian().with_varint_encoding().reject_trailing_bytes()
}

/// Serializes `msg`; fails (instead of producing an unsendable frame) when it
/// would exceed [`MESSAGE_BYTES_MAX`].
pub fn to_bytes<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, WireError> {
    options().serialize(msg).map_err(|e| WireError::Encode(e.to_string()))
}

/// Deserializes a `T` from exactly `bytes`.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    from_bytes_max(bytes, MESSAGE_BYTES_MAX)
}

/// [`to_bytes`] with another byte limit.
pub fn to_bytes_max<T: Serialize + ?Sized>(msg: &T, bytes_max: usize) -> Result<Vec<u8>, WireError> {
    options_max(bytes_max).serialize(msg).map_err(|e| WireError::Encode(e.to_string()))
}

/// [`from_bytes`] with another byte limit.
pub fn from_bytes_max<T: DeserializeOwned>(bytes: &[u8], bytes_max: usize) -> Result<T, WireError> {
    if bytes.len() > bytes_max {
        return Err(WireError::Decode(format!("message of {} bytes exceeds the bound of {bytes_max}", bytes.len())));
    }
    options_max(bytes_max).deserialize(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Msg {
        Ping(u64),
        Data { name: String, bytes: Vec<u8> },
    }

    #[test]
    fn round_trip() {
        for msg in [Msg::Ping(7), Msg::Data { name: "f".into(), bytes: vec![1, 2, 3] }] {
            let bytes = to_bytes(&msg).unwrap();
            assert_eq!(from_bytes::<Msg>(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn rejects_trailing_and_garbage() {
        let mut bytes = to_bytes(&Msg::Ping(7)).unwrap();
        bytes.push(0);
        assert!(from_bytes::<Msg>(&bytes).is_err());
        assert!(from_bytes::<Msg>(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // Variant 1 (Data), then a string length of u64::MAX: must fail, not abort.
        let bytes = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(from_bytes::<Msg>(&bytes).is_err());
    }

    #[test]
    fn oversized_message_is_refused_at_encode() {
        let msg = Msg::Data { name: String::new(), bytes: vec![0u8; MESSAGE_BYTES_MAX + 1] };
        assert!(matches!(to_bytes(&msg), Err(WireError::Encode(_))));
    }
}
