#!/bin/sh
# KL to the dense model against sparsity for tensorbit, SparseGPT and Wanda
# (our reproductions through examples/Makefile, sequential, the reference
# 128 x 512 calibration windows), then bench/kl_plot.py draws
# bench/results/kl-sparsity.svg from bench/results/quality.txt.
#   bench/kl_sparsity.sh [PATTERNS]   default "0.3 0.4 0.5 0.6 0.7 2:4 4:8"
# Environment: as bench/quality.sh (MODEL, EVAL_WINDOWS, TB_BIN, THREADS);
# RECIPES (default "wanda sparsegpt tensorbit"); TB_RECIPE: the examples/Makefile
# variables of the tensorbit curve (default: its defaults).
set -eu
cd "$(dirname "$0")/.."
patterns=${1:-0.3 0.4 0.5 0.6 0.7 2:4 4:8}
for p in $patterns; do
    for r in ${RECIPES:-wanda sparsegpt tensorbit}; do
        tag=$(echo "$p" | tr ':' '-')
        case $r in
        wanda) bench/quality.sh "ks-wanda-$tag" PATTERN="$p" COMPENSATE=none RECON_STEPS=0 DISTILL_STEPS=0 ;;
        sparsegpt) bench/quality.sh "ks-sparsegpt-$tag" PATTERN="$p" COMPENSATE=sparsegpt RECON_STEPS=0 DISTILL_STEPS=0 ;;
        tensorbit) bench/quality.sh "ks-tensorbit-$tag" PATTERN="$p" ${TB_RECIPE:-} ;;
        esac
    done
done
python3 bench/kl_plot.py bench/results/quality.txt bench/results/kl-sparsity.svg
