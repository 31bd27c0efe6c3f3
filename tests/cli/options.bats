#!/usr/bin/env bats
# One family: the same option names mean the same thing in every tool, every
# option is in the tool's --help and man page, and mistakes get one message.
load helpers

TOOLS="tb-tokenize tb-fisher tb-score tb-nm tb-pack tb-recon tb-merge tb-inspect tb-run tb-export tb-synth tb-distill"
ROOT=$BATS_TEST_DIRNAME/../..

# every tool built from tools/ is in the list above
@test "the list covers every tool" {
    for f in "$ROOT"/tools/tb-*.c; do
        t=$(basename "$f" .c)
        [[ " $TOOLS " == *" $t "* ]] || { echo "$t is not in options.bats' TOOLS"; return 1; }
    done
}

# "-x --long" for every option of every tool
all_options() { for t in $TOOLS; do "$t" --list-options | sed "s/^/$t /"; done; }

@test "a short name means one long name in every tool; the shared ones are what the guide says" {
    run all_options
    [ "$status" -eq 0 ]
    # short -> long must be one-to-one across tools; the one exception is -f,
    # a file read as input: the statistics (tb-score, tb-nm, tb-pack) or, in
    # tb-run, the prompt (as llama.cpp's -f)
    bad=$(echo "$output" | awk '$2 ~ /^-[a-zA-Z]$/ && !($1 == "tb-run" && $2 == "-f") { if (($2 in long) && long[$2] != $3) print $1 ": " $2 " is " $3 ", elsewhere " long[$2]; long[$2] = $3 }')
    [ -z "$bad" ] || { echo "$bad"; return 1; }
    # a long name has the same short name (or none) everywhere
    bad=$(echo "$output" | awk '{ s = ($2 ~ /^-[a-zA-Z]$/) ? $2 : ""; l = s ? $3 : $2; if ((l in sh) && sh[l] != s && s != "" && sh[l] != "") print $1 ": " l " is " s ", elsewhere " sh[l]; if (s != "") sh[l] = s }')
    [ -z "$bad" ] || { echo "$bad"; return 1; }
    for pair in "-m --model" "-o --output" "-t --tokens" "-j --threads" "-q --quiet" "-v --verbose" "-h --help"; do
        set -- $pair
        n=$(echo "$output" | awk -v s="$1" '$2 == s' | wc -l)
        m=$(echo "$output" | awk -v s="$1" -v l="$2" '$2 == s && $3 == l' | wc -l)
        [ "$n" -eq "$m" ] || { echo "$1 is not always $2"; return 1; }
    done
    # the long forms never appear without their short form
    for l in --model --output --tokens --threads --quiet --verbose; do
        n=$(echo "$output" | awk -v l="$l" '$2 == l' | wc -l)
        [ "$n" -eq 0 ] || { echo "$l without its short name: $(echo "$output" | awk -v l="$l" '$2 == l')"; return 1; }
    done
}

@test "every tool has -q, -v, --progress, -h, --version; every computing tool has -j" {
    for t in $TOOLS; do
        run "$t" --list-options
        for o in "-q --quiet" "-v --verbose" "--progress" "-h --help" "--version"; do
            [[ "$output" == *"$o"* ]] || { echo "$t lacks $o"; return 1; }
        done
    done
    for t in tb-fisher tb-score tb-nm tb-pack tb-recon tb-run; do
        run "$t" --list-options
        [[ "$output" == *"-j --threads"* ]] || { echo "$t lacks -j/--threads"; return 1; }
    done
}

@test "the shared options behave the same: -j takes 1.., --json prints JSON, -q prints nothing on success" {
    for t in tb-fisher tb-score tb-nm tb-pack tb-recon tb-run; do
        run "$t" -j 0
        [ "$status" -eq 1 ]
        [[ "$output" == "$t: -j/--threads: 0 out of range [1, 1024] (see $t --help)" ]] || { echo "$output"; return 1; }
        run "$t" --threads=x
        [[ "$output" == "$t: -j/--threads: 'x' is not an integer (see $t --help)" ]] || { echo "$output"; return 1; }
    done
    run tb-inspect --doctor --json
    [ "$status" -eq 0 ]
    python3 -c 'import json,sys; d = json.loads(sys.argv[1]); assert d["lapacke_ok"] is True' "$output"
    run tb-tokenize -m "$TB_MODEL" --format text -q <<<"hello world"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 1 ]
}

@test "every option is in --help and in the man page's OPTIONS" {
    for t in $TOOLS; do
        help=$("$t" --help)
        man=$(sed -n '/^\.SH OPTIONS/,/^\.SH [A-Z]/p' "$ROOT/man/$t.1" | sed 's/\\-/-/g')
        for long in $("$t" --list-options | grep -o -- '--[a-z0-9-]*' | sort -u); do
            [[ "$help" == *"$long"* ]] || { echo "$t --help lacks $long"; return 1; }
            [[ "$man" == *"$long"* ]] || { echo "man/$t.1 OPTIONS lacks $long"; return 1; }
        done
    done
}

@test "one message per kind of mistake, naming the option; exit 1; nothing written" {
    cd "$BATS_TEST_TMPDIR"
    run tb-pack -m "$TB_MODEL" --masks x.st
    [ "$status" -eq 1 ]; one_line_error tb-pack
    [ "$output" = "tb-pack: missing -o/--output FILE (see tb-pack --help)" ]
    run tb-fisher -m "$TB_MODEL" -t
    [ "$status" -eq 1 ]; one_line_error tb-fisher
    [ "$output" = "tb-fisher: option '-t/--tokens' needs a value (FILE) (see tb-fisher --help)" ]
    run tb-nm --pattern
    [ "$output" = "tb-nm: option '--pattern' needs a value (N:M) (see tb-nm --help)" ]
    run tb-score -m "$TB_MODEL" --method foo
    [ "$output" = "tb-score: --method: 'foo' is not one of magnitude, wanda, obd, obs or normalized (see tb-score --help)" ]
    run tb-run --bogus
    [ "$output" = "tb-run: unknown option '--bogus' (see tb-run --help)" ]
    run tb-run -m "$TB_MODEL" --ppl x extra
    [ "$output" = "tb-run: unexpected argument 'extra' (see tb-run --help)" ]
    run tb-merge -m "$TB_MODEL" -o out.tbm
    [ "$output" = "tb-merge: missing SHARD.tb... (see tb-merge --help)" ]
    run tb-run -m "$TB_MODEL" --json=1 --ppl x
    [ "$output" = "tb-run: option '--json' takes no value (see tb-run --help)" ]
    [ -z "$(ls)" ]
}

@test "one layer-range grammar: A, A-B, A:B in tb-pack and tb-fisher" {
    for t in tb-pack tb-fisher; do
        run "$t" --layers 3-1
        [ "$output" = "$t: --layers: '3-1' is an empty range (see $t --help)" ]
        run "$t" --layers x
        [ "$output" = "$t: --layers: 'x' is not A, A-B (inclusive) or A:B (B excluded) (see $t --help)" ]
    done
    cd "$BATS_TEST_TMPDIR"
    tb-tokenize -m "$TB_MODEL" --bos --windows 2 --seq-len 32 -o w.st "$TB_TEST_DATA/wikitext2-test-head.txt"
    tb-fisher -m "$TB_MODEL" -t w.st --stats gram --layers 0-1 -o a.fisher
    tb-fisher -m "$TB_MODEL" -t w.st --stats gram --layers 0:2 -o b.fisher
    cmp <(tb-inspect a.fisher | grep '^gram') <(tb-inspect b.fisher | grep '^gram')
    n=$(tb-inspect a.fisher | grep -c '^gram\.model\.layers\.[01]\..*input')
    [ "$n" -eq 8 ]
}

@test "-- ends the options; = and bundled short flags work" {
    cd "$BATS_TEST_TMPDIR"
    printf 'hello' >-x
    run tb-tokenize -qm "$TB_MODEL" --format=text -- -x
    [ "$status" -eq 0 ]
    [ "$output" = "$(tb-tokenize -m "$TB_MODEL" --format text <-x)" ]
}
