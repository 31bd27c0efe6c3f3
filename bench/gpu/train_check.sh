#!/bin/bash
# train_check.sh - the trainers on the GPU, in one device call of about 3
# minutes: test_train_cuda (tb_distill CPU vs CUDA f32/bf16, tb_recon_block
# with learned masks CPU vs CUDA f32), test_backend in its quick shapes (every
# op, the new kl_grad and learned-mask ops among them), then the tools with
# --device cuda: tb-distill and tb-recon --learn-masks on a magnitude 2:4
# tiny-llama-6m, each beside its CPU run. Logs and summary.txt under $OUT.
#
# Prepared on the development box (what device_tests.sh needs, and the build):
#   make CUDA=1 CUDA_ARCHS=90 -j2 all build-cuda/tests/cuda/test_backend build-cuda/tests/cuda/test_train_cuda
#   tar -cJf .devwork/train-build.tar.xz build-cuda/bin build-cuda/tests/cuda
#   run: bash bench/gpu/train_check.sh, carry .devwork/kit .devwork/train-build.tar.xz
set -u
. bench/gpu/lib.sh train_check
. bench/gpu/devkit-env.sh .devwork/kit
[ -f .devwork/train-build.tar.xz ] && tar -xJf .devwork/train-build.tar.xz
export TB_TEST_DATA=$PWD/tests/data
export B=$PWD/build-cuda/bin M=$PWD/tests/data/tiny-llama-6m
export CALIB=$M/calib-128x512.safetensors
nvidia-smi -L | tee "$OUT/gpu.txt"
step test_train_cuda 120 build-cuda/tests/cuda/test_train_cuda
TB_TEST_QUICK=1 step test_backend_quick 60 build-cuda/tests/cuda/test_backend

tools() {
    set -e
    t=$(mktemp -d)
    "$B/tb-score" -m "$M" --method magnitude -o "$t/s.st" --quiet
    "$B/tb-nm" -s "$t/s.st" --pattern 2:4 -o "$t/k.st" --quiet
    "$B/tb-pack" -m "$M" --masks "$t/k.st" --compensate none -o "$t/p.tb" --quiet
    "$B/tb-merge" -m "$M" -o "$t/p.tbm" "$t/p.tb" --quiet
    "$B/tb-pack" -m "$M" --masks "$t/k.st" --compensate none --layers 0:1 -o "$t/p0.tb" --quiet
    for d in cpu "cuda --precision f32" "cuda --precision bf16"; do
        echo "tb-distill --device $d: 20 steps on 8 windows"
        "$B/tb-distill" -m "$t/p.tbm" --teacher "$M" -t "$CALIB" --max-windows 8 --steps 20 --lr 1e-3 \
            --eval-windows 8 --checkpoint-every 0 --device $d --json -v -o "$t/kd.tbm"
        echo "tb-recon --learn-masks 10 --device $d: layer 0, 100 steps on 8 windows"
        "$B/tb-recon" -m "$M" --shard "$t/p0.tb" --layer 0 -t "$CALIB" --max-windows 8 --steps 100 \
            --learn-masks 10 --device $d --json -v -o "$t/r0.tb"
        "$B/tb-inspect" --json "$t/r0.tb" | python3 -c "
import json, sys; p = json.load(sys.stdin)['pruned']
print('  tb-recon masks conforming 2:4:', min(x['conforming_fraction'] for x in p), 'of', len(p), 'weights')"
    done
    rm -rf "$t"
}
export -f tools
step tools_cuda 100 bash -c tools
echo "== summary ($SECONDS s)"
cat "$OUT/summary.txt"
grep -hE "FAIL|passed|failed|skipped" "$OUT"/test_*.log | tail -8
grep -hE "kl_grad|col_sq_acc|latent_step|nm_reselect|mask_apply" "$OUT/test_backend_quick.log" | head -40
grep -hE "kl_after|mse_after|conforming|on cuda|on cpu|error" "$OUT/tools_cuda.log" | cut -c1-220
echo "train_check: $([ $fail -eq 0 ] && echo passed || echo FAILED)"
exit $fail
