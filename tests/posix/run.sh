#!/usr/bin/env bash
# Runs suites written by others through a real ChorusFS mount:
#   pjdfstest  - compared against local ext4 with the same config: a failure
#                counts only if the same test passes on ext4.
#   fsx        - 50,000 ops per seed, several seeds, every op kind weighted;
#                then unmount, remount the same data, check the files are
#                byte-identical, and run fsx again.
# Usage: tests/posix/run.sh [pjdfstest|fsx|all]   (CHORUS_BIN = chorus binary)
# Bounded: every wait has a timeout; the cluster is stopped and the mount
# removed on any exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
what=${1:-all}
BIN=${CHORUS_BIN:?set CHORUS_BIN to the chorus binary}
FSX_OPS=${FSX_OPS:-50000}
FSX_SEEDS=${FSX_SEEDS:-"11 22"}
FSX_SEEDS_AFTER=${FSX_SEEDS_AFTER:-"33"}
PORT=${CHORUS_POSIX_PORT:-17870}
REPLICAS=${REPLICAS:-1}   # 3: a replicated cluster of three chorus server processes
work=$(mktemp -d /var/tmp/chorus-posix.XXXXXX)
chmod 755 "$work"
mnt=$work/mnt data=$work/data
mkdir -p "$mnt"
pid=""

log() { echo "[posix] $*"; }

start() {
  "$BIN" up "$mnt" --data "$data" --port "$PORT" --replicas "$REPLICAS" >>"$work/up.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    if mountpoint -q "$mnt"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$work/up.log"; log "chorus up exited"; return 1; fi
    sleep 0.1
  done
  cat "$work/up.log"; log "mount did not appear in 30 s"; return 1
}

stop() {
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "chorus up did not stop in 20 s; killing it"; kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  pid=""
  if mountpoint -q "$mnt"; then umount -l "$mnt" || true; fi
}

cleanup() {
  stop
  if [ -n "${KEEP_POSIX_WORK:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# pjdfstest prints one line per test case; collect the names that failed.
pjd_failures() { # dir -> failing test names on stdout
  local dir=$1 out=$2
  mkdir -p "$dir"; chmod 777 "$dir"
  (cd "$dir" && timeout 1200 pjdfstest -c "$here/pjdfstest.toml" -p "$dir" >"$out" 2>&1) || true
  grep -E '\bFAILED\b|\bfailed\b' "$out" | grep -oE '^[a-z_0-9]+::[A-Za-z_0-9:]+' | sort -u || true
}

run_pjdfstest() {
  log "pjdfstest on local ext4 (baseline)"
  local base=/var/tmp/chorus-pjd-ext4.$$
  rm -rf "$base"
  pjd_failures "$base" "$work/pjd-ext4.log" >"$work/pjd-ext4.fail"
  rm -rf "$base"
  log "ext4 baseline: $(wc -l <"$work/pjd-ext4.fail") failing test(s)"
  log "pjdfstest on ChorusFS"
  pjd_failures "$mnt/pjd" "$work/pjd-chorus.log" >"$work/pjd-chorus.fail"
  tail -5 "$work/pjd-chorus.log"
  local extra
  extra=$(comm -23 "$work/pjd-chorus.fail" "$work/pjd-ext4.fail")
  if ! grep -qE 'passed|PASSED|ok' "$work/pjd-chorus.log"; then
    cat "$work/pjd-chorus.log" | tail -40; log "pjdfstest produced no results"; return 1
  fi
  # A failure is retried twice on its own: one that then passes is reported
  # as flaky, loudly, but does not fail the run (open::etxtbsy races the
  # kernel's exec write-deny against the vfork wake-up of the spawner).
  local still="" name
  for name in $extra; do
    if (cd "$mnt/pjd" && pjdfstest -c "$here/pjdfstest.toml" -p "$mnt/pjd" -e "$name" >"$work/pjd-retry.log" 2>&1) ||
       (cd "$mnt/pjd" && pjdfstest -c "$here/pjdfstest.toml" -p "$mnt/pjd" -e "$name" >"$work/pjd-retry.log" 2>&1); then
      log "FLAKY: $name failed once and passed on retry"
    else
      still="$still $name"
    fi
  done
  extra=$(echo $still)
  if [ -n "$extra" ]; then
    log "pjdfstest failures on ChorusFS that pass on ext4:"; echo "$extra"
    grep -A6 -F "$(echo "$extra" | head -20)" "$work/pjd-chorus.log" | head -200 || true
    return 1
  fi
  log "pjdfstest: no failures beyond the ext4 baseline ($(wc -l <"$work/pjd-ext4.fail") shared)"
  rm -rf "$mnt/pjd"
}

run_fsx() {
  mkdir -p "$mnt/fsx" "$work/fsx-art"
  for seed in $FSX_SEEDS; do
    log "fsx seed $seed, $FSX_OPS ops"
    timeout 900 fsx -f "$here/fsx.toml" -N "$FSX_OPS" -S "$seed" -P "$work/fsx-art" "$mnt/fsx/f.$seed" \
      >"$work/fsx.$seed.log" 2>&1 || { tail -30 "$work/fsx.$seed.log"; log "fsx seed $seed FAILED"; return 1; }
  done
  (cd "$mnt/fsx" && sha256sum f.* >"$work/fsx.sums")
  log "unmount, remount the same data, compare files"
  stop; start
  (cd "$mnt/fsx" && sha256sum -c --quiet "$work/fsx.sums") || { log "files changed across remount"; return 1; }
  for seed in $FSX_SEEDS_AFTER; do
    log "fsx seed $seed after remount, $FSX_OPS ops"
    timeout 900 fsx -f "$here/fsx.toml" -N "$FSX_OPS" -S "$seed" -P "$work/fsx-art" "$mnt/fsx/f.$seed" \
      >"$work/fsx.$seed.log" 2>&1 || { tail -30 "$work/fsx.$seed.log"; log "fsx seed $seed FAILED"; return 1; }
  done
  log "fsx: all seeds passed"
}

start
case "$what" in
  pjdfstest) run_pjdfstest ;;
  fsx) run_fsx ;;
  all) run_pjdfstest; run_fsx ;;
  *) echo "usage: $0 [pjdfstest|fsx|all]"; exit 2 ;;
esac
log "done: $what passed"
