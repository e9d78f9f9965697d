//! The donor's side of checkpoint transfer (`checkpoint::serve`): the
//! request decoding (`FileRequest` is private; `serve` on a QUIC connection
//! is the public way in) plus the file lookup, on a real loopback QUIC
//! connection with the cluster's mutual TLS, as a joining replica reaches it.
//!
//! Each input is written raw on a new bidirectional stream (the tag byte,
//! the frame header, the request: all fuzzed), then the stream is finished
//! and the donor's whole answer read. The donor's root holds one complete
//! checkpoint (`cp-1`), one incomplete fetch (`cp-2.partial`), a file beside
//! them, and a file outside the root.
//!
//! Fails on: a panic in the donor (its task panics; detected because the
//! stream then ends without the answer the model expects) or in the target;
//! a hang past libFuzzer's timeout; and on the answer differing from a model
//! of the contract: no answer unless the tag, the frame and the request are
//! good; `Refused` unless both names are plain file names and name a file
//! of a complete checkpoint (one with a manifest); otherwise `Ok` with the
//! file's size, followed by exactly its bytes from the requested offset.
//! So nothing outside a complete checkpoint is ever served.

#![no_main]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chorus_wire::certs::{self, Role};
use chorus_wire::{codec, endpoint, frame, tls};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

/// `checkpoint.rs`'s private types, same shapes (serde encodes by shape).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum FileAnswer {
    Ok { bytes_total: u64 },
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct FileRequest {
    checkpoint: String,
    file: String,
    offset: u64,
}

const FETCH_STREAM_TAG: u8 = 0xC7;

struct Donor {
    runtime: tokio::runtime::Runtime,
    client: quinn::Endpoint,
    server: quinn::Endpoint,
    conn: Option<quinn::Connection>,
    root: PathBuf,
}

impl Donor {
    fn new() -> Donor {
        let scratch = common::scratch("checkpoint_serve");
        let pki = scratch.join("pki");
        common::clear(&pki);
        certs::init_cluster(&pki, 2).expect("cluster certificates");
        let root = scratch.join("checkpoints");
        common::clear(&root);
        let cp = root.join("cp-1");
        std::fs::create_dir_all(&cp).unwrap();
        std::fs::write(cp.join("CHORUS-MANIFEST"), b"manifest bytes").unwrap();
        std::fs::write(
            cp.join("000001.sst"),
            (0..=255u8).cycle().take(3000).collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::write(cp.join("CURRENT"), b"MANIFEST-000001\n").unwrap();
        std::fs::write(cp.join("empty"), b"").unwrap();
        let partial = root.join("cp-2.partial");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("000002.sst"), b"incomplete").unwrap();
        std::fs::write(root.join("stray"), b"beside the checkpoints").unwrap();
        std::fs::write(scratch.join("secret"), b"outside the root").unwrap();

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (client, server) = runtime.block_on(async {
            let donor_id = certs::load_identity(&pki, Role::Replica(0)).unwrap();
            let joiner_id = certs::load_identity(&pki, Role::Replica(1)).unwrap();
            let server = endpoint::server(
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                tls::server_config(&donor_id).unwrap(),
            )
            .unwrap();
            let client = endpoint::client(
                tls::client_config(&joiner_id).unwrap(),
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            )
            .unwrap();
            (client, server)
        });
        Donor {
            runtime,
            client,
            server,
            conn: None,
            root,
        }
    }

    /// The connection to the donor, made again if it was closed.
    fn connection(&mut self) -> quinn::Connection {
        if let Some(c) = &self.conn {
            if c.close_reason().is_none() {
                return c.clone();
            }
        }
        let (server, client, root) = (self.server.clone(), self.client.clone(), self.root.clone());
        let addr = server.local_addr().unwrap();
        let conn = self.runtime.block_on(async move {
            let accept = tokio::spawn(async move {
                let conn = server
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("handshake");
                tokio::spawn(chorus_replication_shell::checkpoint::serve(conn, root));
            });
            let conn = client
                .connect(addr, &Role::Replica(0).dns_name())
                .unwrap()
                .await
                .expect("connect to the donor");
            accept.await.unwrap();
            conn
        });
        self.conn = Some(conn.clone());
        conn
    }
}

fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}

/// What the donor must answer: None (no answer at all), or the answer and
/// the bytes after it.
fn model(root: &Path, input: &[u8]) -> Option<(FileAnswer, Vec<u8>)> {
    let (&tag, rest) = input.split_first()?;
    if tag != FETCH_STREAM_TAG {
        return None;
    }
    let (payload, _) = frame::decode(rest).ok()?;
    let request: FileRequest = codec::from_bytes(payload).ok()?;
    let refused = || Some((FileAnswer::Refused(String::new()), Vec::new()));
    if !plain(&request.checkpoint) || !plain(&request.file) {
        return refused();
    }
    let dir = root.join(&request.checkpoint);
    if !dir.join("CHORUS-MANIFEST").is_file() {
        return refused();
    }
    match std::fs::read(dir.join(&request.file)) {
        Ok(bytes) => {
            let from = request.offset.min(bytes.len() as u64) as usize;
            Some((
                FileAnswer::Ok {
                    bytes_total: bytes.len() as u64,
                },
                bytes[from..].to_vec(),
            ))
        }
        Err(_) => refused(),
    }
}

static DONOR: Mutex<Option<Donor>> = Mutex::new(None);

fuzz_target!(|input: &[u8]| {
    let mut slot = DONOR.lock().unwrap();
    let donor = slot.get_or_insert_with(Donor::new);
    let conn = donor.connection();
    let expected = model(&donor.root, input);
    let request = input.to_vec();
    let response = donor.runtime.block_on(async move {
        let (mut send, mut recv) = conn.open_bi().await.expect("open a stream to the donor");
        // The donor may stop reading early (a bad tag): a failed write is fine.
        let _ = send.write_all(&request).await;
        let _ = send.finish();
        let read = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 20)).await;
        read.expect("the donor did not end its answer within 15 s")
    });
    let response = match response {
        Ok(bytes) => bytes,
        // The donor dropped the stream without a word (a bad request).
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(_))) => Vec::new(),
        Err(e) => panic!("reading the donor's answer: {e}"),
    };
    match expected {
        None => assert!(
            response.is_empty(),
            "answered a bad request: {} bytes",
            response.len()
        ),
        Some((expected_answer, expected_bytes)) => {
            let (payload, used) = frame::decode(&response).unwrap_or_else(|e| {
                panic!(
                    "no answer frame ({} bytes: {e}); the donor's task died?",
                    response.len()
                )
            });
            let answer: FileAnswer = codec::from_bytes(payload).expect("answer decodes");
            match (&answer, &expected_answer) {
                (FileAnswer::Refused(_), FileAnswer::Refused(_)) => {
                    assert_eq!(used, response.len(), "bytes after a refusal")
                }
                (FileAnswer::Ok { .. }, FileAnswer::Ok { .. }) => {
                    assert_eq!(answer, expected_answer, "size of the file served");
                    assert!(
                        response[used..] == expected_bytes[..],
                        "served bytes differ from the file's"
                    );
                }
                _ => panic!("donor answered {answer:?}, the contract says {expected_answer:?}"),
            }
        }
    }
});
