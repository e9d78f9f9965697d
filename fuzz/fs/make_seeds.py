#!/usr/bin/env python3
"""Writes hand-made seed inputs of fs_apply into seeds/ (run.sh adds them to
the corpus of every run; cmin never drops them).

Random bytes rarely build the states where state-machine bugs live (the
poison rename of issue 10 needs seven particular steps, and no step before
the last one gains new coverage), so the corpus starts from a few scripts.
The bytes follow arbitrary 1.5's decoding of `Input` in
fuzz_targets/fs_apply.rs: a `replay` byte, then per step a keep-going byte
(odd) and the step; an enum variant is a little-endian u32 scaled to the
variant count; the raw-number wrappers read one selector byte. Keep the
variant list in step with the `Step` enum.
"""
import os
import struct

STEPS = ["Create", "Mknod", "Mkdir", "Symlink", "Link", "Unlink", "Rmdir", "Rename",
         "SetAttr", "Open", "Release", "Write", "Fallocate", "SetXattr", "RemoveXattr",
         "Fsync", "Lookup", "GetAttr", "Read", "ReadLink", "ReadDir", "GetXattr", "ListXattr"]


def variant(index, count):
    value = (index * (1 << 32) + count - 1) // count
    assert (value * count) >> 32 == index
    return struct.pack("<I", value)


ROOT = variant(0, 3)  # Who::Root
NAME = {"a": 0, "b": 1, "c": 2}  # Name selector bytes
MODE_755, MODE_644, MODE_0 = 1, 0, 6  # Mode selector bytes
O_RDONLY, O_RDWR = 0, 2  # OpenFlags selector bytes


def step(name, *fields):
    return b"\x01" + variant(STEPS.index(name), len(STEPS)) + b"".join(fields)


def ino(n):
    assert n < 14
    return bytes([n])


def fh(n):
    return bytes([n])


def name(s):
    return bytes([NAME[s]])


def mkdir(parent, n):
    return step("Mkdir", ROOT, ino(parent), name(n), bytes([MODE_755]))


def rmdir(parent, n):
    return step("Rmdir", ROOT, ino(parent), name(n))


def create(parent, n):
    return step("Create", ROOT, ino(parent), name(n), bytes([MODE_644, MODE_0, O_RDWR, 1]))


def open_(i):
    return step("Open", ROOT, ino(i), bytes([O_RDONLY]))


def rename(p, n, q, m):
    return step("Rename", ROOT, ino(p), name(n), ino(q), name(m), b"\x00")


def write(i, f, offset_units, length, byte):
    # Offset selector < 200: then a u16 times 5; Data selector < 240: length, byte.
    return step("Write", ROOT, ino(i), fh(f), b"\x00" + struct.pack("<H", offset_units),
                bytes([0, length, byte]), bytes([0]))


def release(i, f):
    return step("Release", ROOT, ino(i), fh(f))


REPLAY = b"\x01"
# A removed directory (3) kept by handle 1 whose parent (2) is freed, a live
# directory c (4) and an open file a (5, handle 2).
ODD_START = (mkdir(1, "a") + mkdir(2, "b") + open_(3) + rmdir(2, "b") + rmdir(1, "a")
             + mkdir(1, "c") + create(1, "a"))
SEEDS = {
    "seed-odd-start": REPLAY + ODD_START,
    # Issue 10's poison rename: panicked before the fix.
    "seed-poison-rename": REPLAY + ODD_START + rename(1, "c", 3, "a"),
    "seed-files": REPLAY + create(1, "a") + write(2, 1, 13000, 200, 7) + open_(2)
    + rename(1, "a", 1, "b") + release(2, 1) + release(2, 2),
    "seed-tree": REPLAY + mkdir(1, "a") + mkdir(2, "b") + mkdir(3, "c") + create(4, "a")
    + rename(2, "b", 1, "b") + rename(1, "a", 3, "a"),
}

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
    os.makedirs(out, exist_ok=True)
    for file, data in SEEDS.items():
        with open(os.path.join(out, file), "wb") as f:
            f.write(data)
        print(f"{file}: {len(data)} bytes")
