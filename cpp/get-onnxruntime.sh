#!/usr/bin/env bash
# Lay out an ONNX Runtime "release" folder for building cpp/ on this machine, without
# installing anything system-wide:
#
#   cpp/third_party/onnxruntime/
#     include/   the C/C++ API headers, from Debian's libonnxruntime-dev package
#     lib/       libonnxruntime.so and libonnxruntime.so.1: symlinks to the shared library
#                that the onnxruntime Python wheel ships (onnxruntime/capi/)
#     VERSION    what was fetched and linked (the stamp that makes re-runs a no-op)
#
# It is the same layout as an official release archive, so the CMake project takes it
# through -DONNXRUNTIME_ROOT like any other. The headers talk to the library only through
# the versioned C API, so any header version up to the library's works (checked below).
#
# The headers come with `apt-get download` from a Debian suite that packages them (trixie
# and later), through a temporary sources list that reuses this machine's own Debian mirror
# and a private apt state folder: the system's apt configuration is neither read for
# sources nor modified.
#
# Environment (all optional):
#   PYTHON          interpreter whose onnxruntime wheel provides the library
#                   (default: <repo>/.venv/bin/python, else python3)
#   ORT_ROOT        output folder (default: cpp/third_party/onnxruntime)
#   ORT_DEB_SUITES  Debian suites to try, in order (default: "trixie forky sid")
#   ORT_DEB_MIRROR  Debian mirror URI (default: the one this machine's apt sources use)
#   ORT_DEB_KEYRING keyring that verifies the suite (default: Debian's archive keyring)
#
# Exit status: 0 ready, 3 the headers could not be fetched, 1 any other failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
dest="${ORT_ROOT:-$here/third_party/onnxruntime}"
suites="${ORT_DEB_SUITES:-trixie forky sid}"
keyring="${ORT_DEB_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"

die() { echo "get-onnxruntime.sh: error: $*" >&2; exit 1; }
# Exit status 3: the headers could not be fetched (no apt, no mirror, no network, no package).
die_fetch() { echo "get-onnxruntime.sh: error: cannot fetch the ONNX Runtime headers: $*" >&2; exit 3; }
say() { echo "get-onnxruntime.sh: $*" >&2; }

# --- 1. the library: the onnxruntime wheel's libonnxruntime.so.1.x -----------------------
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
capi="$("$PYTHON" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null)" \
    || die "'$PYTHON' cannot import onnxruntime; set PYTHON to an interpreter that has the onnxruntime wheel"
shopt -s nullglob
libs=("$capi"/libonnxruntime.so.1.*)
shopt -u nullglob
[[ ${#libs[@]} -ge 1 ]] || die "no libonnxruntime.so.1.* in $capi (is this an onnxruntime wheel for Linux?)"
lib="${libs[0]}"
lib_version="${lib##*/libonnxruntime.so.}"          # e.g. 1.31.1
lib_api="$(cut -d. -f2 <<<"$lib_version")"          # the C API version equals the minor version
[[ "$lib_api" =~ ^[0-9]+$ ]] || die "cannot read the ONNX Runtime version from '$lib'"

# --- 2. the headers: Debian's libonnxruntime-dev -----------------------------------------
header_api() { sed -n 's/^#define ORT_API_VERSION \([0-9][0-9]*\).*/\1/p' "$1/onnxruntime_c_api.h" 2>/dev/null; }

debian_mirror() {
    # The first URI that serves this release's main suite (e.g. "bookworm", not
    # "bookworm-security") in the one-line or deb822 sources of this machine.
    local codename f
    codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
    [[ -n "$codename" ]] || return 0
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        awk -v cn="$codename" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                                            if ($(i + 1) == cn) { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        awk -v cn="$codename" 'BEGIN { RS = ""; FS = "\n" }
            { deb = 0; uri = ""; hit = 0; off = 0
              for (i = 1; i <= NF; i++) {
                  split($i, kv, ":[ \t]*"); key = tolower(kv[1]); val = substr($i, length(kv[1]) + 2)
                  if (key == "types" && val ~ /(^|[ \t])deb($|[ \t])/) deb = 1
                  if (key == "uris") { split(val, u, /[ \t]+/); uri = (u[1] == "" ? u[2] : u[1]) }
                  if (key == "suites") { n = split(val, s, /[ \t]+/); for (j = 1; j <= n; j++) if (s[j] == cn) hit = 1 }
                  if (key == "enabled" && val ~ /no/) off = 1 }
              if (deb && hit && !off && uri != "") { print uri; exit } }' "$f"
    done
}

fetch_headers() {
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        || die_fetch "apt-get/dpkg-deb not found: this script fetches the headers on Debian-like systems only;
  elsewhere download an official ONNX Runtime release and build with ONNXRUNTIME_ROOT=<its folder>"
    local mirror="${ORT_DEB_MIRROR:-}"
    [[ -n "$mirror" ]] || mirror="$(debian_mirror | head -n1)"
    [[ -n "$mirror" ]] || die_fetch "found no Debian mirror in /etc/apt/sources.list{,.d/*}; set ORT_DEB_MIRROR"
    local signed=""
    [[ -r "$keyring" ]] && signed="[signed-by=$keyring] "

    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/parts" "$tmp/prefs" "$tmp/deb"
    : >"$tmp/status"
    local apt_opts=(
        -o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/parts"
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "Dir::State::status=$tmp/status"
        -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$tmp/prefs"
        -o "APT::Sandbox::User=$(id -un)" -o "Debug::NoLocking=1" -qq
    )
    local suite
    for suite in $suites; do
        say "looking for libonnxruntime-dev in Debian $suite ($mirror)"
        echo "deb ${signed}$mirror $suite main" >"$tmp/sources.list"
        rm -rf "$tmp/lists"/* && mkdir -p "$tmp/lists/partial"
        if ! apt-get "${apt_opts[@]}" update >"$tmp/log" 2>&1; then
            say "apt-get update for $suite failed: $(tail -n 3 "$tmp/log" | tr '\n' ' ')"
            continue
        fi
        if (cd "$tmp/deb" && apt-get "${apt_opts[@]}" download libonnxruntime-dev >"$tmp/log" 2>&1); then
            break
        fi
        say "no libonnxruntime-dev in $suite: $(tail -n 1 "$tmp/log")"
    done
    local deb
    deb="$(find "$tmp/deb" -name 'libonnxruntime-dev_*.deb' | head -n1)"
    [[ -n "$deb" ]] || die_fetch "could not download libonnxruntime-dev from any of: $suites (mirror $mirror)"
    dpkg-deb -x "$deb" "$tmp/x"
    [[ -f "$tmp/x/usr/include/onnxruntime/onnxruntime_cxx_api.h" ]] \
        || die_fetch "$(basename "$deb") has no usr/include/onnxruntime/onnxruntime_cxx_api.h"
    rm -rf "$dest/include"
    mkdir -p "$dest/include"
    cp -R "$tmp/x/usr/include/onnxruntime/." "$dest/include/"
    basename "$deb" >"$dest/include/.debian-package"
    say "headers from $(basename "$deb") -> $dest/include"
}

mkdir -p "$dest"
if [[ -z "$(header_api "$dest/include")" ]]; then
    fetch_headers
fi
hdr_api="$(header_api "$dest/include")"
[[ -n "$hdr_api" ]] || die "$dest/include/onnxruntime_c_api.h defines no ORT_API_VERSION"

# --- 3. compatibility: the header's C API version must not exceed the library's ----------
if (( hdr_api > lib_api )); then
    die "headers speak ONNX Runtime C API $hdr_api but the wheel's library ($lib) offers only up to $lib_api;
  upgrade the onnxruntime wheel, or remove $dest/include and set ORT_DEB_SUITES to an older suite"
fi

# --- 4. the library links (re-made each run: cheap, and the venv may have moved) ----------
mkdir -p "$dest/lib"
ln -sfn "$lib" "$dest/lib/libonnxruntime.so.1"
ln -sfn "$lib" "$dest/lib/libonnxruntime.so"
# Other files of the wheel that the library may dlopen (execution-provider bridges).
for extra in "$capi"/libonnxruntime_providers_shared.so; do
    [[ -e "$extra" ]] && ln -sfn "$extra" "$dest/lib/$(basename "$extra")"
done

cat >"$dest/VERSION" <<EOF
headers: $(cat "$dest/include/.debian-package" 2>/dev/null || echo unknown) (ORT_API_VERSION $hdr_api)
library: $lib (onnxruntime $lib_version, C API up to $lib_api)
EOF
say "ready: $dest (headers API $hdr_api, library $lib_version)"
