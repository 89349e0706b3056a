#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests, the real-process cluster tests and
# the etcd e2e tests Concord must pass. Installs what the tests need first (etcdctl and etcd
# from Debian, a C compiler, protoc, iproute2 and nftables; the e2e script installs Go and
# etcd's test sources). The chaos scenarios need root.
#
# Usage: scripts/test.sh            (from anywhere in the repository)
# Environment:
#   TEST_TIMEOUT     upper bound for each test phase, as for timeout(1) (default: 30m)
set -euo pipefail
cd "$(dirname "$0")/.."

# --- what the tests need -------------------------------------------------------------------
need_packages=()
command -v etcdctl >/dev/null 2>&1 || need_packages+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need_packages+=(etcd-server)
command -v cc >/dev/null 2>&1 || need_packages+=(gcc)
command -v timeout >/dev/null 2>&1 || need_packages+=(coreutils)
command -v setpriv >/dev/null 2>&1 || need_packages+=(util-linux)
# etcd-client builds its protobuf code with protoc.
command -v protoc >/dev/null 2>&1 || need_packages+=(protobuf-compiler)
# ... and the well-known types it imports (descriptor.proto), which protoc alone lacks.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_packages+=(libprotobuf-dev)
# The chaos scenarios put members in network namespaces and cut links with nftables.
command -v ip >/dev/null 2>&1 || need_packages+=(iproute2)
command -v nft >/dev/null 2>&1 || need_packages+=(nftables)
if [ ${#need_packages[@]} -gt 0 ]; then
  echo "== installing: ${need_packages[*]}"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "scripts/test.sh: need root or sudo to install ${need_packages[*]}" >&2
      exit 1
    fi
    as_root=(sudo)
  fi
  apt_get() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y "$@"; }
  # Refresh the package lists only when installing from the current ones fails.
  if ! apt_get install --no-install-recommends "${need_packages[@]}"; then
    apt_get update
    apt_get install --no-install-recommends "${need_packages[@]}"
  fi
fi

export RUN_SLOW_TESTS=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
test_timeout="${TEST_TIMEOUT:-30m}"

# Each phase prints how long it took, so a run that grows slower shows where.
phase_started=$SECONDS
phase_name=""
phase() {
  if [ -n "$phase_name" ]; then
    echo "== $phase_name: $((SECONDS - phase_started)) s"
  fi
  phase_name="$1"
  phase_started=$SECONDS
  [ -z "$1" ] || echo "== $1"
}

# --- checks --------------------------------------------------------------------------------
phase "cargo fmt"
cargo fmt --all -- --check
phase "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
phase "cargo build (tests)"
cargo test --workspace --locked --no-run
# Each phase is bounded. Without a terminal, timeout(1) signals its whole process group at the
# deadline, cluster members included; on a terminal it stays in the foreground so that Ctrl-C
# reaches the tests. Both phases run even if the first fails: one run reports every failure.
bounded=(timeout --kill-after=30s)
if [ -t 0 ]; then bounded+=(--foreground); fi
bounded+=("$test_timeout")
failed=()
phase "cargo test (unit and in-process tests)"
"${bounded[@]}" cargo test --workspace --locked --no-fail-fast --exclude concord || failed+=("unit and in-process tests")
phase "cargo test (real-process cluster tests, one at a time: each runs its own cluster)"
"${bounded[@]}" cargo test -p concord --locked --no-fail-fast -- --test-threads=1 || failed+=("cluster tests")
# etcd's own end-to-end tests that Concord passes (the list grows with every feature); the
# script installs Go and etcd's test sources from Debian and builds the suite once.
phase "etcd's e2e tests that must pass (scripts/etcd-e2e.sh --must-pass)"
CONCORD="${CARGO_TARGET_DIR:-target}/debug/concord" E2E_TEST_TIMEOUT=60 \
  "${bounded[@]}" scripts/etcd-e2e.sh --must-pass || failed+=("etcd e2e tests")
phase ""
echo "== total: $SECONDS s"
if [ ${#failed[@]} -gt 0 ]; then
  printf '== FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "== all tests passed"
