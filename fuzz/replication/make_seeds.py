#!/usr/bin/env python3
"""Writes hand-made seed inputs of the replication fuzz targets into
corpus/TARGET/seed-* (run from anywhere; existing seeds are overwritten).

The formats are the product's, written out by hand so the seeds do not need
a build: the segment log's records and superblock (log.rs), disk records
(disk.rs: a version byte, then plain bincode of DiskRecord), manifests
(checkpoint.rs: plain bincode), the donor's file request (a tag byte, a
chorus-wire frame, chorus-wire's varint bincode), peer messages and node
requests (chorus-wire's varint bincode). Keep in step with the types: a
changed field order makes these seeds decode to nothing useful (the targets
still run, the fuzzer just starts further away).

log_damage and machine_apply take arbitrary-structured input; their
corpora are minimized runs, not seeds from here.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---- plain bincode (fixint, little endian): disk records and manifests
def u8(n): return struct.pack("<B", n)
def u32(n): return struct.pack("<I", n)
def u64(n): return struct.pack("<Q", n)
def fbytes(b): return u64(len(b)) + b
def fopt(x): return b"\x00" if x is None else b"\x01" + x
def fvec(items): return u64(len(items)) + b"".join(items)


def f_request(client, session, seq, low_water, epoch, op):
    # Operation: Register | Write(bytes) | Read(bytes)
    kind, payload = op
    operation = u32(kind) + (fbytes(payload) if kind else b"")
    return u64(client) + u64(session) + u64(seq) + u64(low_water) + u64(epoch) + operation


def f_entry(op, view=0, requests=()):
    return u64(op) + u64(view) + u64(1000 + op) + fvec(list(requests))


def f_superblock(replica=0, count=3, view=0, lnv=0):
    return u8(replica) + u8(count) + u64(view) + u64(lnv)


def f_checkpoint(op, state=b"state"):
    return u64(op) + u64(1000 + op) + fbytes(state)


def f_write(truncate_after=None, checkpoint=None, entries=(), superblock=None):
    return (fopt(None if truncate_after is None else u64(truncate_after)) + fopt(checkpoint)
            + fvec(list(entries)) + fopt(superblock))


def f_durable(superblock=None, checkpoint=None, entries=()):
    return fopt(superblock) + fopt(checkpoint) + fvec(list(entries))


def disk_write(**kw): return b"\x01" + u32(0) + f_write(**kw)
def disk_snapshot(**kw): return b"\x01" + u32(1) + f_durable(**kw)


# ---- the segment log
def record(index, payload):
    return u32(len(payload)) + u32(crc32c(u64(index) + payload)) + u64(index) + payload


def superblock_file(payload):
    return b"CHRSB\x00\x00\x01" + u32(len(payload)) + u32(crc32c(payload)) + payload


def part(b):
    assert len(b) < 1 << 16
    return struct.pack("<H", len(b)) + b


def log_open_input(segments, superblock=None, tmp=None):
    """segments: [(first index, bytes)]"""
    assert 1 <= len(segments) <= 4
    flags = (1 if superblock is not None else 0) | (2 if tmp is not None else 0) | (len(segments) - 1) << 2
    out = bytes([flags])
    if superblock is not None:
        out += part(superblock)
    if tmp is not None:
        out += part(tmp)
    for i, (first, data) in enumerate(segments):
        out += u64(first) + (data if i + 1 == len(segments) else part(data))
    return out


def log_open_seeds():
    raw = b"".join(record(i, b"entry-%d" % i) for i in range(1, 6))
    write("log_open", "raw-5", log_open_input([(1, raw)]))
    write("log_open", "torn-tail", log_open_input([(1, raw + record(6, b"entry-6")[:-3])]))
    write("log_open", "zero-tail", log_open_input([(1, raw + bytes(40))]))
    two = [(1, b"".join(record(i, b"a" * i) for i in (1, 2))), (3, b"".join(record(i, b"b" * i) for i in (3, 4, 5)))]
    write("log_open", "two-segments", log_open_input(two, superblock=superblock_file(b"view 2")))
    write("log_open", "superblock-tmp", log_open_input([(7, record(7, b"x"))], superblock=superblock_file(b"v"), tmp=b"junk"))
    # The replica's own log: init's snapshot, writes, a checkpoint's snapshot at a fresh segment.
    req = f_request(7, 1, 3, 2, 0, (1, b"command"))
    init = record(1, disk_snapshot(superblock=f_superblock()))
    w2 = record(2, disk_write(entries=[f_entry(1, 0, [req]), f_entry(2)]))
    w3 = record(3, disk_write(truncate_after=1, entries=[f_entry(2, 1)], superblock=f_superblock(view=1, lnv=1)))
    write("log_open", "disk-init", log_open_input([(1, init)]))
    write("log_open", "disk-writes", log_open_input([(1, init + w2 + w3)]))
    snap = record(4, disk_snapshot(superblock=f_superblock(view=1, lnv=1), checkpoint=f_checkpoint(2), entries=[]))
    write("log_open", "disk-snapshot", log_open_input([(1, init + w2 + w3), (4, snap + record(5, disk_write(entries=[f_entry(3, 1)])))]))
    # A write first in a log that starts above 1 (refused: its prefix was dropped).
    write("log_open", "disk-dropped-prefix", log_open_input([(9, record(9, disk_write(entries=[f_entry(1)])))]))


# ---- manifests
def manifest(name, op, files, version=1):
    fs = [fbytes(n) + u64(size) + u32(crc) for n, size, crc in files]
    return u8(version) + fbytes(name) + u64(op) + fvec(fs)


def manifest_seeds():
    files = [(b"000001.sst", 11, crc32c(b"hello world")), (b"CURRENT", 11, crc32c(b"MANIFEST-1\n"))]
    write("checkpoint_manifest", "two-files", manifest(b"cp-00000000000000000007-r0", 7, files))
    write("checkpoint_manifest", "empty", manifest(b"cp-1", 1, []))
    write("checkpoint_manifest", "trailing", manifest(b"cp-1", 1, []) + b"trailing")
    write("checkpoint_manifest", "escaping-name", manifest(b"../x", 1, []))
    write("checkpoint_manifest", "manifest-as-file", manifest(b"cp", 1, [(b"CHORUS-MANIFEST", 0, 0)]))
    write("checkpoint_manifest", "version-2", manifest(b"cp", 1, [], version=2))


# ---- chorus-wire's bincode (varint, little endian)
def v(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def vbytes(b): return v(len(b)) + b
def vopt(x): return b"\x00" if x is None else b"\x01" + x
def vvec(items): return v(len(items)) + b"".join(items)


def frame(payload):
    return struct.pack(">I", len(payload)) + b"\x01" + payload


def serve_request(checkpoint, file, offset, tag=0xC7):
    return bytes([tag]) + frame(vbytes(checkpoint) + vbytes(file) + v(offset))


def serve_seeds():
    write("checkpoint_serve", "sst", serve_request(b"cp-1", b"000001.sst", 0))
    write("checkpoint_serve", "sst-resume", serve_request(b"cp-1", b"000001.sst", 2000))
    write("checkpoint_serve", "beyond-end", serve_request(b"cp-1", b"CURRENT", 1 << 40))
    write("checkpoint_serve", "manifest", serve_request(b"cp-1", b"CHORUS-MANIFEST", 0))
    write("checkpoint_serve", "partial", serve_request(b"cp-2.partial", b"000002.sst", 0))
    write("checkpoint_serve", "escape", serve_request(b"..", b"secret", 0))
    write("checkpoint_serve", "stray", serve_request(b".", b"stray", 0))
    write("checkpoint_serve", "missing", serve_request(b"cp-1", b"000009.sst", 0))
    write("checkpoint_serve", "bad-tag", serve_request(b"cp-1", b"CURRENT", 0, tag=0xC6))


def v_request(client, session, seq, low_water, epoch, op):
    kind, payload = op
    return v(client) + v(session) + v(seq) + v(low_water) + v(epoch) + v(kind) + (vbytes(payload) if kind else b"")


def v_entry(op, view=0, requests=()):
    return v(op) + v(view) + v(1000 + op) + vvec(list(requests))


def v_suffix(base, entries):
    return v(base) + vvec(entries)


def message(variant, body):
    return b"\x00" + v(variant) + body  # selector 0: a peer message


def peer_seeds():
    req = v_request(7, 1, 5, 4, 2, (1, b"write"))
    reg = v_request(9, 0, 77, 0, 2, (0, b""))
    rd = v_request(7, 1, 6, 5, 2, (2, b"read"))
    entries = [v_entry(1, 2, [req, reg]), v_entry(2, 2, [rd])]
    write("peer_message", "prepare", message(0, v(2) + v(1) + v(123456) + vvec(entries)))
    write("peer_message", "prepare-ok", message(1, v(2) + v(2) + v(123456)))
    write("peer_message", "commit", message(2, v(2) + v(2) + v(2) + v(7) + v(99)))
    write("peer_message", "start-view-change", message(4, v(3)))
    write("peer_message", "do-view-change", message(5, v(3) + v(2) + v(0) + v_suffix(0, entries)))
    write("peer_message", "start-view", message(6, v(3) + v(7) + v(0) + v_suffix(0, entries)))
    state = v(7) + v(1) + vopt(v(1) + v(1001) + vbytes(b"checkpoint")) + v_suffix(1, entries[1:])
    write("peer_message", "new-state", message(9, v(3) + state))
    write("peer_message", "recovery-response", message(11, v(3) + v(0xDEADBEEF) + vopt(state)))
    # Disk bodies (selector 2: Write, 6: Durable), plain bincode.
    fr = f_request(7, 1, 3, 2, 0, (1, b"command"))
    write("peer_message", "disk-write", b"\x02" + f_write(truncate_after=1, checkpoint=f_checkpoint(1), entries=[f_entry(2, 0, [fr])],
                                                        superblock=f_superblock(view=1, lnv=1)))
    write("peer_message", "disk-snapshot", b"\x06" + f_durable(superblock=f_superblock(), checkpoint=f_checkpoint(3), entries=[f_entry(4)]))
    # Node requests (selector 3).
    write("peer_message", "node-call", b"\x03" + v(0) + req)
    write("peer_message", "node-batch", b"\x03" + v(2) + vvec([req, reg, rd]))
    write("peer_message", "node-recall-ack", b"\x03" + v(6) + v(1 << 63 | 5) + v(12))


if __name__ == "__main__":
    log_open_seeds()
    manifest_seeds()
    serve_seeds()
    peer_seeds()
