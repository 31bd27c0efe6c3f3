#!/usr/bin/env bats
# tb-synth: a checkpoint with a config's shapes and random weights at
# transformers' init scale. Values are checked by tb-inspect --stats and by
# tests/py/synth_check.py (numpy + tokenizers, independent of the C reader).

load helpers

setup() {
    TMP=$(mktemp -d)
    # a small llama with GQA, an untied head and a pad token
    cat >"$TMP/cfg.json" <<'J'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 320,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 700,
 "max_position_embeddings": 256, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "bos_token_id": 1,
 "eos_token_id": 2, "pad_token_id": 5, "initializer_range": 0.04, "tie_word_embeddings": false,
 "hidden_act": "silu", "torch_dtype": "float32"}
J
}

teardown() { rm -rf "$TMP"; }

# value of one --stats column of a tensor: stat DIR TENSOR COLUMN(min|max|mean|std|zero)
stat() {
    tb-inspect --stats "$1" | awk -v t="$2" -v k="$3" '$1 == t { for (i = 1; i < NF; i++) if ($i == k) { v = $(i + 1); sub("%", "", v); print v } }'
}

@test "writes a checkpoint every tool opens: the config's tensors, shapes and parameter count" {
    run tb-synth -v "$TMP/cfg.json" -o "$TMP/m"
    [ "$status" -eq 0 ]
    [[ "$output" == *"tb-synth: 523904 parameters, 21 tensors"* ]]
    for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json; do
        [ -f "$TMP/m/$f" ]
    done
    run tb-inspect "$TMP/m"
    [ "$status" -eq 0 ]
    [[ "$output" == *"parameters: 523,904"* ]]
    [[ "$output" == *"model.layers.1.self_attn.k_proj.weight"*"BF16"*"[64, 128]"* ]]
    grep -q '"torch_dtype":[[:space:]]*"bfloat16"' "$TMP/m/config.json"
    run tb-run -m "$TMP/m" --prompt "hello" -n 4 --seed 1
    [ "$status" -eq 0 ]
}

@test "init scale: weights N(0, initializer_range), norms 1, the pad row of the embedding zero" {
    tb-synth "$TMP/cfg.json" -o "$TMP/m" --dtype f32 --quiet
    for t in model.layers.0.mlp.gate_proj.weight model.layers.1.self_attn.q_proj.weight lm_head.weight; do
        s=$(stat "$TMP/m" $t std)
        m=$(stat "$TMP/m" $t mean)
        awk -v s="$s" -v m="$m" 'BEGIN { exit !(s > 0.0388 && s < 0.0412 && m > -0.001 && m < 0.001) }' ||
            { echo "$t: std $s mean $m"; false; }
    done
    [ "$(stat "$TMP/m" model.layers.0.input_layernorm.weight min)" = 1 ]
    [ "$(stat "$TMP/m" model.norm.weight max)" = 1 ]
    # one row of 700 is exactly zero: the pad token's
    [ "$(stat "$TMP/m" model.embed_tokens.weight zero)" = 0.14 ]
    run tb-inspect --tensor model.embed_tokens.weight "$TMP/m"
    [[ "$(echo "$output" | sed -n 7p)" =~ ^(0\ )+0$ ]]   # line 1 is the header
}

@test "independent check: numpy reads every value, tokenizers agrees with tb-tokenize" {
    python3 -c "import numpy" 2>/dev/null || skip "numpy not installed"
    tb-synth "$TMP/cfg.json" -o "$TMP/m" --max-shard-size 200KB --quiet
    run python3 "$BATS_TEST_DIRNAME/../py/synth_check.py" "$TMP/m" --bin "$TB_BIN"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "the output depends on seed and dtype only, not on the thread count" {
    tb-synth "$TMP/cfg.json" -o "$TMP/a" --seed 7 --threads 1 --quiet
    tb-synth "$TMP/cfg.json" -o "$TMP/b" --seed 7 --threads 2 --quiet
    tb-synth "$TMP/cfg.json" -o "$TMP/c" --seed 8 --threads 2 --quiet
    cmp "$TMP/a/model.safetensors" "$TMP/b/model.safetensors"
    ! cmp -s "$TMP/a/model.safetensors" "$TMP/c/model.safetensors"
    cmp "$TMP/a/tokenizer.json" "$TMP/c/tokenizer.json"
}

@test "shards: whole tensors up to --max-shard-size, the index names each, same values as one file" {
    tb-synth "$TMP/cfg.json" -o "$TMP/one" --quiet
    tb-synth "$TMP/cfg.json" -o "$TMP/sh" --max-shard-size 100KB --quiet
    [ ! -e "$TMP/sh/model.safetensors" ]
    n=$(ls "$TMP/sh"/model-*-of-*.safetensors | wc -l)
    [ "$n" -gt 3 ]
    [ -f "$TMP/sh/$(printf 'model-%05d-of-%05d.safetensors' $n $n)" ]
    # each shard's data (file minus header) is at most 100 KB, unless one tensor alone is larger
    for f in "$TMP/sh"/model-*.safetensors; do
        run tb-inspect --json "$f"
        bytes=$(echo "$output" | grep -o '"bytes":[[:space:]]*[0-9]*' | awk '{ s += $2 } END { print s }')
        n_t=$(echo "$output" | grep -c '"bytes"')
        [ "$bytes" -le 100000 ] || [ "$n_t" -eq 1 ]
    done
    grep -q '"model.layers.1.mlp.down_proj.weight":' "$TMP/sh/model.safetensors.index.json"
    for t in model.embed_tokens.weight model.layers.1.mlp.down_proj.weight lm_head.weight; do
        diff <(tb-inspect --tensor $t "$TMP/one") <(tb-inspect --tensor $t "$TMP/sh")
    done
}

@test "tokenizer: byte-level covering every id, special tokens at the config's ids" {
    tb-synth "$TMP/cfg.json" -o "$TMP/m" --quiet
    ids=$(seq 0 699 | tr '\n' ' ')
    run tb-tokenize -m "$TMP/m" --decode --format text <<<"$ids"
    [ "$status" -eq 0 ]
    run tb-tokenize -m "$TMP/m" --decode --format text <<<"1 2 5"
    [ "$output" = "<s></s><pad>" ]
    run tb-tokenize -m "$TMP/m" --decode --format text <<<"700"
    [ "$status" -eq 2 ]
    printf 'Héllo, wörld! 日本\n' >"$TMP/t.txt"
    tb-tokenize -m "$TMP/m" "$TMP/t.txt" -o "$TMP/ids.st" --quiet
    tb-tokenize -m "$TMP/m" --decode "$TMP/ids.st" -o "$TMP/back.txt" --quiet
    cmp "$TMP/t.txt" "$TMP/back.txt"
}

@test "tokenizer: a given model's is copied when it covers the vocabulary, else a byte-level one is written" {
    sed 's/"vocab_size": 700/"vocab_size": 4096/; s/"pad_token_id": 5, //' "$TMP/cfg.json" >"$TMP/v4096.json"
    run tb-synth -v "$TMP/v4096.json" -o "$TMP/a" --tokenizer "$TB_MODEL"
    [ "$status" -eq 0 ]
    [[ "$output" == *"tokenizer copied"* ]]
    cmp "$TB_MODEL/tokenizer.json" "$TMP/a/tokenizer.json"
    cmp "$TB_MODEL/tokenizer_config.json" "$TMP/a/tokenizer_config.json"
    sed 's/"vocab_size": 700/"vocab_size": 5000/' "$TMP/cfg.json" >"$TMP/v5000.json"
    run tb-synth "$TMP/v5000.json" -o "$TMP/b" --tokenizer "$TB_MODEL/tokenizer.json"
    [ "$status" -eq 0 ]
    [[ "$output" == *"covers 4096 of the 5000 ids (first missing: 4096)"*"byte-level"* ]]
    run tb-synth "$TMP/cfg.json" -o "$TMP/c" --tokenizer "$TB_MODEL"
    [[ "$output" == *"has id 4095, beyond vocab_size 700"* ]]
}

@test "the shipped configs have the published parameter counts" {
    C=$BATS_TEST_DIRNAME/../../examples/configs
    run tb-synth "$C/mistral-7b.json" --dry-run
    [ "$status" -eq 0 ]
    [ "$output" = "$(printf 'parameters: 7241732096\ntensors: 291\nbytes: 14483464192\nfiles: 3')" ]
    run tb-synth "$C/llama-3-8b.json" --dry-run
    [[ "$output" == *"parameters: 8030261248"*"files: 4" ]]
    run tb-synth "$C/llama-3.2-1b.json" --dry-run
    [[ "$output" == *"parameters: 1235814400"*"files: 1" ]]
}

@test "bad input: one-line errors, exit codes, no output left" {
    run tb-synth "$TMP/nope.json" -o "$TMP/m"
    [ "$status" -eq 3 ]
    one_line_error tb-synth
    echo '{"model_type": "gpt2", "hidden_size": 8}' >"$TMP/bad.json"
    run tb-synth "$TMP/bad.json" -o "$TMP/m"
    [ "$status" -eq 2 ]
    one_line_error tb-synth
    sed 's/"vocab_size": 700/"vocab_size": 200/' "$TMP/cfg.json" >"$TMP/small.json"
    run tb-synth "$TMP/small.json" -o "$TMP/m"
    [ "$status" -eq 2 ]
    [[ "$output" == *"too small for a byte-level tokenizer"* ]]
    run tb-synth "$TMP/cfg.json" -o "$TMP/m" --dtype int8
    [ "$status" -eq 1 ]
    run tb-synth "$TMP/cfg.json"
    [ "$status" -eq 1 ]
    [ ! -e "$TMP/m" ]
    mkdir "$TMP/full" && touch "$TMP/full/x"
    run tb-synth "$TMP/cfg.json" -o "$TMP/full"
    [ "$status" -eq 1 ]
    [[ "$output" == *"exists and is not empty (--force replaces it)"* ]]
    tb-synth "$TMP/cfg.json" -o "$TMP/full" --force --quiet
    [ ! -e "$TMP/full/x" ] && [ -f "$TMP/full/model.safetensors" ]
    [ -z "$(ls -A "$TMP" | grep '^\.')" ]
}

@test "an interrupted run leaves nothing" {
    # ~100 M parameters: seconds of work, stopped after a fraction of one
    sed 's/"hidden_size": 128/"hidden_size": 1024/; s/"intermediate_size": 320/"intermediate_size": 4096/; s/"num_hidden_layers": 2/"num_hidden_layers": 8/' \
        "$TMP/cfg.json" >"$TMP/big.json"
    tb-synth "$TMP/big.json" -o "$TMP/m" --threads 1 --quiet &
    pid=$!
    sleep 0.3
    kill -TERM $pid
    wait $pid || true
    [ ! -e "$TMP/m" ]
    [ -z "$(ls -A "$TMP" | grep '^\.')" ]
}
