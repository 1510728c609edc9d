#!/usr/bin/env bash
# Builds the C functions under functions/ to wasm32-wasi with Debian's clang + lld + wasi-libc.
# Output: functions/build/<dir>/<name>.wasm. Installs the toolchain packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=functions/build
for src in functions/examples/*.c; do
  name=$(basename "$src" .c)
  mkdir -p "$out/examples"
  clang --target=wasm32-wasi --sysroot=/usr -O2 -Wall -Werror -o "$out/examples/$name.wasm" "$src" -Wl,--strip-all
done
echo "built: $(ls $out/*/*.wasm | tr '\n' ' ')"
