#!/bin/bash
# prefill_e2e.sh - issue 13's 2:4 prefill end to end, checked then timed, in one
# device call of at most 7 minutes (DEADLINE, default 400 s):
#   1. test_backend (every op on both backends: among them the bf16 operands
#      rmsnorm and swiglu hand to the next linears, embed's prefill path, the
#      per-shape cuSPARSELt rule, and cuSPARSELt forced on small shapes) and
#      test_model_cuda (the decoder's logits against transformers' goldens);
#   2. models of Mistral-7B shapes: one layer from tb-synth, 2:4 by magnitude,
#      packed, then copied into 4- and 32-layer packed models
#      (replicate_layers.py: packing 32 layers on the device's CPU would take
#      ~8 minutes; which weights are kept does not change the speed), beside
#      dense 4- and 32-layer checkpoints from tb-synth;
#   3. steady prefill: tb-run --ppl over 2048-token windows at W0 and W1
#      windows, tokens/s = (W1 - W0) x 2048 / (seconds(W1) - seconds(W0)) from
#      --json (the first window's once-only work - dense copies, compression,
#      cuSPARSELt's algorithm search - cancels): dense, 2:4 (the per-shape
#      rule) and 2:4 with TB_SP24_PREFILL=cusparselt (every weight through
#      cuSPARSELt, the rule before), at 4 layers (windows 2 -> 26) and, when
#      the time left allows, at 32 layers (windows 2 -> 10);
#      then, on the 32-layer models, decode ('The' + 128 tokens, bf16, the
#      step graph, two runs each) against the bytes bound (step_bytes.py over
#      copybw.cu's copy rate): issue 13's end-to-end decode row at 7B shape;
#   4. if Nsight Systems is on the machine and time is left: the kernel time
#      of 6 windows of the 4-layer models against their eval seconds.
# Logs under $OUT: summary.txt (steps, exits, seconds), <step>.log, prefill.txt
# (everything that matters, in one file).
#
# Prepared here (no GPU needed), then one device call:
#   bash bench/gpu/prefill_e2e.sh --prepare   (make CUDA=1 CUSPARSELT=1 CUDA_ARCHS=90;
#        stripped binaries into .devwork/prefill; devkit.sh's libraries into .devwork/kit)
#   run: bash bench/gpu/prefill_e2e.sh        carry: .devwork/prefill .devwork/kit
# (BIN=DIR runs the binaries of an unstripped build instead: BIN=build-cuda-cslt/bin
# with test_backend and test_model_cuda under build-cuda-cslt/tests/cuda.)
# libcusparseLt.so.0 comes from the machine's nvidia-cusparselt-cu13 wheel
# (devkit-env.sh finds it), as for sp24_prefill.sh.
set -u
if [ "${1:-}" = "--prepare" ]; then
    set -e
    nice -n 10 make CUDA=1 CUSPARSELT=1 CUDA_ARCHS=90 -j2 all build-cuda-cslt/tests/cuda/test_backend \
        build-cuda-cslt/tests/cuda/test_model_cuda
    rm -rf .devwork/prefill && mkdir -p .devwork/prefill
    for t in tb-synth tb-score tb-nm tb-pack tb-merge tb-run; do strip -o .devwork/prefill/$t build-cuda-cslt/bin/$t; done
    for t in test_backend test_model_cuda; do strip -o .devwork/prefill/$t build-cuda-cslt/tests/cuda/$t; done
    git rev-parse --short HEAD > .devwork/prefill/commit
    bench/gpu/devkit.sh .devwork/kit >/dev/null
    du -sh .devwork/prefill .devwork/kit
    exit 0
fi
OUT=${OUT:-/tmp/out}
DEADLINE=${DEADLINE:-400}
mkdir -p "$OUT"
. bench/gpu/devkit-env.sh .devwork/kit
if [ -n "${BIN:-}" ]; then
    B=$(cd "$BIN" && pwd) T=$(cd "$BIN/../tests/cuda" && pwd)
else
    B=$PWD/.devwork/prefill T=$B
fi
W=/tmp/prefill
rm -rf $W && mkdir -p $W
STEP_TAIL=12
. bench/gpu/lib.sh prefill # log (to $OUT/prefill.txt), step, summary.txt
log "prefill_e2e: $(date -u +%F' '%T) UTC, build $(cat $B/commit 2>/dev/null || echo ?), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
log "cuSPARSELt: ${TB_CUSPARSELT_LIB:-not found}"
if ldd $B/tb-run | grep -q "not found"; then
    ldd $B/tb-run | grep "not found" | tee -a "$OUT/prefill.txt"
    log "prefill_e2e: the binaries cannot start here (a library above is missing)"
    exit 3
fi


# ---- 1. parity
step test_backend 100 $T/test_backend
grep -E "^== |FAIL|checks" "$OUT/test_backend.log" | tee -a "$OUT/prefill.txt"
grep -E "prefill rule|cuSPARSELt|bf16 op|on rmsnorm|on swiglu|after an add|17 rows|embed" "$OUT/test_backend.log" >>"$OUT/prefill.txt"
TB_TEST_DATA=$PWD/tests/data TB_SHARED=/nonexistent step test_model_cuda 40 $T/test_model_cuda
grep -E "bf16|FAIL|passed|failed" "$OUT/test_model_cuda.log" | tee -a "$OUT/prefill.txt"

# ---- 2. models (and the copy-rate probe for the decode rows, built meanwhile)
copybw_pid=
if command -v nvcc >/dev/null; then
    (nvcc -O2 -arch=sm_90 bench/gpu/copybw.cu -o $W/copybw >$W/copybw.log 2>&1) &
    copybw_pid=$!
fi
SEQ=${BENCH_SEQ:-2048}
DEV=${BENCH_DEVICE:-cuda} # (BENCH_DEVICE=cpu BENCH_SEQ=64 BENCH_CONFIG=<a tiny config>: a smoke test without a GPU)
cfg() { sed "s/\"num_hidden_layers\": 32/\"num_hidden_layers\": $1/" ${BENCH_CONFIG:-examples/configs/mistral-7b.json} >$W/m$1.json; }
cfg 1 && cfg 4 && cfg 32
step synth 40 bash -c "$B/tb-synth $W/m1.json -o $W/m1 --quiet --force && $B/tb-synth $W/m4.json -o $W/m4 --quiet --force"
step pack24 60 bash -c "$B/tb-score -m $W/m1 --method magnitude -o $W/s.st --quiet &&
    $B/tb-nm -s $W/s.st --pattern 2:4 -o $W/k.st --quiet && rm -f $W/s.st &&
    $B/tb-pack -m $W/m1 --masks $W/k.st -o $W/p1.tb --quiet && rm -f $W/k.st &&
    python3 bench/gpu/replicate_layers.py $W/p1.tb 4 $W/p4 && $B/tb-merge -m $W/m4 -o $W/p4/model.tbm $W/p4/*.tb --quiet"
log "weights bytes, 4 layers: dense $(du -cb $W/m4/*.safetensors | tail -1 | cut -f1), packed 2:4 $(du -cb $W/p4/*.tb 2>/dev/null | tail -1 | cut -f1)"

# ppl LABEL MODEL WINDOWS [ENV=...]: --json seconds of the eval loop
ppl() {
    local label=$1 model=$2 win=$3
    shift 3
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt 10 ] && { log "$label, $win windows: skipped (${left} s left)"; return; }
    env "$@" timeout $((left < 60 ? left : 60)) $B/tb-run -v -m $model --ppl examples/data/wikitext2-test.txt \
        --seq-len $SEQ --max-windows $win --device $DEV --json >$W/ppl.json 2>$W/ppl.err
    local rc=$?
    local secs=$(python3 -c "import json,sys; print(json.load(open('$W/ppl.json'))['seconds'])" 2>/dev/null)
    echo "$secs" >"$W/secs.$label.$win"
    log "$label, $win windows: exit $rc, eval ${secs:-?} s; $(grep -h 'tokens/s' $W/ppl.err | tail -1)"
    [ $rc -eq 0 ] || tail -3 $W/ppl.err | tee -a "$OUT/prefill.txt"
}
# rates L W0 W1 LABELS...: the differenced rates and the ratios to dense
rates() {
    local L=$1 w0=$2 w1=$3
    shift 3
    log ""
    log "steady prefill, $L layers, windows $w0 -> $w1 of $SEQ tokens (eval-loop seconds differenced):"
    : >$W/rates
    for label in "$@"; do
        python3 - "$label" "$(cat $W/secs.$label.$w0 2>/dev/null)" "$(cat $W/secs.$label.$w1 2>/dev/null)" \
            "$w0" "$w1" "$SEQ" <<'PY' | tee -a "$OUT/prefill.txt" "$W/rates"
import sys
label, a, b, w0, w1, seq = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
try:
    print(f"{label:24s} {(w1 - w0) * seq / (float(b) - float(a)):10.0f} tokens/s")
except Exception:
    print(f"{label:24s}          ? tokens/s")
PY
    done
    python3 - $W/rates $L <<'PY' | tee -a "$OUT/prefill.txt"
import sys
r = {}
for line in open(sys.argv[1]):
    p = line.split()
    try: r[p[0]] = float(p[1])
    except (ValueError, IndexError): pass
d = "dense-%sL" % sys.argv[2]
for k in r:
    if k != d and d in r: print(f"{k} / dense: {r[k] / r[d]:.3f}x")
PY
}

# ---- 3. steady prefill, 4 layers
for w in 2 26; do
    ppl dense-4L $W/m4 $w
    ppl 2:4-4L $W/p4/model.tbm $w
    ppl 2:4-cslt-all-4L $W/p4/model.tbm $w TB_SP24_PREFILL=cusparselt
done
rates 4 2 26 dense-4L 2:4-4L 2:4-cslt-all-4L

# ---- 32 layers, if ~110 s are left (synth 35 s, copies 15 s, four runs)
if [ $((DEADLINE - SECONDS)) -ge 110 ]; then
    step synth32 50 $B/tb-synth $W/m32.json -o $W/m32 --quiet --force
    step pack32 40 bash -c "python3 bench/gpu/replicate_layers.py $W/p1.tb 32 $W/p32 && \
        $B/tb-merge -m $W/m32 -o $W/p32/model.tbm $W/p32/*.tb --quiet"
    for w in 2 10; do
        ppl dense-32L $W/m32 $w
        ppl 2:4-32L $W/p32/model.tbm $w
    done
    rates 32 2 10 dense-32L 2:4-32L
    # ---- decode on the same 32-layer models (issue 13's end-to-end decode
    # row at the 7B shape): 'The' + 128 tokens, bf16, the step graph, two runs
    # each; the bound is the bytes a step reads over the copy rate
    if [ $((DEADLINE - SECONDS)) -ge 50 ]; then
        wait $copybw_pid 2>/dev/null
        gbs=$($W/copybw 2>/dev/null)
        bd=$(python3 bench/gpu/step_bytes.py $W/m32) bs=$(python3 bench/gpu/step_bytes.py $W/m32 $W/p32/*.tb)
        log ""
        log "decode, 32 layers, 'The' + 128 tokens (bf16, one CUDA graph a step): copy rate ${gbs:-?} GB/s;" \
            "bytes a step reads: dense $bd, 2:4 $bs (bound ratio $(awk -v a=$bd -v b=$bs 'BEGIN{printf "%.3f", a/b}'))"
        for m in "dense-32L $W/m32 $bd" "2:4-32L $W/p32/model.tbm $bs" "dense-32L $W/m32 $bd" "2:4-32L $W/p32/model.tbm $bs"; do
            set -- $m
            [ $((DEADLINE - SECONDS)) -ge 15 ] || { log "$1 decode: skipped"; continue; }
            timeout 40 $B/tb-run -v -m $2 --prompt The -n 128 --device $DEV >/dev/null 2>$W/dec.err
            log "$(decode_line "$(printf '%-10s' $1)" "$(gen_rate $W/dec.err)" $3 "$gbs")"
        done
    else
        log "32-layer decode: skipped ($((DEADLINE - SECONDS)) s left)"
    fi
else
    log "32 layers: skipped ($((DEADLINE - SECONDS)) s left)"
fi
# ---- where a window's time goes, if ~45 s are left and Nsight Systems is here:
# the kernel time of 6 windows of the 4-layer models (dense, 2:4) against
# the eval seconds (what the GPU does not fill is host work or launch gaps)
cat >$W/kern.py <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(l for l in sys.stdin if l.strip() and not l.startswith("Processing"))]
tot = sum(float(r["Total Time (ns)"]) for r in rows)
print("  kernel time %.4f s over %d launches" % (tot * 1e-9, sum(int(r["Instances"]) for r in rows)))
for r in sorted(rows, key=lambda r: -float(r["Total Time (ns)"]))[:14]:
    print("  %9.2f ms %6d x  %s" % (float(r["Total Time (ns)"]) * 1e-6, int(r["Instances"]), r["Name"][:90]))
PY
NSYS=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1)
if [ -n "$NSYS" ] && [ $((DEADLINE - SECONDS)) -ge 45 ] && [ -e $W/m4 ]; then
    for m in "dense-4L $W/m4" "2:4-4L $W/p4/model.tbm"; do
        set -- $m
        timeout 40 "$NSYS" profile -o $W/prof-$1 --force-overwrite true -t cuda,nvtx $B/tb-run -m $2 \
            --ppl examples/data/wikitext2-test.txt --seq-len $SEQ --max-windows 6 --device cuda --json \
            >$W/prof.json 2>$W/prof.err || { log "nsys $1: failed: $(tail -2 $W/prof.err)"; continue; }
        log "== profile $1, 6 windows of $SEQ: eval $(python3 -c "import json; print(json.load(open('$W/prof.json'))['seconds'])" 2>/dev/null) s (first window included)"
        timeout 30 "$NSYS" stats -q -r cuda_gpu_kern_sum -f csv $W/prof-$1.nsys-rep 2>/dev/null |
            python3 $W/kern.py | tee -a "$OUT/prefill.txt"
    done
fi
cat "$OUT/summary.txt"
log "prefill_e2e: done in $SECONDS s"
