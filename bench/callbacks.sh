#!/usr/bin/env bash
# Callbacks (issue 9): what client caching buys and what a recall costs, on
# a 3-replica `chorus up` cluster (mount A) with a second mount of it
# (`chorus mount`, mount B), against local ext4 (a temp folder on the same
# disk):
#  - stat of N files (default 5000) created on A and never looked at on B
#    (cold on B), then again on B after more than 1 s (warm: the old fixed
#    attribute TTL was 1 s; under callbacks the kernel trusts them for the
#    lease); ext4: the same two passes (its dentries are in memory both times);
#  - read of a MIB MiB file (default 256) on B, then again (re-read of a
#    file already read on this mount) vs ext4's warm read; the best of five
#    more re-reads (ext4's first read is already from its page cache, B's
#    first re-read is B's first from it: the kernel's first hit of freshly
#    read order-0 FUSE pages also activates each on the LRU); and a re-read
#    after the callback lease ran out (6 s idle: B revalidates by version and
#    keeps its pages, issue 9);
#  - recall cost: a 4 KiB pwrite on A to a file B holds open and has just
#    read (so B holds a callback that must be recalled first), p50/p99 over
#    ROUNDS rounds (default 200, at most 30 s), next to the same pwrite on a
#    file no other mount has read, and ext4's pwrite.
# Usage (root): bench/callbacks.sh [nfiles] [MiB] [rounds]
# Env: CHORUS_BIN (default $CARGO_TARGET_DIR/debug/chorus), PORT (first
# replica's port, default 18290). Prints RESULT lines and a table; takes a
# minute or two. Bounded: every wait has a deadline; everything it started
# is stopped by PID and its mounts are unmounted on exit.
set -euo pipefail
N=${1:-5000}
MIB=${2:-256}
ROUNDS=${3:-200}
BIN=${CHORUS_BIN:-${CARGO_TARGET_DIR:-/var/cache/chorusfs/target}/debug/chorus}
[ -x "$BIN" ] || { echo "build first: cargo build (binary $BIN)"; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (FUSE mounts)"; exit 1; }
PORT=${PORT:-18290}
work=$(mktemp -d /var/tmp/chorus-callbacks-bench.XXXXXX)
out=$work/results.txt
up_pid=""; b_pid=""
cleanup() {
  [ -n "$b_pid" ] && kill -TERM "$b_pid" 2>/dev/null && wait "$b_pid" 2>/dev/null || true
  mountpoint -q "$work/b" 2>/dev/null && umount -l "$work/b" || true
  [ -n "$up_pid" ] && kill -TERM "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
  mountpoint -q "$work/a" 2>/dev/null && umount -l "$work/a" || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_mounted() { # DIR LOG
  for _ in $(seq 300); do mountpoint -q "$1" && return 0; sleep 0.1; done
  echo "not mounted within 30 s: $1"; cat "$2"; exit 1
}

mkdir -p "$work/a" "$work/b" "$work/ext4"
echo "== ChorusFS: chorus up (3 replicas, mount A) and chorus mount (mount B)"
"$BIN" up "$work/a" --data "$work/data" --port "$PORT" --replicas 3 >"$work/up.log" 2>&1 &
up_pid=$!
wait_mounted "$work/a" "$work/up.log"
servers="127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))"
"$BIN" mount --certs "$work/data/certs" --server "$servers" "$work/b" >"$work/b.log" 2>&1 &
b_pid=$!
wait_mounted "$work/b" "$work/b.log"

# stats WRITE_DIR READ_DIR LABEL: creates N files through WRITE_DIR, then
# stats them through READ_DIR twice, 1.5 s apart.
stats() {
  python3 - "$1" "$2" "$3" "$N" <<'PY'
import os, sys, time
w, r, label, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
os.makedirs(os.path.join(w, "many"), exist_ok=True)
for i in range(n):
    os.close(os.open(os.path.join(w, "many", "f%d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
def pass_():
    t = time.perf_counter()
    for i in range(n):
        os.stat(os.path.join(r, "many", "f%d" % i))
    return time.perf_counter() - t
cold = pass_()
time.sleep(1.5)
warm = pass_()
print("RESULT stat_%d_cold %s %.4f s" % (n, label, cold))
print("RESULT stat_%d_warm_after_1.5s %s %.4f s" % (n, label, warm))
PY
}

# reads WRITE_DIR READ_DIR LABEL: writes a MIB MiB file through WRITE_DIR,
# reads it through READ_DIR twice.
reads() {
  dd if=/dev/urandom of="$1/big" bs=1M count="$MIB" conv=fsync status=none
  python3 - "$2/big" "$3" "$MIB" <<'PY'
import os, sys, time
p, label, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
def read_all():
    t = time.perf_counter()
    with open(p, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - t
first = read_all()
again = read_all()
best = min(read_all() for _ in range(5))
time.sleep(6)
lapsed = read_all()
print("RESULT read_%dMiB_first %s %.4f s %.0fMiB/s" % (mib, label, first, mib / first))
print("RESULT read_%dMiB_again %s %.4f s %.0fMiB/s" % (mib, label, again, mib / again))
print("RESULT read_%dMiB_again_best_of_5 %s %.4f s %.0fMiB/s" % (mib, label, best, mib / best))
print("RESULT read_%dMiB_again_after_6s_idle %s %.4f s %.0fMiB/s" % (mib, label, lapsed, mib / lapsed))
PY
}

# recalls WRITE_DIR READ_DIR LABEL: per round, READ_DIR preads a file it
# holds open (caching it), then WRITE_DIR pwrites 4 KiB to it (timed); and
# a timed pwrite to a file READ_DIR never read.
recalls() {
  python3 - "$1" "$2" "$3" "$ROUNDS" <<'PY'
import os, sys, time
w, r, label, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
buf = b"y" * 4096
shared = os.open(os.path.join(w, "shared"), os.O_RDWR | os.O_CREAT, 0o644)
solo = os.open(os.path.join(w, "solo"), os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(shared, buf, 0)
os.pwrite(solo, buf, 0)
reader = os.open(os.path.join(r, "shared"), os.O_RDONLY)
t_shared, t_solo = [], []
end = time.time() + 30
while len(t_shared) < rounds and time.time() < end:
    t = time.perf_counter(); os.pwrite(solo, buf, 0); t_solo.append(time.perf_counter() - t)
    os.pread(reader, 4096, 0)
    os.fstat(reader)
    t = time.perf_counter(); os.pwrite(shared, buf, 0); t_shared.append(time.perf_counter() - t)
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]
for name, v in (("pwrite_4KiB_cached_elsewhere", t_shared), ("pwrite_4KiB_not_cached", t_solo)):
    print("RESULT %s_p50 %s %.6f s (%d rounds)" % (name, label, pct(v, 0.5), len(v)))
    print("RESULT %s_p99 %s %.6f s (%d rounds)" % (name, label, pct(v, 0.99), len(v)))
PY
}

{
  echo "== stat"
  stats "$work/a" "$work/b" chorusfs
  stats "$work/ext4" "$work/ext4" ext4
  echo "== re-read"
  reads "$work/a" "$work/b" chorusfs
  reads "$work/ext4" "$work/ext4" ext4
  echo "== recall cost"
  recalls "$work/a" "$work/b" chorusfs
  recalls "$work/ext4" "$work/ext4" ext4
} | tee "$out"

echo
echo "== table (ChorusFS: written on mount A, read on mount B; ext4: one folder)"
python3 - "$out" <<'PY'
import sys, collections
vals = collections.OrderedDict()
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) >= 5 and p[0] == "RESULT":
        vals.setdefault(p[1], {})[p[2]] = (float(p[3]), " ".join(p[5:]))
print("| metric | chorusfs | ext4 | chorusfs/ext4 |")
print("|---|---|---|---|")
for m, row in vals.items():
    def cell(l):
        if l not in row:
            return "-"
        v, note = row[l]
        shown = "%.3f s" % v if v >= 1 else "%.3f ms" % (v * 1e3) if v >= 1e-3 else "%.1f us" % (v * 1e6)
        return (shown + " " + note).strip()
    ratio = "%.1fx" % (row["chorusfs"][0] / row["ext4"][0]) if "chorusfs" in row and "ext4" in row and row["ext4"][0] > 0 else "-"
    print("| %s | %s | %s | %s |" % (m, cell("chorusfs"), cell("ext4"), ratio))
PY
