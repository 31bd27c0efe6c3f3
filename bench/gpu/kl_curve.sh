#!/bin/bash
# kl_curve.sh - on the GPU machine, in one device call of about 6 minutes:
# issue 17's KL-against-sparsity figure, every point of bench/kl_sparsity.sh
# (Wanda, SparseGPT and the default recipe at 30-70% unstructured, 2:4, 4:8)
# on tiny-llama-6m with DEVICE=cuda (every heavy stage and the comparison on
# the GPU, the comparison in f32), scored on the first 128 protocol windows.
# The quality lines go to $OUT/quality.txt (commit them as
# bench/figures/kl-sparsity.txt) and the figure to $OUT/kl-sparsity.svg.
#   run: bash bench/gpu/kl_curve.sh    carry: the CUDA build tarball (.devwork/build.tar.xz), .devwork/kit
# KL_RECIPES (default "wanda sparsegpt tensorbit"), KL_PATTERNS (kl_sparsity.sh's
# default) narrow it; TB_REV names the commit (the device's copy has no .git).
set -u
DEADLINE=${DEADLINE:-540}
. bench/gpu/lib.sh kl_curve
. bench/gpu/devkit-env.sh .devwork/kit
[ -d "${TB_BIN:-build-cuda/bin}" ] || tar -xJf .devwork/build.tar.xz
log "kl_curve: $(date -u +%F' '%T) UTC, $(nvidia-smi --query-gpu=name --format=csv,noheader), $(nproc) host cores, build ${TB_REV:-?}"
export DEVICE=${KL_DEVICE:-cuda} EVAL_WINDOWS=128 THREADS=$(nproc) TB_BIN=${TB_BIN:-$PWD/build-cuda/bin} SKIP_DONE=1
export RECIPES=${KL_RECIPES:-wanda sparsegpt tensorbit} OUT_SVG=$OUT/kl-sparsity.svg
# the points in the order that fills the figure soonest (baselines are seconds
# each, a default-recipe point ~30 s); one step per pattern so a cut run keeps
# what it finished
for p in ${KL_PATTERNS:-2:4 0.5 0.3 0.7 4:8 0.4 0.6}; do
    step "points-${p/:/-}" 240 bench/kl_sparsity.sh "$p"
    cp bench/results/quality.txt "$OUT/quality.txt" 2>/dev/null
    grep -h "kl:" "$OUT/points-${p/:/-}.log" | sed 's/^.* \(ks-[^ ]*\) .*kl: \([0-9.]*\) top1: \([0-9.]*\).* ppl: \([0-9.]*\).*(prune \([0-9]*\) s.*/\1 kl \2 top1 \3 ppl \4 prune \5 s/' |
        tee -a "$TB_LOG_FILE"
done
python3 bench/kl_plot.py bench/results/quality.txt "$OUT/kl-sparsity.svg" tiny-llama-6m 128 && log "kl_curve: figure written"
cat "$OUT/summary.txt"
log "kl_curve: done in $SECONDS s"
