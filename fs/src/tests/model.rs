//! Model-based property test: random operation sequences on the store and on
//! a plain in-memory tree (path → node) must give the same results, errnos and
//! final contents. Paths and names come from tiny alphabets so collisions,
//! non-empty directories and loops are frequent.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::Harness;
use crate::ops::*;

type Path = Vec<u8>; // one byte per component: names are single letters

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

#[derive(Clone, Debug)]
enum MOp {
    Mkdir(Path, u8),
    Create(Path, u8),
    Unlink(Path, u8),
    Rmdir(Path, u8),
    Rename(Path, u8, Path, u8, u32),
    Write(Path, u64, Vec<u8>),
    Truncate(Path, u64),
    Punch(Path, u64, u64),
}

const NAMES: &[u8] = b"abc";

fn arb_name() -> impl Strategy<Value = u8> {
    prop::sample::select(NAMES.to_vec())
}

fn arb_path() -> impl Strategy<Value = Path> {
    prop::collection::vec(arb_name(), 0..3)
}

fn arb_op() -> impl Strategy<Value = MOp> {
    let flags = prop::sample::select(vec![0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]);
    prop_oneof![
        3 => (arb_path(), arb_name()).prop_map(|(p, n)| MOp::Mkdir(p, n)),
        3 => (arb_path(), arb_name()).prop_map(|(p, n)| MOp::Create(p, n)),
        2 => (arb_path(), arb_name()).prop_map(|(p, n)| MOp::Unlink(p, n)),
        2 => (arb_path(), arb_name()).prop_map(|(p, n)| MOp::Rmdir(p, n)),
        3 => (arb_path(), arb_name(), arb_path(), arb_name(), flags)
            .prop_map(|(p, n, q, m, f)| MOp::Rename(p, n, q, m, f)),
        3 => (prop::collection::vec(arb_name(), 1..4), 0..200_000u64, prop::collection::vec(any::<u8>(), 1..300))
            .prop_map(|(p, o, d)| MOp::Write(p, o, d)),
        2 => (prop::collection::vec(arb_name(), 1..4), 0..200_000u64).prop_map(|(p, s)| MOp::Truncate(p, s)),
        1 => (prop::collection::vec(arb_name(), 1..4), 0..200_000u64, 1..100_000u64)
            .prop_map(|(p, o, l)| MOp::Punch(p, o, l)),
    ]
}

struct Model {
    nodes: BTreeMap<Path, Node>,
}

fn join(p: &Path, n: u8) -> Path {
    let mut q = p.clone();
    q.push(n);
    q
}

impl Model {
    fn new() -> Model {
        Model { nodes: BTreeMap::from([(vec![], Node::Dir)]) }
    }

    /// Path walk: ENOTDIR through a file, ENOENT for a missing component.
    fn resolve(&self, path: &Path) -> Result<(), i32> {
        for i in 0..path.len() {
            match self.nodes.get(&path[..i].to_vec()) {
                Some(Node::Dir) => {}
                Some(Node::File(_)) => return Err(libc::ENOTDIR),
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
            Some(Node::File(_)) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn is_empty_dir(&self, p: &Path) -> bool {
        !self.nodes.keys().any(|k| k.len() == p.len() + 1 && k.starts_with(p))
    }

    fn file(&mut self, p: &Path) -> Result<&mut Vec<u8>, i32> {
        self.resolve(p)?;
        match self.nodes.get_mut(p) {
            Some(Node::File(data)) => Ok(data),
            Some(Node::Dir) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
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

    fn remove_tree(&mut self, at: &Path) {
        self.nodes.retain(|k, _| !k.starts_with(at));
    }

    fn apply(&mut self, op: &MOp) -> Result<(), i32> {
        match op {
            MOp::Mkdir(p, n) | MOp::Create(p, n) => {
                self.dir(p)?;
                let q = join(p, *n);
                if self.nodes.contains_key(&q) {
                    return Err(libc::EEXIST);
                }
                let node = if matches!(op, MOp::Mkdir(..)) { Node::Dir } else { Node::File(vec![]) };
                self.nodes.insert(q, node);
                Ok(())
            }
            MOp::Unlink(p, n) => {
                self.dir(p)?;
                let q = join(p, *n);
                match self.nodes.get(&q) {
                    None => Err(libc::ENOENT),
                    Some(Node::Dir) => Err(libc::EISDIR),
                    Some(Node::File(_)) => {
                        self.nodes.remove(&q);
                        Ok(())
                    }
                }
            }
            MOp::Rmdir(p, n) => {
                self.dir(p)?;
                let q = join(p, *n);
                match self.nodes.get(&q) {
                    None => Err(libc::ENOENT),
                    Some(Node::File(_)) => Err(libc::ENOTDIR),
                    Some(Node::Dir) if !self.is_empty_dir(&q) => Err(libc::ENOTEMPTY),
                    Some(Node::Dir) => {
                        self.nodes.remove(&q);
                        Ok(())
                    }
                }
            }
            MOp::Rename(p, n, q, m, flags) => {
                self.dir(p)?;
                self.dir(q)?;
                let (src, dst) = (join(p, *n), join(q, *m));
                let Some(s) = self.nodes.get(&src).cloned() else { return Err(libc::ENOENT) };
                let d = self.nodes.get(&dst).cloned();
                let exchange = *flags == libc::RENAME_EXCHANGE;
                if *flags == libc::RENAME_NOREPLACE && d.is_some() {
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
                if src == dst {
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
                    (Node::File(_), Some(Node::Dir)) => return Err(libc::EISDIR),
                    (Node::Dir, Some(Node::File(_))) => return Err(libc::ENOTDIR),
                    (Node::Dir, Some(Node::Dir)) if !self.is_empty_dir(&dst) => return Err(libc::ENOTEMPTY),
                    _ => {}
                }
                if d.is_some() {
                    self.remove_tree(&dst);
                }
                self.move_tree(&src, &dst);
                Ok(())
            }
            MOp::Write(p, offset, data) => {
                let file = self.file(p)?;
                let end = *offset as usize + data.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[*offset as usize..end].copy_from_slice(data);
                Ok(())
            }
            MOp::Truncate(p, size) => {
                self.file(p)?.resize(*size as usize, 0);
                Ok(())
            }
            MOp::Punch(p, offset, length) => {
                let file = self.file(p)?;
                let lo = (*offset as usize).min(file.len());
                let hi = ((offset + length) as usize).min(file.len());
                file[lo..hi].fill(0);
                Ok(())
            }
        }
    }
}

/// Walks `path` in the store like the kernel would: one lookup per component.
fn resolve(h: &Harness, path: &Path) -> Result<Ino, i32> {
    let mut ino = ROOT_INO;
    for &c in path {
        ino = h.lookup(ino, std::str::from_utf8(&[c]).unwrap())?.ino;
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

/// Splits a non-empty path into (parent ino, last name), resolving the parent.
fn parent_of(h: &Harness, path: &Path) -> Result<(Ino, u8), i32> {
    let (last, parent) = path.split_last().expect("non-empty path");
    Ok((resolve(h, &parent.to_vec())?, *last))
}

fn unit(r: OpResult) -> Result<(), i32> {
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
        MOp::Write(..) | MOp::Truncate(..) | MOp::Punch(..) => {
            let path = match op {
                MOp::Write(p, ..) | MOp::Truncate(p, _) | MOp::Punch(p, ..) => p,
                _ => unreachable!(),
            };
            let (parent, name) = parent_of(h, path)?;
            let ino = h.lookup(parent, std::str::from_utf8(&[name]).unwrap())?.ino;
            let fh = match h.run(Op::Open { ino, flags: libc::O_RDWR }) {
                Ok(Reply::Opened { fh, .. }) => fh,
                other => return unit(other),
            };
            let result = match op {
                MOp::Write(_, offset, data) => {
                    unit(h.run(Op::Write { ino, fh, offset: *offset, data: data.clone(), flags: 0 }))
                }
                MOp::Truncate(_, size) => {
                    let attr = SetAttr { size: Some(*size), fh: Some(fh), ..Default::default() };
                    unit(h.run(Op::SetAttr { ino, attr }))
                }
                MOp::Punch(_, offset, length) => {
                    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                    unit(h.run(Op::Fallocate { ino, fh, offset: *offset, length: *length, mode }))
                }
                _ => unreachable!(),
            };
            h.release(ino, fh);
            result
        }
    }
}

/// The store's tree, read back through readdir, getattr and read.
fn store_tree(h: &Harness) -> BTreeMap<Path, Node> {
    let mut tree = BTreeMap::new();
    let mut stack = vec![(vec![], ROOT_INO)];
    while let Some((path, ino)) = stack.pop() {
        let attr = h.getattr(ino).unwrap();
        if attr.kind == FileKind::Dir {
            let names = h.names(ino);
            let subdirs = names
                .iter()
                .filter(|n| h.lookup(ino, n).unwrap().kind == FileKind::Dir)
                .count();
            assert_eq!(attr.nlink as usize, 2 + subdirs, "nlink of {path:?}");
            tree.insert(path.clone(), Node::Dir);
            for name in names {
                let child = h.lookup(ino, &name).unwrap();
                assert_eq!(h.lookup(child.ino, "..").map(|a| a.ino).unwrap_or(0), if child.kind == FileKind::Dir { ino } else { 0 });
                stack.push((join(&path, name.as_bytes()[0]), child.ino));
            }
        } else {
            let data = h.read(ino, 0, attr.size as u32 + 10).unwrap();
            assert_eq!(data.len() as u64, attr.size);
            assert_eq!(attr.nlink, 1);
            tree.insert(path, Node::File(data));
        }
    }
    tree
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut h = Harness::new();
        let mut model = Model::new();
        for (i, op) in ops.iter().enumerate() {
            let expected = model.apply(op);
            let got = apply_store(&mut h, op);
            prop_assert_eq!(got, expected, "op #{} {:?}", i, op);
        }
        prop_assert_eq!(store_tree(&h), model.nodes);
        prop_assert_eq!(h.store.count_keys(crate::keys::Table::Handles), 0);
    }
}
