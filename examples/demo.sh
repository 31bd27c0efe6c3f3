#!/bin/sh
# make demo: prune the bundled tiny-llama-6m to 2:4 and compare perplexity.
#   examples/demo.sh [BIN_DIR]
# Perplexity is measured on the first DEMO_WINDOWS (default 64) windows of 512
# tokens of WikiText-2 test, by the protocol of README.md; DEMO_WINDOWS=0 runs
# all 785 (about 4 minutes per model on 2 cores).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "${1:-$here/../build/bin}" && pwd)
model=$here/../tests/data/tiny-llama-6m
out=${DEMO_OUT:-$here/../build/demo}
windows=${DEMO_WINDOWS:-64}
text=$here/data/wikitext2-test.txt
cap=""
[ "$windows" -gt 0 ] && cap="--max-windows $windows"

# the bundled windows are the calibration set of the reference baselines
TB=$bin "$here/prune-model.sh" "$model" "$out" 2:4 "$model/calib-128x512.safetensors"
# the table's columns: weight, kind, pattern, sparsity, conformity, ...
"$bin/tb-inspect" --nm 2:4 "$out/model.tbm" | awk '
    $2 == "nm" || $2 == "masked" { n++; if ($5 == "100.00%") ok++ }
    /^pruned weights:/ { summary = $0 }
    END { printf "demo: %d of %d pruned weights are 2:4 in every group; %s\n", ok, n, summary }'

dense=$("$bin/tb-run" -m "$model" --ppl "$text" $cap --quiet | tail -n 1)
pruned=$("$bin/tb-run" -m "$out/model.tbm" --ppl "$text" $cap --quiet | tail -n 1)
echo "demo: WikiText-2 test, ${windows:-all} windows of 512 tokens"
echo "demo: dense  tiny-llama-6m  $dense"
echo "demo: pruned tiny-llama-6m  $pruned  (2:4, $out/model.tbm)"
