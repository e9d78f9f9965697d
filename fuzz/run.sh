#!/usr/bin/env bash
# Builds and runs every fuzz target for a bounded time (issue 10, finding 2).
#
#   bash fuzz/run.sh                 # CI: about a minute of fuzzing in all
#   bash fuzz/run.sh --long          # by hand: 10 minutes per target
#   FUZZ_SECONDS=3600 bash fuzz/run.sh fs_apply   # one target, your time
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
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) targets+=("$arg") ;;
  esac
done
# target → (fuzz crate directory, CI seconds). The fs target opens a RocksDB
# per input (~100s of executions/s), so it gets the larger share.
declare -A crate=([fs_apply]=fs [wire_frame]=wire)
declare -A ci_seconds=([fs_apply]=40 [wire_frame]=15)
# Longest input: fs_apply reads at most 64 steps of a few bytes each.
declare -A max_len=([fs_apply]=512 [wire_frame]=4096)
# Whole fs_apply steps as dictionary entries (fuzz/fs/make_seeds.py).
declare -A dict=([fs_apply]="-dict=fs/fs_apply.dict" [wire_frame]="")
[ ${#targets[@]} -eq 0 ] && targets=(wire_frame fs_apply)

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
for target in "${targets[@]}"; do
  dir="${crate[$target]:-}"
  if [ -z "$dir" ]; then echo "fuzz: unknown target $target" >&2; exit 2; fi
  seconds="${FUZZ_SECONDS:-${ci_seconds[$target]}}"
  [ "$long" = 1 ] && seconds="${FUZZ_SECONDS:-600}"
  scratch="$CARGO_TARGET_DIR/corpus/$target"
  # Hand-made inputs (fuzz/fs/make_seeds.py), kept apart from the minimized corpus.
  seeds=""
  [ -d "$dir/seeds" ] && seeds="$dir/seeds"
  mkdir -p "$scratch" "$dir/corpus/$target"
  start=$(date +%s)
  cargo +nightly fuzz build "${flags[@]}" --fuzz-dir "$dir" "$target"
  echo "fuzz: $target built in $(( $(date +%s) - start ))s; running ${seconds}s"
  log="$CARGO_TARGET_DIR/$target.log"
  if cargo +nightly fuzz run "${flags[@]}" --fuzz-dir "$dir" "$target" "$scratch" "$dir/corpus/$target" $seeds -- \
      -max_total_time="$seconds" -max_len="${max_len[$target]}" -len_control=0 ${dict[$target]} -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz: $target ok: $runs executions in ${seconds}s, no crash"
  else
    status=1
    echo "fuzz: $target FAILED (log $log):" >&2
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|thread .* panicked' -A3 "$log" | head -40 >&2
  fi
done
exit $status
