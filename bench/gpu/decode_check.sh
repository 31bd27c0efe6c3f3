#!/bin/bash
# decode_check.sh - on the GPU machine, one device call (~6 minutes): the
# decode step as one CUDA graph (issue 13; kernels/tb_forward.c decode_run),
# checked and timed against plain launches in the same binary.
#   1. test_backend, quick shapes (the decode ops rope_append, attention_at,
#      add_rmsnorm, linear_swiglu, linears against the CPU; a captured step
#      replayed at two positions equal to plain launches bit for bit, dense
#      GEMV and 2:4 kernel with PDL)
#   2. test_model_cuda (decode vs prefill logits in f32 through the graph;
#      greedy bf16 tokens and logits with the graph equal to without it)
#   3. the 8-layer dense and packed 2:4 Mistral-7B-shaped models of
#      `BENCH_ONLY=decode bench/gpu/bench_7b.sh` (made, or reused from /tmp/b7)
#   4. tb-run 'The' + 128 tokens, bf16, for dense and 2:4 with TB_CUDA_GRAPH=0
#      and 1, REPS (default 2) runs each: the generated text must be the same
#      with and without the graph; tokens/s, step time, the bytes a step reads
#      (every layer weight and lm_head; not the embedding table) and the step
#      time's share of the copy-bandwidth bound (bytes / device-to-device copy
#      rate, measured here by a small copy kernel: read + write, as cublas_peak.cu)
#   5. bench/gpu/decode_profile.sh if time is left (kernel times per step)
# DECODE_TESTS=0 skips 1 and 2 (timing only, e.g. on run_7b.sh's models:
# DECODE_DIR with mD -> its checkpoint, pD -> its output directory).
# Each step is capped (bench/gpu/lib.sh), the whole under DEADLINE seconds
# (default 380). Output: $OUT/decode_check.txt (the numbers), $OUT/summary.txt
# (step, exit, seconds) and a log per step.
# Prepared on the development box:
#   make CUDA=1 CUDA_ARCHS=90 -j2 all build-cuda/tests/cuda/test_backend build-cuda/tests/cuda/test_model_cuda
#   tar -cJf .devwork/decode-build.tar.xz build-cuda/bin build-cuda/tests/cuda
#   run: bash bench/gpu/decode_check.sh, carry .devwork/kit .devwork/decode-build.tar.xz
#        (and .devwork/shared.tar.xz: test_model_cuda's tiny-mistral-10m; skipped without it)
# A dry run of the script's logic without a GPU (the tests skip, tb-run on the
# CPU, models given): DECODE_DEVICE=cpu DECODE_DIR=DIR (DIR/mD a checkpoint,
# DIR/pD/model.tbm its 2:4 merge) TB_BIN=build/bin.
set -u
DEADLINE=${DEADLINE:-380}
REPS=${REPS:-2}
STEP_TAIL=${STEP_TAIL:-4}
. bench/gpu/lib.sh decode_check
. bench/gpu/devkit-env.sh .devwork/kit
[ -f .devwork/decode-build.tar.xz ] && tar -xJf .devwork/decode-build.tar.xz
if [ -f .devwork/shared.tar.xz ]; then
    mkdir -p .devwork/shared && tar -C .devwork/shared -xJf .devwork/shared.tar.xz
fi
export TB_SHARED=$PWD/.devwork/shared TB_TEST_DATA=$PWD/tests/data
B=${TB_BIN:-$PWD/build-cuda/bin}
W=${DECODE_DIR:-/tmp/b7}
DEV=${DECODE_DEVICE:-cuda}
mkdir -p $W
S=$OUT/decode_check.txt
log "decode_check: $(date -u +%F' '%T) UTC, $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"

# the copy rate, built while the CPU makes the models
# (bench/gpu/copybw.cu; built while the CPU makes the models)
(nvcc -O2 -arch=sm_90 bench/gpu/copybw.cu -o $W/copybw >$W/copybw.log 2>&1) &
nvcc_pid=$!

if [ "${DECODE_TESTS:-1}" = 1 ]; then
    TB_TEST_QUICK=1 step test_backend 100 build-cuda/tests/cuda/test_backend
    grep -E "rope_append|attention_at|add_rmsnorm|linear_swiglu|linears|graph" "$OUT/test_backend.log" | head -60 | tee -a "$S"
    grep -E "FAIL|checks" "$OUT/test_backend.log" | tail -8 | tee -a "$S"
    step test_model_cuda 120 build-cuda/tests/cuda/test_model_cuda
    grep -E "graph|KV-cache|FAIL|passed" "$OUT/test_model_cuda.log" | tee -a "$S"
else
    log "tests: skipped (DECODE_TESTS=0)"
fi

# the models (bench_7b.sh's decode rows make the same ones)
DL=${BENCH_DECODE_LAYERS:-8}
if [ ! -e $W/mD/config.json ] || [ ! -e $W/pD/model.tbm ]; then
    sed "s/\"num_hidden_layers\": 32/\"num_hidden_layers\": $DL/" examples/configs/mistral-7b.json > $W/mD.json
    mkdir -p $W/pD
    step synth 60 $B/tb-synth $W/mD.json -o $W/mD --quiet --force
    step prune-2:4 200 bash -c "$B/tb-score -m $W/mD --method magnitude -o $W/sD.st --quiet &&
        $B/tb-nm -s $W/sD.st --pattern 2:4 -o $W/kD.st --quiet && rm -f $W/sD.st &&
        $B/tb-pack -m $W/mD --masks $W/kD.st -o $W/pD/model.tb --quiet &&
        $B/tb-merge -m $W/mD -o $W/pD/model.tbm $W/pD/model.tb --quiet"
else
    log "models: reused $W/mD and $W/pD"
fi
wait $nvcc_pid
GBS=$($W/copybw 2>/dev/null)
[ -n "$GBS" ] || { GBS=4264.9; log "copy rate: not measured ($(tail -1 $W/copybw.log)); 4264.9 GB/s from bench_7b 2026-12-02 13:12"; }
log "copy rate (device to device, read + write): $GBS GB/s"
# bytes a decode step reads (what each model's step streams: step_bytes.py)
BYTES_dense=$(python3 bench/gpu/step_bytes.py $W/mD)
BYTES_sp24=$(python3 bench/gpu/step_bytes.py $W/mD $W/pD/*.tb)
log "bytes a step reads: dense $BYTES_dense, 2:4 $BYTES_sp24 (ratio $(awk -v a=$BYTES_dense -v b=$BYTES_sp24 'BEGIN{printf "%.3f", a/b}'))"

for m in "dense $W/mD" "sp24 $W/pD/model.tbm"; do
    set -- $m
    label=$1 model=$2
    eval "bytes=\$BYTES_$label"
    for g in 0 1; do
        for r in $(seq 1 $REPS); do
            name=run-$label-graph$g-$r
            # the text (stdout) apart from -v's lines (stderr, the log)
            TB_CUDA_GRAPH=$g step $name 90 bash -c "$B/tb-run -v -m $model --prompt The -n 128 --device $DEV > $W/$name.txt" 
            tps=$(gen_rate "$OUT/$name.log")
            grep -h "decode:" "$OUT/$name.log" | head -2 | sed 's/^/    /' | tee -a "$S"
            [ -n "$tps" ] && log "$(decode_line "$(printf '%-5s graph %d rep %d:' $label $g $r)" $tps $bytes $GBS)"
        done
        if ! cmp -s $W/run-$label-graph$g-1.txt $W/run-$label-graph0-1.txt; then
            log "  MISMATCH: $label generated text with TB_CUDA_GRAPH=$g differs from TB_CUDA_GRAPH=0"
            fail=1
        fi
    done
    cmp -s $W/run-$label-graph1-1.txt $W/run-$label-graph0-1.txt && log "  $label: generated text identical with and without the graph ($(wc -c < $W/run-$label-graph1-1.txt) bytes)"
    head -c 300 $W/run-$label-graph1-1.txt | tr '\n' ' ' | sed 's/^/    text: /' | tee -a "$S"; echo | tee -a "$S"
done

if [ $((DEADLINE - SECONDS)) -gt 90 ]; then
    f0=$fail # the profile informs; it does not decide the check
    step decode_profile $((DEADLINE - SECONDS - 10)) bash bench/gpu/decode_profile.sh
    fail=$f0
else
    log "decode_profile: skipped ($((DEADLINE - SECONDS)) s left)"
fi
log "decode_check: $([ $fail -eq 0 ] && echo passed || echo FAILED) in $SECONDS s"
exit $fail
