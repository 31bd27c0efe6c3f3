#!/usr/bin/env python3
"""Check a tb-synth checkpoint with independent readers (numpy, tokenizers).

    python3 tests/py/synth_check.py DIR [--bin build/bin]

- every shard parsed by hand (header, offsets), BF16/F16/F32 values decoded
  with numpy; the index's weight_map names exactly the tensors of the shards
  and total_size is their byte count;
- each tensor has the shape the config implies; linear weights and the
  embedding have mean ~0 and std initializer_range (within 3%, n >= 16384),
  the pad_token_id row of the embedding is zero, norms are exactly 1;
- with the `tokenizers` package: tokenizer.json loads, has a token for every
  id below vocab_size, and tb-tokenize encodes a mixed text to the same ids.

Exit 0 ok, 1 mismatch, 77 numpy missing.
"""
import argparse
import json
import os
import struct
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    print("synth_check: numpy missing", file=sys.stderr)
    sys.exit(77)


def fail(msg):
    print("synth_check: " + msg, file=sys.stderr)
    sys.exit(1)


def read_shard(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, t in head.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        buf = data[b:e]
        if t["dtype"] == "BF16":
            v = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] == "F16":
            v = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif t["dtype"] == "F32":
            v = np.frombuffer(buf, dtype="<f4")
        else:
            fail(f"{path}: {name}: dtype {t['dtype']}")
        out[name] = (v.reshape(t["shape"]), e - b)
    return out


def expected_shapes(c):
    h, v, im = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    nh = c["num_attention_heads"]
    kvh = c.get("num_key_value_heads") or nh
    hd = c.get("head_dim") or h // nh
    q, kv = nh * hd, kvh * hd
    s = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not c.get("tie_word_embeddings", False):
        s["lm_head.weight"] = [v, h]
    bias = c.get("attention_bias", c["model_type"] == "qwen2")
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        s.update({p + "self_attn.q_proj.weight": [q, h], p + "self_attn.k_proj.weight": [kv, h],
                  p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, q],
                  p + "mlp.gate_proj.weight": [im, h], p + "mlp.up_proj.weight": [im, h],
                  p + "mlp.down_proj.weight": [h, im], p + "input_layernorm.weight": [h],
                  p + "post_attention_layernorm.weight": [h]})
        if bias:
            s.update({p + "self_attn.q_proj.bias": [q], p + "self_attn.k_proj.bias": [kv],
                      p + "self_attn.v_proj.bias": [kv]})
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--bin", default="build/bin")
    a = ap.parse_args()
    c = json.load(open(os.path.join(a.dir, "config.json")))
    idx_path = os.path.join(a.dir, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(idx_path):
        idx = json.load(open(idx_path))
        total = 0
        for f in sorted(set(idx["weight_map"].values())):
            sh = read_shard(os.path.join(a.dir, f))
            for name, (arr, nb) in sh.items():
                if idx["weight_map"].get(name) != f:
                    fail(f"{name}: in {f}, index says {idx['weight_map'].get(name)}")
                total += nb
            tensors.update(sh)
        if set(idx["weight_map"]) != set(tensors):
            fail("index and shards name different tensors")
        if idx["metadata"]["total_size"] != total:
            fail(f"total_size {idx['metadata']['total_size']} != {total}")
    else:
        tensors = read_shard(os.path.join(a.dir, "model.safetensors"))
    exp = expected_shapes(c)
    if set(exp) != set(tensors):
        fail(f"tensors differ from the config's: {sorted(set(exp) ^ set(tensors))[:5]}")
    std = c.get("initializer_range", 0.02)
    pad = c.get("pad_token_id")
    for name, (arr, _) in tensors.items():
        if list(arr.shape) != exp[name]:
            fail(f"{name}: shape {list(arr.shape)}, expected {exp[name]}")
        x = arr.astype(np.float64)
        if name.endswith("norm.weight"):
            if not np.all(x == 1.0):
                fail(f"{name}: not all ones")
        elif name.endswith(".bias"):
            if not np.all(x == 0.0):
                fail(f"{name}: not all zeros")
        else:
            if name == "model.embed_tokens.weight" and pad is not None:
                if not np.all(x[pad] == 0):
                    fail(f"embedding row {pad} (pad_token_id) is not zero")
                x = np.delete(x, pad, axis=0)
            if x.size >= 16384:
                m, s = x.mean(), x.std()
                if abs(s / std - 1) > 0.03 or abs(m) > 5 * std / np.sqrt(x.size):
                    fail(f"{name}: mean {m:.3g} std {s:.4g}, expected 0 and {std}")
    print(f"synth_check: {len(tensors)} tensors ok (std {std})")
    try:
        import tokenizers
    except ImportError:
        print("synth_check: tokenizers missing, tokenizer not checked")
        return
    tk = tokenizers.Tokenizer.from_file(os.path.join(a.dir, "tokenizer.json"))
    v = c["vocab_size"]
    missing = [i for i in range(v) if tk.id_to_token(i) is None]
    if missing:
        fail(f"tokenizer: {len(missing)} ids without a token, first {missing[0]}")
    if tk.id_to_token(v) is not None:
        fail(f"tokenizer: id {v} beyond vocab_size has a token")
    texts = ["Hello world, the café costs 3€.", "  tabs\tand\nnewlines  ", "日本語 テキスト 🙂", ""]
    r = subprocess.run([os.path.join(a.bin, "tb-tokenize"), "-m", a.dir, "--jsonl", "--quiet"],
                       input="\n".join(json.dumps(t) for t in texts) + "\n", capture_output=True, text=True)
    if r.returncode:
        fail("tb-tokenize: " + r.stderr.strip())
    ours = [json.loads(line) for line in r.stdout.splitlines()]
    theirs = [tk.encode(t, add_special_tokens=False).ids for t in texts]
    if ours != theirs:
        fail(f"tokenizer: tb-tokenize {ours} != tokenizers {theirs}")
    for t, ids in zip(texts, theirs):
        if tk.decode(ids) != t:
            fail(f"tokenizer: round trip of {t!r} gave {tk.decode(ids)!r}")
    print(f"synth_check: tokenizer covers {v} ids, encodes as tokenizers does")


main()
