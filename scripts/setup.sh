#!/usr/bin/env bash
# Installs what building and testing Ebb needs on a Debian machine with only Rust installed (run as
# root). Idempotent and quiet when everything is present.
#  - libclang-dev: the userfaultfd crate generates its bindings with bindgen at build time.
#  - clang, lld, wasi-libc, libclang-rt-14-dev-wasm32, libc++(abi)-14-dev-wasm32: build the C and
#    C++ guest functions to wasm32-wasi; cmake, make: the CMake toolchain file's test
#    (functions/toolchain/ebb.cmake, a Faasm-style project built out of tree).
#  - pkg-config, libibverbs-dev, librdmacm-dev: the rdma transport (rdma-sys links the system verbs
#    libraries); ibverbs-providers: the soft-RoCE provider copied into the test guest.
#  - busybox-static, cpio, kmod, xz-utils: the soft-RoCE guest's initramfs (scripts/softroce.sh);
#    gcc-12: the compiler the guest kernel's headers name, to build kmod/ebb.ko for it.
set -euo pipefail
pkgs=(libclang-dev clang lld wasi-libc libclang-rt-14-dev-wasm32 libc++-14-dev-wasm32 libc++abi-14-dev-wasm32 cmake make
  pkg-config libibverbs-dev librdmacm-dev ibverbs-providers busybox-static cpio kmod xz-utils iproute2 gcc-12)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
