#!/usr/bin/env python3
"""Regenerate the goldens the tests compare against, with HuggingFace
transformers (f32 arithmetic), or check that the bundled ones still match.

    python3 tests/py/make_goldens.py [--model DIR] [--out DIR] [--check]

For a model directory (default tests/data/tiny-llama-6m) it writes into OUT
(default: the model directory itself):

  tokenizer-cases.json        for each case text (the texts of the existing
                              file, or --cases FILE): ids without special
                              tokens, ids with BOS, and the decoded ids
  forward-fp32.safetensors    input_ids I32 [2, 64]: the first 128 tokens of the
                              tokenized evaluation text (BOS first), row 0 tokens
                              0-63, row 1 tokens 64-127, each run as its own
                              sequence from position 0; logits F32 [2, 64, vocab];
                              hidden_states F32 [layers + 1, 64, hidden] of row 0
                              as output_hidden_states gives them
  fisher-gram-16win.safetensors
                              on the first 16 windows of the calibration set,
                              f32 model: fisher.<W> = mean over windows of the
                              squared gradient of the window's mean next-token
                              NLL, for every *proj.weight of layer 0, the last
                              layer's mlp.down_proj.weight and (untied)
                              lm_head.weight; gram.<module>.input = sum over all
                              tokens of x x^T (x the module's input), accumulated
                              in f64, stored F32, for layer 0's q_proj, o_proj
                              and down_proj
  ../gram-l0-q_proj-16win.safetensors (tiny-llama-6m only): that q_proj Gram

The calibration windows (calib-128x512.safetensors) are an input, not a
golden: 128 windows of 512 tokens drawn with a fixed seed from the models'
training text, which is not in the repository. The evaluation text is
examples/data/wikitext2-test.txt.

--check recomputes everything and compares with the files in --out instead
of writing: ids and decoded text exactly, float tensors to a relative 1e-5
(logits, hidden states, Gram) or 1e-4 (Fisher: a mean of squared gradients).

The versions used are written into each safetensors file's metadata and
printed; the bundled goldens were made with transformers 5.17 (the version
the checkpoints were saved with) and torch 2.x on CPU and GPU, f32 without
TF32: see tests/data/GOLDENS.md.
"""
import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def versions():
    v = {}
    for mod in ("torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = "absent"
    v["python"] = sys.version.split()[0]
    return v


def load_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def tokenizer_cases(model_dir, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    cases = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        cases.append({"text": t, "ids": ids, "ids_with_bos": [tok.bos_token_id] + ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)})
    return cases


def forward_golden(model, model_dir, text_path):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    with open(text_path, encoding="utf-8", newline="") as f:  # the bytes as they are
        text = f.read()
    ids = tok(text)["input_ids"][:128]  # BOS once, at the start
    if ids[0] != tok.bos_token_id:
        ids = [tok.bos_token_id] + ids[:127]
    x = torch.tensor(ids, dtype=torch.long).reshape(2, 64)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    hidden = torch.stack([h[0] for h in out.hidden_states])  # [layers + 1, 64, hidden], row 0
    return {"input_ids": x.to(torch.int32).numpy(), "logits": out.logits.float().numpy(),
            "hidden_states": hidden.float().numpy()}


def fisher_gram_golden(model, calib_path, windows=16):
    import torch
    from safetensors.numpy import load_file

    ids = load_file(calib_path)["input_ids"][:windows].astype(np.int64)
    n_layers = model.config.num_hidden_layers
    fisher_names = [n for n, _ in model.named_parameters()
                    if (n.startswith("model.layers.0.") and n.endswith("proj.weight"))
                    or n == f"model.layers.{n_layers - 1}.mlp.down_proj.weight"]
    if not model.config.tie_word_embeddings:
        fisher_names.append("lm_head.weight")
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in fisher_names}
    gram_modules = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"]
    gram = {}
    hooks = []
    for name in gram_modules:
        mod = model.get_submodule(name)

        def hook(m, inputs, name=name):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            gram[name] = gram.get(name, 0) + x.T @ x

        hooks.append(mod.register_forward_pre_hook(hook))
    for w in range(ids.shape[0]):
        model.zero_grad(set_to_none=True)
        x = torch.from_numpy(ids[w:w + 1])
        loss = model(x, labels=x).loss  # mean next-token NLL of the window
        loss.backward()
        for n in fisher_names:
            fisher[n] += params[n].grad.double() ** 2
    for h in hooks:
        h.remove()
    out = {f"fisher.{n}": (v / ids.shape[0]).float().numpy() for n, v in fisher.items()}
    out.update({f"gram.{n}.input": g.float().numpy() for n, g in gram.items()})
    return out


def compare(name, ours, theirs, rtol):
    if isinstance(ours, np.ndarray):
        if ours.shape != theirs.shape:
            return f"{name}: shape {ours.shape} != {theirs.shape}"
        if ours.dtype.kind in "iu":
            return None if np.array_equal(ours, theirs) else f"{name}: ids differ"
        scale = float(np.max(np.abs(theirs))) or 1.0
        err = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)))) / scale
        print(f"  {name:55s} max rel err {err:.2e} (limit {rtol:g})")
        return None if err <= rtol else f"{name}: max rel err {err:.2e} > {rtol:g}"
    return None if ours == theirs else f"{name}: differs"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, "tests/data/tiny-llama-6m"))
    ap.add_argument("--out", default=None, help="where the goldens go (default: the model directory)")
    ap.add_argument("--calib", default=None, help="calibration windows (default: MODEL/calib-128x512.safetensors)")
    ap.add_argument("--text", default=os.path.join(REPO, "examples/data/wikitext2-test.txt"))
    ap.add_argument("--cases", default=None, help="tokenizer-cases.json whose texts to use (default: OUT's)")
    ap.add_argument("--check", action="store_true", help="compare with the files in OUT instead of writing")
    ap.add_argument("--tokenizer-only", action="store_true", help="only tokenizer-cases.json (needs no torch)")
    a = ap.parse_args()
    out = a.out or a.model
    calib = a.calib or os.path.join(a.model, "calib-128x512.safetensors")
    from safetensors.numpy import load_file, save_file

    v = versions()
    print("versions: " + ", ".join(f"{k} {x}" for k, x in v.items()))
    meta = {"made_by": "tests/py/make_goldens.py", **{f"version.{k}": x for k, x in v.items()}}
    failures = []

    cases_path = os.path.join(out, "tokenizer-cases.json")
    with open(a.cases or cases_path, encoding="utf-8") as f:
        texts = [c["text"] for c in json.load(f)]
    cases = tokenizer_cases(a.model, texts)
    if a.check:
        with open(cases_path, encoding="utf-8") as f:
            old = json.load(f)
        for i, (c, o) in enumerate(zip(cases, old)):
            for k in ("ids", "ids_with_bos", "decoded"):
                if c[k] != o[k]:
                    failures.append(f"tokenizer case {i} ({c['text'][:30]!r}): {k} differs")
        print(f"tokenizer-cases.json: {len(cases)} cases")
    else:
        with open(cases_path, "w", encoding="utf-8") as f:
            json.dump(cases, f, ensure_ascii=False, indent=1)

    if a.tokenizer_only:
        if failures:
            print("\n".join(failures), file=sys.stderr)
            sys.exit(1)
        print("ok" if a.check else "done")
        return
    model = load_model(a.model)
    goldens = {"forward-fp32.safetensors": (forward_golden(model, a.model, a.text), 1e-5)}
    if os.path.exists(calib):
        goldens["fisher-gram-16win.safetensors"] = (fisher_gram_golden(model, calib), None)
    for fname, (tensors, rtol) in goldens.items():
        path = os.path.join(out, fname)
        if a.check:
            print(fname)
            old = load_file(path)
            for k, t in tensors.items():
                if k not in old:
                    failures.append(f"{fname}: {k} not in the bundled file")
                    continue
                tol = rtol if rtol is not None else (1e-4 if k.startswith("fisher.") else 1e-5)
                err = compare(k, t, old[k], tol)
                if err:
                    failures.append(f"{fname}: {err}")
        else:
            save_file({k: np.ascontiguousarray(t) for k, t in tensors.items()}, path, metadata=meta)
            print(f"wrote {path}")
    fg = goldens.get("fisher-gram-16win.safetensors")
    if fg and os.path.basename(os.path.normpath(a.model)) == "tiny-llama-6m" and not a.check:
        name = "gram.model.layers.0.self_attn.q_proj.input"
        path = os.path.join(os.path.dirname(os.path.normpath(out)), "gram-l0-q_proj-16win.safetensors")
        save_file({name: fg[0][name]}, path, metadata={**meta, "windows": "16", "seq_len": "512"})
        print(f"wrote {path}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    if a.check:
        print("ok: the bundled goldens match transformers")


if __name__ == "__main__":
    main()
