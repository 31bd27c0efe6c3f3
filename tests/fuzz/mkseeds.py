#!/usr/bin/env python3
"""mkseeds.py - (re)build the fuzz seed corpora in tests/fuzz/corpus/ from the
shipped files in tests/data and small hand-built examples of every format.

Run from the repository root: python3 tests/fuzz/mkseeds.py. Only the standard
library is used; outputs are deterministic, so a rerun changes nothing. The
shard tests/fuzz/layers.tb is what fuzz_tbm puts beside the fuzzed index.
"""
import hashlib, json, os, struct

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(ROOT, "..", "data")
CORPUS = os.path.join(ROOT, "corpus")


def put(harness, name, data):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def st(tensors, meta=None):
    """safetensors bytes: tensors is a list of (name, dtype, shape, raw bytes)."""
    hdr, off, blob = {}, 0, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blob += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


f32 = lambda xs: struct.pack("<%df" % len(xs), *xs)
f64 = lambda xs: struct.pack("<%dd" % len(xs), *xs)
i32 = lambda xs: struct.pack("<%di" % len(xs), *xs)
i64 = lambda xs: struct.pack("<%dq" % len(xs), *xs)
bf16 = lambda xs: b"".join(struct.pack("<f", x)[2:] for x in xs)


def pack_nm(w, rows, cols, keep, n=2, m=4):
    """values and indices of a [rows, cols] weight under keep(r, c) (N:M layout of tb_pack.h)."""
    bits = max(1, (m - 1).bit_length())
    vpr = cols // m * n
    irb = (vpr * bits + 7) // 8
    vals, idx = [], b""
    for r in range(rows):
        row = bytearray(irb)
        k = 0
        for g in range(0, cols, m):
            kept = [j for j in range(m) if keep(r, g + j)]
            pad = [j for j in range(m) if j not in kept][: n - len(kept)]
            for j in sorted(kept + pad):
                vals.append(w[r * cols + g + j] if j in kept else 0.0)
                pos = k * bits
                v = j << (pos % 8)
                row[pos // 8] |= v & 0xFF
                if v >> 8:
                    row[pos // 8 + 1] |= v >> 8
                k += 1
        idx += bytes(row)
    return vals, idx, [rows, vpr], [rows, irb]


def entry(fmt, shape, pattern, permuted=False, dtype="F32"):
    return {"format": fmt, "dtype": dtype, "shape": shape, "pattern": pattern, "k_dim": 1,
            "permuted": permuted, "compensation": "none", "mask": "given"}


def tb_files():
    w = [float(i % 7 - 3) for i in range(2 * 8)]
    vals, idx, vs, ish = pack_nm(w, 2, 8, lambda r, c: c % 4 < 2)
    up = "model.layers.0.mlp.up_proj.weight"
    meta = {"tensorbit.kind": "tb", "format_version": "1",
            "tensorbit.tensors": json.dumps({up: entry("nm", [2, 8], "2:4")}, separators=(",", ":"))}
    norm = ("model.norm.weight", "F32", [8], f32([1.0] * 8))
    shard = st([(up + ".values", "F32", vs, f32(vals)), (up + ".indices", "U8", ish, idx), norm], meta)
    out = {"nm24": shard}
    # 4:8 bf16, permuted
    w2 = [float((i * 5) % 11 - 5) for i in range(2 * 16)]
    perm = [3, 1, 2, 0, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12]
    v2, i2, vs2, is2 = pack_nm(w2, 2, 16, lambda r, c: (c + r) % 8 < 4, 4, 8)
    q = "model.layers.0.self_attn.q_proj.weight"
    meta2 = {"tensorbit.kind": "tb", "format_version": "1",
             "tensorbit.tensors": json.dumps({q: entry("nm", [2, 16], "4:8", True, "BF16")}, separators=(",", ":"))}
    out["nm48-perm-bf16"] = st([(q + ".values", "BF16", vs2, bf16(v2)), (q + ".indices", "U8", is2, i2),
                                (q + ".perm", "I32", [16], i32(perm))], meta2)
    # unstructured (masked), permuted, and a 15:16 pattern
    d = "model.layers.1.mlp.down_proj.weight"
    dense = [0.0 if (i % 3) == 0 else float(i) for i in range(3 * 10)]
    mask = b""
    for r in range(3):
        bitsrow = 0
        for c in range(10):
            if dense[r * 10 + c] != 0.0:
                bitsrow |= 1 << c
        mask += struct.pack("<H", bitsrow)
    meta3 = {"tensorbit.kind": "tb", "format_version": "1",
             "tensorbit.tensors": json.dumps({d: entry("masked", [3, 10], "unstructured", True)}, separators=(",", ":"))}
    out["masked-perm"] = st([(d, "F32", [3, 10], f32(dense)), (d + ".mask", "U8", [3, 2], mask),
                             (d + ".perm", "I32", [10], i32([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]))], meta3)
    w4 = [float(i) for i in range(16)]
    v4, i4, vs4, is4 = pack_nm(w4, 1, 16, lambda r, c: c != 5, 15, 16)
    meta4 = {"tensorbit.kind": "tb", "format_version": "1",
             "tensorbit.tensors": json.dumps({up: entry("nm", [1, 16], "15:16")}, separators=(",", ":"))}
    out["nm1516"] = st([(up + ".values", "F32", vs4, f32(v4)), (up + ".indices", "U8", is4, i4)], meta4)
    # a shard with no pruned weight (tb-pack writes one for layers it copies)
    out["no-pruned"] = st([norm], {"tensorbit.kind": "tb", "format_version": "1", "tensorbit.tensors": "{}"})
    return out


def main():
    # ---- safetensors: every dtype, metadata, scalars, zero-element tensors
    dts = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
           "F8_E4M3": 1, "F8_E5M2": 1}
    raw = bytes(range(7, 7 + 24))
    put("safetensors", "all-dtypes", st([("t." + k, k, [24 // v], raw[: 24 // v * v]) for k, v in dts.items()],
                                        {"tensorbit.kind": "test", "k": "v"}))
    put("safetensors", "scalar-and-empty", st([("s", "F32", [], f32([1.5])), ("e", "F32", [0, 4], b""),
                                               ("input_ids", "I32", [2, 3], i32([1, 2, 3, 4, 5, 6]))]))
    put("safetensors", "ids-i64", st([("input_ids", "I64", [1, 4], i64([0, 1, 2, 3]))], {"tensorbit.kind": "tokens"}))
    put("safetensors", "empty", st([]))
    with open(os.path.join(DATA, "tiny-llama-6m", "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = f.read(n)
    put("safetensors", "shipped-model-header-only", struct.pack("<Q", n) + hdr)  # truncated data: refused

    # ---- config.json
    for model in ("tiny-llama-6m", "tiny-mistral-10m"):
        with open(os.path.join(DATA, model, "config.json"), "rb") as f:
            put("config", model, f.read())
    put("config", "qwen2", json.dumps({"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
                                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                       "vocab_size": 1000, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"},
                                       "use_sliding_window": False, "sliding_window": 4096,
                                       "bos_token_id": [1, 2], "eos_token_id": [2, 3], "tie_word_embeddings": True}))

    # ---- tokenizer.json: the shipped ones, and small cuts of each family
    for model in ("tiny-llama-6m", "tiny-mistral-10m"):
        with open(os.path.join(DATA, model, "tokenizer.json"), "rb") as f:
            text = f.read()
        tok = json.loads(text)
        small = dict(tok)
        small["model"] = dict(tok["model"])
        vocab = tok["model"]["vocab"]
        keep = dict(sorted(vocab.items(), key=lambda kv: kv[1])[:300])
        small["model"]["vocab"] = keep
        merges = []
        for mg in tok["model"]["merges"]:
            a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
            if a in keep and b in keep and a + b in keep:
                merges.append(mg)
        small["model"]["merges"] = merges
        small["added_tokens"] = [t for t in tok.get("added_tokens", []) if t["id"] < 300]
        put("tokenizer_load", model + "-small", json.dumps(small, ensure_ascii=False))
        if model == "tiny-llama-6m":
            put("tokenizer_load", model, text)

    # ---- tokenizer codec: mode byte + text or ids
    with open(os.path.join(DATA, "wikitext2-test-head.txt"), "rb") as f:
        wiki = f.read()[:600]
    for tok in (0, 1):
        put("tokenizer_codec", "encode-wiki-%d" % tok, bytes([tok]) + wiki)
        put("tokenizer_codec", "encode-mixed-%d" % tok,
            bytes([tok | 8]) + "héllo\u2581 wörld <s></s> 12345 \r\n\t 日本語 🙂 'll 's".encode())
        put("tokenizer_codec", "decode-ids-%d" % tok, bytes([tok | 2]) + i32(list(range(0, 400, 3))))
        put("tokenizer_codec", "decode-mod-%d" % tok, bytes([tok | 4]) + i32([1, 2, 3, 260, 261, 3000, 100000]))
    for model in ("tiny-llama-6m", "tiny-mistral-10m"):
        with open(os.path.join(DATA, model, "tokenizer-cases.json"), "rb") as f:
            cases = json.load(f)
        items = cases if isinstance(cases, list) else cases.get("cases", [])
        for i, c in enumerate(items[:8]):
            t = c.get("text") if isinstance(c, dict) else None
            if isinstance(t, str):
                put("tokenizer_codec", "case-%s-%d" % (model, i), bytes([0 if "llama" in model else 1]) + t.encode())

    # ---- sharded index
    idx = {"metadata": {"total_size": 28},
           "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                          "model.norm.weight": "model-00001-of-00002.safetensors",
                          "lm_head.weight": "model-00002-of-00002.safetensors"}}
    put("index", "two-shards", json.dumps(idx, indent=2))
    put("index", "one-shard", json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}))

    # ---- .tb shards
    tbs = tb_files()
    for name, data in tbs.items():
        put("tb", name, data)

    # ---- .tbm: indexes of tests/fuzz/layers.tb (the nm24 shard)
    shard = tbs["nm24"]
    with open(os.path.join(ROOT, "layers.tb"), "wb") as f:
        f.write(shard)
    n = struct.unpack("<Q", shard[:8])[0]
    hdr = json.loads(shard[8:8 + n])
    up = "model.layers.0.mlp.up_proj.weight"
    part = lambda t: {"tensor": t, "offsets": [8 + n + hdr[t]["data_offsets"][0], 8 + n + hdr[t]["data_offsets"][1]]}
    with open(os.path.join(DATA, "tiny-llama-6m", "config.json")) as f:
        cfg = json.load(f)
    tbm = {"format": "tensorbit.tbm", "format_version": 1, "tensorbit_version": "seed", "config": cfg,
           "files": {}, "shards": [{"file": "layers.tb", "bytes": len(shard), "sha256": hashlib.sha256(shard).hexdigest()}],
           "tensors": {up: {"shard": 0, "kind": "nm", "dtype": "F32", "shape": [2, 8], "pattern": "2:4",
                            "permuted": False, "parts": {"values": part(up + ".values"), "indices": part(up + ".indices")},
                            "compensation": "none"},
                       "model.norm.weight": {"shard": 0, "kind": "dense", "dtype": "F32", "shape": [8],
                                             "parts": {"data": part("model.norm.weight")}}},
           "recipe": {"merge_command": "tb-merge", "stages": []}}
    put("tbm", "whole", json.dumps(tbm, indent=2))
    tbm["base"] = "sub"
    put("tbm", "partial-base-inside", json.dumps(tbm, indent=2))

    # ---- .fisher
    g = [4.0, 1.0, 0.5, 0.0, 1.0, 3.0, 0.2, 0.1, 0.5, 0.2, 2.0, 0.3, 0.0, 0.1, 0.3, 1.0]
    fmeta = {"tensorbit.kind": "fisher", "windows": "2", "seq_len": "8", "tokens": "16"}
    m = "model.layers.0.self_attn.q_proj"
    put("fisher", "gram-fisher-grad", st([
        ("gram.%s.input" % m, "F64", [4, 4], f64(g)), ("gram.%s.count" % m, "I64", [1], i64([16])),
        ("fisher.%s.weight" % m, "F32", [2, 4], f32([0.1 * i for i in range(8)])),
        ("grad.%s.weight" % m, "BF16", [2, 2, 4], bf16([0.5 - 0.1 * i for i in range(16)]))], fmeta))
    put("fisher", "gram-f32-no-count", st([("gram.model.layers.0.mlp.down_proj.input", "F32", [2, 2],
                                            f32([1.0, 0.5, 0.5, 1.0]))], fmeta))


if __name__ == "__main__":
    main()
