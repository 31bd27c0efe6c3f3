#!/usr/bin/env bats
# Hostile numbers (issue 15): NaN/Inf weights or statistics, all-zero rows and
# columns, singular Gram matrices, empty calibration. Each is a one-line error
# naming the tensor, or a documented recovery (RELIABILITY.md): a singular or
# zero Gram is damped (lambda raised until Cholesky succeeds, then the eigen
# fallback), and the result is finite and still N:M.

load helpers

setup_file() {
    export H=$BATS_FILE_TMPDIR
    CALIB=$TB_TEST_DATA/tiny-llama-6m/calib-128x512.safetensors
    tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 2 --stats gram --layers 0:1 -o "$H/g.fisher" --quiet
    "$TB_HELPERS/mask_fixture" "$TB_MODEL" "$H/masks" 2:4 --layer 0
    # patch FILE TENSOR PY_EXPR_OVER_NUMPY_ARRAY OUT: a copy with one tensor changed
    python3 - "$TB_MODEL" "$H" <<'PY'
import json, os, shutil, struct, sys
model, out = sys.argv[1], sys.argv[2]
def patch(src, dst, edits):
    b = bytearray(open(src, "rb").read())
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    for name, fn in edits.items():
        t = h[name]
        base = 8 + n + t["data_offsets"][0]
        fn(b, base, t)
    open(dst, "wb").write(b)
def bf16_set(b, base, i, bits): b[base + 2 * i: base + 2 * i + 2] = struct.pack("<H", bits)
up = "model.layers.0.mlp.up_proj.weight"  # BF16 [768, 256]
for d, edit in {
    "nan": lambda b, base, t: bf16_set(b, base, 5, 0x7fc0),
    "inf": lambda b, base, t: bf16_set(b, base, 256 * 3 + 7, 0x7f80),
    # row 2 and column 9 all zero: a dead output and a dead input channel
    "zero": lambda b, base, t: ([bf16_set(b, base, 2 * 256 + c, 0) for c in range(256)],
                                [bf16_set(b, base, r * 256 + 9, 0) for r in range(768)]),
}.items():
    os.makedirs(os.path.join(out, d))
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(model, f), os.path.join(out, d, f))
    patch(os.path.join(model, "model.safetensors"), os.path.join(out, d, "model.safetensors"), {up: edit})
g = "gram.model.layers.0.mlp.gate_proj.input"  # F64 [256, 256]
def f64_set(b, base, i, v): b[base + 8 * i: base + 8 * i + 8] = struct.pack("<d", v)
patch(os.path.join(out, "g.fisher"), os.path.join(out, "g-inf.fisher"), {g: lambda b, base, t: f64_set(b, base, 257 * 4, float("inf"))})
patch(os.path.join(out, "g.fisher"), os.path.join(out, "g-nan.fisher"), {g: lambda b, base, t: f64_set(b, base, 3, float("nan"))})
def zero(b, base, t): b[base: base + 8 * 256 * 256] = bytes(8 * 256 * 256)
patch(os.path.join(out, "g.fisher"), os.path.join(out, "g-zero.fisher"), {g: zero})
def rank1(b, base, t):  # x x^T for x = (1, 2, ..., 256): singular, rank 1
    b[base: base + 8 * 256 * 256] = b"".join(struct.pack("<d", float((i + 1) * (j + 1))) for i in range(256) for j in range(256))
patch(os.path.join(out, "g.fisher"), os.path.join(out, "g-rank1.fisher"), {g: rank1})
PY
}

setup() { TMP=$(mktemp -d); }
teardown() { rm -rf "$TMP"; }

@test "a NaN weight: tb-score, tb-pack, tb-fisher and tb-run each stop with one line naming the tensor" {
    run tb-score -m "$H/nan" --method magnitude --tensors 'model.layers.0.*' -o "$TMP/s.st" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-score
    [[ "$output" == *"model.layers.0.mlp.up_proj.weight"* ]]
    run tb-pack -m "$H/nan" --masks "$H/masks" --layers 0 -o "$TMP/p.tb" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-pack
    [[ "$output" == *"tensor 'model.layers.0.mlp.up_proj.weight': element (0, 5) is NaN"* ]]
    [ ! -e "$TMP/p.tb" ]
    # tb-fisher: the first NaN gradient, named by tensor and window
    run tb-fisher -m "$H/nan" -t "$TB_TEST_DATA/tiny-llama-6m/calib-128x512.safetensors" --max-windows 1 -o "$TMP/f.fisher" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-fisher
    [[ "$output" == *"window 0: gradient of 'model.layers."*"is NaN"* ]]
    [ ! -e "$TMP/f.fisher" ]
    # perplexity is never NaN: the loss's cause is named
    run tb-run -m "$H/nan" --ppl "$TB_TEST_DATA/wikitext2-test-head.txt" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-run
    [[ "$output" == *"tensor 'model.layers.0.mlp.up_proj.weight': element 5 is not finite"* ]]
}

@test "an infinite weight: tb-pack names it" {
    run tb-pack -m "$H/inf" --masks "$H/masks" --layers 0 -o "$TMP/p.tb" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-pack
    [[ "$output" == *"element (3, 7) is infinite"* ]]
}

@test "NaN or Inf in a Gram matrix: tb-score, tb-nm and tb-pack name the statistic" {
    run tb-score -m "$TB_MODEL" -f "$H/g-inf.fisher" --method wanda --tensors 'model.layers.0.mlp.*' -o "$TMP/s.st" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-score
    [[ "$output" == *"tensor 'gram.model.layers.0.mlp.gate_proj.input': entry (4, 4) is infinite"* ]]
    run tb-score -m "$TB_MODEL" -f "$H/g-nan.fisher" --method obs --tensors 'model.layers.0.mlp.up_proj.*' -o "$TMP/s.st" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-score
    [[ "$output" == *"entry (0, 3) is NaN"* ]]
    tb-score -m "$TB_MODEL" -f "$H/g.fisher" --method wanda --tensors 'model.layers.0.mlp.up_proj.*' -o "$TMP/s.st" --quiet
    run tb-nm -s "$TMP/s.st" --pattern 2:4 --solver iterative -m "$TB_MODEL" -f "$H/g-nan.fisher" -o "$TMP/m.st" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-nm
    [[ "$output" == *"entry (0, 3) is NaN"* ]]
    [ ! -e "$TMP/m.st" ]
    run tb-pack -m "$TB_MODEL" --masks "$H/masks" -f "$H/g-nan.fisher" --compensate sparsegpt --layers 0 -o "$TMP/p.tb" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-pack
    [[ "$output" == *"gram.model.layers.0.mlp.gate_proj.input': entry (0, 3) is NaN"* ]]
    [ ! -e "$TMP/p.tb" ]
}

# finite, exact zeros where pruned, 2:4: what a recovery must still give
check_shard() {
    run tb-inspect --json "$1"
    [ "$status" -eq 0 ]
    python3 -c "
import json, sys
d = json.loads(sys.argv[1]); p = d['pruned']
assert p and all(t['conforming_fraction'] == 1 for t in p), p
print('ok')" "$output"
    tb-merge --partial --quiet -m "$TB_MODEL" -o "$TMP/p.tbm" "$1"
    run tb-run -m "$TMP/p.tbm" --base "$TB_MODEL" --ppl "$TB_TEST_DATA/wikitext2-test-head.txt" --quiet
    [ "$status" -eq 0 ]
    [[ "$output" != *nan* ]]
}

@test "a zero Gram (dead inputs) and a rank-1 Gram: damping recovers, the shard is finite and 2:4" {
    for g in zero rank1; do
        for c in recon sparsegpt; do
            tb-pack -m "$TB_MODEL" --masks "$H/masks" -f "$H/g-$g.fisher" --compensate $c --layers 0 -o "$TMP/p.tb" --quiet
            check_shard "$TMP/p.tb"
        done
    done
}

@test "an all-zero row and column in a weight: scores, masks and compensation stay finite" {
    tb-score -m "$H/zero" -f "$H/g.fisher" --method wanda --tensors 'model.layers.0.*' -o "$TMP/s.st" --quiet
    tb-nm -s "$TMP/s.st" --pattern 2:4 -o "$TMP/m.st" --quiet
    tb-pack -m "$H/zero" --masks "$TMP/m.st" -f "$H/g.fisher" --compensate sparsegpt --layers 0 -o "$TMP/p.tb" --quiet
    check_shard "$TMP/p.tb"
}

@test "empty calibration: no text, no windows, zero windows: one line each" {
    : >"$TMP/empty.txt"
    run tb-tokenize -m "$TB_MODEL" --bos --windows 4 --seq-len 64 "$TMP/empty.txt" -o "$TMP/c.st"
    [ "$status" -eq 2 ]; one_line_error tb-tokenize
    [ ! -e "$TMP/c.st" ]
    run tb-fisher -m "$TB_MODEL" --text "$TMP/empty.txt" --windows 4 --seq-len 64 -o "$TMP/f.fisher" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-fisher
    python3 -c "import sys; sys.path.insert(0, '$BATS_TEST_DIRNAME/../fuzz'); from mkseeds import st; open('$TMP/z.st', 'wb').write(st([('input_ids', 'I32', [0, 64], b'')]))"
    run tb-fisher -m "$TB_MODEL" -t "$TMP/z.st" -o "$TMP/f.fisher" --quiet
    [ "$status" -eq 2 ]; one_line_error tb-fisher
    [ ! -e "$TMP/f.fisher" ]
}
