#!/bin/sh
# Quality of a pruning recipe: prune a model with examples/Makefile settings
# and measure WikiText-2 perplexity by the protocol and the fidelity to the
# dense model on the same windows (tb-run --compare: mean KL, top-1
# agreement), appending one line to bench/results/quality.txt.
#   bench/quality.sh NAME [VAR=VALUE ...]     e.g.
#   bench/quality.sh sparsegpt-seq PATTERN=2:4 COMPENSATE=sparsegpt
# Environment: MODEL (default the bundled tiny-llama-6m; e.g.
# ../shared/models/tiny-mistral-10m), CALIB (default the model's
# calib-128x512.safetensors beside it, else ../shared/data/calib-NAME-128x512),
# EVAL_WINDOWS (evaluate the first N windows only: a cheaper screen; default
# all), THREADS (2), DEVICE (cpu; cuda: every stage and the comparison on
# the GPU, the comparison in f32 as the CPU's), TB_BIN, START=DIR (copy a finished run's files first, so
# only the stages that differ are rebuilt), PRUNER: make (default,
# examples/Makefile with its defaults and the VAR=VALUE given) or prune-model
# (examples/prune-model.sh's recipe, what a user gets; PATTERN=P picks the
# pattern, the other VAR=VALUE override the recipe through the environment).
# The line records the commit, so a row says which recipe made it.
# Calibration: the reference 128 x 512 windows, the set the peer baselines of
# PROTOCOL.md used. Text: examples/data.
set -eu
cd "$(dirname "$0")/.."
name=$1
shift
bin=$(cd "${TB_BIN:-build/bin}" && pwd)
model=${MODEL:-tests/data/tiny-llama-6m}
mname=$(basename "$model")
calib=${CALIB:-}
[ -n "$calib" ] || { [ -f "$model/calib-128x512.safetensors" ] && calib=$model/calib-128x512.safetensors; } ||
    calib=../shared/data/calib-$mname-128x512.safetensors
out=bench/results/q-$name
mkdir -p bench/results
rm -rf "$out"
if [ -n "${START:-}" ]; then cp -a "$START" "$out" && rm -f "$out/model.tbm"; fi
cap=""
[ -n "${EVAL_WINDOWS:-}" ] && cap="--max-windows $EVAL_WINDOWS"
t0=$(date +%s)
load0=$(cut -d' ' -f1 /proc/loadavg)
case ${PRUNER:-make} in
make)
    make --no-print-directory -s -f examples/Makefile MODEL="$model" OUT="$out" TB="$bin" CALIB="$calib" "$@" \
        >"$out.log" 2>&1 ;;
prune-model)
    pattern=2:4
    for a in "$@"; do case $a in PATTERN=*) pattern=${a#PATTERN=} ;; esac; done
    env TB="$bin" "$@" examples/prune-model.sh "$model" "$out" "$pattern" --calib-tokens "$calib" >"$out.log" 2>&1 ;;
*) echo "quality.sh: PRUNER=$PRUNER: expected make or prune-model" >&2; exit 1 ;;
esac
t1=$(date +%s)
# perplexity and fidelity to the dense model (KL, top-1) on the same windows
dev=""
[ -n "${DEVICE:-}" ] && [ "$DEVICE" != cpu ] && dev="--device $DEVICE --precision f32"
# shellcheck disable=SC2086 # $cap and $dev are option lists
fid=$("$bin/tb-run" -m "$out/model.tbm" --compare "$model" --ppl examples/data/wikitext2-test.txt $cap $dev --quiet \
    --threads "${THREADS:-2}" | tr '\n' ' ')
rev=${TB_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
line="$(date +%F) $name $mname [${PRUNER:+$PRUNER }${dev:+DEVICE=$DEVICE }$*]${cap:+ [$cap]}: $fid(prune $((t1 - t0)) s, load $load0-$(cut -d' ' -f1 /proc/loadavg), $(date +%H:%M), $rev)"
echo "$line"
echo "$line" >>bench/results/quality.txt
