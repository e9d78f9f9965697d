//! Determinism, reopen and checkpoint tests.

use super::Harness;
use crate::ops::*;
use crate::{FsStore, StoreOptions};

/// A fixed command sequence touching every table.
fn script() -> Vec<Command> {
    let at = |sec: i64| Timestamp::new(sec, 0);
    let root = Caller::root();
    let cmd = |sec: i64, op: Op| Command { now: at(sec), caller: root.clone(), op };
    vec![
        cmd(1, Op::Mkdir { parent: ROOT_INO, name: b"d".to_vec(), mode: 0o755, umask: 0o022 }),
        cmd(2, Op::Create { parent: 2, name: b"f".to_vec(), mode: 0o644, umask: 0, flags: libc::O_RDWR, excl: true }),
        cmd(3, Op::Write { ino: 3, fh: 1, offset: 70_000, data: b"payload".to_vec(), flags: 0 }),
        cmd(4, Op::SetXattr { ino: 3, name: b"user.k".to_vec(), value: b"v".to_vec(), flags: 0 }),
        cmd(5, Op::Symlink { parent: ROOT_INO, name: b"s".to_vec(), target: b"d/f".to_vec() }),
        cmd(6, Op::Rename { parent: 2, name: b"f".to_vec(), newparent: ROOT_INO, newname: b"g".to_vec(), flags: 0 }),
        cmd(7, Op::Unlink { parent: ROOT_INO, name: b"missing".to_vec() }),
        cmd(8, Op::Fsync { ino: 3, datasync: false }),
    ]
}

fn run_script(store: &FsStore, cmds: &[Command]) -> Vec<OpResult> {
    cmds.iter().map(|c| store.apply(store.applied_index() + 1, c).expect("apply")).collect()
}

#[test]
fn same_log_same_digest_different_log_different_digest() {
    let (a, b, c) = (Harness::new(), Harness::new(), Harness::new());
    assert_eq!(a.store.digest().unwrap(), b.store.digest().unwrap());
    let ra = run_script(&a.store, &script());
    let rb = run_script(&b.store, &script());
    assert_eq!(ra, rb, "same replies");
    assert!(ra[..6].iter().all(|r| r.is_ok()), "{ra:?}");
    assert_eq!(a.store.digest().unwrap(), b.store.digest().unwrap());
    let mut other = script();
    other[2] = Command {
        now: Timestamp::new(3, 0),
        caller: Caller::root(),
        op: Op::Write { ino: 3, fh: 1, offset: 70_000, data: b"PAYLOAD".to_vec(), flags: 0 },
    };
    run_script(&c.store, &other);
    assert_ne!(a.store.digest().unwrap(), c.store.digest().unwrap());
    // Even a different time stamp alone shows.
    let d = Harness::new();
    let mut later = script();
    later[0].now = Timestamp::new(1, 1);
    run_script(&d.store, &later);
    assert_ne!(a.store.digest().unwrap(), d.store.digest().unwrap());
}

#[test]
fn reopen_keeps_state_and_checkpoint_reopens_with_same_digest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let digest;
    {
        let store = FsStore::open(&path, StoreOptions { sync_every_write: false, skip_wal: false }).unwrap();
        run_script(&store, &script());
        store.sync().unwrap();
        digest = store.digest().unwrap();
    }
    let store = FsStore::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.applied_index(), script().len() as u64);
    assert_eq!(store.digest().unwrap(), digest);
    let got = store.query(&Caller::root(), &Query::Read { ino: 3, offset: 70_000, size: 100 }).unwrap();
    assert_eq!(got, Ok(Reply::Data(b"payload".to_vec())));
    // Counters persisted: the next inode is 5 (1 root, 2 d, 3 f, 4 s).
    let next = Command {
        now: Timestamp::new(9, 0),
        caller: Caller::root(),
        op: Op::Mkdir { parent: ROOT_INO, name: b"e".to_vec(), mode: 0o755, umask: 0 },
    };
    let Ok(Reply::Entry(e)) = store.apply(store.applied_index() + 1, &next).unwrap() else { panic!() };
    assert_eq!(e.ino, 5);

    let cp = dir.path().join("cp");
    let index = store.checkpoint(&cp).unwrap();
    assert_eq!(index, store.applied_index());
    assert!(store.checkpoint(&cp).is_err(), "existing directory is refused");
    let live_digest = store.digest().unwrap();
    // The live store moves on; the checkpoint does not.
    let more = Command { now: Timestamp::new(10, 0), caller: Caller::root(), op: Op::Rmdir { parent: ROOT_INO, name: b"e".to_vec() } };
    store.apply(store.applied_index() + 1, &more).unwrap().unwrap();
    let copy = FsStore::open(&cp, StoreOptions::default()).unwrap();
    assert_eq!(copy.applied_index(), index);
    assert_eq!(copy.digest().unwrap(), live_digest);
    // Replaying the same command on the copy converges.
    copy.apply(index + 1, &more).unwrap().unwrap();
    assert_eq!(copy.digest().unwrap(), store.digest().unwrap());
}

#[test]
fn queries_run_concurrently_with_apply() {
    let h = Harness::new();
    let store = &h.store;
    let mk = Command {
        now: Timestamp::new(1, 0),
        caller: Caller::root(),
        op: Op::Create { parent: ROOT_INO, name: b"f".to_vec(), mode: 0o644, umask: 0, flags: libc::O_RDWR, excl: true },
    };
    store.apply(1, &mk).unwrap().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..200u64 {
                let w = Command {
                    now: Timestamp::new(2 + i as i64, 0),
                    caller: Caller::root(),
                    op: Op::Write { ino: 2, fh: 1, offset: i * 10, data: vec![b'a'; 10], flags: 0 },
                };
                store.apply(store.applied_index() + 1, &w).unwrap().unwrap();
            }
        });
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..200 {
                    let Ok(Reply::Attr(a)) = store.query(&Caller::root(), &Query::GetAttr { ino: 2 }).unwrap() else { panic!() };
                    let Ok(Reply::Data(d)) = store.query(&Caller::root(), &Query::Read { ino: 2, offset: 0, size: 4096 }).unwrap() else {
                        panic!()
                    };
                    assert!(d.len() as u64 >= a.size.min(4096) || d.len() == 4096);
                    assert!(d.iter().all(|&b| b == b'a'));
                }
            });
        }
    });
    assert_eq!(store.applied_index(), 201);
}

#[test]
fn corrupt_records_and_foreign_formats_are_store_errors() {
    use crate::keys::{inode_key, Table, META_KEY};
    use crate::StoreError;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = FsStore::open(&path, StoreOptions::default()).unwrap();
        store.put_raw(Table::Inodes, &inode_key(ROOT_INO), b"\x01garbage");
        let err = store.query(&Caller::root(), &Query::GetAttr { ino: ROOT_INO }).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { table: "inodes", .. }), "{err}");
        assert!(err.to_string().contains("0000000000000001"), "{err}");
        let mkdir = Command {
            now: Timestamp::new(1, 0),
            caller: Caller::root(),
            op: Op::Mkdir { parent: ROOT_INO, name: b"d".to_vec(), mode: 0o755, umask: 0 },
        };
        assert!(store.apply(1, &mkdir).is_err());
        assert_eq!(store.applied_index(), 0, "a store error applies nothing");
        let meta = crate::records::Meta { format_version: 99, applied_index: 0, next_ino: 2, next_fh: 1, inodes_live: 1 };
        store.put_raw(Table::Meta, META_KEY, &crate::records::encode(&meta));
    }
    let err = FsStore::open(&path, StoreOptions::default()).err().expect("refused");
    assert!(matches!(err, StoreError::FormatVersion { found: 99, .. }), "{err}");
}

/// Applies `cmds` with tags: entry op = command number / 2 + 1 (two commands
/// per entry), `last_now` = the command's time.
fn run_script_tagged(store: &FsStore, cmds: &[Command]) -> Vec<OpResult> {
    cmds.iter()
        .enumerate()
        .map(|(i, c)| {
            let tag = crate::AppliedTag { op: i as u64 / 2 + 1, last_now: c.now };
            store.apply_tagged(store.applied_index() + 1, c, &tag).expect("apply")
        })
        .collect()
}

#[test]
fn tag_is_stored_with_the_command_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let cmds = script();
    {
        let store = FsStore::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.tag(), None);
        let tagged = run_script_tagged(&store, &cmds);
        assert_eq!(tagged, run_script(&Harness::new().store, &cmds), "tags change no reply");
        let last = cmds.last().unwrap();
        let expected = crate::AppliedTag { op: (cmds.len() as u64 - 1) / 2 + 1, last_now: last.now };
        assert_eq!(store.tag(), Some(expected));
    }
    let store = FsStore::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.tag().unwrap().last_now, cmds.last().unwrap().now);
    assert_eq!(store.applied_index(), cmds.len() as u64);
    // An untagged store has no tag, and its digest differs only by it.
    let plain = Harness::new();
    run_script(&plain.store, &cmds);
    assert_eq!(plain.store.tag(), None);
    assert_ne!(plain.store.digest().unwrap(), store.digest().unwrap());
}

#[test]
fn tracked_apply_names_the_changed_inodes_and_changes_nothing_else() {
    let (plain, tracked) = (Harness::new(), Harness::new());
    let cmds = script();
    let replies = run_script_tagged(&plain.store, &cmds);
    let mut changed = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        let tag = crate::AppliedTag { op: i as u64 / 2 + 1, last_now: c.now };
        let applied = tracked
            .store
            .apply_tagged_tracked(tracked.store.applied_index() + 1, c, &tag, crate::store::SINGLE_REPLICA_CLIENT)
            .expect("apply");
        assert_eq!(applied.result, replies[i], "command {i}");
        changed.push(applied.changed);
    }
    assert_eq!(tracked.store.digest().unwrap(), plain.store.digest().unwrap(), "tracking writes nothing");
    // mkdir d (2) in the root; create f (3) in d; write, setxattr on f;
    // symlink s (4) in the root; rename d/f to /g; a failed unlink; fsync.
    let expected: Vec<Vec<Ino>> = vec![vec![1, 2], vec![2, 3], vec![3], vec![3], vec![1, 4], vec![1, 2, 3], vec![], vec![]];
    assert_eq!(changed, expected);
}

#[test]
#[should_panic(expected = "the tag records the command's time")]
fn tag_must_carry_the_command_time() {
    let h = Harness::new();
    let cmd = script().remove(0);
    let tag = crate::AppliedTag { op: 1, last_now: Timestamp::new(0, 0) };
    let _ = h.store.apply_tagged(1, &cmd, &tag);
}

#[test]
fn image_round_trip_replaces_the_state_and_bad_images_are_refused() {
    let (a, b) = (Harness::new(), Harness::new());
    let cmds = script();
    run_script_tagged(&a.store, &cmds[..4]);
    // b holds other state first: the import must remove it.
    run_script(&b.store, &cmds);
    let image = a.store.export_image().unwrap();
    assert_eq!(image.digest(), a.store.digest().unwrap());
    assert_eq!(image.applied_index(), 4);
    assert_eq!(image.tag(), a.store.tag());
    let bytes = image.to_bytes();
    let decoded = crate::StoreImage::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, image);
    b.store.import_image(&decoded).unwrap();
    assert_eq!(b.store.digest().unwrap(), a.store.digest().unwrap());
    assert_eq!((b.store.applied_index(), b.store.tag()), (4, a.store.tag()));
    // Both go on identically (counters came with the image).
    let tail_a = run_script(&a.store, &cmds[4..]);
    let tail_b = run_script(&b.store, &cmds[4..]);
    assert_eq!(tail_a, tail_b);
    assert_eq!(b.store.digest().unwrap(), a.store.digest().unwrap());
    // Every single flipped byte is refused (digest, structure or bounds).
    for at in (0..bytes.len()).step_by(97) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        assert!(crate::StoreImage::from_bytes(&bad).is_err(), "flip at {at}");
    }
    assert!(crate::StoreImage::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    assert!(crate::StoreImage::from_bytes(&[0xff; 64]).is_err());
}

/// A store without a WAL (a replica's derived state) loses nothing through a
/// RocksDB checkpoint: the checkpoint flushes the memtables, and a store
/// opened on the checkpoint's files has the same digest.
#[test]
fn checkpoint_of_a_store_without_wal_holds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(&dir.path().join("db"), StoreOptions { sync_every_write: false, skip_wal: true }).unwrap();
    run_script(&store, &script());
    let digest = store.digest().unwrap();
    let applied = store.checkpoint(&dir.path().join("cp")).unwrap();
    assert_eq!(applied, store.applied_index());
    drop(store);
    let reopened = FsStore::open(&dir.path().join("cp"), StoreOptions::default()).unwrap();
    assert_eq!(reopened.digest().unwrap(), digest);
    assert_eq!(reopened.applied_index(), applied);
    // Nothing without a WAL survives a restart of the live store itself: it
    // is derived state, rebuilt from a checkpoint plus the log.
}
