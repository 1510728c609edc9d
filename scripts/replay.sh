#!/usr/bin/env bash
# Trace replay under the four keep-alive policies side by side (see docs/platform.md):
#   scripts/replay.sh [TRACE.csv] [runtime replay options...]
# Builds the workload functions and the release binaries, then runs `runtime replay`.
# Default trace: benches/traces/synthetic-10m.csv (10 minutes). Run as root (userfaultfd).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-functions.sh >/dev/null
cargo build --release -p ebb-runtime -p ebb-memnode
trace=benches/traces/synthetic-10m.csv
if [[ $# -gt 0 && $1 != -* ]]; then
  trace=$1
  shift
fi
exec target/release/runtime replay "$trace" "$@"
