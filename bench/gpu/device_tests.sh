#!/bin/bash
# device_tests.sh - on the GPU machine: make test-cuda's programs from a carried
# CUDA build, then compute-sanitizer memcheck and racecheck over the backend
# parity test. Logs under $OUT (or /tmp/out).
#   prepared here: make CUDA=1 CUDA_ARCHS=90 all test-cuda-bin; bench/gpu/devkit.sh;
#                  bench/gpu/shared.sh (tiny-mistral-10m and its golden: carry .devwork/shared.tar.xz)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
. bench/gpu/devkit-env.sh .devwork/kit
if [ -f .devwork/shared.tar.xz ]; then # bench/gpu/shared.sh's tiny-mistral-10m and its golden
    mkdir -p .devwork/shared && tar -C .devwork/shared -xJf .devwork/shared.tar.xz
fi
export TB_SHARED=$PWD/.devwork/shared TB_TEST_DATA=$PWD/tests/data TB_BIN=$PWD/build-cuda/bin
nvidia-smi -L
fail=0
for t in build-cuda/tests/cuda/test_*; do
    echo "== $t"
    "$t" 2>&1 | tee "$OUT/$(basename "$t").log" | tail -40
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail=1
done
echo "== tests/cuda/tools.sh"
sh tests/cuda/tools.sh 2>&1 | tee "$OUT/tools.log" | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || fail=1
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
        for t in build-cuda/tests/cuda/test_backend*; do
            [ -x "$t" ] || continue
            echo "== compute-sanitizer --tool $tool $t (small shapes)"
            TB_TEST_QUICK=1 TB_TEST_NO_OOM=1 timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 "$t" >"$OUT/san-$tool.log" 2>&1
            rc=$?
            tail -3 "$OUT/san-$tool.log"
            [ $rc -eq 0 ] || { echo "sanitizer $tool: exit $rc"; fail=1; }
        done
    done
fi
echo "device_tests: $([ $fail -eq 0 ] && echo passed || echo FAILED)"
exit $fail
