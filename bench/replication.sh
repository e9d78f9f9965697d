#!/usr/bin/env bash
# Benchmark of the replication shell: 3 replica processes on loopback with
# fsync'd group commit, many concurrent closed-loop sessions submitting
# 100-byte commands; then the leader is killed with SIGKILL under load and
# the failover time is measured. Results go to stdout; record them in
# bench/RESULTS.md ("Replication shell").
#
# Usage: bench/replication.sh [SESSIONS] [SECONDS] [extra node args, e.g. --batch 256 --pipeline 16]
# Env: CARGO_TARGET_DIR (default /var/cache/chorusfs/target-shell), BENCH_DIR (default: a temp dir).
# Builds with the dev profile (the project's single profile). Kills only the
# processes it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-256}
SECONDS_MEASURE=${2:-10}
shift 2 2>/dev/null || shift $# 
NODE_ARGS=("$@")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/chorusfs/target-shell}
cargo build -q -p chorus-replication-shell --bins
BIN=$CARGO_TARGET_DIR/debug
DIR=${BENCH_DIR:-$(mktemp -d /tmp/chorus-repl-bench.XXXXXX)}
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -z "${BENCH_DIR:-}" ] && rm -rf "$DIR"
}
trap cleanup EXIT

# Three free UDP ports (bound and released by the kernel's choice).
PORTS=$(python3 -c 'import socket
s=[socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
read -r P0 P1 P2 <<<"$PORTS"
PEERS="127.0.0.1:$P0,127.0.0.1:$P1,127.0.0.1:$P2"

"$BIN/chorus-repl-node" certs "$DIR/certs" --replicas 3 2>/dev/null
for i in 0 1 2; do
  "$BIN/chorus-repl-node" init --id $i --replicas 3 --data "$DIR/data-$i" 2>/dev/null
done
for i in 0 1 2; do
  RUST_LOG=${NODE_LOG:-warn} "$BIN/chorus-repl-node" run --id $i --peers "$PEERS" --certs "$DIR/certs" --data "$DIR/data-$i" "${NODE_ARGS[@]}" 2>"$DIR/node-$i.log" &
  PIDS+=($!)
done
echo "date=$(date -u +%Y-%m-%dT%H:%MZ) cores=$(nproc) kernel=$(uname -r) fs=$(df -T "$DIR" | awk 'NR==2{print $2}') node_args='${NODE_ARGS[*]}'"
"$BIN/chorus-repl-bench" --certs "$DIR/certs" --peers "$PEERS" --sessions "$SESSIONS" --secs "$SECONDS_MEASURE" ${BENCH_ARGS:-} \
  --pids "$(IFS=,; echo "${PIDS[*]}")"
