#!/bin/sh
# ppl_bench.sh - tb-run --ppl throughput next to this machine's peak and,
# optionally, llama.cpp's llama-perplexity on the same model, text and threads.
#
#   bench/ppl_bench.sh            (after make; TB_BIN overrides build/bin)
#
# Environment: THREADS (default 2), WINDOWS (default 40 windows of 512),
# REPS (default 3 rounds), MODEL (default tests/data/tiny-llama-6m), TEXT
# (default examples/data/wikitext2-test.txt; without it, the 40-line test
# slice repeated until it holds enough windows), and for the comparison
# LLAMA_PERPLEXITY (a llama-perplexity binary) with GGUF (MODEL as GGUF bf16,
# by llama.cpp's convert_hf_to_gguf.py or bench/hf_to_gguf.py): `llama-perplexity -c 512 -b 512 --chunks WINDOWS -t THREADS`,
# whose "prompt eval" rate is its forward passes over the same number of
# 512-token windows (tb-run's figure also includes the NLL of every token).
#
# Each round runs tb-run then llama-perplexity, so load on a shared machine
# hits both alike; the best of the rounds is reported for each (a loaded
# machine only ever slows a run), with every round's rate and load average.
# Then bench/sgemm_peak.c measures the ceiling with the same thread count:
# the FMA units' peak and OpenBLAS sgemm.
#
# Prints one block of key: value lines (also appended to
# bench/results/ppl_bench.txt).
set -eu
cd "$(dirname "$0")/.."
BIN=${TB_BIN:-build/bin}
THREADS=${THREADS:-2}
WINDOWS=${WINDOWS:-40}
REPS=${REPS:-3}
MODEL=${MODEL:-tests/data/tiny-llama-6m}
TEXT=${TEXT:-examples/data/wikitext2-test.txt}
LLAMA_PERPLEXITY=${LLAMA_PERPLEXITY:-}
GGUF=${GGUF:-}
OUT=bench/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

[ -x "$BIN/tb-run" ] || { echo "ppl_bench: $BIN/tb-run not built (run make)" >&2; exit 1; }
if [ -n "$LLAMA_PERPLEXITY" ] && [ -z "$GGUF" ]; then
    echo "ppl_bench: LLAMA_PERPLEXITY needs GGUF (the model converted to GGUF)" >&2
    exit 1
fi
if [ ! -f "$TEXT" ]; then
    for i in $(seq 30); do cat tests/data/wikitext2-test-head.txt; done >"$TMP/text.txt"
    TEXT=$TMP/text.txt
fi

# sgemm_peak is a measurement, not part of the toolkit: a plain cc line
${CC:-cc} -O2 -std=c11 $(pkg-config --cflags openblas) bench/sgemm_peak.c $(pkg-config --libs openblas) \
    -pthread -o "$TMP/sgemm_peak"

: >"$TMP/runs.txt"
for r in $(seq "$REPS"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    "$BIN/tb-run" -m "$MODEL" --ppl "$TEXT" --max-windows "$WINDOWS" --threads "$THREADS" --json --quiet >"$TMP/run.json"
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print("tb-run", sys.argv[2], d["tokens_per_second"], d["ppl"], d["seq_len"], d["windows"])' \
        "$TMP/run.json" "$load" >>"$TMP/runs.txt"
    if [ -n "$LLAMA_PERPLEXITY" ]; then
        load=$(cut -d' ' -f1 /proc/loadavg)
        "$LLAMA_PERPLEXITY" -m "$GGUF" -f "$TEXT" -c 512 -b 512 --chunks "$WINDOWS" -t "$THREADS" >"$TMP/llama.txt" 2>&1 || {
            tail -5 "$TMP/llama.txt" >&2
            exit 1
        }
        # llama_perf_context_print: prompt eval time = X ms / N tokens (...)
        sed -n 's/.*prompt eval time = *\([0-9.]*\) ms \/ *\([0-9]*\) tokens.*/\1 \2/p' "$TMP/llama.txt" |
            awk -v l="$load" '{ printf "llama-perplexity %s %f\n", l, $2 / ($1 / 1000) }' >>"$TMP/runs.txt"
        sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/llama_ppl \1/p' "$TMP/llama.txt" >>"$TMP/runs.txt"
    fi
done
"$TMP/sgemm_peak" "$THREADS" >"$TMP/sgemm.txt"

python3 - "$MODEL/config.json" "$TMP/runs.txt" "$TMP/sgemm.txt" "$THREADS" "$TEXT" "$WINDOWS" <<'PY' | tee -a "$OUT/ppl_bench.txt"
import json, platform, statistics, subprocess, sys, time
cfg = json.load(open(sys.argv[1]))
runs = [l.split() for l in open(sys.argv[2])]
sg = dict(l.split(None, 1) for l in open(sys.argv[3]))
threads, text, windows = sys.argv[4], sys.argv[5], sys.argv[6]
D, F, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
H = cfg["num_attention_heads"]; KV = cfg.get("num_key_value_heads", H); hd = cfg.get("head_dim", D // H)
tb = [r for r in runs if r[0] == "tb-run"]
T = int(tb[0][4])
# useful f32 flops per token: every linear layer, lm_head, and causal attention
# (q.k and p.v over (T+1)/2 keys on average)
lin = L * (D * H * hd + 2 * D * KV * hd + H * hd * D + 3 * D * F) + V * D
flops = 2 * lin + L * H * 2 * 2 * hd * (T + 1) / 2
model = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
print("---")
print("date:", time.strftime("%Y-%m-%d %H:%M"))
print("machine:", model or platform.processor(), f"({subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs)")
print("command: tb-run -m", sys.argv[1].rsplit("/", 1)[0], "--ppl", text, f"--max-windows {windows} --threads {threads}")
print(f"flops: {flops / 1e6:.2f} MFLOP/token (linear layers and lm_head {2 * lin / 1e6:.2f}, attention {(flops - 2 * lin) / 1e6:.2f})")
def show(name, rs):
    rates = [float(r[2]) for r in rs]
    best = max(rates)
    each = ", ".join(f"{float(r[2]):.0f} (load {r[1]})" for r in rs)
    print(f"{name}: best {best:.0f} tokens/s, {best * flops / 1e9:.1f} GFLOP/s; median {statistics.median(rates):.0f}; runs: {each}")
    return best
best_tb = show("tb-run", tb)
print(f"tb-run ppl: {float(tb[0][3]):.4f} ({tb[0][5]} windows of {T}, every token)")
ll = [r for r in runs if r[0] == "llama-perplexity"]
if ll:
    best_ll = show("llama-perplexity", ll)
    lp = [r for r in runs if r[0] == "llama_ppl"]
    if lp: print(f"llama-perplexity ppl: {lp[0][1]} (second half of each window)")
    print(f"tb-run / llama-perplexity (best of each): {best_tb / best_ll:.2f}x")
fma = [k for k in sg if k.startswith("fma_peak")]
if fma:
    peak = float(sg[fma[0]])
    print(f"peak ({fma[0].split('_')[2]} FMA loop, {threads} threads): {peak:.1f} GFLOP/s; tb-run best at {100 * best_tb * flops / 1e9 / peak:.0f}% of it")
print(f"sgemm ({sg['sgemm_core'].strip()} kernel), {threads} threads: {float(sg['sgemm_square_1024_gflops']):.1f} GFLOP/s at 1024^3, "
      f"{float(sg['sgemm_linear_512x128x256_gflops']):.1f} at 512x128x256")
PY
