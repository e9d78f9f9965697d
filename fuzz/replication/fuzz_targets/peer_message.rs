//! Decoding of what replicas (and clients of a node) send, from arbitrary
//! bytes, and the shell's fast encoders (`replication/shell/src/fastenc.rs`).
//!
//! The first byte picks the decoder, the rest is its input:
//! - `0, 1 (mod 4)`: a peer message, `chorus_replication::Message`, decoded
//!   as the transport does (`chorus_wire::codec::from_bytes_max` with
//!   `PEER_MESSAGE_BYTES_MAX`);
//! - `2 (mod 4)`: a core `Write` (bit 2 clear) or `Durable` (bit 2 set),
//!   decoded as a disk record's body (plain `bincode::deserialize`);
//! - `3 (mod 4)`: a `NodeRequest`, what clients and operators send a node,
//!   decoded with `chorus_wire::codec::from_bytes`.
//!
//! Fails on: a panic or abort (e.g. an allocation sized by a hostile length:
//! libFuzzer's RSS limit); and on
//! - a decoded value that does not round-trip: its encoding decodes to the
//!   same value (re-encodes to the same bytes where there is no `PartialEq`);
//! - the fast encoders (`encode_message`, `FastWrite`, `FastDurable`,
//!   `disk::encode_write`, `disk::encode_snapshot`) producing other bytes than
//!   serde's encoding of the same value (the disk and the wire would then
//!   hold what the decoder does not read back).

#![no_main]

use chorus_replication::{Durable, Message, Write};
use chorus_replication_shell::api::NodeRequest;
use chorus_replication_shell::disk::{encode_snapshot, encode_write, RECORD_VERSION};
use chorus_replication_shell::fastenc::{encode_message, FastDurable, FastWrite};
use chorus_replication_shell::transport::PEER_MESSAGE_BYTES_MAX;
use chorus_wire::codec;
use libfuzzer_sys::fuzz_target;

/// A disk record's payload: version, then bincode of `DiskRecord` (variant
/// index as a u32, then the value).
fn disk_record(variant: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    out.extend_from_slice(&variant.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 | 1 => {
            let Ok(message) = codec::from_bytes_max::<Message>(rest, PEER_MESSAGE_BYTES_MAX) else {
                return;
            };
            let _ = message.kind();
            let fast = encode_message(&message).expect("a decoded message encodes");
            let plain =
                codec::to_bytes_max(&message, PEER_MESSAGE_BYTES_MAX).expect("serde encodes it");
            assert!(
                fast == plain,
                "encode_message differs from serde for {}",
                message.kind()
            );
            let back: Message = codec::from_bytes_max(&fast, PEER_MESSAGE_BYTES_MAX)
                .expect("re-encoded message decodes");
            assert_eq!(back, message, "message changed in a round trip");
        }
        2 if selector & 4 == 0 => {
            let Ok(write) = bincode::deserialize::<Write>(rest) else {
                return;
            };
            let fast = bincode::serialize(&FastWrite(&write)).expect("FastWrite encodes");
            let plain = bincode::serialize(&write).expect("serde encodes it");
            assert!(fast == plain, "FastWrite differs from serde");
            assert!(
                rest.starts_with(&plain),
                "a Write's encoding is not what it was decoded from"
            );
            assert_eq!(
                bincode::deserialize::<Write>(&plain).expect("re-encoded write decodes"),
                write
            );
            assert_eq!(
                encode_write(&write),
                disk_record(0, &plain),
                "disk::encode_write"
            );
        }
        2 => {
            let Ok(durable) = bincode::deserialize::<Durable>(rest) else {
                return;
            };
            let fast = bincode::serialize(&FastDurable(&durable)).expect("FastDurable encodes");
            let plain = bincode::serialize(&durable).expect("serde encodes it");
            assert!(fast == plain, "FastDurable differs from serde");
            assert!(
                rest.starts_with(&plain),
                "a Durable's encoding is not what it was decoded from"
            );
            assert_eq!(
                bincode::deserialize::<Durable>(&plain).expect("re-encoded snapshot decodes"),
                durable
            );
            assert_eq!(
                encode_snapshot(&durable),
                disk_record(1, &plain),
                "disk::encode_snapshot"
            );
        }
        _ => {
            let Ok(request) = codec::from_bytes::<NodeRequest>(rest) else {
                return;
            };
            let bytes = codec::to_bytes(&request).expect("a decoded request encodes");
            let back: NodeRequest = codec::from_bytes(&bytes).expect("re-encoded request decodes");
            assert_eq!(
                codec::to_bytes(&back).unwrap(),
                bytes,
                "request changed in a round trip"
            );
        }
    }
});
