#!/usr/bin/env bats
# tb-export: a pruned model (.tbm) back to an HF checkpoint, dense or in the
# compressed-tensors 2:4 layout. The pruned models are made once, by the real
# pipeline (tb-score magnitude | tb-nm | tb-pack | tb-merge) on tiny-llama-6m.
# tests/py/export_check.py checks the exports independently (numpy +
# safetensors); with TB_CT_PYTHON naming a python that has torch and
# compressed-tensors <= 0.14 (the last with sparse compressors) it also runs
# compressed-tensors' own decompressor and transformers' from_pretrained.

load helpers

TEXT=$TB_TEST_DATA/wikitext2-test-head.txt

setup_file() {
    local F=$BATS_FILE_TMPDIR M=$TB_TEST_DATA/tiny-llama-6m B=${TB_BIN:-$BATS_TEST_DIRNAME/../../build/bin}
    export FIX=$F
    "$B/tb-score" -m "$M" --method magnitude -o "$F/scores" --quiet
    "$B/tb-nm" -s "$F/scores" --pattern 2:4 -o "$F/m24" --quiet
    "$B/tb-nm" -s "$F/scores" --pattern 2:4 --permute -o "$F/m24p" --quiet
    "$B/tb-nm" -s "$F/scores" --pattern 2:4 --permute-foldable -m "$M" -o "$F/m24f" --quiet
    "$B/tb-nm" -s "$F/scores" --pattern 4:8 -o "$F/m48" --quiet
    mkdir -p "$F/nm" "$F/perm" "$F/fold" "$F/mix" "$F/part"
    "$B/tb-pack" -m "$M" --masks "$F/m24f" -o "$F/fold/model.tb" --quiet
    "$B/tb-merge" -m "$M" -o "$F/fold/model.tbm" "$F/fold/model.tb" --quiet
    "$B/tb-pack" -m "$M" --masks "$F/m24" -o "$F/nm/model.tb" --quiet
    "$B/tb-merge" -m "$M" -o "$F/nm/model.tbm" "$F/nm/model.tb" --quiet
    "$B/tb-pack" -m "$M" --masks "$F/m24p" -o "$F/perm/model.tb" --quiet
    "$B/tb-merge" -m "$M" -o "$F/perm/model.tbm" "$F/perm/model.tb" --quiet
    # two shards: layers 0-2 2:4 (with the dense tensors), 3-5 4:8
    "$B/tb-pack" -m "$M" --masks "$F/m24" --layers 0-2 --include-dense -o "$F/mix/a.tb" --quiet
    "$B/tb-pack" -m "$M" --masks "$F/m48" --layers 3-5 -o "$F/mix/b.tb" --quiet
    "$B/tb-merge" -m "$M" -o "$F/mix/model.tbm" "$F/mix/a.tb" "$F/mix/b.tb" --quiet
    # partial: only layers 0-2 pruned, the rest read from the base model
    "$B/tb-pack" -m "$M" --masks "$F/m24" --layers 0-2 -o "$F/part/a.tb" --quiet
    "$B/tb-merge" --partial -m "$M" -o "$F/part/model.tbm" "$F/part/a.tb" --quiet
    touch "$F/ready"
}

setup() {
    [ -e "$FIX/ready" ] # setup_file built the fixtures
    TMP=$(mktemp -d)
}
teardown() { [ -z "${TMP:-}" ] || rm -rf "$TMP"; }

have_py() { has_python_module numpy && has_python_module safetensors; }

# export_check ARGS...: the independent check; with TB_CT_PYTHON, also the
# compressed-tensors library and transformers
export_check() {
    run python3 "$BATS_TEST_DIRNAME/../py/export_check.py" --source "$TB_MODEL" "$@"
    echo "$output"
    [ "$status" -eq 0 ]
    if [ -n "${TB_CT_PYTHON:-}" ]; then
        run "$TB_CT_PYTHON" "$BATS_TEST_DIRNAME/../py/export_check.py" --source "$TB_MODEL" "$@" --transformers \
            $([[ "$*" == *--compressed* ]] && echo --ct-library)
        echo "$output"
        [ "$status" -eq 0 ]
    fi
}

ppl() { tb-run -m "$1" --base "$TB_MODEL" --ppl "$TEXT" --seq-len 64 --max-windows 4 --quiet --threads 2 | tail -1; }

# same_ppl A B: tb-run gives the export the .tbm's perplexity
same_ppl() {
    local a b
    a=$(ppl "$1")
    b=$(ppl "$2")
    echo "tbm $a, export $b"
    [[ "$a" == "ppl: "* ]]
    # the same weights; a permuted .tbm sums its dot products in another order
    python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(abs(a-b) > 1e-6*abs(a))" "${a#ppl: }" "${b#ppl: }"
}

# nothing beside DIR: no output and no temporary directory
nothing_in() {
    local left
    left=$(ls -A "$1")
    [ -z "$left" ] || { echo "left behind: $left"; return 1; }
}

@test "--help; usage errors are one line with exit 1" {
    run tb-export --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"--format NAME"* && "$output" == *"compressed-tensors"* && "$output" == *"--max-shard-size"* ]]
    run tb-export "$FIX/nm/model.tbm"
    [ "$status" -eq 1 ]; one_line_error tb-export
    [[ "$output" == *"missing -o/--output DIR"* ]]
    run tb-export "$FIX/nm/model.tbm" -o "$TMP/x" --format sparse
    [ "$status" -eq 1 ]; one_line_error tb-export
    run tb-export "$FIX/nm/model.tbm" -o "$TMP/x" --dtype int8
    [ "$status" -eq 1 ]; one_line_error tb-export
    run tb-export "$FIX/nm/model.tbm" -o "$TMP/x" --max-shard-size 5XB
    [ "$status" -eq 1 ]; one_line_error tb-export
    nothing_in "$TMP"
}

@test "dense: an HF checkpoint with the source's tensors, every proj weight 2:4 (tb-inspect --nm)" {
    run tb-export -v "$FIX/nm/model.tbm" -o "$TMP/d"
    [ "$status" -eq 0 ]
    [[ "$output" == "tb-export: 56 tensors (42 pruned), "*"zeros -> $TMP/d (1 file, "* ]]
    for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do [ -f "$TMP/d/$f" ]; done
    [ "$(ls -A "$TMP" | wc -l)" -eq 1 ] # no temporary directory left
    cmp "$TMP/d/tokenizer.json" "$TB_MODEL/tokenizer.json"
    # the C side of the acceptance check: every *proj.weight fully 2:4
    run tb-inspect --nm 2:4 --json "$TMP/d"
    [ "$status" -eq 0 ]
    run python3 -c "
import json, sys
d = json.loads(sys.argv[1])
p = [t for t in d['tensors'] if t['name'].endswith('proj.weight')]
print(len(p), min(t['nm']['conforming_fraction'] for t in p), d['n_parameters'])" "$output"
    [ "$output" = "42 1 6163712" ] || { echo "$output"; false; }
}

@test "dense: the independent check (shapes, dtypes, bit-identical tensors, .tb decode, N:M)" {
    have_py || skip "python3 numpy/safetensors missing"
    tb-export "$FIX/nm/model.tbm" -o "$TMP/d" --quiet
    export_check --tbm "$FIX/nm/model.tbm" --dense "$TMP/d" --nm 2:4
    [[ "$output" == *"ok: 42 *proj.weight tensors have at most N nonzeros in every group of M"* ]]
}

@test "dense: tb-run gives the export the .tbm's perplexity" {
    tb-export "$FIX/nm/model.tbm" -o "$TMP/d" --quiet
    same_ppl "$FIX/nm/model.tbm" "$TMP/d"
}

@test "compressed-tensors: sparse-24-bitmask tensors and config; decompresses to the dense export" {
    tb-export "$FIX/nm/model.tbm" -o "$TMP/d" --quiet
    run tb-export -v "$FIX/nm/model.tbm" -o "$TMP/c" --format compressed-tensors
    [ "$status" -eq 0 ]
    [[ "$output" == *"(42 pruned, 42 as sparse-24-bitmask)"* ]]
    run tb-inspect --json "$TMP/c"
    [ "$status" -eq 0 ]
    run python3 -c "
import json, sys
d = json.loads(sys.argv[1]); t = {x['name']: x for x in d['tensors']}
q = 'model.layers.0.self_attn.q_proj.'
print(t[q + 'compressed']['dtype'], t[q + 'compressed']['shape'], t[q + 'bitmask']['dtype'], t[q + 'bitmask']['shape'],
      t[q + 'shape']['dtype'], t[q + 'shape']['shape'], q + 'weight' in t, 'model.norm.weight' in t)
c = json.load(open(sys.argv[2]))['quantization_config']; s = c['sparsity_config']
print(c['quant_method'], c['version'], s['format'], s['sparsity_structure'], len(s['targets']), s['ignore'],
      0.4 < s['global_sparsity'] < 0.42)" "$output" "$TMP/c/config.json"
    echo "$output"
    [ "${lines[0]}" = "BF16 [256, 128] U8 [256, 32] I64 [2, 1] False True" ]
    [ "${lines[1]}" = "compressed-tensors 0.14.0.1 sparse-24-bitmask 2:4 42 [] True" ]
    have_py || skip "python3 numpy/safetensors missing"
    export_check --tbm "$FIX/nm/model.tbm" --dense "$TMP/d" --compressed "$TMP/c"
    [[ "$output" == *"ok: sparse-24-bitmask: 42 weights decompressed by the spec (numpy) equal the dense export"* ]]
}

@test "a channel permutation is undone: same perplexity; 2:4 under the permutation; compressed-tensors keeps those dense" {
    tb-export "$FIX/perm/model.tbm" -o "$TMP/d" --quiet
    same_ppl "$FIX/perm/model.tbm" "$TMP/d"
    # --permute moves every weight's inputs: only down_proj's fold (into
    # gate/up's rows; o_proj's moved across heads), so the rest stay dense
    run tb-export -v "$FIX/perm/model.tbm" -o "$TMP/c" --format compressed-tensors
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "tb-export: warning: tensor '"*"' is 2:4 under a channel permutation that cannot be folded into the layer before it (tb-nm --permute-foldable): kept dense"* ]]
    [[ "${lines[1]}" == *"(42 pruned, 6 as sparse-24-bitmask, 6 permutations folded into the layer before)"* ]]
    run tb-export "$FIX/perm/model.tbm" -o "$TMP/b" --format compressed-tensors-bitmask --quiet
    [ "$status" -eq 0 ]
    have_py || skip "python3 numpy/safetensors missing"
    export_check --tbm "$FIX/perm/model.tbm" --dense "$TMP/d" --compressed "$TMP/b"
    [[ "$output" == *"note: model.layers.0.self_attn.q_proj.weight is 2:4 in its stored (permuted) column order"* ]]
    [[ "$output" == *"ok: sparse-bitmask: 42 weights"* ]]
}

@test "foldable permutations (tb-nm --permute-foldable) fold into the layer before: same perplexity, plain 2:4, compressed-tensors" {
    run tb-export "$FIX/fold/model.tbm" -o "$TMP/d" --json
    [ "$status" -eq 0 ]
    # 6 layers: down_proj's into gate/up, o_proj's (within heads) into v_proj
    [ "$(echo "$output" | python3 -c 'import json,sys; print(json.load(sys.stdin)["permutations_folded"])')" = 12 ]
    same_ppl "$FIX/fold/model.tbm" "$TMP/d"
    run tb-inspect "$TMP/d" --nm 2:4 --json
    [ "$(echo "$output" | python3 -c "import json,sys; d=json.load(sys.stdin)
print(sum(1 for t in d['tensors'] if t.get('nm', {}).get('conforming_fraction') == 1))")" = 42 ]
    run tb-export "$FIX/fold/model.tbm" -o "$TMP/c" --format compressed-tensors --quiet
    [ "$status" -eq 0 ]
    have_py || skip "python3 numpy/safetensors missing"
    export_check --tbm "$FIX/fold/model.tbm" --dense "$TMP/d" --compressed "$TMP/c"
    [[ "$output" == *"42 pruned equal to the .tb decode; 12 permutations folded into the layer before"* ]]
    [[ "$output" == *"ok: sparse-24-bitmask: 42 weights"* ]]
    [[ "$output" != *"stored (permuted) column order"* ]]
}

@test "2:4 and 4:8 shards: the 4:8 weights stay dense with a warning" {
    tb-export "$FIX/mix/model.tbm" -o "$TMP/d" --quiet
    run tb-export -v "$FIX/mix/model.tbm" -o "$TMP/c" --format compressed-tensors
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "tb-export: warning: tensor 'model.layers.3."*"' is 4:8: kept dense"* ]]
    [[ "${lines[1]}" == *"(42 pruned, 21 as sparse-24-bitmask)"* ]]
    same_ppl "$FIX/mix/model.tbm" "$TMP/d"
    have_py || skip "python3 numpy/safetensors missing"
    export_check --tbm "$FIX/mix/model.tbm" --dense "$TMP/d" --compressed "$TMP/c"
}

@test "a partial .tbm exports the whole model (tensors in no shard from its base)" {
    run tb-export -v "$FIX/part/model.tbm" --base "$TB_MODEL" -o "$TMP/d"
    [ "$status" -eq 0 ]
    [[ "$output" == *"56 tensors (21 pruned)"* ]]
    same_ppl "$FIX/part/model.tbm" "$TMP/d"
    have_py || skip "python3 numpy/safetensors missing"
    export_check --tbm "$FIX/part/model.tbm" --dense "$TMP/d"
}

@test "--max-shard-size: shards and an index transformers reads; the same model" {
    run tb-export -v "$FIX/nm/model.tbm" -o "$TMP/s" --max-shard-size 3MB
    [ "$status" -eq 0 ]
    [[ "$output" == *"(5 files, "* ]]
    [ -f "$TMP/s/model-00001-of-00005.safetensors" ] && [ -f "$TMP/s/model-00005-of-00005.safetensors" ]
    [ ! -e "$TMP/s/model.safetensors" ]
    run python3 -c "
import json, sys; i = json.load(open(sys.argv[1]))
print(len(i['weight_map']), i['metadata']['total_size'], sorted(set(i['weight_map'].values()))[-1])" "$TMP/s/model.safetensors.index.json"
    [ "$output" = "56 12327424 model-00005-of-00005.safetensors" ]
    same_ppl "$FIX/nm/model.tbm" "$TMP/s"
    have_py || skip "python3 numpy/safetensors missing"
    export_check --tbm "$FIX/nm/model.tbm" --dense "$TMP/s" --nm 2:4
}

@test "--dtype f32: float tensors and the config's dtype follow" {
    run tb-export "$FIX/nm/model.tbm" -o "$TMP/f" --dtype f32 --quiet
    [ "$status" -eq 0 ]
    run python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['dtype'])" "$TMP/f/config.json"
    [ "$output" = "float32" ]
    same_ppl "$FIX/nm/model.tbm" "$TMP/f"
    have_py || skip "python3 numpy/safetensors missing"
    export_check --tbm "$FIX/nm/model.tbm" --dense "$TMP/f" --dtype f32 --nm 2:4
}

@test "a shard whose checksum does not match: one line, exit 2, no output" {
    mkdir "$TMP/m" "$TMP/out"
    cp "$FIX/nm/"* "$TMP/m/"
    # flip one bit in the middle of the shard
    python3 -c "
import os, sys
p = sys.argv[1]; f = open(p, 'r+b'); f.seek(os.path.getsize(p) // 2); b = f.read(1)
f.seek(-1, 1); f.write(bytes([b[0] ^ 1]))" "$TMP/m/model.tb"
    run tb-export "$TMP/m/model.tbm" -o "$TMP/out/d"
    [ "$status" -eq 2 ]; one_line_error tb-export
    [[ "$output" == *"model.tbm: shard 'model.tb': SHA-256 "*" does not match the index"* ]]
    nothing_in "$TMP/out"
}

@test "a missing shard: one line, exit 3 (the file cannot be opened), no output" {
    mkdir "$TMP/m" "$TMP/out"
    cp "$FIX/nm/"* "$TMP/m/"
    rm "$TMP/m/model.tb"
    run tb-export "$TMP/m/model.tbm" -o "$TMP/out/d"
    [ "$status" -eq 3 ]; one_line_error tb-export
    [[ "$output" == *"model.tb: No such file or directory"* ]]
    nothing_in "$TMP/out"
}

@test "an existing non-empty DIR: exit 1 and untouched; --force replaces it; an empty one is used" {
    mkdir "$TMP/d" "$TMP/e"
    echo keep >"$TMP/d/mine.txt"
    run tb-export "$FIX/nm/model.tbm" -o "$TMP/d"
    [ "$status" -eq 1 ]; one_line_error tb-export
    [[ "$output" == *"d: exists and is not empty (--force replaces it)"* ]]
    [ "$(cat "$TMP/d/mine.txt")" = keep ]
    [ "$(ls -A "$TMP/d")" = mine.txt ]
    run tb-export "$FIX/nm/model.tbm" -o "$TMP/d" --force --quiet
    [ "$status" -eq 0 ]
    [ ! -e "$TMP/d/mine.txt" ] && [ -f "$TMP/d/model.safetensors" ]
    run tb-export "$FIX/nm/model.tbm" -o "$TMP/e" --quiet
    [ "$status" -eq 0 ]
    [ -f "$TMP/e/model.safetensors" ]
    [ "$(ls -A "$TMP" | sort | tr '\n' ' ')" = "d e " ] # no temporary or set-aside directory left
}

@test "the model's own directory is refused even with --force; a file as DIR is refused" {
    mkdir "$TMP/m"
    cp "$FIX/nm/"* "$TMP/m/"
    run tb-export "$TMP/m/model.tbm" -o "$TMP/m" --force
    [ "$status" -eq 1 ]; one_line_error tb-export
    [[ "$output" == *"holds the model being exported"* ]]
    [ -f "$TMP/m/model.tb" ]
    run tb-export "$TMP/m/model.tbm" -o "$TMP" --force
    [ "$status" -eq 1 ]; one_line_error tb-export
    # a partial index reads its base model: that directory is refused too
    mkdir "$TMP/base" "$TMP/pm"
    cp "$TB_MODEL/config.json" "$TB_MODEL/model.safetensors" "$TMP/base/"
    cp "$FIX/part/a.tb" "$TMP/pm/"
    tb-merge --partial -m "$TMP/base" -o "$TMP/pm/model.tbm" "$TMP/pm/a.tb" --quiet
    run tb-export "$TMP/pm/model.tbm" --base "$TMP/base" -o "$TMP/base" --force
    [ "$status" -eq 1 ]; one_line_error tb-export
    [[ "$output" == *"holds the model being exported"* ]]
    [ -f "$TMP/base/model.safetensors" ]
    touch "$TMP/file"
    run tb-export "$TMP/m/model.tbm" -o "$TMP/file"
    [ "$status" -eq 1 ]; one_line_error tb-export
    [[ "$output" == *"exists and is not a directory"* ]]
}

@test "a missing parent directory: exit 3" {
    run tb-export "$FIX/nm/model.tbm" -o "$TMP/no/such/d"
    [ "$status" -eq 3 ]; one_line_error tb-export
}

@test "a relative DIR, with a trailing slash" {
    cd "$TMP"
    run tb-export "$FIX/nm/model.tbm" -o rel/ --quiet
    [ "$status" -eq 0 ]
    [ -f rel/model.safetensors ] && [ -f rel/config.json ]
    [ "$(ls -A)" = rel ]
    run tb-export "$FIX/nm/model.tbm" -o rel --force --quiet
    [ "$status" -eq 0 ]
    [ "$(ls -A)" = rel ]
}

@test "transformers computes the .tbm's perplexity from the dense export (TB_HF_PYTHON)" {
    [ -n "${TB_HF_PYTHON:-}" ] || skip "set TB_HF_PYTHON to a python with torch and transformers >= 5"
    local m
    for m in nm perm; do
        tb-export "$FIX/$m/model.tbm" -o "$TMP/$m" --quiet
        run "$TB_HF_PYTHON" "$BATS_TEST_DIRNAME/../py/export_check.py" --source "$TB_MODEL" --tbm "$FIX/$m/model.tbm" \
            --dense "$TMP/$m" --ppl "$TEXT" --seq-len 64 --max-windows 4
        echo "$output"
        [ "$status" -eq 0 ]
        hf=$(echo "$output" | sed -n 's/^transformers .* ppl: //p')
        tb=$(ppl "$FIX/$m/model.tbm")
        echo "$m: transformers $hf, tb-run on the .tbm ${tb#ppl: }"
        # f32 both; the sums run in different orders
        python3 -c "import sys; a,b=map(float,sys.argv[1:]); sys.exit(abs(a-b) > 1e-5*b)" "$hf" "${tb#ppl: }"
    done
}

@test "tiny-mistral-10m (sharded source, GQA, untied lm_head): sharded export, same perplexity" {
    local M=$TB_SHARED/models/tiny-mistral-10m
    [ -d "$M" ] || skip "no ../shared"
    mkdir "$TMP/p"
    tb-score -m "$M" --method magnitude -o "$TMP/s" --quiet
    tb-nm -s "$TMP/s" --pattern 2:4 -o "$TMP/m" --quiet
    tb-pack -m "$M" --masks "$TMP/m" -o "$TMP/p/model.tb" --quiet
    tb-merge -m "$M" -o "$TMP/p/model.tbm" "$TMP/p/model.tb" --quiet
    run tb-export -v "$TMP/p/model.tbm" -o "$TMP/d" --max-shard-size 8MB
    [ "$status" -eq 0 ]
    [[ "$output" == *"75 tensors (56 pruned), "*"(4 files, "* ]]
    run tb-export "$TMP/p/model.tbm" -o "$TMP/c" --format compressed-tensors --quiet
    [ "$status" -eq 0 ]
    same_ppl "$TMP/p/model.tbm" "$TMP/d"
    have_py || skip "python3 numpy/safetensors missing"
    TB_MODEL=$M export_check --tbm "$TMP/p/model.tbm" --dense "$TMP/d" --compressed "$TMP/c" --nm 2:4
}
