#!/bin/sh
# decode_bench.sh - tb-run decode tokens/s, dense against packed 2:4, next to
# the bytes bound; optionally llama.cpp's llama-bench on the same model.
#
#   bench/decode_bench.sh [MODEL_DIR]      (after make; TB_BIN overrides build/bin)
#
# MODEL_DIR: an HF checkpoint (default tests/data/tiny-llama-6m). Its 2:4
# version is made by magnitude (tb-score | tb-nm --pattern 2:4 | tb-pack |
# tb-merge: no calibration; speed does not depend on which weights are kept)
# into WORK (default a temporary directory; give one to keep it between runs:
# an existing WORK/model.tbm is reused). Then REPS rounds, each running dense
# and 2:4 one after the other (so load on a shared machine hits both alike),
# and the medians.
#
# Environment: THREADS (default 2), N (tokens generated, default 128), REPS
# (default 5), PROMPT (default "The"), WORK, and for the llama.cpp comparison
# LLAMA_BENCH (a llama-bench binary) with GGUF (the same model as GGUF bf16:
# llama.cpp's convert_hf_to_gguf.py --outtype bf16, or bench/hf_to_gguf.py
# where torch is missing): llama-bench -n N -p 512 -t THREADS -r 1 runs
# once in every round (interleaved with tb-run), reporting the best and median
# of its tgN and pp512 (tb-run --ppl against llama-perplexity is
# bench/ppl_bench.sh).
#
# Bytes bound: a decode step reads every weight once, so at the memory limit
# tokens/s is inversely proportional to the weight bytes: bound = dense bytes /
# 2:4 bytes over every tensor of the model (embeddings, lm_head and norms
# included; a tied table counted once, as it is read once per token).
#
# Prints key: value lines, also appended to bench/results/decode_bench.txt.
set -eu
cd "$(dirname "$0")/.."
BIN=${TB_BIN:-build/bin}
MODEL=${1:-tests/data/tiny-llama-6m}
THREADS=${THREADS:-2}
N=${N:-128}
REPS=${REPS:-5}
PROMPT=${PROMPT:-The}
OUT=bench/results
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
WORK=${WORK:-$TMP/work}
mkdir -p "$WORK"

for t in tb-run tb-score tb-nm tb-pack tb-merge; do
    [ -x "$BIN/$t" ] || { echo "decode_bench: $BIN/$t not built (run make)" >&2; exit 1; }
done

if [ ! -f "$WORK/model.tbm" ]; then
    echo "decode_bench: pruning $MODEL to 2:4 by magnitude into $WORK" >&2
    "$BIN/tb-score" -m "$MODEL" --method magnitude -o "$WORK/scores.st" --quiet
    "$BIN/tb-nm" -s "$WORK/scores.st" --pattern 2:4 -o "$WORK/masks.st" --quiet
    rm -f "$WORK/scores.st"
    "$BIN/tb-pack" -m "$MODEL" --masks "$WORK/masks.st" -o "$WORK/model.tb" --quiet
    "$BIN/tb-merge" -m "$MODEL" -o "$WORK/model.tbm" "$WORK/model.tb" --quiet
fi

# decode tokens/s of one run: tb-run's generation line (or, from older
# builds, the whole run's line, which includes the few prompt tokens)
decode_rate() {
    "$BIN/tb-run" -m "$1" --prompt "$PROMPT" -n "$N" --threads "$THREADS" -v >/dev/null 2>"$TMP/err" || {
        cat "$TMP/err" >&2
        exit 1
    }
    python3 - "$TMP/err" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"generation: (\d+) tokens in ([\d.]+) s", text) or re.search(r"(\d+) generated in ([\d.]+) s", text)
if not m:
    sys.exit("decode_bench: no timing line in tb-run's output:\n" + text)
print(int(m.group(1)) / float(m.group(2)))
EOF
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$TMP/dense"
: >"$TMP/nm"
: >"$TMP/llama.jsonl"
LLAMA=
[ -n "${LLAMA_BENCH:-}" ] && [ -n "${GGUF:-}" ] && LLAMA=1
for r in $(seq "$REPS"); do
    decode_rate "$MODEL" >>"$TMP/dense"
    decode_rate "$WORK/model.tbm" >>"$TMP/nm"
    if [ -n "$LLAMA" ]; then
        # one repetition per round, so that llama.cpp sees the same load as tb-run
        "$LLAMA_BENCH" -m "$GGUF" -n "$N" -p 512 -t "$THREADS" -r 1 -o jsonl >>"$TMP/llama.jsonl" 2>"$TMP/llama.err" || {
            cat "$TMP/llama.err" >&2
            exit 1
        }
    fi
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$MODEL" "$WORK" "$TMP" "$THREADS" "$N" "$REPS" "$LOAD0" "$LOAD1" "${GGUF:-}" <<'EOF' | tee -a "$OUT/decode_bench.txt"
import glob, json, os, platform, statistics, struct, subprocess, sys, time
model, work, tmp, threads, n, reps, load0, load1, gguf = sys.argv[1:10]

def tensor_bytes(paths):
    """bytes of every tensor in these safetensors files (data sections only)"""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(hlen))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total

index = os.path.join(model, "model.safetensors.index.json")
if os.path.exists(index):
    shards = sorted(set(json.load(open(index))["weight_map"].values()))
    dense_b = tensor_bytes([os.path.join(model, s) for s in shards])
else:
    dense_b = tensor_bytes([os.path.join(model, "model.safetensors")])
nm_b = tensor_bytes(glob.glob(os.path.join(work, "*.tb")))
dense = [float(l) for l in open(os.path.join(tmp, "dense"))]
nm = [float(l) for l in open(os.path.join(tmp, "nm"))]
md, mn = statistics.median(dense), statistics.median(nm)
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
print("---")
print("date:", time.strftime("%Y-%m-%d %H:%M"))
print("machine:", cpu or platform.processor(), f"({os.cpu_count()} CPUs)")
print(f"command: THREADS={threads} N={n} REPS={reps} bench/decode_bench.sh {model}")
print("load average before / after:", load0, "/", load1)
print(f"weights: dense {dense_b / 1e6:.1f} MB, 2:4 {nm_b / 1e6:.1f} MB; bytes bound 2:4/dense {dense_b / nm_b:.3f}x")
print(f"dense decode: {md:.1f} tokens/s (median of {reps}, best {max(dense):.1f}: {' '.join(f'{x:.1f}' for x in dense)}), "
      f"{md * dense_b / 1e9:.1f} GB/s of weights")
print(f"2:4 decode: {mn:.1f} tokens/s (median of {reps}, best {max(nm):.1f}: {' '.join(f'{x:.1f}' for x in nm)}), "
      f"{mn * nm_b / 1e9:.1f} GB/s of weights")
print(f"2:4 / dense: {mn / md:.3f}x = {mn / md / (dense_b / nm_b):.2f} of the bytes bound")
if gguf:
    rows = [json.loads(l) for l in open(os.path.join(tmp, "llama.jsonl")) if l.strip()]
    tg = [r["avg_ts"] for r in rows if r["n_gen"]]
    pp = [r["avg_ts"] for r in rows if not r["n_gen"]]
    r0 = rows[0]
    print(f"llama-bench ({r0['type_k']} cache, {r0['n_threads']} threads, {os.path.basename(gguf)}, build {r0['build_commit']}, "
          f"one repetition per round):")
    print(f"  tg{n}: best {max(tg):.1f}, median {statistics.median(tg):.1f} tokens/s ({' '.join(f'{x:.1f}' for x in tg)})")
    print(f"  pp512: best {max(pp):.1f}, median {statistics.median(pp):.1f} tokens/s ({' '.join(f'{x:.1f}' for x in pp)})")
    print(f"tb-run dense decode / llama-bench tg{n}: best {max(dense) / max(tg):.2f}x, median {md / statistics.median(tg):.2f}x")
EOF
