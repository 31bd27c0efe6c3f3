#!/usr/bin/env bats
# The whole pipeline on the bundled model (small calibration to stay fast):
# examples/prune-model.sh, then the pruned model runs, conforms and inspects.

load helpers

setup_file() {
    export OUTD=$BATS_FILE_TMPDIR/out
    # 8 windows of 128 tokens: seconds, not minutes; quality is measured by bench/
    WINDOWS=8 SEQLEN=128 RECON_STEPS=40 DISTILL_STEPS=10 GEN_WINDOWS=6 TB=$TB_BIN JOBS=2 \
        "$BATS_TEST_DIRNAME/../../examples/prune-model.sh" "$TB_MODEL" "$OUTD" 2:4 >"$BATS_FILE_TMPDIR/log" 2>&1 ||
        { cat "$BATS_FILE_TMPDIR/log"; return 1; }
}

@test "prune-model.sh leaves model.tbm and every intermediate file" {
    [ -f "$OUTD/model.tbm" ]
    for l in 0 5; do
        for f in gram.$l.fisher scores.$l.st masks.$l.st packed.$l.tb layer.$l.tb; do [ -f "$OUTD/$f" ]; done
    done
    # the last layer's output feeds nothing, so its partial model is never built
    [ -f "$OUTD/partial.4.tbm" ] && [ -f "$OUTD/stream.5.st" ] && [ ! -e "$OUTD/partial.5.tbm" ]
    [ -f "$OUTD/tokenizer.json" ]
    # the environment's numbers win over the device's defaults, and the log says which ran
    grep -Eq "^prune-model: on (cpu|cuda): 6 generated windows, 10 distillation steps$" "$BATS_FILE_TMPDIR/log"
    # the dense model's own windows for tb-distill: 6 of the calibration length
    run tb-inspect --json "$OUTD/gen.st"
    python3 -c "import json, sys; d = json.loads(sys.argv[1]); assert d['tensors'][0]['shape'] == [6, 128] and d['metadata']['prefix'] == '32', d" "$output"
}

@test "every pruned weight is 2:4 and 42 of them are pruned" {
    run tb-inspect --json "$OUTD/model.tbm"
    [ "$status" -eq 0 ]
    run python3 -c "
import json, sys
d = json.loads(sys.argv[1]); p = d['pruned']
print(len(p), min(t['conforming_fraction'] for t in p), round(sum(t['sparsity'] for t in p) / len(p), 4))" "$output"
    [ "$output" = "42 1 0.5" ]
}

@test "the recipe records every stage with its command line" {
    run tb-inspect "$OUTD/model.tbm"
    [[ "$output" == *"recipe: tb "*"tb-distill"*"--extra-tokens "*"gen.st --steps 10"* ]]
    [[ "$output" == *"recipe: tb "*"tb-recon"*"--steps 40"* ]]
    # N:M masks learned in the layer stage, on whichever device it runs
    [[ "$output" == *"recipe: tb "*"tb-recon"*"--learn-masks 10 --mask-decay 20"* ]]
    [[ "$output" == *"recipe: tb "*"tb-pack"*"--compensate recon"* ]]
    [[ "$output" == *"recipe: mask "*"tb-nm"*"--pattern 2:4"* ]]
    [[ "$output" == *"recipe: fisher "*"--stats gram"* ]]
}

@test "the pruned model runs: perplexity between the dense model's and 0.9x magnitude pruning's; generation" {
    local T=$BATS_TEST_TMPDIR
    head -c 40000 "$BATS_TEST_DIRNAME/../../examples/data/wikitext2-test.txt" >"$T/t.txt"
    ppl() { tb-run -m "$1" --ppl "$T/t.txt" --seq-len 128 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])'; }
    # the reference points on the same text: dense, and 2:4 by magnitude without compensation
    mkdir "$T/mag"
    tb-score -m "$TB_MODEL" --method magnitude | tb-nm --pattern 2:4 | tb-pack -m "$TB_MODEL" --masks - -o "$T/mag/m.tb"
    tb-merge -m "$TB_MODEL" -o "$T/mag/m.tbm" "$T/mag/m.tb"
    dense=$(ppl "$TB_MODEL") mag=$(ppl "$T/mag/m.tbm") pruned=$(ppl "$OUTD/model.tbm")
    echo "dense $dense, magnitude 2:4 $mag, pipeline 2:4 $pruned"
    # measured (2026-12-02): dense 231.84, magnitude 756.14, pipeline 614.53 (0.81x magnitude)
    python3 -c "import sys; d, m, p = map(float, sys.argv[1:]); sys.exit(not (d < p < 0.9 * m))" "$dense" "$mag" "$pruned"
    run tb-run -m "$OUTD/model.tbm" --prompt "The history of" -n 8 --quiet
    [ "$status" -eq 0 ]
    [[ "$output" == "The history of"* ]]
}

@test "tb-inspect's per-weight output error is tb-pack's (the recipe's model and Gram, opened once)" {
    local T=$BATS_TEST_TMPDIR
    tb-pack -m "$TB_MODEL" --masks "$OUTD/masks.0.st" --stats "$OUTD/gram.0.fisher" --compensate sparsegpt \
        -o "$T/p.tb" -v 2>"$T/log"
    run tb-inspect --json "$T/p.tb"
    [ "$status" -eq 0 ]
    run python3 -c "
import json, re, sys
got = {t['name']: t['relative_output_error'] for t in json.loads(sys.argv[1])['pruned']}
want = {m.group(1): float(m.group(2)) for m in re.finditer(r'\] (\S+) sparsegpt, \|\|dW X\|\|/\|\|W X\|\| ([0-9.]+)', open(sys.argv[2]).read())}
assert len(want) == 7 and set(got) == set(want), (sorted(got), sorted(want))
bad = [(n, got[n], want[n]) for n in want if abs(got[n] - want[n]) > 6e-5]
print(bad or 'ok', min(want.values()), max(abs(got[n] - want[n]) for n in want))" "$output" "$T/log"
    echo "$output"
    [[ "$output" == "ok "* ]]
}

@test "--plot draws an SVG with a bar per layer, axis titles, a legend, model and pattern; says where" {
    local f=$BATS_TEST_TMPDIR/p.svg
    run tb-inspect "$OUTD/model.tbm" --plot "$f"
    [ "$status" -eq 0 ]
    [ "${lines[-1]}" = "plot: $f (per-layer sparsity and relative output error)" ]
    [ "$(grep -c "class='bar'" "$f")" -eq 6 ]
    grep -q '<polyline' "$f"
    grep -q '>decoder layer<' "$f"
    grep -q '>sparsity (% of weights zero)<' "$f"
    grep -q '>relative output error ' "$f"
    grep -q "class='legend'" "$f"
    grep -q '>tiny-llama-6m, 2:4, 42 pruned weights in 6 layers<' "$f"
    # the error axis is scaled to the data: its top tick is the first round value above the largest error
    top=$(sed -n "s/.*fill='#c0392b'>\([0-9.e+-]*\)<\/text>.*/\1/p" "$f" | tail -1)
    emax=$(grep -o 'mean relative output error [0-9.]*' "$f" | awk '{ print $NF }' | sort -g | tail -1)
    python3 -c "import sys; t, e = map(float, sys.argv[1:]); sys.exit(not (e <= t <= 5 * e))" "$top" "$emax"
}

@test "a shard whose checksum does not match is refused in one line" {
    cp -r "$OUTD" "$BATS_TEST_TMPDIR/bad"
    f=$BATS_TEST_TMPDIR/bad/model.layer.3.tb
    # flip one byte of tensor data near the end (the header stays valid)
    size=$(stat -c %s "$f")
    printf '\x5a' | dd of="$f" bs=1 seek=$((size - 7)) conv=notrunc 2>/dev/null
    run tb-run -m "$BATS_TEST_TMPDIR/bad/model.tbm" --prompt hi -n 1
    [ "$status" -eq 2 ]
    one_line_error tb-run
    [[ "$output" == *"shard 'model.layer.3.tb': SHA-256"*"does not match the index"* ]]
}

@test "a missing tensor needs --partial; a tensor in two shards is refused" {
    run tb-merge -m "$TB_MODEL" -o "$OUTD/x.tbm" "$OUTD/layer.0.tb"
    [ "$status" -eq 2 ]
    one_line_error tb-merge
    [[ "$output" == *"is in no shard"* ]]
    [ ! -e "$OUTD/x.tbm" ]
    run tb-merge -m "$TB_MODEL" -o "$OUTD/x.tbm" "$OUTD/layer.0.tb" "$OUTD/layer.0.tb"
    [ "$status" -eq 2 ]
    [[ "$output" == *"in more than one shard"* ]]
}

@test "embeddings (tied lm_head) and norms of the pruned model are the dense model's bytes" {
    has_python_module safetensors || skip "python3 safetensors missing"
    run python3 -c "
import json, os, sys
from safetensors import deserialize
d = os.path.dirname(sys.argv[1]); idx = json.load(open(sys.argv[1]))
dense = dict(deserialize(open(sys.argv[2] + '/model.safetensors', 'rb').read()))
shards = [dict(deserialize(open(os.path.join(d, s['file']), 'rb').read())) for s in idx['shards']]
got = {}
for name, t in idx['tensors'].items():
    if t['kind'] == 'dense':
        got[name] = shards[t['shard']][t['parts']['data']['tensor']]['data']
keep = [k for k in dense if 'proj' not in k]
print(len(keep), sorted(got) == sorted(keep), all(got[k] == dense[k]['data'] for k in keep))" "$OUTD/model.tbm" "$TB_MODEL"
    [ "$status" -eq 0 ]
    [ "$output" = "14 True True" ]
}

@test "--fast: the one-shot recipe, no training stage" {
    WINDOWS=8 SEQLEN=128 TB=$TB_BIN JOBS=2 "$BATS_TEST_DIRNAME/../../examples/prune-model.sh" "$TB_MODEL" \
        "$BATS_TEST_TMPDIR/fast" 2:4 --fast >"$BATS_TEST_TMPDIR/log" 2>&1 || { cat "$BATS_TEST_TMPDIR/log"; false; }
    run tb-inspect "$BATS_TEST_TMPDIR/fast/model.tbm"
    [[ "$output" == *"--compensate recon"* ]]
    [[ "$output" != *"tb-recon"* ]] && [[ "$output" != *"tb-distill"* ]]
    run "$BATS_TEST_DIRNAME/../../examples/prune-model.sh" "$TB_MODEL" x --bogus
    [ "$status" -eq 1 ]
}
