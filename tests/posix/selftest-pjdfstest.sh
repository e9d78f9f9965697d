#!/usr/bin/env bash
# Self-test of the pjdfstest verdict in tests/posix/run.sh: runs the real
# run.sh (POSIX_DIR mode: a plain folder, no mount, no chorus binary) with a
# fake `pjdfstest` first on PATH, once per way a broken run can look, and
# requires run.sh to fail for each of them, and to pass for a complete clean
# run and for a known race that passes its one retry. Takes a few seconds;
# run by .ci/run before the real suites.
# Usage: bash tests/posix/selftest-pjdfstest.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The pins (suite size, skipped cases, retry list) come from run.sh itself.
POSIX_LIB_ONLY=1 source "$here/run.sh"

work=$(mktemp -d /tmp/chorus-pjd-selftest.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/dir"
printf '%s\n' "${PJD_SKIPS[@]}" >"$work/skips"
cat >"$work/bin/pjdfstest" <<'FAKE'
#!/usr/bin/env bash
# A fake pjdfstest: FAKE_MODE says how to misbehave. Prints a run of
# FAKE_CASES cases in pjdfstest 0.2.2's format (coloured like on a terminal).
mode=${FAKE_MODE:?}
exact="" exact_name=""
while [ $# -gt 0 ]; do
  case "$1" in
    --version) echo "pjdfstest ${FAKE_VERSION:-$FAKE_PIN_VERSION}"; exit 0 ;;
    -c|-p) shift ;;
    -e) exact=1 ;;
    -*) ;;
    *) exact_name=$1 ;;
  esac
  shift
done
c() { printf '\e[%sm%s\e[0m' "$1" "$2"; }
line() { printf '%s %s\n' "$(c 34 "$(printf '%-70s' "$1")")" "$2"; }
summary() { # failed skipped passed xfail total
  printf '\n%s: %s %s, %s %s, %s %s, %s %s, %s total\n' "$(c '1;32' Summary)" "$1" "$(c '1;31' failed)" \
    "$2" "$(c '1;33' skipped)" "$3" "$(c '1;32' passed)" "$4" "$(c '1;92' 'expected failures')" "$5"
}
if [ -n "$exact" ]; then # a retry of one case
  # Like pjdfstest 0.2.2: -e matches the full name, with its module prefix.
  case "$exact_name" in
    pjdfstest::tests::*) exact=${exact_name#pjdfstest::tests::} ;;
    *) summary 0 0 0 0 0; exit 0 ;;
  esac
  case "$mode" in
    retry_matches_nothing) summary 0 0 0 0 0; exit 0 ;;
    retry_runs_two) line "$exact" "$(c 32 ok)"; line fake::other "$(c 32 ok)"; summary 0 0 2 0 2; exit 0 ;;
    etxtbsy_always) line "$exact" "$(c 31 FAILED)"; printf '\tassertion failed\n'; summary 1 0 0 0 1; exit 1 ;;
    *) line "$exact" "$(c 32 ok)"; summary 0 0 1 0 1; exit 0 ;;
  esac
fi
total=$FAKE_CASES
[ "$mode" = partial ] && total=$((FAKE_CASES / 2))
fail_name=""
case "$mode" in
  colour_fail|fail_other|mismatch|fail_zero_exit) fail_name=fake::case_7 ;;
  etxtbsy*|retry_*) fail_name=open::etxtbsy ;;
esac
[ "$mode" = silent ] && exit 0
[ "$mode" = silent_exit1 ] && exit 1
mapfile -t pinned <"$FAKE_SKIPS"
skips=("${pinned[@]}")
[ "$mode" = skip_extra ] && skips+=(fake::case_9)
n=0 pass=0 skip=0 fail=0
emit() { # name
  local name=$1 s
  n=$((n + 1))
  for s in "${skips[@]}"; do
    if [ "$s" = "$name" ]; then line "$name" "$(c 33 skipped)"; printf '\t%s\n' "$(c 33 'Remounts (allow_remount) are not allowed')"; skip=$((skip + 1)); return; fi
  done
  if [ "$name" = "$fail_name" ]; then
    line "$name" "$(c 31 FAILED)"; printf '\tassertion `left == right` failed\n'; fail=$((fail + 1))
  else
    line "$name" "$(c 32 ok)"; pass=$((pass + 1))
  fi
}
for s in "${pinned[@]}"; do emit "$s"; done
emit open::etxtbsy
i=0
while [ "$n" -lt "$total" ]; do
  i=$((i + 1)); emit "fake::case_$i"
  if [ "$mode" = abort ] && [ "$n" -ge $((total / 2)) ]; then
    echo "thread 'main' panicked at src/main.rs:1:1: called \`Result::unwrap()\` on an \`Err\` value"; exit 101
  fi
done
case "$mode" in
  colour_fail) echo; printf '%s: 1 %s\n' "$(c '1;31' Summary)" "$(c '1;31' failed)"; exit 1 ;;
  mismatch) summary 0 "$skip" "$((pass + 1))" 0 "$n"; exit 0 ;;
  fail_zero_exit) summary "$fail" "$skip" "$pass" 0 "$n"; exit 0 ;;
esac
summary "$fail" "$skip" "$pass" 0 "$n"
[ "$mode" = exit1_clean ] && exit 1
[ "$fail" -gt 0 ] && exit 1
exit 0
FAKE
chmod +x "$work/bin/pjdfstest"

export FAKE_CASES=$PJD_CASES FAKE_SKIPS=$work/skips FAKE_PIN_VERSION=$PJD_VERSION
failures=0
# expect MODE pass|fail WHAT
expect() {
  local mode=$1 want=$2 what=$3 rc=0
  FAKE_MODE=$mode PATH="$work/bin:$PATH" POSIX_DIR="$work/dir" bash "$here/run.sh" pjdfstest >"$work/out.$mode" 2>&1 || rc=$?
  if { [ "$want" = pass ] && [ "$rc" -eq 0 ]; } || { [ "$want" = fail ] && [ "$rc" -ne 0 ]; }; then
    echo "ok   $mode: run.sh ${want}ed ($what) — $(grep '\[posix\]' "$work/out.$mode" | tail -1)"
  else
    echo "BAD  $mode: run.sh exited $rc, expected it to $want ($what); its output:"; sed 's/^/     /' "$work/out.$mode" | tail -15
    failures=$((failures + 1))
  fi
}
expect clean pass "a complete run without failures, coloured"
expect etxtbsy_flaky pass "the known race fails once and passes its one retry"
expect exit1_clean fail "exit status 1 after a clean Summary"
expect colour_fail fail "colour codes, a failing case and a short 'Summary: 1 failed', exit 1"
expect silent fail "prints nothing, exit 0"
expect silent_exit1 fail "prints nothing, exit 1"
expect partial fail "a consistent Summary whose total does not cover the suite"
expect abort fail "a panic halfway, no Summary"
expect mismatch fail "the Summary counts no failure but a case line says FAILED"
expect fail_zero_exit fail "a failure counted in the Summary but exit status 0"
expect fail_other fail "a failing case that is not a known race (no retry)"
expect etxtbsy_always fail "the known race fails its retries too"
expect retry_matches_nothing fail "the retry runs no case"
expect retry_runs_two fail "the retry runs another case besides the one retried"
expect skip_extra fail "one more case skipped than the pinned set"
FAKE_VERSION=9.9.9 expect clean fail "another pjdfstest version than the pins are for"
if [ "$failures" -gt 0 ]; then
  echo "selftest-pjdfstest: $failures case(s) judged wrongly"; exit 1
fi
echo "selftest-pjdfstest: all 16 cases judged as expected"
