#!/bin/sh
# cusparselt.sh - print a CUSPARSELT_HOME (a folder with include/cusparseLt.h and
# lib/libcusparseLt.so.0) for `make CUDA=1 CUSPARSELT=1`, fetching NVIDIA's
# PyPI wheel when none is found. cuSPARSELt is a build option, never required.
#
#   scripts/cusparselt.sh            locate, else fetch into .devwork/cusparselt
#   scripts/cusparselt.sh --locate   locate only (exit 1 if none)
#
# Looked for, in order: $CUSPARSELT_HOME; the installed wheel
# (python3 -m pip show nvidia-cusparselt-cu13); .devwork/cusparselt (an earlier
# fetch). A fetch is `pip download --no-deps nvidia-cusparselt-cu13==$TB_CUSPARSELT_VERSION`
# (default 0.8.0: the version the GPU machine's image carries, so that the
# header compiled against is the library run; the wheel is 170 MB, the library
# 234 MB) unpacked with Python's zipfile.
# The wheel lays its files out by version (0.8: nvidia/cusparselt/{include,lib};
# 0.10: nvidia/cu13/{include,lib}), so the home is found from the header.
set -eu
cd "$(dirname "$0")/.."
want=${TB_CUSPARSELT_VERSION:-0.8.0}
dest=.devwork/cusparselt

home_of() { # a folder holding include/cusparseLt.h somewhere below $1, with its library
    h=$(find "$1" -path '*/include/cusparseLt.h' 2>/dev/null | head -1)
    [ -n "$h" ] || return 1
    d=$(dirname "$(dirname "$h")")
    [ -f "$d/lib/libcusparseLt.so.0" ] || return 1
    (cd "$d" && pwd)
}

if [ -n "${CUSPARSELT_HOME:-}" ]; then
    if [ -f "$CUSPARSELT_HOME/include/cusparseLt.h" ] && [ -f "$CUSPARSELT_HOME/lib/libcusparseLt.so.0" ]; then
        echo "$CUSPARSELT_HOME"
        exit 0
    fi
    echo "cusparselt: CUSPARSELT_HOME=$CUSPARSELT_HOME has no include/cusparseLt.h and lib/libcusparseLt.so.0" >&2
    exit 2
fi
loc=$(python3 -m pip show nvidia-cusparselt-cu13 2>/dev/null | awk '/^Location:/ {print $2}')
if [ -n "$loc" ] && home_of "$loc/nvidia"; then exit 0; fi
if [ -d "$dest" ] && home_of "$dest"; then exit 0; fi
[ "${1:-}" = "--locate" ] && { echo "cusparselt: not found (run scripts/cusparselt.sh to fetch it)" >&2; exit 1; }

echo "cusparselt: fetching nvidia-cusparselt-cu13==$want from PyPI into $dest" >&2
mkdir -p "$dest"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dest/wheel" "nvidia-cusparselt-cu13==$want" >&2 ||
    { echo "cusparselt: pip download nvidia-cusparselt-cu13==$want failed" >&2; exit 3; }
python3 -m zipfile -e "$dest"/wheel/nvidia_cusparselt_cu13-*.whl "$dest" ||
    { echo "cusparselt: cannot unpack the wheel" >&2; exit 3; }
rm -rf "$dest/wheel"
home_of "$dest" || { echo "cusparselt: the wheel has no include/cusparseLt.h with lib/libcusparseLt.so.0" >&2; exit 3; }
