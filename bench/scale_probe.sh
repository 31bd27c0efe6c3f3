#!/bin/bash
# bench/scale_probe.sh MODEL_DIR WORK_DIR [LAYERS]
#
# Memory and disk of every CPU stage of the default (sequential) recipe on a
# large checkpoint, layer by layer (issue 14; e.g. tb-synth's Mistral-7B
# shape): for layers 0..LAYERS-1 (default 2) it runs, as examples/Makefile
# does, tb-fisher (Gram), tb-score, tb-nm, tb-recon, tb-merge --partial and
# tb-fisher (the stream entering the next layer), then tb-pack with
# COMPENSATE (the long one, last; tb-recon trains on a mask-only pack), after
# tb-tokenize of the calibration windows (CALIB_WINDOWS x CALIB_SEQ tokens,
# default 4 x 128). Each stage's peak RssAnon (anonymous memory: what the
# process itself holds, not the page cache of its mapped inputs) is sampled
# from /proc/PID/status every 0.1 s; its output's size is measured with du.
# Prints one markdown table row per stage; the raw log goes to
# WORK_DIR/probe.log. Variables: TB_BIN (build/bin), COMPENSATE (sparsegpt:
# what COMPENSATE=auto picks above 1e9 parameters), RECON_STEPS (2: the
# memory of tb-recon does not depend on the step count; its seconds per step
# are printed), THREADS (2).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MODEL_DIR WORK_DIR [LAYERS]" >&2; exit 1; }
model=$1 work=$2 nl=${3:-2}
TB=${TB_BIN:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
calib=$(cd "$(dirname "$0")/.." && pwd)/examples/data/calib.txt
comp=${COMPENSATE:-sparsegpt} steps=${RECON_STEPS:-2} thr=${THREADS:-2}
mkdir -p "$work"
log=$work/probe.log

# run LABEL OUTPUT CMD...: peak RssAnon (MiB), wall seconds, output size;
# an output already there is kept (a rerun resumes)
run() {
    local label=$1 outp=$2
    shift 2
    if [ -e "$outp" ]; then
        printf '| %s | (kept) | | %.1f |\n' "$label" "$(echo "$(du -b "$outp" | cut -f1) / 1048576" | bc -l)"
        return
    fi
    echo "== $label: $*" >>"$log"
    local t0 peak=0 kb
    t0=$(date +%s.%N)
    "$@" >>"$log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        kb=$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$kb" ] && [ "$kb" -gt "$peak" ] && peak=$kb
        sleep 0.1
    done
    wait "$pid" || { echo "scale_probe: $label failed (see $log)" >&2; exit 1; }
    local secs size
    secs=$(echo "$(date +%s.%N) - $t0" | bc)
    size=$( [ -e "$outp" ] && du -b "$outp" | cut -f1 || echo 0)
    printf '| %s | %.0f | %.0f | %.1f |\n' "$label" "$(echo "$peak / 1024" | bc -l)" "$secs" \
        "$(echo "$size / 1048576" | bc -l)"
}

echo "| stage | peak RssAnon MiB | wall s | output MiB |"
echo "|---|---|---|---|"
run "tb-tokenize ${CALIB_WINDOWS:-4}x${CALIB_SEQ:-128}" "$work/calib.st" \
    "$TB/tb-tokenize" -m "$model" --bos --windows "${CALIB_WINDOWS:-4}" --seq-len "${CALIB_SEQ:-128}" --quiet \
    -o "$work/calib.st" "$calib"
for ((l = 0; l < nl; l++)); do
    n=$((l + 1))
    if [ $l = 0 ]; then src=(-t "$work/calib.st"); else src=(--acts-in "$work/stream.$l.st"); fi
    run "L$l tb-fisher --stats gram" "$work/gram.$l.fisher" "$TB/tb-fisher" --threads "$thr" -m "$model" "${src[@]}" \
        --layers $l:$n --stats gram --quiet -o "$work/gram.$l.fisher"
    run "L$l tb-score wanda" "$work/scores.$l.st" "$TB/tb-score" -m "$model" -f "$work/gram.$l.fisher" \
        --method wanda --tensors "model.layers.$l.*" --quiet -o "$work/scores.$l.st"
    run "L$l tb-nm 2:4" "$work/masks.$l.st" "$TB/tb-nm" -s "$work/scores.$l.st" --pattern 2:4 --quiet \
        -o "$work/masks.$l.st"
    # tb-recon's memory does not depend on the compensation: it trains on
    # the mask-only shard, so the long SparseGPT probe can come last (tools
    # run quiet as in examples/Makefile: tb-pack skips its output-error
    # reports, 3 x 2 rows cols^2 flops per weight, shown only with -v/--json)
    run "L$l tb-pack none" "$work/packed-none.$l.tb" "$TB/tb-pack" --threads "$thr" -m "$model" \
        --masks "$work/masks.$l.st" --compensate none --layers $l:$n --quiet -o "$work/packed-none.$l.tb"
    run "L$l tb-recon $steps steps" "$work/layer.$l.tb" "$TB/tb-recon" --threads "$thr" -m "$model" \
        --shard "$work/packed-none.$l.tb" --layer $l "${src[@]}" --steps "$steps" --quiet -o "$work/layer.$l.tb"
    run "L$l tb-merge --partial" "$work/partial.$l.tbm" "$TB/tb-merge" --partial -m "$model" --quiet \
        -o "$work/partial.$l.tbm" $(for ((k = 0; k <= l; k++)); do echo "$work/layer.$k.tb"; done)
    run "L$l tb-fisher --acts-out" "$work/stream.$n.st" "$TB/tb-fisher" --threads "$thr" -m "$work/partial.$l.tbm" \
        --base "$model" "${src[@]}" --layers $l:$n --stats none --quiet --acts-out "$work/stream.$n.st"
done
for ((l = 0; l < nl; l++)); do
    run "L$l tb-pack $comp" "$work/packed.$l.tb" "$TB/tb-pack" --threads "$thr" -m "$model" \
        --masks "$work/masks.$l.st" -f "$work/gram.$l.fisher" --compensate "$comp" --layers $l:$((l + 1)) --quiet \
        -o "$work/packed.$l.tb"
done
