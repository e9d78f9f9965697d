//! A rough speed probe of the store alone (ignored by default):
//! `cargo test -p chorus-fs bench_store -- --ignored --nocapture`.

use super::Harness;
use crate::ops::*;
use std::time::Instant;

#[test]
#[ignore]
fn bench_store() {
    let mut h = Harness::new();
    let (f, fh) = h.create(ROOT_INO, "f");
    let mut x: u64 = 12345;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (size, n) in [(4096usize, 2000), (65536, 1000), (131072, 500), (1 << 20, 100)] {
        let data = vec![7u8; size];
        let t = Instant::now();
        for _ in 0..n {
            let off = rnd() % (8 << 20) / size as u64 * size as u64;
            h.write(f.ino, fh, off, &data).unwrap();
        }
        let w = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            let off = rnd() % (8 << 20);
            h.read(f.ino, off, size as u32).unwrap();
        }
        let r = t.elapsed() / n;
        println!("size {size}: write {w:?}/op read {r:?}/op");
    }
    let t = Instant::now();
    for i in 0..2000 {
        h.create(ROOT_INO, &format!("g{i}"));
    }
    println!("create {:?}/op", t.elapsed() / 2000);
    let t = Instant::now();
    for i in 0..2000 {
        h.lookup(ROOT_INO, &format!("g{i}")).unwrap();
    }
    println!("lookup {:?}/op", t.elapsed() / 2000);
    let t = Instant::now();
    for s in [4 << 20, 8 << 20, 100, 8 << 20] {
        h.run(Op::SetAttr { ino: f.ino, attr: SetAttr { size: Some(s), ..Default::default() } }).unwrap();
    }
    println!("truncates {:?}/op", t.elapsed() / 4);
}
