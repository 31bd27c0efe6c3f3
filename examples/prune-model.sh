#!/bin/sh
# Prune an HF Llama/Mistral checkpoint with tensorbit's best measured recipe.
#   examples/prune-model.sh MODEL_DIR OUT_DIR [PATTERN] [CALIB] [options]
# PATTERN: 2:4 (default), 4:8, ... or an unstructured fraction such as 0.5.
# CALIB: calibration text (default: the bundled examples/data/calib.txt) or a
# token file (safetensors input_ids).
# options:
#   --calib-tokens FILE  calibration token windows (safetensors input_ids),
#                        e.g. the reference 128 x 512 windows
#   --fast               the cheap one-shot recipe: Wanda masks and the exact
#                        per-row least-squares compensation (SparseGPT's above
#                        RECON_MAX_PARAMS), no training
#   --device D           cpu, cuda or auto for tb-fisher, tb-recon and tb-distill
#                        (DEVICE)
#   --gen-windows N      tb-distill also trains on N windows the dense model
#                        writes itself: each continues the first 32 tokens of a
#                        calibration window with its own samples (temperature 1;
#                        tb-run --sample-windows). No other text is used.
#                        (GEN_WINDOWS; default 1024; 0: calibration windows only)
# The default recipe (BENCHMARKS.md, "Quality past local reconstruction"):
# layer by layer on the pruned model's own hidden states, Wanda scores, top-N
# masks, per-row least-squares compensation (tb-pack --compensate auto), then
# tb-recon trains each layer against the dense layer for 1000 steps with its
# N:M masks learned (SR-STE: --learn-masks 10 --mask-decay 20; N:M patterns),
# then tb-distill trains the whole model's kept weights against the dense
# model's logits for 1000 steps (DISTILL_STEPS), on the calibration windows and
# 1024 windows the dense model writes from their first 32 tokens (the
# calibration windows alone are memorized). tiny-llama-6m 2:4, full protocol
# (H200 sweep): KL 0.962 to the dense model, ppl 116.8; 256 windows and 300
# steps (the previous default): 1.101 / 143.3; no generated windows: 1.183 /
# 179.7 (SparseGPT: 2.163 / 426.9).
# Leaves OUT_DIR/model.tbm and every intermediate file (see examples/Makefile);
# rerunning resumes. Environment: TB (tools directory), JOBS (make -j,
# default 2), and any variable of examples/Makefile (RECON_STEPS, RECON_ARGS,
# DISTILL_STEPS, METHOD, COMPENSATE, ...), which override the recipe.
set -eu
usage() { echo "usage: $0 MODEL_DIR OUT_DIR [PATTERN] [CALIB] [--calib-tokens FILE] [--fast] [--device D] [--gen-windows N]" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
model="" out="" pattern="" calib="" fast=0 device="" gen=""
while [ $# -gt 0 ]; do
    case $1 in
    --calib-tokens) [ $# -ge 2 ] || usage; calib=$2; shift 2 ;;
    --calib-tokens=*) calib=${1#*=}; shift ;;
    --fast) fast=1; shift ;;
    --device) [ $# -ge 2 ] || usage; device=$2; shift 2 ;;
    --device=*) device=${1#*=}; shift ;;
    --gen-windows) [ $# -ge 2 ] || usage; gen=$2; shift 2 ;;
    --gen-windows=*) gen=${1#*=}; shift ;;
    -h|--help) sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "prune-model: unknown option '$1'" >&2; usage ;;
    *) if [ -z "$model" ]; then model=$1; elif [ -z "$out" ]; then out=$1
       elif [ -z "$pattern" ]; then pattern=$1; elif [ -z "$calib" ]; then calib=$1; else usage; fi; shift ;;
    esac
done
[ -n "$model" ] && [ -n "$out" ] || usage
pattern=${pattern:-2:4}
[ -d "$model" ] || { echo "prune-model: $model: not a directory" >&2; exit 3; }
[ -z "$calib" ] || [ -f "$calib" ] || { echo "prune-model: $calib: no such file" >&2; exit 3; }
set -- -f "$here/Makefile" MODEL="$model" OUT="$out" PATTERN="$pattern"
[ -n "$calib" ] && set -- "$@" CALIB="$calib"
[ -n "$device" ] && set -- "$@" DEVICE="$device"
if [ $fast = 1 ]; then
    set -- "$@" RECON_STEPS=0 DISTILL_STEPS=0
else
    # learned masks: N:M patterns (on any device)
    learn=""
    case $pattern in *:*) learn="--learn-masks 10 --mask-decay 20" ;; esac
    # environment values (RECON_STEPS=... examples/prune-model.sh ...) win over the recipe
    set -- "$@" RECON_STEPS="${RECON_STEPS:-1000}" RECON_ARGS="${RECON_ARGS-$learn}" DISTILL_STEPS="${DISTILL_STEPS:-1000}"
    # the option, else the environment, else the recipe's default
    set -- "$@" GEN_WINDOWS="${gen:-${GEN_WINDOWS:-1024}}"
fi
start=$(date +%s)
make --no-print-directory -j "${JOBS:-2}" "$@"
echo "prune-model: $out/model.tbm ($pattern$([ $fast = 1 ] && echo ", fast")) in $(($(date +%s) - start)) s"
