#!/bin/bash
# stages_small.sh - on the GPU machine: each heavy stage's wall time on the
# host CPU (all cores) and on the GPU, for both shipped models, in one run.
#   tiny-llama-6m from tests/data; tiny-mistral-10m from .devwork/mistral
#   (bench/gpu/shared.sh's model copy), skipped when absent.
set -u
. bench/gpu/lib.sh stages_small
. bench/gpu/devkit-env.sh .devwork/kit
B=$PWD/build-cuda/bin
W=/tmp/ss
mkdir -p $W
NT=$(nproc)
timed() { # label cmd...: wall seconds
    local t0=$(stamp)
    timeout 240 "${@:2}" > $W/last.log 2>&1
    local rc=$?
    log "$(printf '%-58s %8.2f s (exit %d)' "$1" "$(since $t0)" $rc) $(grep -o 'ppl: [0-9.]*' $W/last.log | head -1)"
}
log "stages_small: $(date -u +%F' '%T) UTC, $(nvidia-smi --query-gpu=name --format=csv,noheader), $NT host cores"
for m in ${STAGES_MODELS:-llama mistral}; do
    if [ $m = llama ]; then M=tests/data/tiny-llama-6m C=$M/calib-128x512.safetensors
    else M=.devwork/mistral/tiny-mistral-10m C=.devwork/mistral/calib-tiny-mistral-10m-128x512.safetensors; fi
    [ -d $M ] || { log "$m: skipped ($M absent)"; continue; }
    for d in cpu cuda; do
        timed "$m $d: tb-fisher Fisher + Gram, 128 x 512" $B/tb-fisher -m $M -t $C --device $d --threads $NT -o $W/$m-$d.fisher --quiet
        timed "$m $d: tb-run --ppl, WikiText-2 (protocol)" $B/tb-run -m $M --ppl examples/data/wikitext2-test.txt --device $d --threads $NT --quiet
    done
    $B/tb-fisher -m $M -t $C --stats gram --layers 0:1 -o $W/$m-g.fisher --quiet --threads $NT
    $B/tb-score -m $M -f $W/$m-g.fisher --method wanda --tensors 'model.layers.0.*' -o $W/$m-s.st --quiet
    $B/tb-nm -s $W/$m-s.st --pattern 2:4 -o $W/$m-k.st --quiet
    $B/tb-pack -m $M --masks $W/$m-k.st -f $W/$m-g.fisher --layers 0:1 --compensate recon -o $W/$m-p.tb --quiet --threads $NT
    for d in cpu cuda; do
        timed "$m $d: tb-recon layer 0, 300 steps, 128 windows" $B/tb-recon -m $M --shard $W/$m-p.tb --layer 0 -t $C --steps 300 --device $d --threads $NT -o $W/$m-r-$d.tb --quiet
    done
done
log "stages_small: done"
