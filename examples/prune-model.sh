#!/bin/sh
# Prune an HF Llama/Mistral checkpoint with tensorbit's best defaults.
#   examples/prune-model.sh MODEL_DIR OUT_DIR [PATTERN] [CALIB]
# PATTERN: 2:4 (default), 4:8, ... or an unstructured fraction such as 0.5.
# CALIB: calibration text (default: the bundled examples/data/calib.txt) or a
# token file (safetensors input_ids). Leaves OUT_DIR/model.tbm and every
# intermediate file (see examples/Makefile); rerunning resumes.
# Environment: TB (tools directory), JOBS (make -j, default 2), and any
# variable of examples/Makefile (SEQUENTIAL, METHOD, SOLVER, COMPENSATE, ...).
set -eu
if [ $# -lt 2 ] || [ $# -gt 4 ]; then
    echo "usage: $0 MODEL_DIR OUT_DIR [PATTERN] [CALIB]" >&2
    exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
model=$1 out=$2 pattern=${3:-2:4} calib=${4:-}
[ -d "$model" ] || { echo "prune-model: $model: not a directory" >&2; exit 3; }
set -- -f "$here/Makefile" MODEL="$model" OUT="$out" PATTERN="$pattern"
[ -n "$calib" ] && set -- "$@" CALIB="$calib"
start=$(date +%s)
make --no-print-directory -j "${JOBS:-2}" "$@"
echo "prune-model: $out/model.tbm ($pattern) in $(($(date +%s) - start)) s"
