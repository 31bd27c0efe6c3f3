#!/usr/bin/env bats
# tb-recon: the layer's output error falls, masks and zeros stay, bad inputs.

load helpers

setup_file() {
    export D=$BATS_FILE_TMPDIR/p M=$TB_MODEL
    mkdir -p "$D"
    cd "$D"
    # a 2:4 layer 0 and layer 1, each calibrated on 6 windows of 128 tokens
    tb-tokenize -m "$M" --bos --windows 6 --seq-len 128 --quiet -o calib.st "$BATS_TEST_DIRNAME/../../examples/data/calib.txt"
    tb-fisher -m "$M" -t calib.st --stats gram --layers 0:1 --acts-out s1.st -o g0.fisher --quiet
    tb-fisher -m "$M" --acts-in s1.st --stats gram --layers 1:2 -o g1.fisher --quiet
    for l in 0 1; do
        tb-score -m "$M" -f g$l.fisher --method wanda --tensors "model.layers.$l.*" --quiet -o sc$l.st
        tb-nm -s sc$l.st --pattern 2:4 --quiet -o m$l.st
        tb-pack -m "$M" --masks m$l.st -f g$l.fisher --compensate recon --layers $l:$((l + 1)) --quiet -o p$l.tb
    done
}

@test "layer 0: the output error falls, every weight stays 2:4 with the same keep set" {
    cd "$D"
    run tb-recon -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 30 -o r0.tb --json
    [ "$status" -eq 0 ]
    before=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["mse_before"])' "$output")
    after=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["mse_after"])' "$output")
    awk -v a="$after" -v b="$before" 'BEGIN { exit !(a < 0.95 * b) }'
    # where the time went: each phase non-negative, training covers the
    # steps' own seconds, the phases add up to the total
    python3 -c '
import json, sys
j = json.loads(sys.argv[1])
ph = [j["seconds_" + k] for k in ("inputs", "targets", "weights", "training", "write")]
assert min(ph) >= 0 and j["seconds_training"] >= j["seconds"] > 0, j
assert abs(sum(ph) - j["seconds_total"]) < 1e-6 * max(1.0, j["seconds_total"]), j' "$output"
    run tb-inspect --json r0.tb
    run python3 -c "
import json, sys; p = json.loads(sys.argv[1])['pruned']
print(len(p), min(t['conforming_fraction'] for t in p), all(t['compensation'] == 'recon+recon' for t in p))" "$output"
    [ "$output" = "7 1 True" ]
    # the kept positions are the packed ones: the indices did not change
    has_python_module safetensors || skip "python3 safetensors missing"
    run python3 -c "
from safetensors import deserialize
a = dict(deserialize(open('p0.tb', 'rb').read())); b = dict(deserialize(open('r0.tb', 'rb').read()))
idx = [k for k in a if k.endswith('.indices')]
print(len(idx), all(a[k]['data'] == b[k]['data'] for k in idx),
      all(a[k.replace('.indices', '.values')]['data'] != b[k.replace('.indices', '.values')]['data'] for k in idx))"
    [ "$output" = "7 True True" ]
}

@test "a reconstructed layer merges and runs; the recipe names tb-pack through packed_from" {
    cd "$D"
    tb-recon -m "$M" --shard p1.tb --layer 1 --acts-in s1.st --steps 5 --quiet -o r1.tb
    tb-merge --partial -m "$M" -o part.tbm r1.tb
    run tb-run -m part.tbm --base "$M" --prompt "The" -n 4 --quiet
    [ "$status" -eq 0 ]
    run tb-inspect part.tbm
    [[ "$output" == *"recipe: tb "*"tb-recon"* ]]
    [[ "$output" == *"recipe: tb "*"tb-pack"*"--compensate recon"* ]]
}

@test "bad inputs: a stream of another layer, a shard of another layer, a pruned -m, layer > 0 without a stream" {
    cd "$D"
    run tb-recon -m "$M" --shard p1.tb --layer 1 --acts-in s1.st -o x.tb --steps 1 --layer 2
    [ "$status" -eq 2 ]
    one_line_error tb-recon
    [[ "$output" == *"holds the stream entering layer 1, not layer 2"* ]] || [[ "$output" == *"is not in layer 2"* ]]
    run tb-recon -m "$M" --shard p1.tb --layer 0 -t calib.st -o x.tb --steps 1
    [ "$status" -eq 2 ]
    one_line_error tb-recon
    [[ "$output" == *"pruned tensor 'model.layers.1."*"is not in layer 0"* ]]
    tb-merge --partial -m "$M" -o pp.tbm p0.tb
    run tb-recon -m pp.tbm --shard p0.tb --layer 0 -t calib.st -o x.tb
    [ "$status" -eq 1 ]
    run tb-recon -m "$M" --shard p1.tb --layer 1 -t calib.st -o x.tb
    [ "$status" -eq 1 ]
    [[ "$output" == *"needs --acts-in"* ]]
    [ ! -e x.tb ]
}

@test "--unit blocks and --learn-masks: the error falls, every weight stays exactly 2:4" {
    cd "$D"
    run tb-recon -v -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 20 --unit blocks -o b0.tb
    [ "$status" -eq 0 ]
    [[ "$output" == *"attention block MSE "* ]]
    before=$(echo "$output" | sed -n 's/.*output MSE \([0-9.e+-]*\) -> \([0-9.e+-]*\) .*/\1/p')
    after=$(echo "$output" | sed -n 's/.*output MSE \([0-9.e+-]*\) -> \([0-9.e+-]*\) .*/\2/p')
    awk -v a="$after" -v b="$before" 'BEGIN { exit !(a < 0.95 * b) }'
    run tb-recon -v -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 20 --learn-masks 5 --mask-until 0.5 -o l0.tb
    [ "$status" -eq 0 ]
    [[ "$output" == *"learned masks: "*"% of the keep bits changed"* ]]
    run tb-inspect --json l0.tb
    run python3 -c "
import json, sys; p = json.loads(sys.argv[1])['pruned']
print(len(p), min(t['conforming_fraction'] for t in p), min(t['sparsity'] for t in p), max(t['sparsity'] for t in p))" "$output"
    [ "$output" = "7 1 0.5 0.5" ]
    run tb-recon -m "$M" --shard p0.tb --layer 0 -t calib.st --unit heads -o x.tb
    [ "$status" -eq 1 ]
    [ ! -e x.tb ]
}

@test "training that raises the error leaves the shard's own weights, with a warning" {
    cd "$D"
    # lr 0.5 throws Adam's first steps far past any minimum
    run tb-recon -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 10 --lr 0.5 -o k0.tb --json
    [ "$status" -eq 0 ]
    [[ "$output" == *"training raised the output error"* ]]
    python3 -c '
import json, struct, sys
j = json.loads([l for l in sys.argv[1].splitlines() if l.startswith("{")][0])
assert j["kept_start"] is True and j["mse_after"] > j["mse_before"], j
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); return h, b[8 + n:]
a, da = load("k0.tb"); c, dc = load("p0.tb")
ma, mc = a.pop("__metadata__"), c.pop("__metadata__")
assert "recon_kept_start" in ma and sorted(a) == sorted(c)
assert all(da[slice(*a[k]["data_offsets"])] == dc[slice(*c[k]["data_offsets"])] for k in a)' "$output"
    # a run that trains is not flagged
    run tb-recon -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 10 -o t0.tb --json --quiet
    [ "$status" -eq 0 ]
    python3 -c 'import json, sys; j = json.loads(sys.argv[1]); assert j["kept_start"] is False, j' "$output"
}

@test "--lr-rel: each weight's rate from its scale and width; the error falls and the metadata says which rule ran" {
    cd "$D"
    run tb-recon -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 30 --lr-rel 5 -o rel0.tb --json --quiet
    [ "$status" -eq 0 ]
    python3 -c 'import json, sys; j = json.loads(sys.argv[1]); assert j["mse_after"] < 0.95 * j["mse_before"] and not j["kept_start"], j' "$output"
    python3 -c '
import json, struct
b = open("rel0.tb", "rb").read(); n = struct.unpack("<Q", b[:8])[0]
m = json.loads(b[8:8 + n])["__metadata__"]
assert m["recon_lr"] == "5 x RMS / fan-in", m["recon_lr"]'

}

@test "the rate: --lr-rel 5's rule by default, --lr X one rate, both at once a usage error" {
    cd "$D"
    lr_of() {
        python3 -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]
print(json.loads(b[8:8 + n])["__metadata__"]["recon_lr"])' "$1"
    }
    tb-recon -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 4 -o def0.tb --quiet
    [ "$(lr_of def0.tb)" = "5 x RMS / fan-in" ]
    # the same weights as --lr-rel 5 given (the files differ in their command line)
    tb-recon -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 4 --lr-rel 5 -o rel5.tb --quiet
    same_tensors() {
        python3 -c '
import json, struct, sys
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); h.pop("__metadata__"); return h, b[8 + n:]
(a, da), (c, dc) = load(sys.argv[1]), load(sys.argv[2])
sys.exit(0 if a == c and da == dc else 1)' "$1" "$2"
    }
    same_tensors def0.tb rel5.tb
    tb-recon -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 4 --lr 1e-3 -o fix0.tb --quiet
    [ "$(lr_of fix0.tb)" = "0.001" ]
    ! same_tensors def0.tb fix0.tb
    run tb-recon -m "$M" --shard p0.tb --layer 0 -t calib.st --steps 4 --lr 1e-3 --lr-rel 5 -o both.tb
    [ "$status" -eq 1 ]
    [[ "$output" == *"at most one of --lr"* ]]
    [ ! -e both.tb ]
}
