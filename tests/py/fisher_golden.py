#!/usr/bin/env python3
"""Compare a tb-fisher output with transformers' golden statistics.

usage: fisher_golden.py OURS.fisher GOLDEN.safetensors
fisher.*: max |ours - golden| / max |golden| <= 1e-3; gram.*: <= 1e-4."""
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def main():
    # only the golden's tensors: ours may also hold bf16 gradient samples,
    # which numpy cannot represent
    gold = load_file(sys.argv[2])
    with safe_open(sys.argv[1], "np") as f:
        ours = {k: f.get_tensor(k) for k in f.keys() if k in gold}
    worst = {"fisher": 0.0, "gram": 0.0}
    for name, g in sorted(gold.items()):
        kind = name.split(".")[0]
        if name not in ours:
            sys.exit(f"missing {name}")
        o = ours[name].astype(np.float64)
        g = g.astype(np.float64)
        err = float(np.max(np.abs(o - g)) / np.max(np.abs(g)))
        worst[kind] = max(worst[kind], err)
        print(f"{name:55s} max rel err {err:.2e}")
    print(f"worst fisher {worst['fisher']:.2e} (limit 1e-3), worst gram {worst['gram']:.2e} (limit 1e-4)")
    if worst["fisher"] > 1e-3 or worst["gram"] > 1e-4:
        sys.exit(1)


if __name__ == "__main__":
    main()
