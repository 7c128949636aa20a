#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite: a normal build (warnings as errors) and an
# ASan+UBSan build, each with every CTest test. GPU tests skip cleanly where no GPU is present.
#   HYLO_SKIP_SETUP=1   do not run scripts/setup.sh
#   HYLO_NO_SANITIZE=1  skip the sanitizer build
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[[ "${HYLO_SKIP_SETUP:-0}" == 1 ]] || scripts/setup.sh
jobs="$(nproc)"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== build (RelWithDebInfo, -Werror) =="
cmake -S . -B build "${gen[@]}" -DHYLO_WERROR=ON >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

if [[ "${HYLO_NO_SANITIZE:-0}" != 1 ]]; then
  echo "== build (ASan + UBSan) =="
  cmake -S . -B build-asan "${gen[@]}" -DHYLO_SANITIZE=ON -DHYLO_ENABLE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build-asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi
echo "== all tests passed =="
