#!/bin/sh
# tools.sh - the GPU paths of the tools against the goldens and the CPU (make test-cuda).
#   TB_BIN: the tools; TB_TEST_DATA (tests/data), TB_SHARED (../shared) as the other tests.
# Checks: tb-fisher --device cuda --precision f32 matches transformers' Fisher
# (1e-3) and Gram (1e-4) goldens; tb-run --ppl on the GPU (bf16) within 0.5%
# of the CPU's f32 perplexity on the same windows; tb-recon on the GPU reaches
# the CPU's layer loss within 2% after 300 steps; tb-distill on the GPU
# reaches the CPU's KL within 1% (f32) and 5% (bf16) after 20 steps, and
# tb-recon --learn-masks the CPU's layer loss within 3% with exact 2:4 masks; a packed
# 2:4 model (issue 13's
# acceptance): greedy generation token for token equal to the dense-with-zeros
# export's on each backend, its fidelity to that export (tb-run --compare: on
# the CPU, f32, KL <= 1e-5 nats and top-1 agreement >= 99.5%; on the GPU, bf16,
# KL <= 1e-3 nats and top-1 agreement >= 98%: the two runs round every
# activation to bf16 after sums taken in another order, the noise the bf16 path
# is allowed against f32 (issue 12); a wrong index or value moves KL by orders
# of magnitude more; a greedy mismatch with these passing is a near tie of two
# logits, not a wrong weight), and its GPU
# bf16 perplexity within 0.5% of the CPU's f32 one, over 512-token windows (the
# dense copy) and 16-token windows (every linear through the 2:4 GEMM). Skips
# (exit 0) without a GPU.
# TB_TOOLS_ONLY=sp24 runs only the 2:4 part (TB_TOOLS_DEVICE=cpu runs that on the
# CPU, a check of the script itself on a machine without a GPU).
set -eu
BIN=${TB_BIN:-build/bin}
DATA=${TB_TEST_DATA:-tests/data}
MODEL=$DATA/tiny-llama-6m
CALIB=$MODEL/calib-128x512.safetensors
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

DEV=${TB_TOOLS_DEVICE:-cuda}
if ! "$BIN/tb-run" -m "$MODEL" --device "$DEV" --prompt x -n 1 --quiet >/dev/null 2>"$tmp/err"; then
    echo "tools.sh: skipped: $(cat "$tmp/err")"
    exit 0
fi

check() { # what value limit (an empty value, a step that printed nothing, fails)
    if [ -n "$2" ] && awk -v v="$2" -v l="$3" 'BEGIN { exit !(v <= l) }'; then r=ok; else r=FAIL; fail=1; fi
    printf '  %-58s %s  (limit %s)  %s\n' "$1" "$2" "$3" "$r"
}
reldiff() { awk -v a="$1" -v b="$2" 'BEGIN {d=(a-b)/b; if (d<0) d=-d; print d}'; }
TEXT=$DATA/../../examples/data/wikitext2-test.txt
[ -f "$TEXT" ] || TEXT=examples/data/wikitext2-test.txt

# ---- a packed 2:4 model on the GPU (issue 13): magnitude masks (no calibration:
# which weights are kept does not matter here), with and without a channel
# permutation, each beside its dense export (the same weights, zeros stored)
sp24_checks() {
    echo "2:4 tiny-llama-6m (magnitude): packed vs dense-with-zeros greedy generation; --ppl GPU bf16 vs CPU f32"
    "$BIN/tb-score" -m "$MODEL" --method magnitude -o "$tmp/mag.st" --quiet
    for v in plain permute; do
        "$BIN/tb-nm" -s "$tmp/mag.st" --pattern 2:4 $([ $v = permute ] && echo --permute) -o "$tmp/m-$v.st" --quiet
        mkdir -p "$tmp/$v"
        "$BIN/tb-pack" -m "$MODEL" --masks "$tmp/m-$v.st" -o "$tmp/$v/model.tb" --quiet
        "$BIN/tb-merge" -m "$MODEL" -o "$tmp/$v/model.tbm" "$tmp/$v/model.tb" --quiet
        "$BIN/tb-export" "$tmp/$v/model.tbm" -o "$tmp/$v-dense" --quiet
    done
    # a prompt of at most 16 tokens runs every step through the 2:4 GEMM; the
    # long one prefills through the dense copy, then decodes through the 2:4 GEMM
    short="The history of"
    long="The history of the city begins in the early years of the nineteenth century, when the first settlers came from the east"
    for dev in $DEV cpu; do
        for v in plain permute; do
            for p in short long; do
                eval "prompt=\$$p"
                a=$("$BIN/tb-run" -m "$tmp/$v/model.tbm" --prompt "$prompt" -n 32 --quiet --device $dev)
                b=$("$BIN/tb-run" -m "$tmp/$v-dense" --prompt "$prompt" -n 32 --quiet --device $dev)
                if [ "$a" = "$b" ]; then
                    r=ok
                elif [ "$dev" != cpu ] && [ $v = permute ]; then
                    # the permuted model sums its columns in permuted order in both its
                    # kernels, its dense export in model order: on the H200 (2026-12-02,
                    # after the dense decode GEMV landed) the long prompt's greedy output
                    # flipped at a near tie after 10 generated tokens; the --compare
                    # fidelity checks below are the verdict for this case
                    r="differs (sum order; fidelity below decides)"
                else
                    r=FAIL
                    fail=1
                fi
                printf '  %-58s %s\n' "generation $dev, $v 2:4, $p prompt: packed == dense" "$r"
                # the 2:4 GEMM sums in another order than cuBLAS: a near tie of the top two logits
                # may flip a greedy step without a bug; the fidelity check below tells which
                [ "$r" = ok ] || printf '    packed: %s\n    dense:  %s\n' "$a" "$b"
            done
        done
        [ "$DEV" = cpu ] && break
    done
    # fidelity of packed vs dense-with-zeros on the same backend (tb-run --compare): the
    # same weights, so KL ~0 and top-1 agreement ~1; 16-token windows run the 2:4 GEMM.
    # On the H200 (2026-12-02) bf16 gave KL 0-1.6e-4 and top-1 disagreement 0-0.9%:
    # the permuted model sums its columns in another order even through the dense copy.
    kl_lim=1e-5 t1_lim=0.005
    [ "$DEV" = cpu ] || { kl_lim=1e-3 t1_lim=0.02; }
    for v in plain permute; do
        for w in 16 512; do
            j=$("$BIN/tb-run" -m "$tmp/$v/model.tbm" --compare "$tmp/$v-dense" --ppl "$TEXT" --seq-len $w \
                --max-windows $((8192 / w)) --device $DEV --json --quiet)
            kl=$(echo "$j" | sed -n 's/.*"kl":\([^,}]*\).*/\1/p')
            t1=$(echo "$j" | sed -n 's/.*"top1":\([^,}]*\).*/\1/p')
            check "$v 2:4 vs dense-with-zeros on $DEV, $w-token windows: KL (nats)" "$kl" $kl_lim
            check "$v 2:4 vs dense-with-zeros on $DEV, $w-token windows: 1 - top-1" "$(awk -v t="$t1" 'BEGIN {print 1 - t}')" $t1_lim
        done
    done
    q() { # variant, tb-run options...
        m="$tmp/$1/model.tbm"
        shift
        "$BIN/tb-run" -m "$m" --ppl "$TEXT" --quiet "$@" | awk '/^ppl:/ {print $2}'
    }
    for v in plain permute; do
        c512=$(q $v --max-windows 64 --device cpu)
        g512=$(q $v --max-windows 64 --device $DEV)
        c16=$(q $v --seq-len 16 --max-windows 512 --device cpu)
        g16=$(q $v --seq-len 16 --max-windows 512 --device $DEV)
        echo "  $v 2:4 ppl: 64 x 512 tokens cpu $c512, $DEV $g512; 512 x 16 tokens cpu $c16, $DEV $g16"
        check "$v 2:4: |ppl_${DEV}_bf16 - ppl_cpu| / ppl_cpu, 512-token windows" "$(reldiff "$g512" "$c512")" 0.005
        check "$v 2:4: |ppl_${DEV}_bf16 - ppl_cpu| / ppl_cpu, 16-token windows" "$(reldiff "$g16" "$c16")" 0.005
    done
}
if [ "${TB_TOOLS_ONLY:-}" = sp24 ]; then
    sp24_checks
    [ "$fail" -eq 0 ] && echo "tools.sh: passed" || { echo "tools.sh: FAILED"; exit 1; }
    exit 0
fi

# fisher_golden.py's exit status is the verdict (a pipe into tail would hide it)
golden_check() { # fisher golden
    python3 "$here/../py/fisher_golden.py" "$1" "$2" >"$tmp/golden.txt" 2>&1 || fail=1
    tail -1 "$tmp/golden.txt"
}
echo "tb-fisher --device cuda --precision f32, 16 windows vs the transformers goldens"
"$BIN/tb-fisher" -m "$MODEL" -t "$CALIB" --max-windows 16 --device cuda --precision f32 -o "$tmp/f.fisher" --quiet
golden_check "$tmp/f.fisher" "$MODEL/fisher-gram-16win.safetensors"
shared=${TB_SHARED:-../shared}
mgold=$shared/golden/tiny-mistral-10m/fisher-gram-16win.safetensors
if [ -d "$shared/models/tiny-mistral-10m" ] && [ ! -f "$mgold" ]; then
    # bench/gpu/shared.sh leaves this golden out: the device call's 64 MiB has no room for it
    echo "  tiny-mistral-10m: skipped ($mgold absent)"
elif [ -d "$shared/models/tiny-mistral-10m" ]; then
    "$BIN/tb-fisher" -m "$shared/models/tiny-mistral-10m" -t "$shared/data/calib-tiny-mistral-10m-128x512.safetensors" \
        --max-windows 16 --device cuda --precision f32 -o "$tmp/m.fisher" --quiet
    golden_check "$tmp/m.fisher" "$mgold"
fi

echo "tb-run --ppl, 64 windows: GPU bf16 and f32 vs CPU f32"
ppl() { "$BIN/tb-run" -m "$MODEL" --ppl "$TEXT" --max-windows 64 --quiet "$@" | awk '/^ppl:/ {print $2}'; }
p_cpu=$(ppl --device cpu)
p_bf=$(ppl --device cuda --precision bf16)
p_f32=$(ppl --device cuda --precision f32)
echo "  ppl cpu $p_cpu, cuda bf16 $p_bf, cuda f32 $p_f32"
check "|ppl_cuda_bf16 - ppl_cpu| / ppl_cpu" "$(awk -v a="$p_bf" -v b="$p_cpu" 'BEGIN {d=(a-b)/b; if (d<0) d=-d; print d}')" 0.005
check "|ppl_cuda_f32 - ppl_cpu| / ppl_cpu" "$(awk -v a="$p_f32" -v b="$p_cpu" 'BEGIN {d=(a-b)/b; if (d<0) d=-d; print d}')" 0.00001

echo "tb-recon layer 0 (2:4 Wanda + recon compensation), 300 steps, 32 windows: GPU vs CPU"
"$BIN/tb-fisher" -m "$MODEL" -t "$CALIB" --max-windows 32 --stats gram --layers 0:1 -o "$tmp/g.fisher" --quiet
"$BIN/tb-score" -m "$MODEL" -f "$tmp/g.fisher" --method wanda --tensors 'model.layers.0.*' -o "$tmp/s.st" --quiet
"$BIN/tb-nm" -s "$tmp/s.st" --pattern 2:4 -o "$tmp/k.st" --quiet
"$BIN/tb-pack" -m "$MODEL" --masks "$tmp/k.st" -f "$tmp/g.fisher" --layers 0:1 --compensate recon -o "$tmp/p.tb" --quiet
loss() { # device precision
    "$BIN/tb-recon" -m "$MODEL" --shard "$tmp/p.tb" --layer 0 -t "$CALIB" --max-windows 32 --steps 300 \
        --device "$1" ${2:+--precision $2} -v -o "$tmp/r-$1.tb" 2>&1 | sed -n 's/.*output MSE [^ ]* -> \([^ ]*\) .*/\1/p'
}
l_cpu=$(loss cpu)
l_gpu=$(loss cuda f32)
l_bf=$(loss cuda bf16)
echo "  final MSE cpu $l_cpu, cuda f32 $l_gpu, cuda bf16 $l_bf"
check "|loss_cuda_f32 - loss_cpu| / loss_cpu" "$(awk -v a="$l_gpu" -v b="$l_cpu" 'BEGIN {d=(a-b)/b; if (d<0) d=-d; print d}')" 0.02
check "|loss_cuda_bf16 - loss_cpu| / loss_cpu" "$(awk -v a="$l_bf" -v b="$l_cpu" 'BEGIN {d=(a-b)/b; if (d<0) d=-d; print d}')" 0.02

echo "tb-distill (2:4 magnitude), 20 steps on 8 windows: GPU vs CPU (the KL on those windows after)"
"$BIN/tb-score" -m "$MODEL" --method magnitude -o "$tmp/dm.st" --quiet
"$BIN/tb-nm" -s "$tmp/dm.st" --pattern 2:4 -o "$tmp/dk.st" --quiet
"$BIN/tb-pack" -m "$MODEL" --masks "$tmp/dk.st" --compensate none -o "$tmp/d.tb" --quiet
"$BIN/tb-merge" -m "$MODEL" -o "$tmp/d.tbm" "$tmp/d.tb" --quiet
kd() { # device precision
    "$BIN/tb-distill" -m "$tmp/d.tbm" --teacher "$MODEL" -t "$CALIB" --max-windows 8 --steps 20 --lr 1e-3 \
        --eval-windows 8 --checkpoint-every 0 --device "$1" ${2:+--precision $2} --json --quiet \
        -o "$tmp/kd-$1$2.tbm" | sed -n 's/.*"kl_after":\([^,}]*\).*/\1/p'
}
k_cpu=$(kd cpu "")
k_gpu=$(kd cuda f32)
k_bf=$(kd cuda bf16)
echo "  KL after cpu $k_cpu, cuda f32 $k_gpu, cuda bf16 $k_bf"
check "|kl_cuda_f32 - kl_cpu| / kl_cpu" "$(reldiff "$k_gpu" "$k_cpu")" 0.01
check "|kl_cuda_bf16 - kl_cpu| / kl_cpu" "$(reldiff "$k_bf" "$k_cpu")" 0.05

echo "tb-recon --learn-masks 10 (layer 0, 2:4 magnitude), 100 steps on 8 windows: GPU f32 vs CPU"
"$BIN/tb-pack" -m "$MODEL" --masks "$tmp/dk.st" --compensate none --layers 0:1 -o "$tmp/d0.tb" --quiet
lm() { # device precision
    "$BIN/tb-recon" -m "$MODEL" --shard "$tmp/d0.tb" --layer 0 -t "$CALIB" --max-windows 8 --steps 100 \
        --learn-masks 10 --device "$1" ${2:+--precision $2} --json --quiet -o "$tmp/lm-$1.tb" |
        sed -n 's/.*"mse_after":\([^,}]*\).*/\1/p'
}
m_cpu=$(lm cpu "")
m_gpu=$(lm cuda f32)
c_gpu=$("$BIN/tb-inspect" --json "$tmp/lm-cuda.tb" | python3 -c "
import json, sys; p = json.load(sys.stdin)['pruned']; print(min(t['conforming_fraction'] for t in p))")
echo "  final MSE cpu $m_cpu, cuda f32 $m_gpu; GPU masks conforming 2:4: $c_gpu"
check "|mse_cuda_f32 - mse_cpu| / mse_cpu" "$(reldiff "$m_gpu" "$m_cpu")" 0.03
check "1 - (conforming fraction of the GPU's learned masks)" "$(awk -v c="$c_gpu" 'BEGIN {print 1 - c}')" 0
sp24_checks
[ "$fail" -eq 0 ] && echo "tools.sh: passed" || { echo "tools.sh: FAILED"; exit 1; }
