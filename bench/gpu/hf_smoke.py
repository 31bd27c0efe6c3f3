#!/usr/bin/env python3
"""hf_smoke.py DIR [PATTERN]: an exported 2:4 checkpoint, read by others' code.

1. An independent reader (safetensors + torch, none of tensorbit's code): every
   decoder linear weight (q/k/v/o/gate/up/down_proj) of every layer has, in
   each group of M consecutive inputs of a row, at least M - N exact zeros.
2. transformers loads DIR (bf16, on the GPU when there is one) and its logits
   on a 2 x 128-token batch are finite.
Exit 0 only when all 7 x num_hidden_layers weights pass and the logits are
finite."""
import glob
import json
import os
import re
import sys
import time

import torch
from safetensors import safe_open

d = sys.argv[1]
n, m = (int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "2:4").split(":"))
cfg = json.load(open(os.path.join(d, "config.json")))
L = cfg["num_hidden_layers"]
dev = "cuda" if torch.cuda.is_available() else "cpu"
lin = re.compile(r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")

t0 = time.time()
checked, bad, groups, zeros = 0, [], 0, 0
for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
    with safe_open(f, "pt", device=dev) as s:
        for k in s.keys():
            if not lin.match(k):
                continue
            w = s.get_tensor(k)
            rows, cols = w.shape
            z = (w.reshape(rows, cols // m, m) == 0).sum(-1)
            checked += 1
            groups += z.numel()
            zeros += int((w == 0).sum())
            if not bool((z >= m - n).all()):
                bad.append("%s: %d of %d groups with fewer than %d zeros" % (k, int((z < m - n).sum()), z.numel(), m - n))
            del w, z
print("2:4 reader: %d of %d linear weights checked (%d groups of %d), %d fail; zeros %.4f%%, %.1f s"
      % (checked, 7 * L, groups, m, len(bad), 100.0 * zeros / max(groups * m, 1), time.time() - t0))
for b in bad[:5]:
    print("  " + b)

t0 = time.time()
from transformers import AutoModelForCausalLM  # noqa: E402

try:
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16, device_map=dev)
except (ImportError, ValueError):  # no accelerate: load on the CPU, then move
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16).to(dev)
t_load = time.time() - t0
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, cfg["vocab_size"], (2, 128), generator=g).to(dev)
with torch.no_grad():
    logits = model(ids).logits.float()
finite = bool(torch.isfinite(logits).all())
print("transformers %s: %s loaded in %.1f s on %s (%d layers); logits %s finite: %s (mean %.4g, std %.4g)%s"
      % (__import__("transformers").__version__, type(model).__name__, t_load, dev, L, tuple(logits.shape),
         finite, logits.mean().item(), logits.std().item(),
         ", peak GPU memory %.0f MiB" % (torch.cuda.max_memory_allocated() / 2**20) if dev == "cuda" else ""))
ok = checked == 7 * L and not bad and finite
print("hf_smoke: %s" % ("PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
