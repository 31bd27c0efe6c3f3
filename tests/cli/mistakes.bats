#!/usr/bin/env bats
# Each mistake issue 16 lists, as a new user makes it: one line naming the
# problem and the fix, the documented exit status, no partial output.
load helpers

setup() {
    cd "$BATS_TEST_TMPDIR"
    TEXT=$BATS_TEST_DIRNAME/../../examples/data/calib.txt
}

# nothing written beside the inputs: no output, no temporary file
nothing_written() { [ -z "$(ls -A | grep -v -e '^in\.' )" ] || { ls -A; return 1; }; }

windows() { tb-tokenize -m "$TB_MODEL" --bos --windows 2 --seq-len 32 -o "$1" "$TB_TEST_DATA/wikitext2-test-head.txt"; }

@test "-t is --tokens everywhere: tb-pack has no -t, and -j is the thread count" {
    run tb-pack -m "$TB_MODEL" --masks x -t calib.st -o out.tb
    [ "$status" -eq 1 ]; one_line_error tb-pack
    [ "$output" = "tb-pack: unknown option '-t' (see tb-pack --help)" ]
    run tb-pack -j x
    [ "$output" = "tb-pack: -j/--threads: 'x' is not an integer (see tb-pack --help)" ]
    nothing_written
}

@test "tb-inspect and tb-export take -m too" {
    windows in.st
    run tb-inspect -m in.st
    [ "$status" -eq 0 ]
    [[ "$output" == *input_ids* ]]
    run tb-export -m in.st -o d
    [ "$status" -eq 2 ]; one_line_error tb-export
    [ "$output" = "tb-export: in.st: a safetensors file, expected a pruned model's .tbm index: merge the shards with tb-merge first" ]
    nothing_written
}

@test "a text file where safetensors is expected: names the kind and the fix (-t, -s, -f, --masks); exit 2" {
    cp "$TEXT" in.txt
    run tb-fisher -m "$TB_MODEL" -t in.txt -o out.fisher
    [ "$status" -eq 2 ]; one_line_error tb-fisher
    [ "$output" = "tb-fisher: in.txt: a text file, expected token windows (safetensors): use --text FILE, or tb-tokenize --windows" ]
    run tb-nm -s in.txt --pattern 2:4 -o out.st
    [ "$status" -eq 2 ]
    [ "$output" = "tb-nm: in.txt: a text file, expected scores (safetensors): make them with tb-score" ]
    run tb-score -m "$TB_MODEL" --method wanda -f in.txt -o out.st
    [ "$status" -eq 2 ]
    [ "$output" = "tb-score: in.txt: a text file, expected .fisher statistics (safetensors): make them with tb-fisher" ]
    run tb-pack -m "$TB_MODEL" --masks in.txt -o out.tb
    [ "$status" -eq 2 ]
    [ "$output" = "tb-pack: in.txt: a text file, expected masks (safetensors): make them with tb-nm" ]
    run tb-run -m "$TB_MODEL" --ppl "$TB_MODEL/model.safetensors"
    [ "$status" -eq 2 ]
    [[ "$output" == "tb-run: $TB_MODEL/model.safetensors: a safetensors file, expected text: "* ]]
    nothing_written
}

@test "a .tbm or text on stdin where safetensors is expected says what it is" {
    printf '{\n  "format": "tensorbit.tbm",\n  "shards": []\n}\n' >in.tbm
    run tb-inspect - <in.tbm
    [ "$status" -eq 2 ]; one_line_error tb-inspect
    [[ "$output" == "tb-inspect: <stdin>: a .tbm index (JSON), not safetensors"* ]]
    run tb-nm --pattern 2:4 -o out.st <"$TEXT"
    [ "$status" -eq 2 ]
    [[ "$output" == "tb-nm: <stdin>: a text file, not safetensors ("* ]]
    nothing_written
}

@test "a hub id as -m says how to download it; exit 3" {
    run tb-run -m meta-llama/Llama-2-7b-hf --ppl "$TEXT"
    [ "$status" -eq 3 ]; one_line_error tb-run
    [[ "$output" == *"meta-llama/Llama-2-7b-hf: no such file or directory; if it is a Hugging Face hub id"*"huggingface-cli download meta-llama/Llama-2-7b-hf --local-dir DIR"* ]]
    run tb-fisher -m "$TB_MODEL/config.json" -t x.st -o out.fisher
    [ "$status" -eq 2 ]
    [[ "$output" == *"config.json: a JSON file, expected a model (an HF directory with config.json, a .tbm or a safetensors file)" ]]
}

@test "- is refused by name where a stream cannot be: tb-export -o -, a shard, a model" {
    run tb-export x.tbm -o -
    [ "$status" -eq 1 ]; one_line_error tb-export
    [ "$output" = "tb-export: -o/--output: '-' (standard input or output) cannot be a DIR here: give a path (see tb-export --help)" ]
    [ ! -e ./- ]
    run tb-merge -m "$TB_MODEL" -o out.tbm -
    [ "$status" -eq 1 ]
    [[ "$output" == "tb-merge: SHARD '-': a shard is indexed by its path, so it cannot be a stream"* ]]
    run tb-run -m - --ppl x
    [ "$status" -eq 1 ]
    [[ "$output" == "tb-run: -m/--model: '-' (standard input or output) cannot be a MODEL here"* ]]
    nothing_written
}

@test "- is stdin for tb-run --prompt as for --ppl, and -f FILE reads a prompt" {
    a=$(echo "The history of" | tb-run -m "$TB_MODEL" --prompt - -n 6)
    printf 'The history of' >in.prompt
    b=$(tb-run -m "$TB_MODEL" -f in.prompt -n 6)
    c=$(tb-run -m "$TB_MODEL" -p "The history of" -n 6)
    [ "$b" = "$c" ]
    [[ "$a" == "The history of"* && "$a" != "-"* ]]
}

@test "tb-merge takes shards from another directory (relative path) or copies them (--copy)" {
    mkdir shards idx
    tb-score -m "$TB_MODEL" --method magnitude | tb-nm --pattern 2:4 -o in.masks
    tb-pack -m "$TB_MODEL" --masks in.masks -o shards/model.tb
    tb-merge -m "$TB_MODEL" -o idx/rel.tbm shards/model.tb
    grep -q '"file":[[:space:]]*"../shards/model.tb"' idx/rel.tbm
    a=$(tb-run -m idx/rel.tbm -p "The" -n 4)
    tb-merge -m "$TB_MODEL" -o idx/copy.tbm shards/model.tb --copy
    [ -f idx/model.tb ]
    cmp idx/model.tb shards/model.tb
    b=$(tb-run -m idx/copy.tbm -p "The" -n 4)
    [ "$a" = "$b" ]
    # the copy is the one recorded: the index moves with its directory
    mv idx moved
    run tb-run -m moved/copy.tbm -p "The" -n 4
    [ "$status" -eq 0 ]
}

@test "the recipe survives pipes: tb-score | tb-nm | tb-pack keeps every stage" {
    windows in.st
    tb-fisher -m "$TB_MODEL" -t in.st --stats gram -o in.fisher
    mkdir m
    tb-score -m "$TB_MODEL" -f in.fisher --method wanda | tb-nm --pattern 2:4 | tb-pack -m "$TB_MODEL" --masks - -o m/model.tb
    tb-merge -m "$TB_MODEL" -o m/model.tbm m/model.tb
    run tb-inspect m/model.tbm
    [[ "$output" == *"recipe: tb "*"tb-pack"* ]]
    [[ "$output" == *"recipe: mask "*"tb-nm --pattern 2:4"* ]]
    [[ "$output" == *"recipe: scores "*"tb-score"*"--method wanda"* ]]
    [[ "$output" == *"recipe: fisher "*"--stats gram"* ]]
}

@test "--json on every tool that reports a gating figure" {
    windows in.st
    run tb-fisher -m "$TB_MODEL" -t in.st -o in.fisher --json
    [ "$status" -eq 0 ]
    python3 -c 'import json,sys; d = json.loads(sys.argv[1]); assert d["windows"] == 2 and 2 < d["mean_nll"] < 10, d' "$output"
    tb-score -m "$TB_MODEL" -f in.fisher --method wanda -o in.scores
    run tb-nm -s in.scores --pattern 2:4 -o in.masks --json
    [ "$status" -eq 0 ]
    python3 -c 'import json,sys; d = json.loads(sys.argv[1]); assert 0.5 < d["kept_importance"] < 1 and d["pruned_fraction"] == 0.5, d' "$output"
    run tb-pack -m "$TB_MODEL" --masks in.masks -f in.fisher --compensate recon -o in.tb --json
    [ "$status" -eq 0 ]
    python3 -c 'import json,sys; d = json.loads(sys.argv[1]); assert d["pruned"] == 42 and 0 < d["output_error"] < d["output_error_mask_only"] < 1, d' "$output"
    mkdir m && tb-merge -m "$TB_MODEL" -o m/model.tbm in.tb --copy
    run tb-export m/model.tbm -o out.d --json
    [ "$status" -eq 0 ]
    python3 -c 'import json,sys; d = json.loads(sys.argv[1]); assert d["pruned"] == 42 and 0.3 < d["zeros"] < 0.5, d' "$output"
    run tb-nm -s in.scores --pattern 2:4 --json
    [ "$status" -eq 1 ]
    [[ "$output" == *"--json prints to stdout, so the masks need -o FILE"* ]]
}

@test "Ctrl-C: exit 130, no partial output" {
    windows in.st
    # SIGINT while tb-fisher works (32 windows of the bundled set take seconds)
    tb-fisher -m "$TB_MODEL" -t "$TB_MODEL/calib-128x512.safetensors" --max-windows 32 -o out.fisher &
    pid=$!
    sleep 1.5
    kill -INT $pid
    status=0
    wait $pid || status=$?
    [ "$status" -eq 130 ]
    [ ! -e out.fisher ]
    [ -z "$(ls -A | grep -v '^in\.')" ]
}

@test "tb-run: windows past max_position_embeddings refused like tb-fisher; --top-p without --temp refused" {
    run tb-run -m "$TB_MODEL" --ppl "$TEXT" --seq-len 2048
    [ "$status" -eq 1 ]; one_line_error tb-run
    [ "$output" = "tb-run: --seq-len 2048 exceeds the model's max_position_embeddings (1024): use --seq-len 1024" ]
    run tb-run -m "$TB_MODEL" -p hi --top-p 0.9
    [ "$status" -eq 1 ]
    [ "$output" = "tb-run: --top-p samples, but without --temp T (> 0) generation is greedy: add --temp 0.8 (see tb-run --help)" ]
    run tb-run -m "$TB_MODEL" -p hi --top-k 40
    [ "$status" -eq 1 ]
}

@test "tb-run: --stop ends generation before the stop string; -v times prompt and generation apart" {
    full=$(tb-run -m "$TB_MODEL" -p "The history of" -n 24)
    # a stop string taken from the middle of what greedy generation says
    gen=${full#The history of}
    stop=$(awk '{ print $3 }' <<<"$gen")
    [ -n "$stop" ]
    run tb-run -m "$TB_MODEL" -p "The history of" -n 24 --stop "$stop" -v
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" != *"$stop"* || "The history of" == *"$stop"* ]]
    [[ "$full" == "${lines[0]}"* ]]
    [[ "$output" == *"tb-run: prompt: 4 tokens in "* ]]
    [[ "$output" == *"tb-run: generation: "*"ended by a stop string"* ]]
}
