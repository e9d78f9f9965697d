//! Tests of `FsMachine` (server/src/machine.rs): determinism across
//! replicas, time derivation, checkpoint/restore, restart, garbage input,
//! and exactly-once under the core's session layer.

use std::path::Path;

use chorus_fs::ops::{Caller, Errno, Op, OpResult, Query, Reply, Request, SetAttr, SetTime, Timestamp, ROOT_INO};
use chorus_fs::{FsStore, StoreOptions};
use chorus_replication::{ApplyContext, StateMachine};
use chorus_server::machine::{decode_result, encode_request, timestamp_from_ms, FsMachine, MachineError};

type Log = Vec<(ApplyContext, Vec<u8>)>;

fn machine(dir: &Path) -> FsMachine {
    FsMachine::open(&dir.join("db"), StoreOptions::default()).expect("open machine")
}

fn mutate(caller: &Caller, op: Op) -> Vec<u8> {
    encode_request(&Request::Mutate { caller: caller.clone(), op }).unwrap()
}

fn user(uid: u32) -> Caller {
    Caller { uid, gid: uid, pid: 1, groups: vec![] }
}

/// xorshift64*: a deterministic stream without extra dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct File {
    parent: u64,
    name: Vec<u8>,
    ino: u64,
    fh: Option<u64>,
}

/// Generates a mixed workload (creates, writes, renames, unlinks, setattrs,
/// mkdirs, releases; root and a plain user; 1-4 commands per entry; leader
/// stamps that stall, repeat and jump) by driving `m`, choosing each next
/// command from the replies so far. Returns the log and the replies.
fn workload(m: &mut FsMachine, seed: u64, entries: u64) -> (Log, Vec<Vec<u8>>) {
    let mut rng = Rng(seed | 1);
    let mut files: Vec<File> = Vec::new();
    let mut dirs: Vec<u64> = vec![ROOT_INO];
    let mut log = Vec::new();
    let mut replies = Vec::new();
    let mut ts_ms: u64 = 1_700_000_000_000;
    let mut name_counter = 0u64;
    for op in 1..=entries {
        ts_ms += [0, 0, 1, 1, 7, 1000][rng.below(6) as usize];
        let context = ApplyContext { op, timestamp_ms: ts_ms, client: 1 };
        for _ in 0..1 + rng.below(4) {
            let caller = if rng.below(5) == 0 { user(1000) } else { Caller::root() };
            name_counter += 1;
            let fresh = format!("n{name_counter}").into_bytes();
            let pick = if files.is_empty() { 0 } else { rng.below(files.len() as u64) as usize };
            let kind = if files.is_empty() { 0 } else { rng.below(9) };
            let op = match kind {
                0 | 1 => Op::Create {
                    parent: dirs[rng.below(dirs.len() as u64) as usize],
                    name: fresh.clone(),
                    mode: 0o644,
                    umask: 0o022,
                    flags: libc::O_RDWR,
                    excl: rng.below(2) == 0,
                },
                2 => Op::Write {
                    ino: files[pick].ino,
                    fh: files[pick].fh.unwrap_or(999_999),
                    offset: rng.below(200_000),
                    data: vec![(name_counter % 251) as u8; 1 + rng.below(5000) as usize],
                    flags: 0,
                },
                3 => Op::Rename {
                    parent: files[pick].parent,
                    name: files[pick].name.clone(),
                    newparent: dirs[rng.below(dirs.len() as u64) as usize],
                    newname: fresh.clone(),
                    flags: 0,
                },
                4 => Op::Unlink { parent: files[pick].parent, name: files[pick].name.clone() },
                5 => Op::SetAttr {
                    ino: files[pick].ino,
                    attr: SetAttr {
                        mode: Some(0o600 | rng.below(0o100) as u32),
                        size: (rng.below(2) == 0).then(|| rng.below(100_000)),
                        mtime: Some(if rng.below(2) == 0 { SetTime::Now } else { SetTime::At(Timestamp::new(5, 5)) }),
                        ..SetAttr::default()
                    },
                },
                6 => Op::Mkdir { parent: ROOT_INO, name: fresh.clone(), mode: 0o777, umask: 0 },
                7 => Op::Release { ino: files[pick].ino, fh: files[pick].fh.unwrap_or(999_999) },
                // An exclusive create of an existing name: EEXIST.
                _ => Op::Create {
                    parent: files[pick].parent,
                    name: files[pick].name.clone(),
                    mode: 0o644,
                    umask: 0,
                    flags: libc::O_RDWR,
                    excl: true,
                },
            };
            let bytes = mutate(&caller, op.clone());
            let reply = m.apply(context, &bytes);
            let result = decode_result(&reply).expect("reply decodes");
            match (&op, &result) {
                (Op::Create { parent, name, .. }, Ok(Reply::Created { attr, fh })) => {
                    if let Some(old) = files.iter().position(|f| f.parent == *parent && f.name == *name) {
                        files.remove(old);
                    }
                    files.push(File { parent: *parent, name: name.clone(), ino: attr.ino, fh: Some(*fh) });
                }
                (Op::Mkdir { .. }, Ok(Reply::Entry(attr))) => dirs.push(attr.ino),
                (Op::Rename { newparent, newname, .. }, Ok(_)) => {
                    files[pick].parent = *newparent;
                    files[pick].name = newname.clone();
                }
                (Op::Unlink { .. }, Ok(_)) => {
                    files.remove(pick);
                }
                (Op::Release { .. }, Ok(_)) => files[pick].fh = None,
                _ => {}
            }
            log.push((context, bytes));
            replies.push(reply);
        }
    }
    (log, replies)
}

fn replay(m: &mut FsMachine, log: &[(ApplyContext, Vec<u8>)]) -> Vec<Vec<u8>> {
    log.iter().map(|(context, bytes)| m.apply(*context, bytes)).collect()
}

#[test]
fn same_log_same_replies_and_digests() {
    for seed in [1, 42, 0xdead_beef] {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = machine(da.path());
        let mut b = machine(db.path());
        let (log, replies_a) = workload(&mut a, seed, 120);
        assert!(log.len() > 150, "several commands per entry");
        let replies_b = replay(&mut b, &log);
        assert_eq!(replies_a, replies_b, "seed {seed}");
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.applied_index(), 120);
        assert_eq!(b.applied_index(), 120);
        assert_eq!(a.tag(), b.tag());
        assert_eq!(a.store().applied_index(), log.len() as u64, "one store index per command");
        // The workload is not all errors: creates, writes, renames, unlinks succeed.
        let results: Vec<OpResult> = replies_a.iter().map(|r| decode_result(r).unwrap()).collect();
        let ok = |f: fn(&Reply) -> bool| results.iter().filter(|r| matches!(r, Ok(x) if f(x))).count();
        assert!(ok(|r| matches!(r, Reply::Created { .. })) > 10);
        assert!(ok(|r| matches!(r, Reply::Written { .. })) > 5);
        assert!(results.iter().filter(|r| r.is_err()).count() > 5);
        // A different log gives a different state.
        let dc = tempfile::tempdir().unwrap();
        let mut c = machine(dc.path());
        replay(&mut c, &log[..log.len() - 1]);
        assert_ne!(c.digest(), a.digest());
    }
}

#[test]
fn time_strictly_increases_when_the_leader_stamp_stalls_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = machine(dir.path());
    let ctime = |reply: Vec<u8>| match decode_result(&reply).unwrap() {
        Ok(Reply::Created { attr, .. }) | Ok(Reply::Entry(attr)) => attr.ctime,
        other => panic!("{other:?}"),
    };
    let mut times = Vec::new();
    let mut n = 0;
    // Stamps: stalled for many entries, several commands each; then repeats
    // an older value (as a replica restored from an older stamp might see).
    for (op, ts) in [(1, 10_000), (2, 10_000), (3, 10_000), (4, 9_000), (5, 20_000), (6, 20_000)] {
        for _ in 0..3 {
            n += 1;
            let name = format!("f{n}").into_bytes();
            let op_ = Op::Mkdir { parent: ROOT_INO, name, mode: 0o755, umask: 0 };
            times.push(ctime(m.apply(ApplyContext { op, timestamp_ms: ts, client: 1 }, &mutate(&Caller::root(), op_))));
        }
    }
    for pair in times.windows(2) {
        assert!(pair[0] < pair[1], "{:?} then {:?}", pair[0], pair[1]);
    }
    assert_eq!(times[0], timestamp_from_ms(10_000), "the leader's stamp when it moved on");
    assert_eq!(times[1], Timestamp::new(10, 1), "else 1 ns after the previous command");
    assert_eq!(times[12], timestamp_from_ms(20_000));
    assert_eq!(m.tag().last_now, *times.last().unwrap());
    assert_eq!(m.tag().op, 6);
}

#[test]
fn checkpoint_restore_gives_same_digest_and_same_future() {
    let (da, db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = machine(da.path());
    let (log, replies) = workload(&mut a, 7, 100);
    let cut = log.iter().position(|(c, _)| c.op > 60).unwrap();
    // b applies the prefix, c (holding other state first) restores b's image.
    let mut b = machine(db.path());
    replay(&mut b, &log[..cut]);
    let image = b.checkpoint();
    let mut c = machine(dc.path());
    let (other, _) = workload(&mut c, 99, 10);
    assert!(!other.is_empty());
    c.restore(b.applied_index(), &image).expect("restore");
    assert_eq!(c.digest(), b.digest());
    assert_eq!(c.applied_index(), 60);
    assert_eq!(c.tag(), b.tag());
    assert_eq!(c.store().applied_index(), b.store().applied_index());
    // Files of c's old state are gone.
    let lookup =
        encode_request(&Request::Query { caller: Caller::root(), query: Query::Lookup { parent: ROOT_INO, name: b"n1".to_vec() } })
            .unwrap();
    assert_eq!(c.query(&lookup), b.query(&lookup));
    // The restored machine goes on exactly like the original.
    assert_eq!(replay(&mut c, &log[cut..]), replies[cut..].to_vec());
    assert_eq!(c.digest(), a.digest());
    assert_eq!(c.applied_index(), a.applied_index());
    // The restored state survives a reopen.
    let digest = c.digest();
    drop(c);
    let c = machine(dc.path());
    assert_eq!((c.digest(), c.applied_index()), (digest, 100));
}

#[test]
fn restore_refuses_bad_images_and_keeps_the_state() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = machine(da.path());
    workload(&mut a, 3, 20);
    let image = a.checkpoint();
    let mut b = machine(db.path());
    workload(&mut b, 4, 5);
    let before = (b.digest(), b.applied_index());
    // Labelled with an op before the image's last entry.
    assert!(b.restore(a.applied_index() - 1, &image).is_err());
    // A flipped byte anywhere (here: in the last value) fails the digest check.
    let mut bad = image.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(b.restore(a.applied_index(), &bad).is_err());
    assert!(b.restore(a.applied_index(), &image[..image.len() / 2]).is_err());
    assert!(b.restore(a.applied_index(), b"garbage").is_err());
    assert_eq!((b.digest(), b.applied_index()), before, "a refused image changes nothing");
    // A later label is fine (entries without store commands followed).
    b.restore(a.applied_index() + 5, &image).expect("restore");
    assert_eq!(b.digest(), a.digest());
}

#[test]
fn reopen_keeps_entry_op_and_last_now() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = machine(dir.path());
    let (log, _) = workload(&mut m, 11, 30);
    let (tag, digest, index) = (m.tag(), m.digest(), m.store().applied_index());
    assert_eq!(tag.op, 30);
    drop(m);
    let mut m = machine(dir.path());
    assert_eq!(m.applied_index(), 30);
    assert_eq!(m.tag(), tag);
    assert_eq!((m.digest(), m.store().applied_index()), (digest, index));
    assert_eq!(index, log.len() as u64);
    // A leader stamp behind the stored time still moves time forward.
    let reply = m.apply(
        ApplyContext { op: 31, timestamp_ms: 1, client: 1 },
        &mutate(&Caller::root(), Op::Mkdir { parent: ROOT_INO, name: b"late".to_vec(), mode: 0o755, umask: 0 }),
    );
    let Ok(Reply::Entry(attr)) = decode_result(&reply).unwrap() else { panic!() };
    assert!(attr.ctime > tag.last_now);
    assert_eq!(m.tag().last_now, attr.ctime);
}

#[test]
fn garbage_commands_and_queries_get_einval_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = machine(dir.path());
    workload(&mut m, 5, 5);
    let before = (m.digest(), m.applied_index(), m.tag(), m.store().applied_index());
    let query = encode_request(&Request::Query { caller: Caller::root(), query: Query::StatFs }).unwrap();
    let mut valid = mutate(&Caller::root(), Op::Unlink { parent: ROOT_INO, name: b"x".to_vec() });
    valid.push(0); // trailing byte
    let hostile = [0u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let garbage: Vec<Vec<u8>> = vec![vec![], vec![0xff; 3], hostile.to_vec(), valid, query.clone(), (0..=255).collect()];
    for bytes in &garbage {
        let reply = m.apply(ApplyContext { op: 6, timestamp_ms: 1, client: 1 }, bytes);
        assert_eq!(decode_result(&reply).unwrap(), Err(Errno(libc::EINVAL)));
    }
    assert_eq!((m.digest(), m.applied_index(), m.tag(), m.store().applied_index()), before);
    // A mutation is not a query; a query is one.
    let mutation = mutate(&Caller::root(), Op::Unlink { parent: ROOT_INO, name: b"x".to_vec() });
    assert_eq!(decode_result(&m.query(&mutation)).unwrap(), Err(Errno(libc::EINVAL)));
    assert_eq!(decode_result(&m.query(&hostile)).unwrap(), Err(Errno(libc::EINVAL)));
    assert!(matches!(decode_result(&m.query(&query)).unwrap(), Ok(Reply::StatFs(_))));
}

#[test]
fn a_store_written_by_the_single_replica_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = FsStore::open(&path, StoreOptions::default()).unwrap();
        let op = Op::Mkdir { parent: ROOT_INO, name: b"d".to_vec(), mode: 0o755, umask: 0 };
        let cmd = chorus_fs::ops::Command { now: Timestamp::new(1, 0), caller: Caller::root(), op };
        store.apply(1, &cmd).unwrap().unwrap();
    }
    let err = FsMachine::open(&path, StoreOptions::default()).err().expect("refused");
    assert!(matches!(err, MachineError::Untagged { applied_index: 1 }), "{err}");
}

#[test]
fn under_the_session_layer_a_retry_gets_the_cached_reply_and_runs_once() {
    use chorus_replication::{Config, Entry, Operation, Outcome, Sessions};
    let dir = tempfile::tempdir().unwrap();
    let mut s = Sessions::new(machine(dir.path()), &Config::new(3));
    let request = |session, seq, operation| chorus_replication::Request { client: 1, session, seq, low_water: 0, epoch: 0, operation };
    let entry = |op, requests| Entry { op, view: 0, timestamp_ms: 1_700_000_000_000 + op, requests };
    let out = s.apply_entry(&entry(1, vec![request(0, 1, Operation::Register)]));
    let Outcome::Registered(session) = out[0] else { panic!("{out:?}") };
    let create = Operation::Write(mutate(
        &user(1000),
        Op::Create { parent: ROOT_INO, name: b"f".to_vec(), mode: 0o644, umask: 0, flags: libc::O_RDWR, excl: true },
    ));
    // Root directory is 0o755 root-owned: let user 1000 in first.
    let chmod =
        Operation::Write(mutate(&Caller::root(), Op::SetAttr { ino: ROOT_INO, attr: SetAttr { mode: Some(0o777), ..SetAttr::default() } }));
    let out = s.apply_entry(&entry(2, vec![request(session, 1, chmod), request(session, 2, create.clone())]));
    let Outcome::Done(created) = &out[1] else { panic!("{out:?}") };
    let Ok(Reply::Created { attr, fh }) = decode_result(created).unwrap() else { panic!() };
    let write = |seq, offset: u64| {
        request(
            session,
            seq,
            Operation::Write(mutate(&user(1000), Op::Write { ino: attr.ino, fh, offset, data: b"abc".to_vec(), flags: 0 })),
        )
    };
    let out = s.apply_entry(&entry(3, vec![write(3, 0), write(4, 3)]));
    for outcome in &out {
        let Outcome::Done(reply) = outcome else { panic!("{out:?}") };
        assert!(matches!(decode_result(reply).unwrap(), Ok(Reply::Written { written: 3, .. })));
    }
    let commands = s.machine().store().applied_index();
    let digest = s.machine().digest();
    // The O_EXCL create is retried (its reply was lost): the original success,
    // with the same handle, not EEXIST; and the store does not run it again.
    let out = s.apply_entry(&entry(4, vec![request(session, 2, create.clone())]));
    assert_eq!(out, vec![Outcome::Done(created.clone())]);
    assert_eq!(s.machine().store().applied_index(), commands, "the retry did not execute");
    assert_eq!(s.machine().applied_index(), 3, "entry 4 held no new command");
    assert_eq!(s.machine().digest(), digest, "nor changed the file system");
    // The same create under a new seq does run, and fails as O_EXCL must.
    let out = s.apply_entry(&entry(5, vec![request(session, 5, create)]));
    let Outcome::Done(again) = &out[0] else { panic!("{out:?}") };
    assert_eq!(decode_result(again).unwrap(), Err(Errno(libc::EEXIST)));
    assert_eq!(s.machine().applied_index(), 5);
    // Reads through the log go to `query`.
    let read = Operation::Read(
        encode_request(&Request::Query { caller: user(1000), query: Query::Read { ino: attr.ino, offset: 0, size: 16 } }).unwrap(),
    );
    let out = s.apply_entry(&entry(6, vec![request(session, 6, read)]));
    let Outcome::Done(data) = &out[0] else { panic!("{out:?}") };
    assert_eq!(decode_result(data).unwrap(), Ok(Reply::Data(b"abcabc".to_vec())));
    // And the whole thing checkpoints and restores through the session layer.
    let image = s.checkpoint();
    let other = tempfile::tempdir().unwrap();
    let mut t = Sessions::new(machine(other.path()), &Config::new(3));
    t.restore(s.applied_op(), &image).expect("restore");
    assert_eq!(t.digest(), s.digest());
}

/// Copies a complete checkpoint directory (what the shell's state transfer
/// does over QUIC, file by file, verified against the manifest).
fn copy_checkpoint(from_root: &Path, to_root: &Path, name: &str) {
    let (src, dst) = (from_root.join(name), to_root.join(name));
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
}

#[test]
fn checkpoints_by_reference_restore_elsewhere_and_detect_a_flipped_byte() {
    use chorus_replication_shell::checkpoint::Manifest;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = FsMachine::open_replica(da.path(), 0).unwrap();
    let (log, replies) = workload(&mut a, 11, 120);
    let cut = log.iter().position(|(c, _)| c.op > 70).unwrap();
    let mut b = FsMachine::open_replica(db.path(), 1).unwrap();
    replay(&mut b, &log[..cut]);
    let reference = b.checkpoint();
    let manifest = Manifest::from_bytes(&reference).expect("a manifest, not an image");
    assert!(reference.len() < 64 * 1024, "the reference stays small: {} bytes", reference.len());
    assert_eq!(manifest.op, b.applied_index());
    // Same state, same reference: no second checkpoint.
    assert_eq!(b.checkpoint(), reference);
    // a lacks the files until they are copied over.
    let mut c = FsMachine::open_replica(&da.path().join("other"), 2).unwrap();
    assert!(!c.has_checkpoint(&reference));
    copy_checkpoint(&db.path().join("checkpoints"), &da.path().join("other/checkpoints"), &manifest.name);
    assert!(c.has_checkpoint(&reference));
    c.restore(b.applied_index(), &reference).expect("restore from the copied files");
    assert_eq!(c.digest(), b.digest());
    assert_eq!(replay(&mut c, &log[cut..]), replies[cut..].to_vec());
    assert_eq!(c.digest(), a.digest());
    // A flipped byte in any file is found and the checkpoint never opened.
    // (On a fresh replica d: c's live store shares c's checkpoint files by
    // hard link, so damage to those files is damage to c's live state too.)
    let mut c = FsMachine::open_replica(&da.path().join("fresh"), 2).unwrap();
    copy_checkpoint(&db.path().join("checkpoints"), &da.path().join("fresh/checkpoints"), &manifest.name);
    let root = da.path().join("fresh/checkpoints").join(&manifest.name);
    let victim = manifest.files.iter().max_by_key(|f| f.bytes).unwrap();
    let path = root.join(&victim.name);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let digest_before = c.digest();
    let err = c.restore(b.applied_index(), &reference).unwrap_err().to_string();
    assert!(err.contains(&victim.name) && err.contains("damaged"), "{err}");
    assert_eq!(c.digest(), digest_before, "a refused checkpoint leaves the state as it was");
}
