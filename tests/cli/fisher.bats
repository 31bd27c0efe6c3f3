#!/usr/bin/env bats
# tb-fisher: statistics against transformers' goldens, and bad inputs.

load helpers

setup() { TMP=$(mktemp -d); }
teardown() { rm -rf "$TMP"; }

CALIB=$TB_TEST_DATA/tiny-llama-6m/calib-128x512.safetensors

@test "16 calibration windows match the transformers Fisher (1e-3) and Gram (1e-4) goldens" {
    has_python_module numpy && has_python_module safetensors || skip "python3 numpy/safetensors missing"
    run tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 16 --grad-samples 2 -o "$TMP/f.fisher" --quiet
    [ "$status" -eq 0 ]
    run python3 "$BATS_TEST_DIRNAME/../py/fisher_golden.py" "$TMP/f.fisher" "$TB_TEST_DATA/tiny-llama-6m/fisher-gram-16win.safetensors"
    echo "$output"
    [ "$status" -eq 0 ]
    # the file is self-describing: metadata and the gradient samples' shape
    run python3 -c "
from safetensors import safe_open
f = safe_open('$TMP/f.fisher', 'np'); m = f.metadata()
print(m['tensorbit.kind'], m['windows'], m['seq_len'], len(m['model_sha256']))
print(f.get_slice('grad.model.layers.0.mlp.up_proj.weight').get_shape())"
    [ "${lines[0]}" = "fisher 16 512 64" ]
    [ "${lines[1]}" = "[2, 768, 256]" ]
}

@test "mistral (GQA, untied lm_head) matches its goldens" {
    [ -d "$TB_SHARED/models/tiny-mistral-10m" ] || skip "no ../shared"
    has_python_module numpy && has_python_module safetensors || skip "python3 numpy/safetensors missing"
    run tb-fisher -m "$TB_SHARED/models/tiny-mistral-10m" -t "$TB_SHARED/data/calib-tiny-mistral-10m-128x512.safetensors" \
        --max-windows 16 -o "$TMP/m.fisher" --quiet
    [ "$status" -eq 0 ]
    run python3 "$BATS_TEST_DIRNAME/../py/fisher_golden.py" "$TMP/m.fisher" "$TB_SHARED/golden/tiny-mistral-10m/fisher-gram-16win.safetensors"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "--stats gram alone and --layers restrict the output" {
    run tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 2 --stats gram --layers 1:3 -o "$TMP/g.fisher" --quiet
    [ "$status" -eq 0 ]
    run tb-inspect "$TMP/g.fisher"
    [[ "$output" == *"gram.model.layers.1.self_attn.q_proj.input"* ]]
    [[ "$output" == *"gram.model.layers.2.mlp.down_proj.input"* ]]
    [[ "$output" != *"layers.0."* ]]
    [[ "$output" != *"layers.3."* ]]
    [[ "$output" != *"fisher."* ]]
}

refuse() { # refuse STATUS SUBSTRING ARGS...: one-line error, that status, no output file
    local want=$1 msg=$2
    shift 2
    run tb-fisher -m "$TB_MODEL" -o "$TMP/out.fisher" --quiet "$@"
    [ "$status" -eq "$want" ] || { echo "status $status: $output"; return 1; }
    one_line_error tb-fisher
    [[ "$output" == *"$msg"* ]] || { echo "$output"; return 1; }
    [ ! -e "$TMP/out.fisher" ]
    [ -z "$(ls "$TMP" | grep tmp)" ]
}

@test "bad token file: wrong dtype" {
    mkst "$TMP/t.st" '{"input_ids":{"dtype":"F32","shape":[1,4],"data_offsets":[0,16]}}' 16
    refuse 2 "dtype F32, expected I32 or I64" -t "$TMP/t.st"
}

@test "bad token file: wrong rank" {
    mkst "$TMP/t.st" '{"input_ids":{"dtype":"I32","shape":[8],"data_offsets":[0,32]}}' 32
    refuse 2 "rank 1, expected 2" -t "$TMP/t.st"
}

@test "bad token file: id beyond the vocabulary" {
    mkst "$TMP/t.st" '{"input_ids":{"dtype":"I32","shape":[1,4],"data_offsets":[0,16]}}' 0
    printf '\x01\x00\x00\x00\x02\x00\x00\x00\x88\x13\x00\x00\x03\x00\x00\x00' >>"$TMP/t.st"
    refuse 2 "window 0, position 2: token id 5000 outside the vocabulary [0, 4096)" -t "$TMP/t.st"
}

@test "bad token file: windows longer than max_position_embeddings" {
    mkst "$TMP/t.st" '{"input_ids":{"dtype":"I32","shape":[1,1100],"data_offsets":[0,4400]}}' 4400
    refuse 2 "exceed max_position_embeddings (1024)" -t "$TMP/t.st"
}

@test "output in a missing directory fails before any work" {
    run tb-fisher -m "$TB_MODEL" -t "$CALIB" -o "$TMP/no/such/dir/x.fisher" --quiet
    [ "$status" -eq 3 ]
    one_line_error tb-fisher
    [[ "$output" == *"$TMP/no/such/dir/x.fisher"* ]]
}

@test "usage errors exit 1" {
    run tb-fisher -m "$TB_MODEL"
    [ "$status" -eq 1 ]
    run tb-fisher -m "$TB_MODEL" -t "$CALIB" -o "$TMP/x" --stats hessian
    [ "$status" -eq 1 ]
    [[ "$output" == *"--stats: 'hessian' is not one of fisher, gram, none"* ]]
    run tb-fisher --help
    [ "$status" -eq 0 ]
}

@test "sequential mode: layer by layer through saved streams equals the whole-model Gram, bit for bit" {
    has_python_module numpy && has_python_module safetensors || skip "python3 numpy/safetensors missing"
    cd "$TMP"
    tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 2 --stats gram -o full.fisher --quiet
    tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 2 --stats gram --layers 0:1 --acts-out s1.st -o g0.fisher --quiet
    tb-fisher -m "$TB_MODEL" --acts-in s1.st --stats gram --layers 1:2 --acts-out s2.st -o g1.fisher --quiet
    tb-fisher -m "$TB_MODEL" --acts-in s2.st --stats none --layers 2:3 --acts-out s3.st --quiet
    run python3 -c "
from safetensors.numpy import load_file
import numpy as np
full = load_file('full.fisher'); n = 0
for part in ('g0.fisher', 'g1.fisher'):
    for k, v in load_file(part).items():
        assert np.array_equal(v, full[k]), k; n += 1
print(n)"
    [ "$output" = "16" ]
    # a stream is refused by a step that expects another layer
    run tb-fisher -m "$TB_MODEL" --acts-in s3.st --stats gram --layers 2:3 -o x.fisher --quiet
    [ "$status" -eq 2 ]
    one_line_error tb-fisher
    [[ "$output" == *"holds the stream entering layer 3, not layer 2"* ]]
    run tb-fisher -m "$TB_MODEL" --acts-in s3.st --stats fisher --layers 3:4 -o x.fisher
    [ "$status" -eq 1 ]
}

@test "--acts-out-at and --gram-from: a stream and the next layer's Grams in one pass equal the two steps, bit for bit" {
    has_python_module numpy && has_python_module safetensors || skip "python3 numpy/safetensors missing"
    cd "$TMP"
    # two steps (examples/Makefile before): the stream leaving layer 0, then layer 1's Grams on it; and from a stream
    tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 3 --stats none --layers 0:1 --acts-out s1.st --quiet
    tb-fisher -m "$TB_MODEL" --acts-in s1.st --stats gram --layers 1:2 -o g1.fisher --quiet
    tb-fisher -m "$TB_MODEL" --acts-in s1.st --stats none --layers 1:2 --acts-out s2.st --quiet
    tb-fisher -m "$TB_MODEL" --acts-in s2.st --stats gram --layers 2:3 -o g2.fisher --quiet
    # one pass each
    tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 3 --stats gram --layers 0:2 --gram-from 1 --acts-out-at 1 \
        --acts-out f1.st -o fg1.fisher --quiet
    tb-fisher -m "$TB_MODEL" --acts-in f1.st --stats gram --layers 1:3 --gram-from 2 --acts-out-at 2 \
        --acts-out f2.st -o fg2.fisher --quiet
    run python3 -c "
from safetensors import safe_open
from safetensors.numpy import load_file
import numpy as np
n = 0
for a, b in (('s1.st', 'f1.st'), ('s2.st', 'f2.st'), ('g1.fisher', 'fg1.fisher'), ('g2.fisher', 'fg2.fisher')):
    x, y = load_file(a), load_file(b)
    assert sorted(x) == sorted(y), (a, sorted(x), sorted(y))
    for k in x: assert np.array_equal(x[k], y[k]), (a, k); n += 1
    ma, mb = safe_open(a, 'np').metadata(), safe_open(b, 'np').metadata()
    # a stream's checksum is of the layers before it; a .fisher's of every layer its run read, so they differ
    for k in ('layer', 'layer_begin', 'layer_end', 'tokens') + (('model_sha256',) if a.endswith('.st') else ()):
        assert ma.get(k) == mb.get(k), (a, k)
print(n)"
    [ "$status" -eq 0 ]
    [ "$output" = "18" ]
    # misuse: one line, exit 1
    run tb-fisher -m "$TB_MODEL" -t "$CALIB" --stats gram --layers 0:2 --acts-out-at 1 -o x.fisher
    [ "$status" -eq 1 ]
    [[ "$output" == *"--acts-out-at are sequential mode's"* ]]
    run tb-fisher -m "$TB_MODEL" -t "$CALIB" --stats gram --layers 0:2 --gram-from 2 --acts-out s.st -o x.fisher
    [ "$status" -eq 1 ]
    [[ "$output" == *"must lie inside --layers 0:2"* ]]
    [ ! -e s.st ] && [ ! -e x.fisher ]
    run tb-fisher -m "$TB_MODEL" -t "$CALIB" --stats gram --gram-from 1 -o x.fisher
    [ "$status" -eq 1 ]
}

@test "--stats gram --layers A:B runs layers 0..B-1 only and equals the whole-model Gram, bit for bit" {
    has_python_module numpy && has_python_module safetensors || skip "python3 numpy/safetensors missing"
    cd "$TMP"
    tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 2 --stats gram -o full.fisher --quiet
    tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 2 --stats gram --layers 0:1 -o a.fisher --quiet
    tb-fisher -m "$TB_MODEL" -t "$CALIB" --max-windows 2 --stats gram --layers 3:5 -o b.fisher --quiet
    run python3 -c "
from safetensors.numpy import load_file
import numpy as np
full = load_file('full.fisher'); n = 0
for part in ('a.fisher', 'b.fisher'):
    for k, v in load_file(part).items():
        assert np.array_equal(v, full[k]), k; n += 1
print(n)"
    [ "$output" = "24" ]
}

@test "--text tokenizes and draws the same windows as tb-tokenize --bos --windows" {
    has_python_module numpy && has_python_module safetensors || skip "python3 numpy/safetensors missing"
    text=$BATS_TEST_DIRNAME/../../examples/data/calib.txt
    tb-tokenize -m "$TB_MODEL" --bos --windows 3 --seq-len 64 --seed 5 --quiet -o "$TMP/w.st" "$text"
    tb-fisher -m "$TB_MODEL" -t "$TMP/w.st" -o "$TMP/a.fisher" --quiet
    tb-fisher -m "$TB_MODEL" --text "$text" --windows 3 --seq-len 64 --seed 5 -o "$TMP/b.fisher" --quiet
    run python3 -c "
from safetensors import safe_open
import numpy as np
a = safe_open('$TMP/a.fisher', 'np'); b = safe_open('$TMP/b.fisher', 'np')
print(all(np.array_equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys()))"
    [ "$output" = "True" ]
    printf 'too short' >"$TMP/s.txt"
    run tb-fisher -m "$TB_MODEL" --text "$TMP/s.txt" --seq-len 64 -o "$TMP/c.fisher"
    [ "$status" -eq 2 ]
    one_line_error tb-fisher
    [[ "$output" == *"fewer than one window of 64"* ]]
}
