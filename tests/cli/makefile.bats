#!/usr/bin/env bats
# examples/Makefile at scale: KEEP=0 removes what a finished layer no longer
# needs (same model), GPUS=... runs heavy steps one per GPU through
# examples/gpu-slot.sh (same model; the device ids are only handed to the
# tools in TB_GPU, so this runs on the CPU), COMPENSATE=auto chooses by size.

load helpers

EX=$BATS_TEST_DIRNAME/../../examples

setup() {
    TMP=$(mktemp -d)
    export TMPDIR=$TMP   # gpu-slot.sh's default lock directory lives here
}
teardown() { rm -rf "$TMP"; }

# prune into $TMP/out with a small calibration; extra make arguments follow
prune() {
    make --no-print-directory -f "$EX/Makefile" MODEL="$TB_MODEL" OUT="$TMP/out" TB="$TB_BIN" \
        WINDOWS=4 SEQLEN=64 RECON_STEPS=4 "$@"
}

# tensor bytes of every layer shard, one line per shard
digest() { for f in "$TMP"/out/layer.*.tb; do sha256sum <"$f"; done; }

@test "KEEP=0: only the pruned shards and the index stay, the model is the same bit for bit" {
    prune -j2 >"$TMP/log" 2>&1 || { cat "$TMP/log"; false; }
    ref=$(digest)
    [ -f "$TMP/out/gram.3.fisher" ] && [ -f "$TMP/out/stream.3.st" ] && [ -f "$TMP/out/packed.3.tb" ]
    rm -rf "$TMP/out"
    prune -j2 KEEP=0 >"$TMP/log" 2>&1 || { cat "$TMP/log"; false; }
    [ "$(digest)" = "$ref" ]
    [ -f "$TMP/out/model.tbm" ] && [ -f "$TMP/out/layer.5.tb" ]
    for g in 'gram.*' 'scores.*' 'masks.*' 'packed.*' 'partial.*' 'stream.*'; do
        [ -z "$(find "$TMP/out" -name "$g")" ] || { ls "$TMP/out"; false; }
    done
    run prune
    [ "$status" -eq 0 ]
    [[ "$output" == *"Nothing to be done"* || "$output" == *"up to date"* ]]
    run tb-run -m "$TMP/out/model.tbm" --prompt "Once" -n 4 --seed 1
    [ "$status" -eq 0 ]
}

@test "GPUS=0,1: one heavy step per GPU at a time, both GPUs busy at once, the same model" {
    command -v flock >/dev/null || skip "flock (util-linux) missing"
    prune SEQUENTIAL=0 RECON_STEPS=0 -j2 >"$TMP/log" 2>&1 || { cat "$TMP/log"; false; }
    ref=$(digest)
    rm -rf "$TMP/out"
    prune SEQUENTIAL=0 RECON_STEPS=0 GPUS=0,1 -j2 >"$TMP/log" 2>&1 || { cat "$TMP/log"; false; }
    [ "$(digest)" = "$ref" ]
    L=$TMP/out/gpu-slots.log
    # tb-fisher once, then tb-score and tb-pack per layer: 13 steps
    [ "$(grep -c '^start' "$L")" -eq 13 ] && [ "$(grep -c '^end' "$L")" -eq 13 ]
    grep -q 'gpu=0' "$L" && grep -q 'gpu=1' "$L"
    # replay the timeline: never two steps on one GPU, sometimes one on each
    run awk '{ g = $3 } $1 == "start" { if (busy[g]++) bad = 1; n++; if (n > peak) peak = n }
             $1 == "end" { busy[g]--; n-- } END { print (bad ? "overlap" : "ok"), peak }' \
        <(sort -k2,2n -s "$L")
    [ "$output" = "ok 2" ]
}

@test "gpu-slot.sh: the step's exit status, TB_GPU set, bad ids refused" {
    run "$EX/gpu-slot.sh" "$TMP/locks" 3 sh -c 'echo "gpu $TB_GPU"; exit 7'
    [ "$status" -eq 7 ]
    [ "$output" = "gpu 3" ]
    run "$EX/gpu-slot.sh" "$TMP/locks" 0,x true
    [ "$status" -eq 1 ]
    run "$EX/gpu-slot.sh" "$TMP/locks"
    [ "$status" -eq 1 ]
}

@test "COMPENSATE=auto: recon for a small model, sparsegpt above RECON_MAX_PARAMS, and it says so" {
    run prune -n
    [ "$status" -eq 0 ]
    [[ "$output" == *"--compensate recon"* ]]
    [[ "$output" != *"COMPENSATE=auto chose"* ]]
    run prune -n RECON_MAX_PARAMS=1000000
    [[ "$output" == *"COMPENSATE=auto chose sparsegpt: 6163712 parameters > RECON_MAX_PARAMS=1000000"* ]]
    [[ "$output" == *"--compensate sparsegpt"* ]]
    [[ "$output" != *"--compensate recon"* ]]
    run prune -n COMPENSATE=obs
    [[ "$output" == *"--compensate obs"* ]]
}
