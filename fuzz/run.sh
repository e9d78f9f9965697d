#!/usr/bin/env bash
# Builds and runs every fuzz target for a bounded time (issue 10, finding 2).
#
#   bash fuzz/run.sh                 # CI: about 90 s of fuzzing in all
#   bash fuzz/run.sh --long          # by hand: 10 minutes per target
#   FUZZ_SECONDS=3600 bash fuzz/run.sh fs_apply   # one target, your time
#   bash fuzz/run.sh log_open log_damage          # some targets, CI times
#
# Each target starts from its corpus in the repo (fuzz/*/corpus/TARGET, read
# only here) and writes what it finds to a scratch corpus in the fuzz target
# directory, so runs do not grow the repo. A crash leaves its input in
# fuzz/*/artifacts/TARGET/ and fails the script; replay it with
#   cargo +nightly fuzz run -s none -a --fuzz-dir fuzz/fs fs_apply ARTIFACT
#
# Build cost: RocksDB's C++ is NOT recompiled for the fuzz build when the
# project's own build already made librocksdb.a (found in the main target
# directory and linked through ROCKSDB_LIB_DIR/ROCKSDB_STATIC); without it the
# first fuzz build compiles RocksDB (~20 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")"

long=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --long) long=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) targets+=("$arg") ;;
  esac
done
# target → fuzz crate directory, CI seconds (about 90 s in all), longest
# input, dictionary. The RocksDB targets (fs_apply, machine_apply) run at
# hundreds of executions/s, so they get the larger shares; the decoders run
# at 10^4..10^6/s and saturate in seconds. Targets that need no RocksDB
# (wire, replication) run first: a RocksDB link problem does not hide them.
declare -A crate=(
  [wire_frame]=wire
  [peer_message]=replication [checkpoint_manifest]=replication [checkpoint_serve]=replication
  [log_open]=replication [log_damage]=replication
  [fs_apply]=fs [machine_apply]=fs
)
declare -A ci_seconds=(
  [wire_frame]=8
  [peer_message]=8 [checkpoint_manifest]=6 [checkpoint_serve]=8
  [log_open]=8 [log_damage]=10
  [fs_apply]=30 [machine_apply]=12
)
# fs_apply reads at most 64 steps of a few bytes each; machine_apply 48.
declare -A max_len=(
  [wire_frame]=4096
  [peer_message]=4096 [checkpoint_manifest]=1024 [checkpoint_serve]=512
  [log_open]=4096 [log_damage]=1024
  [fs_apply]=512 [machine_apply]=2048
)
# Whole fs_apply steps as dictionary entries (fuzz/fs/make_seeds.py).
declare -A dict=([fs_apply]="-dict=fs/fs_apply.dict")
[ ${#targets[@]} -eq 0 ] && targets=(wire_frame peer_message checkpoint_manifest checkpoint_serve log_open log_damage fs_apply machine_apply)

export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/cache/chorusfs/fuzz-target}"
main_target="${MAIN_TARGET_DIR:-/var/cache/chorusfs/target}"
if [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
  lib=$(ls -t "$main_target"/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -1 || true)
  if [ -n "$lib" ]; then
    export ROCKSDB_LIB_DIR="$(dirname "$lib")" ROCKSDB_STATIC=1
    echo "fuzz: linking the prebuilt $lib"
  else
    echo "fuzz: no prebuilt librocksdb.a under $main_target: the fs build compiles RocksDB (~20 min)"
  fi
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

# -s none: the code under test is safe Rust (a sanitizer would find little
# and slows every execution); -a: debug assertions and overflow checks, as
# in the dev profile the servers run.
flags=(-s none -a)
status=0
t0=$(date +%s)
for target in "${targets[@]}"; do
  dir="${crate[$target]:-}"
  if [ -z "$dir" ]; then echo "fuzz: unknown target $target" >&2; exit 2; fi
  seconds="${FUZZ_SECONDS:-${ci_seconds[$target]}}"
  [ "$long" = 1 ] && seconds="${FUZZ_SECONDS:-600}"
  scratch="$CARGO_TARGET_DIR/corpus/$target"
  # Hand-made inputs (fuzz/fs/make_seeds.py), kept apart from the minimized corpus.
  seeds=""
  [ -d "$dir/seeds/$target" ] && seeds="$dir/seeds/$target"
  mkdir -p "$scratch" "$dir/corpus/$target"
  start=$(date +%s)
  cargo +nightly fuzz build "${flags[@]}" --fuzz-dir "$dir" "$target"
  echo "fuzz: $target built in $(( $(date +%s) - start ))s; running ${seconds}s"
  log="$CARGO_TARGET_DIR/$target.log"
  if cargo +nightly fuzz run "${flags[@]}" --fuzz-dir "$dir" "$target" "$scratch" "$dir/corpus/$target" $seeds -- \
      -max_total_time="$seconds" -max_len="${max_len[$target]}" -len_control=0 ${dict[$target]:-} -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz: $target ok: $runs executions in ${seconds}s, no crash"
  else
    status=1
    echo "fuzz: $target FAILED (log $log):" >&2
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|thread .* panicked' -A3 "$log" | head -40 >&2
  fi
done
echo "fuzz: ${#targets[@]} targets in $(( $(date +%s) - t0 ))s (builds included)"
exit $status
