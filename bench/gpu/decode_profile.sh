#!/bin/bash
# decode_profile.sh - on the GPU machine: where a decode step's time goes.
# Nsight Compute times every kernel of a short generation (dense and packed
# 2:4 8-layer Mistral-7B-shaped models made by `BENCH_ONLY=decode
# bench/gpu/bench_7b.sh` earlier in the same call, under /tmp/b7); the sum of
# kernel durations per generated token, beside tb-run's own step time without
# the profiler, says how much of a step is kernels and how much is the gaps
# between launches. Clocks are left alone (--clock-control none).
# Output: $OUT/decode_profile.txt (per-kernel table for each model).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
. bench/gpu/devkit-env.sh .devwork/kit
B=$PWD/build-cuda/bin
W=${DECODE_DIR:-/tmp/b7}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "decode_profile: ncu not found" | tee -a "$OUT/decode_profile.txt"; exit 1; }
N=${PROFILE_TOKENS:-4}
for m in "dense $W/mD" "2:4 $W/pD/model.tbm"; do
    set -- $m
    [ -e "$2" ] || { echo "decode_profile: $2 missing (run bench_7b.sh's decode rows first)"; continue; }
    timeout 200 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv \
        "$B/tb-run" -m "$2" --prompt The -n "$N" --device cuda --quiet > $W/ncu-$1.csv 2> $W/ncu-$1.err
    echo "ncu $1: exit $? ($(wc -l < $W/ncu-$1.csv) lines)"
    python3 - "$1" "$N" $W/ncu-$1.csv <<'PY' | tee -a "$OUT/decode_profile.txt"
import csv, sys, collections
label, ntok, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [l for l in open(path) if l.startswith('"')]
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in csv.DictReader(rows):
    if r.get("Metric Name") != "gpu__time_duration.sum": continue
    v = float(r["Metric Value"].replace(",", ""))
    unit = r.get("Metric Unit", "nsecond")
    v *= {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(unit, 1e-3)
    name = r["Kernel Name"].split("(")[0].split("<")[0]
    tot[name] += v; cnt[name] += 1
allk = sum(tot.values()); n = sum(cnt.values())
print(f"== {label}: {n} kernels, {allk:.0f} us of kernel time over the whole run ({ntok} generated tokens + prompt)")
for k, v in sorted(tot.items(), key=lambda x: -x[1])[:25]:
    print(f"  {k[:60]:60s} {cnt[k]:6d} x {v / cnt[k]:8.2f} us = {v:9.1f} us")
PY
done
