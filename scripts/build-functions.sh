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
# A function is rebuilt when its wasm is missing or older than its source, a header or the
# toolchain (the test binaries each call this script once).
newest=$(find functions/include "$tc" scripts/build-functions.sh -type f -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)
for src in functions/examples/*.c functions/demo/*.c functions/demo/*.cpp functions/workloads/*.c functions/compat/*.c functions/compat/*.cpp functions/ndp/*.c functions/ndp/*.cpp functions/workflows/*/*.c; do
  [ -e "$src" ] || continue
  dir=$(basename "$(dirname "$src")")
  name=$(basename "${src%.*}")
  mkdir -p "$out/$dir"
  wasm="$out/$dir/$name.wasm"
  # Headers beside the source (workloads/workload.h, a workflow's shared helpers) count too.
  fresh=1
  for h in "$(dirname "$src")"/*.h; do
    if [ -e "$h" ] && ! [ "$wasm" -nt "$h" ]; then fresh=0; fi
  done
  if [ "$fresh" = 1 ] && [ -e "$wasm" ] && [ "$wasm" -nt "$src" ] && [ "$wasm" -nt "$newest" ]; then
    continue
  fi
  # Written aside and renamed: an interrupted build never leaves a wasm that looks up to date.
  case "$src" in
    *.cpp) "$tc/ebb-clang++" -Wall -Werror -o "$wasm.tmp" "$src" ;;
    *) "$tc/ebb-clang" -Wall -Werror -o "$wasm.tmp" "$src" ;;
  esac
  mv "$wasm.tmp" "$wasm"
done
echo "built: $(cd $out && ls */*.wasm | tr '\n' ' ')"
