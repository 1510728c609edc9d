#!/usr/bin/env bash
# Builds the C and C++ functions under functions/ to wasm32-wasi with Ebb's toolchain
# (functions/toolchain: Debian's clang + lld + wasi-libc + wasm32 libc++ with Faasm's defaults),
# against the SDK headers in functions/include. Our own functions build warning-free (-Werror);
# a Faasm user's build needs no such flag.
# Output: functions/build/<dir>/<name>.wasm. Installs the toolchain packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=functions/build
tc=functions/toolchain
for src in functions/examples/*.c functions/demo/*.c functions/demo/*.cpp functions/workloads/*.c functions/compat/*.c functions/compat/*.cpp; do
  [ -e "$src" ] || continue
  dir=$(basename "$(dirname "$src")")
  name=$(basename "${src%.*}")
  mkdir -p "$out/$dir"
  case "$src" in
    *.cpp) "$tc/ebb-clang++" -Wall -Werror -o "$out/$dir/$name.wasm" "$src" ;;
    *) "$tc/ebb-clang" -Wall -Werror -o "$out/$dir/$name.wasm" "$src" ;;
  esac
done
echo "built: $(cd $out && ls */*.wasm | tr '\n' ' ')"
