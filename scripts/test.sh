#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, runs every test (unit, integration, the
# real-process failure tests) on both fault paths, compiles the benches, and runs the RDMA suite in soft-RoCE qemu guests
# (scripts/softroce.sh). Run as root (userfaultfd needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run as root: the paged-memory tests need userfaultfd (and the setup installs packages)" >&2
  exit 1
fi
scripts/setup.sh
cargo build --workspace --all-targets
# Every test on each fault path (the pager and every runtime the tests start take theirs from
# EBB_FAULT_PATH): uffd-sigbus is the default, uffd the handler-thread path.
for path in uffd-sigbus uffd; do
  echo "== the test suite on --fault-path $path =="
  EBB_FAULT_PATH=$path cargo test --workspace --no-fail-fast
done
# The RDMA suite for real, in soft-RoCE qemu guests (EBB_SKIP_SOFTROCE=1 skips it, loudly).
scripts/softroce.sh all
