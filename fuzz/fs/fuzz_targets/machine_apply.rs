//! The server's request decoding plus handling: `FsMachine`
//! (`server/src/machine.rs`) as the replication core drives it, with
//! arbitrary command and query bytes: `apply` (with an `ApplyContext` whose
//! op never goes back and whose leader stamp does anything), `query`,
//! `read_set`, `take_changed`, `refusal_when_disk_low`, and `restore` of an
//! arbitrary image.
//!
//! A command is either raw bytes or a well-formed request (one of a few
//! templates over small inode and handle numbers and names) that may then
//! be damaged (a byte flipped, cut short, bytes appended), so inputs reach
//! both the decoder's error paths and the store behind it.
//!
//! Fails on: a panic anywhere (a poison command: every replica dies at the
//! same op, and again at every replay), an exit (a storage failure), and on
//! - a reply that does not decode as an `OpResult`;
//! - garbage or a query sent as a command not answered EINVAL, or changing
//!   the store's command count or tag, or leaving changed objects behind;
//! - a command that decodes not moving the store by exactly one command with
//!   the tag `(ctx.op, command_time(...))`;
//! - a query that is not a `Request::Query` not answered EINVAL;
//! - `read_set` not sorted and unique, or naming objects for bytes that are
//!   not a query and its answer; `refusal_when_disk_low` refusing garbage;
//! - a refused `restore` changing the state;
//! - `fsck` finding a broken invariant at the end, and, for inputs that ask,
//!   a second machine fed the same entries answering or hashing differently.

#![no_main]

#[path = "../../scratch.rs"]
mod scratch;

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use chorus_fs::ops::{Caller, Errno, Op, OpResult, Query, Request, SetAttr};
use chorus_fs::{FsStore, StoreImage, StoreOptions};
use chorus_replication::{ApplyContext, StateMachine};
use chorus_server::machine::{
    command_time, decode_request, decode_result, encode_request, FsMachine,
};
use libfuzzer_sys::fuzz_target;

const STEPS_MAX: usize = 48;

#[derive(Arbitrary, Debug)]
struct Input {
    replay: bool,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Apply {
        next_entry: bool,
        clock: Clock,
        command: Bytes,
    },
    Query(Bytes),
    ReadSet {
        query: Bytes,
        answer: Vec<u8>,
    },
    TakeChanged,
    DiskLow(Bytes),
    Restore(Vec<u8>),
}

/// The leader's stamp of the entry, relative to the previous one.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Clock {
    Same,
    Later(u16),
    Earlier(u16),
    Max,
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum Bytes {
    Raw(Vec<u8>),
    Request {
        template: Template,
        damage: Option<Damage>,
    },
}

#[derive(Arbitrary, Debug)]
struct Template {
    which: u8,
    a: u8,
    b: u8,
    name: u8,
    uid: u8,
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Flip { at: u16, xor: u8 },
    Cut(u16),
    Append(Vec<u8>),
}

fn ino(x: u8) -> u64 {
    match x {
        0..=239 => u64::from(x % 12),
        240..=247 => u64::MAX,
        _ => u64::from(x) << 40,
    }
}

fn name(x: u8) -> Vec<u8> {
    const NAMES: [&[u8]; 8] = [b"a", b"b", b"c", b"", b".", b"..", b"a/b", b"a\0"];
    NAMES[usize::from(x) % NAMES.len()].to_vec()
}

fn request(t: &Template) -> Request {
    let caller = match t.uid % 3 {
        0 => Caller::root(),
        1 => Caller {
            uid: 1000,
            gid: 1000,
            pid: 7,
            groups: vec![],
        },
        _ => Caller {
            uid: u32::MAX,
            gid: 0,
            pid: 0,
            groups: vec![0, 5],
        },
    };
    let (a, b, n) = (ino(t.a), ino(t.b), name(t.name));
    let op = match t.which % 24 {
        0 => Op::Create {
            parent: a,
            name: n,
            mode: 0o644,
            umask: 0o022,
            flags: libc::O_RDWR,
            excl: t.b & 1 == 0,
        },
        1 => Op::Mkdir {
            parent: a,
            name: n,
            mode: 0o755,
            umask: 0,
        },
        2 => Op::Mknod {
            parent: a,
            name: n,
            mode: libc::S_IFIFO | 0o600,
            umask: 0,
            rdev: 0,
        },
        3 => Op::Symlink {
            parent: a,
            name: n,
            target: name(t.b),
        },
        4 => Op::Link {
            ino: a,
            newparent: b,
            newname: n,
        },
        5 => Op::Unlink { parent: a, name: n },
        6 => Op::Rmdir { parent: a, name: n },
        7 => Op::Rename {
            parent: a,
            name: n,
            newparent: b,
            newname: name(t.uid),
            flags: u32::from(t.uid >> 4) % 3,
        },
        8 => Op::SetAttr {
            ino: a,
            attr: SetAttr {
                size: Some(u64::from(t.b) * 1000),
                mode: Some(0o600),
                ..Default::default()
            },
        },
        9 => Op::Open {
            ino: a,
            flags: [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC]
                [usize::from(t.b) % 3],
        },
        10 => Op::Release {
            ino: a,
            fh: ino(t.b),
        },
        11 => Op::Write {
            ino: a,
            fh: ino(t.b),
            offset: u64::from(t.name) * 100,
            data: vec![7; usize::from(t.uid)],
            flags: 0,
        },
        12 => Op::Fallocate {
            ino: a,
            fh: ino(t.b),
            offset: 0,
            length: u64::from(t.name) * 512,
            mode: 0,
        },
        13 => Op::SetXattr {
            ino: a,
            name: b"user.x".to_vec(),
            value: n,
            flags: 0,
        },
        14 => Op::RemoveXattr {
            ino: a,
            name: b"user.x".to_vec(),
        },
        15 => Op::Fsync {
            ino: a,
            datasync: t.b & 1 == 0,
        },
        q => {
            let query = match q {
                16 => Query::Lookup { parent: a, name: n },
                17 => Query::GetAttr { ino: a },
                18 => Query::Read {
                    ino: a,
                    offset: u64::from(t.b),
                    size: u32::from(t.name) * 64,
                },
                19 => Query::ReadLink { ino: a },
                20 => Query::ReadDir {
                    ino: a,
                    cookie: u64::from(t.b % 4),
                    max_entries: u32::from(t.name),
                    plus: t.uid & 1 == 0,
                },
                21 => Query::GetXattr {
                    ino: a,
                    name: b"user.x".to_vec(),
                },
                22 => Query::ListXattr { ino: a },
                _ => Query::StatFs,
            };
            return Request::Query { caller, query };
        }
    };
    Request::Mutate { caller, op }
}

fn bytes(b: &Bytes) -> Vec<u8> {
    match b {
        Bytes::Raw(v) => v.clone(),
        Bytes::Request { template, damage } => {
            let mut v = encode_request(&request(template)).expect("a template encodes");
            match damage {
                None => {}
                Some(Damage::Flip { at, xor }) => {
                    let i = usize::from(*at) % v.len();
                    v[i] ^= xor;
                }
                Some(Damage::Cut(n)) => v.truncate(usize::from(*n) % (v.len() + 1)),
                Some(Damage::Append(extra)) => v.extend_from_slice(extra),
            }
            v
        }
    }
}

fn einval() -> OpResult {
    Err(Errno(libc::EINVAL))
}

/// Two stores reused across inputs (see fs_apply.rs: a fresh RocksDB per
/// input is ~100 ms; a reset to the fresh image well under one), replaced
/// every `INPUTS_PER_STORE` inputs, on tmpfs, removed at exit.
struct Stores {
    one: Arc<FsStore>,
    two: Arc<FsStore>,
    fresh: StoreImage,
    inputs: u64,
}

const INPUTS_PER_STORE: u64 = 64;

impl Stores {
    fn new(generation: u64) -> Stores {
        let dir = scratch::scratch("machine_apply").join(generation.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a folder for the stores");
        let options = StoreOptions {
            skip_wal: true,
            ..StoreOptions::default()
        };
        let one =
            Arc::new(FsStore::open(&dir.join("one"), options.clone()).expect("open a fresh store"));
        let two = Arc::new(FsStore::open(&dir.join("two"), options).expect("open a fresh store"));
        let fresh = one.export_image().expect("image of a fresh store");
        Stores {
            one,
            two,
            fresh,
            inputs: 0,
        }
    }
}

static STORES: Mutex<(u64, Option<Stores>)> = Mutex::new((0, None));

fn reply(bytes: &[u8], what: &str) -> OpResult {
    decode_result(bytes).unwrap_or_else(|e| panic!("{what}: the reply does not decode: {e}"))
}

fuzz_target!(|input: Input| {
    let mut slot = STORES.lock().expect("stores lock");
    let (generation, stores) = &mut *slot;
    if stores.as_ref().is_none_or(|s| s.inputs >= INPUTS_PER_STORE) {
        if let Some(old) = stores.take() {
            drop(old); // closes the old RocksDBs before their folder goes
            let _ = std::fs::remove_dir_all(
                scratch::scratch("machine_apply").join(generation.to_string()),
            );
        }
        *generation += 1;
        *stores = Some(Stores::new(*generation));
    }
    let stores = stores.as_mut().expect("stores just made");
    stores.inputs += 1;
    stores
        .one
        .import_image(&stores.fresh)
        .expect("reset to the fresh state");
    let mut machine = FsMachine::new(stores.one.clone()).expect("a machine on a fresh store");
    let mut entries: Vec<(ApplyContext, Vec<u8>, Vec<u8>)> = Vec::new();
    let (mut op, mut ts_ms) = (1u64, 1_700_000_000_000u64);
    for step in input.steps.iter().take(STEPS_MAX) {
        match step {
            Step::Apply {
                next_entry,
                clock,
                command,
            } => {
                if *next_entry {
                    op += 1;
                }
                ts_ms = match *clock {
                    Clock::Same => ts_ms,
                    Clock::Later(d) => ts_ms.saturating_add(u64::from(d)),
                    Clock::Earlier(d) => ts_ms.saturating_sub(u64::from(d)),
                    Clock::Max => u64::MAX,
                    Clock::Any(t) => t,
                };
                // Three clients (chosen by the clock's low bits): handles and
                // locks of one are not another's.
                let context = ApplyContext {
                    op,
                    timestamp_ms: ts_ms,
                    client: ts_ms % 3,
                };
                let command = bytes(command);
                let (before_index, before_tag) = (machine.store().applied_index(), machine.tag());
                let answer = machine.apply(context, &command);
                let result = reply(&answer, "apply");
                match decode_request(&command) {
                    Ok(Request::Mutate { .. }) => {
                        assert_eq!(
                            machine.store().applied_index(),
                            before_index + 1,
                            "a command is one store command"
                        );
                        let tag = machine.tag();
                        assert_eq!(tag.op, op, "tag op");
                        assert_eq!(
                            tag.last_now,
                            command_time(before_tag.last_now, ts_ms),
                            "tag time"
                        );
                    }
                    Ok(Request::Query { .. }) | Err(_) => {
                        assert_eq!(result, einval(), "a command that is not a Mutate");
                        assert_eq!(
                            machine.store().applied_index(),
                            before_index,
                            "refused command moved the store"
                        );
                        assert_eq!(machine.tag(), before_tag, "refused command moved the tag");
                        assert!(
                            machine.take_changed().is_empty(),
                            "refused command changed objects"
                        );
                    }
                }
                entries.push((context, command, answer));
            }
            Step::Query(q) => {
                let q = bytes(q);
                let answer = machine.query(&q);
                let result = reply(&answer, "query");
                if !matches!(decode_request(&q), Ok(Request::Query { .. })) {
                    assert_eq!(result, einval(), "a query that is not a Query");
                } else {
                    let set = machine.read_set(&q, &answer);
                    assert!(
                        set.windows(2).all(|w| w[0] < w[1]),
                        "read set not sorted and unique: {set:?}"
                    );
                }
            }
            Step::ReadSet { query, answer } => {
                let q = bytes(query);
                let set = machine.read_set(&q, answer);
                assert!(
                    set.windows(2).all(|w| w[0] < w[1]),
                    "read set not sorted and unique: {set:?}"
                );
                if !matches!(decode_request(&q), Ok(Request::Query { .. }))
                    || decode_result(answer).is_err()
                {
                    assert!(set.is_empty(), "objects read from garbage: {set:?}");
                }
            }
            Step::TakeChanged => {
                let changed = machine.take_changed();
                assert!(
                    machine.take_changed().is_empty(),
                    "changed objects given twice: {changed:?}"
                );
            }
            Step::DiskLow(c) => {
                let c = bytes(c);
                if let Some(refusal) = machine.refusal_when_disk_low(&c) {
                    assert!(
                        matches!(decode_request(&c), Ok(Request::Mutate { .. })),
                        "refused garbage"
                    );
                    assert_eq!(reply(&refusal, "refusal"), Err(Errno(libc::ENOSPC)));
                }
            }
            Step::Restore(image) => {
                let before = (machine.store().applied_index(), machine.tag());
                if machine.restore(op, image).is_err() {
                    assert_eq!(
                        (machine.store().applied_index(), machine.tag()),
                        before,
                        "a refused restore changed the state"
                    );
                } else {
                    // Only a valid image restores: the replay below no longer applies.
                    return;
                }
            }
        }
    }
    let problems = stores.one.fsck().expect("fsck: store error");
    assert!(
        problems.is_empty(),
        "inconsistent state after {} entries: {problems:#?}",
        entries.len()
    );
    if input.replay {
        stores
            .two
            .import_image(&stores.fresh)
            .expect("reset to the fresh state");
        let mut again = FsMachine::new(stores.two.clone()).expect("a second machine");
        for (i, (context, command, answer)) in entries.iter().enumerate() {
            assert!(
                again.apply(*context, command) == *answer,
                "replay answered command {} differently",
                i + 1
            );
        }
        assert_eq!(
            stores.two.digest().unwrap(),
            stores.one.digest().unwrap(),
            "replay diverged"
        );
    }
});
