//! Model-based property test: random operation sequences on the store and on
//! a plain in-memory tree (path → node, file id → bytes) must give the same
//! results, errnos and final contents. Paths and names come from tiny
//! alphabets so collisions, non-empty directories, hard links and rename
//! loops are frequent. At the end the same log replayed into a fresh store
//! must give the same digest, also after reopening it.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::Harness;
use crate::ops::*;
use crate::{FsStore, StoreOptions};

pub(super) type Path = Vec<u8>; // one byte per component: names are single letters

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    /// A regular file: its id in `Model::files` (hard links share it).
    File(u32),
    /// A symlink: an id (hard links share it) and its target.
    Symlink(u32, Vec<u8>),
}

/// What the store's tree is compared by.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Seen {
    Dir,
    File {
        data: Vec<u8>,
        nlink: u32,
    },
    Symlink(Vec<u8>),
    /// A fifo, socket or device node.
    Special {
        nlink: u32,
    },
}

#[derive(Clone, Debug)]
pub(super) enum MOp {
    Mkdir(Path, u8),
    Create(Path, u8),
    Symlink(Path, u8),
    Link(Path, Path, u8),
    Unlink(Path, u8),
    Rmdir(Path, u8),
    Rename(Path, u8, Path, u8, u32),
    Write(Path, u64, Vec<u8>),
    Truncate(Path, u64),
    Fallocate(Path, u64, u64, i32),
}

const NAMES: &[u8] = b"abc";

fn arb_name() -> impl Strategy<Value = u8> {
    prop::sample::select(NAMES.to_vec())
}

fn arb_path() -> impl Strategy<Value = Path> {
    prop::collection::vec(arb_name(), 0..3)
}

fn arb_file() -> impl Strategy<Value = Path> {
    prop::collection::vec(arb_name(), 1..4)
}

pub(super) fn arb_op() -> impl Strategy<Value = MOp> {
    use libc::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH, FALLOC_FL_ZERO_RANGE as ZERO};
    let flags = prop::sample::select(vec![0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]);
    let modes = prop::sample::select(vec![0, KEEP, PUNCH | KEEP, ZERO, ZERO | KEEP]);
    prop_oneof![
        3 => (arb_path(), arb_name()).prop_map(|(p, n)| MOp::Mkdir(p, n)),
        3 => (arb_path(), arb_name()).prop_map(|(p, n)| MOp::Create(p, n)),
        1 => (arb_path(), arb_name()).prop_map(|(p, n)| MOp::Symlink(p, n)),
        2 => (arb_file(), arb_path(), arb_name()).prop_map(|(s, p, n)| MOp::Link(s, p, n)),
        2 => (arb_path(), arb_name()).prop_map(|(p, n)| MOp::Unlink(p, n)),
        2 => (arb_path(), arb_name()).prop_map(|(p, n)| MOp::Rmdir(p, n)),
        3 => (arb_path(), arb_name(), arb_path(), arb_name(), flags)
            .prop_map(|(p, n, q, m, f)| MOp::Rename(p, n, q, m, f)),
        3 => (arb_file(), 0..200_000u64, prop::collection::vec(any::<u8>(), 1..300))
            .prop_map(|(p, o, d)| MOp::Write(p, o, d)),
        2 => (arb_file(), 0..200_000u64).prop_map(|(p, s)| MOp::Truncate(p, s)),
        2 => (arb_file(), 0..200_000u64, 1..100_000u64, modes).prop_map(|(p, o, l, m)| MOp::Fallocate(p, o, l, m)),
    ]
}

struct Model {
    nodes: BTreeMap<Path, Node>,
    files: BTreeMap<u32, Vec<u8>>,
    next_id: u32,
}

pub(super) fn join(p: &Path, n: u8) -> Path {
    let mut q = p.clone();
    q.push(n);
    q
}

impl Model {
    fn new() -> Model {
        Model { nodes: BTreeMap::from([(vec![], Node::Dir)]), files: BTreeMap::new(), next_id: 0 }
    }

    /// Path walk (no symlink following): ENOTDIR through a non-directory,
    /// ENOENT for a missing component.
    fn resolve(&self, path: &Path) -> Result<(), i32> {
        for i in 0..path.len() {
            match self.nodes.get(&path[..i]) {
                Some(Node::Dir) => {}
                Some(_) => return Err(libc::ENOTDIR),
                None => return Err(libc::ENOENT),
            }
        }
        Ok(())
    }

    /// Directory `p` for a lookup of a name in it.
    fn dir(&self, p: &Path) -> Result<(), i32> {
        self.resolve(p)?;
        match self.nodes.get(p) {
            Some(Node::Dir) => Ok(()),
            Some(_) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn get(&self, p: &Path) -> Result<Node, i32> {
        self.resolve(p)?;
        self.nodes.get(p).cloned().ok_or(libc::ENOENT)
    }

    fn is_empty_dir(&self, p: &Path) -> bool {
        !self.nodes.keys().any(|k| k.len() == p.len() + 1 && k.starts_with(p))
    }

    /// The data of the regular file at `p`, as opening it O_RDWR would find it.
    fn file(&mut self, p: &Path) -> Result<&mut Vec<u8>, i32> {
        match self.get(p)? {
            Node::File(id) => Ok(self.files.get_mut(&id).expect("file data")),
            Node::Dir => Err(libc::EISDIR),
            Node::Symlink(..) => Err(libc::ELOOP),
        }
    }

    /// Moves the subtree at `from` to `to` (which must be free).
    fn move_tree(&mut self, from: &Path, to: &Path) {
        let keys: Vec<Path> = self.nodes.keys().filter(|k| k.starts_with(from)).cloned().collect();
        let moved: Vec<(Path, Node)> = keys.iter().map(|k| (k.clone(), self.nodes.remove(k).unwrap())).collect();
        for (k, v) in moved {
            let mut nk = to.clone();
            nk.extend_from_slice(&k[from.len()..]);
            assert!(self.nodes.insert(nk, v).is_none());
        }
    }

    fn new_entry(&self, p: &Path, n: u8) -> Result<Path, i32> {
        self.dir(p)?;
        let q = join(p, n);
        if self.nodes.contains_key(&q) {
            return Err(libc::EEXIST);
        }
        Ok(q)
    }

    fn apply(&mut self, op: &MOp) -> Result<(), i32> {
        match op {
            MOp::Mkdir(p, n) => {
                let q = self.new_entry(p, *n)?;
                self.nodes.insert(q, Node::Dir);
            }
            MOp::Create(p, n) => {
                let q = self.new_entry(p, *n)?;
                self.next_id += 1;
                self.files.insert(self.next_id, Vec::new());
                self.nodes.insert(q, Node::File(self.next_id));
            }
            MOp::Symlink(p, n) => {
                let q = self.new_entry(p, *n)?;
                self.next_id += 1;
                self.nodes.insert(q.clone(), Node::Symlink(self.next_id, q));
            }
            MOp::Link(s, p, n) => {
                let node = self.get(s)?;
                let q = self.new_entry(p, *n)?;
                if node == Node::Dir {
                    return Err(libc::EPERM);
                }
                self.nodes.insert(q, node);
            }
            MOp::Unlink(p, n) => {
                self.dir(p)?;
                let q = join(p, *n);
                match self.nodes.get(&q) {
                    None => return Err(libc::ENOENT),
                    Some(Node::Dir) => return Err(libc::EISDIR),
                    Some(_) => self.nodes.remove(&q),
                };
            }
            MOp::Rmdir(p, n) => {
                self.dir(p)?;
                let q = join(p, *n);
                match self.nodes.get(&q) {
                    None => return Err(libc::ENOENT),
                    Some(Node::Dir) if !self.is_empty_dir(&q) => return Err(libc::ENOTEMPTY),
                    Some(Node::Dir) => self.nodes.remove(&q),
                    Some(_) => return Err(libc::ENOTDIR),
                };
            }
            MOp::Rename(p, n, q, m, flags) => return self.rename(p, *n, q, *m, *flags),
            MOp::Write(p, offset, data) => {
                let file = self.file(p)?;
                let end = *offset as usize + data.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[*offset as usize..end].copy_from_slice(data);
            }
            MOp::Truncate(p, size) => self.file(p)?.resize(*size as usize, 0),
            MOp::Fallocate(p, offset, length, mode) => {
                let file = self.file(p)?;
                let end = (offset + length) as usize;
                if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && file.len() < end {
                    file.resize(end, 0);
                }
                if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                    let lo = (*offset as usize).min(file.len());
                    let hi = end.min(file.len());
                    file[lo..hi].fill(0);
                }
            }
        }
        Ok(())
    }

    fn rename(&mut self, p: &Path, n: u8, q: &Path, m: u8, flags: u32) -> Result<(), i32> {
        self.dir(p)?;
        self.dir(q)?;
        let (src, dst) = (join(p, n), join(q, m));
        let Some(s) = self.nodes.get(&src).cloned() else {
            return Err(libc::ENOENT);
        };
        let d = self.nodes.get(&dst).cloned();
        let exchange = flags == libc::RENAME_EXCHANGE;
        if flags == libc::RENAME_NOREPLACE && d.is_some() {
            return Err(libc::EEXIST);
        }
        if exchange && d.is_none() {
            return Err(libc::ENOENT);
        }
        if s == Node::Dir && q.starts_with(&src) {
            return Err(libc::EINVAL);
        }
        if d == Some(Node::Dir) && p.starts_with(&dst) {
            return Err(if exchange { libc::EINVAL } else { libc::ENOTEMPTY });
        }
        let same_file =
            matches!((&s, &d), (Node::File(a), Some(Node::File(b))) | (Node::Symlink(a, _), Some(Node::Symlink(b, _))) if a == b);
        if src == dst || same_file {
            return Ok(());
        }
        if exchange {
            let tmp = vec![0xff];
            self.move_tree(&src, &tmp);
            self.move_tree(&dst, &src);
            self.move_tree(&tmp, &dst);
            return Ok(());
        }
        match (&s, &d) {
            (Node::Dir, Some(Node::Dir)) if !self.is_empty_dir(&dst) => return Err(libc::ENOTEMPTY),
            (Node::Dir, Some(Node::Dir)) => {}
            (_, Some(Node::Dir)) => return Err(libc::EISDIR),
            (Node::Dir, Some(_)) => return Err(libc::ENOTDIR),
            _ => {}
        }
        self.nodes.remove(&dst);
        self.move_tree(&src, &dst);
        Ok(())
    }

    fn seen(&self) -> BTreeMap<Path, Seen> {
        let links = |id: u32| self.nodes.values().filter(|n| **n == Node::File(id)).count() as u32;
        self.nodes
            .iter()
            .map(|(p, n)| {
                let seen = match n {
                    Node::Dir => Seen::Dir,
                    Node::File(id) => Seen::File { data: self.files[id].clone(), nlink: links(*id) },
                    Node::Symlink(_, t) => Seen::Symlink(t.clone()),
                };
                (p.clone(), seen)
            })
            .collect()
    }
}

pub(super) fn name(n: u8) -> String {
    String::from_utf8(vec![n]).unwrap()
}

/// Walks `path` in the store like the kernel would: one lookup per component.
fn resolve(h: &Harness, path: &Path) -> Result<Ino, i32> {
    let mut ino = ROOT_INO;
    for &c in path {
        ino = h.lookup(ino, &name(c))?.ino;
    }
    Ok(ino)
}

/// Like `resolve`, and the result must be a directory (the kernel's walk to a
/// parent fails with ENOTDIR before the second path of a rename is looked at).
fn resolve_dir(h: &Harness, path: &Path) -> Result<Ino, i32> {
    let ino = resolve(h, path)?;
    if h.getattr(ino)?.kind != FileKind::Dir {
        return Err(libc::ENOTDIR);
    }
    Ok(ino)
}

pub(super) fn unit(r: OpResult) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.0)
}

fn apply_store(h: &mut Harness, op: &MOp) -> Result<(), i32> {
    match op {
        MOp::Mkdir(p, n) => {
            let parent = resolve(h, p)?;
            unit(h.run(Op::Mkdir { parent, name: vec![*n], mode: 0o755, umask: 0 }))
        }
        MOp::Create(p, n) => {
            let parent = resolve(h, p)?;
            let op = Op::Create { parent, name: vec![*n], mode: 0o644, umask: 0, flags: libc::O_RDWR, excl: true };
            match h.run(op) {
                Ok(Reply::Created { attr, fh }) => {
                    h.release(attr.ino, fh);
                    Ok(())
                }
                other => unit(other),
            }
        }
        MOp::Symlink(p, n) => {
            let parent = resolve(h, p)?;
            unit(h.run(Op::Symlink { parent, name: vec![*n], target: join(p, *n) }))
        }
        MOp::Link(s, p, n) => {
            let ino = resolve(h, s)?;
            let newparent = resolve(h, p)?;
            unit(h.run(Op::Link { ino, newparent, newname: vec![*n] }))
        }
        MOp::Unlink(p, n) => {
            let parent = resolve(h, p)?;
            unit(h.run(Op::Unlink { parent, name: vec![*n] }))
        }
        MOp::Rmdir(p, n) => {
            let parent = resolve(h, p)?;
            unit(h.run(Op::Rmdir { parent, name: vec![*n] }))
        }
        MOp::Rename(p, n, q, m, flags) => {
            let parent = resolve_dir(h, p)?;
            let newparent = resolve(h, q)?;
            unit(h.run(Op::Rename { parent, name: vec![*n], newparent, newname: vec![*m], flags: *flags }))
        }
        MOp::Write(p, ..) | MOp::Truncate(p, _) | MOp::Fallocate(p, ..) => {
            let ino = resolve(h, p)?;
            let fh = match h.run(Op::Open { ino, flags: libc::O_RDWR }) {
                Ok(Reply::Opened { fh, .. }) => fh,
                other => return unit(other),
            };
            let result = match op {
                MOp::Write(_, offset, data) => unit(h.run(Op::Write { ino, fh, offset: *offset, data: data.clone(), flags: 0 })),
                MOp::Truncate(_, size) => {
                    let attr = SetAttr { size: Some(*size), fh: Some(fh), ..Default::default() };
                    unit(h.run(Op::SetAttr { ino, attr }))
                }
                MOp::Fallocate(_, offset, length, mode) => {
                    unit(h.run(Op::Fallocate { ino, fh, offset: *offset, length: *length, mode: *mode }))
                }
                _ => unreachable!(),
            };
            h.release(ino, fh);
            result
        }
    }
}

/// The store's tree, read back through readdir, getattr, read and readlink.
pub(super) fn store_tree(h: &Harness) -> BTreeMap<Path, Seen> {
    let mut tree = BTreeMap::new();
    let mut stack = vec![(vec![], ROOT_INO)];
    while let Some((path, ino)) = stack.pop() {
        let attr = h.getattr(ino).unwrap();
        let seen = match attr.kind {
            FileKind::Dir => {
                let names = h.names(ino);
                let mut subdirs = 0;
                for n in names {
                    let child = h.lookup(ino, &n).unwrap();
                    if child.kind == FileKind::Dir {
                        subdirs += 1;
                        assert_eq!(h.lookup(child.ino, "..").unwrap().ino, ino, "'..' of {path:?}/{n}");
                    }
                    stack.push((join(&path, n.as_bytes()[0]), child.ino));
                }
                assert_eq!(attr.nlink, 2 + subdirs, "nlink of {path:?}");
                Seen::Dir
            }
            FileKind::File => {
                let data = h.read(ino, 0, attr.size as u32 + 10).unwrap();
                assert_eq!(data.len() as u64, attr.size);
                Seen::File { data, nlink: attr.nlink }
            }
            FileKind::Symlink => match h.query(Query::ReadLink { ino }) {
                Ok(Reply::Data(target)) => Seen::Symlink(target),
                other => panic!("readlink {other:?}"),
            },
            _ => Seen::Special { nlink: attr.nlink },
        };
        tree.insert(path, seen);
    }
    tree
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut h = Harness::new();
        let mut model = Model::new();
        for (i, op) in ops.iter().enumerate() {
            let expected = model.apply(op);
            let got = apply_store(&mut h, op);
            prop_assert_eq!(got, expected, "op #{} {:?}", i, op);
        }
        prop_assert_eq!(store_tree(&h), model.seen());
        prop_assert_eq!(h.store.count_keys(crate::keys::Table::Handles), 0);
        let problems = h.store.fsck().unwrap();
        prop_assert!(problems.is_empty(), "inconsistent state: {:#?}", problems);

        // Determinism and persistence: the same log elsewhere gives the same digest.
        let digest = h.store.digest().unwrap();
        let dir = tempfile::tempdir().unwrap();
        {
            let replica = FsStore::open(dir.path(), StoreOptions::default()).unwrap();
            for (i, cmd) in h.log.iter().enumerate() {
                let reply = replica.apply(i as u64 + 1, cmd).unwrap();
                prop_assert_eq!(&reply, &h.replies[i], "reply to command {}", i + 1);
            }
            prop_assert_eq!(replica.digest().unwrap(), digest);
        }
        let reopened = FsStore::open(dir.path(), StoreOptions::default()).unwrap();
        prop_assert_eq!(reopened.applied_index(), h.log.len() as u64);
        prop_assert_eq!(reopened.digest().unwrap(), digest);
    }
}
