#!/usr/bin/env bash
# Runs etcd 3.4's own end-to-end tests (tests/e2e of the etcd source that Debian packages)
# against Debian's etcd and against Concord, and prints, per test file, how many of the tests
# that pass on etcd pass on Concord too, then why each of the others failed on Concord.
#
# Usage: scripts/etcd-e2e.sh [--run REGEX] [--only-concord] [--must-pass]
#   --run REGEX      only the tests whose names match REGEX (as go test's -run)
#   --only-concord   run on Concord only and compare with the etcd results kept from before
#   --must-pass      run only the tests in scripts/etcd-e2e/must-pass.txt, on Concord, and
#                    exit non-zero if any of them fails
# Environment:
#   CONCORD            the concord binary (default: target/release/concord, built if missing)
#   E2E_CACHE          test binary, results and logs
#                      (default: ${XDG_CACHE_HOME:-$HOME/.cache}/concord-etcd-e2e)
#   E2E_TEST_TIMEOUT   upper bound of one test in seconds (default: 120; on etcd none takes 15)
#   E2E_SUITE_TIMEOUT  no test starts once a run has taken this many seconds (default: 10800)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
lists=$here/etcd-e2e
cache=${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/concord-etcd-e2e}
test_timeout=${E2E_TEST_TIMEOUT:-120}
suite_timeout=${E2E_SUITE_TIMEOUT:-10800}

run_regex=. only_concord=0 must_pass=0
while [ $# -gt 0 ]; do
  case $1 in
    --run) run_regex=${2:?--run needs a regular expression}; shift 2 ;;
    --run=*) run_regex=${1#--run=}; shift ;;
    --only-concord) only_concord=1; shift ;;
    --must-pass) must_pass=1; only_concord=1; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "etcd-e2e.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

# --- what the run needs ---------------------------------------------------------------------
need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
dpkg -s golang-etcd-server-dev >/dev/null 2>&1 || need+=(golang-etcd-server-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  apt_get() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y "$@"; }
  # Refresh the package lists only when installing from the current ones fails.
  if ! apt_get install --no-install-recommends "${need[@]}"; then
    apt_get update
    apt_get install --no-install-recommends "${need[@]}"
  fi
fi

# The e2e tests come with Debian's etcd source, which sits in a GOPATH together with every Go
# package it imports: it builds offline in GOPATH mode.
etcd_src=$(dpkg -L golang-etcd-server-dev | sed -n 's|/tests/e2e/main_test\.go$||p')
[ -n "$etcd_src" ] || { echo "etcd-e2e.sh: no tests/e2e in golang-etcd-server-dev" >&2; exit 1; }
e2e_src=$etcd_src/tests/e2e
fixtures=$etcd_src/integration/fixtures
mkdir -p "$cache"
e2e_bin=$cache/e2e-$(dpkg-query -W -f='${Version}' golang-etcd-server-dev).test
if [ ! -x "$e2e_bin" ]; then
  echo "== building etcd's e2e tests into $e2e_bin (once; takes minutes)"
  (cd "$e2e_src" && GO111MODULE=off GOFLAGS= GOPATH="$cache/gopath:${etcd_src%/src/*}" \
    GOCACHE="$cache/go-build" timeout 3600 nice -n 10 go test -c -o "$e2e_bin.partial" .)
  mv "$e2e_bin.partial" "$e2e_bin"
fi

concord=${CONCORD:-${CARGO_TARGET_DIR:-$repo/target}/release/concord}
if [ -z "${CONCORD:-}" ] && [ ! -x "$concord" ]; then
  echo "== building concord"
  (cd "$repo" && nice -n 10 cargo build --release -p concord)
fi
[ -x "$concord" ] || { echo "etcd-e2e.sh: no concord binary at $concord" >&2; exit 1; }
concord=$(realpath "$concord")

# The tests start whatever is called etcd and etcdctl in the directory given by -bin-dir.
mkdir -p "$cache/bin/etcd" "$cache/bin/concord"
ln -sfn "$(command -v etcd)" "$cache/bin/etcd/etcd"
ln -sfn "$(command -v etcdctl)" "$cache/bin/etcd/etcdctl"
ln -sfn "$(command -v etcdctl)" "$cache/bin/concord/etcdctl"
printf '#!/usr/bin/env bash\nexec %q serve "$@"\n' "$concord" >"$cache/bin/concord/etcd"
chmod +x "$cache/bin/concord/etcd"

# A test killed at its time bound leaves servers that would hold the ports the next test
# uses. Where a PID namespace can be made, everything a test started dies with it.
isolate=()
if unshare --pid --fork --kill-child true >/dev/null 2>&1; then
  isolate=(unshare --pid --fork --kill-child)
else
  echo "== note: no PID namespace here; a test killed at its time bound may leave servers behind"
fi

# --- which tests -----------------------------------------------------------------------------
names_in() { [ -f "$1" ] && awk '!/^[[:space:]]*(#|$)/ { print $1 }' "$1"; return 0; }
declare -A excluded=()
for t in $(names_in "$lists/exclusions.txt"); do excluded[$t]=1; done
# The tests open some files by paths relative to their own directory in etcd's source
# (../../integration/fixtures, ../../etcd.conf.yml.sample): they run in a copy of that layout,
# laid anew before each test so that nothing a test leaves there reaches the next.
workdir=$cache/work/tests/e2e
new_workdir() {
  rm -rf "$cache/work" && mkdir -p "$workdir"
  ln -s "$etcd_src/integration" "$cache/work/integration"
  ln -s "$lists/etcd.conf.yml" "$cache/work/etcd.conf.yml.sample"
}
new_workdir
selected=()
if [ "$must_pass" -eq 1 ]; then
  for t in $(names_in "$lists/must-pass.txt"); do [[ $t =~ $run_regex ]] && selected+=("$t"); done
else
  for t in $(cd "$workdir" && "$e2e_bin" -test.list "$run_regex" | grep '^Test'); do
    [ -n "${excluded[$t]:-}" ] || selected+=("$t")
  done
fi
[ ${#selected[@]} -gt 0 ] || { echo "etcd-e2e.sh: no test matches $run_regex" >&2; exit 1; }

# run_tests SIDE BINDIR: runs each selected test in a process of its own (so that one test's
# hang cannot take the others with it) and records "name verdict seconds" in SIDE.verdicts,
# replacing what an earlier run recorded for the same tests.
run_tests() {
  local side=$1 bindir=$2 t verdict t0 started=$SECONDS
  local logs=$cache/logs/$side fresh=$cache/$side.verdicts.new
  mkdir -p "$logs"
  : >"$fresh"
  echo "== $side: ${#selected[@]} tests, at most ${test_timeout}s each"
  for t in "${selected[@]}"; do
    if ((SECONDS - started > suite_timeout)); then
      printf '%s NOTRUN 0\n' "$t" >>"$fresh"
      continue
    fi
    t0=$SECONDS
    rm -rf "$cache/tmp" && mkdir -p "$cache/tmp" && new_workdir
    # --foreground keeps the test in this script's process group: stopping the script stops it.
    # With EXPECT_DEBUG the tests copy each server's and etcdctl's output into their own, as
    # "<path>-<pid>: line": what Concord and etcdctl said is then in the test's log.
    (cd "$workdir" && TMPDIR=$cache/tmp EXPECT_DEBUG=1 \
      timeout --foreground -k 10 $((test_timeout + 30)) "${isolate[@]}" "$e2e_bin" -test.run "^$t\$" \
      -test.v -test.timeout "${test_timeout}s" -bin-dir "$bindir" -cert-dir "$fixtures") \
      >"$logs/$t.log" 2>&1 || true
    # Not anchored: the last output of a server or of curl may lack its newline.
    if grep -qa -- "--- PASS: $t (" "$logs/$t.log"; then verdict=PASS
    elif grep -qa -- "--- SKIP: $t (" "$logs/$t.log"; then verdict=SKIP
    else verdict=FAIL; fi
    printf '%s %s %s\n' "$t" "$verdict" $((SECONDS - t0)) | tee -a "$fresh"
  done
  rm -rf "$cache/tmp"
  touch "$cache/$side.verdicts"
  awk 'NR == FNR { fresh[$1] = 1; print; next } !($1 in fresh)' \
    "$fresh" "$cache/$side.verdicts" | sort >"$fresh.merged"
  mv "$fresh.merged" "$cache/$side.verdicts" && rm -f "$fresh"
  echo "== $side: ran in $((SECONDS - started))s"
}

# first_failure TEST: two lines on why TEST failed on Concord. First what the test reported
# first (a t.Fatal or t.Error line, else a panic), skipping what it also logs when it passes
# on etcd (t.Log lines); then the first error that Concord or etcdctl printed and that the
# run on etcd did not print (some tests expect errors).
first_failure() {
  local passing=$cache/logs/etcd/$1.log
  [ -f "$passing" ] || passing=/dev/null
  awk -v bins="$cache/bin/" -v passing="$passing" '
    { gsub(/\033\[[0-9;]*m/, "") }
    index($0, bins) == 1 {
      s = $0; sub(/^[^ ]*: /, "", s)
      if (s !~ /^(concord: )?[Ee]rror: | ERROR /) next
      if (FILENAME == passing) expected[s] = 1
      else if (said == "" && !(s in expected)) said = s
      next }
    match($0, /^[ \t]+[A-Za-z0-9_]+\.go:[0-9]+: /) {
      where = substr($0, 1, RLENGTH); gsub(/[ \t]/, "", where)
      if (FILENAME == passing) logged[where] = 1
      else if (!(where in logged) && line == "") { line = $0; sub(/^[ \t]+/, "", line) }
      next }
    FILENAME != passing && /^panic: / && panic == "" { panic = $0 }
    END { if (line == "") line = (panic != "" ? panic : "no verdict: killed at its time bound?")
          print substr(line, 1, 200); print substr(said, 1, 200) }' "$passing" "$cache/logs/concord/$1.log"
}

declare -A etcd_v=() concord_v=()
load() { # load SIDE ARRAY
  local -n into=$2
  local name verdict rest
  while read -r name verdict rest; do into[$name]=$verdict; done <"$cache/$1.verdicts"
}

# --- must-pass: what CI runs -----------------------------------------------------------------
if [ "$must_pass" -eq 1 ]; then
  run_tests concord "$cache/bin/concord"
  load concord concord_v
  passed=0 failed=0
  for t in "${selected[@]}"; do
    if [ "${concord_v[$t]:-}" = PASS ]; then passed=$((passed + 1)); else
      failed=$((failed + 1))
      { read -r reported; read -r said; } < <(first_failure "$t")
      printf 'FAIL %s: %s\n' "$t" "$reported"
      [ -z "$said" ] || printf '    said: %s\n' "$said"
    fi
  done
  echo "etcd-e2e: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
fi

# --- the comparison --------------------------------------------------------------------------
if [ "$only_concord" -eq 0 ]; then
  run_tests etcd "$cache/bin/etcd"
elif [ ! -s "$cache/etcd.verdicts" ]; then
  echo "etcd-e2e.sh: --only-concord needs an earlier run on etcd in $cache" >&2
  exit 1
fi
load etcd etcd_v
# Only the tests that pass on etcd say anything about Concord.
on_etcd=()
for t in "${selected[@]}"; do [ "${etcd_v[$t]:-}" = PASS ] && on_etcd+=("$t"); done
[ ${#on_etcd[@]} -gt 0 ] || { echo "etcd-e2e.sh: none of the selected tests passed on etcd" >&2; exit 1; }
selected=("${on_etcd[@]}")
run_tests concord "$cache/bin/concord"
load concord concord_v

declare -A file_of=() good=() all=()
while IFS=: read -r file name; do file_of[$name]=$file; done < <(
  grep -o '^func Test[A-Za-z0-9_]*' "$e2e_src"/*_test.go | sed 's|.*/||; s|:func |:|')
failures=()
for t in "${selected[@]}"; do
  f=${file_of[$t]:-?}
  all[$f]=$((${all[$f]:-0} + 1))
  if [ "${concord_v[$t]:-}" = PASS ]; then good[$f]=$((${good[$f]:-0} + 1)); else failures+=("$t"); fi
done

echo
printf '%-32s %s\n' "test file" "passed on Concord / passed on etcd"
total_good=0 total=0
for f in $(printf '%s\n' "${!all[@]}" | sort); do
  printf '%-32s %4d / %d\n' "$f" "${good[$f]:-0}" "${all[$f]}"
  total_good=$((total_good + ${good[$f]:-0})) total=$((total + ${all[$f]}))
done
printf '%-32s %4d / %d\n' "all" "$total_good" "$total"
echo "(${#excluded[@]} tests are excluded: $lists/exclusions.txt)"
if [ ${#failures[@]} -gt 0 ]; then
  echo
  echo "passed on etcd, failed on Concord (logs: $cache/logs/concord/):"
  said_all=()
  for t in "${failures[@]}"; do
    { read -r reported; read -r said; } < <(first_failure "$t")
    printf '  %s\n      %s\n' "$t" "$reported"
    [ -z "$said" ] || { printf '      said: %s\n' "$said"; said_all+=("$said"); }
  done
  # One refusal often blocks many tests: the most frequent first, without timestamps, ids
  # and the values of flags.
  echo
  echo "errors printed by Concord or etcdctl, by how many failed tests printed them first:"
  [ ${#said_all[@]} -eq 0 ] || printf '%s\n' "${said_all[@]}" |
    sed -E 's/^[0-9TZ:.-]+ +//; s/=[^ ]+/=.../g; s/[0-9a-f]{16}/<id>/g' | cut -c1-150 | sort | uniq -c | sort -rn
fi
