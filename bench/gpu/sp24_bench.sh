#!/bin/bash
# bench/gpu/sp24_bench.sh - build, check and time the 2:4 sparse GEMM
# (kernels/cuda/tb_sp24_gemm.cu) on a GPU machine, in one go:
#   1. build the standalone checker/bench with nvcc (sm_90a + sm_80), with
#      cuSPARSELt when it can be found (CUSPARSELT_HOME, or the Python wheel
#      nvidia-cusparselt-cu13), or use a prebuilt binary ($SP24_BIN) if it runs;
#   2. SASS: count the sparse mma instructions (HMMA...SP, HGMMA...SP) per kernel;
#   3. --probe (metadata lanes), compute-sanitizer memcheck on --check-quick,
#      the full --check (small shapes, every dtype/perm/bias/kernel);
#   4. --bench: W 4096x4096, 14336x4096, 4096x14336 at 1..16384 tokens, every
#      version, cuBLAS dense bf16 and cuSPARSELt, parity at every shape, with
#      the copy bandwidth and cuBLAS rate measured in the same run.
# Usage (from the repository root): bench/gpu/sp24_bench.sh [ROOT]
# Output: the table last on stdout; every number in $OUT/sp24_full.txt.
set -u -o pipefail
ROOT=${1:-.}
OUT=${OUT:-$ROOT/bench/results/sp24}
export OUT
mkdir -p "$OUT"
cd "$ROOT" || exit 3
date -u +"date %Y-%m-%dT%H:%M:%SZ"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv,noheader
nvcc --version | tail -1

CSL_FLAGS=""
if [ -z "${CUSPARSELT_HOME:-}" ]; then
    loc=$(python3 -m pip show -f nvidia-cusparselt-cu13 2>/dev/null | awk '/^Location:/{print $2}')
    if [ -n "$loc" ]; then
        hdr=$(python3 -m pip show -f nvidia-cusparselt-cu13 | grep 'cusparseLt.h$' | head -1 | xargs)
        [ -n "$hdr" ] && CUSPARSELT_HOME=$(dirname "$(dirname "$loc/$hdr")")
    fi
fi
if [ -n "${CUSPARSELT_HOME:-}" ] && [ -f "$CUSPARSELT_HOME/include/cusparseLt.h" ]; then
    lib=$(ls "$CUSPARSELT_HOME"/lib/libcusparseLt.so* 2>/dev/null | head -1)
    CSL_FLAGS="-DTB_HAVE_CUSPARSELT -I$CUSPARSELT_HOME/include -L$CUSPARSELT_HOME/lib -l:$(basename "$lib") -Xlinker -rpath=$CUSPARSELT_HOME/lib"
    export LD_LIBRARY_PATH="$CUSPARSELT_HOME/lib:${LD_LIBRARY_PATH:-}"
    echo "cuSPARSELt: $lib ($(python3 -m pip show nvidia-cusparselt-cu13 2>/dev/null | awk '/^Version:/{print $2}'))"
else
    echo "cuSPARSELt: not found (CUSPARSELT_HOME unset, no nvidia-cusparselt-cu13 wheel): skipped"
fi

BIN=${SP24_BIN:-}
if [ -n "$BIN" ] && [ -x "$BIN" ] && "$BIN" --probe >"$OUT/probe.txt" 2>&1; then
    echo "binary: prebuilt $BIN"
else
    BIN=./tb_sp24_gemm
    echo "binary: building $BIN"
    nvcc -O3 -std=c++17 -DTB_SP24_BENCH -DTB_SP24_WGMMA -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 \
        -Ikernels/cpu -Iformats -Icommon -Ikernels/cuda -Xptxas -v kernels/cuda/tb_sp24_gemm.cu \
        kernels/cpu/tb_sp24_layout.c formats/tb_dtype.c common/tb_error.c -lcublas $CSL_FLAGS -o "$BIN" \
        >"$OUT/build.txt" 2>&1 || { cat "$OUT/build.txt"; exit 3; }
    "$BIN" --probe >"$OUT/probe.txt" 2>&1
fi
cat "$OUT/probe.txt"
if command -v cuobjdump >/dev/null; then
    cuobjdump --dump-sass "$BIN" >"$OUT/sass.txt" 2>/dev/null
    awk '/Function :/{f=$3} /HG?MMA/{n[f]++; if ($0 ~ /\.SP/) s[f]++} END{for (f in n) printf "sass: %s: %d HMMA/HGMMA, %d sparse\n", f, n[f], s[f]}' \
        "$OUT/sass.txt" | grep -i -E "tiled|wgmma|skinnyILi2ELi2ELi8ELi0E13" | sort
    rm -f "$OUT/sass.txt" # too large to bring back
fi
echo "== compute-sanitizer memcheck --check-quick"
if command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 "$BIN" --check-quick >"$OUT/sanitizer.txt" 2>&1
    echo "compute-sanitizer exit $? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer.txt") clean summary line)"
    grep -E "ERROR SUMMARY|check:" "$OUT/sanitizer.txt" | tail -4
else
    echo "compute-sanitizer: not on PATH"
fi
echo "== --check"
"$BIN" --check >"$OUT/check.txt" 2>&1
rc=$?
grep -E "FAIL|check:|error" "$OUT/check.txt" | head -12
if [ $rc -ne 0 ] && grep -q "version 3 (sparse wgmma): on" "$OUT/check.txt"; then
    echo "check failed (exit $rc): rerunning without version 3"
    export SP24_NO_V3=1
    "$BIN" --check 2>&1 | grep -E "FAIL|check:" | head -6
fi
echo "== --bench"
"$BIN" --bench 2>&1 | tee "$OUT/bench.txt"
