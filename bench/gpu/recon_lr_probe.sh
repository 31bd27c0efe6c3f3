#!/bin/bash
# recon_lr_probe.sh - on the GPU machine: tb-recon's learning rate at 7B width
# (BACKLOG "tb-recon's learning rate by the weights' scale and width").
#
#   run: bash bench/gpu/recon_lr_probe.sh, carry .devwork/build.tar.xz .devwork/kit
#
# run_7b.sh on a 2-layer cut of the Mistral-7B-shaped checkpoint (the same
# 128 x 2048 calibration tokens, Wanda 2:4 + SparseGPT, KEEP=1 so layer 1's
# packed shard and input stream stay), then layer 1's tb-recon again with
# --lr-rel C for each C in CS, and --lr 1e-3 (the fixed rate that was the
# default until 330adda), 300 steps each as the recipe. Layer 1 stands
# for layers 1..31: the weights are random with one init scale, so every
# layer past 0 starts alike (run_7b-recon-2026-12-03-0701.jsonl: error before
# 0.175-0.183). Writes $OUT/recon_lr_probe.txt, one line per rate with the
# error kept (after / before, on tb-recon's 16 evaluation windows), and
# $OUT/recon_lr_best: the C with the least error kept ("" when no C beat the
# start).
#
# Environment: CS ("0.6 1.25 2.5 5 10"), STEPS (300), W (/tmp/r7probe), OUT
# (/tmp/out), DEVICE (cuda; cpu for a dry run with TB_BIN, CONFIG, WINDOWS,
# SEQLEN as run_7b.sh takes them)
set -u
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
OUT=${OUT:-/tmp/out}
W=${W:-/tmp/r7probe}
CS=${CS:-0.6 1.25 2.5 5 10}
STEPS=${STEPS:-300}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" "$W"
TXT=$OUT/recon_lr_probe.txt
: >"$OUT/recon_lr_best"

OUT=$OUT/probe W=$W LAYERS=2 EXPORT=0 MAKE_VARS="KEEP=1 RECON_STEPS=$STEPS" DEADLINE=${DEADLINE:-300} \
    bash bench/gpu/run_7b.sh >"$W/run_7b.out" 2>&1 ||
    { echo "recon_lr_probe: run_7b.sh failed:" | tee -a "$TXT"; tail -5 "$W/run_7b.out" | tee -a "$TXT"; exit 1; }
if [ -z "${TB_BIN:-}" ]; then
    if [ -x build-cuda/bin/tb-recon ]; then TB_BIN=$here/build-cuda/bin; else TB_BIN=$here/build/bin; fi
fi
KIT=${KIT:-.devwork/kit}
[ -f "$KIT/libs.tar.xz" ] && . bench/gpu/devkit-env.sh "$KIT"
pipe=$W/out
for f in packed.1.tb stream.1.st; do
    [ -f "$pipe/$f" ] || { echo "recon_lr_probe: no $pipe/$f (run_7b.sh did not keep it)" | tee -a "$TXT"; exit 1; }
done
echo "recon_lr_probe: $(date -u +%F' '%T) UTC, $(git rev-parse --short HEAD 2>/dev/null), layer 1 of the Mistral-7B shape, $STEPS steps" | tee -a "$TXT"
# the recipe's own call (tb-recon's default rate), as run_7b.sh logged it
def=$(grep '"layer":1' "$W/recon.jsonl" | tail -1)
echo "the default rate: $(echo "$def" | grep -o '"error_kept":[^,]*'), $(echo "$def" | grep -o '"kept_start":[^,]*')" | tee -a "$TXT"
j=$("$TB_BIN/tb-recon" --device "$DEVICE" -m "$W/model" --shard "$pipe/packed.1.tb" --layer 1 --acts-in "$pipe/stream.1.st" \
    --steps "$STEPS" --lr 1e-3 --json --quiet -o "$W/l1.fixed.tb" 2>>"$W/probe.err")
echo "lr 1e-3: exit $?, $(echo "$j" | grep -o '"error_kept":[^,]*'), $(echo "$j" | grep -o '"kept_start":[^,]*')" | tee -a "$TXT"
rm -f "$W/l1.fixed.tb"
best= bestv=
for c in $CS; do
    j=$("$TB_BIN/tb-recon" --device "$DEVICE" -m "$W/model" --shard "$pipe/packed.1.tb" --layer 1 --acts-in "$pipe/stream.1.st" \
        --steps "$STEPS" --lr-rel "$c" --json --quiet -o "$W/l1.$c.tb" 2>>"$W/probe.err")
    rc=$?
    ek=$(echo "$j" | grep -o '"error_kept":[^,]*' | cut -d: -f2)
    echo "lr-rel $c: exit $rc, error_kept ${ek:-?}, $(echo "$j" | grep -o '"kept_start":[^,]*'), $(echo "$j" | grep -o '"seconds_total":[^,}]*')" | tee -a "$TXT"
    rm -f "$W/l1.$c.tb"
    if [ $rc -eq 0 ] && [ -n "$ek" ] && awk -v e="$ek" -v b="${bestv:-1}" 'BEGIN { exit !(e < b) }'; then
        best=$c bestv=$ek
    fi
done
echo "recon_lr_probe: best C ${best:-none} (error kept ${bestv:-n/a})" | tee -a "$TXT"
echo "$best" >"$OUT/recon_lr_best"
