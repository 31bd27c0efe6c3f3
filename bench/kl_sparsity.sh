#!/bin/sh
# KL(dense || pruned) against sparsity for tensorbit, SparseGPT and Wanda on
# one model, every point by bench/quality.sh (sequential pruning on the
# reference 128 x 512 calibration windows, tb-run --compare over the
# WikiText-2 protocol windows), then bench/kl_plot.py draws the SVG from
# bench/results/quality.txt.
#   bench/kl_sparsity.sh [PATTERNS]   default "0.3 0.4 0.5 0.6 0.7 2:4 4:8"
# Recipes (RECIPES, default "wanda sparsegpt tensorbit"; "anchor" is optional):
#   wanda      Wanda scores, per-row (unstructured) or N:M top-N masks, no update
#   sparsegpt  SparseGPT's column sweep (re-chooses the keep bits), no training
#   tensorbit  examples/prune-model.sh's default recipe; TB_RECIPE="VAR=VALUE ..."
#              overrides it (e.g. TB_RECIPE="RECON_STEPS=300 DISTILL_STEPS=0" for
#              a cheaper curve: the plot's legend then says so)
#   anchor     arXiv 2510.14444's recipe through our tools: SparseGPT, 1000
#              tb-recon steps per layer (masks fixed), 300 tb-distill steps
# Environment: as bench/quality.sh (MODEL, CALIB, EVAL_WINDOWS, TB_BIN,
# THREADS); SKIP_DONE=1 skips the points quality.txt already holds for this
# model on the same evaluation windows (resume an interrupted curve); OUT_SVG (default
# bench/results/kl-sparsity.svg). Each tensorbit point costs a full default
# run (~260 s on a quiet 2-core box) plus the comparison (~170 s); the
# others cost the comparison and under a minute of pruning.
set -eu
cd "$(dirname "$0")/.."
patterns=${1:-0.3 0.4 0.5 0.6 0.7 2:4 4:8}
mname=$(basename "${MODEL:-tests/data/tiny-llama-6m}")
svg=${OUT_SVG:-bench/results/kl-sparsity.svg}
# a point is done when quality.txt has it for this model on the same windows
done_already() {
    [ "${SKIP_DONE:-0}" = 1 ] && [ -f bench/results/quality.txt ] || return 1
    if [ -n "${EVAL_WINDOWS:-}" ]; then
        grep -q "^[^ ]* $1 $mname .*\[--max-windows $EVAL_WINDOWS\]: kl: " bench/results/quality.txt
    else
        grep "^[^ ]* $1 $mname .*kl: " bench/results/quality.txt | grep -qv -- "--max-windows"
    fi
}
for p in $patterns; do
    tag=$(echo "$p" | tr ':' '-')
    for r in ${RECIPES:-wanda sparsegpt tensorbit}; do
        name=ks-$r-$tag
        if done_already "$name"; then echo "kl_sparsity: $name done, skipped"; continue; fi
        case $r in
        wanda) bench/quality.sh "$name" PATTERN="$p" COMPENSATE=none RECON_STEPS=0 DISTILL_STEPS=0 ;;
        sparsegpt) bench/quality.sh "$name" PATTERN="$p" COMPENSATE=sparsegpt RECON_STEPS=0 DISTILL_STEPS=0 ;;
        # shellcheck disable=SC2086 # TB_RECIPE is a list of VAR=VALUE words
        tensorbit) PRUNER=prune-model bench/quality.sh "$name" PATTERN="$p" ${TB_RECIPE:-} ;;
        anchor) bench/quality.sh "$name" PATTERN="$p" COMPENSATE=sparsegpt RECON_STEPS=1000 DISTILL_STEPS=300 ;;
        *) echo "kl_sparsity: unknown recipe '$r'" >&2; exit 1 ;;
        esac
    done
done
python3 bench/kl_plot.py bench/results/quality.txt "$svg" "$mname" "${EVAL_WINDOWS:-all}"
