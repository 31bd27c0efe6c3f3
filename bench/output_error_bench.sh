#!/bin/sh
# output_error_bench.sh - build and run bench/output_error_bench.c: tb-pack's
# output-error report against the per-row DSYMV it replaced (issue 14).
#
#   bench/output_error_bench.sh [ROWS COLS THREADS REF_ROWS]   (after make)
#
# Default: a Mistral-7B down_proj, 4096 x 14336 (its Gram is 1.6 GB), 2
# threads, the reference on 32 rows. Output also appended to
# bench/results/output_error_bench.txt. BUILD (default build) names the build
# tree to link.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=bench/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -f "$BUILD/libtensorbit.a" ] || { echo "output_error_bench: $BUILD/libtensorbit.a not built (run make)" >&2; exit 1; }
${CC:-cc} -O2 -std=c11 -Icommon -Iformats -Ikernels -Ikernels/cpu bench/output_error_bench.c "$BUILD/libtensorbit.a" \
    $(pkg-config --libs libcjson openblas lapacke) -lm -pthread -o "$TMP/output_error_bench"
{
    echo "--- $(date '+%Y-%m-%d %H:%M') $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$TMP/output_error_bench" "${1:-4096}" "${2:-14336}" "${3:-2}" "${4:-32}"
} | tee -a "$OUT/output_error_bench.txt"
