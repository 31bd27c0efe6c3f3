#!/usr/bin/env python3
"""Independent numpy decoder of tb-pack's .tb shards (FORMATS.md), used by
tests/cli/pack.bats. Only the standard library and numpy: safetensors headers
are parsed by hand, BF16 kept as raw uint16 bits or widened exactly to f32.

  tb_pack_check.py check SHARD MASKS MODEL.safetensors
      every pruned weight decodes to the model's weight (permuted as the
      mask says) times the mask, bit for bit; prints "checked N"
  tb_pack_check.py error SHARD GRAM MODEL.safetensors
      for each pruned weight with a Gram matrix in GRAM, prints
      "NAME ||(W - W_hat) X|| / ||W X||", W_hat decoded and un-permuted, so the
      permutation handling of tb-pack's own report is checked too
"""
import json
import struct
import sys

import numpy as np

DT = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
      "U8": np.uint8, "I32": np.int32, "I64": np.int64}


def read(path):
    """(tensors as raw numpy arrays, metadata) of a safetensors file"""
    with open(path, "rb") as fp:
        n = struct.unpack("<Q", fp.read(8))[0]
        header = json.loads(fp.read(n))
        data = fp.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(data[b:e], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out, header.get("__metadata__", {})


def f32(a):
    if a.dtype == np.uint16:  # BF16 bits -> f32, exact
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def decode(S, name, t):
    """the stored (permuted) weight, in its stored dtype's bits"""
    rows, cols = t["shape"]
    if t["format"] == "masked":
        return S[name]
    n, m = map(int, t["pattern"].split(":"))
    b = int(np.ceil(np.log2(m)))
    bits = np.unpackbits(S[name + ".indices"], axis=1, bitorder="little")
    k = cols // m * n
    assert not bits[:, k * b:].any(), name + ": padding bits"
    idx = (bits[:, :k * b].reshape(rows, k, b) * (1 << np.arange(b))).sum(axis=2)
    assert (np.diff(idx.reshape(rows, -1, n), axis=2) > 0).all(), name + ": not ascending"
    assert (idx < m).all(), name + ": out of range"
    col = (np.arange(k) // n * m)[None, :] + idx
    values = S[name + ".values"]
    dense = np.zeros((rows, cols), values.dtype)
    np.put_along_axis(dense, col, values, axis=1)
    return dense


def check(shard, masks, model):
    W, _ = read(model)
    M, _ = read(masks)
    S, meta = read(shard)
    info = json.loads(meta["tensorbit.tensors"])
    for name, t in info.items():
        cols = t["shape"][1]
        w = W[name]
        keep = np.unpackbits(M[name], axis=1, bitorder="little")[:, :cols].astype(bool)
        if t["permuted"]:
            assert (S[name + ".perm"] == M[name + ".perm"]).all(), name + ": perm"
            w = w[:, S[name + ".perm"]]
        got = decode(S, name, t)
        assert (got == np.where(keep, w, 0)).all(), name + ": values"
        if t["format"] == "masked":
            assert (S[name + ".mask"] == M[name]).all(), name + ": mask"
    print("checked", len(info))


def gram_module(name):
    mod = name[: -len(".weight")]
    for a, b in (("k_proj", "q_proj"), ("v_proj", "q_proj"), ("up_proj", "gate_proj")):
        if mod.endswith(a):
            mod = mod[: -len(a)] + b
    return "gram." + mod + ".input"


def error(shard, gram, model):
    W, _ = read(model)
    G, _ = read(gram)
    S, meta = read(shard)
    for name, t in sorted(json.loads(meta["tensorbit.tensors"]).items()):
        if gram_module(name) not in G:
            continue
        g = G[gram_module(name)].astype(np.float64)
        w = f32(W[name]).astype(np.float64)
        w_hat = f32(decode(S, name, t)).astype(np.float64)
        if t["permuted"]:
            un = np.empty_like(w_hat)
            un[:, S[name + ".perm"]] = w_hat
            w_hat = un
        d = w - w_hat
        print(name, "%.4f" % np.sqrt(np.einsum("ri,ij,rj->", d, g, d) / np.einsum("ri,ij,rj->", w, g, w)))


if __name__ == "__main__":
    {"check": check, "error": error}[sys.argv[1]](*sys.argv[2:])
