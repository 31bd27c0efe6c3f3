#!/usr/bin/env bats
# Hostile inputs (issue 15): each test is one defect found on the old code by
# fuzzing or by hand (RELIABILITY.md), and fails there. Readers must answer
# malformed, oversized or non-regular inputs with one line and a non-zero exit,
# quickly and in bounded memory: every run here is under `timeout` and a
# virtual-memory limit, so a hang or an unbounded read fails the test.

load helpers

setup() {
    TMP=$(mktemp -d)
    FUZZ=$BATS_TEST_DIRNAME/../fuzz
}
teardown() { rm -rf "$TMP"; }

# bounded CMD...: at most 30 s and 2 GB of address space (ASan builds reserve
# far more address space than they use, so the limit is skipped there)
bounded() {
    if [ -n "${TB_SANITIZE:-}" ]; then timeout 30 "$@"; else (ulimit -v 2000000; exec timeout 30 "$@"); fi
}

# py SCRIPT...: python3 with the stdlib safetensors writer of mkseeds.py
py() { python3 -c "import sys; sys.path.insert(0, '$FUZZ'); from mkseeds import *; $1" "${@:2}"; }

# a .tb whose one pruned weight W has shape [R, C] and the given parts
mk_tb() { # mk_tb FILE FORMAT R C PATTERN PERMUTED PARTS_PY
    py "
import json
w = 'model.layers.0.mlp.up_proj.weight'
e = entry('$2', [$3, $4], '$5', $6)
parts = $7
meta = {'tensorbit.kind': 'tb', 'format_version': '1', 'tensorbit.tensors': json.dumps({w: e})}
open('$1', 'wb').write(st(parts, meta))"
}

@test "hang: a .tb nm weight of shape [2^53, 0] is refused at once (tb_nm_check_indices looped 2^53 rows)" {
    mk_tb "$TMP/a.tb" nm 9007199254740992 0 2:4 False \
        "[(w + '.values', 'F32', [9007199254740992, 0], b''), (w + '.indices', 'U8', [9007199254740992, 0], b'')]"
    run bounded tb-inspect "$TMP/a.tb"
    [ "$status" -eq 2 ]
    one_line_error tb-inspect
    [[ "$output" == *"zero-element shape"* ]]
}

@test "hang: a masked, permuted .tb weight of shape [2^53, 0] is refused (tb_report looped)" {
    mk_tb "$TMP/m.tb" masked 9007199254740992 0 unstructured True \
        "[(w, 'F32', [9007199254740992, 0], b''), (w + '.mask', 'U8', [9007199254740992, 0], b''), (w + '.perm', 'I32', [0], b'')]"
    run bounded tb-inspect "$TMP/m.tb"
    [ "$status" -eq 2 ]
    one_line_error tb-inspect
}

@test "unbounded read: tb-inspect - </dev/zero fails after the 8-byte header length" {
    run bounded tb-inspect - </dev/zero
    [ "$status" -eq 2 ]
    one_line_error tb-inspect
}

@test "unbounded read: a shard that is a symlink to /dev/zero is refused as not a regular file" {
    mkdir "$TMP/m"
    cp "$TB_MODEL/config.json" "$TMP/m/"
    ln -s /dev/zero "$TMP/m/model-00001-of-00001.safetensors"
    echo '{"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}}' >"$TMP/m/model.safetensors.index.json"
    run bounded tb-inspect "$TMP/m"
    [ "$status" -eq 3 ]
    one_line_error tb-inspect
    [[ "$output" == *"not a regular file"* ]]
    # a FIFO, too: opening it must not wait for a writer
    rm "$TMP/m/model-00001-of-00001.safetensors"
    mkfifo "$TMP/m/model-00001-of-00001.safetensors"
    run bounded tb-inspect "$TMP/m"
    [ "$status" -eq 3 ]
    [[ "$output" == *"not a regular file"* ]]
}

# a .tbm (the fuzz seed's) over tests/fuzz/layers.tb, with "base" set to $2
mk_tbm_base() {
    mkdir -p "$TMP/x"
    cp "$FUZZ/layers.tb" "$TMP/x/"
    py "import json; d = json.load(open('$FUZZ/corpus/tbm/whole')); d['base'] = sys.argv[1]; json.dump(d, open('$TMP/x/model.tbm', 'w'))" "$1"
}

@test "unbounded read: a .tbm whose base is /dev/zero is refused" {
    mk_tbm_base /dev/zero
    # outside the index's directory: not read at all
    run bounded tb-run -m "$TMP/x/model.tbm" --ppl "$TB_TEST_DATA/wikitext2-test-head.txt"
    [ "$status" -eq 2 ]
    one_line_error tb-run
    [[ "$output" == *"base '/dev/zero' lies outside"* ]]
    # even named on the command line, a device is no checkpoint
    run bounded tb-run -m "$TMP/x/model.tbm" --base /dev/zero --ppl "$TB_TEST_DATA/wikitext2-test-head.txt"
    [ "$status" -eq 3 ]
    one_line_error tb-run
    [[ "$output" == *"/dev/zero: not a regular file"* ]]
}

@test "information leak: an error about a base that is not safetensors never prints its bytes as a number" {
    printf 'SECRET!!more secret text' >"$TMP/secret"
    mk_tbm_base "$TMP/secret"
    run bounded tb-run -m "$TMP/x/model.tbm" --base "$TMP/secret" --ppl "$TB_TEST_DATA/wikitext2-test-head.txt"
    [ "$status" -eq 2 ]
    one_line_error tb-run
    # "SECRET!!" read as a little-endian u64
    n=$(python3 -c "import struct; print(struct.unpack('<Q', b'SECRET!!')[0])")
    [[ "$output" != *"$n"* ]]
}

@test "unbounded allocation: a 90-byte input_ids [1e7, 0] is refused by tb-tokenize --decode" {
    py "open('$TMP/ids.st', 'wb').write(st([('input_ids', 'I32', [10000000, 0], b'')]))"
    [ "$(stat -c %s "$TMP/ids.st")" -le 96 ]
    run bounded tb-tokenize -m "$TB_MODEL" --decode "$TMP/ids.st"
    [ "$status" -eq 2 ]
    one_line_error tb-tokenize
    [[ "$output" == *"zero-element shape"* ]]
}

@test "undefined cast: config.json bos_token_id 1e300 is a one-line error naming it" {
    mkdir "$TMP/m"
    cp "$TB_MODEL"/model.safetensors "$TMP/m/"
    python3 -c "import json; d = json.load(open('$TB_MODEL/config.json')); d['bos_token_id'] = 1e300; json.dump(d, open('$TMP/m/config.json', 'w'))"
    run bounded tb-inspect "$TMP/m"
    [ "$status" -eq 2 ]
    one_line_error tb-inspect
    [[ "$output" == *"'bos_token_id' is not a token id"* ]]
}

@test "undefined cast: a .tbm shard's bytes 1e300 is refused" {
    mkdir -p "$TMP/x"
    cp "$FUZZ/layers.tb" "$TMP/x/"
    py "import json; d = json.load(open('$FUZZ/corpus/tbm/whole')); d['shards'][0]['bytes'] = 1e300; json.dump(d, open('$TMP/x/model.tbm', 'w'))"
    run bounded tb-inspect "$TMP/x/model.tbm"
    [ "$status" -eq 2 ]
    one_line_error tb-inspect
    [[ "$output" == *"needs file, bytes and sha256"* ]]
}

@test "undefined cast: a .tb weight of shape [1e300, 8] is refused" {
    mk_tb "$TMP/a.tb" nm 1e300 8 2:4 False "[(w + '.values', 'F32', [1, 4], b'\0' * 16), (w + '.indices', 'U8', [1, 1], b'\x88')]"
    run bounded tb-inspect "$TMP/a.tb"
    [ "$status" -eq 2 ]
    one_line_error tb-inspect
    [[ "$output" == *"shape is not two integers"* ]]
}

@test "overflow: a config whose parameter count exceeds 2^53 is refused" {
    mkdir "$TMP/m"
    python3 -c "import json; d = json.load(open('$TB_MODEL/config.json')); d.update(hidden_size=1000000000, num_attention_heads=1, num_key_value_heads=1, head_dim=999999998, intermediate_size=1000000000, vocab_size=1000000000); json.dump(d, open('$TMP/m/config.json', 'w'))"
    cp "$TB_MODEL/model.safetensors" "$TMP/m/"
    run bounded tb-inspect "$TMP/m"
    [ "$status" -eq 2 ]
    one_line_error tb-inspect
    [[ "$output" == *"parameter count exceeds"* ]]
}

@test "silent data loss: tb-tokenize --jsonl encodes \"hello\\u0000 world\" whole" {
    printf '"hello\\u0000 world"\n' >"$TMP/in.jsonl"
    run tb-tokenize -m "$TB_MODEL" --jsonl "$TMP/in.jsonl"
    [ "$status" -eq 0 ]
    want=$(printf 'hello\0 world' | tb-tokenize -m "$TB_MODEL" --format text - | tr ' ' ,)
    [ "$output" = "[$want]" ]
    # and the decoder gives the NUL back
    run tb-tokenize -m "$TB_MODEL" --jsonl --decode <<<"[$want]"
    [ "$output" = '"hello\u0000 world"' ]
}

@test "error messages are one line even when a tensor name holds a newline" {
    py "open('$TMP/n.st', 'wb').write(st([('a\nb', 'XX', [1], b'')]))"
    run bounded tb-inspect "$TMP/n.st"
    [ "$status" -eq 2 ]
    one_line_error tb-inspect
    [[ "$output" == *"a?b"* ]]
}

@test "a shard with no pruned weights (tb-pack of a layer without masks) reads, merges and runs" {
    "$TB_HELPERS/mask_fixture" "$TB_MODEL" "$TMP/masks" 2:4 --layer 0
    tb-pack --quiet -m "$TB_MODEL" --masks "$TMP/masks" --layers 1 -o "$TMP/l1.tb"
    run tb-inspect "$TMP/l1.tb"
    [ "$status" -eq 0 ]
    tb-merge --partial --quiet -m "$TB_MODEL" -o "$TMP/p.tbm" "$TMP/l1.tb"
    run tb-inspect "$TMP/p.tbm"
    [ "$status" -eq 0 ]
    run tb-run -m "$TMP/p.tbm" --base "$TB_MODEL" --ppl "$TB_TEST_DATA/wikitext2-test-head.txt" --quiet
    [ "$status" -eq 0 ]
}

@test "confinement: a partial .tbm's base outside its directory is read only when named with --base" {
    "$TB_HELPERS/mask_fixture" "$TB_MODEL" "$TMP/masks" 2:4 --layer 0
    mkdir "$TMP/out"
    tb-pack --quiet -m "$TB_MODEL" --masks "$TMP/masks" --layers 0 -o "$TMP/out/l0.tb"
    tb-merge --partial --quiet -m "$TB_MODEL" -o "$TMP/out/p.tbm" "$TMP/out/l0.tb"
    run bounded tb-run -m "$TMP/out/p.tbm" --prompt The -n 2 --quiet
    [ "$status" -eq 2 ]
    one_line_error tb-run
    [[ "$output" == *"lies outside the index's directory; name it with --base"* ]]
    run bounded tb-export "$TMP/out/p.tbm" -o "$TMP/hf"
    [ "$status" -eq 2 ]
    [ ! -e "$TMP/hf" ]
    run bounded tb-run -m "$TMP/out/p.tbm" --base "$TB_MODEL" --prompt The -n 2 --quiet
    [ "$status" -eq 0 ]
    # a base inside the index's directory (here a relative path) needs no --base
    cp -r "$TB_MODEL" "$TMP/out/base"
    python3 -c "import json; d = json.load(open('$TMP/out/p.tbm')); d['base'] = 'base'; json.dump(d, open('$TMP/out/p.tbm', 'w'))"
    run bounded tb-run -m "$TMP/out/p.tbm" --prompt The -n 2 --quiet
    [ "$status" -eq 0 ]
    # but not one that climbs out of it
    python3 -c "import json; d = json.load(open('$TMP/out/p.tbm')); d['base'] = '../out/../../$(basename "$TMP")/out/base/../..'; json.dump(d, open('$TMP/out/p.tbm', 'w'))"
    run bounded tb-run -m "$TMP/out/p.tbm" --prompt The -n 2 --quiet
    [ "$status" -eq 2 ]
    [[ "$output" == *"lies outside"* ]]
}
