#!/bin/bash
# bench_7b.sh - on the GPU machine: the GPU backend's stage times on Mistral-7B
# shapes (random bf16 weights from tb-synth), next to the ceilings measured in
# the same run (bench/gpu/cublas_peak.cu). Issue 12's benchmark table:
#   - Gram accumulation of one layer over 128 x 2048 tokens (tb-fisher --stats gram --layers 0:1)
#   - the SparseGPT solve of all 7 weights of a layer (tb-pack --compensate sparsegpt)
#   - 1000 tb-recon steps on one layer (T = 2048 windows)
#   - tb-run --ppl prefill throughput of the 32-layer model, 2048-token windows
#   - decode (issue 13): tb-run generation tokens/s at batch 1, dense vs packed
#     2:4 (magnitude masks: which weights are kept does not change the speed),
#     on a BENCH_DECODE_LAYERS-layer model (default 8: scoring, masking and
#     packing all 32 layers on the device's CPU would take most of a device
#     call), beside the weights' bytes (the bound of a memory-bound decode is
#     dense bytes / 2:4 bytes) and the same models' prefill (--ppl, 2048-token
#     windows; the 2:4 model runs its dense copies there)
# Every step is bounded by `timeout`; results go to $OUT/bench_7b.txt.
#   BENCH_LAYERS (default 32): layers of the whole-model checkpoint;
#   BENCH_F32=1 adds the f32-precision runs; BENCH_ONLY=decode runs only the decode rows.
set -u
. bench/gpu/lib.sh bench_7b
. bench/gpu/devkit-env.sh .devwork/kit
B=$PWD/build-cuda/bin
W=/tmp/b7
mkdir -p $W
log "bench_7b: $(date -u +%F' '%T) UTC, $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
nvcc -O2 -gencode=arch=compute_90,code=sm_90 bench/gpu/cublas_peak.cu -lcublas -o $W/cublas_peak 2>&1 | tail -2
timeout 120 $W/cublas_peak 2048 2>&1 | tee -a "$OUT/bench_7b.txt"

run() { # label command...: wall time, peak GPU memory (nvidia-smi every 100 ms), the tool's last words
    local t0=$(stamp)
    gpu_mem_start
    timeout 300 "${@:2}" > $W/last.log 2>&1
    local rc=$?
    local peak=$(gpu_mem_peak)
    log "$1: $(since $t0) s, peak GPU memory $peak MiB (exit $rc) $(tail -c 300 $W/last.log | tr '\n' ' ')"
}

decode_rows() {
    local DL=${BENCH_DECODE_LAYERS:-8}
    sed "s/\"num_hidden_layers\": 32/\"num_hidden_layers\": $DL/" examples/configs/mistral-7b.json > $W/mD.json
    local t0=$(stamp)
    $B/tb-synth $W/mD.json -o $W/mD --quiet --force
    log "synth $DL layers: $(since $t0) s"
    t0=$(stamp)
    mkdir -p $W/pD
    $B/tb-score -m $W/mD --method magnitude -o $W/sD.st --quiet &&
        $B/tb-nm -s $W/sD.st --pattern 2:4 -o $W/kD.st --quiet && rm -f $W/sD.st &&
        $B/tb-pack -m $W/mD --masks $W/kD.st -o $W/pD/model.tb --quiet &&
        $B/tb-merge -m $W/mD -o $W/pD/model.tbm $W/pD/model.tb --quiet
    local rc=$?
    log "2:4 by magnitude (score, masks, pack, merge), $DL layers: $(since $t0) s (exit $rc)"
    log "weights bytes: dense $(du -cb $W/mD/*.safetensors | tail -1 | cut -f1), packed 2:4 $(du -cb $W/pD/*.tb | tail -1 | cut -f1) (a memory-bound decode is at most their ratio faster)"
    for m in "dense $W/mD" "2:4 $W/pD/model.tbm"; do
        set -- $m
        run "decode $1, $DL layers, 'The' + 128 tokens, bf16" bash -c "$B/tb-run -v -m $2 --prompt The -n 128 --device cuda >/dev/null"
        grep -h "generation:" $W/last.log | tee -a "$OUT/bench_7b.txt"
        run "prefill $1, $DL layers, 8 x 2048 tokens, bf16" $B/tb-run -v -m $2 --ppl examples/data/wikitext2-test.txt --seq-len 2048 --max-windows 8 --device cuda
    done
}
if [ "${BENCH_ONLY:-}" = decode ]; then
    decode_rows
    log "bench_7b: done"
    exit 0
fi

# a one-layer Mistral-7B-shaped checkpoint, and 128 x 2048 random token windows
sed 's/"num_hidden_layers": 32/"num_hidden_layers": 1/' examples/configs/mistral-7b.json > $W/m1.json
t0=$(stamp); $B/tb-synth $W/m1.json -o $W/m1 --quiet --force; log "synth 1 layer: $(since $t0) s"
python3 - <<PY
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(0)
save_file({"input_ids": rng.integers(0, 32000, size=(128, 2048), dtype=np.int32)}, "$W/tok.st")
PY
run "Gram, layer 0, 128x2048 tokens, bf16" $B/tb-fisher -v -m $W/m1 -t $W/tok.st --stats gram --layers 0:1 --device cuda -o $W/g.fisher
[ -n "${BENCH_F32:-}" ] && run "Gram, layer 0, 128x2048 tokens, f32" $B/tb-fisher -v -m $W/m1 -t $W/tok.st --stats gram --layers 0:1 --device cuda --precision f32 -o $W/g32.fisher
run "wanda scores" $B/tb-score -v -m $W/m1 -f $W/g.fisher --method wanda --tensors 'model.layers.0.*' -o $W/s.st
run "2:4 masks" $B/tb-nm -v -s $W/s.st --pattern 2:4 -o $W/k.st
run "SparseGPT, 7 weights, GPU" $B/tb-pack -v -m $W/m1 --masks $W/k.st -f $W/g.fisher --layers 0:1 --compensate sparsegpt --device cuda -o $W/p.tb
grep -h "s)" $W/last.log | head -12 | tee -a "$OUT/bench_7b.txt"
run "recon 1000 steps, bf16, 16 windows x 2048" $B/tb-recon -v -m $W/m1 --shard $W/p.tb --layer 0 -t $W/tok.st --max-windows 16 --steps 1000 --device cuda -o $W/r.tb
[ -n "${BENCH_F32:-}" ] && run "recon 100 steps, f32, 16 windows x 2048" $B/tb-recon -v -m $W/m1 --shard $W/p.tb --layer 0 -t $W/tok.st --max-windows 16 --steps 100 --device cuda --precision f32 -o $W/r32.tb

L=${BENCH_LAYERS:-32}
sed "s/\"num_hidden_layers\": 32/\"num_hidden_layers\": $L/" examples/configs/mistral-7b.json > $W/mL.json
t0=$(stamp); $B/tb-synth $W/mL.json -o $W/mL --quiet --force; log "synth $L layers: $(since $t0) s"
run "tb-run --ppl $L layers, 8 x 2048 tokens, bf16" $B/tb-run -v -m $W/mL --ppl examples/data/wikitext2-test.txt --seq-len 2048 --max-windows 8 --device cuda
[ -n "${BENCH_F32:-}" ] && run "tb-run --ppl $L layers, 2 x 2048 tokens, f32" $B/tb-run -v -m $W/mL --ppl examples/data/wikitext2-test.txt --seq-len 2048 --max-windows 2 --device cuda --precision f32
decode_rows
nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tee -a "$OUT/bench_7b.txt"
log "bench_7b: done"
