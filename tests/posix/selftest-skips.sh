#!/usr/bin/env bash
# Self-test of the test harness's skip rules and of the fault-injection
# feature boundary (issue 11, findings 4 and 7). Needs the workspace built
# (.ci/run runs it right after `cargo build --workspace --all-targets`) and
# root (it drops to `nobody` with setpriv); takes well under a minute.
#
#  1. Under CHORUS_REQUIRE_FAULTS=1 a test that cannot run fails:
#     - the partition test with an `iptables` that does not work (a fake
#       first on PATH), and, as a control, the same run without the variable
#       skips (passes, printing SKIPPED);
#     - the FUSE mount tests (client/tests) as user nobody (not root), and,
#       as a control, the same run without the variable skips.
#  2. The user-facing build (`cargo run -- up`, no dev-dependencies) has no
#     fault injection: `cargo tree` shows the `fault-injection` feature of
#     chorus-replication-shell only through the dev-dependency, and the
#     shell's unit test built without the feature checks that
#     CHORUS_FAULT_DROP_REPLIES is ignored.
# Usage: CARGO_TARGET_DIR=... bash tests/posix/selftest-skips.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "selftest-skips: run as root (it drops to nobody itself)"; exit 1; }
work=$(mktemp -d /tmp/chorus-skips-selftest.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
failures=0
ok() { echo "ok   $*"; }
bad() { echo "BAD  $*"; failures=$((failures + 1)); }

# The test executables of the current build (no rebuild: same selection as
# .ci/run's `cargo build --workspace --all-targets`).
cargo test --workspace --no-run --message-format=json 2>/dev/null >"$work/build.json"
exe() { # TARGET_NAME -> path of that test executable
  python3 - "$work/build.json" "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[2] \
            and m["profile"]["test"]:
        print(m["executable"]); break
PY
}
faults=$(exe faults_hang_partition)
mounts=$(exe mount_lifecycle)
[ -x "$faults" ] && [ -x "$mounts" ] || { echo "test executables not found (faults: '$faults', mounts: '$mounts')"; exit 1; }

# expect_run WANT(pass|fail) WHAT PATTERN CMD...: runs CMD, checks its status
# and that its output contains PATTERN.
expect_run() {
  local want=$1 what=$2 pattern=$3 rc=0; shift 3
  "$@" >"$work/out" 2>&1 || rc=$?
  local got=pass; [ "$rc" -eq 0 ] || got=fail
  if [ "$got" = "$want" ] && grep -q -- "$pattern" "$work/out"; then
    ok "$what: ${got}ed"
  else
    bad "$what: exit status $rc, wanted it to $want with '$pattern' in its output:"; tail -15 "$work/out" | sed 's/^/     /'
  fi
}

# 1a. No usable iptables.
mkdir -p "$work/noipt"
printf '#!/bin/sh\necho "iptables: not usable here (fake)" >&2\nexit 4\n' >"$work/noipt/iptables"
chmod +x "$work/noipt/iptables"
partition=minority_partition_old_leader_stops_new_leader_serves
expect_run fail "partition test, no iptables, CHORUS_REQUIRE_FAULTS=1" "forbids skipping" \
  env PATH="$work/noipt:$PATH" CHORUS_REQUIRE_FAULTS=1 "$faults" --exact "$partition" --test-threads=1 --nocapture
expect_run pass "partition test, no iptables, no CHORUS_REQUIRE_FAULTS (control: a skip)" "SKIPPED" \
  env -u CHORUS_REQUIRE_FAULTS PATH="$work/noipt:$PATH" "$faults" --exact "$partition" --test-threads=1 --nocapture

# 1b. Not root: the FUSE mount tests as nobody.
as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups env -u CHORUS_REQUIRE_FAULTS HOME=/tmp TMPDIR=/tmp)
expect_run fail "mount tests as nobody, CHORUS_REQUIRE_FAULTS=1" "forbids skipping" \
  "${as_nobody[@]}" CHORUS_REQUIRE_FAULTS=1 "$mounts" --test-threads=1
expect_run pass "mount tests as nobody, no CHORUS_REQUIRE_FAULTS (control: skips)" "skipping: needs root" \
  "${as_nobody[@]}" "$mounts" --test-threads=1 --nocapture

# 2. Fault injection only in test builds.
cargo tree -p chorusfs -e normal,features -i chorus-replication-shell >"$work/tree-normal" 2>&1
cargo tree -p chorusfs -e normal,dev,features -i chorus-replication-shell >"$work/tree-dev" 2>&1
if grep -q 'feature "fault-injection"' "$work/tree-normal"; then
  bad "the user-facing build of chorusfs enables chorus-replication-shell/fault-injection:"; sed 's/^/     /' "$work/tree-normal"
elif ! grep -q 'feature "fault-injection"' "$work/tree-dev"; then
  bad "the test build does not enable chorus-replication-shell/fault-injection (tests/exactly_once.rs needs it)"
else
  ok "fault-injection: enabled through the dev-dependency only (cargo tree)"
fi
expect_run pass "a build without the feature ignores CHORUS_FAULT_DROP_REPLIES (unit test)" "1 passed" \
  cargo test -q -p chorus-replication-shell --lib fault_injection_is_not_built_without_the_feature

if [ "$failures" -gt 0 ]; then echo "selftest-skips: $failures check(s) failed"; exit 1; fi
echo "selftest-skips: all 6 checks as expected"
