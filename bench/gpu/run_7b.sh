#!/bin/bash
# run_7b.sh - on the GPU machine (issue 14, deliverable 3): the whole default
# recipe of examples/Makefile on the Mistral-7B-shaped checkpoint, one GPU.
#
#   run: LAYERS=8 bash bench/gpu/run_7b.sh, carry build-cuda/bin .devwork/kit
#   (made here first: make CUDA=1 CUDA_ARCHS=90, bench/gpu/devkit.sh; 42 MB).
#   Its own log and GPU sampler, not bench/gpu/lib.sh's: the sampler stamps
#   each sample so its peak is attributed to the stage running then.
#
# Steps (each skipped when its output is already there, so a second call
# continues the first: the work directory survives between back-to-back calls):
#   1. tb-synth examples/configs/mistral-7b.json (random bf16; num_hidden_layers
#      cut to LAYERS when given) into $W/model
#   2. examples/Makefile DEVICE=cuda KEEP=0 with its defaults (COMPENSATE=auto,
#      which picks SparseGPT above 1e9 parameters; RECON_STEPS 300; no
#      tb-distill) on WINDOWS x SEQLEN calibration tokens (128 x 2048) drawn
#      from CALIB (wikitext-2 test through the checkpoint's byte-level
#      tokenizer); every tool call is timed through wrappers in $W/wrap
#   3. tb-export of model.tbm to an HF checkpoint, and bench/gpu/hf_smoke.py on
#      it: transformers loads it on the GPU (logits finite) and an independent
#      reader (safetensors + torch) checks every pruned weight's groups of 4
# GPU memory is sampled every ~0.2 s (nvidia-smi) and attributed to the stage
# running then. The table goes to $OUT/run_7b.txt, raw logs beside it.
#
# Environment:
#   LAYERS    decoder layers of the checkpoint (default: the config's 32); a
#             cut model's per-layer rate, times 32, is an extrapolation and the
#             table says so
#   WINDOWS, SEQLEN  calibration windows and their length (128, 2048)
#   CALIB     calibration text or a token file (examples/data/wikitext2-test.txt)
#   DEADLINE  seconds since the epoch, or (below 1e9) seconds from the start
#             as bench/gpu/lib.sh reads it (DEVICE=cuda: default 575): make is
#             stopped (SIGTERM to its process group: each tool removes its
#             temporary output) STOP_MARGIN (20) s before it, leaving only
#             complete files; export and smoke test run only with EXPORT_S
#             (60 + 4 x LAYERS) s left
#   CONFIG    the shapes (examples/configs/mistral-7b.json; a small one tests this script)
#   W         work directory (/tmp/r7b; needs ~2 x the checkpoint of disk)
#   DEVICE    cuda (default) or cpu (a dry run of this script on a box without
#             a GPU: LAYERS=2 WINDOWS=4 SEQLEN=64 DEVICE=cpu TB_BIN=build/bin)
#   TB_BIN    the tools (build-cuda/bin, else build/bin); KIT (.devwork/kit)
#   MAKE_VARS more examples/Makefile variables, split at spaces (e.g.
#             "RECON_STEPS=1000 RECON_ARGS=--lr-rel=5": an option's value
#             after '=', not a space)
#   EXPORT    0: no export and smoke test (default 1)
#   SYNC      TB_FSYNC for the pipeline's intermediates (default 0: no fsync
#             of files a later step deletes; the final export is fsynced)
set -u
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
OUT=${OUT:-/tmp/out}
W=${W:-/tmp/r7b}
DEVICE=${DEVICE:-cuda}
WINDOWS=${WINDOWS:-128}
SEQLEN=${SEQLEN:-2048}
CALIB=${CALIB:-$here/examples/data/wikitext2-test.txt}
STOP_MARGIN=${STOP_MARGIN:-20}
CONFIG=${CONFIG:-$here/examples/configs/mistral-7b.json}
mkdir -p "$OUT" "$W"
TXT=$OUT/run_7b.txt
# the CUDA build travels as build-cuda/bin, or as .devwork/build.tar.xz (tar -cJf of build-cuda/bin)
[ -z "${TB_BIN:-}" ] && [ ! -x build-cuda/bin/tb-fisher ] && [ -f .devwork/build.tar.xz ] && tar -xJf .devwork/build.tar.xz
if [ -z "${TB_BIN:-}" ]; then
    if [ -x build-cuda/bin/tb-fisher ]; then TB_BIN=$here/build-cuda/bin; else TB_BIN=$here/build/bin; fi
fi
KIT=${KIT:-.devwork/kit}
[ -f "$KIT/libs.tar.xz" ] && . bench/gpu/devkit-env.sh "$KIT"
log() { echo "$*" | tee -a "$TXT"; }
now() { echo "$EPOCHREALTIME"; }
# a device command is killed at its limit (600 s at most) with nothing
# printed: on the GPU the deadline defaults to 575 s from now
[ -z "${DEADLINE:-}" ] && [ "$DEVICE" = cuda ] && DEADLINE=$(($(date +%s) + 575))
# bench/gpu/lib.sh's convention too: a small DEADLINE is seconds from the start
[ -n "${DEADLINE:-}" ] && [ "$DEADLINE" -lt 1000000000 ] && DEADLINE=$(($(date +%s) + DEADLINE))
left() { [ -n "${DEADLINE:-}" ] && echo $((DEADLINE - $(date +%s))) || echo 999999; }
STAGES=$W/stages.log # start end rc tool args (every timed call, all calls of this script)
MEM=$W/mem.log       # time MiB

log "run_7b: $(date -u +%F' '%T) UTC, $(hostname), $(nproc) cores, $(git -C "$here" rev-parse --short HEAD 2>/dev/null)" \
    "$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
log "run_7b: LAYERS=${LAYERS:-config} WINDOWS=$WINDOWS SEQLEN=$SEQLEN DEVICE=$DEVICE W=$W DEADLINE=${DEADLINE:-none} ($(left) s left)"

# GPU memory sampler: one line per ~0.2 s, stopped at exit
sampler=
if command -v nvidia-smi >/dev/null && [ "$DEVICE" = cuda ]; then
    (while :; do
        m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "${GPU:-0}" 2>/dev/null)
        echo "$EPOCHREALTIME ${m:-0}"
        sleep 0.2
    done >>"$MEM") &
    sampler=$!
fi
watchdog=
cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
    [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
}
trap cleanup EXIT

# a timed step outside make: label start end rc
timed() {
    local label=$1 s e rc
    shift
    s=$(now)
    "$@" >>"$W/steps.log" 2>&1
    rc=$?
    e=$(now)
    echo "$s $e $rc $label" >>"$STAGES"
    return $rc
}

# 1. the checkpoint
model=$W/model
if [ ! -f "$model/config.json" ]; then
    cfg=$W/config.json
    if [ -n "${LAYERS:-}" ]; then
        sed "s/\"num_hidden_layers\": [0-9]*/\"num_hidden_layers\": $LAYERS/" "$CONFIG" >"$cfg"
    else
        cp "$CONFIG" "$cfg"
    fi
    timed synth env TB_FSYNC="${SYNC:-0}" "$TB_BIN/tb-synth" "$cfg" -o "$model" --quiet --force ||
        { log "run_7b: tb-synth failed (see $W/steps.log)"; tail -5 "$W/steps.log" | tee -a "$TXT"; exit 1; }
fi
NL=$("$TB_BIN/tb-inspect" --json "$model" | grep -o '"num_hidden_layers":[[:space:]]*[0-9]*' | grep -o '[0-9]*$')
log "run_7b: checkpoint $model: $NL layers, $(du -sb "$model" | awk '{printf "%.1f GiB", $1 / 2^30}')"
[ -n "$NL" ] || { log "run_7b: cannot read num_hidden_layers of $model"; exit 1; }

# 2. the pipeline, every tool timed through a wrapper that logs its call
wrap=$W/wrap
mkdir -p "$wrap"
for t in "$TB_BIN"/tb-*; do
    n=$(basename "$t")
    if [ "$n" = tb-inspect ]; then ln -sf "$t" "$wrap/$n"; continue; fi
    # tb-recon also reports where its time went (--json on stdout, which the
    # Makefile's call does not use otherwise)
    extra=
    [ "$n" = tb-recon ] && extra=" --json >>$W/recon.jsonl"
    cat >"$wrap/$n" <<EOF
#!/bin/bash
trap : TERM # the deadline's SIGTERM ends the tool; its call is still logged (exit 143)
s=\$EPOCHREALTIME
"$t" "\$@"$extra
rc=\$?
echo "\$s \$EPOCHREALTIME \$rc $n \$*" >>"$STAGES"
exit \$rc
EOF
    chmod +x "$wrap/$n"
done
pipe=$W/out
# a cut model keeps the 7B's compensation: COMPENSATE=auto would pick the
# exact recon solve for one of at most 1e9 parameters (LAYERS <= 3)
comp=
[ "$NL" != 32 ] && comp=COMPENSATE=sparsegpt
mk=(make --no-print-directory -f examples/Makefile MODEL="$model" OUT="$pipe" TB="$wrap" DEVICE="$DEVICE" KEEP=0
    CALIB="$CALIB" WINDOWS="$WINDOWS" SEQLEN="$SEQLEN" $comp ${MAKE_VARS:-})
log "run_7b: ${mk[*]}"
make_rc=0
if [ -f "$pipe/model.tbm" ]; then
    log "run_7b: $pipe/model.tbm already there"
elif [ "$(left)" -le $((STOP_MARGIN + 10)) ]; then
    log "run_7b: no time left for the pipeline"
    make_rc=124
else
    rm -f "$pipe"/*.tmp.* # a SIGKILLed tool's temporary output (no tool runs now)
    s=$(now)
    TB_FSYNC=${SYNC:-0} setsid "${mk[@]}" >>"$W/make.log" 2>&1 &
    mpid=$!
    if [ -n "${DEADLINE:-}" ]; then
        # SIGTERM to make's process group: the running tool unlinks its
        # temporary output, make removes a half-made target (.DELETE_ON_ERROR)
        # (killed itself once make is done: the trap leaves before any kill)
        wait_s=$(($(left) - STOP_MARGIN))
        [ $wait_s -lt 0 ] && wait_s=0
        (trap 'exit 0' TERM; sleep $wait_s & wait $!
         kill -TERM -- -"$mpid" 2>/dev/null; sleep 5 & wait $!; kill -KILL -- -"$mpid" 2>/dev/null) &
        watchdog=$!
    fi
    wait "$mpid"
    make_rc=$?
    [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null && watchdog=
    echo "$s $(now) $make_rc make" >>"$STAGES"
    # a tool killed by the deadline may leave its .tmp.<pid> only after SIGKILL
    rm -f "$pipe"/*.tmp.*
    grep -h "COMPENSATE=auto" "$W/make.log" | tail -1 | tee -a "$TXT"
    [ $make_rc -ne 0 ] && { log "run_7b: make stopped (exit $make_rc; $(left) s to the deadline); last lines:"; tail -4 "$W/make.log" | tee -a "$TXT"; }
fi

# 3. export and the transformers smoke test
hf=$W/hf
smoke_rc=
if [ -f "$pipe/model.tbm" ] && [ "${EXPORT:-1}" != 0 ]; then
    if [ ! -f "$hf/config.json" ] && [ "$(left)" -gt $((${EXPORT_S:-$((60 + 4 * NL))})) ]; then
        timed export "$TB_BIN/tb-export" "$pipe/model.tbm" -o "$hf" --quiet || log "run_7b: tb-export failed (see $W/steps.log)"
    fi
    if [ -f "$hf/config.json" ] && [ "$(left)" -gt 40 ]; then
        s=$(now)
        python3 bench/gpu/hf_smoke.py "$hf" 2>&1 | tee "$W/smoke.log" | grep -v "^ *$" | tail -12 | tee -a "$TXT"
        smoke_rc=${PIPESTATUS[0]}
        echo "$s $(now) $smoke_rc smoke" >>"$STAGES"
    fi
fi

# the tables
python3 bench/gpu/run_7b_table.py "$STAGES" "${MEM}" "$NL" 2>&1 | tee -a "$TXT"
if [ -s "$W/recon.jsonl" ]; then
    python3 - "$W/recon.jsonl" <<'PY' | tee -a "$TXT"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
keys = ["inputs", "targets", "weights", "training", "write", "total"]
print("tb-recon, where a call's time went (mean of %d calls, s): " % len(rows) +
      ", ".join("%s %.1f" % (k, sum(r["seconds_" + k] for r in rows) / len(rows)) for k in keys) +
      "; of training, the steps and evaluations %.1f" % (sum(r["seconds"] for r in rows) / len(rows)))
# what the steps did: the layer's output error after / before, and whether
# tb-recon kept the shard's own weights because training raised it
print("tb-recon, output error kept per layer (after / before; * = raised, the shard's own weights written): " +
      ", ".join("%d: %.3f%s" % (r["layer"], r["error_kept"], "*" if r.get("kept_start") else "") for r in rows))
PY
    cp "$W/recon.jsonl" "$OUT/run_7b-recon.jsonl"
fi
cp "$STAGES" "$OUT/run_7b-stages.log"
tail -c 20000 "$W/make.log" >"$OUT/run_7b-make.log" 2>/dev/null
[ -f "$W/smoke.log" ] && cp "$W/smoke.log" "$OUT/run_7b-smoke.log"
du -sh "$pipe" "$hf" 2>/dev/null | tee -a "$TXT"
log "run_7b: done at $(date -u +%T) UTC; make exit $make_rc, smoke ${smoke_rc:-not run}"
# success: the pipeline made model.tbm, and the smoke test passed where it ran (EXPORT=0: not asked)
[ "$make_rc" = 0 ] && { [ "${EXPORT:-1}" = 0 ] || [ "${smoke_rc:-1}" = 0 ]; }
