#!/usr/bin/env bash
# Side-by-side file-system benchmark: the same workloads as
# ../shared/peers/fsbench.sh (creates, cold/warm stats, ls -l, 256 MiB
# write+fsync, cold read, unlinks) against a ChorusFS mount, local ext4 and,
# when it can be set up, the GlusterFS replica-3 peer — in one run.
# Usage (root): bench/fsbench.sh [nfiles] [MiB]
# Prints RESULT lines and a ratio table; paste it into bench/RESULTS.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
N=${1:-5000}
MIB=${2:-256}
peers=${PEERS_DIR:-$root/../shared/peers}
[ -d "$peers" ] || peers=$(cd "$root/../shared/peers" 2>/dev/null && pwd || true)
FSB=$peers/fsbench.sh
[ -f "$FSB" ] || { echo "need $FSB (the shared peers folder)"; exit 1; }
BIN=${CHORUS_BIN:-${CARGO_TARGET_DIR:-/var/cache/chorusfs/target}/debug/chorus}
[ -x "$BIN" ] || { echo "build first: cargo build (binary $BIN)"; exit 1; }
work=$(mktemp -d /var/tmp/chorus-bench.XXXXXX)
out=$work/results.txt
pid=""
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  mountpoint -q "$work/mnt" 2>/dev/null && umount -l "$work/mnt" || true
  if [ -n "${GLUSTER_STARTED:-}" ]; then bash "$peers/glusterfs.sh" teardown >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== local ext4"
mkdir -p "$work/ext4"
bash "$FSB" "$work/ext4" ext4 "$N" "$MIB" | tee -a "$out"

echo "== ChorusFS ($(basename "$BIN"), ${REPLICAS:-3} replica(s), chorus up)"
mkdir -p "$work/mnt"
"$BIN" up "$work/mnt" --data "$work/data" --port 17990 --replicas "${REPLICAS:-3}" >"$work/up.log" 2>&1 &
pid=$!
for _ in $(seq 300); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { cat "$work/up.log"; exit 1; }
bash "$FSB" "$work/mnt" chorusfs "$N" "$MIB" | tee -a "$out"
kill -TERM "$pid"; wait "$pid" || true; pid=""

if [ -z "${SKIP_GLUSTER:-}" ]; then
  echo "== GlusterFS replica 3 (peer)"
  if bash "$peers/glusterfs.sh" install >/dev/null 2>&1 && bash "$peers/glusterfs.sh" setup >/dev/null 2>&1; then
    GLUSTER_STARTED=1
    bash "$FSB" /tmp/peers/gmnt glusterfs "$N" "$MIB" | tee -a "$out"
  else
    echo "GlusterFS peer could not be set up; skipped"
  fi
fi

echo
echo "== ratios (time: other/chorusfs, >1 means ChorusFS is faster; throughput: chorusfs/other)"
python3 - "$out" <<'PY'
import sys, collections
vals = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) >= 4 and p[0] == "RESULT":
        vals[p[2]][p[1]] = (float(p[3]), p[4] if len(p) > 4 else "")
labels = ["chorusfs", "ext4", "glusterfs"]
print(f"| metric | " + " | ".join(labels) + " | vs ext4 | vs glusterfs |")
print("|---|" + "---|" * (len(labels) + 2))
for m, row in vals.items():
    cells = []
    for l in labels:
        v = row.get(l)
        cells.append(f"{v[0]:.3f}s {v[1]}".strip() if v else "-")
    def ratio(o):
        if "chorusfs" not in row or o not in row: return "-"
        c, x = row["chorusfs"][0], row[o][0]
        return f"{x / c:.2f}x" if c > 0 else "-"
    print(f"| {m} | " + " | ".join(cells) + f" | {ratio('ext4')} | {ratio('glusterfs')} |")
PY
