#!/bin/sh
# gpu-slot.sh LOCK_DIR GPUS CMD [ARG...]: run CMD holding one GPU of GPUS.
#
# GPUS is a comma-separated list of device ids (0,1). Each id has a lock file
# LOCK_DIR/gpu.<id>.lock; the first free one (flock, so a crashed step frees
# its GPU) is held while CMD runs with TB_GPU=<id> in its environment (the
# tensorbit tools' default device). If every GPU is busy, wait for one.
# With TB_GPU_LOG set, "start|end <unix time> gpu=<id> pid=<pid> <CMD>"
# lines are appended to it, the measured timeline of a run.
# Used by examples/Makefile (GPUS=...); the exit status is CMD's.
set -eu
if [ $# -lt 3 ]; then
    echo "usage: gpu-slot.sh LOCK_DIR GPUS CMD [ARG...]" >&2
    exit 1
fi
dir=$1 gpus=$2
shift 2
command -v flock >/dev/null 2>&1 || { echo "gpu-slot.sh: flock (util-linux) not found" >&2; exit 3; }
for g in $(echo "$gpus" | tr ',' ' ') ''; do
    [ -n "$g" ] || [ -n "$gpus" ] || { echo "gpu-slot.sh: GPUS is empty" >&2; exit 1; }
    case $g in *[!0-9]*) echo "gpu-slot.sh: '$g' in GPUS=$gpus is not a device id" >&2; exit 1 ;; esac
done
mkdir -p "$dir"
log() { [ -z "${TB_GPU_LOG:-}" ] || echo "$1 $(date +%s.%N) gpu=$2 pid=$$ $3" >>"$TB_GPU_LOG"; }
while :; do
    for g in $(echo "$gpus" | tr ',' ' '); do
        exec 9>>"$dir/gpu.$g.lock"
        if flock -n 9; then
            log start "$g" "$*"
            rc=0
            TB_GPU=$g "$@" 9>&- || rc=$?
            log end "$g" "$*"
            exit $rc
        fi
        exec 9>&-
    done
    sleep 0.2
done
