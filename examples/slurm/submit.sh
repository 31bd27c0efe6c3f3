#!/bin/sh
# examples/slurm/submit.sh MODEL_DIR OUT_DIR [PATTERN] [CALIB]
#
# Submit the tensorbit pipeline (examples/Makefile) as Slurm batch jobs. OUT_DIR
# must be on a filesystem every node sees; each job runs make on it for its
# own targets, so the files, commands and result are those of a
# single-machine run, and resubmitting resumes where a run stopped.
#
#   SEQUENTIAL=1 (default): calibration windows (tb-calib), then one job per
#     layer, each after the one before (afterok: layer L+1 is calibrated on
#     the pruned layer L's stream): tb-layer-L makes layer.L.tb and the stream
#     entering L+1; then the merge job (tb-merge) makes model.tbm.
#   SEQUENTIAL=0: the one calibration pass (tb-calib: stats.fisher), a job
#     array over the layers (tb-layers, one task per layer, as many at once
#     as the cluster gives), then the merge job.
#
# Several models or patterns: one submit.sh each; their chains run side by
# side. A failed job cancels the jobs that depend on it
# (--kill-on-invalid-dep); fix and resubmit.
#
# Environment:
#   GRES        the --gres of the GPU jobs (e.g. gpu:1); empty: none (CPU)
#   SBATCH_ARGS more sbatch options for every job (--partition=... --time=...
#               --account=...); sbatch's own SBATCH_* variables work too
#   WAIT=1      wait for the merge job and exit with its status
#   TB, and the examples/Makefile variables PATTERN CALIB WINDOWS SEQLEN SEED
#   METHOD SOLVER COMPENSATE RECON_MAX_PARAMS RECON_STEPS SEQUENTIAL DEVICE
#   KEEP QUIET RECON_ARGS DISTILL_STEPS DISTILL_ARGS: passed to every job's make.
# Logs: OUT_DIR/slurm/<job name>-<job id>.out. Prints the job ids.
set -eu
if [ $# -lt 2 ] || [ $# -gt 4 ]; then
    echo "usage: $0 MODEL_DIR OUT_DIR [PATTERN] [CALIB]" >&2
    exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
command -v sbatch >/dev/null 2>&1 || { echo "submit.sh: sbatch not found (is this a Slurm cluster?)" >&2; exit 3; }
[ -d "$1" ] || { echo "submit.sh: $1: not a directory" >&2; exit 3; }
model=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
[ $# -ge 3 ] && PATTERN=$3
[ $# -ge 4 ] && CALIB=$(cd "$(dirname "$4")" && pwd)/$(basename "$4")
mkdir -p "$out/slurm"

# the make arguments every job gets
set -- MODEL="$model" OUT="$out"
for v in TB PATTERN CALIB WINDOWS SEQLEN SEED METHOD SOLVER COMPENSATE RECON_MAX_PARAMS RECON_STEPS SEQUENTIAL \
    DEVICE KEEP QUIET RECON_ARGS DISTILL_STEPS DISTILL_ARGS; do
    eval "isset=\${$v+x} val=\${$v-}"
    [ -n "$isset" ] && set -- "$@" "$v=$val"
done
layers=$(make --no-print-directory -s -f "$here/../Makefile" "$@" print-layers) ||
    { echo "submit.sh: cannot read the layer count of $model" >&2; exit 2; }
last=$((layers - 1))
gpu=${GRES:+--gres=$GRES}

# the common make arguments as one word list (paths without blanks)
margs=$(printf '%s ' "$@")

# submit NAME DEPENDENCY('' = none) GPU(0|1) [sbatch option...] -- MAKE_TARGET...
# prints the job id; the exit status is sbatch's (with --wait: the job's)
submit() {
    name=$1 dep=$2 opts=""
    [ "$3" = 1 ] && [ -n "${GRES:-}" ] && opts="--gres=$GRES"
    shift 3
    while [ "$1" != "--" ]; do opts="$opts $1"; shift; done
    shift
    case $opts in *--output=*) ;; *) opts="$opts --output=$out/slurm/%x-%j.out" ;; esac
    [ -n "$dep" ] && opts="$opts --dependency=afterok:$dep --kill-on-invalid-dep=yes"
    # shellcheck disable=SC2086 # opts, SBATCH_ARGS and margs are word lists
    r=0
    id=$(sbatch --parsable --job-name="$name" $opts ${SBATCH_ARGS:-} --export=ALL,TB_SLURM_DIR="$here" \
        "$here/step.sh" $margs "$@") || r=$?
    printf '%s\n' "${id%%;*}"
    return $r
}

if [ "${SEQUENTIAL:-1}" = 1 ]; then
    prev=$(submit tb-calib "" 0 -- "$out/calib.st")
    echo "tb-calib $prev"
    for l in $(seq 0 "$last"); do
        targets="$out/layer.$l.tb"
        [ "$l" -lt "$last" ] && targets="$targets $out/stream.$((l + 1)).st"
        # shellcheck disable=SC2086
        prev=$(submit "tb-layer-$l" "$prev" 1 -- $targets)
        echo "tb-layer-$l $prev"
    done
else
    calib=$(submit tb-calib "" 1 -- "$out/stats.fisher")
    echo "tb-calib $calib"
    prev=$(submit tb-layers "$calib" 1 --array="0-$last" --output="$out/slurm/%x-%A_%a.out" -- "$out/layer.@L@.tb")
    echo "tb-layers $prev (array 0-$last)"
fi
if [ "${WAIT:-0}" = 1 ]; then
    r=0
    merge=$(submit tb-merge "$prev" 0 --wait -- "$out/model.tbm") || r=$?
    echo "tb-merge $merge"
    [ "$r" = 0 ] || { echo "submit.sh: the merge job did not succeed (logs in $out/slurm)" >&2; exit 1; }
else
    merge=$(submit tb-merge "$prev" 0 -- "$out/model.tbm")
    echo "tb-merge $merge"
fi
