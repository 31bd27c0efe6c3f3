#!/usr/bin/env bats
# tb-distill: a pruned model distilled from the dense one keeps its masks and
# its dense tensors byte for byte, resumes, and refuses bad inputs.

load helpers

setup_file() {
    export D=$BATS_FILE_TMPDIR/d M=$TB_MODEL
    mkdir -p "$D"
    cd "$D"
    # a one-shot magnitude 2:4 model (seconds) and 3 windows of 64 tokens
    tb-tokenize -m "$M" --bos --windows 3 --seq-len 64 --quiet -o calib.st "$BATS_TEST_DIRNAME/../../examples/data/calib.txt"
    tb-score -m "$M" --method magnitude --quiet -o sc.st
    tb-nm -s sc.st --pattern 2:4 --quiet -o masks.st
    tb-pack -m "$M" --masks masks.st --compensate none --quiet -o all.tb
    tb-merge -m "$M" --quiet -o pruned.tbm all.tb
}

@test "distilling lowers the KL, keeps every weight 2:4 and the dense tensors byte for byte" {
    cd "$D"
    run tb-distill -v -m pruned.tbm --teacher "$M" -t calib.st --steps 6 --lr 1e-3 --eval-windows 3 -o kd.tbm
    [ "$status" -eq 0 ]
    [[ "$output" == *"KL "*" -> "*"top-1"* ]]
    before=$(echo "$output" | sed -n 's/.*KL \([0-9.e+-]*\) -> \([0-9.e+-]*\),.*/\1/p')
    after=$(echo "$output" | sed -n 's/.*KL \([0-9.e+-]*\) -> \([0-9.e+-]*\),.*/\2/p')
    awk -v a="$after" -v b="$before" 'BEGIN { exit !(a < 0.98 * b) }'
    [ -f kd.all.tb ] && [ -f kd.tbm.ckpt ]
    run tb-inspect --json kd.tbm
    run python3 -c "
import json, sys; p = json.loads(sys.argv[1])['pruned']
print(len(p), min(t['conforming_fraction'] for t in p), all(t['compensation'] == 'none+distill' for t in p))" "$output"
    [ "$output" = "42 1 True" ]
    run tb-run -m kd.tbm --prompt "The" -n 4 --quiet
    [ "$status" -eq 0 ]
    run tb-inspect kd.tbm
    [[ "$output" == *"recipe: tb "*"tb-distill"*"--steps 6"*"recipe: tb "*"tb-pack"*"--compensate none"* ]]
    has_python_module safetensors || skip "python3 safetensors missing"
    # embeddings (tied: also lm_head) and every norm: the dense model's bytes
    run python3 -c "
from safetensors import deserialize
dense = dict(deserialize(open('$M/model.safetensors', 'rb').read()))
kd = dict(deserialize(open('kd.all.tb', 'rb').read()))
keep = [k for k in dense if 'proj' not in k]
print(len(keep) > 10, 'model.embed_tokens.weight' in keep, all(kd[k]['data'] == dense[k]['data'] for k in keep))"
    [ "$output" = "True True True" ]
}

@test "--resume continues from the checkpoint: a finished run rewrites the same model" {
    cd "$D"
    tb-distill -m pruned.tbm --teacher "$M" -t calib.st --steps 4 --checkpoint-every 2 --eval-windows 0 --quiet -o r.tbm
    cp r.all.tb first.tb
    run tb-distill -v -m pruned.tbm --teacher "$M" -t calib.st --steps 4 --checkpoint-every 2 --eval-windows 0 --resume -o r.tbm
    [ "$status" -eq 0 ]
    [[ "$output" == *"resumed from r.tbm.ckpt at step 4 of 4"* ]]
    has_python_module safetensors || skip "python3 safetensors missing"
    run python3 -c "
from safetensors import deserialize
a = dict(deserialize(open('first.tb', 'rb').read())); b = dict(deserialize(open('r.all.tb', 'rb').read()))
print(len(a), sorted(a) == sorted(b) and all(a[k]['data'] == b[k]['data'] for k in a))"
    [ "$output" = "$(python3 -c "
from safetensors import deserialize; print(len(dict(deserialize(open('first.tb', 'rb').read()))))") True" ]
    # another run's settings are refused by name, and nothing is written
    run tb-distill -m pruned.tbm --teacher "$M" -t calib.st --steps 4 --lr 5e-4 --resume -o r2.tbm --checkpoint r.tbm.ckpt
    [ "$status" -eq 1 ]
    one_line_error tb-distill
    [[ "$output" == *"made with lr"* ]]
    [ ! -e r2.tbm ]
}

@test "--learn-masks: masks move, every weight stays exact 2:4 with learned masks, dense tensors byte for byte" {
    cd "$D"
    run tb-distill -v -m pruned.tbm --teacher "$M" -t calib.st --steps 6 --lr 1e-3 --learn-masks 1 --mask-until 0.5 \
        --eval-windows 0 --checkpoint-every 3 -o lm.tbm
    [ "$status" -eq 0 ]
    pct=$(echo "$output" | sed -n 's/.*learned masks: \([0-9.]*\)% of the keep bits changed.*/\1/p')
    awk -v p="$pct" 'BEGIN { exit !(p > 0 && p < 50) }'
    run tb-inspect --json lm.tbm
    run python3 -c "
import json, sys; p = json.loads(sys.argv[1])['pruned']
print(len(p), min(t['conforming_fraction'] for t in p))" "$output"
    [ "$output" = "42 1" ]
    # the shard's tensor table says where the masks came from
    run python3 -c "
import json, struct
f = open('lm.all.tb', 'rb'); n = struct.unpack('<Q', f.read(8))[0]
t = json.loads(json.loads(f.read(n))['__metadata__']['tensorbit.tensors'])
print(len(t), set(v['mask'] for v in t.values()))"
    [ "$output" = "42 {'learned'}" ]
    # a resume with other mask options is refused by name
    run tb-distill -m pruned.tbm --teacher "$M" -t calib.st --steps 6 --lr 1e-3 --learn-masks 1 --mask-decay 5 \
        --resume --checkpoint lm.tbm.ckpt -o lm2.tbm
    [ "$status" -eq 1 ]
    one_line_error tb-distill
    [[ "$output" == *"made with mask_decay"* ]]
    has_python_module safetensors || skip "python3 safetensors missing"
    run python3 -c "
from safetensors import deserialize
dense = dict(deserialize(open('$M/model.safetensors', 'rb').read()))
kd = dict(deserialize(open('lm.all.tb', 'rb').read()))
keep = [k for k in dense if 'proj' not in k]
print(all(kd[k]['data'] == dense[k]['data'] for k in keep))"
    [ "$output" = "True" ]
}

@test "--extra-tokens: windows appended after -t's, recorded; another window length refused" {
    cd "$D"
    tb-run -m "$M" --sample-windows calib.st --windows 4 --prefix 16 --quiet -o gen.st
    run tb-distill -v -m pruned.tbm --teacher "$M" -t calib.st --extra-tokens gen.st --steps 2 --eval-windows 1 -o kx.tbm
    [ "$status" -eq 0 ]
    [[ "$output" == *"7 windows: 3 of -t, 4 of --extra-tokens"* ]]
    run tb-inspect --json kx.tbm
    [[ "$output" == *'"distill_extra_tokens"'*'gen.st'* ]]
    tb-run -m "$M" --sample-windows calib.st --windows 2 --prefix 16 --seq-len 32 --quiet -o short.st
    run tb-distill -m pruned.tbm --teacher "$M" -t calib.st --extra-tokens short.st --steps 1 -o ky.tbm
    [ "$status" -eq 2 ]
    [[ "$output" == *"short.st: windows of 32 tokens, the others have 64"* ]]
}

@test "bad inputs: a dense student, a pruned teacher, a partial model, no tokens" {
    cd "$D"
    run tb-distill -m "$M" --teacher "$M" -t calib.st -o x.tbm
    [ "$status" -eq 1 ]
    one_line_error tb-distill
    run tb-distill -m pruned.tbm --teacher pruned.tbm -t calib.st -o x.tbm
    [ "$status" -eq 1 ]
    one_line_error tb-distill
    # a partial index whose base lies in its own directory (one outside needs --base)
    cp -r "$M" base
    tb-pack -m base --masks masks.st --compensate none --layers 0:1 --quiet -o l0.tb
    tb-merge --partial -m base --quiet -o part.tbm l0.tb
    run tb-distill -m part.tbm --teacher "$M" -t calib.st --steps 1 --eval-windows 0 -o x.tbm
    [ "$status" -eq 1 ]
    one_line_error tb-distill
    [[ "$output" == *"complete pruned model"* ]]
    run tb-distill -m pruned.tbm --teacher "$M" -o x.tbm
    [ "$status" -eq 1 ]
    run tb-distill -m pruned.tbm --teacher "$M" -t calib.st --device cuda -o x.tbm
    [ "$status" -eq 1 ]
    [ ! -e x.tbm ]
}

@test "an untied lm_head (tiny-mistral-10m, when ../shared has it) stays the dense model's bytes" {
    MM=$TB_SHARED/models/tiny-mistral-10m
    [ -d "$MM" ] || skip "no $MM"
    cd "$D"
    tb-score -m "$MM" --method magnitude --quiet -o msc.st
    tb-nm -s msc.st --pattern 2:4 --quiet -o mmasks.st
    tb-pack -m "$MM" --masks mmasks.st --compensate none --quiet -o mall.tb
    tb-merge -m "$MM" --quiet -o mpruned.tbm mall.tb
    tb-tokenize -m "$MM" --bos --windows 2 --seq-len 64 --quiet -o mcalib.st "$BATS_TEST_DIRNAME/../../examples/data/calib.txt"
    run tb-distill -m mpruned.tbm --teacher "$MM" -t mcalib.st --steps 2 --eval-windows 0 --quiet -o mkd.tbm
    [ "$status" -eq 0 ]
    has_python_module safetensors || skip "python3 safetensors missing"
    run python3 -c "
import glob, json
from safetensors import deserialize
dense = {}
for f in glob.glob('$MM/*.safetensors'):
    dense.update(dict(deserialize(open(f, 'rb').read())))
kd = dict(deserialize(open('mkd.mall.tb', 'rb').read()))
keep = [k for k in dense if 'proj' not in k]
print('lm_head.weight' in keep, all(kd[k]['data'] == dense[k]['data'] for k in keep))"
    [ "$output" = "True True" ]
}
