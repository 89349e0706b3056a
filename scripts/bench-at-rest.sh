#!/usr/bin/env bash
# Put throughput and latency of a 3-member Concord cluster with and without encryption at
# rest, in one run on this machine: the same binary, flags and load, the only difference
# being --encryption-key-file. Both clusters fsync every write, as always.
#
# Usage: scripts/bench-at-rest.sh [total puts, default 20000]
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-20000}"

cargo build --release --locked -q
bin="$PWD/target/release/concord"
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release/concord"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

key="$work/at-rest.key"
(umask 077 && "$bin" encryption-key > "$key")

# run <label> [extra serve flags...]: starts the cluster, loads it, stops it.
run() {
  local label="$1"
  shift
  local cluster="a=http://127.0.0.1:23801,b=http://127.0.0.1:23802,c=http://127.0.0.1:23803"
  pids=()
  for i in 1 2 3; do
    local name
    name="$(echo abc | cut -c"$i")"
    "$bin" serve --name "$name" --data-dir "$work/$label/$name" \
      --listen-client-urls "http://127.0.0.1:2370$i" --advertise-client-urls "http://127.0.0.1:2370$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --log-level warn "$@" \
      > "$work/$label-$name.log" 2>&1 &
    pids+=($!)
  done
  local endpoints="http://127.0.0.1:23701,http://127.0.0.1:23702,http://127.0.0.1:23703"
  for _ in $(seq 1 100); do
    if "$bin" bench --endpoints "$endpoints" --total 10 --clients 1 --connections 1 >/dev/null 2>&1; then
      break
    fi
    sleep 0.2
  done
  echo "== $label"
  "$bin" bench --endpoints "$endpoints" --total "$total" --workload put
  for pid in "${pids[@]}"; do kill "$pid"; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

run plain
run encrypted --encryption-key-file "$key"
