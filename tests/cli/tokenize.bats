#!/usr/bin/env bats
# tb-tokenize: golden cases of both tokenizers, output formats, windows,
# batch mode, the comparison with the HF tokenizers library, and bad inputs.

load helpers

setup() { TMP=$(mktemp -d); }
teardown() { rm -rf "$TMP"; }

LLAMA=$TB_TEST_DATA/tiny-llama-6m
MISTRAL=$TB_TEST_DATA/tiny-mistral-10m

# split_cases MODEL: $TMP/<model>/N.txt (text), N.ids, N.bos (expected ids
# lines) and N.dec (decoded text) for every golden case
split_cases() {
    python3 - "$1" "$TMP/$(basename "$1")" <<'EOF'
import json, os, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
for i, c in enumerate(json.load(open(os.path.join(src, "tokenizer-cases.json"), encoding="utf-8"))):
    for ext, val in (("txt", c["text"]), ("dec", c["decoded"]),
                     ("ids", " ".join(map(str, c["ids"])) + "\n"),
                     ("bos", " ".join(map(str, c["ids_with_bos"])) + "\n")):
        with open(os.path.join(out, f"{i}.{ext}"), "w", encoding="utf-8", newline="") as f:
            f.write(val)
EOF
}

check_golden() {
    local model=$1 dir=$TMP/$(basename "$1") n=0 f base
    split_cases "$model"
    for f in "$dir"/*.txt; do
        base=${f%.txt}
        tb-tokenize -m "$model" --format text <"$f" >"$base.got" || return 1
        cmp -s "$base.got" "$base.ids" || { echo "ids differ: $(head -c 80 "$f")"; diff "$base.got" "$base.ids"; return 1; }
        tb-tokenize -m "$model" --format text --bos "$f" >"$base.got" || return 1
        cmp -s "$base.got" "$base.bos" || { echo "ids with BOS differ: $(head -c 80 "$f")"; return 1; }
        tb-tokenize -m "$model" --decode --format text <"$base.ids" >"$base.got" || return 1
        cmp -s "$base.got" "$base.dec" || { echo "decoded text differs: $(head -c 80 "$f")"; return 1; }
        n=$((n + 1))
    done
    [ "$n" -ge 30 ]
}

@test "every golden case of tiny-llama-6m (byte-level BPE): ids, ids with BOS, decoded" {
    check_golden "$LLAMA"
}

@test "every golden case of tiny-mistral-10m (sentencepiece BPE, byte fallback): ids, ids with BOS, decoded" {
    check_golden "$MISTRAL"
}

@test "printf text | tb-tokenize --format text gives the transformers ids" {
    run sh -c "printf '%s' 'Hello world' | tb-tokenize -m '$LLAMA' --format text"
    [ "$status" -eq 0 ]
    [ "$output" = "41 541 80 880" ]
    run sh -c "printf '%s' '<s> literal' | tb-tokenize -m '$MISTRAL' --format text --bos"
    [ "$output" = "1 1 381 2792 429" ]
}

@test "no CRLF translation: \\r is a character like any other" {
    printf 'a\r\nb' >"$TMP/crlf.txt"
    printf 'a\nb' >"$TMP/lf.txt"
    run tb-tokenize -m "$LLAMA" --format text "$TMP/crlf.txt"
    crlf=$output
    run tb-tokenize -m "$LLAMA" --format text "$TMP/lf.txt"
    [ "$crlf" != "$output" ]
    tb-tokenize -m "$LLAMA" "$TMP/crlf.txt" -o "$TMP/x.st"
    tb-tokenize -m "$LLAMA" --decode "$TMP/x.st" -o "$TMP/back.txt"
    cmp "$TMP/crlf.txt" "$TMP/back.txt"
}

@test "safetensors output: I32 input_ids [1, n], round trip through --decode, files concatenated" {
    printf 'Hello world, ' >"$TMP/a.txt"
    printf 'caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 end\n' >"$TMP/b.txt"
    run tb-tokenize -m "$MISTRAL" "$TMP/a.txt" "$TMP/b.txt" -o "$TMP/ids.st"
    [ "$status" -eq 0 ]
    run python3 -c "
import json, struct, sys
b = open('$TMP/ids.st', 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
print(h['input_ids']['dtype'], h['input_ids']['shape'], h['__metadata__']['bos'])"
    [ "$output" = "I32 [1, 16] false" ]
    cat "$TMP/a.txt" "$TMP/b.txt" >"$TMP/ab.txt"
    tb-tokenize -m "$MISTRAL" --decode "$TMP/ids.st" -o "$TMP/back.txt"
    cmp "$TMP/ab.txt" "$TMP/back.txt"
    # stdout when it is not a terminal, and the same bytes
    tb-tokenize -m "$MISTRAL" "$TMP/a.txt" "$TMP/b.txt" >"$TMP/ids2.st"
    cmp "$TMP/ids.st" "$TMP/ids2.st"
}

@test "empty text: zero ids, or just BOS with --bos" {
    : >"$TMP/empty.txt"
    run tb-tokenize -m "$LLAMA" --format text "$TMP/empty.txt"
    [ "$status" -eq 0 ]
    [ "$output" = "" ]
    run tb-tokenize -m "$LLAMA" --format text --bos "$TMP/empty.txt"
    [ "$output" = "0" ]
    tb-tokenize -m "$LLAMA" "$TMP/empty.txt" -o "$TMP/e.st"
    run python3 -c "
import json, struct
b = open('$TMP/e.st', 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; print(json.loads(b[8:8 + n])['input_ids']['shape'])"
    [ "$output" = "[1, 0]" ]
}

@test "--windows draws N windows of T tokens with the documented splitmix64 sampler" {
    python3 -c "print(' '.join(['The quick brown fox jumps over the lazy dog.'] * 40))" >"$TMP/text.txt"
    run tb-tokenize -m "$LLAMA" --bos --format text "$TMP/text.txt"
    echo "$output" >"$TMP/all.ids"
    run tb-tokenize -m "$LLAMA" --bos --windows 5 --seq-len 16 --seed 7 --format text "$TMP/text.txt"
    [ "$status" -eq 0 ]
    echo "$output" >"$TMP/win.ids"
    # recompute the windows from the full stream as the help text describes them
    run python3 - "$TMP/all.ids" "$TMP/win.ids" <<'EOF'
import sys
ids = open(sys.argv[1]).read().split()
wins = [l.split() for l in open(sys.argv[2]).read().splitlines()]
M = (1 << 64) - 1
state, T = 7, 16
for w in wins:
    state = (state + 0x9E3779B97F4A7C15) & M
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    z ^= z >> 31
    start = (z * (len(ids) - T + 1)) >> 64
    assert w == ids[start:start + T], (start, w)
print(len(wins))
EOF
    echo "$output"
    [ "$output" = "5" ]
    # safetensors: [N, T], reproducible
    tb-tokenize -m "$LLAMA" --windows 5 --seq-len 16 --seed 7 "$TMP/text.txt" -o "$TMP/w1.st"
    tb-tokenize -m "$LLAMA" --windows 5 --seq-len 16 --seed 7 "$TMP/text.txt" -o "$TMP/w2.st"
    cmp "$TMP/w1.st" "$TMP/w2.st"
    run tb-inspect "$TMP/w1.st"
    [[ "$output" == *"[5, 16]"* ]]
}

@test "--jsonl batch mode encodes and decodes one JSON record per line" {
    printf '%s\n' '"Hello world"' '""' '"a\tb\r\nc\u00e9"' >"$TMP/in.jsonl"
    run tb-tokenize -m "$LLAMA" --jsonl "$TMP/in.jsonl"
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "[41,541,80,880]" ]
    [ "${lines[1]}" = "[]" ]
    tb-tokenize -m "$LLAMA" --jsonl "$TMP/in.jsonl" >"$TMP/ids.jsonl"
    tb-tokenize -m "$LLAMA" --jsonl --decode "$TMP/ids.jsonl" >"$TMP/back.jsonl"
    run python3 -c "
import json
a = [json.loads(l) for l in open('$TMP/in.jsonl')]; b = [json.loads(l) for l in open('$TMP/back.jsonl')]
print(a == b)"
    [ "$output" = "True" ]
}

@test "ids match the HF tokenizers library on thousands of snippets (tests/py/tokenizer_compare.py)" {
    has_python_module tokenizers || skip "python3 lacks the tokenizers package"
    run python3 "$BATS_TEST_DIRNAME/../py/tokenizer_compare.py" --bin "$TB_BIN"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"total: "*" snippets, 0 mismatches"* ]]
}

# speed is a benchmark (BENCHMARKS.md), not asserted here: only the counts are
@test "encoding WikiText-2 test (1.3 MB, bundled) gives the reference token counts" {
    wiki=$BATS_TEST_DIRNAME/../../examples/data/wikitext2-test.txt
    tb-tokenize -m "$LLAMA" --bos "$wiki" -o "$TMP/l.st"
    tb-tokenize -m "$MISTRAL" --bos "$wiki" -o "$TMP/m.st"
    run tb-inspect "$TMP/l.st"
    [[ "$output" == *"[1, 402094]"* ]]
    run tb-inspect "$TMP/m.st"
    [[ "$output" == *"[1, 354941]"* ]]
}

# ---- bad inputs: one line on stderr, the exit status, and no output file ----

refuse() { # refuse STATUS SUBSTRING ARGS...
    local want=$1 msg=$2
    shift 2
    run tb-tokenize -o "$TMP/out" --quiet "$@"
    [ "$status" -eq "$want" ] || { echo "status $status: $output"; return 1; }
    one_line_error tb-tokenize
    [[ "$output" == *"$msg"* ]] || { echo "$output"; return 1; }
    [ ! -e "$TMP/out" ]
    [ -z "$(ls "$TMP" | grep '\.tmp\.')" ]
}

@test "a model directory without tokenizer.json: exit 2" {
    mkdir "$TMP/model"
    cp "$LLAMA/config.json" "$TMP/model/"
    printf 'x' >"$TMP/t.txt"
    refuse 2 "$TMP/model/tokenizer.json: no such file" -m "$TMP/model" "$TMP/t.txt"
}

@test "an unreadable tokenizer.json or a missing model: exit 3" {
    mkdir -p "$TMP/model/tokenizer.json"
    printf 'x' >"$TMP/t.txt"
    refuse 3 "tokenizer.json" -m "$TMP/model" "$TMP/t.txt"
    refuse 3 "$TMP/nope: No such file or directory" -m "$TMP/nope" "$TMP/t.txt"
}

@test "an unsupported tokenizer model (WordPiece): exit 2 naming it" {
    mkdir "$TMP/bert"
    cat >"$TMP/bert/tokenizer.json" <<'EOF'
{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "BertPreTokenizer"},
 "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
           "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "a": 1, "##b": 2}}}
EOF
    printf 'ab' >"$TMP/t.txt"
    refuse 2 "$TMP/bert/tokenizer.json: unsupported tokenizer model 'WordPiece'" -m "$TMP/bert" "$TMP/t.txt"
    printf '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []' >"$TMP/bert/tokenizer.json"
    refuse 2 "invalid JSON" -m "$TMP/bert" "$TMP/t.txt"
}

@test "invalid UTF-8: exit 2 naming the file and byte offset" {
    printf 'good text\n' >"$TMP/a.txt"
    printf 'abc\xff\xfe' >"$TMP/bad.txt"
    refuse 2 "$TMP/bad.txt: invalid UTF-8 at byte offset 3" -m "$LLAMA" "$TMP/a.txt" "$TMP/bad.txt"
    run sh -c "printf 'x\\300\\257' | tb-tokenize -m '$LLAMA' --format text"
    [ "$status" -eq 2 ]
    [ "$output" = "tb-tokenize: <stdin>: invalid UTF-8 at byte offset 1" ]
}

@test "windows from empty or too-short text: exit 2" {
    : >"$TMP/empty.txt"
    refuse 2 "empty input" -m "$LLAMA" --windows 2 --seq-len 8 "$TMP/empty.txt"
    printf 'only a few words' >"$TMP/short.txt"
    refuse 2 "$TMP/short.txt: 5 tokens, fewer than one window of 64 (--seq-len)" -m "$LLAMA" --windows 2 --seq-len 64 "$TMP/short.txt"
}

@test "--decode of ids out of the vocabulary: exit 2" {
    printf '41 541 4096\n' >"$TMP/ids.txt"
    refuse 2 "token id 4096 is not in the vocabulary (size 4096)" -m "$LLAMA" --decode --format text "$TMP/ids.txt"
    printf '41 -3\n' >"$TMP/neg.txt"
    refuse 2 "'-3' is not a token id" -m "$LLAMA" --decode --format text "$TMP/neg.txt"
    printf '41 x\n' >"$TMP/word.txt"
    refuse 2 "'x' is not a token id" -m "$LLAMA" --decode --format text "$TMP/word.txt"
    # safetensors input: encode with the bigger vocabulary, decode with the smaller
    printf 'zebra quagga' | tb-tokenize -m "$MISTRAL" -o "$TMP/m.st"
    refuse 2 "is not in the vocabulary (size 4096)" -m "$LLAMA" --decode "$TMP/m.st"
}

@test "usage errors: exit 1" {
    refuse 1 "missing -m/--model MODEL" "$TMP/x"
    refuse 1 "--windows and --seq-len go together" -m "$LLAMA" --windows 3
    refuse 1 "--seq-len" -m "$LLAMA" --windows 3 --seq-len 0
    refuse 1 "--format" -m "$LLAMA" --format csv
    refuse 1 "unknown option" -m "$LLAMA" --frobnicate
    refuse 1 "--decode takes no" -m "$LLAMA" --decode --bos
}

@test "safetensors to a terminal is refused; text is not" {
    command -v script >/dev/null || skip "no script(1) to provide a terminal"
    run script -qec "printf x | $TB_BIN/tb-tokenize -m '$LLAMA'" /dev/null
    [ "$status" -eq 1 ]
    [[ "$output" == *"refusing to write binary safetensors to a terminal"* ]]
    run script -qec "printf x | $TB_BIN/tb-tokenize -m '$LLAMA' --format text" /dev/null
    [ "$status" -eq 0 ]
}

@test "--help documents the sampler; the man page renders" {
    run tb-tokenize --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"splitmix64"* ]]
    [[ "$output" == *"--jsonl"* ]]
    command -v man >/dev/null || skip "no man"
    run env MANWIDTH=80 man -l "$BATS_TEST_DIRNAME/../../man/tb-tokenize.1"
    [ "$status" -eq 0 ]
    [[ "$output" == *"splitmix64"* ]]
}
