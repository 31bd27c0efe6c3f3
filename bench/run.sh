#!/bin/sh
# make bench: the throughput benchmarks, each next to its reference measured
# in the same run; figures are appended to bench/results/*.txt and recorded in
# BENCHMARKS.md by hand (command, machine, date, number).
#   QUALITY=1 make bench   also prunes the bundled model with the default
#                          recipe and measures its perplexity (minutes)
set -eu
cd "$(dirname "$0")/.."
export TB_BIN=${TB_BIN:-build/bin}
echo "== tb-run --ppl throughput vs OpenBLAS sgemm"
bench/ppl_bench.sh
echo "== tb-run decode: dense vs packed 2:4 (tiny-llama-6m)"
THREADS=${THREADS:-2} bench/decode_bench.sh
echo "== tb-fisher: 128 windows x 512 tokens"
bench/fisher_bench.sh "${THREADS:-2}"
if [ "${QUALITY:-0}" = 1 ]; then
    echo "== quality: default 2:4 recipe on tiny-llama-6m"
    bench/quality.sh default-2of4 PATTERN=2:4
fi
