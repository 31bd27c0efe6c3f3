# bench/gpu/lib.sh - what every device script shares (sourced, not run):
#   . bench/gpu/lib.sh NAME      # results to $OUT/NAME.txt; $OUT made
# gives
#   log TEXT...                  echo and append to $OUT/NAME.txt
#   stamp, since T0              seconds since epoch (ns), seconds since T0 (2 decimals)
#   step LABEL CAP COMMAND...    run COMMAND with a time cap cut to what is left of
#                                DEADLINE (seconds of this script's $SECONDS; unset:
#                                no deadline), its output to $OUT/LABEL.log, its tail
#                                shown (STEP_TAIL lines, default 25), one line to
#                                $OUT/summary.txt; returns its exit status (124:
#                                timed out, 125: skipped for want of time) and sets
#                                fail=1 when it fails
#   gpu_mem_start, gpu_mem_peak  sample the GPU's used memory every 100 ms in the
#                                background / stop and print the peak (MiB)
#   gen_rate FILE                the generation tokens/s `tb-run -v` wrote to FILE
#   decode_line LABEL TPS BYTES GBS  one line: tokens/s, the step time, the bound
#                                (BYTES a step reads, bench/gpu/step_bytes.py, over
#                                GBS, bench/gpu/copybw.cu) and the step's share of it
# The device gives each call at most 10 minutes: every step is capped so a script
# ends by itself with its summary written, instead of being killed mid-write.
[ -n "${1:-}" ] || { echo "lib.sh: usage: . bench/gpu/lib.sh NAME" >&2; return 1; }
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
TB_LOG_FILE=$OUT/$1.txt
fail=0
: >"$OUT/summary.txt"

log() { echo "$*" | tee -a "$TB_LOG_FILE"; }
stamp() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(stamp)" 'BEGIN { printf "%.2f", b - a }'; }

step() {
    local name=$1 cap=$2
    shift 2
    if [ -n "${DEADLINE:-}" ]; then
        local left=$((DEADLINE - SECONDS))
        if [ "$left" -lt 15 ]; then
            echo "== $name: skipped (${left} s left of the ${DEADLINE} s budget)" | tee -a "$OUT/summary.txt"
            fail=1
            return 125
        fi
        [ "$cap" -gt "$left" ] && cap=$left
    fi
    echo "== $name (cap ${cap} s)"
    local t0=$SECONDS
    timeout "$cap" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -"${STEP_TAIL:-25}" "$OUT/$name.log"
    printf '%-36s exit %3d  %4d s%s\n' "$name" "$rc" $((SECONDS - t0)) "$([ $rc -eq 124 ] && echo '  (timed out)')" |
        tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || fail=1
    return $rc
}

TB_MEM_LOG=$(mktemp /tmp/tb-gpumem.XXXXXX)
gpu_mem_start() {
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$TB_MEM_LOG" 2>/dev/null &
    TB_MEM_PID=$!
}
gpu_mem_peak() {
    kill "$TB_MEM_PID" 2>/dev/null
    wait "$TB_MEM_PID" 2>/dev/null
    local peak
    peak=$(sort -n "$TB_MEM_LOG" | tail -1)
    echo "${peak:-?}"
}

gen_rate() { sed -n 's/.*generation: .*(\([0-9.]*\) tokens\/s).*/\1/p' "$1" | tail -1; }

decode_line() {
    awk -v l="$1" -v t="${2:-0}" -v b="$3" -v bw="${4:-0}" 'BEGIN {
        if (t == 0) { printf "  %s decode failed\n", l; exit }
        ms = 1000 / t; bound = (bw > 0) ? b / (bw * 1e9) * 1000 : 0
        printf "  %s %7.1f tokens/s, %.3f ms a step; bound %.3f ms: %.1f%% of the copy-bandwidth bound\n",
            l, t, ms, bound, (bw > 0) ? 100 * bound / ms : 0 }'
}
