#!/usr/bin/env bash
# Recovery benchmarks on a local 3-replica cluster (three `chorus server`
# processes on 127.0.0.1 and a mount):
#  1. catch-up: a follower is killed, OPS operations (default 100000 small
#     pwrites from 8 threads) run on the others, the follower restarts; the
#     time until its commit point reaches the leader's is reported.
#  2. state transfer: MIB (default 1024) MiB of random data are written, a
#     follower is killed and its data folder wiped, it restarts empty; the
#     transfer's bytes and duration (from its log) and the time until it is
#     a caught-up member again are reported.
# Usage (root): bench/recovery.sh [OPS] [MIB]     Prints RESULT lines.
# Bounded: every wait has a deadline; everything started here is stopped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=${CHORUS_BIN:-${CARGO_TARGET_DIR:-/var/cache/chorusfs/target}/debug/chorus}
[ -x "$BIN" ] || { echo "build first: cargo build (binary $BIN)"; exit 1; }
OPS=${1:-100000}
MIB=${2:-1024}
PORT=${PORT:-17790}
work=$(mktemp -d /var/tmp/chorus-recovery.XXXXXX)
peers="127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))"
pids=(); mount_pid=""
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && umount -l "$work/mnt" || true
  [ -n "$mount_pid" ] && kill -TERM "$mount_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

start_replica() { # ID [--init-new-cluster]
  "$BIN" server --certs "$work/certs" --data "$work/r$1" --id "$1" --peers "$peers" ${2:-} >>"$work/r$1.log" 2>&1 &
  pids[$1]=$!
}
status_field() { # ID FIELD: a column of `chorus status` for replica ID
  "$BIN" status --certs "$work/certs" --server "$peers" 2>/dev/null | python3 -c '
import sys
rows = [l for l in sys.stdin if l.startswith("│")]
head = [c.strip() for c in rows[0].strip("│\n").split("┆")]
for r in rows[1:]:
    cells = [c.strip() for c in r.strip("│\n").split("┆")]
    if cells[0] == sys.argv[1]:
        print(cells[head.index(sys.argv[2])])' "$1" "$2"
}
max_commit() {
  local m=0 c
  for i in 0 1; do c=$(status_field "$i" commit_op); [[ "$c" =~ ^[0-9]+$ ]] && [ "$c" -gt "$m" ] && m=$c; done
  echo "$m"
}
wait_caught_up() { # ID TARGET DEADLINE_S: until replica ID is normal with commit >= TARGET
  local end=$((SECONDS + $3))
  while [ $SECONDS -lt $end ]; do
    local st c
    st=$(status_field "$1" status); c=$(status_field "$1" commit_op)
    if [ "$st" = normal ] && [[ "$c" =~ ^[0-9]+$ ]] && [ "$c" -ge "$2" ]; then return 0; fi
    sleep 0.1
  done
  echo "replica $1 did not catch up within $3 s"; return 1
}

"$BIN" init --certs "$work/certs" --replicas 3 >/dev/null
for i in 0 1 2; do start_replica "$i" --init-new-cluster; done
mkdir -p "$work/mnt"
sleep 1
"$BIN" mount --certs "$work/certs" --server "$peers" "$work/mnt" >"$work/mount.log" 2>&1 &
mount_pid=$!
for _ in $(seq 300); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { cat "$work/mount.log"; exit 1; }

echo "== catch-up after $OPS operations"
kill -9 "${pids[2]}"
started=$(date +%s.%N)
python3 - "$work/mnt" "$OPS" <<'PY'
import os, sys, threading
d, ops = sys.argv[1], int(sys.argv[2])
threads = 8
def work(t):
    fd = os.open(os.path.join(d, "ops%d" % t), os.O_CREAT | os.O_WRONLY, 0o644)
    for i in range(ops // threads):
        os.pwrite(fd, b"%08d" % i, (i * 8) % (1 << 20))
    os.close(fd)
ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
PY
took=$(python3 -c "import time; print('%.1f' % (time.time() - $started))")
echo "RESULT chorusfs workload_${OPS}_ops_s $took"
target=$(max_commit)
t0=$(date +%s.%N)
start_replica 2
wait_caught_up 2 "$target" 300
catchup=$(python3 -c "import time; print('%.2f' % (time.time() - $t0))")
echo "RESULT chorusfs catchup_${OPS}_ops_s $catchup"
grep -h "checkpoint fetched" "$work/r2.log" | tail -1 || true

echo "== state transfer of about $MIB MiB"
for i in $(seq 1 $((MIB / 64))); do
  head -c $((64 * 1048576)) /dev/urandom >"$work/mnt/big$i"
done
sync "$work/mnt/big1" || true
kill -9 "${pids[2]}"
rm -rf "$work/r2/log" "$work/r2/checkpoints" "$work/r2/state"
: >"$work/r2.log"
"$BIN" checkpoint --certs "$work/certs" --server "$peers" >/dev/null 2>&1 || true
target=$(max_commit)
t0=$(date +%s.%N)
start_replica 2
wait_caught_up 2 "$target" 600
rejoin=$(python3 -c "import time; print('%.2f' % (time.time() - $t0))")
line=$(grep -h "checkpoint fetched and verified" "$work/r2.log" | tail -1 || true)
bytes=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$line")
fetched=$(sed -n 's/.*fetched=\([0-9]*\).*/\1/p' <<<"$line")
ms=$(sed -n 's/.* ms=\([0-9]*\).*/\1/p' <<<"$line")
echo "RESULT chorusfs state_transfer_bytes ${bytes:-nan}"
echo "RESULT chorusfs state_transfer_s $(python3 -c "print('%.2f' % (${ms:-0} / 1000))")"
echo "RESULT chorusfs state_transfer_MiB_per_s $(python3 -c "b=${fetched:-0}; ms=${ms:-0}; print('%.0f' % (b / 1048576 / (ms / 1000)) if ms else 'nan')")"
echo "RESULT chorusfs rejoin_after_wipe_s $rejoin"
