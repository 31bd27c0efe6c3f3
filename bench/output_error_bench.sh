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
exec "$(dirname "$0")/c_bench.sh" output_error_bench "${1:-4096}" "${2:-14336}" "${3:-2}" "${4:-32}"
