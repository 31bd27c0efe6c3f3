#!/bin/sh
# step.sh MAKE_ARG... : one Slurm job of the tensorbit pipeline (submit.sh).
#
# Runs `make -f examples/Makefile MAKE_ARG...` in the job: the same rules,
# commands and files as a single-machine run, so the result is the same bit
# for bit and a rerun resumes. In a job array, @L@ in an argument is the
# array index (the layer). GPUs come from the job's --gres: Slurm sets
# CUDA_VISIBLE_DEVICES and the tools use the first device they see.
set -eu
here=${TB_SLURM_DIR:-$(dirname "$0")}
i=${SLURM_ARRAY_TASK_ID:-}
n=$#
while [ "$n" -gt 0 ]; do
    a=$1
    shift
    case $a in *@L@*) [ -n "$i" ] || { echo "step.sh: @L@ outside a job array" >&2; exit 1; }
        a=$(printf '%s' "$a" | sed "s/@L@/$i/g") ;;
    esac
    set -- "$@" "$a"
    n=$((n - 1))
done
echo "step.sh: job ${SLURM_JOB_ID:-?}${i:+ task $i} on $(hostname): make $*" >&2
exec make --no-print-directory -f "$here/../Makefile" "$@"
