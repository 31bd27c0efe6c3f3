#!/bin/bash
# sp24_prefill.sh - issue 13's 2:4 prefill through cuSPARSELt, checked and timed
# in one device call of at most 6 minutes (DEADLINE, default 330 s):
#   1. test_backend's 2:4 tests (TB_TEST_ONLY=sp24) against the CPU backend:
#      the device reorder, the 2:4 weights at decode counts (our kernel) and at
#      prefill counts through cuSPARSELt (test_sp24_prefill: parity with the
#      output poisoned first, both output paths, and no dense copy made; the
#      four 7B shapes at 2048 tokens);
#   2. end to end: a BENCH_PREFILL_LAYERS-layer (default 4) Mistral-7B-shaped
#      model (tb-synth, random bf16) and its 2:4 version (magnitude masks:
#      which weights are kept does not change the speed), tb-run --ppl over
#      2048-token windows: dense, 2:4 (cuSPARSELt), and 2:4 with
#      TB_SP24_PREFILL=dense (its dense copies, the path before cuSPARSELt).
#      Each at W0 and W1 windows; steady prefill tokens/s = (W1 - W0) x 2048 /
#      (seconds(W1) - seconds(W0)) from --json (the once-only work of the first
#      window, dense copies or compression and algorithm search, cancels), and
#      the peak GPU memory (nvidia-smi every 100 ms);
#   3. TB_TEST_TIME=prefill with TB_SP24_PREFILL=cusparselt: the backend's
#      linear at 128-2048 tokens on the four 7B shapes, dense bf16 (cuBLAS),
#      the 2:4 weight as dense bf16 with its zeros (cuBLAS, as its dense copy
#      runs) and 2:4 through cuSPARSELt: where tb_cuda_sp24_choose's threshold
#      belongs; again with cuSPARSELt's bf16 output forced;
#   4. compute-sanitizer memcheck over the small 2:4 cases, if time is left.
# Logs under $OUT: summary.txt (steps, exits, seconds), test_backend.log,
# time_prefill.log, prefill.txt (everything that matters, in one file).
#
# Prepared here (no GPU needed), then one device call:
#   bash bench/gpu/sp24_prefill.sh --prepare    (build with CUSPARSELT=1, CUDA_ARCHS=90;
#        stripped binaries into .devwork/sp24; bench/gpu/devkit.sh's libraries into .devwork/kit)
#   run: bash bench/gpu/sp24_prefill.sh    carry: .devwork/sp24 .devwork/kit
# The GPU machine's image provides libcusparseLt.so.0 (its nvidia-cusparselt-cu13
# wheel; devkit-env.sh finds it): the library does not travel (234 MB, 155 MB xz).
set -u
if [ "${1:-}" = "--prepare" ]; then
    set -e
    nice -n 10 make CUDA=1 CUSPARSELT=1 CUDA_ARCHS=90 -j2 all build-cuda-cslt/tests/cuda/test_backend
    rm -rf .devwork/sp24 && mkdir -p .devwork/sp24
    for t in tb-synth tb-score tb-nm tb-pack tb-merge tb-run; do strip -o .devwork/sp24/$t build-cuda-cslt/bin/$t; done
    strip -o .devwork/sp24/test_backend build-cuda-cslt/tests/cuda/test_backend
    git rev-parse --short HEAD > .devwork/sp24/commit
    bench/gpu/devkit.sh .devwork/kit >/dev/null
    du -sh .devwork/sp24 .devwork/kit
    exit 0
fi
OUT=${OUT:-/tmp/out}
DEADLINE=${DEADLINE:-330}
mkdir -p "$OUT"
. bench/gpu/devkit-env.sh .devwork/kit
B=$PWD/.devwork/sp24
W=/tmp/sp24
rm -rf $W && mkdir -p $W
. bench/gpu/lib.sh prefill # log (to $OUT/prefill.txt), step, summary.txt
log "sp24_prefill: $(date -u +%F' '%T) UTC, build $(cat $B/commit 2>/dev/null), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
log "cuSPARSELt: ${TB_CUSPARSELT_LIB:-not found}"
if ldd $B/tb-run | grep -q "not found"; then
    ldd $B/tb-run | grep "not found" | tee -a "$OUT/prefill.txt"
    log "sp24_prefill: the binaries cannot start here (a library above is missing)"
    exit 3
fi


TB_TEST_ONLY=sp24 step test_backend 150 $B/test_backend
grep -E "^== |cuSPARSELt|dense copy|no dense|prefill choice|FAIL|checks" "$OUT/test_backend.log" | tee -a "$OUT/prefill.txt"

# ---- end to end
L=${BENCH_PREFILL_LAYERS:-4}
W0=${BENCH_W0:-2}
W1=${BENCH_W1:-26}
SEQ=${BENCH_SEQ:-2048}
DEV=${BENCH_DEVICE:-cuda} # (cpu: a smoke test of this script on a machine without a GPU)
sed "s/\"num_hidden_layers\": 32/\"num_hidden_layers\": $L/" ${BENCH_CONFIG:-examples/configs/mistral-7b.json} >$W/m.json
step synth 60 $B/tb-synth $W/m.json -o $W/m --quiet --force
step pack24 120 bash -c "$B/tb-score -m $W/m --method magnitude -o $W/s.st --quiet &&
    $B/tb-nm -s $W/s.st --pattern 2:4 -o $W/k.st --quiet && rm -f $W/s.st && mkdir -p $W/p &&
    $B/tb-pack -m $W/m --masks $W/k.st -o $W/p/model.tb --quiet && rm -f $W/k.st &&
    $B/tb-merge -m $W/m -o $W/p/model.tbm $W/p/model.tb --quiet"
log "weights bytes: dense $(du -cb $W/m/*.safetensors | tail -1 | cut -f1), packed 2:4 $(du -cb $W/p/*.tb 2>/dev/null | tail -1 | cut -f1)"

# ppl LABEL MODEL WINDOWS [ENV=...]: --json seconds of the eval loop, peak GPU memory
ppl() {
    local label=$1 model=$2 win=$3
    shift 3
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt 15 ] && { log "$label, $win windows: skipped (${left} s left)"; return; }
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >$W/mem.log 2>/dev/null &
    local sampler=$!
    env "$@" timeout $((left < 90 ? left : 90)) $B/tb-run -v -m $model --ppl examples/data/wikitext2-test.txt \
        --seq-len $SEQ --max-windows $win --device $DEV --json >$W/ppl.json 2>$W/ppl.err
    local rc=$?
    kill $sampler 2>/dev/null
    wait $sampler 2>/dev/null
    local secs=$(python3 -c "import json,sys; print(json.load(open('$W/ppl.json'))['seconds'])" 2>/dev/null)
    echo "$secs" >"$W/secs.$label.$win"
    log "$label, $win windows: exit $rc, eval ${secs:-?} s, peak GPU memory $(sort -n $W/mem.log | tail -1) MiB; $(grep -h 'tokens/s' $W/ppl.err | tail -1)"
    [ $rc -eq 0 ] || tail -3 $W/ppl.err | tee -a "$OUT/prefill.txt"
}
for w in $W0 $W1; do
    ppl dense $W/m $w
    ppl 2:4-cuSPARSELt $W/p/model.tbm $w
    ppl 2:4-densecopy $W/p/model.tbm $w TB_SP24_PREFILL=dense
done
log ""
log "steady prefill, $L layers, windows $W0 -> $W1 of $SEQ tokens (eval-loop seconds differenced):"
: >$W/rates
for label in dense 2:4-cuSPARSELt 2:4-densecopy; do
    a=$(cat $W/secs.$label.$W0 2>/dev/null) b=$(cat $W/secs.$label.$W1 2>/dev/null)
    python3 - "$label" "$a" "$b" "$W0" "$W1" "$SEQ" <<'PY' | tee -a "$OUT/prefill.txt" "$W/rates"
import sys
label, a, b, w0, w1, seq = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
try:
    rate = (w1 - w0) * seq / (float(b) - float(a))
    print(f"{label:16s} {rate:10.0f} tokens/s")
except Exception:
    print(f"{label:16s}          ? tokens/s")
PY
done
python3 - $W/rates <<'PY' | tee -a "$OUT/prefill.txt"
import sys
r = {}
for line in open(sys.argv[1]):
    p = line.split()
    try: r[p[0]] = float(p[1])
    except (ValueError, IndexError): pass
if "dense" in r:
    for k in ("2:4-cuSPARSELt", "2:4-densecopy"):
        if k in r: print(f"{k} / dense: {r[k] / r['dense']:.3f}x")
PY

# ---- the backend's linears at 128-2048 tokens: dense bf16 against 2:4 through
# cuSPARSELt (at every count, TB_SP24_PREFILL=cusparselt), then the same with
# cuSPARSELt's bf16-output path forced (what f32 output saves, if the library
# takes it); last, so that the two above always run
TB_TEST_TIME=prefill TB_SP24_PREFILL=cusparselt step time_prefill 60 $B/test_backend
grep -E "^time prefill|prefill linears" "$OUT/time_prefill.log" | tee -a "$OUT/prefill.txt"
TB_TEST_TIME=prefill TB_SP24_PREFILL=cusparselt TB_CSLT_OUT=bf16 step time_prefill_bf16out 60 $B/test_backend
grep -E "^time prefill|prefill linears" "$OUT/time_prefill_bf16out.log" | sed 's/^/bf16 out: /' >>"$OUT/prefill.txt"
# memcheck over the small 2:4 cases (cuSPARSELt's kernels included), if time is left
if command -v compute-sanitizer >/dev/null; then
    TB_TEST_ONLY=sp24 TB_TEST_QUICK=1 step memcheck_sp24 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
        $B/test_backend
    grep -E "ERROR SUMMARY|checks" "$OUT/memcheck_sp24.log" | tee -a "$OUT/prefill.txt"
fi
cat "$OUT/summary.txt"
log "sp24_prefill: done in $SECONDS s"
