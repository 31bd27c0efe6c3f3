#!/usr/bin/env bats
# tb-score and tb-nm: the pipeline on the bundled model through stdout/stdin,
# mask conformity (of the bits, and of the weights once masked), exact
# unstructured counts, permutations, the iterative solver on the real Gram
# matrices (the bundled golden), and one line + the right exit status per error.

load helpers

setup() { TMP=$(mktemp -d); }
teardown() { rm -rf "$TMP"; }

GOLDEN=$TB_TEST_DATA/tiny-llama-6m/fisher-gram-16win.safetensors  # bundled copy of the golden

# F32 little-endian bytes of a few values, for hand-made files
F5='\x00\x00\xa0\x40'; F1='\x00\x00\x80\x3f'; F4='\x00\x00\x80\x40'; F2='\x00\x00\x00\x40'
FNAN='\x00\x00\xc0\x7f'; F0='\x00\x00\x00\x00'

# mask bytes of every tensor of a mask file, one row per line
dump_masks() {
    local f=$1 name
    for name in $(tb-inspect --json "$f" | python3 -c 'import json,sys; [print(t["name"]) for t in json.load(sys.stdin)["tensors"] if t["dtype"]=="U8"]' 2>/dev/null ||
        tb-inspect "$f" | awk '$2=="U8"{print $1}'); do
        tb-inspect --tensor "$name" "$f" | grep -v '^#'
    done
}

# every byte of every row holds two nibbles with exactly N kept bits (M = 4)
# or every byte exactly N bits (M = 8); prints the number of bad bytes
count_bad_groups() {
    local n=$1 m=$2
    awk -v n="$n" -v m="$m" '
        function pc(x,  c) { c = 0; while (x) { c += x % 2; x = int(x / 2) } return c }
        { for (i = 1; i <= NF; i++) {
              b = $i
              if (m == 4) { if (pc(b % 16) != n || pc(int(b / 16)) != n) bad++ }
              else if (pc(b) != n) bad++ } }
        END { print bad + 0 }'
}

# kept bits in all rows given on stdin
count_kept() {
    awk 'function pc(x,  c) { c = 0; while (x) { c += x % 2; x = int(x / 2) } return c }
         { for (i = 1; i <= NF; i++) k += pc($i) } END { print k + 0 }'
}

@test "--help of both tools, and their man pages" {
    run tb-score --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"obs"*"H = 2 G / n + lambda I"* ]]
    run tb-nm --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"--permute"* ]]
    [ -f "$BATS_TEST_DIRNAME/../../man/tb-score.1" ]
    [ -f "$BATS_TEST_DIRNAME/../../man/tb-nm.1" ]
}

@test "tb-score | tb-nm --pattern 2:4 through stdout/stdin: 42 masks, every group 2 of 4" {
    tb-score -m "$TB_MODEL" --method magnitude --quiet | tb-nm --pattern 2:4 --quiet >"$TMP/m.st"
    run tb-inspect "$TMP/m.st"
    [ "$status" -eq 0 ]
    [[ "$output" == *"tensors: 42"* ]]
    [[ "$output" == *"metadata: tensorbit.kind = mask"* ]]
    [[ "$output" == *"metadata: pattern = 2:4"* ]]
    [[ "$output" == *"model.layers.5.mlp.down_proj.weight"*"U8"*"[256, 96]"* ]]
    [ "$(dump_masks "$TMP/m.st" | count_bad_groups 2 4)" -eq 0 ]
    # half of the 5,111,808 projection weights kept
    [ "$(dump_masks "$TMP/m.st" | count_kept)" -eq 2555904 ]
}

@test "the masked weights conform: tb-inspect --nm 2:4 finds every group 2:4" {
    has_python_module numpy || skip "no numpy"
    tb-score -m "$TB_MODEL" --method magnitude --quiet | tb-nm --pattern 2:4 --quiet -o "$TMP/m.st"
    # apply the masks to the bf16 weights (raw safetensors, no bf16 in numpy)
    python3 - "$TB_MODEL/model.safetensors" "$TMP/m.st" "$TMP/pruned.safetensors" <<'EOF'
import json, struct, sys
import numpy as np
def read(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n]); return h, b[8 + n:]
wh, wd = read(sys.argv[1]); mh, md = read(sys.argv[2])
out = {}; blobs = []; off = 0
for name in sorted(k for k in mh if k != '__metadata__' and not k.endswith('.perm')):
    t = wh[name]; rows, cols = t['shape']; b, e = t['data_offsets']
    w = np.frombuffer(wd[b:e], dtype=np.uint16).reshape(rows, cols)
    mb, me = mh[name]['data_offsets']
    bits = np.unpackbits(np.frombuffer(md[mb:me], dtype=np.uint8).reshape(rows, -1), axis=1, bitorder='little')[:, :cols]
    blob = np.where(bits == 1, w, 0).astype(np.uint16).tobytes()
    out[name] = {'dtype': 'BF16', 'shape': [rows, cols], 'data_offsets': [off, off + len(blob)]}
    blobs.append(blob); off += len(blob)
h = json.dumps(out).encode()
open(sys.argv[3], 'wb').write(struct.pack('<Q', len(h)) + h + b''.join(blobs))
EOF
    run tb-inspect --nm 2:4 --json "$TMP/pruned.safetensors"
    [ "$status" -eq 0 ]
    fr=$(echo "$output" | python3 -c 'import json,sys; print(sorted({t["nm"]["conforming_fraction"] for t in json.load(sys.stdin)["tensors"]}))')
    [ "$fr" = "[1]" ]
    # and the dense model does not
    run bash -c "tb-inspect --nm 2:4 --json '$TB_MODEL' | python3 -c 'import json,sys; print(max(t[\"nm\"][\"conforming_fraction\"] for t in json.load(sys.stdin)[\"tensors\"] if \"nm\" in t and \"proj\" in t[\"name\"]))'"
    [ "$output" = "0" ]
}

@test "top-2-of-4 of [5,1,4,2] keeps indices 0 and 2 (mask byte 5), along either k-dim" {
    mkst "$TMP/s.st" '{"w":{"dtype":"F32","shape":[1,4],"data_offsets":[0,16]}}' 0
    printf "$F5$F1$F4$F2" >>"$TMP/s.st"
    tb-nm -s "$TMP/s.st" --pattern 2:4 --quiet -o "$TMP/m.st"
    run tb-inspect --tensor w "$TMP/m.st"
    [ "${lines[1]}" = "5" ]
    # the same values stored [4, 1] (k-dim 0): one bit per row
    mkst "$TMP/t.st" '{"w":{"dtype":"F32","shape":[4,1],"data_offsets":[0,16]}}' 0
    printf "$F5$F1$F4$F2" >>"$TMP/t.st"
    tb-nm -s "$TMP/t.st" --pattern 2:4 --k-dim 0 --quiet -o "$TMP/m0.st"
    run tb-inspect --tensor w "$TMP/m0.st"
    [ "$(echo "$output" | grep -v '^#' | tr '\n' ' ')" = "1 0 1 0 " ]
}

@test "--solver optimal gives topn's masks; 4:8 and 1:4 conform" {
    tb-score -m "$TB_MODEL" --method magnitude --quiet --tensors 'model.layers.1.*' -o "$TMP/s.st"
    tb-nm -s "$TMP/s.st" --pattern 4:8 --quiet -o "$TMP/t.st"
    tb-nm -s "$TMP/s.st" --pattern 4:8 --solver optimal --quiet -o "$TMP/o.st"
    [ "$(dump_masks "$TMP/t.st" | md5sum)" = "$(dump_masks "$TMP/o.st" | md5sum)" ]
    [ "$(dump_masks "$TMP/o.st" | count_bad_groups 4 8)" -eq 0 ]
    tb-nm -s "$TMP/s.st" --pattern 1:4 --quiet -o "$TMP/q.st"
    [ "$(dump_masks "$TMP/q.st" | count_bad_groups 1 4)" -eq 0 ]
}

@test "--permute: valid permutations, conforming masks, independent of the thread count" {
    tb-score -m "$TB_MODEL" --method magnitude --quiet --tensors 'model.layers.2.*' -o "$TMP/s.st"
    # same command line (it is recorded in the metadata), different threads
    mkdir "$TMP/a" "$TMP/b"
    (cd "$TMP/a" && TB_THREADS=1 tb-nm -v -s ../s.st --pattern 2:4 --permute --permute-rounds 20 -o p.st 2>../err)
    (cd "$TMP/b" && TB_THREADS=3 tb-nm -v -s ../s.st --pattern 2:4 --permute --permute-rounds 20 -o p.st 2>/dev/null)
    cmp "$TMP/a/p.st" "$TMP/b/p.st"
    mv "$TMP/a/p.st" "$TMP/p1.st"
    # the permutation keeps more importance than the identity
    grep -q 'permutation: topn kept +' "$TMP/err"
    run tb-inspect "$TMP/p1.st"
    [[ "$output" == *"model.layers.2.mlp.down_proj.weight.perm"*"I32"*"[768]"* ]]
    for t in mlp.down_proj self_attn.q_proj; do
        tb-inspect --tensor "model.layers.2.$t.weight.perm" "$TMP/p1.st" | grep -v '^#' | tr ' ' '\n' | grep . | sort -n >"$TMP/perm"
        k=$(wc -l <"$TMP/perm")
        seq 0 $((k - 1)) | cmp - "$TMP/perm"
        # and not the identity
        if seq 0 $((k - 1)) | cmp -s - <(tb-inspect --tensor "model.layers.2.$t.weight.perm" "$TMP/p1.st" | grep -v '^#' | tr ' ' '\n' | grep .); then false; fi
    done
    [ "$(dump_masks "$TMP/p1.st" | count_bad_groups 2 4)" -eq 0 ]
}

@test "--sparsity: exact counts per row, per tensor and per layer" {
    tb-score -m "$TB_MODEL" --method magnitude --quiet -o "$TMP/s.st"
    tb-nm -s "$TMP/s.st" --sparsity 0.3 --quiet -o "$TMP/r.st"
    # per row: every row of q_proj (256 columns) keeps 256 - round(76.8) = 179
    run bash -c "tb-inspect --tensor model.layers.3.self_attn.q_proj.weight '$TMP/r.st' | grep -v '^#' | awk 'function pc(x,c){c=0;while(x){c+=x%2;x=int(x/2)}return c} {k=0; for(i=1;i<=NF;i++) k+=pc(\$i); print k}' | sort -u"
    [ "$output" = "179" ]
    tb-nm -s "$TMP/s.st" --sparsity 0.3 --per tensor --quiet -o "$TMP/t.st"
    # 65536 elements: keep 65536 - round(19660.8) = 45875
    [ "$(tb-inspect --tensor model.layers.0.self_attn.k_proj.weight "$TMP/t.st" | grep -v '^#' | count_kept)" -eq 45875 ]
    tb-nm -s "$TMP/s.st" --sparsity 0.3 --per layer --quiet -o "$TMP/l.st"
    # a layer holds 851,968 weights: keep 851968 - round(255590.4) = 596378
    for name in $(tb-inspect "$TMP/l.st" | awk '$1 ~ /^model.layers.4./ {print $1}'); do
        tb-inspect --tensor "$name" "$TMP/l.st" | grep -v '^#'
    done | count_kept >"$TMP/k"
    [ "$(cat "$TMP/k")" -eq 596378 ]
}

@test "wanda on the real Gram differs from magnitude; iterative lowers the joint error" {
    sel='model.layers.0.self_attn.*'
    tb-score -m "$TB_MODEL" --method magnitude --tensors "$sel" --quiet | tb-nm --pattern 2:4 --quiet -o "$TMP/mag.st"
    tb-score -m "$TB_MODEL" -f "$GOLDEN" --method wanda --tensors "$sel" --quiet -o "$TMP/w.st"
    tb-nm -s "$TMP/w.st" --pattern 2:4 --quiet -o "$TMP/wm.st"
    [ "$(dump_masks "$TMP/mag.st" | md5sum)" != "$(dump_masks "$TMP/wm.st" | md5sum)" ]
    run tb-nm -v -s "$TMP/w.st" --pattern 2:4 --solver iterative -m "$TB_MODEL" -f "$GOLDEN" -o "$TMP/it.st"
    [ "$status" -eq 0 ]
    [[ "$output" == *"joint error"* ]]
    a=$(echo "$output" | sed -n 's/.*joint error \([0-9.e+]*\) -> \([0-9.e+]*\).*/\1/p')
    b=$(echo "$output" | sed -n 's/.*joint error \([0-9.e+]*\) -> \([0-9.e+]*\).*/\2/p')
    awk -v a="$a" -v b="$b" 'BEGIN { exit !(b < a) }'
    [ "$(dump_masks "$TMP/it.st" | count_bad_groups 2 4)" -eq 0 ]
    # obs and normalized run on the golden statistics too
    tb-score -m "$TB_MODEL" -f "$GOLDEN" --method obs --tensors 'model.layers.0.*' --quiet -o "$TMP/obs.st"
    run tb-inspect --stats "$TMP/obs.st"
    [[ "$output" != *"NaN"* ]]
    [[ "$output" == *"metadata: source.model.layers.0.self_attn.v_proj.weight = gram.model.layers.0.self_attn.q_proj.input"* ]]
}

@test "tb-nm: dim not divisible by M is one line, exit 2, and no output file" {
    mkst "$TMP/s.st" '{"x":{"dtype":"F32","shape":[2,250],"data_offsets":[0,2000]}}' 2000
    run tb-nm -s "$TMP/s.st" --pattern 2:4 -o "$TMP/out.st"
    [ "$status" -eq 2 ]
    one_line_error tb-nm
    [ "$output" = "tb-nm: $TMP/s.st: tensor 'x': dim 1 (250) not divisible by M=4" ]
    [ ! -e "$TMP/out.st" ]
    [ "$(ls "$TMP")" = "s.st" ]
}

@test "tb-nm: NaN scores name tensor and index, nothing reaches stdout" {
    mkst "$TMP/s.st" '{"w":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}' 0
    printf "$F1$F2$F4$F5$F0$F1$FNAN$F2" >>"$TMP/s.st"
    run bash -c "tb-nm -s '$TMP/s.st' --pattern 2:4 >'$TMP/out' 2>'$TMP/err'"
    [ "$status" -eq 2 ]
    [ ! -s "$TMP/out" ]
    run cat "$TMP/err"
    one_line_error tb-nm
    [[ "$output" == *"tensor 'w': score at [1, 2] is NaN"* ]]
}

@test "tb-nm usage errors: N >= M, M > 16, both or neither of --pattern/--sparsity, iterative without data" {
    mkst "$TMP/s.st" '{"x":{"dtype":"F32","shape":[2,8],"data_offsets":[0,64]}}' 64
    for args in "--pattern 4:4" "--pattern 5:4" "--pattern 2:32" "--pattern 2:4 --sparsity 0.5" "" \
        "--pattern 2:4 --solver iterative" "--sparsity 0.5 --permute" "--pattern 2:4 --per layer" "--sparsity 1.5" \
        "--pattern 2:4 --permute-foldable" "--pattern 2:4 --permute --permute-foldable -m $TB_MODEL" \
        "--sparsity 0.5 --permute-foldable -m $TB_MODEL"; do
        run tb-nm -s "$TMP/s.st" $args -o "$TMP/o.st"
        [ "$status" -eq 1 ] || { echo "args '$args': status $status: $output"; return 1; }
        one_line_error tb-nm
    done
    run tb-nm -s "$TMP/s.st" --pattern 2:4 --permute-foldable -o "$TMP/o.st"
    [[ "$output" == *"--permute-foldable needs -m MODEL"* ]]
    run tb-nm -s "$TMP/s.st" --pattern 4:4 -o "$TMP/o.st"
    [[ "$output" == *"N=4 must satisfy 1 <= N < M=4"* ]]
    [ ! -e "$TMP/o.st" ]
}

@test "tb-nm refuses a file that is not scores" {
    tb-score -m "$TB_MODEL" --method magnitude --tensors 'model.layers.0.self_attn.q*' --quiet | tb-nm --pattern 2:4 --quiet -o "$TMP/m.st"
    run tb-nm -s "$TMP/m.st" --pattern 2:4 -o "$TMP/x.st"
    [ "$status" -eq 2 ]
    one_line_error tb-nm
    [[ "$output" == *"not a scores file (tensorbit.kind is 'mask')"* ]]
}

@test "tb-score errors: missing statistics, missing -f, no match, NaN weight" {
    if [ -f "$GOLDEN" ]; then
        run tb-score -m "$TB_MODEL" -f "$GOLDEN" --method obd --tensors 'model.layers.1.mlp.up*' -o "$TMP/o.st"
        [ "$status" -eq 2 ]
        one_line_error tb-score
        [[ "$output" == *"no tensor 'fisher.model.layers.1.mlp.up_proj.weight' (needed by obd)"* ]]
        run tb-score -m "$TB_MODEL" -f "$GOLDEN" --method wanda --tensors 'model.layers.0.mlp.up*' -o "$TMP/o.st"
        [ "$status" -eq 2 ]
        [[ "$output" == *"no tensor 'gram.model.layers.0.mlp.gate_proj.input' (needed by wanda"* ]]
        [ ! -e "$TMP/o.st" ]
    fi
    run tb-score -m "$TB_MODEL" --method obs -o "$TMP/o.st"
    [ "$status" -eq 1 ]
    one_line_error tb-score
    [[ "$output" == *"needs -f STATS"* ]]
    run tb-score -m "$TB_MODEL" --method magnitude --tensors 'nothing*' -o "$TMP/o.st"
    [ "$status" -eq 1 ]
    one_line_error tb-score
    run tb-score -m "$TB_MODEL" --method sparsegpt -o "$TMP/o.st"
    [ "$status" -eq 1 ]
    # a weight with a NaN: the score is named by tensor and index
    mkst "$TMP/w.safetensors" '{"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}' 0
    printf "$F1$F2$F4$FNAN$F0$F1$F5$F2" >>"$TMP/w.safetensors"
    run tb-score -m "$TMP/w.safetensors" --method magnitude -o "$TMP/o.st"
    [ "$status" -eq 2 ]
    one_line_error tb-score
    [[ "$output" == *"tensor 'model.layers.0.mlp.up_proj.weight': score at [0, 3] is nan"* ]]
    [ ! -e "$TMP/o.st" ]
}

@test "tb-score regex selection and metadata" {
    tb-score -m "$TB_MODEL" --method magnitude --tensors 're:layers\.(0|5)\.mlp\.(up|down)' --quiet -o "$TMP/s.st"
    run tb-inspect "$TMP/s.st"
    [[ "$output" == *"tensors: 4"* ]]
    [[ "$output" == *"metadata: tensorbit.kind = scores"* ]]
    [[ "$output" == *"metadata: method = magnitude"* ]]
    [[ "$output" == *"model.layers.5.mlp.up_proj.weight"*"F32"*"[768, 256]"* ]]
}
