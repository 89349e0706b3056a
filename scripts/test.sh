#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the real-process cluster tests.
# Installs what the tests need first (etcdctl and etcd from Debian, a C compiler).
#
# Usage: scripts/test.sh            (from anywhere in the repository)
# Environment:
#   TEST_TIMEOUT     upper bound for each test phase, as for timeout(1) (default: 20m)
set -euo pipefail
cd "$(dirname "$0")/.."

# --- what the tests need -------------------------------------------------------------------
need_packages=()
command -v etcdctl >/dev/null 2>&1 || need_packages+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need_packages+=(etcd-server)
command -v cc >/dev/null 2>&1 || need_packages+=(gcc)
command -v timeout >/dev/null 2>&1 || need_packages+=(coreutils)
command -v setpriv >/dev/null 2>&1 || need_packages+=(util-linux)
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
test_timeout="${TEST_TIMEOUT:-20m}"

# --- checks --------------------------------------------------------------------------------
echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (tests)"
cargo test --workspace --locked --no-run
# Each phase is bounded: timeout(1) signals the whole process group, cluster members included.
echo "== cargo test (unit and in-process tests)"
timeout --kill-after=30s "$test_timeout" cargo test --workspace --locked --exclude concord
echo "== cargo test (real-process cluster tests, one at a time: each runs its own cluster)"
timeout --kill-after=30s "$test_timeout" cargo test -p concord --locked -- --test-threads=1
echo "== all tests passed"
