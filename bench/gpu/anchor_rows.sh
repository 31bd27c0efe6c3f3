#!/bin/bash
# anchor_rows.sh - on the GPU machine: issue 17's table rows that compare the
# default recipe with the anchor's recipe run through our tools (arXiv
# 2510.14444: SparseGPT, then 1000 tb-recon steps per layer with the masks
# fixed, then 300 tb-distill steps), over ALL the WikiText-2 protocol windows
# (the measure), on tiny-llama-6m, DEVICE=cuda (comparison in f32).
# Patterns: ANCHOR_PATTERNS (default "0.5 2:4": the 50% row has never run and
# the 2:4 anchor was only measured outside our tools; 4:8 is in BENCHMARKS.md).
# Lines to $OUT/quality.txt (bench/quality.sh's format).
#   run: bash bench/gpu/anchor_rows.sh   carry: the CUDA build tarball, .devwork/kit
set -u
DEADLINE=${DEADLINE:-300}
. bench/gpu/lib.sh anchor_rows
. bench/gpu/devkit-env.sh .devwork/kit
[ -d "${TB_BIN:-build-cuda/bin}" ] || tar -xJf .devwork/build.tar.xz
export DEVICE=${ANCHOR_DEVICE:-cuda} THREADS=$(nproc) TB_BIN=${TB_BIN:-$PWD/build-cuda/bin}
log "anchor_rows: $(date -u +%F' '%T) UTC, $(nvidia-smi --query-gpu=name --format=csv,noheader), build ${TB_REV:-?}"
for p in ${ANCHOR_PATTERNS:-0.5 2:4}; do
    t=${p/:/-}
    step "anchor-$t" 150 bench/quality.sh "a17-anchor-$t" PATTERN="$p" COMPENSATE=sparsegpt RECON_STEPS=1000 DISTILL_STEPS=300
    PRUNER=prune-model step "tensorbit-$t" 150 bench/quality.sh "a17-tensorbit-$t" PATTERN="$p"
    cp bench/results/quality.txt "$OUT/quality.txt" 2>/dev/null
done
grep -h "kl:" "$OUT/quality.txt" | tee -a "$TB_LOG_FILE"
log "anchor_rows: done in $SECONDS s"
