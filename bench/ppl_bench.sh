#!/bin/sh
# ppl_bench.sh - tb-run --ppl throughput next to this machine's sgemm ceiling.
#
#   bench/ppl_bench.sh            (after make; TB_BIN overrides build/bin)
#
# Environment: THREADS (default 2), WINDOWS (default 40 windows of 512),
# MODEL (default tests/data/tiny-llama-6m), TEXT (default
# examples/data/wikitext2-test.txt; without it, the 40-line test slice
# repeated until it holds enough windows).
#
# Prints one block of key: value lines (also appended to
# bench/results/ppl_bench.txt): machine, date, tb-run tokens/s and the f32
# GFLOP/s that represents, and OpenBLAS sgemm GFLOP/s with the same thread
# count, measured in the same run by bench/sgemm_peak.c.
set -eu
cd "$(dirname "$0")/.."
BIN=${TB_BIN:-build/bin}
THREADS=${THREADS:-2}
WINDOWS=${WINDOWS:-40}
MODEL=${MODEL:-tests/data/tiny-llama-6m}
TEXT=${TEXT:-examples/data/wikitext2-test.txt}
OUT=bench/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

[ -x "$BIN/tb-run" ] || { echo "ppl_bench: $BIN/tb-run not built (run make)" >&2; exit 1; }
if [ ! -f "$TEXT" ]; then
    for i in $(seq 30); do cat tests/data/wikitext2-test-head.txt; done >"$TMP/text.txt"
    TEXT=$TMP/text.txt
fi

# sgemm_peak is a measurement, not part of the toolkit: a plain cc line
${CC:-cc} -O2 -std=c11 $(pkg-config --cflags openblas) bench/sgemm_peak.c $(pkg-config --libs openblas) \
    -pthread -o "$TMP/sgemm_peak"

LOAD=$(cut -d' ' -f1 /proc/loadavg)
"$BIN/tb-run" -m "$MODEL" --ppl "$TEXT" --max-windows "$WINDOWS" --threads "$THREADS" --json --quiet >"$TMP/run.json"
"$TMP/sgemm_peak" "$THREADS" >"$TMP/sgemm.txt"

python3 - "$MODEL/config.json" "$TMP/run.json" "$TMP/sgemm.txt" "$THREADS" "$TEXT" "$LOAD" <<'EOF' | tee -a "$OUT/ppl_bench.txt"
import json, platform, subprocess, sys, time
cfg, run = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
sg = dict(l.split() for l in open(sys.argv[3]))
D, F, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
H = cfg["num_attention_heads"]; KV = cfg.get("num_key_value_heads", H); hd = cfg.get("head_dim", D // H)
T = run["seq_len"]
# useful f32 flops per token: every linear layer, lm_head, and causal attention
# (q.k and p.v over (T+1)/2 keys on average)
lin = L * (D * H * hd + 2 * D * KV * hd + H * hd * D + 3 * D * F) + V * D
flops = 2 * lin + L * H * 2 * 2 * hd * (T + 1) / 2
model = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
print("---")
print("date:", time.strftime("%Y-%m-%d %H:%M"))
print("machine:", model or platform.processor(), f"({subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs)")
print("command: tb-run -m", sys.argv[1].rsplit("/", 1)[0], "--ppl", sys.argv[5], f"--max-windows {run['windows']} --threads {sys.argv[4]}")
print(f"tb-run: {run['tokens_per_second']:.0f} tokens/s ({run['windows']} windows of {T}, {run['seconds']:.2f} s, ppl {run['ppl']:.3f})")
print(f"tb-run effective: {run['tokens_per_second'] * flops / 1e9:.1f} GFLOP/s ({flops / 1e6:.2f} MFLOP/token)")
print("load average before:", sys.argv[6], "(other work on the machine slows both figures)")
print(f"sgemm {sys.argv[4]} threads: {float(sg['sgemm_square_1024_gflops']):.1f} GFLOP/s at 1024^3, "
      f"{float(sg['sgemm_linear_512x128x256_gflops']):.1f} GFLOP/s at tb-run's 512x128x256 tiles")
EOF
