#!/usr/bin/env python3
"""Independent check of tb-export's output (numpy + safetensors; no tensorbit
code). It reads the files by their documented layouts only: the source HF
checkpoint, the .tbm index and its .tb shards (FORMATS.md), the dense export
and, optionally, the compressed-tensors export (FORMATS.md, "tb-export
formats", after compressed-tensors 0.14.0.1).

Dense export (--dense DIR):
  - config.json equals the .tbm's config (dtype keys aside with --dtype), the
    side files equal the .tbm's, every safetensors file opens with the official
    package and carries metadata format=pt, a sharded index maps every tensor;
  - the tensor names, shapes and dtypes are the source model's;
  - tensors not pruned are bit-identical to the source;
  - pruned weights are bit-identical to an independent numpy decode of the .tb
    shard (values + LSB-first indices, or masked dense; permutation undone);
  - the acceptance check: every *proj.weight of every layer has at most N
    nonzeros in each group of M consecutive input channels (--nm N:M, else each
    weight's own pattern). A weight pruned under a channel permutation is
    checked in its stored (permuted) column order, since undoing the
    permutation is what keeps the function, and that order is said.
  - folded permutations (FORMATS.md): mlp.down_proj's permutation moves into
    gate/up_proj's rows, self_attn.o_proj's into v_proj's rows when it moves
    channels only within heads and alike for the heads sharing a KV head; the
    consumer is then expected in its stored order (and checked N:M in the
    model's order: the export's), the producers with their rows reordered.
Compressed export (--compressed DIR):
  - quantization_config / sparsity_config as the spec gives it;
  - decompressing by the spec (numpy) gives exactly the dense export, and every
    other tensor is bit-identical to it; sparse-24-bitmask groups hold exactly
    two bits;
  - with compressed-tensors <= 0.14 importable (it needs torch), its own
    decompressor (ModelCompressor ... sparsity_compressor.decompress) must give
    the dense export too (--ct-library forces it: missing is then a failure).
--transformers: AutoModelForCausalLM.from_pretrained on the export(s) must load
without missing or unexpected keys and hold exactly the dense export's weights
(sparse-bitmask excepted: compressed-tensors cannot build its meta-device model).
--ppl TEXT: transformers' fp32 perplexity of the dense export by tb-run's protocol
(--seq-len, --max-windows), printed as "transformers X ppl: P" for comparison with
`tb-run -m MODEL.tbm --ppl TEXT` (needs transformers >= 5 for configs that keep
rope_theta under rope_parameters, as the bundled models do).

usage: export_check.py --tbm MODEL.tbm --source SRC_DIR --dense DIR
                       [--compressed DIR] [--nm N:M] [--dtype source|bf16|f16|f32]
                       [--ct-library] [--transformers] [--ppl TEXT]
exit 0 when every check passes; prints one "ok:" line per check group."""
import argparse
import hashlib
import json
import mmap
import os
import struct
import sys

import numpy as np
from safetensors import safe_open

RAW = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.uint8,
       "F8_E4M3": np.uint8, "F8_E5M2": np.uint8}
BITS = {"F64": np.uint64, "F32": np.uint32, "F16": np.uint16, "BF16": np.uint16}
SIGN = {"F64": 0x7FFFFFFFFFFFFFFF, "F32": 0x7FFFFFFF, "F16": 0x7FFF, "BF16": 0x7FFF}
TORCH_NAME = {"bf16": ("BF16", "bfloat16"), "f16": ("F16", "float16"), "f32": ("F32", "float32")}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


class StFile:
    """A safetensors file read by its layout (8-byte LE header length, JSON
    header, data); arrays are views of the mapping with the raw element type
    (BF16 as uint16)."""

    def __init__(self, path):
        self.path = path
        self.fp = open(path, "rb")
        self.mm = mmap.mmap(self.fp.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(path) else b""
        (n,) = struct.unpack("<Q", self.mm[:8])
        self.header = json.loads(bytes(self.mm[8:8 + n]))
        self.meta = self.header.pop("__metadata__", None) or {}
        self.base = 8 + n

    def names(self):
        return list(self.header)

    def info(self, name):
        h = self.header[name]
        return h["dtype"], tuple(h["shape"])

    def raw(self, name):
        h = self.header[name]
        b, e = h["data_offsets"]
        a = np.frombuffer(self.mm, dtype=np.uint8, count=e - b, offset=self.base + b)
        return a.view(RAW[h["dtype"]]).reshape(h["shape"])


def open_dir(d):
    """name -> (StFile) for a checkpoint directory (single file or index)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        wm = json.load(open(idx))["weight_map"]
        files = {f: StFile(os.path.join(d, f)) for f in sorted(set(wm.values()))}
        out = {}
        for f in files.values():
            for nm in f.names():
                if wm.get(nm) != os.path.basename(f.path):
                    fail(f"{idx}: '{nm}' is in {os.path.basename(f.path)}, the index says {wm.get(nm)}")
                out[nm] = f
        if set(out) != set(wm):
            fail(f"{idx}: weight_map and the files' tensors differ: {sorted(set(wm) ^ set(out))[:5]}")
        return out, list(files.values()), json.load(open(idx))
    f = StFile(os.path.join(d, "model.safetensors"))
    return {nm: f for nm in f.names()}, [f], None


def nonzero(a, dt):
    if dt in BITS:
        return (a.view(BITS[dt]) & BITS[dt](SIGN[dt])) != 0
    return a != 0


def to_f32(a, dt):
    if dt == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def as_dtype(a, src_dt, dst_dt):
    """src_dt raw elements converted as tb-export --dtype does: through f32, round to nearest even."""
    f = to_f32(a, src_dt)
    if dst_dt == "F32":
        return f
    if dst_dt == "F16":
        return f.astype(np.float16)
    u = f.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def check_safetensors_official(files):
    for f in files:
        with safe_open(f.path, framework="numpy") as g:
            if sorted(g.keys()) != sorted(f.names()):
                fail(f"{f.path}: the official reader sees other tensors")
            if (g.metadata() or {}).get("format") != "pt":
                fail(f"{f.path}: metadata format is not 'pt' (transformers refuses it)")


def decode_tb(entry, tbm_dir, shards):
    """The dense [rows, cols] of a pruned weight in the model's column order,
    as raw elements of its dtype, from its .tb shard."""
    shard = shards[entry["shard"]]
    f = shard
    parts = entry["parts"]
    rows, cols = entry["shape"]
    if entry["kind"] == "nm":
        n, m = map(int, entry["pattern"].split(":"))
        vals = f.raw(parts["values"]["tensor"])
        idx = f.raw(parts["indices"]["tensor"])
        b = (m - 1).bit_length()
        vpr = cols // m * n
        bits = np.unpackbits(idx, axis=1, bitorder="little")[:, :vpr * b].reshape(rows, vpr, b).astype(np.int64)
        pos = (bits << np.arange(b)).sum(axis=2)
        col = (np.arange(vpr) // n * m)[None, :] + pos
        dense = np.zeros((rows, cols), dtype=vals.dtype)
        dense[np.arange(rows)[:, None], col] = vals
    else:
        dense = np.array(f.raw(parts["data"]["tensor"]))
    if "perm" in parts:
        perm = f.raw(parts["perm"]["tensor"]).astype(np.int64)
        model = np.empty_like(dense)
        model[:, perm] = dense  # stored column j is model input channel perm[j]
        return model, perm
    return dense, None


def fold_plan(tbm, tbm_dir, shards):
    """{consumer: stored-order perm, producer: row order} for the permutations
    the export folds (FORMATS.md, "Folded permutations"), derived here from
    the .tbm alone."""
    cfg = tbm["config"]
    names = set(tbm["tensors"])
    plan = {}
    for nm, entry in tbm["tensors"].items():
        if entry.get("kind") == "dense" or not entry.get("permuted"):
            continue
        _, perm = decode_tb(entry, tbm_dir, shards)
        if nm.endswith("mlp.down_proj.weight"):
            pre = nm[: -len("down_proj.weight")]
            prods, rows = [pre + "gate_proj", pre + "up_proj"], perm
        elif nm.endswith("self_attn.o_proj.weight"):
            pre = nm[: -len("o_proj.weight")]
            nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
            hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
            within = perm.reshape(nh, hd) - (np.arange(nh) * hd)[:, None]  # each head's channel order
            if (within < 0).any() or (within >= hd).any():
                continue
            g = within.reshape(nkv, nh // nkv, hd)
            if (g != g[:, :1, :]).any():  # the heads sharing a KV head must move alike
                continue
            prods, rows = [pre + "v_proj"], (g[:, 0, :] + (np.arange(nkv) * hd)[:, None]).reshape(-1)
        else:
            continue
        targets = [p + s for p in prods for s in (".weight", ".bias") if p + s in names]
        if not all(p + ".weight" in names for p in prods) or any(t in plan for t in targets):
            continue
        plan[nm] = ("cols", perm)
        for t in targets:
            plan[t] = ("rows", rows)
    return plan


def folded(w, how):
    """w (model order) as the export writes it under a fold_plan entry"""
    if how is None:
        return w
    kind, p = how
    return np.ascontiguousarray(w[:, p] if kind == "cols" else w[p])


def nm_violations(w, dt, n, m):
    nz = nonzero(w, dt)
    rows, cols = nz.shape
    if cols % m:
        return -1
    return int((nz.reshape(rows, cols // m, m).sum(axis=2) > n).sum())


def check_dense(a, tbm, src_dir, dense_dir):
    tbm_dir = os.path.dirname(os.path.abspath(a.tbm))
    cfg = json.load(open(os.path.join(dense_dir, "config.json")))
    want = dict(tbm["config"])
    if a.dtype != "source":
        for k in ("torch_dtype", "dtype"):
            if k in want or (k == "torch_dtype" and "dtype" not in want):
                want[k] = TORCH_NAME[a.dtype][1]
    if cfg != want:
        fail(f"{dense_dir}/config.json differs from the .tbm's config: "
             f"{sorted(k for k in set(cfg) | set(want) if cfg.get(k) != want.get(k))}")
    for name, info in tbm.get("files", {}).items():
        data = open(os.path.join(dense_dir, name), "rb").read()
        if data != open(os.path.join(tbm_dir, name), "rb").read():
            fail(f"{dense_dir}/{name} differs from the .tbm's copy")
        if hashlib.sha256(data).hexdigest() != info.get("sha256"):
            fail(f"{dense_dir}/{name}: SHA-256 is not the .tbm's")
    print(f"ok: config.json and {len(tbm.get('files', {}))} side files")

    src, _, _ = open_dir(src_dir)
    out, files, index = open_dir(dense_dir)
    check_safetensors_official(files)
    if index is not None:
        total = sum(int(np.prod(f.info(nm)[1], dtype=np.int64)) * np.dtype(RAW[f.info(nm)[0]]).itemsize
                    for nm, f in out.items())
        if index.get("metadata", {}).get("total_size") != total:
            fail(f"index total_size {index.get('metadata', {}).get('total_size')} != {total}")
    if set(out) != set(src):
        fail(f"tensor names differ from the source: {sorted(set(out) ^ set(src))[:6]}")
    shards = [StFile(os.path.join(tbm_dir, s["file"])) for s in tbm["shards"]]
    plan = fold_plan(tbm, tbm_dir, shards)
    n_same = n_pruned = 0
    for nm in sorted(set(out) & set(src)):
        sdt, sshape = src[nm].info(nm)
        odt, oshape = out[nm].info(nm)
        want_dt = TORCH_NAME[a.dtype][0] if a.dtype != "source" and sdt in ("F32", "F16", "BF16", "F64") else sdt
        if oshape != sshape or odt != want_dt:
            fail(f"{nm}: {odt} {list(oshape)}, the source is {sdt} {list(sshape)} (want {want_dt})")
            continue
        # a partial .tbm (tb-merge --partial) takes the tensors in no shard from its base, the source
        entry = tbm["tensors"].get(nm, {"kind": "dense"})
        if entry["kind"] == "dense":
            want = src[nm].raw(nm) if odt == sdt else as_dtype(src[nm].raw(nm), sdt, odt)
            want = folded(want, plan.get(nm))
            if not same_bits(out[nm].raw(nm), want):
                fail(f"{nm}: not pruned, but not bit-identical to the source" + ("" if odt == sdt else f" in {odt}")
                     + (" with its rows reordered" if nm in plan else ""))
            n_same += 1
            continue
        n_pruned += 1
        ref, _ = decode_tb(entry, tbm_dir, shards)
        ref = folded(ref, plan.get(nm))
        got = out[nm].raw(nm)
        if odt != sdt:
            ref = as_dtype(ref, sdt, odt)
        if not same_bits(got, ref):
            bad = np.argwhere(got != ref)
            fail(f"{nm}: differs from the .tb decode at {len(bad)} places, first {bad[0].tolist()}")
        if (nonzero(got, odt) & ~nonzero(ref, odt)).any():
            fail(f"{nm}: nonzero where the .tb has none")
    conv = "" if a.dtype == "source" else f" (after conversion to {TORCH_NAME[a.dtype][0]})"
    n_fold = sum(1 for k, _ in plan.values() if k == "cols")
    fold = f"; {n_fold} permutations folded into the layer before" if n_fold else ""
    print(f"ok: {len(out)} tensors: names, shapes, dtypes; {n_same} not pruned bit-identical to the source{conv}; "
          f"{n_pruned} pruned equal to the .tb decode{fold}")

    # the acceptance check of the issue
    n_checked = 0
    for nm in sorted(out):
        if not (nm.endswith("proj.weight") and ".layers." in nm):
            continue
        entry = tbm["tensors"].get(nm, {})
        pat = a.nm or (entry.get("pattern") if entry.get("kind") == "nm" else None)
        if not pat:
            if entry.get("kind") == "dense":
                fail(f"{nm}: not pruned (--nm not given, so no pattern to check it against)")
            continue
        n, m = map(int, pat.split(":"))
        w = out[nm].raw(nm)
        where = "model"
        if entry.get("permuted") and plan.get(nm, ("",))[0] != "cols":  # not folded: stored order
            _, perm = decode_tb(entry, tbm_dir, shards)
            w = w[:, perm]
            where = "stored (permuted)"
        bad = nm_violations(w, out[nm].info(nm)[0], n, m)
        if bad:
            fail(f"{nm}: {bad} groups of {m} in the {where} column order keep more than {n}"
                 if bad > 0 else f"{nm}: {w.shape[1]} columns not divisible by {m}")
        else:
            n_checked += 1
            if where != "model":
                print(f"note: {nm} is {pat} in its stored (permuted) column order; the export undoes the "
                      f"permutation, so its groups are {pat} only under that permutation")
    print(f"ok: {n_checked} *proj.weight tensors have at most N nonzeros in every group of M")
    return out


def ct_decompress_numpy(cdir, fmt, dense):
    """Decompress by the spec; compare with the dense export."""
    out, files, _ = open_dir(cdir)
    check_safetensors_official(files)
    mods = sorted({nm.rsplit(".", 1)[0] for nm in out if nm.endswith(".bitmask")})
    n_cmp = 0
    for mod in mods:
        f = out[mod + ".bitmask"]
        dt, _ = out[mod + ".compressed"].info(mod + ".compressed")
        shape_t = out[mod + ".shape"].raw(mod + ".shape")
        if shape_t.dtype != np.int64:
            fail(f"{mod}.shape is not I64")
        rows, cols = (int(x) for x in shape_t.reshape(-1))
        want_shape = (2, 1) if fmt == "sparse-24-bitmask" else (2,)
        if shape_t.shape != want_shape:
            fail(f"{mod}.shape has shape {shape_t.shape}, the spec {want_shape}")
        bm = f.raw(mod + ".bitmask")
        if bm.shape != (rows, (cols + 7) // 8):
            fail(f"{mod}.bitmask shape {bm.shape}")
            continue
        bits = np.unpackbits(bm, axis=-1, count=cols, bitorder="little").astype(bool)
        vals = out[mod + ".compressed"].raw(mod + ".compressed")
        if fmt == "sparse-24-bitmask":
            if vals.shape != (rows, cols // 2):
                fail(f"{mod}.compressed shape {vals.shape}, want {(rows, cols // 2)}")
                continue
            per_group = bits.reshape(rows, cols // 4, 4).sum(axis=2)
            if not (per_group == 2).all():
                fail(f"{mod}.bitmask: {(per_group != 2).sum()} groups of 4 without exactly 2 bits")
        else:
            ro = out[mod + ".row_offsets"].raw(mod + ".row_offsets")
            counts = bits.sum(axis=1)
            if not np.array_equal(ro, np.cumsum(counts) - counts):
                fail(f"{mod}.row_offsets is not the exclusive prefix sum of the row counts")
            if vals.ndim != 1 or vals.shape[0] != bits.sum():
                fail(f"{mod}.compressed has {vals.shape}, the bitmask {bits.sum()} bits")
                continue
        rec = np.zeros((rows, cols), dtype=vals.dtype)
        rec[bits] = vals.reshape(-1)
        ref = dense[mod + ".weight"].raw(mod + ".weight")
        if fmt == "sparse-24-bitmask":
            ok = same_bits(rec, ref)
        else:  # sparse-bitmask drops every zero, -0.0 included: compare values
            ok = rec.shape == ref.shape and np.array_equal(nonzero(rec, dt), nonzero(ref, dt)) and \
                np.array_equal(np.where(nonzero(ref, dt), ref, 0), rec)
        if not ok:
            fail(f"{mod}: decompressed by the spec, differs from the dense export")
        n_cmp += 1
    others = [nm for nm in out if not nm.rsplit(".", 1)[-1] in ("bitmask", "compressed", "shape", "row_offsets")]
    for nm in others:
        if nm not in dense or not same_bits(out[nm].raw(nm), dense[nm].raw(nm)):
            fail(f"{nm}: not compressed, but differs from the dense export")
    covered = set(others) | {m + ".weight" for m in mods}
    if covered != set(dense):
        fail(f"compressed export and dense export hold different tensors: {sorted(covered ^ set(dense))[:5]}")
    print(f"ok: {fmt}: {n_cmp} weights decompressed by the spec (numpy) equal the dense export; "
          f"{len(others)} other tensors bit-identical")
    return mods


def ct_library(cdir, qcfg, dense, required):
    try:
        import torch
        from compressed_tensors.compressors import ModelCompressor
        import compressed_tensors
    except ImportError as e:
        (fail if required else print)(f"skip: compressed-tensors library: {e}")
        return
    try:
        mc = ModelCompressor.from_compression_config(qcfg)
        comp = mc.sparsity_compressor
    except Exception as e:  # releases from 0.15 on have no sparse compressors
        (fail if required else print)(f"skip: compressed-tensors {compressed_tensors.__version__} cannot load the "
                                      f"sparsity config ({type(e).__name__}: {e}); sparse compressors were removed "
                                      "in 0.15.0")
        return
    n = 0
    for name, t in comp.decompress(cdir):
        if name not in dense:
            fail(f"compressed-tensors {compressed_tensors.__version__} yields '{name}', not in the dense export")
            continue
        ref = dense[name].raw(name)
        got = t.contiguous()
        got = (got.view(torch.int16).numpy().view(np.uint16) if got.dtype == torch.bfloat16 else got.numpy())
        if got.shape != ref.shape or not np.array_equal(got.view(np.uint8).reshape(-1), np.ascontiguousarray(ref).view(np.uint8).reshape(-1)):
            if not (got.shape == ref.shape and np.array_equal(got, ref)):  # sparse-bitmask: -0.0 -> 0.0
                fail(f"compressed-tensors {compressed_tensors.__version__} decompresses '{name}' differently")
        n += 1
    if n != len(dense):
        fail(f"compressed-tensors yielded {n} tensors, the dense export has {len(dense)}")
    print(f"ok: compressed-tensors {compressed_tensors.__version__} ({type(comp).__name__}) decompresses "
          f"{n} tensors exactly to the dense export")


def transformers_load(d, dense, label):
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"skip: transformers load of the {label} export: {e}")
        return
    model, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True, torch_dtype="auto")
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        fail(f"transformers {transformers.__version__} loading the {label} export: {bad}")
    sd = model.state_dict()
    n = 0
    for name, f in dense.items():
        if name not in sd:
            if not (name == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)):
                fail(f"transformers model has no '{name}'")
            continue
        t = sd[name].detach().contiguous().cpu()
        got = t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()
        ref = f.raw(name)
        if got.shape != ref.shape or not (np.array_equal(got, ref) or np.array_equal(
                got.view(np.uint8).reshape(-1), np.ascontiguousarray(ref).view(np.uint8).reshape(-1))):
            fail(f"transformers {transformers.__version__}, {label} export: '{name}' differs from the dense export")
        n += 1
    print(f"ok: transformers {transformers.__version__} loads the {label} export: {n} tensors equal the dense export")


def transformers_ppl(d, text_path, seq_len, windows):
    """Perplexity of the dense export in transformers, fp32, by tb-run's protocol: the file's text
    tokenized in one call with BOS once, non-overlapping windows from position 0, the first `windows`."""
    import math
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(d)
    text = open(text_path, encoding="utf-8", newline="").read()
    ids = tok(text)["input_ids"]
    if tok.bos_token_id is not None and ids[:1] != [tok.bos_token_id]:
        ids = [tok.bos_token_id] + ids
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    nll = []
    with torch.no_grad():
        for w in range(min(windows, len(ids) // seq_len)):
            x = torch.tensor([ids[w * seq_len:(w + 1) * seq_len]])
            nll.append(model(x, labels=x).loss.item())
    print(f"transformers {transformers.__version__} ppl: {math.exp(sum(nll) / len(nll)):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tbm", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--dense", required=True)
    ap.add_argument("--compressed")
    ap.add_argument("--nm")
    ap.add_argument("--dtype", default="source", choices=["source", "bf16", "f16", "f32"])
    ap.add_argument("--ct-library", action="store_true")
    ap.add_argument("--transformers", action="store_true")
    ap.add_argument("--ppl", metavar="TEXT", help="print transformers' perplexity of the dense export (fp32)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--max-windows", type=int, default=4)
    a = ap.parse_args()
    tbm = json.load(open(a.tbm))
    dense = check_dense(a, tbm, a.source, a.dense)
    if a.compressed:
        cfg = json.load(open(os.path.join(a.compressed, "config.json")))
        q = cfg.pop("quantization_config", None)
        base = json.load(open(os.path.join(a.dense, "config.json")))
        if cfg != base:
            fail("compressed config.json, less quantization_config, differs from the dense one")
        if not q:
            fail("compressed config.json has no quantization_config")
            return finish()
        sp = q.get("sparsity_config", {})
        fmt = sp.get("format")
        if q.get("quant_method") != "compressed-tensors" or fmt not in ("sparse-24-bitmask", "sparse-bitmask"):
            fail(f"quantization_config: quant_method {q.get('quant_method')}, format {fmt}")
            return finish()
        want_struct = "2:4" if fmt == "sparse-24-bitmask" else "unstructured"
        if sp.get("sparsity_structure") != want_struct or not isinstance(sp.get("targets"), list) \
                or sp.get("ignore") != [] or not 0 <= sp.get("global_sparsity", -1) <= 1:
            fail(f"sparsity_config fields: {sp}")
        mods = ct_decompress_numpy(a.compressed, fmt, dense)
        if sorted(sp["targets"]) != mods:
            fail(f"sparsity_config targets are not the compressed modules: {sorted(set(sp['targets']) ^ set(mods))[:5]}")
        ct_library(a.compressed, q, dense, a.ct_library)
        if a.transformers and fmt == "sparse-bitmask":
            # compressed-tensors 0.14's from_pretrained path compresses the meta-device model first, and
            # BitmaskTensor.from_dense cannot run on meta tensors: no transformers version loads this format
            print("skip: transformers cannot load sparse-bitmask checkpoints (compressed-tensors' meta-device "
                  "compress fails); its decompressor was checked above")
        elif a.transformers:
            transformers_load(a.compressed, dense, "compressed")
    if a.transformers:
        transformers_load(a.dense, dense, "dense")
    if a.ppl:
        transformers_ppl(a.dense, a.ppl, a.seq_len, a.max_windows)
    return finish()


def finish():
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
