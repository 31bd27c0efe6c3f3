#!/bin/sh
# Several pruning recipes at once (bench/quality.sh each), JOBS in parallel
# with TB_THREADS threads each, for a many-core machine.
#   JOBS=7 TB_THREADS=2 bench/quality_matrix.sh
# Appends to bench/results/quality.txt; prints it at the end.
set -u
cd "$(dirname "$0")/.."
export TB_THREADS=${TB_THREADS:-2} THREADS=${TB_THREADS:-2}
JOBS=${JOBS:-4}
run() { bench/quality.sh "$@" >/dev/null 2>&1 || echo "quality_matrix: $1 failed" >&2; }
i=0
while read -r name args; do
    [ -z "$name" ] && continue
    # shellcheck disable=SC2086
    run "$name" $args &
    i=$((i + 1))
    [ $((i % JOBS)) -eq 0 ] && wait
done <<'EOF2'
default-2of4 PATTERN=2:4
sparsegpt-2of4 PATTERN=2:4 COMPENSATE=sparsegpt RECON_STEPS=0
sparsegpt-recon300-2of4 PATTERN=2:4 COMPENSATE=sparsegpt
iterative-recon300-2of4 PATTERN=2:4 SOLVER=iterative
default-4of8 PATTERN=4:8
default-50pct PATTERN=0.5
sparsegpt-50pct PATTERN=0.5 COMPENSATE=sparsegpt RECON_STEPS=0
EOF2
wait
cat bench/results/quality.txt
