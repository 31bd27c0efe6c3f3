#!/bin/sh
# gemv_bench.sh - build and run bench/gemv_bench.c (the linear kernels of
# kernels/cpu/tb_gemv: tb_gemv, tb_gemm and the tile path, one thread) on this machine.
#
#   bench/gemv_bench.sh [tiny|1b|all] [TOKENS]     (after make)
#
# Output (also appended to bench/results/gemv_bench.txt): one line per shape,
# format, token count and kernel with microseconds per call and GB/s of
# weight bytes and GFLOP/s. BUILD (default build) names the build tree to link.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=bench/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -f "$BUILD/libtensorbit.a" ] || { echo "gemv_bench: $BUILD/libtensorbit.a not built (run make)" >&2; exit 1; }
# a measurement, not part of the toolkit: a plain cc line
${CC:-cc} -O2 -std=c11 -Icommon -Iformats -Ikernels -Ikernels/cpu bench/gemv_bench.c "$BUILD/libtensorbit.a" \
    $(pkg-config --libs libcjson openblas lapacke) -lm -pthread -o "$TMP/gemv_bench"
{
    echo "--- $(date '+%Y-%m-%d %H:%M') $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$TMP/gemv_bench" "$@"
} | tee -a "$OUT/gemv_bench.txt"
