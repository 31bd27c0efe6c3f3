#!/bin/sh
# Quality of a pruning recipe: prune the bundled tiny-llama-6m with
# examples/Makefile settings and measure WikiText-2 perplexity by the protocol
# (all 785 windows) and the fidelity to the dense model on the same windows
# (tb-run --compare: mean KL, top-1 agreement), appending one line to
# bench/results/quality.txt.
#   bench/quality.sh NAME [VAR=VALUE ...]     e.g.
#   bench/quality.sh sparsegpt-seq PATTERN=2:4 COMPENSATE=sparsegpt
# Calibration: the reference 128 x 512 windows (tests/data/.../calib-128x512),
# the set the peer baselines of PROTOCOL.md used. Text: examples/data.
set -eu
cd "$(dirname "$0")/.."
name=$1
shift
bin=$(cd "${TB_BIN:-build/bin}" && pwd)
model=tests/data/tiny-llama-6m
out=bench/results/q-$name
mkdir -p bench/results
rm -rf "$out"
t0=$(date +%s)
make --no-print-directory -s -f examples/Makefile MODEL="$model" OUT="$out" TB="$bin" \
    CALIB="$model/calib-128x512.safetensors" "$@" >"$out.log" 2>&1
t1=$(date +%s)
# perplexity and fidelity to the dense model (KL, top-1) on the same windows
fid=$("$bin/tb-run" -m "$out/model.tbm" --compare "$model" --ppl examples/data/wikitext2-test.txt --quiet \
    --threads "${THREADS:-2}" | tr '\n' ' ')
line="$(date +%F) $name [$*]: $fid(prune $((t1 - t0)) s)"
echo "$line"
echo "$line" >>bench/results/quality.txt
