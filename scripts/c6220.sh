#!/usr/bin/env bash
# Bring-up on two CloudLab c6220 nodes over the FDR InfiniBand fabric (see docs/rdma.md):
#   on the memory node:   scripts/c6220.sh memnode [DEVICE]          (listens on this node's address)
#   on the compute node:  scripts/c6220.sh check [DEVICE]            (verbs device and port state)
#                         scripts/c6220.sh bench MEMNODE_ADDR [DEVICE]  (rdma and kmod benches against it:
#                                                 builds and loads kmod/ebb.ko for this node's kernel)
#                         scripts/c6220.sh serve MEMNODE_ADDR [DEVICE]  (the platform, paging over RDMA)
# DEVICE defaults to mlx4_0 (ConnectX-3). Needs root. Cannot run on machines without RDMA hardware.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
need_device() {
  local dev=$1
  if ! command -v ibv_devices >/dev/null; then
    apt-get install -y -qq rdma-core ibverbs-utils ibverbs-providers infiniband-diags >/dev/null
  fi
  modprobe mlx4_ib 2>/dev/null || true
  modprobe ib_uverbs 2>/dev/null || true
  if ! ibv_devices | awk 'NR > 2 {print $1}' | grep -qx "$dev"; then
    echo "c6220: no RDMA device $dev here; ibv_devices says:" >&2
    ibv_devices >&2
    exit 1
  fi
  ibstat "$dev" 2>/dev/null | grep -E "State|Rate" || true
}
# Builds kmod/ebb.ko against this node's running kernel and loads it (for the kmod_* bench ids).
load_module() {
  [[ -e /dev/ebb ]] && return 0
  [[ -d /lib/modules/$(uname -r)/build ]] || apt-get install -y -qq "linux-headers-$(uname -r)" >/dev/null
  make -s -C kmod KDIR="/lib/modules/$(uname -r)/build"
  modprobe ib_core
  insmod kmod/ebb.ko
}
build() {
  scripts/setup.sh
  cargo build --release -p ebb-memnode -p ebb-runtime
}
case "$cmd" in
  check)
    need_device "${2:-mlx4_0}"
    ;;
  memnode)
    dev=${2:-mlx4_0}
    need_device "$dev"
    build
    addr=$(hostname -I | awk '{print $1}')
    echo "c6220: memnode on $addr:7070 (compute node: scripts/c6220.sh bench $addr:7070)" >&2
    exec target/release/memnode --listen "$addr:7070" --capacity "${EBB_CAPACITY:-32G}" --rdma-device "$dev"
    ;;
  bench)
    [[ -n ${2:-} ]] || { echo "usage: $0 bench MEMNODE_ADDR [DEVICE]" >&2; exit 2; }
    dev=${3:-mlx4_0}
    need_device "$dev"
    scripts/setup.sh
    load_module
    EBB_BENCH_RDMA_MEMNODE=$2 EBB_RDMA_DEVICE=$dev cargo bench --bench fault_latency -- 'rdma|kmod|anon_first_touch'
    EBB_BENCH_RDMA_MEMNODE=$2 EBB_RDMA_DEVICE=$dev cargo bench --bench restore -- rdma
    python3 scripts/bench-report.py fault/rdma_rtt_4k fault/remote_rdma_4k --ratio fault/remote_rdma_4k:fault/rdma_rtt_4k
    # Targets (issue 13): kmod_rdma_4k ≤ 5 µs and below remote_rdma_4k; kmod_dram_4k ≤ 2× anon_first_touch.
    python3 scripts/bench-report.py fault/anon_first_touch fault/kmod_dram_4k fault/kmod_rdma_4k \
      --ratio fault/kmod_rdma_4k:fault/remote_rdma_4k --ratio fault/kmod_dram_4k:fault/anon_first_touch
    python3 scripts/bench-report.py restore/rdma_stream restore/fault_back_64m_rdma --throughput 67108864 \
      --ratio restore/rdma_stream:restore/fault_back_64m_rdma
    ;;
  serve)
    [[ -n ${2:-} ]] || { echo "usage: $0 serve MEMNODE_ADDR [DEVICE]" >&2; exit 2; }
    dev=${3:-mlx4_0}
    need_device "$dev"
    build
    exec target/release/runtime serve --listen 127.0.0.1:8080 --memnode "rdma://$2" --rdma-device "$dev"
    ;;
  *)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
