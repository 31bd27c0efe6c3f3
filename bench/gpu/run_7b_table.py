#!/usr/bin/env python3
"""run_7b_table.py STAGES MEM LAYERS: bench/gpu/run_7b.sh's tables.

STAGES: one line per timed call, "start end rc tool args..." (seconds since the
epoch); MEM: "time MiB" samples of the GPU's used memory. Prints markdown: per
stage (calls, seconds, the peak GPU memory sampled while it ran), per layer,
and the whole-model time, measured or - for a cut model - extrapolated from
the per-layer rate (labelled as such)."""
import re
import sys
from collections import OrderedDict

FULL_LAYERS = 32  # Mistral-7B


def stage_of(tool, args):
    if tool == "tb-fisher":
        if "--gram-from" in args:  # examples/Makefile's one pass: layer L's stream and layer L+1's Grams
            return "stream + next Gram (tb-fisher --acts-out-at --gram-from)"
        return "stream (tb-fisher --acts-out)" if "--acts-out" in args else "gram (tb-fisher --stats gram)"
    if tool == "tb-merge":
        return "tb-merge --partial" if "--partial" in args else "tb-merge (model.tbm)"
    if tool == "tb-pack":
        m = re.search(r"--compensate (\S+)", args)
        return "tb-pack --compensate %s" % (m.group(1) if m else "none")
    if tool == "tb-recon":
        m = re.search(r"--steps (\d+)", args)
        return "tb-recon %s steps" % (m.group(1) if m else "?")
    if tool == "tb-nm":
        return "tb-nm (masks)"
    if tool == "tb-score":
        m = re.search(r"--method (\S+)", args)
        return "tb-score %s" % (m.group(1) if m else "")
    return tool


def layer_of(tool, args):
    m = re.search(r"--layers (\d+)[:-]", args) or re.search(r"--layer (\d+)", args)
    if m:
        return int(m.group(1))
    m = re.search(r"(?:scores|masks)\.(\d+)\.st", args) or re.search(r"partial\.(\d+)\.tbm", args)
    return int(m.group(1)) if m else None


def main():
    stages_path, mem_path, n_layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = []
    for line in open(stages_path):
        f = line.rstrip("\n").split(" ", 4)
        if len(f) < 4:
            continue
        s, e, rc, tool = float(f[0]), float(f[1]), int(f[2]), f[3]
        args = f[4] if len(f) > 4 else ""
        calls.append((s, e, rc, tool, args))
    mem = []
    try:
        for line in open(mem_path):
            f = line.split()
            if len(f) == 2 and f[1].isdigit():
                mem.append((float(f[0]), int(f[1])))
    except OSError:
        pass

    def peak(s, e):
        v = [m for t, m in mem if s <= t <= e]
        return max(v) if v else None

    by = OrderedDict()
    per_layer = {}
    make_s, make_peak = 0.0, None
    for s, e, rc, tool, args in calls:
        if tool == "make":
            make_s += e - s
            p = peak(s, e)
            if p is not None:
                make_peak = p if make_peak is None else max(make_peak, p)
            continue
        st = stage_of(tool, args)
        d = by.setdefault(st, {"n": 0, "fail": 0, "sum": 0.0, "max": 0.0, "peak": None})
        if rc != 0:
            d["fail"] += 1
            continue
        d["n"] += 1
        d["sum"] += e - s
        d["max"] = max(d["max"], e - s)
        p = peak(s, e)
        if p is not None:
            d["peak"] = p if d["peak"] is None else max(d["peak"], p)
        L = layer_of(tool, args)
        if L is not None and tool not in ("synth", "export", "smoke"):
            per_layer.setdefault(L, OrderedDict())
            per_layer[L][st] = per_layer[L].get(st, 0.0) + e - s

    print()
    print("| stage | calls | total s | mean s | max s | peak GPU MiB (sampled ~0.2 s) | killed/failed |")
    print("|---|---|---|---|---|---|---|")
    for st, d in by.items():
        mean = d["sum"] / d["n"] if d["n"] else 0
        pk = "%d" % d["peak"] if d["peak"] is not None else "-"
        print("| %s | %d | %.1f | %.2f | %.1f | %s | %d |" % (st, d["n"], d["sum"], mean, d["max"], pk, d["fail"]))
    print("| make (the pipeline, all calls of this script) | | %.1f | | | %s | |" % (make_s, make_peak if make_peak is not None else "-"))

    # a layer is done once its last step ran: the stream leaving it, or (last
    # layer) its shard
    done = sorted(L for L, d in per_layer.items()
                  if any(k.startswith("stream") for k in d) or (L == n_layers - 1 and any(k.startswith(("tb-recon", "tb-pack")) for k in d)))
    full = [L for L in done if L < n_layers - 1 or n_layers == 1]
    cols = []
    for L in done:
        for k in per_layer[L]:
            if k not in cols:
                cols.append(k)
    if done:
        print()
        print("| layer | " + " | ".join(cols) + " | layer total s |")
        print("|---" * (len(cols) + 2) + "|")
        for L in done:
            d = per_layer[L]
            print("| %d | " % L + " | ".join("%.1f" % d[k] if k in d else "-" for k in cols) + " | %.1f |" % sum(d.values()))
    # once per model: tokenize, the final merge and, where one pass makes each
    # stream with the next layer's Grams, layer 0's own Gram step
    once = ("tb-tokenize", "tb-merge (model.tbm)")
    if any("next Gram" in st for st in by):
        once += ("gram (tb-fisher --stats gram)",)
    rate = sum(sum(v for k, v in per_layer[L].items() if k not in once) for L in full) / len(full) if full else None
    fixed = sum(d["sum"] for st, d in by.items() if st in once)
    print()
    print("layers done: %d of %d" % (len(done), n_layers))
    if rate is not None:
        print("per-layer rate: %.1f s (mean over %d complete layers, every stage of a layer)" % (rate, len(full)))
        total = fixed + rate * FULL_LAYERS
        label = "measured layers x 32" if n_layers == FULL_LAYERS else "EXTRAPOLATED from %d layers" % len(full)
        print("32-layer pipeline: %.0f s = %.1f min (%s: %s %.1f s + 32 x %.1f s); target 900 s"
              % (total, total / 60, label, " + ".join(o.split(" (")[0] for o in once), fixed, rate))
    if n_layers == FULL_LAYERS and len(done) == n_layers:
        print("32-layer pipeline, measured end to end (make, all calls): %.0f s = %.1f min" % (make_s, make_s / 60))


if __name__ == "__main__":
    main()
