//! The transport's decoding of untrusted bytes: the frame reader (the slice
//! decoder and the stream reader fed in chunks of every size), the RPC
//! envelope and bincode message bodies.
//!
//! Fails on: a panic or an abort (e.g. an allocation sized by a hostile
//! length); the stream reader and the slice decoder seeing different frames
//! in the same bytes; a decoded body that does not survive a round trip.

#![no_main]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use chorus_wire::{codec, frame, rpc};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};

/// A message with the serde shapes ChorusFS messages use (enums with struct
/// variants, byte blobs, strings, options, nested sequences, signed times).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Msg {
    Mutate {
        caller: Caller,
        op: Op,
    },
    Query {
        caller: Caller,
        ino: u64,
        name: Vec<u8>,
    },
    Reply(Result<Vec<Entry>, i32>),
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Caller {
    uid: u32,
    gid: u32,
    pid: u32,
    groups: Vec<u32>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Op {
    Write {
        ino: u64,
        fh: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        flags: i32,
    },
    Rename {
        parent: u64,
        name: Vec<u8>,
        newparent: u64,
        newname: Vec<u8>,
        flags: u32,
    },
    SetTime(Option<(i64, u32)>),
    Name(String),
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Entry {
    ino: u64,
    cookie: u64,
    name: Vec<u8>,
    attr: Option<(u64, bool)>,
}

/// A reader that hands out at most `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits (the reader is always ready).
fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("a read of in-memory bytes did not finish");
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    // The slice decoder: frames back to back until the bytes end or one fails.
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    let mut clean_end = true;
    while !rest.is_empty() {
        match frame::decode(rest) {
            Ok((payload, used)) => {
                assert!(used >= frame::FRAME_HEADER_BYTES && used <= rest.len());
                assert_eq!(payload.len() + frame::FRAME_HEADER_BYTES, used);
                frames.push(payload);
                rest = &rest[used..];
            }
            Err(_) => {
                clean_end = false;
                break;
            }
        }
    }
    // The stream reader must see the same frames, whatever the read sizes.
    let mut reader = Chunked {
        data,
        chunk: usize::from(chunk).max(1),
    };
    for (i, expected) in frames.iter().enumerate() {
        let got = run_ready(frame::read_frame(&mut reader))
            .expect("stream reader failed where decode did not");
        assert_eq!(got.as_deref(), Some(*expected), "frame {i} differs");
    }
    let last = run_ready(frame::read_frame(&mut reader));
    if clean_end {
        assert!(
            matches!(last, Ok(None)),
            "clean end of stream read as {last:?}"
        );
    } else {
        assert!(
            last.is_err(),
            "a frame the decoder refused was read: {last:?}"
        );
    }
    // Envelopes and bodies.
    for payload in frames {
        let Ok((_kind, _id)) = rpc::parse_envelope(payload) else {
            continue;
        };
        let body = &payload[rpc::ENVELOPE_HEADER_BYTES..];
        if let Ok(msg) = codec::from_bytes::<Msg>(body) {
            let again = codec::to_bytes(&msg).expect("a decoded message encodes");
            assert_eq!(codec::from_bytes::<Msg>(&again).expect("re-decodes"), msg);
        }
    }
});
