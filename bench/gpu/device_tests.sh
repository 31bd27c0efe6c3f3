#!/bin/bash
# device_tests.sh - on the GPU machine, in one device call of at most 10 minutes:
# make test-cuda's programs from a carried CUDA build (test_backend: every op on
# both backends, the 2:4 weights at 1-128 tokens and the device reorder;
# test_sparsegpt_cuda: SparseGPT with G moved per call and resident;
# test_model_cuda: logits vs the goldens; test_train_cuda: tb_distill and
# tb_recon_block with learned masks on both backends), tests/cuda/tools.sh (the
# tools on the GPU, the packed 2:4 model's generation and perplexity), then compute-sanitizer
# memcheck and racecheck over the parity tests. Each step has a time cap and the
# whole stays under DEADLINE seconds (default 570): a step that would start too
# late is reported as skipped, never silently dropped. Logs and summary.txt
# (step, exit status, seconds) under $OUT (or /tmp/out).
#
# Prepared on the development box, then one call:
#   make CUDA=1 CUDA_ARCHS=90 -j2 all build-cuda/tests/cuda/test_backend \
#        build-cuda/tests/cuda/test_model_cuda build-cuda/tests/cuda/test_sparsegpt_cuda \
#        build-cuda/tests/cuda/test_train_cuda
#   bench/gpu/devkit.sh                 (the tools' shared libraries: .devwork/kit)
#   bench/gpu/shared.sh                 (tiny-mistral-10m and its golden: .devwork/shared.tar.xz)
#   run: bash bench/gpu/device_tests.sh, carry build-cuda .devwork/kit .devwork/shared.tar.xz
set -u
DEADLINE=${DEADLINE:-570}
STEP_TAIL=40
. bench/gpu/lib.sh device_tests
. bench/gpu/devkit-env.sh .devwork/kit
if [ -f .devwork/shared.tar.xz ]; then # bench/gpu/shared.sh's tiny-mistral-10m and its golden
    mkdir -p .devwork/shared && tar -C .devwork/shared -xJf .devwork/shared.tar.xz
fi
export TB_SHARED=$PWD/.devwork/shared TB_TEST_DATA=$PWD/tests/data TB_BIN=$PWD/build-cuda/bin
nvidia-smi -L
step test_backend 150 build-cuda/tests/cuda/test_backend
step test_sparsegpt_cuda 60 build-cuda/tests/cuda/test_sparsegpt_cuda
step test_model_cuda 90 build-cuda/tests/cuda/test_model_cuda
step test_train_cuda 120 build-cuda/tests/cuda/test_train_cuda
step tools 240 sh tests/cuda/tools.sh
if command -v compute-sanitizer >/dev/null; then
    export TB_TEST_QUICK=1 TB_TEST_NO_OOM=1
    # most telling first: the new 2:4 and N:M kernels run in the bf16 precision;
    # racecheck in f32 was clean on 2026-12-02 and comes last
    step san-memcheck-backend 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
        build-cuda/tests/cuda/test_backend
    TB_TEST_PREC=bf16 step san-racecheck-backend-bf16 150 compute-sanitizer --tool racecheck --error-exitcode 9 \
        build-cuda/tests/cuda/test_backend
    step san-memcheck-sparsegpt 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
        build-cuda/tests/cuda/test_sparsegpt_cuda
    TB_TEST_PREC=f32 step san-racecheck-backend-f32 150 compute-sanitizer --tool racecheck --error-exitcode 9 \
        build-cuda/tests/cuda/test_backend
else
    echo "compute-sanitizer: not found (the sanitizer steps did not run)" | tee -a "$OUT/summary.txt"
    fail=1
fi
echo "== summary ($SECONDS s)"
cat "$OUT/summary.txt"
echo "device_tests: $([ $fail -eq 0 ] && echo passed || echo FAILED)"
exit $fail
