#!/usr/bin/env bats
# tb-pack: masks applied, weights compensated, .tb shards other tools read;
# one-line errors and no output on bad input. Masks come from the
# mask_fixture helper (magnitude N:M), so these tests need neither tb-score
# nor tb-nm; one test runs the real tb-score | tb-nm pipeline when built.

load helpers

setup() {
    TMP=$(mktemp -d)
    GRAM=$TB_TEST_DATA/gram-l0-q_proj-16win.safetensors
}
teardown() { rm -rf "$TMP"; }

fixture() { "$TB_HELPERS/mask_fixture" "$TB_MODEL" "$@"; }

# no output and no temporary file left in $TMP
no_output() {
    local left
    left=$(ls "$TMP" | grep -v '^masks' || true)
    [ -z "$left" ] || { echo "left behind: $left"; return 1; }
}

# the safetensors header of FILE as JSON (stdlib only): tb-inspect shows a
# .tb per pruned weight, these checks want the stored tensors
st_header() {
    python3 -c 'import struct, sys; f = open(sys.argv[1], "rb"); print(f.read(struct.unpack("<Q", f.read(8))[0]).decode())' "$1"
}

# tests/py/tb_pack_check.py: an independent numpy decoder of the shard
py_check() { # py_check SHARD MASKS: decoded == model * mask, bit for bit
    python3 "$BATS_TEST_DIRNAME/../py/tb_pack_check.py" check "$1" "$2" "$TB_MODEL/model.safetensors"
}

@test "--help, and usage errors are one line with exit 1" {
    run tb-pack --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"--compensate NAME"* ]]
    run tb-pack -m "$TB_MODEL" --masks x
    [ "$status" -eq 1 ]; one_line_error tb-pack
    run tb-pack -m "$TB_MODEL" --masks x -o "$TMP/o.tb" --compensate magic
    [ "$status" -eq 1 ]; one_line_error tb-pack
    [[ "$output" == *"--compensate: 'magic' is not one of none, redist, obs, recon or sparsegpt"* ]]
    run tb-pack -m "$TB_MODEL" --masks x -o "$TMP/o.tb" --compensate recon
    [ "$status" -eq 1 ]; one_line_error tb-pack
    [[ "$output" == *"needs -f STATS.fisher"* ]]
    run tb-pack -m "$TB_MODEL" --masks x -o "$TMP/o.tb" --layers 3-1
    [ "$status" -eq 1 ]; one_line_error tb-pack
    no_output
}

@test "2:4 mask only: weights packed, the rest copied, tb-inspect reads the shard" {
    fixture "$TMP/masks" 2:4
    run tb-pack --quiet -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/p.tb"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    run python3 -c "
import json,sys; t=json.loads(sys.argv[1]); m=t.pop('__metadata__'); info=json.loads(m['tensorbit.tensors'])
print(len(t), len(info), m['tensorbit.kind'], m['pattern'], m['compensation'],
      t['model.layers.0.self_attn.q_proj.weight.values']['shape'], t['model.layers.0.self_attn.q_proj.weight.indices']['dtype'],
      t['model.layers.0.mlp.down_proj.weight.indices']['shape'], info['model.layers.0.mlp.down_proj.weight']['format'])" "$(st_header "$TMP/p.tb")"
    [ "$output" = "98 42 tb 2:4 none [256, 128] U8 [256, 96] nm" ]
    run tb-inspect --json "$TMP/p.tb"
    [ "$status" -eq 0 ]
    run python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['kind'], len(d['pruned']), {p['sparsity'] for p in d['pruned']})" "$output"
    [ "$output" = "tb 42 {0.5}" ]
    # a copied tensor is the model's, bit for bit
    diff <(tb-inspect --tensor model.norm.weight "$TB_MODEL") <(tb-inspect --tensor model.norm.weight "$TMP/p.tb")
}

@test "python decodes the 2:4 indices and values to the masked model, bit for bit" {
    has_python_module numpy || skip "no numpy"
    fixture "$TMP/masks" 2:4
    tb-pack --quiet -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/p.tb"
    run py_check "$TMP/p.tb" "$TMP/masks"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [ "$output" = "checked 42" ]
}

@test "4:8 with a channel permutation: .perm stored, values in permuted order" {
    has_python_module numpy || skip "no numpy"
    fixture "$TMP/masks" 4:8 --layer 1 --perm
    tb-pack --quiet -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/p.tb" --layers 1
    run st_header "$TMP/p.tb"
    [[ "$output" == *'"model.layers.1.mlp.up_proj.weight.perm":{"dtype":"I32","shape":[256]'* ]]
    run py_check "$TMP/p.tb" "$TMP/masks"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [ "$output" = "checked 7" ]
}

@test "unstructured: dense weight with exact zeros and its .mask" {
    fixture "$TMP/masks" unstructured --layer 2
    tb-pack --quiet -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/p.tb" --layers 2
    run tb-inspect --json "$TMP/p.tb"
    run python3 -c "
import json,sys; p={x['name']:x for x in json.loads(sys.argv[1])['pruned']}['model.layers.2.mlp.gate_proj.weight']
print(p['kind'], p['pattern'], p['sparsity'])" "$output"
    [ "$output" = "masked unstructured 0.5" ]
    run python3 -c "import json,sys; t=json.loads(sys.argv[1]); print([(t[k]['dtype'], t[k]['shape']) for k in
        ('model.layers.2.mlp.gate_proj.weight', 'model.layers.2.mlp.gate_proj.weight.mask')])" "$(st_header "$TMP/p.tb")"
    [ "$output" = "[('BF16', [768, 256]), ('U8', [768, 32])]" ]
    if has_python_module numpy; then
        run py_check "$TMP/p.tb" "$TMP/masks"
        [ "$output" = "checked 7" ]
    fi
}

@test "--layers: one layer's tensors; --include-dense adds embeddings and final norm" {
    fixture "$TMP/masks" 2:4
    tb-pack --quiet -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/l3.tb" --layers 3
    count='import json,sys; t=json.loads(sys.argv[1]); print(len(t) - 1, t["__metadata__"]["layers"])'
    run python3 -c "$count" "$(st_header "$TMP/l3.tb")"
    [ "$output" = "16 3-3" ] # 7 x (values, indices) + 2 norms
    tb-pack --quiet -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/l45.tb" --layers 4:6 --include-dense
    run python3 -c "$count" "$(st_header "$TMP/l45.tb")"
    [ "$output" = "34 4-5" ] # 2 x 16 + embed_tokens + model.norm (tied lm_head)
}

@test "recon with the bundled layer-0 Gram lowers ||dW X|| below mask-only on every tensor" {
    fixture "$TMP/masks" 2:4 --layer 0 --only q_proj --only k_proj --only v_proj
    run tb-pack -v -m "$TB_MODEL" --masks "$TMP/masks" -f "$GRAM" --compensate recon --layers 0 -o "$TMP/r.tb"
    [ "$status" -eq 0 ]
    n=0
    for line in "${lines[@]}"; do
        [[ "$line" == *"||dW X||/||W X||"* && "$line" == *"] model."* ]] || continue
        read -r got mask < <(sed -E 's/.*\|\|W X\|\| ([0-9.]+) \(mask only ([0-9.]+)\).*/\1 \2/' <<<"$line")
        echo "$line"
        python3 -c "import sys; sys.exit(0 if float('$got') < 0.9 * float('$mask') else 1)"
        n=$((n + 1))
    done
    [ "$n" -eq 3 ]
    [[ "${lines[-1]}" == *"wrote $TMP/r.tb: 9 tensors, 3 pruned (2:4, recon)"* ]]
}

@test "without -v or --json (no error reports) the shard is the same bytes" {
    fixture "$TMP/masks" 2:4 --layer 0 --only q_proj --only k_proj
    run tb-pack -m "$TB_MODEL" --masks "$TMP/masks" -f "$GRAM" --compensate sparsegpt --layers 0 -o "$TMP/q.tb"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    run tb-pack -v -m "$TB_MODEL" --masks "$TMP/masks" -f "$GRAM" --compensate sparsegpt --layers 0 -o "$TMP/v.tb"
    [ "$status" -eq 0 ]
    [[ "$output" == *"||dW X||/||W X||"* ]]
    # equal but for the command line in the metadata: the data section is compared
    python3 -c '
import struct, sys
def data(p):
    b = open(p, "rb").read()
    return b[8 + struct.unpack("<Q", b[:8])[0]:]
sys.exit(data(sys.argv[1]) != data(sys.argv[2]))' "$TMP/q.tb" "$TMP/v.tb"
}

@test "recon with permuted masks: the reported ||dW X|| is the stored, un-permuted weight's" {
    has_python_module numpy || skip "no numpy"
    fixture "$TMP/masks" 2:4 --layer 0 --only q_proj --only v_proj --perm
    run tb-pack -v -m "$TB_MODEL" --masks "$TMP/masks" -f "$GRAM" --compensate recon --layers 0 -o "$TMP/r.tb"
    [ "$status" -eq 0 ]
    reported=$(printf '%s\n' "${lines[@]}" | sed -nE 's/.*\] ([^ ]+) recon, \|\|dW X\|\|\/\|\|W X\|\| ([0-9.]+) .*/\1 \2/p')
    recomputed=$(python3 "$BATS_TEST_DIRNAME/../py/tb_pack_check.py" error "$TMP/r.tb" "$GRAM" "$TB_MODEL/model.safetensors")
    echo "reported:"; echo "$reported"; echo "recomputed:"; echo "$recomputed"
    [ "$(wc -l <<<"$reported")" -eq 2 ]
    [ "$reported" = "$recomputed" ]
}

@test "every method runs on tb-fisher statistics, with permuted masks" {
    tb-fisher --quiet -m "$TB_MODEL" -t "$TB_MODEL/calib-128x512.safetensors" --max-windows 2 \
        --grad-samples 2 -o "$TMP/s.fisher"
    fixture "$TMP/masks" 2:4 --layer 5 --perm
    for c in none redist obs recon sparsegpt; do
        run tb-pack -v -m "$TB_MODEL" --masks "$TMP/masks" -f "$TMP/s.fisher" --compensate $c --layers 5 -o "$TMP/$c.tb"
        [ "$status" -eq 0 ] || { echo "$c: $output"; false; }
        [[ "${lines[-1]}" == *"7 pruned (2:4, $c"* ]]
        if has_python_module numpy && [ $c = none ]; then
            run py_check "$TMP/$c.tb" "$TMP/masks"
            [ "$output" = "checked 7" ]
        fi
    done
    # compensation moved the kept weights (recon), masking alone did not
    run cmp -s "$TMP/none.tb" "$TMP/recon.tb"
    [ "$status" -ne 0 ]
    # sparsegpt re-chooses the keep bits and says so
    run st_header "$TMP/sparsegpt.tb"
    [[ "$output" == *'\"mask\":\"sparsegpt\"'* ]]
}

@test "tb-score | tb-nm masks feed tb-pack" {
    tb-score --quiet -m "$TB_MODEL" --method magnitude -o "$TMP/scores"
    tb-nm --quiet -s "$TMP/scores" --pattern 2:4 -o "$TMP/masks"
    rm "$TMP/scores"
    run tb-pack --quiet -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/p.tb"
    [ "$status" -eq 0 ]
    if has_python_module numpy; then
        run py_check "$TMP/p.tb" "$TMP/masks"
        [ "$output" = "checked 42" ]
    fi
}

@test "bad input: a mask whose shape does not match its weight (exit 2, one line, no output)" {
    fixture "$TMP/masks" 2:4 --bad-shape
    run tb-pack -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/p.tb"
    [ "$status" -eq 2 ]
    one_line_error tb-pack
    [[ "$output" == *"$TMP/masks: mask for 'model.layers.0.mlp.down_proj.weight' is U8 [255, 96], weight [256, 768] needs U8 [256, 96]"* ]]
    no_output
}

@test "bad input: no Gram for recon (exit 2, one line, no output)" {
    fixture "$TMP/masks" 2:4 --layer 0
    run tb-pack -m "$TB_MODEL" --masks "$TMP/masks" -f "$GRAM" --compensate recon -o "$TMP/p.tb"
    [ "$status" -eq 2 ]
    one_line_error tb-pack
    [[ "$output" == *"$GRAM: no 'gram.model.layers.0.mlp.down_proj.input' for recon of 'model.layers.0.mlp.down_proj.weight'"* ]]
    no_output
    run tb-pack -m "$TB_MODEL" --masks "$TMP/masks" -f "$GRAM" --compensate obs -o "$TMP/p.tb"
    [ "$status" -eq 2 ]
    one_line_error tb-pack
    [[ "$output" == *"no 'grad.model.layers.0.mlp.down_proj.weight' for obs"* ]]
    no_output
}

@test "bad input: masks that break their pattern, or have no pattern (exit 2, one line)" {
    fixture "$TMP/masks" 2:4 --layer 0 --meta pattern=1:4
    run tb-pack -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/p.tb"
    [ "$status" -eq 2 ]
    one_line_error tb-pack
    [[ "$output" == *"tensor 'model.layers.0.mlp.down_proj.weight': row 0, columns 0..3 keep 2, pattern 1:4 allows 1"* ]]
    fixture "$TMP/masks" 2:4 --layer 0 --meta pattern=2-4
    run tb-pack -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/p.tb"
    [ "$status" -eq 2 ]
    one_line_error tb-pack
    [[ "$output" == *"pattern '2-4'"* ]]
    fixture "$TMP/masks" 2:4 --layer 0 --meta tensorbit.kind=scores
    run tb-pack -m "$TB_MODEL" --masks "$TMP/masks" -o "$TMP/p.tb"
    [ "$status" -eq 2 ]
    [[ "$output" == *"not a mask file"* ]]
    no_output
}
