#!/bin/bash
# gemv_bench.sh - on the GPU machine: kernels/cuda/tb_gemv_bf16.cu's checker and
# bench (the decode-time dense bf16 linear at 1-16 tokens against cuBLAS,
# with and without the x conversion the backend ran before it), beside the
# copy rate measured in the same run. Output: $OUT/gemv_bench.txt.
set -eu
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
W=/tmp/gemv
mkdir -p $W
nvcc -O3 -std=c++17 -DTB_GEMV_BENCH -gencode=arch=compute_90,code=sm_90 -Icommon \
    kernels/cuda/tb_gemv_bf16.cu common/tb_error.c -lcublas -o $W/tb_gemv
{
    echo "gemv_bench: $(date -u +%F' '%T) UTC, $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
    $W/tb_gemv
} 2>&1 | tee "$OUT/gemv_bench.txt"
