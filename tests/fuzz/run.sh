#!/bin/sh
# run.sh SECONDS BINDIR NAME... - run each libFuzzer harness BINDIR/fuzz_NAME for
# SECONDS from its seeds (tests/fuzz/corpus/NAME, read only) and a working
# corpus build-fuzz/corpus/NAME (new inputs go there, not into git), with its
# dictionary (dict/NAME.dict + dict/json.dict for JSON formats). A crash, leak,
# sanitizer report, timeout (10 s per input) or RSS over 2 GB stops the run and
# leaves the input as build-fuzz/artifacts/NAME-*; keep it in
# tests/fuzz/regress/NAME/ once fixed. Prints one line per harness:
#   fuzz NAME: N executions in S s, corpus C inputs, OK|FAILED (log)
set -u
secs=$1 bindir=$2
shift 2
here=$(dirname "$0")
out=$(dirname "$bindir")
mkdir -p "$out/corpus" "$out/artifacts" "$out/logs"
status=0
for name in "$@"; do
    corpus=$out/corpus/$name
    mkdir -p "$corpus"
    dict=$out/dict-$name
    cat "$here/dict/$name.dict" 2>/dev/null >"$dict"
    case $name in config|tokenizer_load|index|tbm|tb|safetensors|fisher) cat "$here/dict/json.dict" >>"$dict" ;; esac
    log=$out/logs/$name.log
    "$bindir/fuzz_$name" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -dict="$dict" -artifact_prefix="$out/artifacts/$name-" -print_final_stats=1 \
        "$corpus" "$here/corpus/$name" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    took=$(sed -n 's/.*Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -1)
    n=$(ls "$corpus" | wc -l)
    if [ "$rc" -eq 0 ]; then r=OK; else r=FAILED; status=1; fi
    echo "fuzz $name: ${execs:-?} executions in ${took:-$secs} s, corpus $n inputs, $r ($log)"
    [ "$rc" -eq 0 ] || grep -m 3 -E 'ERROR|SUMMARY|runtime error' "$log"
done
exit $status
