#!/bin/sh
# c_bench.sh NAME [ARGS...] - build bench/NAME.c against the library and run
# it with ARGS, its output also appended to bench/results/NAME.txt under a
# line with the date, the CPU and the load. BUILD (default build) names the
# build tree to link. A measurement, not part of the toolkit: a plain cc line.
set -eu
cd "$(dirname "$0")/.."
name=$1
shift
BUILD=${BUILD:-build}
OUT=bench/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -f "$BUILD/libtensorbit.a" ] || { echo "$name: $BUILD/libtensorbit.a not built (run make)" >&2; exit 1; }
${CC:-cc} -O2 -std=c11 -Icommon -Iformats -Ikernels -Ikernels/cpu "bench/$name.c" "$BUILD/libtensorbit.a" \
    $(pkg-config --libs libcjson openblas lapacke) -lm -pthread -o "$TMP/$name"
{
    echo "--- $(date '+%Y-%m-%d %H:%M') $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$TMP/$name" "$@"
} | tee -a "$OUT/$name.txt"
