#!/usr/bin/env python3
"""replicate_layers.py - a packed .tb model of L layers from the .tb of a
1-layer one, for speed benchmarks only: every layer's tensors are layer 0's
bytes under its own names (the 2:4 kept positions and values do not change
a GEMM's speed), the tensors outside the layers once.

    replicate_layers.py SRC.tb LAYERS OUTDIR [LAYERS_PER_SHARD]

writes OUTDIR/head.tb (embeddings, final norm, lm_head) and
OUTDIR/layers-<a>-<b>.tb (LAYERS_PER_SHARD layers each, default 4), each a
valid tb-pack shard (safetensors with the tb metadata, "tensorbit.tensors"
limited to the shard's own tensors). Then tb-merge -m <an L-layer checkpoint
of the same shapes> -o OUTDIR/model.tbm OUTDIR/*.tb.

Why: scoring, masking and packing a 32-layer 7B model on the GPU machine's
CPU takes ~8 minutes (bench_7b.sh: 120 s for 8 layers), over a device call;
copying one packed layer 32 times is ~10 s of disk writes, and several
shards let a model's load hash them in parallel (tb_tbm_open).
"""
import json
import os
import struct
import sys

PREFIX = "model.layers.0."


def read_tb(path):
    f = open(path, "rb")
    n = struct.unpack("<Q", f.read(8))[0]
    head = json.loads(f.read(n))
    return f, 8 + n, head


def write_tb(path, src, data_start, entries, meta):
    """entries: [(name, info, src_begin, src_end)] in output order"""
    header = {"__metadata__": meta}
    off = 0
    for name, info, b, e in entries:
        header[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [off, off + (e - b)]}
        off += e - b
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)  # the data section 8-byte aligned, as safetensors writers do
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(hj)))
        out.write(hj)
        for _, _, b, e in entries:
            src.seek(data_start + b)
            left = e - b
            while left:
                chunk = src.read(min(left, 64 << 20))
                if not chunk:
                    raise SystemExit(f"replicate_layers: {path}: source ended early")
                out.write(chunk)
                left -= len(chunk)
    os.replace(tmp, path)


def main():
    if len(sys.argv) not in (4, 5):
        sys.stderr.write(__doc__)
        sys.exit(1)
    src_path, layers, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    per = int(sys.argv[4]) if len(sys.argv) == 5 else 4
    src, data_start, head = read_tb(src_path)
    meta = head.pop("__metadata__")
    tensors_meta = json.loads(meta.get("tensorbit.tensors", "{}"))
    items = sorted(head.items(), key=lambda kv: kv[1]["data_offsets"][0])
    if any(k.startswith("model.layers.") and not k.startswith(PREFIX) for k, _ in items):
        sys.exit(f"replicate_layers: {src_path}: more than one layer (a 1-layer model's .tb is the source)")
    os.makedirs(outdir, exist_ok=True)

    def shard(path, names_of):
        entries, tmeta = [], {}
        for k, v in items:
            for name in names_of(k):
                b, e = v["data_offsets"]
                entries.append((name, v, b, e))
        for k, v in tensors_meta.items():
            for name in names_of(k):
                tmeta[name] = v
        m = dict(meta)
        m["tensorbit.tensors"] = json.dumps(tmeta, separators=(",", ":"))
        m["command"] = "bench/gpu/replicate_layers.py " + " ".join(sys.argv[1:])
        write_tb(path, src, data_start, entries, m)

    shard(os.path.join(outdir, "head.tb"), lambda k: [] if k.startswith(PREFIX) else [k])
    for a in range(0, layers, per):
        b = min(layers, a + per)
        shard(os.path.join(outdir, f"layers-{a}-{b - 1}.tb"),
              lambda k, a=a, b=b: [f"model.layers.{l}." + k[len(PREFIX):] for l in range(a, b)]
              if k.startswith(PREFIX) else [])


if __name__ == "__main__":
    main()
