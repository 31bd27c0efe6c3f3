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
exec "$(dirname "$0")/c_bench.sh" gemv_bench "$@"
