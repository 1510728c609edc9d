#!/usr/bin/env bash
# Builds the C and C++ functions under functions/ to wasm32-wasi with Debian's clang + lld +
# wasi-libc (+ wasm32 libc++), against the SDK headers in functions/include.
# Output: functions/build/<dir>/<name>.wasm. Installs the toolchain packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=functions/build
flags=(--target=wasm32-wasi --sysroot=/usr -O2 -Wall -Werror -Ifunctions/include -Wl,--strip-all -Wl,--export-table)
for src in functions/examples/*.c functions/demo/*.c functions/demo/*.cpp functions/workloads/*.c; do
  dir=$(basename "$(dirname "$src")")
  name=$(basename "${src%.*}")
  mkdir -p "$out/$dir"
  case "$src" in
    *.cpp) clang++ "${flags[@]}" -fno-exceptions -o "$out/$dir/$name.wasm" "$src" ;;
    *) clang "${flags[@]}" -o "$out/$dir/$name.wasm" "$src" ;;
  esac
done
echo "built: $(cd $out && ls */*.wasm | tr '\n' ' ')"
