#!/usr/bin/env bats
# tb-run: perplexity on a small text, JSON, greedy generation, and one error
# line with the right exit code per bad input.

load helpers

TEXT=$TB_TEST_DATA/wikitext2-test-head.txt

setup() { TMP=$(mktemp -d); }
teardown() { rm -rf "$TMP"; }

# same_within A B REL: |A - B| <= REL * |B|
same_within() { python3 -c "import sys; a,b,r=map(float,sys.argv[1:]); sys.exit(abs(a-b) > r*abs(b))" "$@"; }

@test "--ppl: the first 40 lines of WikiText-2 test in windows of 64" {
    # 1172 tokens -> 18 windows; 187.4882 is an independent numpy f32 forward's value
    run tb-run -m "$TB_MODEL" --ppl "$TEXT" --seq-len 64 --threads 2
    [ "$status" -eq 0 ]
    last=${lines[${#lines[@]} - 1]}
    [[ "$last" =~ ^ppl:\ [0-9]+\.[0-9]{3,}$ ]]
    same_within "${last#ppl: }" 187.4882 1e-5
}

@test "--ppl: the thread count changes nothing visible" {
    a=$(tb-run -m "$TB_MODEL" --ppl "$TEXT" --seq-len 64 --threads 1 --quiet)
    b=$(tb-run -m "$TB_MODEL" --ppl "$TEXT" --seq-len 64 --threads 2 --quiet)
    [ "$a" = "$b" ]
}

@test "--json parses and counts windows; --max-windows caps them" {
    tb-run -m "$TB_MODEL" --ppl "$TEXT" --seq-len 64 --json --quiet >"$TMP/o.json"
    python3 -m json.tool "$TMP/o.json" >/dev/null
    run python3 -c "import json; d=json.load(open('$TMP/o.json')); print(d['windows'], d['tokens'], d['tokens_per_second'] > 0, d['seconds'] > 0, round(d['ppl'], 2))"
    [ "$output" = "18 1152 True True 187.49" ]
    tb-run -m "$TB_MODEL" --ppl "$TEXT" --seq-len 64 --json --max-windows 2 --quiet >"$TMP/o2.json"
    run python3 -c "import json; print(json.load(open('$TMP/o2.json'))['windows'])"
    [ "$output" = "2" ]
}

@test "--ppl reads stdin" {
    run bash -c "tb-run -m '$TB_MODEL' --ppl - --seq-len 64 --quiet <'$TEXT'"
    [ "$status" -eq 0 ]
    same_within "${output#ppl: }" 187.4882 1e-5
}

@test "--prompt: greedy generation is deterministic and continues the prompt" {
    a=$(tb-run -m "$TB_MODEL" --prompt "The history of" -n 24 --quiet --threads 1)
    b=$(tb-run -m "$TB_MODEL" --prompt "The history of" -n 24 --quiet --threads 2)
    [ "$a" = "$b" ]
    [[ "$a" == "The history of "* ]]
    [ "${#a}" -gt 40 ]
}

@test "--prompt: sampling repeats with a seed" {
    a=$(tb-run -m "$TB_MODEL" --prompt "Once" -n 16 --temp 0.8 --top-p 0.9 --seed 7 --quiet)
    b=$(tb-run -m "$TB_MODEL" --prompt "Once" -n 16 --temp 0.8 --top-p 0.9 --seed 7 --quiet)
    [ "$a" = "$b" ]
}

@test "tiny-mistral-10m (GQA, sharded, untied): --ppl and generation" {
    [ -d "$TB_SHARED/models/tiny-mistral-10m" ] || skip "no ../shared"
    run tb-run -m "$TB_SHARED/models/tiny-mistral-10m" --ppl "$TEXT" --seq-len 64 --quiet
    [ "$status" -eq 0 ]
    same_within "${output#ppl: }" 221.0466 1e-5 # numpy f32 reference
    run tb-run -m "$TB_SHARED/models/tiny-mistral-10m" --prompt "The" -n 8 --quiet
    [ "$status" -eq 0 ]
}

@test "a text shorter than one window: exit 2 naming the token count" {
    printf 'Just a few words.\n' >"$TMP/short.txt"
    run tb-run -m "$TB_MODEL" --ppl "$TMP/short.txt"
    [ "$status" -eq 2 ]
    one_line_error tb-run
    [[ "$output" == *"short.txt: "*" tokens (with BOS), fewer than one window of 512"* ]]
}

@test "invalid UTF-8: exit 2" {
    printf 'caf\xc3 \xff text\n' >"$TMP/bad.txt"
    run tb-run -m "$TB_MODEL" --ppl "$TMP/bad.txt" --seq-len 4
    [ "$status" -eq 2 ]
    one_line_error tb-run
    [[ "$output" == *"bad.txt: invalid UTF-8"* ]]
}

@test "missing model directory: exit 3; missing text file: exit 3" {
    run tb-run -m "$TMP/nope" --ppl "$TEXT"
    [ "$status" -eq 3 ]
    one_line_error tb-run
    [[ "$output" == *"$TMP/nope"* ]]
    run tb-run -m "$TB_MODEL" --ppl "$TMP/nope.txt"
    [ "$status" -eq 3 ]
    one_line_error tb-run
}

@test "a model with a wrongly shaped tensor: exit 2 naming tensor and dim" {
    mkdir "$TMP/m"
    sed 's/"intermediate_size": 768/"intermediate_size": 512/' "$TB_MODEL/config.json" >"$TMP/m/config.json"
    ln -s "$(cd "$TB_MODEL" && pwd)/model.safetensors" "$TMP/m/model.safetensors"
    run tb-run -m "$TMP/m" --ppl "$TEXT"
    [ "$status" -eq 2 ]
    one_line_error tb-run
    [[ "$output" == *"tensor 'model.layers.0.mlp.gate_proj.weight': dim 0 is 768, expected 512 (intermediate_size)"* ]]
}

@test "usage errors: exit 1" {
    run tb-run --ppl "$TEXT"
    [ "$status" -eq 1 ]
    one_line_error tb-run
    run tb-run -m "$TB_MODEL"
    [ "$status" -eq 1 ]
    run tb-run -m "$TB_MODEL" --ppl "$TEXT" --prompt hi
    [ "$status" -eq 1 ]
    run tb-run -m "$TB_MODEL" --ppl "$TEXT" --seq-len abc
    [ "$status" -eq 1 ]
    one_line_error tb-run
    run tb-run -m "$TB_MODEL" --ppl "$TEXT" --seq-len
    [ "$status" -eq 1 ]
    run tb-run -m "$TB_MODEL" --prompt hi --top-p 0
    [ "$status" -eq 1 ]
    run tb-run -m "$TB_MODEL" --bogus
    [ "$status" -eq 1 ]
}

@test "--sample-windows: prefixes kept, same seed same file at any thread count, usage errors" {
    cd "$TMP"
    tb-tokenize -m "$TB_MODEL" --bos --windows 3 --seq-len 48 --quiet -o p.st "$TEXT"
    run tb-run -m "$TB_MODEL" --sample-windows p.st --windows 5 --prefix 8 --seq-len 40 --seed 4 -j 1 --quiet -o a.st
    [ "$status" -eq 0 ]
    tb-run -m "$TB_MODEL" --sample-windows p.st --windows 5 --prefix 8 --seq-len 40 --seed 4 -j 2 --quiet -o b.st
    cmp a.st b.st
    tb-run -m "$TB_MODEL" --sample-windows p.st --windows 5 --prefix 8 --seq-len 40 --seed 5 --quiet -o c.st
    ! cmp -s a.st c.st
    python3 -c "
import json, struct, sys
def ids(path):
    b = open(path, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
    t = h['input_ids']; assert t['dtype'] == 'I32', t
    r, c = t['shape']; d = b[8 + n:]
    return [list(struct.unpack('<%di' % c, d[4 * c * i:4 * c * (i + 1)])) for i in range(r)], h['__metadata__']
p, _ = ids('p.st'); a, meta = ids('a.st')
assert len(a) == 5 and all(len(w) == 40 for w in a)
assert all(a[i][:8] == p[i % 3][:8] for i in range(5))
assert a[0][8:] != a[3][8:]
assert meta['prefix'] == '8' and meta['temp'] == '1', meta
"
    run tb-run -m "$TB_MODEL" --sample-windows p.st --prefix 8
    [ "$status" -eq 1 ]
    one_line_error tb-run
    run tb-run -m "$TB_MODEL" --sample-windows p.st --prefix 49 -o d.st
    [ "$status" -eq 1 ]
    [[ "$output" == *"prefix 49 outside"* ]]
    run tb-run -m "$TB_MODEL" --prompt hi --prefix 8
    [ "$status" -eq 1 ]
}

@test "--help documents every option" {
    run tb-run --help
    [ "$status" -eq 0 ]
    for opt in --model --ppl --seq-len --max-windows --json --prompt "-n, --n-predict" --temp --top-k --min-p --repeat-penalty --stop "-f, --file" --top-p --seed --sample-windows --windows --prefix "-o, --output" --threads --quiet --progress --version; do
        [[ "$output" == *"$opt"* ]] || { echo "missing $opt"; return 1; }
    done
}

@test "--compare: a model against itself has KL 0 and full top-1 agreement; JSON carries the fidelity" {
    run tb-run -m "$TB_MODEL" --compare "$TB_MODEL" --ppl "$TB_TEST_DATA/wikitext2-test-head.txt" --seq-len 64 --max-windows 3 --quiet
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "kl: 0.0000" ]
    [ "${lines[1]}" = "top1: 1.0000" ]
    [[ "${lines[3]}" == "ppl: "* ]]
    [ "${lines[2]#ppl_ref: }" = "${lines[3]#ppl: }" ]
    run tb-run -m "$TB_MODEL" --compare "$TB_MODEL" --ppl "$TB_TEST_DATA/wikitext2-test-head.txt" --seq-len 64 --max-windows 3 --json --quiet
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); assert d['kl'] == 0 and d['top1'] == 1 and d['ppl_ref'] == d['ppl']" "$output"
    run tb-run -m "$TB_MODEL" --compare "$TB_MODEL" --prompt hi
    [ "$status" -eq 1 ]
}
