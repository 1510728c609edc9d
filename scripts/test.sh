#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, runs every test (unit, integration, the
# real-process failure tests), and compiles the benches. Run as root (userfaultfd needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
