#!/usr/bin/env bash
# Configure and build cpp/ into cpp/build/ (incremental: a second run is a no-op).
#
#   cpp/build.sh                         headers via get-onnxruntime.sh + the venv's wheel library
#   ONNXRUNTIME_ROOT=/opt/ort cpp/build.sh   an official release (or any include/ + lib/ folder)
#
# Environment: ONNXRUNTIME_ROOT, BUILD_DIR (default cpp/build), BUILD_TYPE (default Release),
# VAE_WERROR (default ON), PYTHON (for get-onnxruntime.sh), CMAKE_ARGS (extra, e.g. a
# -DCMAKE_TOOLCHAIN_FILE=...). Prints the path of the vae_sample program last.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="${BUILD_DIR:-$here/build}"

for tool in cmake c++; do
    command -v "$tool" >/dev/null || { echo "build.sh: error: '$tool' not found (apt-get install cmake g++)" >&2; exit 1; }
done
# PNG grids need zlib's header (a cross build brings the target's: CMake finds it in the sysroot)
if [[ -z "${CMAKE_ARGS:-}" ]] && ! printf '#include <zlib.h>\n' | c++ -E -x c++ - >/dev/null 2>&1; then
    echo "build.sh: error: zlib.h not found (apt-get install zlib1g-dev)" >&2; exit 1
fi

root="${ONNXRUNTIME_ROOT:-}"
if [[ -z "$root" ]]; then
    "$here/get-onnxruntime.sh" || exit $?   # 3: headers could not be fetched
    root="$here/third_party/onnxruntime"
fi

generator=()
if [[ ! -f "$build/CMakeCache.txt" ]] && command -v ninja >/dev/null; then generator=(-G Ninja); fi

mkdir -p "$build"
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of words
cmake -S "$here" -B "$build" "${generator[@]}" \
    -DONNXRUNTIME_ROOT="$root" \
    -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
    -DVAE_WERROR="${VAE_WERROR:-ON}" ${CMAKE_ARGS:-} >"$build/configure.log" 2>&1 \
    || { cat "$build/configure.log" >&2; echo "build.sh: error: cmake configure failed" >&2; exit 1; }
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" >&2
echo "$build/vae_sample"
