#!/usr/bin/env bats
# tb-inspect: model summaries, JSON, and one error per malformed file.

load helpers

setup() { TMP=$(mktemp -d); }
teardown() { rm -rf "$TMP"; }

@test "bundled tiny-llama-6m: 56 tensors, 6,163,712 parameters" {
    run tb-inspect "$TB_MODEL"
    [ "$status" -eq 0 ]
    [[ "$output" == *"tensors: 56"* ]]
    [[ "$output" == *"parameters: 6,163,712"* ]]
    [[ "$output" == *"model: llama / LlamaForCausalLM"* ]]
}

@test "--json parses and agrees with the table" {
    tb-inspect --json "$TB_MODEL" >"$TMP/o.json"
    run python3 -c "import json,sys; d=json.load(open('$TMP/o.json')); print(d['n_tensors'], d['n_parameters'], d['config']['num_hidden_layers'])"
    [ "$output" = "56 6163712 6" ]
}

@test "sharded tiny-mistral-10m: 75 tensors, 10,490,112 parameters" {
    [ -d "$TB_SHARED/models/tiny-mistral-10m" ] || skip "no ../shared"
    run tb-inspect "$TB_SHARED/models/tiny-mistral-10m"
    [ "$status" -eq 0 ]
    [[ "$output" == *"shards: 3"* ]]
    [[ "$output" == *"tensors: 75"* ]]
    [[ "$output" == *"parameters: 10,490,112"* ]]
    tb-inspect --json "$TB_SHARED/models/tiny-mistral-10m" | python3 -m json.tool >/dev/null
}

@test "--stats and --nm on a hand-made tensor" {
    # F32 [2,4] = [1,0,0,2 | 3,0,0,0]: both groups 2:4, one group 1:4, zero fraction 5/8
    printf '\x00\x00\x80\x3f\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x40\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' >"$TMP/d"
    h='{"w":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}'
    mkst "$TMP/a.safetensors" "$h" 0
    cat "$TMP/d" >>"$TMP/a.safetensors"
    run tb-inspect --json --stats --nm 2:4 "$TMP/a.safetensors"
    [ "$status" -eq 0 ]
    run python3 -c "
import json,sys; t=json.loads(sys.argv[1])['tensors'][0]
print(t['stats']['min'], t['stats']['max'], t['stats']['mean'], t['stats']['zero_fraction'], t['nm']['conforming_fraction'])" "$output"
    [ "$output" = "0 3 0.75 0.625 1" ]
    run bash -c "tb-inspect --nm 1:4 --json '$TMP/a.safetensors' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"tensors\"][0][\"nm\"][\"conforming_fraction\"])'"
    [ "$output" = "0.5" ]
    run tb-inspect --tensor w "$TMP/a.safetensors"
    [ "${lines[1]}" = "1 0 0 2" ]
    [ "${lines[2]}" = "3 0 0 0" ]
}

@test "--nm on a dim not divisible by M names tensor and dim" {
    mkst "$TMP/a.safetensors" '{"x":{"dtype":"F32","shape":[2,250],"data_offsets":[0,2000]}}' 2000
    run tb-inspect --nm 2:4 "$TMP/a.safetensors"
    [ "$status" -eq 2 ]
    one_line_error tb-inspect
    [[ "$output" == *"tensor 'x': dim 1 (250) not divisible by M=4"* ]]
}

@test "reads a stream from stdin" {
    run bash -c "cat '$TB_MODEL/model.safetensors' | tb-inspect -"
    [ "$status" -eq 0 ]
    [[ "$output" == *"tensors: 56"* ]]
}

bad() { # bad NAME EXPECTED_SUBSTRING: the file must be refused with exit 2 and one line
    run tb-inspect "$TMP/$1"
    [ "$status" -eq 2 ] || { echo "status $status: $output"; return 1; }
    one_line_error tb-inspect
    [[ "$output" == *"$TMP/$1: "*"$2"* ]] || { echo "$output"; return 1; }
}

OK='{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'

@test "malformed: 0-byte file" { : >"$TMP/z"; bad z "too short"; }
@test "malformed: truncated data" { mkst "$TMP/t" "$OK" 10; bad t "truncated"; }
@test "malformed: header length past end of file" { mkst "$TMP/h" "$OK" 16 5000; bad h "past end of file"; }
@test "malformed: invalid JSON" { mkst "$TMP/j" '{"a":{"dtype":"F32",  ' 0; bad j "not valid JSON"; }
@test "malformed: unknown dtype" {
    mkst "$TMP/u" '{"a":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,16]}}' 16; bad u "unknown dtype 'Q4_K'"
}
@test "malformed: shape/bytes mismatch" {
    mkst "$TMP/s" '{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}' 16; bad s "needs 12 bytes"
}
@test "malformed: overlapping offsets" {
    mkst "$TMP/o" '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}' 12
    bad o "overlap 'a'"
}
@test "malformed: out-of-bounds offsets" {
    mkst "$TMP/b" '{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}' 16; bad b "out of bounds"
}
@test "malformed: duplicate names" {
    mkst "$TMP/d" '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}' 16
    bad d "duplicate tensor name 'a'"
}

@test "usage errors exit 1; missing file exits 3" {
    run tb-inspect
    [ "$status" -eq 1 ]
    run tb-inspect --nm 4:4 "$TB_MODEL"
    [ "$status" -eq 1 ]
    run tb-inspect "$TMP/nope.safetensors"
    [ "$status" -eq 3 ]
    one_line_error tb-inspect
    run tb-inspect --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"usage: tb-inspect"* ]]
}

@test "interop with the official Python safetensors package" {
    has_python_module safetensors || skip "python3 safetensors not installed"
    run python3 "$BATS_TEST_DIRNAME/../py/st_interop.py" "$TB_BIN" "$TB_HELPERS"
    echo "$output"
    [ "$status" -eq 0 ]
}
