#!/usr/bin/env bash
# Failover: a writer creates fsync'd 4 KiB files one at a time on the mount;
# we kill -9 (then, separately, SIGSTOP) the leader and report the longest
# gap between two consecutive successful writes from the last success
# before the fault until 200 successes after it (every gap in that window,
# not only the one spanning the fault), and for comparison the longest gap
# among the 100 successes before the fault. The victim must be the leader:
# `chorus status` names it before the signal, and after it a majority must
# be in a newer view with another leader, or the run fails (no number).
# Same for the GlusterFS replica-3 peer (a brick process killed / frozen;
# no leader there), unless SKIP_GLUSTER=1.
# Usage (root): bench/failover.sh            Prints RESULT lines.
# Bounded: every wait has a deadline; a frozen process is always SIGCONTed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${CHORUS_BIN:-${CARGO_TARGET_DIR:-/var/cache/chorusfs/target}/debug/chorus}
[ -x "$BIN" ] || { echo "build first: cargo build (binary $BIN)"; exit 1; }
peers=${PEERS_DIR:-$root/../shared/peers}
PORT=${PORT:-17890}
work=$(mktemp -d /var/tmp/chorus-failover.XXXXXX)
up_pid=""; writer_pid=""; stopped=""; restarted=""
cleanup() {
  [ -n "$stopped" ] && kill -CONT "$stopped" 2>/dev/null || true
  [ -n "$writer_pid" ] && kill "$writer_pid" 2>/dev/null || true
  [ -n "$restarted" ] && kill -TERM "$restarted" 2>/dev/null || true
  [ -n "$up_pid" ] && kill -TERM "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
  mountpoint -q "$work/mnt" 2>/dev/null && umount -l "$work/mnt" || true
  if [ -n "${GLUSTER_STARTED:-}" ]; then bash "$peers/glusterfs.sh" teardown >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# writer DIR LOG: one fsync'd create per iteration, a timestamp per success.
start_writer() {
  python3 - "$1" "$2" <<'PY' &
import os, sys, time
d, log = sys.argv[1], sys.argv[2]
os.makedirs(d, exist_ok=True)
out = open(log, "w", buffering=1)
i = 0
end = time.time() + 240
while time.time() < end:
    p = os.path.join(d, "f%d" % i)
    try:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
        os.close(fd)
        out.write("%.6f\n" % time.time())
        i += 1
    except OSError as e:
        out.write("ERR %.6f %s\n" % (time.time(), e))
        time.sleep(0.01)
PY
  writer_pid=$!
}

# gap LOG T0 T1: "longest quiet errors": the longest gap between consecutive
# successes from the last one at or before T0 through T1 (seconds), the
# longest gap among the 100 successes before T0, and the failed writes.
gap() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
t0, t1 = float(sys.argv[2]), float(sys.argv[3])
lines = [l.strip() for l in open(sys.argv[1]) if l.strip()]
ts = sorted(float(l) for l in lines if not l.startswith("ERR"))
errs = sum(1 for l in lines if l.startswith("ERR"))
before = [t for t in ts if t <= t0]
window = [t for t in ts if t0 < t <= t1]
if not before or not window:
    print("nan nan", errs); sys.exit()
longest, prev = 0.0, before[-1]
for t in window:
    longest, prev = max(longest, t - prev), t
quiet = before[-100:]
q = max((b - a for a, b in zip(quiet, quiet[1:])), default=float("nan"))
print("%.3f %.3f" % (longest, q), errs)
PY
}

wait_writes() { # LOG N: wait until the log has N more lines (deadline 120 s)
  local end=$((SECONDS + 120))
  while [ ! -f "$1" ]; do [ $SECONDS -lt $end ] || return 1; sleep 0.1; done
  local n0; n0=$(wc -l <"$1")
  while [ $(( $(wc -l <"$1") - n0 )) -lt "$2" ]; do
    [ $SECONDS -lt $end ] || { echo "writer stalled for 120 s"; return 1; }
    sleep 0.1
  done
}

# leader_view: "VIEW LEADER" from `chorus status`'s headline (a majority's
# view); asks again for up to 10 s (a restarted replica's Join moves the
# group through a view change, when no majority agrees for a moment).
leader_view() {
  local out
  for _ in $(seq 50); do
    out=$("$BIN" status --data "$work/data" --port "$PORT" 2>/dev/null | sed -n 's/^view \([0-9]*\), leader \([0-9]*\).*/\1 \2/p' | head -1)
    [ -n "$out" ] && { echo "$out"; return 0; }
    sleep 0.2
  done
  return 1
}

leader_pid() { # LEADER
  pgrep -f -- "--data $work/data/replica-$1 --id $1" | head -1
}

# check_failover VIEW LEADER: after a fault of the leader, a majority is in a
# newer view led by another replica; otherwise the victim was not the leader
# (or nothing failed over) and the number would be meaningless.
check_failover() {
  local v l
  for _ in $(seq 50); do
    read -r v l < <(leader_view) || true
    if [ -n "${v:-}" ] && [ "$v" -gt "$1" ] && [ "$l" != "$2" ]; then echo "view $1 -> $v, leader $2 -> $l"; return 0; fi
    sleep 0.2
  done
  echo "FAILED: no newer view with another leader after faulting leader $2 of view $1 (now: view ${v:-?} leader ${l:-?})"
  return 1
}

echo "== ChorusFS, 3 replicas (chorus up)"
mkdir -p "$work/mnt"
"$BIN" up "$work/mnt" --data "$work/data" --port "$PORT" --replicas 3 >"$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 300); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { cat "$work/up.log"; exit 1; }
start_writer "$work/mnt/w" "$work/w.log"
wait_writes "$work/w.log" 200
read -r view leader < <(leader_view) || { echo "FAILED: chorus status names no leader"; exit 1; }
victim=$(leader_pid "$leader")
mapfile -d '' cmd < "/proc/$victim/cmdline"
t0=$(date +%s.%N); kill -9 "$victim"
wait_writes "$work/w.log" 200
t1=$(date +%s.%N)
check_failover "$view" "$leader"
read -r g q errs < <(gap "$work/w.log" "$t0" "$t1")
echo "RESULT chorusfs failover_kill_s $g"
echo "RESULT chorusfs failover_kill_quiet_gap_s $q"
echo "RESULT chorusfs failover_kill_errors $errs"
# chorus up does not restart a killed replica: restart it by hand (its log
# is not empty, so --init-new-cluster on that command line does nothing).
"${cmd[@]}" >>"$work/restarted.log" 2>&1 &
restarted=$!
for _ in $(seq 200); do
  "$BIN" status --data "$work/data" --port "$PORT" 2>/dev/null | grep -q "as 3 of 3" && break; sleep 0.2
done
sleep 1
read -r view leader < <(leader_view) || { echo "FAILED: chorus status names no leader"; exit 1; }
victim=$(leader_pid "$leader")
t0=$(date +%s.%N); kill -STOP "$victim"; stopped=$victim
wait_writes "$work/w.log" 200
t1=$(date +%s.%N)
check_failover "$view" "$leader"
read -r g q errs < <(gap "$work/w.log" "$t0" "$t1")
kill -CONT "$victim"; stopped=""
echo "RESULT chorusfs failover_sigstop_s $g"
echo "RESULT chorusfs failover_sigstop_quiet_gap_s $q"
echo "RESULT chorusfs failover_sigstop_errors $errs"
kill "$writer_pid" 2>/dev/null || true; wait "$writer_pid" 2>/dev/null || true; writer_pid=""
kill -TERM "$restarted" 2>/dev/null || true; wait "$restarted" 2>/dev/null || true
kill -TERM "$up_pid"; wait "$up_pid" 2>/dev/null || true; up_pid=""

if [ -z "${SKIP_GLUSTER:-}" ] && [ -f "$peers/glusterfs.sh" ]; then
  echo "== GlusterFS replica 3 (peer)"
  if bash "$peers/glusterfs.sh" install >/dev/null 2>&1 && bash "$peers/glusterfs.sh" setup >/dev/null 2>&1; then
    GLUSTER_STARTED=1
    start_writer /tmp/peers/gmnt/w "$work/g.log"
    wait_writes "$work/g.log" 100
    # SIGSTOP first: after a kill only two bricks are left, and freezing one
    # of them would take the volume below its quorum.
    brick=$(pgrep -f glusterfsd | head -1)
    t0=$(date +%s.%N); kill -STOP "$brick"; stopped=$brick
    if wait_writes "$work/g.log" 100; then
      read -r g q errs < <(gap "$work/g.log" "$t0" "$(date +%s.%N)")
    else
      g=">120"
    fi
    kill -CONT "$brick"; stopped=""
    echo "RESULT glusterfs failover_sigstop_s $g"
    sleep 5
    wait_writes "$work/g.log" 100
    brick=$(pgrep -f glusterfsd | head -1)
    t0=$(date +%s.%N); kill -9 "$brick"
    wait_writes "$work/g.log" 100
    read -r g q errs < <(gap "$work/g.log" "$t0" "$(date +%s.%N)")
    echo "RESULT glusterfs failover_kill_s $g"
  else
    echo "GlusterFS peer could not be set up; skipped"
  fi
fi
