#!/usr/bin/env bash
# The RDMA suite, for real, on a machine without RDMA hardware: a stock Debian kernel booted under
# qemu (TCG) loads rdma_rxe, creates a soft-RoCE device and runs inside the guest
#   1. the rdma transport's own tests (ebb-memnode's unit tests, ignored elsewhere for want of a device),
#      including the isolation test (guessed and stale keys) and a ticket holder's access (tickets);
#   2. a `memnode --rdma-device rxe0` and `runtime run` of tests/modules/pattern.wat over rdma://,
#      its 64 MiB offloaded and faulted back three times, verified byte for byte by the module;
#   0. in a guest of its own, Ebb's kernel module: kmod/ebb.ko is built here against the guest
#      kernel's own Debian headers (warnings are errors), insmod'ed in the guest, its device tests
#      run (ebb-runtime's `tests::kmod_`, ignored elsewhere), then the pager's, isolation, platform
#      near-data and keep-alive tests (tests/paged_memory.rs, call_isolation.rs, platform.rs, ndp.rs,
#      keep_alive.rs) and `runtime run`
#      on --fault-path kmod — on the module's DRAM backend, then on its RDMA backend against
#      memnode processes on rxe0 — rmmod'ed; the kernel log must show
#      no BUG/Oops/WARNING/refcount/leak and the module no page held at unload;
#   3. with `two`, after the user-space run across the link, the module in the runtime's guest
#      against the memnode in the other: `runtime run`, the pager's, isolation and platform tests
#      on --fault-path kmod, then the same unload and kernel-log checks.
#
#   scripts/softroce.sh [single|two|kmod|all|bench]
#       single: one guest (default); kmod: the kernel module's guest; two: memnode and runtime in two guests linked by two taps on a
#       bridge in a network namespace of the run's own (deep queues: see below); all: all three; bench: the
#       rdma criterion benches (release build) in one guest, printed as `guest: EBB-BENCH ...` lines
#       (soft-RoCE under TCG: correctness only, not speed)
#   EBB_SKIP_SOFTROCE=1                     skip (printed loudly; RDMA then is NOT tested)
#   EBB_SOFTROCE_CACHE=DIR                  where downloads and unpacked pieces are kept between runs
#   EBB_SOFTROCE_MEMNODE_TIMEOUT_MS=N       the guest runtime's memnode timeout (15000: both ends emulated)
#   EBB_SOFTROCE_ICOUNT=1                   the guests' clocks count instructions (bench: deterministic
#                                           instruction counts instead of noisy TCG wall-clock times)
#
# Fetches the kernel and qemu with `apt-get download` (nothing is installed from them); needs the
# packages scripts/setup.sh installs. Results come back over the serial console as lines
# `EBB-RESULT PASS|FAIL NAME`; the run fails on any FAIL, on a missing result, or on a timeout.
# How it works and what it needs: docs/rdma.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-single}
banner() { printf '\n%s\n## %s\n%s\n\n' "$(printf '#%.0s' {1..78})" "$1" "$(printf '#%.0s' {1..78})" >&2; }
if [[ "${EBB_SKIP_SOFTROCE:-}" == 1 ]]; then
  banner "SKIPPED: the soft-RoCE RDMA suite (EBB_SKIP_SOFTROCE=1). RDMA was NOT tested."
  exit 0
fi
case "$mode" in single | two | kmod | all | bench) ;; *) echo "usage: $0 [single|two|kmod|all|bench]" >&2; exit 2 ;; esac

cache=${EBB_SOFTROCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebb/softroce}
mkdir -p "$cache/debs"
work=$(mktemp -d /tmp/ebb-softroce.XXXXXX)
# EBB_SOFTROCE_KEEP=1 keeps the initramfs and the serial logs.
[[ "${EBB_SOFTROCE_KEEP:-}" == 1 ]] && echo "softroce: keeping $work" >&2 || trap 'rm -rf "$work"' EXIT

# --- kernel and qemu, downloaded once ---------------------------------------------------------
# (`|| true`: on a machine whose package lists were never fetched apt-cache fails, and pipefail
# would end the script here instead of fetching them below.)
kpkg=$(apt-cache depends linux-image-6.12-amd64 2>/dev/null | awk '/Depends: linux-image-6/ {print $2; exit}' || true)
if [[ -z "$kpkg" ]]; then
  apt-get update -qq
  kpkg=$(apt-cache depends linux-image-6.12-amd64 | awk '/Depends: linux-image-6/ {print $2; exit}')
fi
qemu_pkgs=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu libslirp0 libcapstone4 libfdt1 libpmem1
  libvdeplug2 libndctl6 libdaxctl1)
for p in "$kpkg" "${qemu_pkgs[@]}"; do
  if ! compgen -G "$cache/debs/${p}_*.deb" >/dev/null; then
    (cd "$cache/debs" && apt-get download -qq "$p" 2>/dev/null) || { apt-get update -qq && (cd "$cache/debs" && apt-get download -qq "$p"); }
  fi
done
qemu_dir=$cache/qemu
if [[ ! -x $qemu_dir/usr/bin/qemu-system-x86_64 ]]; then
  rm -rf "$qemu_dir" && mkdir -p "$qemu_dir"
  for p in "${qemu_pkgs[@]}"; do dpkg-deb -x "$(compgen -G "$cache/debs/${p}_*.deb" | head -1)" "$qemu_dir"; done
fi
kver=${kpkg#linux-image-}
kdir=$cache/kernel-$kver
if [[ ! -f $kdir/lib/modules/$kver/modules.dep ]]; then
  rm -rf "$kdir" && mkdir -p "$kdir"
  dpkg-deb --fsys-tarfile "$(compgen -G "$cache/debs/${kpkg}_*.deb" | head -1)" | tar -x -C "$kdir" --wildcards \
    './boot/vmlinuz-*' "./lib/modules/$kver/modules.*" "./lib/modules/$kver/kernel/drivers/infiniband/*" \
    "./lib/modules/$kver/kernel/drivers/net/*" "./lib/modules/$kver/kernel/drivers/virtio/*" \
    "./lib/modules/$kver/kernel/net/*" "./lib/modules/$kver/kernel/lib/*" "./lib/modules/$kver/kernel/fs/configfs/*" \
    "./lib/modules/$kver/kernel/crypto/*"
  depmod -b "$kdir" "$kver"
fi
# The guest kernel's headers (downloaded, unpacked, never installed: installing them would pull a
# kernel image), to build kmod/ebb.ko for it. Their Makefile names its common half by absolute path.
kbase=${kver%-amd64}
hdir=$cache/headers-$kver
if [[ ! -f $hdir/usr/src/linux-headers-$kver/Makefile ]]; then
  for p in "linux-headers-$kver" "linux-headers-$kbase-common" "linux-kbuild-$kbase"; do
    if ! compgen -G "$cache/debs/${p}_*.deb" >/dev/null; then
      (cd "$cache/debs" && apt-get download -qq "$p" 2>/dev/null) || { apt-get update -qq && (cd "$cache/debs" && apt-get download -qq "$p"); }
    fi
  done
  rm -rf "$hdir" && mkdir -p "$hdir"
  for p in "linux-headers-$kver" "linux-headers-$kbase-common" "linux-kbuild-$kbase"; do
    dpkg-deb -x "$(compgen -G "$cache/debs/${p}_*.deb" | head -1)" "$hdir"
  done
  sed -i "s|^include /usr/src/|include $hdir/usr/src/|" "$hdir/usr/src/linux-headers-$kver/Makefile"
fi
# Warnings are errors (kmod/Kbuild); no BTF for the module (pahole is not needed for it to load).
mkdir -p "$work/kmod"
cp -r kmod/. "$work/kmod/"
if ! make -s -C "$hdir/usr/src/linux-headers-$kver" M="$work/kmod" CONFIG_DEBUG_INFO_BTF_MODULES= modules >"$work/kmod.log" 2>&1; then
  echo "softroce: kmod/ebb.ko does not build against $kver:" >&2
  cat "$work/kmod.log" >&2
  exit 1
fi
qemu=(env "LD_LIBRARY_PATH=$qemu_dir/usr/lib/x86_64-linux-gnu" "$qemu_dir/usr/bin/qemu-system-x86_64"
  -L "$qemu_dir/usr/share/qemu" -L "$qemu_dir/usr/share/seabios" -L "$qemu_dir/usr/lib/ipxe/qemu")
if missing=$(LD_LIBRARY_PATH=$qemu_dir/usr/lib/x86_64-linux-gnu ldd "$qemu_dir/usr/bin/qemu-system-x86_64" | grep 'not found'); then
  echo "softroce: qemu lacks libraries: $missing" >&2
  exit 1
fi

# --- what runs in the guest --------------------------------------------------------------------
# The whole workspace, as scripts/test.sh builds it: selecting packages (-p) unifies features over a
# smaller set, and wasmtime was built a second time for it.
cargo build -q --workspace --all-targets
unit=$(cargo test -q --workspace --lib --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*ebb_memnode-[^"]*"' | head -1 | cut -d'"' -f4)
[[ -x "$unit" ]] || { echo "softroce: cannot find the ebb-memnode test binary" >&2; exit 1; }
runtime_unit=$(cargo test -q --workspace --lib --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*ebb_runtime-[^"]*"' | head -1 | cut -d'"' -f4)
[[ -x "$runtime_unit" ]] || { echo "softroce: cannot find the ebb-runtime test binary" >&2; exit 1; }

# An integration test's executable (tests/NAME.rs).
test_exe() {
  cargo test -q --workspace --test "$1" --no-run --message-format=json 2>/dev/null |
    grep -o "\"executable\":\"[^\"]*/$1-[^\"]*\"" | head -1 | cut -d'"' -f4
}

rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,dev,proc,sys,tmp,etc/libibverbs.d,lib/modules,lib64,usr/lib/x86_64-linux-gnu/libibverbs}
cp /bin/busybox "$rootfs/bin/busybox"
for f in target/debug/memnode target/debug/runtime "$(command -v rdma)"; do strip -o "$rootfs/bin/$(basename "$f")" "$f"; done
strip -o "$rootfs/bin/memnode-tests" "$unit"
strip -o "$rootfs/bin/runtime-tests" "$runtime_unit"
# Beside memnode in /bin: the tests start it from their own directory (tests/support).
for t in paged_memory call_isolation platform ndp keep_alive; do
  exe=$(test_exe "$t")
  [[ -x "$exe" ]] || { echo "softroce: cannot find the $t test binary" >&2; exit 1; }
  strip -o "$rootfs/bin/$t-tests" "$exe"
done
cp "$work/kmod/ebb.ko" "$rootfs/ebb.ko"
if [[ $mode == bench ]]; then
  for b in fault_latency restore; do
    exe=$(cargo bench -q --bench "$b" --no-run --message-format=json 2>/dev/null |
      grep -o "\"executable\":\"[^\"]*/$b-[^\"]*\"" | head -1 | cut -d'"' -f4)
    [[ -x "$exe" ]] || { echo "softroce: cannot build the $b bench" >&2; exit 1; }
    strip -o "$rootfs/bin/bench-$b" "$exe"
  done
fi
cp tests/modules/pattern.wat "$rootfs/pattern.wat"
# The demo functions, built here (the guest has no compiler), for the platform tests on kmod.
scripts/build-functions.sh >/dev/null
cp -r functions/build "$rootfs/functions"
cp /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so "$rootfs/usr/lib/x86_64-linux-gnu/libibverbs/"
cp /etc/libibverbs.d/rxe.driver "$rootfs/etc/libibverbs.d/"
for bin in "$rootfs"/bin/{memnode,runtime,rdma,memnode-tests,runtime-tests} "$rootfs"/bin/*-tests "$rootfs"/bin/bench-* "$rootfs"/usr/lib/x86_64-linux-gnu/libibverbs/*.so; do
  [[ -e $bin ]] || continue
  ldd "$bin" | awk '/=> \// {print $3} /^\t\/lib64/ {print $1}'
done | sort -u | while read -r lib; do cp -L "$lib" "$rootfs$lib" 2>/dev/null || { mkdir -p "$rootfs$(dirname "$lib")" && cp -L "$lib" "$rootfs$lib"; }; done
# Kernel modules in load order (xz-decompressed: busybox insmod takes plain .ko).
: >"$rootfs/modules.order"
# crc32_generic: rdma_rxe asks the crypto API for "crc32" by name (no module dependency says so).
for m in virtio_pci virtio_net e1000 crc32_generic rdma_rxe ib_uverbs rdma_ucm; do
  modprobe -d "$kdir" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  name=$(basename "$ko" .xz)
  xz -dc "$ko" >"$rootfs/lib/modules/$name" 2>/dev/null || cp "$ko" "$rootfs/lib/modules/$name"
  echo "$name" >>"$rootfs/modules.order"
done
cat >"$rootfs/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin RUST_BACKTRACE=0 HOME=/tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null || echo "EBB-LOG insmod $m failed"; done
role=$(sed -n 's/.*ebb.role=\([a-z]*\).*/\1/p' /proc/cmdline)
timeout_ms=$(sed -n 's/.*ebb.timeout_ms=\([0-9]*\).*/\1/p' /proc/cmdline)
repeat=$(sed -n 's/.*ebb.repeat=\([0-9]*\).*/\1/p' /proc/cmdline)
addr=$(sed -n 's/.*ebb.addr=\([0-9.]*\).*/\1/p' /proc/cmdline)
peer=$(sed -n 's/.*ebb.peer=\([0-9.]*\).*/\1/p' /proc/cmdline)
ip link set lo up
ip link set eth0 up && ip addr add "$addr/24" dev eth0
rdma link add rxe0 type rxe netdev eth0 || echo "EBB-LOG rdma link add failed"
echo "EBB-LOG devices: $(ls /sys/class/infiniband 2>&1) | $(ls /dev/infiniband 2>&1) | $(rdma link 2>&1) | mtu $(cat /sys/class/net/eth0/mtu)"
export EBB_RDMA_DEVICE=rxe0
# The soft-RoCE device's and the link's counters (packets, retransmissions, drops), for a failed run.
counters() {
  for f in /sys/class/infiniband/rxe0/ports/1/hw_counters/*; do printf '%s=%s ' "$(basename "$f")" "$(cat "$f")"; done | sed "s/^/EBB-LOG $1 rxe: /"; echo
  for f in /sys/class/net/eth0/statistics/*; do printf '%s=%s ' "$(basename "$f")" "$(cat "$f")"; done | sed "s/^/EBB-LOG $1 eth0: /"; echo
}
# A failed result prints its log and the counters now — after those at its start, if it noted them
# (the counters count from boot: what the failed part did is the difference).
result() {
  if [ "$2" = 0 ]; then echo "EBB-RESULT PASS $1"; else
    echo "EBB-RESULT FAIL $1"
    sed 's/^/EBB-LOG /' "/tmp/$1.log"
    [ -f "/tmp/$1.counters" ] && cat "/tmp/$1.counters"
    counters "$1"
  fi
}
# A test executable's run as one result: NAME, then the command (environment assignments first).
# Some test must have run and none failed (a filter that matches nothing is a failure).
suite() {
  name=$1
  shift
  counters "$name (at its start)" >"/tmp/$name.counters"
  t0=$(date +%s)
  env "$@" >"/tmp/$name.log" 2>&1
  rc=$?
  grep -q "test result: ok. [1-9]" "/tmp/$name.log" || rc=1
  echo "EBB-LOG $name: $(grep 'test result' "/tmp/$name.log" | tr '\n' ' ')(the suite took $(($(date +%s) - t0)) s)"
  result "$name" $rc
}
wait_port() { i=0; while ! (echo -n | nc -w 1 "$1" 7070) 2>/dev/null && [ $i -lt 300 ]; do sleep 0.5; i=$((i + 1)); done; }
# runtime_over_rdma ADDR NAME [runtime run options]: the pattern module's memory offloaded to the
# memnode at ADDR and faulted back by RDMA, $repeat times.
runtime_over_rdma() {
  addr_=$1
  name=$2
  shift 2
  # Both ends are emulated (TCG) and share the host's cores with each other and with whatever
  # else runs: a 64 KiB READ that a real device serves in microseconds took over a second here
  # while another core was busy. The bound on a silent memnode (1 s by default, tested on the
  # host) is set for that here, not for hardware.
  runtime run /pattern.wat --memnode "rdma://$addr_:7070" --memnode-timeout-ms "$timeout_ms" --repeat "$repeat" --offload-every-call --stats "$@" >"/tmp/$name.log" 2>&1
  rc=$?
  # The module verifies every byte it wrote on every run after the first (exit code); the stats say
  # pages went by RDMA.
  [ $rc = 0 ] && grep -q "pages sent to the rdma memnode" "/tmp/$name.log" || rc=1
  grep -E "fault|sent|fetched" "/tmp/$name.log" | head -n 8 | sed "s/^/EBB-LOG $name: /"
  result "$name" $rc
}
# kmod_load PREFIX / kmod_unload PREFIX: ebb.ko in and out; after it is out, the kernel log must
# be clean and the module must have held no page at unload.
kmod_load() {
  dmesg -c >/dev/null
  insmod /ebb.ko >"/tmp/$1_load.log" 2>&1
  rc=$?
  result "$1_load" $rc
  return $rc
}
kmod_unload() {
  rmmod ebb >"/tmp/$1_unload.log" 2>&1
  result "$1_unload" $?
  dmesg >"/tmp/$1_kernel_log.log"
  ! grep -E -q "BUG|Oops|WARNING|refcount|leak|Bad page|general protection" "/tmp/$1_kernel_log.log" &&
    grep -q "ebb: unloaded, no pages held" "/tmp/$1_kernel_log.log"
  result "$1_kernel_log" $?
}
# Ebb's kernel module: loaded, its device tests run (behaviour, misuse, concurrent faults, a killed
# process), unloaded; the kernel log must stay clean and the module must hold no page at unload.
kmod_suite() {
  kmod_load kmod || return
  runtime-tests --include-ignored --test-threads=1 tests::kmod_ >/tmp/kmod_tests.log 2>&1
  rc=$?
  # All of them ran (none filtered out by a rename): thirteen device tests, four of them on the RDMA
  # backend against an in-process memnode on rxe0.
  [ $rc = 0 ] && grep -q "test result: ok. 13 passed" /tmp/kmod_tests.log || rc=1
  result kmod_tests $rc
  # The pager's own tests on the kernel fault path, unchanged. Skipped by name (and so reported):
  # those whose faults must reach the memnode or a test transport (a killed or silent memnode, a
  # late read-around, a crashing fetch) — with the DRAM backend the module fills every fault from
  # its own store — and lending, not built on this path yet.
  # Every suite's clients and runtimes take the guests' bound on one memnode operation (tests/
  # support: EBB_TEST_MEMNODE_TIMEOUT_MS): under TCG a busy host made TCP writes outlast the 1 s
  # default. The tests of that bound (a killed memnode) set the default themselves.
  export EBB_TEST_MEMNODE_TIMEOUT_MS="$timeout_ms"
  for t in paged_memory call_isolation; do
    suite "kmod_$t" EBB_FAULT_PATH=kmod "$t-tests" --test-threads=1 --skip killed_memnode --skip silent_memnode --skip a_poisoned_memory \
      --skip a_late_readaround --skip readaround_is_bounded --skip a_crashing_fault_handler
  done
  # The same suites on the module's RDMA backend: every memnode a test starts serves RDMA on rxe0
  # and is reached by rdma:// (tests/support: EBB_TEST_RDMA_DEVICE), so each memory's store is a
  # memnode region that the module reads with its own queue pair. Only the tests that page to a
  # memnode process (the others ran above), including a killed memnode (the module's failed READ,
  # a SIGBUS, must become the call's error within the bound) and lending; not a stopped one (its
  # device still answers one-sided READs: nothing fails, by design).
  suite kmod_rdma_paged_memory EBB_FAULT_PATH=kmod EBB_TEST_RDMA_DEVICE=rxe0 paged_memory-tests --test-threads=1 \
    from_a_memnode_process instances_dropped_while_others_fault killed_memnode a_memory_lent
  suite kmod_rdma_call_isolation EBB_FAULT_PATH=kmod EBB_TEST_RDMA_DEVICE=rxe0 call_isolation-tests --test-threads=1 from_a_memnode_process
  # A real function on --fault-path kmod: its 64 MiB offloaded and faulted back three times,
  # verified byte for byte by the module itself.
  runtime run /pattern.wat --fault-path kmod --repeat 3 --offload-every-call --stats >/tmp/kmod_runtime_run.log 2>&1
  rc=$?
  [ $rc = 0 ] && grep -q "pages sent to the local memnode" /tmp/kmod_runtime_run.log || rc=1
  result kmod_runtime_run $rc
  # The same on the RDMA backend, against a memnode process on rxe0: each memory's store is a
  # region there, which the module reads with its own queue pair (it keeps no copy: every byte the
  # function verifies came over RDMA).
  memnode --listen "$addr:7070" --capacity 1G --rdma-device rxe0 >/tmp/memnode.log 2>&1 &
  mpid=$!
  wait_port "$addr"
  runtime_over_rdma "$addr" kmod_rdma_runtime_run --fault-path kmod
  # The memnode killed under a running function: the run must end by itself with an error (the
  # module's transfers fail within the memnode timeout, its SIGBUS poisons the memory and fails the
  # call; the process does not die of it), never hang; the kernel log check below
  # sees whatever the module did about it, and the unload that no page was left behind.
  runtime run /pattern.wat --fault-path kmod --memnode "rdma://$addr:7070" --memnode-timeout-ms 3000 --repeat 1000 \
    --offload-every-call >/tmp/kmod_rdma_killed_memnode.log 2>&1 &
  rpid=$!
  sleep 20
  alive=0
  kill -0 $rpid 2>/dev/null && alive=1
  kill -9 $mpid
  i=0
  while kill -0 $rpid 2>/dev/null && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
  if [ $alive = 0 ]; then
    echo "EBB-LOG kmod_rdma_killed_memnode: the run ended before the memnode was killed" >>/tmp/kmod_rdma_killed_memnode.log
    rc=1
  elif kill -0 $rpid 2>/dev/null; then
    echo "EBB-LOG kmod_rdma_killed_memnode: the run did not end within 120 s of the memnode's death" >>/tmp/kmod_rdma_killed_memnode.log
    kill -9 $rpid
    rc=1
  else
    wait $rpid
    rc=$?
    echo "EBB-LOG kmod_rdma_killed_memnode: exit $rc after $((i / 2)) s: $(tail -n 2 /tmp/kmod_rdma_killed_memnode.log | tr '\n' ' ')"
    # An error exit, not a death by signal: a fill the module could not make is the call's error.
    [ $rc != 0 ] && [ $rc -lt 128 ] && rc=0 || rc=1
  fi
  wait $mpid 2>/dev/null
  result kmod_rdma_killed_memnode $rc
  # The platform's tests over HTTP, with real runtime processes on --fault-path kmod. Skipped by
  # name: a dead memnode failing calls — with the DRAM backend each memory's initial state stays
  # in the module's store, and no fault reaches the memnode.
  suite kmod_platform EBB_FUNCTIONS_DIR=/functions EBB_FAULT_PATH=kmod platform-tests --test-threads=1 --skip a_dead_memnode_fails_calls
  # Semi-warm keep-alive: its figures (a warm instance's resident bytes, what drains, what comes
  # back) hold because instances share their function's image, here the module's image region.
  suite kmod_keep_alive EBB_FUNCTIONS_DIR=/functions EBB_FAULT_PATH=kmod keep_alive-tests --test-threads=1
  # Near-data offload (a memnode, a storage node and a compute node, the caller's memory lent to
  # the storage node's instance) on the DRAM backend, then on the RDMA backend. Not the test of a
  # storage node that stops or dies: its first, healthy call has 4 s, which include compiling the
  # function on the storage node — seconds under TCG; what it tests is the compute node's HTTP
  # bound, the same on every fault path (the host runs it on both uffd paths).
  ndp_skip="--skip a_storage_node_that_stops_or_dies_mid_offload"
  suite kmod_ndp EBB_FUNCTIONS_DIR=/functions EBB_FAULT_PATH=kmod ndp-tests --test-threads=1 $ndp_skip
  # Again on the RDMA backend: each runtime the tests start pages to a memnode process of its own
  # on rxe0 (and the dead-memnode test's memnode is one: its death must fail the calls with 503,
  # within the default bound).
  suite kmod_rdma_platform EBB_FUNCTIONS_DIR=/functions EBB_FAULT_PATH=kmod EBB_TEST_RDMA_DEVICE=rxe0 platform-tests --test-threads=1
  suite kmod_rdma_keep_alive EBB_FUNCTIONS_DIR=/functions EBB_FAULT_PATH=kmod EBB_TEST_RDMA_DEVICE=rxe0 keep_alive-tests --test-threads=1
  suite kmod_rdma_ndp EBB_FUNCTIONS_DIR=/functions EBB_FAULT_PATH=kmod EBB_TEST_RDMA_DEVICE=rxe0 ndp-tests --test-threads=1 $ndp_skip
  # The runtime's own unit tests (the platform, workflows, the executor) on --fault-path kmod.
  suite kmod_runtime_unit EBB_FAULT_PATH=kmod runtime-tests --skip tests::kmod_ --skip uapi_matches_the_header
  kmod_unload kmod
}
# The module in this guest against the memnode in the other (the two-guest run): a function's
# memory faulted back by the module's own READs across the link, then the platform's tests with
# every runtime paging to that memnode (not the dead-memnode test: that memnode is shared).
kmod_remote_suite() {
  kmod_load two_guest_kmod || return
  runtime_over_rdma "$1" two_guest_kmod_runtime_run --fault-path kmod
  # The pager's and isolation tests that page to a memnode process, each memnode they would start
  # being the other guest's (tests/support: EBB_TEST_MEMNODE; not a killed or stopped memnode:
  # that one is shared), so every page the module reads crosses the link.
  suite two_guest_kmod_paged_memory EBB_FAULT_PATH=kmod EBB_TEST_MEMNODE="rdma://$1:7070" EBB_TEST_MEMNODE_TIMEOUT_MS="$timeout_ms" \
    paged_memory-tests --test-threads=1 from_a_memnode_process instances_dropped_while_others_fault a_memory_lent
  suite two_guest_kmod_call_isolation EBB_FAULT_PATH=kmod EBB_TEST_MEMNODE="rdma://$1:7070" EBB_TEST_MEMNODE_TIMEOUT_MS="$timeout_ms" \
    call_isolation-tests --test-threads=1 from_a_memnode_process
  suite two_guest_kmod_platform EBB_FUNCTIONS_DIR=/functions EBB_FAULT_PATH=kmod EBB_TEST_MEMNODE="rdma://$1:7070" \
    EBB_TEST_MEMNODE_TIMEOUT_MS="$timeout_ms" platform-tests --test-threads=1 --skip a_dead_memnode_fails_calls
  kmod_unload two_guest_kmod
}
echo "EBB-GUEST-UP role=$role"
case "$role" in
  kmod)
    kmod_suite
    ;;
  single)
    memnode-tests --include-ignored --test-threads=1 rdma >/tmp/transport_tests.log 2>&1; result transport_tests $?
    grep -q "guessed_and_stale_keys_cannot_reach_other_regions ... ok" /tmp/transport_tests.log; result isolation $?
    grep -q "a_ticket_holder_reaches_the_owners_region_and_the_owner_rekeys_after_it_grew ... ok" /tmp/transport_tests.log; result tickets $?
    memnode --listen "$addr:7070" --capacity 1G --rdma-device rxe0 >/tmp/memnode.log 2>&1 &
    wait_port "$addr"
    runtime_over_rdma "$addr" runtime_run_over_rdma
    ;;
  memnode)
    # Its log goes to the console, so a failed run shows what the memnode saw.
    # 3 GiB in a 4 GiB guest: the runtime guest's tests on the module's RDMA backend register
    # (so keep resident) a region per memory beside its offloaded pages.
    memnode --listen "$addr:7070" --capacity 3G --rdma-device rxe0 2>&1 | while read -r l; do echo "EBB-LOG memnode: $l"; done &
    echo "EBB-MEMNODE-READY"
    # Every 10 s, the device's counters: what the memnode's side saw if the runtime's run fails.
    while sleep 10; do counters memnode; done
    ;;
  runtime)
    wait_port "$peer"
    runtime_over_rdma "$peer" two_guest_runtime_run_over_rdma
    kmod_remote_suite "$peer"
    ;;
  bench)
    cd /tmp
    # The module's fault ids (kmod_*) run beside the others in the same run.
    insmod /ebb.ko || echo "EBB-LOG insmod ebb.ko failed: the kmod ids are skipped"
    for b in fault_latency restore; do
      EBB_BENCH_RDMA_ONLY=1 "/bin/bench-$b" --bench --noplot >"/tmp/bench_$b.log" 2>&1
      rc=$?
      sed 's/^/EBB-BENCH /' "/tmp/bench_$b.log"
      result "bench_$b" $rc
    done
    # Criterion's medians (what docs/PERFORMANCE.md records; its printed line is the mean's
    # interval), from its estimates, in nanoseconds per iteration.
    find /tmp/target/criterion -path '*/new/estimates.json' | sort | while read -r f; do
      id=${f#/tmp/target/criterion/}
      echo "EBB-BENCH-MEDIAN ${id%/new/estimates.json} $(sed -n 's/.*"median":{"confidence_interval":{[^}]*},"point_estimate":\([0-9.e+-]*\).*/\1/p' "$f") ns"
    done
    rmmod ebb 2>/dev/null
    ;;
esac
echo "EBB-SUITE-DONE"
poweroff -f
EOF
chmod +x "$rootfs/init"
(cd "$rootfs" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.gz"
vmlinuz=$(compgen -G "$kdir/boot/vmlinuz-*" | head -1)
# One guest: NAME ROLE ADDR PEER, then its network arguments. The timeout wraps qemu itself.
boot() {
  local name=$1 role=$2 addr=$3 peer=$4
  shift 4
  local in_ns=()
  [[ -n "${netns:-}" ]] && in_ns=(ip netns exec "$netns")
  # Single-threaded TCG (faster on this two-core host). It did not end the guest kernel deaths of
  # the two-guest run (3 in 43 runs on 2026-12-02, with 2 vCPUs and with 1: rxe or the network
  # softirq, corrupted slab lists, impossible saved EFLAGS); an e1000 link instead of virtio-net
  # did, so far (44 of 44). docs/rdma.md; EBB_SOFTROCE_SMP and EBB_SOFTROCE_NIC are the knobs.
  # EBB_SOFTROCE_ICOUNT=1: the guest's clock counts instructions (1 ns each), so a bench run's
  # figures are instruction counts, the same whatever else the host runs (a cost model without
  # caches or TLBs: a companion to the wall-clock run, not a replacement).
  local icount=()
  [[ "${EBB_SOFTROCE_ICOUNT:-}" == 1 ]] && icount=(-icount shift=0,sleep=off)
  "${in_ns[@]}" timeout --kill-after=10 "${EBB_SOFTROCE_TIMEOUT:-420}" "${qemu[@]}" -accel "tcg,thread=${EBB_SOFTROCE_TCG_THREAD:-single}" "${icount[@]}" -cpu qemu64 -m "${EBB_SOFTROCE_MEM:-2G}" -smp "${EBB_SOFTROCE_SMP:-2}" \
    -kernel "$vmlinuz" -initrd "$work/initramfs.gz" -nographic -no-reboot "$@" \
    -append "console=ttyS0 quiet panic=-1 ebb.role=$role ebb.addr=$addr ebb.peer=$peer ebb.timeout_ms=${EBB_SOFTROCE_MEMNODE_TIMEOUT_MS:-15000} ebb.repeat=${EBB_SOFTROCE_REPEAT:-3}" >"$work/$name.log" 2>&1 || true
}
# Reports a guest kernel that died (oops, BUG, panic) with the first lines of its report.
kernel_died() {
  local log=$1 first
  first=$(grep -anE 'Oops|BUG:|Kernel panic|double fault|general protection fault|WARNING: CPU' "$log" | head -1 | cut -d: -f1)
  [[ -n "$first" ]] || return 1
  echo "softroce: GUEST KERNEL PANIC in $(basename "$log" .log) — its first lines:" >&2
  tail -n +"$first" "$log" | tr -d '\r' | head -n 40 | sed 's/^/  kernel: /' >&2
  return 0
}
# Prints the guest's EBB- lines and checks that each expected test passed.
check() {
  local log=$1 failed=0
  shift
  grep -a '^EBB-' "$log" | tr -d '\r' | sed 's/^/  guest: /' >&2 || true
  kernel_died "$log" && failed=1
  for t in "$@"; do
    if grep -aq "^EBB-RESULT PASS $t" "$log"; then
      echo "softroce: PASS $t" >&2
    elif grep -aq "^EBB-RESULT FAIL $t" "$log"; then
      echo "softroce: FAIL $t" >&2
      failed=1
    else
      echo "softroce: FAIL $t (no result: the guest did not get there)" >&2
      failed=1
    fi
  done
  # A failed check fails the run, named above or not.
  if grep -aq '^EBB-RESULT FAIL' "$log"; then
    failed=1
  fi
  return $failed
}
status=0
start=$(date +%s)
if [[ $mode == kmod || $mode == all ]]; then
  # 4 GiB: on the RDMA backend sixteen memories' regions (each registered, so resident, on the
  # memnode: the offloaded pages and the module's store) outgrew 2 GiB beside the test process.
  EBB_SOFTROCE_MEM=4G EBB_SOFTROCE_TIMEOUT=${EBB_SOFTROCE_KMOD_TIMEOUT:-1200} boot kmod kmod 10.0.2.15 - -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0
  check "$work/kmod.log" kmod_load kmod_tests kmod_paged_memory kmod_call_isolation kmod_rdma_paged_memory kmod_rdma_call_isolation \
    kmod_runtime_run kmod_rdma_runtime_run kmod_rdma_killed_memnode kmod_platform kmod_keep_alive kmod_ndp kmod_rdma_platform \
    kmod_rdma_keep_alive kmod_rdma_ndp kmod_runtime_unit kmod_unload kmod_kernel_log ||
    { status=1; tail -n 60 "$work/kmod.log" >&2; }
fi
if [[ $mode == single || $mode == all ]]; then
  boot single single 10.0.2.15 - -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0
  check "$work/single.log" transport_tests isolation tickets runtime_run_over_rdma || { status=1; tail -n 60 "$work/single.log" >&2; }
fi
if [[ $mode == two || $mode == all ]]; then
  # The two guests are linked by two taps on a bridge, in a network namespace of this run's own.
  # Not qemu's UDP socket netdev: RC over soft-RoCE has no congestion control, and a burst larger
  # than the receiving emulator's socket buffer (212 KB) was dropped whenever that emulator was not
  # running — every loss a go-back-N retransmission, and now and then a requester that never
  # resent (a stalled transfer). A tap queues 20 000 frames instead.
  netns=ebb-softroce-$$
  ip netns add "$netns"
  trap '[[ -z "${netns:-}" ]] || ip netns del "$netns" 2>/dev/null || true; [[ "${EBB_SOFTROCE_KEEP:-}" == 1 ]] || rm -rf "$work"' EXIT
  ip -n "$netns" link add br0 type bridge
  for t in tap0 tap1; do
    ip -n "$netns" tuntap add dev "$t" mode tap
    ip -n "$netns" link set "$t" master br0 txqueuelen 20000 up
  done
  ip -n "$netns" link set br0 up
  link() { echo "-netdev tap,id=n0,ifname=$1,script=no,downscript=no -device ${EBB_SOFTROCE_NIC:-e1000},netdev=n0,mac=52:54:00:12:34:$2"; }
  # shellcheck disable=SC2046 # the link arguments are meant to split
  export EBB_SOFTROCE_TIMEOUT=${EBB_SOFTROCE_TWO_TIMEOUT:-2400}
  EBB_SOFTROCE_MEM=4G boot memnode memnode 10.0.3.1 - $(link tap0 01) &
  mem_pid=$!
  # shellcheck disable=SC2046
  boot runtime runtime 10.0.3.2 10.0.3.1 $(link tap1 02)
  pkill -f "ebb.role=memnode ebb.addr=10.0.3.1" 2>/dev/null || true
  wait "$mem_pid" || true
  # The host's side of the link (frames each tap passed or dropped), for a failed run.
  ip -n "$netns" -s link show >"$work/links.txt" 2>&1 || true
  ip netns del "$netns" 2>/dev/null || true
  netns=
  kernel_died "$work/memnode.log" && status=1
  check "$work/runtime.log" two_guest_runtime_run_over_rdma two_guest_kmod_load two_guest_kmod_runtime_run two_guest_kmod_paged_memory \
    two_guest_kmod_call_isolation two_guest_kmod_platform \
    two_guest_kmod_unload two_guest_kmod_kernel_log || { status=1; tail -n 60 "$work/runtime.log" "$work/memnode.log" "$work/links.txt" >&2; }
fi
if [[ $mode == bench ]]; then
  boot bench bench 10.0.2.15 - -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0
  check "$work/bench.log" bench_fault_latency bench_restore || { status=1; tail -n 60 "$work/bench.log" >&2; }
fi
echo "softroce: $mode mode took $(($(date +%s) - start)) s" >&2
exit $status
