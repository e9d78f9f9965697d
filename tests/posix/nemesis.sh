#!/usr/bin/env bash
# fsx through a 3-replica ChorusFS mount while a nemesis kill -9s a random
# replica every few seconds and restarts it (the same command line, without
# --init-new-cluster) a second or two later. Then: fsx must have passed, and
# all replicas must reach the same commit point and state digest
# (`chorus status`).
#
# The nemesis is bounded: at most one replica is down at a time (before a
# kill it waits until `chorus status` shows all three up and normal), and it
# stops after NEMESIS_SECS or when fsx ends, whichever is first.
# Usage: CHORUS_BIN=.../chorus tests/posix/nemesis.sh
# Knobs: FSX_OPS (default 20000), FSX_SEED (44), NEMESIS_SECS (120),
#        NEMESIS_SEED (1), CHORUS_NEMESIS_PORT (17880; uses 3 ports from it),
#        FSX_CONFIG (tests/posix/fsx.toml), KEEP_NEMESIS_WORK (keep the logs).
# Bounded: every wait has a timeout; on any exit it unmounts and stops only
# the processes it started, by PID.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=${CHORUS_BIN:?set CHORUS_BIN to the chorus binary}
FSX_OPS=${FSX_OPS:-20000}
FSX_SEED=${FSX_SEED:-44}
NEMESIS_SECS=${NEMESIS_SECS:-120}
RANDOM=${NEMESIS_SEED:-1}
PORT=${CHORUS_NEMESIS_PORT:-17880}
FSX_TIMEOUT=${FSX_TIMEOUT:-900}
FSX_CONFIG=${FSX_CONFIG:-$here/fsx.toml}
work=$(mktemp -d /var/tmp/chorus-nemesis.XXXXXX)
chmod 755 "$work"
mnt=$work/mnt certs=$work/certs
mkdir -p "$mnt"
peers="127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))"
declare -a rpid=("" "" "")
mpid="" fsxpid=""
started=$(date +%s)

log() { echo "[nemesis $(( $(date +%s) - started ))s] $*"; }

start_replica() { # id [--init-new-cluster]
  local i=$1; shift
  "$BIN" server --certs "$certs" --data "$work/replica-$i" --id "$i" --peers "$peers" "$@" \
    >>"$work/replica-$i.log" 2>&1 &
  rpid[$i]=$!
}

stop_pid() { # pid: SIGTERM, wait up to 20 s, then SIGKILL
  local p=$1
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

# `chorus status` rows as "id up status view commit_op digest", one a line
# (the full table is kept in $work/status.txt).
status_rows() {
  timeout 10 "$BIN" status --certs "$certs" --server "$peers" >"$work/status.txt" 2>&1 || true
  awk -F'┆' 'NF >= 5 {
      for (i = 1; i <= NF; i++) { gsub(/[│ ]/, "", $i) }
      if ($1 == "id") { for (i = 1; i <= NF; i++) col[$i] = i; next }
      print $1, $col["up"], $col["status"], $col["view"], $col["commit_op"], $col["digest"]
    }' "$work/status.txt"
}

all_normal() { # all three up, normal, one view
  status_rows | awk '$2 == "up" && $3 == "normal" { n++; v[$4] = 1 } END { exit !(n == 3 && length(v) == 1) }'
}

converged() { # all three up, normal, same view, commit_op and digest
  status_rows | awk '$2 == "up" && $3 == "normal" { n++; k[$4 " " $5 " " $6] = 1 } END { exit !(n == 3 && length(k) == 1) }'
}

wait_for() { # seconds what-function
  local secs=$1 fn=$2 t0; t0=$(date +%s)
  until "$fn"; do
    if (( $(date +%s) - t0 > secs )); then return 1; fi
    sleep 0.5
  done
}

cleanup() {
  set +e
  [ -n "$fsxpid" ] && kill -KILL "$fsxpid" 2>/dev/null && wait "$fsxpid" 2>/dev/null
  stop_pid "$mpid"
  if mountpoint -q "$mnt"; then umount -l "$mnt"; fi
  for i in 0 1 2; do stop_pid "${rpid[$i]}"; done
  if [ -n "${KEEP_NEMESIS_WORK:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

fail() {
  log "FAILED: $*"
  for i in 0 1 2; do echo "--- replica $i (last 20 lines)"; tail -20 "$work/replica-$i.log" 2>/dev/null; done
  echo "--- mount (last 20 lines)"; tail -20 "$work/mount.log" 2>/dev/null
  exit 1
}

"$BIN" init --certs "$certs" --replicas 3 >/dev/null
for i in 0 1 2; do start_replica "$i" --init-new-cluster; done
wait_for 60 all_normal || fail "the 3 replicas did not become normal in one view within 60 s"
"$BIN" mount --certs "$certs" --server "$peers" "$mnt" >>"$work/mount.log" 2>&1 &
mpid=$!
for _ in $(seq 1 600); do mountpoint -q "$mnt" && break; kill -0 "$mpid" 2>/dev/null || fail "chorus mount exited"; sleep 0.1; done
mountpoint -q "$mnt" || fail "mount did not appear in 60 s"
log "cluster $peers mounted at $mnt"

mkdir -p "$mnt/fsx" "$work/fsx-art"
log "fsx seed $FSX_SEED, $FSX_OPS ops, under the nemesis (at most ${NEMESIS_SECS}s of kills)"
timeout "$FSX_TIMEOUT" fsx -f "$FSX_CONFIG" -N "$FSX_OPS" -S "$FSX_SEED" -P "$work/fsx-art" "$mnt/fsx/f.$FSX_SEED" \
  >"$work/fsx.log" 2>&1 &
fsxpid=$!

kills=0
while kill -0 "$fsxpid" 2>/dev/null && (( $(date +%s) - started < NEMESIS_SECS )); do
  sleep "$((3 + RANDOM % 3))"
  kill -0 "$fsxpid" 2>/dev/null || break
  wait_for 60 all_normal || fail "replicas not all up and normal within 60 s of the last restart"
  victim=$((RANDOM % 3))
  log "kill -9 replica $victim (pid ${rpid[$victim]})"
  kill -KILL "${rpid[$victim]}" 2>/dev/null || true; wait "${rpid[$victim]}" 2>/dev/null || true
  sleep "1.$((RANDOM % 10))"
  start_replica "$victim"
  log "restarted replica $victim (pid ${rpid[$victim]})"
  kills=$((kills + 1))
done
log "nemesis stopped after $kills kill(s); waiting for fsx"

rc=0; wait "$fsxpid" || rc=$?
fsxpid=""
if [ "$rc" != 0 ]; then tail -30 "$work/fsx.log"; fail "fsx exited with $rc"; fi
tail -2 "$work/fsx.log"
[ "$kills" -gt 0 ] || fail "fsx finished before the nemesis killed anything (raise FSX_OPS)"
wait_for 90 converged || { cat "$work/status.txt"; fail "replicas did not converge (commit_op, digest) within 90 s"; }
cat "$work/status.txt"
log "passed: fsx $FSX_OPS ops with $kills replica kill(s); all replicas at the same commit point and digest"
