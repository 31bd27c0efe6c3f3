#!/bin/bash
# bench/gpu/attn_bench.sh - build, check and time the bf16 attention forward
# (kernels/cuda/tb_attention_cuda.cu: version 1 attn_fwd_mma, version 2
# attn_fwd_mma2<HD, 0>, version 3 attn_fwd_mma2<HD, 1> after its bf16
# conversion pass) on a GPU machine, in one go (about a minute):
#   1. build bench/gpu/attn_bench.cu with nvcc (sm_90; registers and spills
#      of every kernel from ptxas -v);
#   2. compute-sanitizer memcheck and racecheck over --check-quick;
#   3. --check: every version against the f64 CPU reference on small shapes
#      (every edge: n 1..3 and not a multiple of 64/128, pos0 > 0, windows,
#      GQA 32/8, 12/4, 32/1, MHA, head_dim 64/128; pos0 in device memory);
#   4. --bench: 32/8 heads x 128 at n 512, 2048, 4096, 2048 with window 1024,
#      and decode (n 1 and 16 at position ~2048): median ms of 25, TFLOP/s.
# Usage (from the repository root): bash bench/gpu/attn_bench.sh
# Output: everything on stdout and in $OUT/attn_bench.txt (OUT: /tmp/out).
set -u -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG=$OUT/attn_bench.txt
BIN=${TMPDIR:-/tmp}/tb_attn_bench
ARCH=${ATTN_ARCH:-sm_90}
{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    git log -1 --format='commit %h %s' 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
    nvcc --version | tail -1
    echo "== build ($ARCH)"
    if ! nvcc -O3 -std=c++17 -arch="$ARCH" -Xptxas -v bench/gpu/attn_bench.cu -o "$BIN" >"$OUT/attn_build.txt" 2>&1; then
        cat "$OUT/attn_build.txt"
        echo "build failed"
        exit 3
    fi
    # ptxas: one "Compiling entry function" line, then properties, then registers
    awk '/Compiling entry function/ { f = ""; if (match($0, /attn_fwd_mma2?ILi[0-9]+(ELb[01])?/)) { f = substr($0, RSTART, RLENGTH); sub(/ILi/, "<", f); sub(/ELb/, ", ", f); f = f ">" } }
         /spill stores/ { sp = $0; sub(/^ +/, "", sp) }
         /Used [0-9]+ registers/ && f != "" { r = $0; sub(/.*Used /, "", r); sub(/ registers.*/, "", r); printf "ptxas %s: %s registers, %s\n", f, r, sp; f = "" }' \
        "$OUT/attn_build.txt"
    echo "== compute-sanitizer (--check-quick)"
    if command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck; do
            timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 "$BIN" --check-quick >"$OUT/attn_$tool.txt" 2>&1
            rc=$?
            echo "$tool: exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/attn_$tool.txt" | tail -1)"
            [ $rc -ne 0 ] && grep -E 'FAIL|Invalid|hazard|Error' "$OUT/attn_$tool.txt" | head -8
        done
    else
        echo "compute-sanitizer: not on PATH"
    fi
    echo "== --check"
    "$BIN" --check
    echo "check exit $?"
    echo "== --bench"
    "$BIN" --bench
    echo "bench exit $?"
} 2>&1 | tee "$LOG"
