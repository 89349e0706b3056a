#!/usr/bin/env bash
# Runs the whole test suite, installing what the tests need first.
# Usage: scripts/test.sh          (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v etcdctl >/dev/null 2>&1 || need_packages+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need_packages+=(etcd-server)
command -v gcc >/dev/null 2>&1 || need_packages+=(gcc)
if [ ${#need_packages[@]} -gt 0 ]; then
  echo "installing: ${need_packages[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_packages[@]}"
fi

export RUN_SLOW_TESTS="${RUN_SLOW_TESTS:-1}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (unit and in-process tests)"
cargo test --workspace --locked --exclude concord
echo "== cargo test (real-process cluster tests, one at a time: each runs its own cluster)"
cargo test -p concord --locked -- --test-threads=1
