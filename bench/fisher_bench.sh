#!/bin/sh
# tb-fisher on 128 windows x 512 tokens of tiny-llama-6m: time, FLOP count,
# achieved GFLOP/s and peak RSS. Appends a result line to bench/results/fisher.txt.
# usage: bench/fisher_bench.sh [THREADS]   (TB_BIN: the tools, default build/bin)
set -eu
cd "$(dirname "$0")/.."
threads=${1:-2}
bin=${TB_BIN:-build/bin}
model=tests/data/tiny-llama-6m
mkdir -p bench/results
out=$(mktemp -d)
/usr/bin/time -f '%e %M' -o "$out/time" "$bin/tb-fisher" -m "$model" -t "$model/calib-128x512.safetensors" \
    --threads "$threads" --grad-samples 8 -o "$out/f.fisher" --quiet
read -r secs rss_kb <"$out/time"
# FLOPs per window (T tokens): forward 2*P*T (linear weights P incl. lm_head)
# + attention 2 * 2*T*T*hd*heads/2 (causal half, QK^T and PV) per layer; backward
# twice the forward; Gram 3 distinct inputs of width D and one of width F per
# layer, T*in^2 multiply-adds each (dsyrk: half of 2*T*in^2).
python3 - "$secs" "$rss_kb" "$threads" <<'PY'
import json, sys, datetime, platform, subprocess
secs, rss_kb, threads = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = json.load(open("tests/data/tiny-llama-6m/config.json"))
D, F, L, H, hd, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"], c["head_dim"], c["vocab_size"]
KV = c["num_key_value_heads"]
T, W = 512, 128
P = L * (D * H * hd * 2 + 2 * D * KV * hd + 3 * D * F) + V * D
fwd = 2 * P * T + L * 2 * T * T * hd * H
flops = W * (3 * fwd + L * T * (3 * D * D + F * F))
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
line = (f"{datetime.date.today()} {cpu} threads={threads}: {W}x{T} tokens in {secs:.1f} s, "
        f"{flops/1e12:.2f} TFLOP, {flops/secs/1e9:.1f} GFLOP/s, peak RSS {rss_kb/1024:.0f} MiB")
print(line)
open("bench/results/fisher.txt", "a").write(line + "\n")
PY
rm -rf "$out"
