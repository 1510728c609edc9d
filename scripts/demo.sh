#!/usr/bin/env bash
# The main job: watch a C function's memory leave for the memnode and fault back, first on the
# embedded (in-process) memnode, then on a separately started `memnode` process over TCP.
# Run as root on Debian: installs what it needs, builds, runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-functions.sh
cargo build --workspace --bins
bin=target/debug
wasm=functions/build/examples/table.wasm

echo
echo "== 1. runtime run on the embedded memnode: 3 runs, all memory offloaded between runs =="
"$bin/runtime" run "$wasm" --repeat 3 --offload-every-call --stats

echo
echo "== 2. the same against a memnode process over TCP loopback =="
log=$(mktemp)
"$bin/memnode" --listen 127.0.0.1:0 --capacity 1G >"$log" 2>/dev/null &
memnode_pid=$!
trap 'kill $memnode_pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.05; done
addr=$(sed -n 's/^memnode listening on \([^ ]*\).*/\1/p' "$log")
[ -n "$addr" ] || { echo "memnode did not start" >&2; exit 1; }
echo "memnode at $addr"
"$bin/runtime" run "$wasm" --memnode "$addr" --repeat 3 --offload-every-call --stats
echo
echo "Each [offload] line is the pages that left; 'remote=' counts the faults that brought them back,"
echo "'fetched=' the pages they fetched (with read-around), and the checksum stayed the same."
